"""The training loop. A batch travels: RecordDataset -> TrainBatches -> network -> loss head ->
(Distributed)Trainer; checkpoints, logs and verification happen around it.

The same code runs single-process and under ``horovodrun``: parameters are broadcast from rank 0,
gradients are averaged over all workers by ``hvd.DistributedTrainer`` and the learning rate is
scaled by the number of workers.
"""
import os
import random
import shlex
import signal
import sys
import threading
import time

import numpy as np

import mxnet as mx
from mxnet import autograd

from recognition.data.dataset import PKOrder, ShardedOrder, TrainBatches
from recognition.data.record import RecordDataset
from recognition.fileio import write_json_atomic
from recognition.losses import get_loss
from recognition.losses.sharded import get_sharded_loss, shard_range
from recognition.models import get_model
from recognition.models.precision import low_precision_network

from . import checkpoint, shards
from .. import distributed as dist
from .callbacks import Logger, Verification, learning_rate
from .config import missing_files, to_dict
from .loss_scale import DynamicLossScaler


class TrainingError(RuntimeError):
    pass


class WorkerLost(TrainingError):
    """A collective failed: another worker died or its host dropped off the network."""


def _is_horovod_failure(err):
    """Under MXNet a failed collective surfaces as an MXNetError at the next synchronisation."""
    return isinstance(err, mx.base.MXNetError) and "Horovod has been shut down" in str(err)


def _pretrained_problem(path):
    if not path or os.path.exists(path):
        return None
    prefix, _, epoch = path.rpartition(",")
    if prefix and epoch.isdigit() and os.path.isfile(f"{prefix}-{int(epoch):04d}.params"):
        return None
    return f"--pretrained {path} not found"


def check_files_on_every_host(config, pretrained=None):
    """Every host checks what the config names (datasets are copied to each node's disk, so one
    may lack them), before any training. A host with a problem says it, one line each naming the
    host and the path; rank 0 also repeats the other hosts' lines; all stop."""
    problems = missing_files(config) + [p for p in [_pretrained_problem(pretrained)] if p]
    if not dist.is_distributed():
        if problems:
            raise TrainingError(problems[0])
        return
    mine = [f"{dist.where()}: {p}" for p in problems]
    every = [line for lines in dist.allgather_object(mine, name="file.check") for line in lines]
    if not every:
        return
    if mine or dist.rank() == 0:
        raise TrainingError("\n".join(mine or every))
    time.sleep(2)  # let the hosts with problems print them before horovodrun stops everyone
    raise SystemExit(1)


def _resume_state(resume, out_dir, net, head, trainer, params, head_params, local_trainer):
    """Collective. Rank 0 picks the state (``auto``: the newest complete one in its output.dir) and
    loads it, so it need exist on rank 0's disk only; the other ranks receive the parameters and
    optimizer state from it, and a sharded head's blocks are re-split for the current number of
    workers. Returns (folder, meta) or (None, None) for a fresh start."""
    payload = None
    if dist.rank() == 0:
        try:
            folder = checkpoint.latest_state(out_dir) if resume == "auto" else resume
            if folder and not os.path.isdir(folder):
                raise ValueError(f"--resume {folder}: not found")
            meta = checkpoint.load_state(folder, net, head, trainer, head_params) if folder else None
            payload = {"folder": folder, "meta": meta}
        except ValueError as err:
            payload = {"error": f"{dist.where()}: {err}" if dist.is_distributed() else str(err)}
    payload = dist.broadcast_object(payload, name="resume.state")
    if "error" in payload:
        raise TrainingError(payload["error"])
    folder, meta = payload["folder"], payload["meta"]
    if not folder:
        return None, None
    dist.broadcast_parameters(params)
    dist.broadcast_trainer_states(trainer)
    if local_trainer:
        if "head_blocks" not in meta:
            raise TrainingError(f"{folder}: no classifier blocks (not written by a sharded head of this version)")
        try:
            shards.scatter_blocks(folder, meta, head, local_trainer)
        except ValueError as err:
            raise TrainingError(str(err)) from None
    return folder, meta


