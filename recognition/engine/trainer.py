"""The training loop. A batch travels: RecordDataset (the .rec) -> TrainBatches (this rank's shard
of the global sample order, decoded and augmented) -> ``step`` (forward of the backbone, loss
head, backward, allreduce of the gradients, the non-finite guard, optimizer update) -> callbacks
(log, verification, checkpoint). Everything the run *is* lives in one ``TrainState``: what a
checkpoint writes and what an elastic commit holds.

The same code runs single-process and under ``horovodrun``: parameters are broadcast from rank 0,
gradients are averaged over all workers by ``hvd.DistributedTrainer`` and the learning rate is
scaled by the number of workers. With ``train.elastic`` under ``horovodrun --min-np/--max-np`` the
steps run inside Horovod's elastic loop (recognition.engine.elastic).
"""
import contextlib
import dataclasses
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

from recognition.data import augment
from recognition.data.dataset import PKOrder, ShardedOrder, TrainBatches
from recognition.data.record import RecordDataset
from recognition.fileio import write_json_atomic
from recognition.losses import get_loss
from recognition.losses.sharded import get_sharded_loss, shard_range
from recognition.models import build_backbone

from . import checkpoint, elastic, shards
from .. import distributed as dist
from .averaging import EMA_FILE, WeightAverage
from .callbacks import Checkpoints, Logger, LogProgress, TimeBudget, Verification, VerifyEvery, learning_rate
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


def check_files_on_every_host(config, pretrained=None, collective=True):
    """Every host checks what the config names (datasets are copied to each node's disk, so one
    may lack them), before any training. A host with a problem says it, one line each naming the
    host and the path; rank 0 also repeats the other hosts' lines; all stop. Not ``collective``
    (elastic mode, where a worker may start while the others train): each checks only itself."""
    problems = missing_files(config) + [p for p in [_pretrained_problem(pretrained)] if p]
    if not collective and problems:
        raise TrainingError(f"{dist.where()}: {problems[0]}" if dist.is_distributed() else problems[0])
    if not dist.is_distributed() or not collective:
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


def _load_checkpoint(resume, out_dir, net, head, trainer, head_params=None):
    """(folder, meta) of the checkpoint ``resume`` names (``auto``: the newest complete one in
    ``out_dir``), loaded into this process; (None, None) when there is none. ValueError when it is
    missing or incomplete."""
    folder = checkpoint.latest_state(out_dir) if resume == "auto" else resume
    if folder and not os.path.isdir(folder):
        raise ValueError(f"--resume {folder}: not found")
    return folder, checkpoint.load_state(folder, net, head, trainer, head_params) if folder else None


def _resume_state(resume, out_dir, net, head, trainer, params, head_params, local_trainer):
    """Collective. Rank 0 picks the state (``auto``: the newest complete one in its output.dir) and
    loads it, so it need exist on rank 0's disk only; the other ranks receive the parameters and
    optimizer state from it, and a sharded head's blocks are re-split for the current number of
    workers. Returns (folder, meta) or (None, None) for a fresh start."""
    payload = None
    if dist.rank() == 0:
        try:
            folder, meta = _load_checkpoint(resume, out_dir, net, head, trainer, head_params)
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
    """(net, compute_net, head, embedding_size): the embedding network (float32 parameters: saved,
    exported, broadcast), the block the training step and in-training evaluation run (``net``, or
    for ``train.precision`` bfloat16 / float16 a low-precision graph sharing its parameters), and
    the loss head, initialised and hybridized."""
    kwargs = dict(config.model.params, dropout=config.model.dropout)
    if config.model.embedding_size:
        kwargs["embedding_size"] = config.model.embedding_size
    try:
        net, compute_net, embedding_size = build_backbone(config.model.name, config.train.precision, ctx,
                                                          hybridize=config.train.hybridize, **kwargs)
    except RuntimeError as err:
        raise TrainingError(f"train.precision {config.train.precision}: {err}") from None
    if config.loss.sharded or config.loss.sample_ratio < 1:
        head = get_sharded_loss(config.loss.name, num_classes, embedding_size, sample_ratio=config.loss.sample_ratio,
                                seed=config.train.seed, **config.loss.params)
        mx.random.seed((config.train.seed + 7919 * (dist.rank() + 1)) % (2 ** 31))  # each block its own rows
        head.initialize(mx.init.Normal(0.01), ctx=ctx)
        mx.random.seed(config.train.seed % (2 ** 31))
    else:
        head = get_loss(config.loss.name, num_classes=num_classes, embedding_size=embedding_size,
                        label_smoothing=config.loss.label_smoothing, **config.loss.params)
        head.initialize(mx.init.Normal(0.01), ctx=ctx)
    if config.train.hybridize:
        head.hybridize(static_alloc=True, static_shape=True)
    return net, compute_net, head, embedding_size


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


