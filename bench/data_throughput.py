#!/usr/bin/env python
"""Input pipeline throughput: decoded + augmented samples/s (and per core) from a packed .rec,
against what one training step consumes.

Two paths, on the same images, batch size and rank shard:

* ``python``: recognition.data (RecordDataset + ShardedOrder + TrainBatches: OpenCV JPEG decode,
  random mirror, HWC->CHW float32 batch), the training input path, with 0 (inline), 1, 2...
  decoding threads (``--threads``);
* ``record_iter``: MXNet's C++ ``mx.io.ImageRecordIter`` (data_shape (3, H, W), rand_mirror,
  shuffle, part_index / num_parts = this rank's shard, ``preprocess_threads`` from
  ``--iter-threads``). It cannot read an insightface pack as is: record 0 and the identity
  records have empty payloads, which its decoder rejects ("imdecode_: !buf.empty()"). So the image
  records are first copied, byte for byte (no re-encoding), into an image-only .rec/.idx in the
  temporary folder; the copy is not timed.

"Per core" divides samples/s by the decoding threads (1 for inline decoding); on a busy machine
the threads share cores with other work, so the per-core figure is a lower bound. The training
step's consumption comes from ``--step-samples-per-sec`` or is measured here: MobileFaceNet
(hybridized) + ArcFace over the dataset's classes, forward, backward and SGD update on random
images of the same batch size, ``--step-threads`` OpenMP threads.

Data: ``--rec DIR`` (train.rec/train.idx/property); by default /work/shared/data/lfw-devtrain is
packed with tools/pack_rec.py into a temporary folder (aligned 112x112), or, when it is absent, the
committed sample tests/data/lfw_sample. Under horovodrun the shard is this rank's.

Prints one JSON object (also written atomically to ``--json-out``).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from recognition.fileio import print_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW_DEVTRAIN = "/work/shared/data/lfw-devtrain"
SAMPLE = os.path.join(ROOT, "tests", "data", "lfw_sample")


def int_list(text, name, parser):
    try:
        values = [int(v) for v in text.split(",") if v != ""]
    except ValueError:
        parser.error(f"{name}: expected comma-separated integers, got {text!r}")
    if any(v < 0 for v in values):
        parser.error(f"{name}: thread counts must not be negative")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rec", default=None, help="packed dataset folder (default: pack lfw-devtrain, "
                                                "else the committed sample, into a temporary folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per setting")
    p.add_argument("--threads", default="0,1,2", help="decoding threads of the Python path (0: inline)")
    p.add_argument("--iter-threads", default="1,2", help="preprocess_threads of ImageRecordIter")
    p.add_argument("--step-samples-per-sec", type=float, default=None,
                   help="training step consumption; default: measure a MobileFaceNet step")
    p.add_argument("--step-steps", type=int, default=3, help="timed steps of the MobileFaceNet measurement")
    p.add_argument("--step-threads", type=int, default=os.cpu_count(), help="OpenMP threads of that step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.threads = int_list(args.threads, "--threads", p)
    args.iter_threads = [t for t in int_list(args.iter_threads, "--iter-threads", p)]
    if any(t < 1 for t in args.iter_threads):
        p.error("--iter-threads: ImageRecordIter needs at least 1 thread")
    if args.batch_size < 1 or args.batches < 1 or args.warmup < 0 or args.step_steps < 1 or args.step_threads < 1:
        p.error("--batch-size, --batches, --step-steps, --step-threads must be positive, --warmup not negative")
    if args.rec is not None:
        for name in ("train.rec", "train.idx", "property"):
            if not os.path.isfile(os.path.join(args.rec, name)):
                p.error(f"--rec {args.rec}: no {name} there")
    return args


def pack_default(folder):
    """Pack lfw-devtrain (or the committed sample) with tools/pack_rec.py; returns (dir, source)."""
    source = LFW_DEVTRAIN if os.path.isdir(os.path.join(LFW_DEVTRAIN, "images")) else SAMPLE
    out = os.path.join(folder, "packed")
    command = [sys.executable, os.path.join(ROOT, "tools", "pack_rec.py"), os.path.join(source, "images"), out,
               "--landmarks", os.path.join(source, "landmarks.txt")]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"data_throughput: packing {source} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out, source


def image_only_copy(dataset, folder):
    """The image records of an insightface pack copied into a plain .rec/.idx ImageRecordIter reads."""
    import mxnet as mx
    rec, idx = os.path.join(folder, "images.rec"), os.path.join(folder, "images.idx")
    writer = mx.recordio.MXIndexedRecordIO(idx + ".tmp", rec + ".tmp", "w")
    reader = mx.recordio.MXIndexedRecordIO(dataset.idx_path, dataset.rec_path, "r")
    for i, index in enumerate(dataset.image_indices):
        writer.write_idx(i, reader.read_idx(dataset.record_key(int(index))))
    writer.close()
    reader.close()
    os.replace(rec + ".tmp", rec)
    os.replace(idx + ".tmp", idx)
    return rec, idx


def timed(next_batch, warmup, batches, batch_size):
    for _ in range(warmup):
        next_batch()
    start = time.perf_counter()
    for _ in range(batches):
        next_batch()
    seconds = time.perf_counter() - start
    return {"samples_per_sec": batch_size * batches / seconds, "seconds": seconds}


def python_path(args, dataset, rank, size, threads):
    from recognition.data.dataset import ShardedOrder, TrainBatches
    order = ShardedOrder(dataset, args.batch_size, rank, size, args.seed)
    batches = TrainBatches(dataset, order, flip=True, num_workers=threads, prefetch=0 if threads == 0 else 4)
    try:
        result = timed(lambda: next(batches), args.warmup, args.batches, args.batch_size)
    finally:
        batches.close()
    result["per_core"] = result["samples_per_sec"] / max(threads, 1)
    return result


def record_iter_path(args, rec, idx, shape, rank, size, threads):
    import mxnet as mx
    it = mx.io.ImageRecordIter(path_imgrec=rec, path_imgidx=idx, data_shape=shape, batch_size=args.batch_size,
                               rand_mirror=True, shuffle=True, seed=args.seed, part_index=rank, num_parts=size,
                               preprocess_threads=threads, round_batch=True, verbose=False)

    def next_batch():
        try:
            batch = it.next()
        except StopIteration:
            it.reset()
            batch = it.next()
        batch.data[0].wait_to_read()
    result = timed(next_batch, args.warmup, args.batches, args.batch_size)
    result["per_core"] = result["samples_per_sec"] / threads
    return result


def step_samples_per_sec(args, num_classes, shape):
    """MobileFaceNet + ArcFace training step samples/s on random images (hybridized)."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from recognition.losses import get_loss
    from recognition.models import build_backbone
    net, _, embedding_size = build_backbone("mobilefacenet", initializer=mx.init.Xavier())
    head = get_loss("arcface", num_classes=max(num_classes, 2), embedding_size=embedding_size)
    head.initialize()
    head.hybridize(static_alloc=True, static_shape=True)
    params = gluon.ParameterDict()
    params.update(net.collect_params())
    params.update(head.collect_params())
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": 0.01, "momentum": 0.9}, kvstore=None)
    data = mx.nd.random.uniform(0, 255, shape=(args.batch_size,) + shape)
    label = mx.nd.array(mx.nd.random.randint(0, max(num_classes, 2), shape=(args.batch_size,)).asnumpy())

    def step():
        with autograd.record():
            loss = head(net(data), label)
        loss.backward()
        trainer.step(args.batch_size)
        mx.nd.waitall()
    return timed(step, 1, args.step_steps, args.batch_size)["samples_per_sec"]