def build_network(config, num_classes, ctx):
    """Embedding network and loss head, initialised (deferred shapes resolved) and hybridized."""
    kwargs = dict(config.model.params, dropout=config.model.dropout)
    if config.model.embedding_size:
        kwargs["embedding_size"] = config.model.embedding_size
    net = get_model(config.model.name, **kwargs)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=ctx)
    if config.train.hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    # a training-mode forward (nothing recorded, so no BatchNorm statistics move): in inference mode
    # MKL-DNN reorders convolution weights in place into a layout that bfloat16 casts cannot read
    with autograd.train_mode():
        embedding_size = net(mx.nd.zeros((2, 3, 112, 112), ctx=ctx)).shape[1]
    if config.loss.sharded or config.loss.sample_ratio < 1:
        head = get_sharded_loss(config.loss.name, num_classes, embedding_size, sample_ratio=config.loss.sample_ratio,
                                seed=config.train.seed, **config.loss.params)
        mx.random.seed((config.train.seed + 7919 * (dist.rank() + 1)) % (2 ** 31))  # each block its own rows
        head.initialize(mx.init.Normal(0.01), ctx=ctx)
        mx.random.seed(config.train.seed % (2 ** 31))
    else:
        head = get_loss(config.loss.name, num_classes=num_classes, embedding_size=embedding_size,
                        **config.loss.params)
        head.initialize(mx.init.Normal(0.01), ctx=ctx)
    if config.train.hybridize:
        head.hybridize(static_alloc=True, static_shape=True)
    return net, head, embedding_size


def compute_network(net, config, ctx):
    """The block the training step (and in-training evaluation) runs: ``net`` itself in float32,
    or for ``train.precision`` bfloat16 / float16 a low-precision graph of it that shares its
    float32 parameters (recognition.models.precision); checkpoints and exports always come from
    ``net``."""
    if config.train.precision == "float32":
        return net
    try:
        low = low_precision_network(net, config.train.precision, ctx)
    except RuntimeError as err:
        raise TrainingError(f"train.precision {config.train.precision}: {err}") from None
    if config.train.hybridize:
        low.hybridize(static_alloc=True, static_shape=True)
    return low


def _split_params(net, head):
    """(replicated, local): parameters equal on every worker (the network, ordinary heads) and a
    sharded head's own classifier block, which is neither broadcast nor allreduced."""
    local = head.local_params() if hasattr(head, "local_params") else mx.gluon.ParameterDict()
    replicated = mx.gluon.ParameterDict()
    replicated.update(net.collect_params())
    for name, param in head.collect_params().items():
        if name not in local:
            replicated._params[name] = param
    return replicated, local


def _nonfinite_probe(params):
    """0 when every gradient of ``params`` is finite, NaN otherwise: the sum of gradient x 0
    (inf x 0 and NaN x 0 are NaN). Unlike a squared norm it cannot overflow on large finite
    gradients (loss-scaled ones reach 1e19, whose squares exceed float32)."""
    grads = [p.grad() for p in params.values() if p.grad_req != "null"]
    return float(mx.nd.add_n(*[mx.nd.sum(g * 0) for g in grads]).asscalar())


def loss_scaler(config):
    """Dynamic loss scaling for float16 (``train.loss_scale: auto``), or where asked for."""
    wanted = config.train.loss_scale == "dynamic" or (config.train.loss_scale == "auto"
                                                       and config.train.precision == "float16")
    return DynamicLossScaler(init_scale=config.train.loss_scale_init) if wanted else None


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    mx.random.seed(seed % (2 ** 31))