class TrainState:
    """Everything the run is at ``step``: network and head (with their non-gradient state: BatchNorm
    statistics, AdaCos scale, centres), the optimizers and their states, the loss scale, the best
    verification score and the data position. A checkpoint (``save`` / ``resume``: on disk, rank
    0 writes) and an elastic commit (``snapshot`` / ``restore``: in memory, every rank) hold
    exactly this."""

    def __init__(self, config, num_classes, net, compute_net, head, embedding_size):
        self.config, self.num_classes, self.embedding_size = config, num_classes, embedding_size
        self.net, self.compute_net, self.head = net, compute_net, head
        self.params, self.local_params = _split_params(net, head)
        self.all_params = list(self.params.values()) + list(self.local_params.values())
        # what a forward moves besides the gradients (BN statistics, AdaCos s, centres)
        self.stateful = [p for p in self.all_params if p.grad_req == "null"]
        self.scaler = loss_scaler(config)
        self.average = WeightAverage(net.collect_params(), config.train.ema) if config.train.ema else None
        self.step, self.best, self.data_position = 0, {"accuracy": -1.0}, None
        # train.time_budget_minutes fixes max_steps once the step time is measured (TimeBudget)
        self.max_steps, self.budget = config.train.max_steps, None
        self.nonfinite_in_row, self.skipped_updates = 0, 0
        self.make_trainers()

    def averaged(self):
        """The network as verification and exports see it: the weight average with train.ema."""
        return self.average.applied() if self.average else contextlib.nullcontext()

    def make_trainers(self):
        """Optimizers for the current number of workers: the learning rate scales linearly with it,
        and Horovod's trainer fixes its gradient averaging when built (so an elastic reset calls
        this again; the optimizer states are then restored or broadcast into the new ones)."""
        opt = self.config.optimizer
        self.world = dist.size()
        self.base_lr = opt.lr * self.world
        optimizer_params = {"learning_rate": self.base_lr, "wd": opt.wd}
        if opt.name in ("sgd", "nag"):
            optimizer_params["momentum"] = opt.momentum
        if opt.clip_gradient > 0:
            optimizer_params["clip_gradient"] = opt.clip_gradient
        self.trainer = dist.make_trainer(self.params, opt.name, optimizer_params, self.config.train.allreduce_groups)
        # a sharded classifier block already holds the global batch's gradient: plain local updates
        self.local_trainer = mx.gluon.Trainer(self.local_params, opt.name, dict(optimizer_params), kvstore=None) \
            if list(self.local_params.keys()) else None
        self.head_params = self.head.shared_params() if self.local_trainer else None  # checkpointed by rank 0

    def set_learning_rate(self, step):
        opt = self.config.optimizer
        # a time budget stretches or shrinks the whole schedule: warmup and step boundaries with it
        stretch = self.max_steps / self.config.train.max_steps
        lr_steps = [round(b * stretch) for b in opt.lr_steps]
        lr = learning_rate(step, self.base_lr, self.max_steps, opt.schedule, round(opt.warmup_steps * stretch),
                           lr_steps, opt.lr_factor)
        for each in (self.trainer, self.local_trainer) if self.local_trainer else (self.trainer,):
            each.set_learning_rate(lr)

    def _scalars(self):
        return {"step": self.step, "best": dict(self.best), "data_position": self.data_position,
                "loss_scale": self.scaler.state_dict() if self.scaler else None,
                "skipped_updates": self.skipped_updates, "max_steps": self.max_steps, "budget": self.budget,
                "average": self.average.numpy_arrays() if self.average else None}

    def _set_scalars(self, scalars):
        self.step, self.best = scalars["step"], dict(scalars["best"])
        self.max_steps, self.budget = scalars["max_steps"], scalars["budget"]
        if self.average:
            self.average.load_numpy_arrays(scalars["average"], "the committed state")
        self.data_position = tuple(scalars["data_position"]) if scalars["data_position"] else None
        self.skipped_updates = scalars["skipped_updates"]
        if self.scaler and scalars["loss_scale"]:
            self.scaler.load_state_dict(scalars["loss_scale"])
        self.nonfinite_in_row = 0

    # -- on disk ---------------------------------------------------------------------------------
    def resume(self, resume, out_dir, log, collective=True):
        """Load a checkpoint (``auto``: the newest complete one in ``out_dir``). ``collective``:
        rank 0 reads it and sends it to every rank (_resume_state); else only this rank loads it,
        from its own disk (elastic mode: the first sync sends it on)."""
        if collective:
            folder, meta = _resume_state(resume, out_dir, self.net, self.head, self.trainer, self.params,
                                         self.head_params, self.local_trainer)
        elif dist.rank() == 0:
            try:
                folder, meta = _load_checkpoint(resume, out_dir, self.net, self.head, self.trainer)
            except ValueError as err:
                raise TrainingError(f"{dist.where()}: {err}") from None
        else:
            folder, meta = None, None
        if not folder:
            if resume == "auto" and dist.rank() == 0:
                log(f"no checkpoint in {out_dir}/checkpoints; starting from scratch")
            return None
        if self.local_trainer:
            self.head.set_step(meta["step"])
        if self.average:
            self._resume_average(folder, collective)
        if meta.get("time_budget"):  # the steps a time budget fixed stay fixed (else the config's count)
            self.max_steps, self.budget = meta["max_steps"], meta["time_budget"]
        self.step, self.best = meta["step"], meta.get("best", self.best)
        self.data_position = tuple(meta["data_position"]) if meta.get("data_position") else None
        if self.scaler and "loss_scale" in meta:
            self.scaler.load_state_dict(meta["loss_scale"])
        if dist.rank() == 0:
            resized = meta.get("world_size", self.world) != self.world
            log(f"resumed from {folder} at step {self.step}" +
                (f" (written by {meta['world_size']} workers, now {self.world}: classifier blocks re-split, "
                 f"data from global position {self.data_position[1]} of epoch {self.data_position[0]})"
                 if resized and self.data_position else ""))
        return folder

    def _resume_average(self, folder, collective):
        """Rank 0 reads the weight average of the checkpoint; with ``collective`` it sends it on."""
        arrays = None
        if dist.rank() == 0:
            path = os.path.join(folder, EMA_FILE)
            try:
                loaded = mx.nd.load(path) if os.path.isfile(path) else {}
                self.average.load_arrays(loaded, path)
            except (ValueError, mx.base.MXNetError) as err:
                arrays = {"error": f"{dist.where()}: {err}" if dist.is_distributed() else str(err)}
            else:
                arrays = self.average.numpy_arrays()
        if collective:
            arrays = dist.broadcast_object(arrays, name="resume.average")
        if arrays and "error" in arrays:
            raise TrainingError(arrays["error"])
        if collective and dist.rank() != 0:
            self.average.load_numpy_arrays(arrays, folder)

    def save(self, out_dir, batches):
        """Collective; only rank 0 writes (to its own disk: nothing assumes a shared folder).
        Returns whether the checkpoint was written (on rank 0; True elsewhere)."""
        if hasattr(self.head, "flush_state"):
            self.head.flush_state()
        dist.average_running_stats(self.params)
        # a sharded classifier's blocks travel to rank 0 one at a time
        blocks = shards.gather_blocks(self.head, self.local_trainer) if self.local_trainer else ()
        if dist.rank() != 0:
            for _ in blocks:
                pass
            return True
        meta = {"model": self.config.model.name, "embedding_size": self.embedding_size,
                "num_classes": self.num_classes, "world_size": self.world, "best": self.best,
                "steps_per_epoch": batches.steps_per_epoch, "data_position": list(batches.position(self.step)),
                "hosts": dist.hosts()}
        if self.local_trainer:
            meta["head_blocks"] = [list(shard_range(self.num_classes, r, self.world)) for r in range(self.world)]
            meta["head_optimizer"] = shards.optimizer_counters(self.local_trainer, shards.block_roles(self.head))
        if self.scaler:
            meta["loss_scale"] = self.scaler.state_dict()
        if hasattr(self.head, "scale"):
            meta["scale"] = float(self.head.scale)
        meta["max_steps"], meta["time_budget"] = self.max_steps, self.budget
        return checkpoint.save_state(out_dir, self.step, self.net, self.head, self.trainer, meta,
                                     keep=self.config.output.keep, head_params=self.head_params, blocks=blocks,
                                     arrays={EMA_FILE: self.average.arrays()} if self.average else None) is not None

    # -- in memory (elastic commits) -------------------------------------------------------------
    def snapshot(self):
        """A copy of the state in host memory (replicated heads only: see elastic.refusal)."""
        if hasattr(self.head, "flush_state"):
            self.head.flush_state()
        return {"arrays": [p.data().asnumpy() for p in self.all_params],
                "optimizer": dist.trainer_states(self.trainer), "scalars": self._scalars()}

    def restore(self, snapshot):
        """Back to ``snapshot`` after a failed collective. The arrays of the failed step may still
        carry the failure (MXNet keeps an operator's error on its outputs and rethrows it to
        whoever reads them), so every parameter gets new arrays rather than a copy into the old."""
        for param, value in zip(self.all_params, snapshot["arrays"]):
            param._data = [mx.nd.array(value, ctx=param.list_ctx()[0], dtype=param.dtype)]
            param._init_grad()  # new gradient buffers, marked for autograd
        elastic.discard_pending(self.head)
        dist.set_trainer_states(self.trainer, snapshot["optimizer"])
        self._set_scalars(snapshot["scalars"])

    def broadcast_from(self, root):
        """Every rank takes rank ``root``'s state (collective)."""
        dist.broadcast_parameters(self.params, root_rank=root)
        dist.broadcast_trainer_states(self.trainer, root_rank=root)
        self._set_scalars(dist.broadcast_object(self._scalars(), root_rank=root, name="state.scalars"))