def main(argv=None):
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.step_threads)  # read when MXNet's engine starts
    from tqdm import tqdm

    from recognition.data.record import RecordDataset, RecordError
    from recognition import distributed
    distributed.init()
    rank, size = distributed.rank(), distributed.size()
    with tempfile.TemporaryDirectory() as folder:
        root, source = (args.rec, args.rec) if args.rec else pack_default(folder)
        try:
            dataset = RecordDataset(root)
        except RecordError as err:
            sys.exit(f"data_throughput: {err}")
        shape = (3, dataset.height, dataset.width)
        rec, idx = image_only_copy(dataset, folder)
        jobs = [("python", t) for t in args.threads] + [("record_iter", t) for t in args.iter_threads]
        result = {"source": source, "images": len(dataset), "classes": dataset.num_classes,
                  "image_shape": list(shape), "batch_size": args.batch_size, "batches": args.batches,
                  "rank": rank, "num_parts": size, "cpu_count": os.cpu_count(),
                  "load_average_before": os.getloadavg()[0], "python": {}, "record_iter": {}}
        for path, threads in tqdm(jobs, desc="settings", file=sys.stderr):
            if path == "python":
                result["python"][str(threads)] = python_path(args, dataset, rank, size, threads)
            else:
                result["record_iter"][str(threads)] = record_iter_path(args, rec, idx, shape, rank, size, threads)
    if args.step_samples_per_sec:
        result["step"] = {"samples_per_sec": args.step_samples_per_sec, "source": "--step-samples-per-sec"}
    else:
        result["step"] = {"samples_per_sec": step_samples_per_sec(args, result["classes"], shape),
                          "source": f"measured: mobilefacenet + arcface, {args.step_threads} OpenMP threads"}
    need = result["step"]["samples_per_sec"]
    for path in ("python", "record_iter"):
        best = max(result[path].values(), key=lambda r: r["per_core"], default=None)
        for r in result[path].values():
            r["over_step"] = r["samples_per_sec"] / need  # >= 1: the loader keeps up
        if best:
            result[path + "_cores_to_feed_step"] = need / best["per_core"]
    result["load_average_after"] = os.getloadavg()[0]
    print_json(result, args.json_out, indent=1)


if __name__ == "__main__":
    main()