class _LauncherStop:
    """horovodrun stops the other workers with SIGTERM when one fails. The main thread is then
    usually blocked inside a collective that waits for the lost worker, where no Python signal
    handler can run; so the signal is also written to a wake-up pipe, and a thread that reads it
    prints the one-line account and exits (nothing of a checkpoint in progress is picked up: its
    folder still has the .tmp name, and the next start removes it)."""

    def __init__(self, describe):
        self.describe = describe
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._watch, daemon=True, name="launcher-stop")
        self.thread.start()

    def _watch(self):
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if not data:  # close(): the write end is gone
                return
            if signal.SIGTERM in data:  # other signals with Python handlers (SIGINT) pass by
                try:
                    print(f"train: {self.describe(WorkerLost('stopped by horovodrun: another worker failed or was lost'))}",
                          file=sys.stderr, flush=True)
                finally:
                    os._exit(1)

    def close(self):
        signal.set_wakeup_fd(self.previous_fd)
        signal.signal(signal.SIGTERM, self.previous_handler)
        os.close(self.write_fd)
        self.thread.join(timeout=5)
        os.close(self.read_fd)


def _lost_message(config, err, progress):
    """One line: who saw what, the last complete checkpoint and the command that resumes."""
    reason = str(err).strip().splitlines()[0] if isinstance(err, WorkerLost) else \
        "a collective failed: Horovod has been shut down"
    out_dir = config.output.dir
    if dist.rank() == 0:
        folder = checkpoint.latest_state(out_dir)
        kept = f"{folder} on {dist.hostname()}" if folder else f"none in {out_dir}/checkpoints"
    elif progress["step"] is not None:
        kept = f"{checkpoint.state_dir(out_dir, progress['step'])} on {dist.hosts()[0]} (rank 0's disk)"
    else:
        kept = "none yet"
    argv = list(sys.argv)
    if "--resume" in argv:
        at = argv.index("--resume")
        del argv[at:at + 2]
    command = "horovodrun <same hosts> python " + " ".join(shlex.quote(a) for a in argv) + " --resume auto"
    return f"{dist.where()}: a worker was lost ({reason}); last complete checkpoint: {kept}; resume with: {command}"


def train(config, resume=None, pretrained=None, log=print, return_model=False):
    """Run the training of ``config``; returns a dict of final results (on every rank), or
    (results, net, head) with ``return_model``. Under horovodrun, a lost worker (a failed
    collective, or horovodrun stopping this one) raises WorkerLost with a one-line account."""
    dist.init()
    progress = {"step": None}  # the step of the last checkpoint this rank took part in
    stop = _LauncherStop(lambda err: _lost_message(config, err, progress)) \
        if dist.is_distributed() and threading.current_thread() is threading.main_thread() else None
    try:
        return _train(config, resume, pretrained, log, return_model, progress)
    except mx.base.MXNetError as err:
        if not _is_horovod_failure(err):
            raise
        raise WorkerLost(_lost_message(config, err, progress)) from None
    finally:
        if stop:
            stop.close()