def make_order(config, dataset):
    """The sample order of this rank for the current rank and number of workers (ValueError where
    the dataset is too small for one global batch)."""
    rank, world = dist.rank(), dist.size()
    if config.data.sampler == "pk":
        return PKOrder(dataset, config.data.batch_size, config.data.images_per_identity, rank, world,
                       config.train.seed, config.data.small_identities)
    return ShardedOrder(dataset, config.data.batch_size, rank, world, config.train.seed)


def augmentation_policy(config):
    """The ``recognition.data.augment.Policy`` of the config's data section."""
    fields = [f.name for f in dataclasses.fields(augment.Policy)]
    return augment.Policy(**{name: getattr(config.data, name) for name in fields})


def make_batches(config, dataset, state, log, bad=None):
    """This rank's batches from ``state``'s step and global data position on (``bad``: the corrupt
    records met so far in this run, see TrainBatches)."""
    rank, order = dist.rank(), make_order(config, dataset)
    return TrainBatches(dataset, order, flip=config.data.flip, augmentation=augmentation_policy(config),
                        num_workers=0 if config.train.deterministic else config.data.num_workers,
                        prefetch=0 if config.train.deterministic else config.data.prefetch,
                        max_bad_share=config.data.max_bad_records, start_step=state.step,
                        start_position=state.data_position, bad=bad,
                        log=lambda message: log(f"rank {rank}: {message}"))


def update(state, data, label, logger, triplets=None, predict=False):
    """One optimizer update on (data, label); returns (loss, predicted classes or None), or None
    when the gradient was non-finite and the update was skipped (parameters, BatchNorm
    statistics, head state and optimizer untouched). ``predict``: also the head's class
    predictions for this batch, taken before the update, as the forward saw them (after it, the
    classifier rows of this batch's classes have just moved towards these very embeddings, which
    flatters the accuracy early in training)."""
    head, scaler, config = state.head, state.scaler, state.config
    before = [p.data().copy() for p in state.stateful]  # the forward moves BN statistics, AdaCos s, centres
    with autograd.record():
        embeddings = state.compute_net(data)
        if hasattr(head, "update_state"):
            head.update_state(embeddings.detach(), label)
        loss = head(embeddings, label) if triplets is None else head(embeddings, label, triplets)
        scaled = loss * scaler.scale if scaler else loss
    scaled.backward()
    state.trainer.allreduce_grads()
    # identical on every rank after the allreduce, so all ranks skip together; a sharded
    # classifier block's gradient is per rank, so its probe is summed over the ranks first
    probe = _nonfinite_probe(state.params)
    if state.local_trainer:
        local_probe = mx.nd.array([_nonfinite_probe(state.local_params)], dtype="float64")
        probe += float(dist.allreduce_sum(local_probe, name="local_grad_norm").asscalar())
    if not np.isfinite(probe):
        for param, value in zip(state.stateful, before):
            param.set_data(value)
        state.skipped_updates += 1
        if scaler and not scaler.at_minimum:  # the scaled gradients overflowed: a smaller scale
            logger.message(f"step {state.step}: gradients overflowed at loss scale {scaler.scale:g}; "
                           f"update skipped, scale halved")
            scaler.update(False)
            return None
        state.nonfinite_in_row += 1
        logger.scalars(state.step, {"nonfinite_skipped": state.skipped_updates})
        logger.message(f"step {state.step}: non-finite loss or gradient, update skipped "
                       f"({state.nonfinite_in_row} in a row)")
        if state.nonfinite_in_row >= config.train.max_nonfinite:
            raise TrainingError(f"{state.nonfinite_in_row} non-finite updates in a row at step {state.step}; "
                                f"stopping (last good checkpoint kept in {config.output.dir}/checkpoints)")
        return None
    state.nonfinite_in_row = 0
    predicted = None
    if predict:
        with autograd.pause():
            predicted = head.predict_class(embeddings) if hasattr(head, "predict_class") \
                else head.predict(embeddings).argmax(axis=1)
    # Trainer.update divides the gradients by its argument: dividing by the loss scale too undoes
    # the scaling (exact for powers of two) before clipping, weight decay and momentum
    unscale = scaler.scale if scaler else 1.0
    if scaler:
        scaler.update(True)
    state.trainer.update(data.shape[0] * unscale)
    if state.local_trainer:
        state.local_trainer.update(data.shape[0] * state.world * unscale)
    if state.average:
        state.average.update()
    return loss, predicted