def _train(config, resume, pretrained, log, return_model, progress):
    rank, world = dist.rank(), dist.size()
    check_files_on_every_host(config, pretrained)
    dist.hosts()  # every rank's hostname, for messages and meta.json (collective, so here)
    # one GPU per worker with mxnet-cu112 (horovodrun -np = GPUs per host x hosts), else the CPU
    ctx = mx.gpu(dist.local_rank()) if mx.context.num_gpus() > 0 else mx.cpu()
    out_dir = config.output.dir
    _seed(config.train.seed)

    dataset = RecordDataset(config.data.root)  # validates the files before any work
    if config.data.sampler == "pk":
        order = PKOrder(dataset, config.data.batch_size, config.data.images_per_identity, rank, world,
                        config.train.seed, config.data.small_identities)
    else:
        order = ShardedOrder(dataset, config.data.batch_size, rank, world, config.train.seed)

    net, head, embedding_size = build_network(config, dataset.num_classes, ctx)
    compute_net = compute_network(net, config, ctx)
    if pretrained:
        checkpoint.load_pretrained(net, pretrained)
    params, local_params = _split_params(net, head)
    dist.broadcast_parameters(params)

    opt = config.optimizer
    base_lr = opt.lr * world  # linear scaling with the number of workers
    optimizer_params = {"learning_rate": base_lr, "wd": opt.wd}
    if opt.name in ("sgd", "nag"):
        optimizer_params["momentum"] = opt.momentum
    if opt.clip_gradient > 0:
        optimizer_params["clip_gradient"] = opt.clip_gradient
    trainer = dist.make_trainer(params, opt.name, optimizer_params, config.train.allreduce_groups)
    # a sharded classifier block already holds the global batch's gradient: plain local updates
    local_trainer = mx.gluon.Trainer(local_params, opt.name, dict(optimizer_params), kvstore=None) \
        if list(local_params.keys()) else None
    head_params = head.shared_params() if local_trainer else None  # checkpointed by rank 0

    scaler = loss_scaler(config)
    start_step, best, data_position = 0, {"accuracy": -1.0}, None
    resume_dir, meta = _resume_state(resume, out_dir, net, head, trainer, params, head_params, local_trainer) \
        if resume else (None, None)
    if resume_dir:
        progress["step"] = meta["step"]
        if local_trainer:
            head.set_step(meta["step"])
        start_step, best = meta["step"], meta.get("best", best)
        data_position = meta.get("data_position")
        if scaler and "loss_scale" in meta:
            scaler.load_state_dict(meta["loss_scale"])
        if rank == 0:
            resized = meta.get("world_size", world) != world
            log(f"resumed from {resume_dir} at step {start_step}" +
                (f" (written by {meta['world_size']} workers, now {world}: classifier blocks re-split, "
                 f"data from global position {data_position[1]} of epoch {data_position[0]})"
                 if resized and data_position else ""))
    elif resume == "auto" and rank == 0:
        log(f"no checkpoint in {out_dir}/checkpoints; starting from scratch")

    batches = TrainBatches(dataset, order, flip=config.data.flip, color_jitter=config.data.color_jitter,
                           cutoff=config.data.cutoff,
                           num_workers=0 if config.train.deterministic else config.data.num_workers,
                           prefetch=0 if config.train.deterministic else config.data.prefetch,
                           max_bad_share=config.data.max_bad_records, start_step=start_step,
                           start_position=data_position, log=lambda message: log(f"rank {rank}: {message}"))
    verification = Verification(config.verification.bins, config.verification.batch_size,
                                config.verification.flip) if config.verification.bins else None
    if rank == 0:  # only now: a run refused above leaves nothing behind
        os.makedirs(out_dir, exist_ok=True)
        checkpoint.remove_partial(out_dir)
        write_json_atomic(os.path.join(out_dir, "config.json"), to_dict(config))
    logger = Logger(out_dir, config.train.max_steps, start_step, config.data.batch_size * world)
    meta_base = {"model": config.model.name, "embedding_size": embedding_size,
                 "num_classes": dataset.num_classes, "world_size": world}
    results = {"start_step": start_step}

    def save(step):
        """Collective; only rank 0 writes (to its own disk: nothing assumes a shared folder)."""
        if hasattr(head, "flush_state"):
            head.flush_state()
        dist.average_running_stats(params)
        # a sharded classifier's blocks travel to rank 0 one at a time
        blocks = shards.gather_blocks(head, local_trainer) if local_trainer else ()
        if rank != 0:
            for _ in blocks:
                pass
            progress["step"] = step
            return True
        extra = {"best": best, "steps_per_epoch": batches.steps_per_epoch,
                 "data_position": list(batches.position(step)), "hosts": dist.hosts()}
        if local_trainer:
            extra["head_blocks"] = [list(shard_range(dataset.num_classes, r, world)) for r in range(world)]
            extra["head_optimizer"] = shards.optimizer_counters(local_trainer, shards.block_roles(head))
        if scaler:
            extra["loss_scale"] = scaler.state_dict()
        if hasattr(head, "scale"):
            extra["scale"] = float(head.scale)
        saved = checkpoint.save_state(out_dir, step, net, head, trainer, dict(meta_base, **extra),
                                      keep=config.output.keep, head_params=head_params, blocks=blocks) is not None
        if saved:
            progress["step"] = step
        return saved

    def verify(step):
        dist.average_running_stats(params)
        scores = verification(compute_net)
        logger.scalars(step, {f"verification/{name}/accuracy": r["accuracy"] for name, r in scores.items()})
        logger.scalars(step, {f"verification/{name}/xnorm": r["xnorm"] for name, r in scores.items()})
        mean_accuracy = float(np.mean([r["accuracy"] for r in scores.values()]))
        for name, r in scores.items():
            logger.message(f"step {step}: {name} accuracy {r['accuracy']:.4f}+-{r['accuracy_std']:.4f} "
                           f"xnorm {r['xnorm']:.2f} tar@far1e-3 {r['tar_at_far_1e-3']:.4f}")
        if mean_accuracy > best["accuracy"]:
            best.update(accuracy=mean_accuracy, step=step)
            if rank == 0:
                checkpoint.export_model(net, os.path.join(out_dir, "best", "model"), 1)
                write_json_atomic(os.path.join(out_dir, "best", "scores.json"), {"step": step, "scores": scores})
        return scores

    counters = {"nonfinite_in_row": 0, "skipped_updates": 0}

    stateful = [p for p in list(params.values()) + list(local_params.values()) if p.grad_req == "null"]

    def predicted_classes(embeddings):
        with autograd.pause():
            return head.predict_class(embeddings) if hasattr(head, "predict_class") \
                else head.predict(embeddings).argmax(axis=1)

    def update(step, data, label, triplets=None, predict=False):
        """One optimizer update on (data, label); returns (loss, predicted classes or None), or
        None when the gradient was non-finite and the update was skipped (parameters, BatchNorm
        statistics, head state and optimizer untouched). ``predict``: also the head's class
        predictions for this batch, taken before the update, as the forward saw them (after it,
        the classifier rows of this batch's classes have just moved towards these very
        embeddings, which flatters the accuracy early in training)."""
        before = [p.data().copy() for p in stateful]  # the forward moves BN statistics, AdaCos s, centres
        with autograd.record():
            embeddings = compute_net(data)
            if hasattr(head, "update_state"):
                head.update_state(embeddings.detach(), label)
            loss = head(embeddings, label) if triplets is None else head(embeddings, label, triplets)
            scaled = loss * scaler.scale if scaler else loss
        scaled.backward()
        trainer.allreduce_grads()
        # identical on every rank after the allreduce, so all ranks skip together; a sharded
        # classifier block's gradient is per rank, so its probe is summed over the ranks first
        probe = _nonfinite_probe(params)
        if local_trainer:
            local_probe = mx.nd.array([_nonfinite_probe(local_params)], dtype="float64")
            probe += float(dist.allreduce_sum(local_probe, name="local_grad_norm").asscalar())
        if not np.isfinite(probe):
            for param, value in zip(stateful, before):
                param.set_data(value)
            counters["skipped_updates"] += 1
            if scaler and not scaler.at_minimum:  # the scaled gradients overflowed: a smaller scale
                logger.message(f"step {step}: gradients overflowed at loss scale {scaler.scale:g}; "
                               f"update skipped, scale halved")
                scaler.update(False)
                return None
            counters["nonfinite_in_row"] += 1
            logger.scalars(step, {"nonfinite_skipped": counters["skipped_updates"]})
            logger.message(f"step {step}: non-finite loss or gradient, update skipped "
                           f"({counters['nonfinite_in_row']} in a row)")
            if counters["nonfinite_in_row"] >= config.train.max_nonfinite:
                raise TrainingError(f"{counters['nonfinite_in_row']} non-finite updates in a row at step {step}; "
                                    f"stopping (last good checkpoint kept in {out_dir}/checkpoints)")
            return None
        counters["nonfinite_in_row"] = 0
        predicted = predicted_classes(embeddings) if predict else None
        # Trainer.update divides the gradients by its argument: dividing by the loss scale too
        # undoes the scaling (exact for powers of two) before clipping, weight decay and momentum
        unscale = scaler.scale if scaler else 1.0
        if scaler:
            scaler.update(True)
        trainer.update(data.shape[0] * unscale)
        if local_trainer:
            local_trainer.update(data.shape[0] * world * unscale)
        return loss, predicted

    # semi-online triplet mining (MassFace Table 4): embeddings of the last N batches, computed
    # without gradient, form the pool; the mined images are forwarded again for the updates.
    semi_online = getattr(head, "semi_online_pool", None) is not None
    can_predict = hasattr(head, "predict") or hasattr(head, "predict_class")
    last = None
    last_saved = start_step
    try:
        for step in range(start_step, config.train.max_steps):
            if config.train.deterministic:
                mx.random.seed((config.train.seed * 1000003 + step * 7919 + rank) % (2 ** 31))
            data_np, label_np = next(batches)
            data, label = mx.nd.array(data_np, ctx=ctx), mx.nd.array(label_np, ctx=ctx)
            lr = learning_rate(step, base_lr, config.train.max_steps, opt.schedule, opt.warmup_steps,
                               opt.lr_steps, opt.lr_factor)
            for each in (trainer, local_trainer) if local_trainer else (trainer,):
                each.set_learning_rate(lr)
            log_step = (step + 1) % config.train.log_every == 0 or step + 1 == config.train.max_steps
            if not semi_online:
                result = update(step, data, label, predict=log_step and can_predict)
                last = (result + (label,)) if result else last
            else:
                with autograd.predict_mode():
                    pool_embeddings = compute_net(data)
                if head.semi_online_pool.add(pool_embeddings, label_np, data_np):
                    for chunk in head.select_pool(max_images=config.data.batch_size):
                        chunk_label = mx.nd.array(chunk.labels, ctx=ctx)
                        result = update(step, mx.nd.array(chunk.items, ctx=ctx), chunk_label, chunk.triplets)
                        last = (result + (chunk_label,)) if result else last
            done = step + 1

            if log_step and last:
                loss, predicted, loss_label = last
                values = {"loss": float(loss.mean().asscalar()), "lr": trainer.learning_rate,
                          "epoch": done / batches.steps_per_epoch}
                if predicted is not None:
                    values["train_acc"] = float((predicted == loss_label).mean().asscalar())
                if hasattr(head, "last_num_triplets"):
                    values["triplets"] = head.last_num_triplets
                if hasattr(head, "scale"):
                    values["scale"] = float(head.scale)
                if batches.bad_records:
                    values["bad_records"] = batches.bad_records
                if scaler:
                    values["loss_scale"] = scaler.scale
                logger.step(done, values)
            if verification and config.verification.every and done % config.verification.every == 0 \
                    and done != config.train.max_steps:
                verify(done)
            # never replace good checkpoints by one taken in the middle of a non-finite streak
            if config.output.checkpoint_every and done % config.output.checkpoint_every == 0 \
                    and counters["nonfinite_in_row"] == 0:
                save(done)
                last_saved = done
        done = config.train.max_steps
        if last_saved != done and not save(done) and rank == 0:
            raise TrainingError(f"the final checkpoint of step {done} could not be written in {out_dir}")
        if verification:
            results["verification"] = verify(done)
        if rank == 0 and not checkpoint.export_model(net, os.path.join(out_dir, "model"), 1):
            raise TrainingError(f"the final model could not be exported to {out_dir}/model")
        dist.barrier()  # no worker leaves (and shuts Horovod down) while rank 0 still saves
    finally:
        batches.close()
        logger.close()
    results.update(steps=config.train.max_steps, best=best, skipped_updates=counters["skipped_updates"],
                   bad_records=batches.bad_records, samples_per_sec=logger.median_samples_per_sec())
    if rank == 0:
        write_json_atomic(os.path.join(out_dir, "results.json"), results)
    return (results, net, head) if return_model else results


def fail(message):
    """One clear line (one per problem) on stderr and a non-zero exit."""
    for line in str(message).splitlines():
        print(f"train: {line}", file=sys.stderr, flush=True)
    sys.exit(1)