def step(state, batches, logger, predict=False):
    """One training step: the next batch, its update(s), ``state.step`` + 1. Returns the last
    (loss, predicted, labels) or None when every update of the step was skipped.

    Semi-online triplet mining (MassFace Table 4): embeddings of the last N batches, computed
    without gradient, form the pool; the mined images are forwarded again for the updates."""
    config, ctx = state.config, state.net.collect_params().list_ctx()[0]
    if config.train.deterministic:
        mx.random.seed((config.train.seed * 1000003 + state.step * 7919 + dist.rank()) % (2 ** 31))
    data_np, label_np = next(batches)
    data, label = mx.nd.array(data_np, ctx=ctx), mx.nd.array(label_np, ctx=ctx)
    state.set_learning_rate(state.step)
    last = None
    pool = getattr(state.head, "semi_online_pool", None)
    if pool is None:
        result = update(state, data, label, logger, predict=predict)
        last = result + (label,) if result else None
    else:
        with autograd.predict_mode():
            pool_embeddings = state.compute_net(data)
        if pool.add(pool_embeddings, label_np, data_np):
            for chunk in state.head.select_pool(max_images=config.data.batch_size):
                chunk_label = mx.nd.array(chunk.labels, ctx=ctx)
                result = update(state, mx.nd.array(chunk.items, ctx=ctx), chunk_label, logger, chunk.triplets)
                last = result + (chunk_label,) if result else last
    state.step += 1
    return last


def run_steps(state, batches, callbacks, logger, until=None):
    """Steps until ``state.step`` reaches ``until`` (or ``state.max_steps``, which a time budget
    may set on the way); the callbacks see every finished step."""
    can_predict = hasattr(state.head, "predict") or hasattr(state.head, "predict_class")
    while state.step < min(until or state.max_steps, state.max_steps):
        predict = can_predict and any(c.wants_prediction(state, state.step + 1) for c in callbacks)
        last = step(state, batches, logger, predict)
        for callback in callbacks:
            callback.after_step(state, batches, last)


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
    collective, or horovodrun stopping this one) raises WorkerLost with a one-line account; in
    elastic mode the others go on instead."""
    dist.init()
    progress = {"step": None}  # the step of the last checkpoint this rank took part in
    elastic_run = config.train.elastic and elastic.launched_elastic()
    stop = _LauncherStop(lambda err: _lost_message(config, err, progress)) \
        if dist.is_distributed() and not elastic_run and threading.current_thread() is threading.main_thread() \
        else None
    lost = False
    try:
        return _train(config, resume, pretrained, log, return_model, progress, elastic_run)
    except mx.base.MXNetError as err:
        if not _is_horovod_failure(err):
            raise
        lost = True
        raise WorkerLost(_lost_message(config, err, progress)) from None
    finally:
        # after a lost worker horovodrun's SIGTERM is on its way: it stays handled (the same line,
        # then exit) rather than killing the process before the caller has printed the account
        if stop and not lost:
            stop.close()


def _train(config, resume, pretrained, log, return_model, progress, elastic_run):
    started = time.time()
    # elastic: no collective before Horovod's elastic loop, which a worker added later would
    # otherwise run against the others' training steps
    collective = not elastic_run
    check_files_on_every_host(config, pretrained, collective)
    if collective:
        dist.hosts()  # every rank's hostname, for messages and meta.json (collective, so here)
    # one GPU per worker with mxnet-cu112 (horovodrun -np = GPUs per host x hosts), else the CPU
    ctx = mx.gpu(dist.local_rank()) if mx.context.num_gpus() > 0 else mx.cpu()
    out_dir = config.output.dir
    _seed(config.train.seed)

    dataset = RecordDataset(config.data.root)  # validates the files before any work
    make_order(config, dataset)  # and that one global batch fits in it
    net, compute_net, head, embedding_size = build_network(config, dataset.num_classes, ctx)
    if elastic_run and elastic.refusal(head):
        raise TrainingError(f"train.elastic: {elastic.refusal(head)}")
    if pretrained:
        checkpoint.load_pretrained(net, pretrained)
    state = TrainState(config, dataset.num_classes, net, compute_net, head, embedding_size)
    if collective:
        dist.broadcast_parameters(state.params)
    if resume and state.resume(resume, out_dir, log, collective):
        progress["step"] = state.step
    if dist.rank() == 0:  # only now: a run refused above leaves nothing behind
        os.makedirs(out_dir, exist_ok=True)
        checkpoint.remove_partial(out_dir)
        write_json_atomic(os.path.join(out_dir, "config.json"), to_dict(config))

    logger = Logger(out_dir, state.max_steps, state.step, config.data.batch_size * dist.size())
    verification = Verification(config.verification.bins, config.verification.batch_size,
                                config.verification.flip) if config.verification.bins else None
    verify = VerifyEvery(verification, config.verification.every, logger, out_dir) if verification else None
    saver = Checkpoints(out_dir, config.output.checkpoint_every, progress, state.step)
    budget = TimeBudget(config.train.time_budget_minutes, started, state.step, logger) \
        if config.train.time_budget_minutes else None
    callbacks = [c for c in (budget, LogProgress(logger, config.train.log_every), verify, saver) if c]
    results = {"start_step": state.step}
    batches = None
    try:
        if elastic_run:
            bad = {}  # over every reset's batches
            elastic.run(state, lambda: make_batches(config, dataset, state, log, bad), callbacks, logger,
                        config.train.elastic_commit_every, run_steps, log)
            batches = make_batches(config, dataset, state, log, bad)  # for the final checkpoint's data position
        else:
            batches = make_batches(config, dataset, state, log)
            run_steps(state, batches, callbacks, logger)
        if saver.last_saved != state.step and not saver.save(state, batches) and dist.rank() == 0:
            raise TrainingError(f"the final checkpoint of step {state.step} could not be written in {out_dir}")
        if verify:
            results["verification"] = verify(state, state.step)
        with state.averaged():
            if state.average:
                dist.average_running_stats(state.params)
            if dist.rank() == 0 and not checkpoint.export_model(net, os.path.join(out_dir, "model"), 1):
                raise TrainingError(f"the final model could not be exported to {out_dir}/model")
        dist.barrier()  # no worker leaves (and shuts Horovod down) while rank 0 still saves
    finally:
        if batches:
            batches.close()
        logger.close()
    if state.budget:
        results["time_budget"] = dict(state.budget, train_wall_s=round(time.time() - started, 1))
    results.update(steps=state.max_steps, best=state.best, skipped_updates=state.skipped_updates,
                   bad_records=batches.bad_records, samples_per_sec=logger.median_samples_per_sec())
    if elastic_run:
        results["world_size"] = dist.size()
    if dist.rank() == 0:
        write_json_atomic(os.path.join(out_dir, "results.json"), results)
    return (results, net, head) if return_model else results


def fail(message, at_once=False):
    """One clear line (one per problem) on stderr and a non-zero exit; ``at_once`` skips the
    interpreter's teardown (for a process whose collectives are broken)."""
    for line in str(message).splitlines():
        print(f"train: {line}", file=sys.stderr, flush=True)
    if at_once:
        sys.stdout.flush()
        os._exit(1)
    sys.exit(1)
