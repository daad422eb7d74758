#!/usr/bin/env python
"""Training throughput of the backbones: samples/s of the full step, hybridized vs imperative.

One step = forward of the backbone, ArcFace loss head over ``--classes`` classes, backward, SGD
with momentum update, exactly as the trainer does it. Each model is measured hybridized
(static_alloc + static_shape) and imperatively in the same run, on a fixed synthetic batch of
112x112 images and, with ``--rec DIR``, on batches read and decoded from a packed .rec by
recognition.data (RecordDataset + TrainBatches, the training input path).

With ``--precisions float32,bfloat16`` (the default) each model is also measured hybridized in
bfloat16 (recognition.models.precision: float32 master weights, bf16 compute in the backbone),
reported beside the float32 hybridized row of the same run; ``float16`` is the GPU's
(``--ctx gpu``, mxnet-cu112). A precision the context cannot run is listed under ``skipped``.

Achieved GFLOP/s counts a training step as 3 forward passes (forward, backward to the inputs,
backward to the weights) of the backbone's convolutions and FC layers plus the head's
(B x D) x (D x C) product, and is set against the float32 matrix-multiply rate of this machine
measured in the same run (mx.nd.dot of two square matrices), so the two numbers are comparable.

``--micro`` instead times one conv3x3-BN-activation block (64 x 128 x 28 x 28) forward + backward +
update with each activation formulation (see recognition.models.embedding.PReLU).

Prints one JSON object (also written atomically to ``--json-out``).
"""
import argparse
import json
import os
import sys
import time

from recognition.fileio import print_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="mobilefacenet,iresnet18",
                   help="comma-separated recognition.models names (e.g. add iresnet50)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OpenMP threads for MXNet operators")
    p.add_argument("--classes", type=int, default=10000, help="classes of the ArcFace head")
    p.add_argument("--modes", default="hybrid,imperative", help="comma-separated: hybrid, imperative")
    p.add_argument("--precisions", default="float32,bfloat16",
                   help="comma-separated: float32, bfloat16 (CPU), float16 (GPU) (recognition.models.precision; "
                        "hybrid mode only)")
    p.add_argument("--ctx", default="cpu", choices=("cpu", "gpu"), help="where the step runs (gpu: GPU 0)")
    p.add_argument("--act", default="prelu", help="backbone activation: prelu, prelu_native or relu")
    p.add_argument("--rec", default=None, help="folder with train.rec/train.idx/property: also time real batches")
    p.add_argument("--workers", type=int, default=2, help="decoding threads for --rec")
    p.add_argument("--matmul-size", type=int, default=1024, help="side of the square matrices for the peak")
    p.add_argument("--micro", action="store_true", help="run the activation micro-benchmark instead")
    p.add_argument("--json-out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.modes = [m for m in args.modes.split(",") if m]
    args.precisions = [m for m in args.precisions.split(",") if m]
    for precision in args.precisions:
        if precision not in ("float32", "bfloat16", "float16"):
            p.error(f"--precisions: unknown precision {precision!r} (float32, bfloat16, float16)")
    for mode in args.modes:
        if mode not in ("hybrid", "imperative"):
            p.error(f"--modes: unknown mode {mode!r} (hybrid, imperative)")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--batch-size, --steps and --threads must be positive, --warmup not negative")
    if args.rec and not os.path.isdir(args.rec):
        p.error(f"--rec {args.rec}: not a folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    # MXNet reads the thread count when its engine starts: set it before the import
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import mxnet as mx

    if args.ctx == "gpu" and mx.context.num_gpus() == 0:
        raise SystemExit("--ctx gpu: MXNet sees no GPU (mxnet-cu112 and an NVIDIA driver are needed)")
    result = {"threads": args.threads, "mxnet": mx.__version__, "ctx": args.ctx,
              "matmul_peak_gflops": matmul_gflops(mx, args.matmul_size, context(mx, args))}
    if args.micro:
        result["activation_micro_ms"] = activation_micro(mx, args)
    else:
        rows, skipped = throughput(mx, args, result["matmul_peak_gflops"])
        result.update(batch_size=args.batch_size, classes=args.classes, steps=args.steps,
                      warmup=args.warmup, act=args.act, results=rows, skipped=skipped)
        result["hybrid_over_imperative"] = ratios(result["results"], "imperative")
        result["low_precision_over_float32"] = ratios(result["results"], "float32")
    print_json(result, args.json_out, indent=2)


def matmul_gflops(mx, n, ctx, reps=10):
    """float32 GEMM rate (2 n^3 flops per product), best of ``reps``."""
    a = mx.nd.random.uniform(shape=(n, n), ctx=ctx)
    b = mx.nd.random.uniform(shape=(n, n), ctx=ctx)
    mx.nd.dot(a, b).wait_to_read()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        mx.nd.dot(a, b).wait_to_read()
        best = min(best, time.perf_counter() - start)
    return round(2.0 * n ** 3 / best / 1e9, 2)


def context(mx, args):
    return mx.gpu(0) if args.ctx == "gpu" else mx.cpu()


def build(mx, name, act, classes, mode, precision, ctx):
    """(block the step runs, ArcFace head, trainer, embedding size), as the trainer builds them."""
    from recognition.losses import get_loss
    from recognition.models import build_backbone

    kwargs = {} if name.startswith("gluoncv:") else {"act": act}
    net, compute_net, dim = build_backbone(name, precision, ctx, hybridize=mode == "hybrid", **kwargs)
    head = get_loss("arcface", num_classes=classes, embedding_size=dim)
    head.initialize(mx.init.Normal(0.01), ctx=ctx)
    if mode == "hybrid":
        head.hybridize(static_alloc=True, static_shape=True)
    params = mx.gluon.ParameterDict()
    params.update(net.collect_params())
    params.update(head.collect_params())
    trainer = mx.gluon.Trainer(params, "sgd", {"learning_rate": 0.01, "momentum": 0.9, "wd": 5e-4})
    return compute_net, head, trainer, dim


def synthetic_batches(mx, batch_size, classes, ctx, seed=0):
    import numpy as np
    rng = np.random.RandomState(seed)
    data = mx.nd.array(rng.uniform(0, 255, (batch_size, 3, 112, 112)).astype(np.float32), ctx=ctx)
    labels = mx.nd.array(rng.randint(0, classes, batch_size).astype(np.float32), ctx=ctx)
    while True:
        yield data, labels


def rec_batches(mx, root, batch_size, workers, ctx):
    from recognition.data.dataset import ShardedOrder, TrainBatches
    from recognition.data.record import RecordDataset
    dataset = RecordDataset(root)
    if (dataset.height, dataset.width) != (112, 112):
        raise SystemExit(f"{dataset.prop_path}: images are {dataset.width}x{dataset.height}, the benchmark needs 112x112")
    batches = TrainBatches(dataset, ShardedOrder(dataset, batch_size), num_workers=workers, prefetch=4)

    def generate():
        for data, labels in batches:
            yield mx.nd.array(data, ctx=ctx), mx.nd.array(labels, ctx=ctx)
    return generate(), dataset.num_classes


def train_step(mx, net, head, trainer, batches, batch_size):
    """One full training step, timed until every pending operation has finished:
    (wall seconds, CPU seconds of this process over all its threads)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    data, labels = next(batches)
    with mx.autograd.record():
        loss = head(net(data), labels)
    loss.backward()
    trainer.step(batch_size)
    mx.nd.waitall()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if not (loss.asnumpy() == loss.asnumpy()).all():  # NaN: a broken step would flatter the rate
        raise SystemExit("the loss became NaN")
    return elapsed, cpu


def throughput(mx, args, peak):
    """Each (model, source, mode) is built, warmed up and timed in turn, then freed: a network
    trained imperatively keeps every intermediate array, so two at once would double the memory
    (iresnet18 at batch 64 needs several GB). cpu_s_per_step tells when outside load skewed a row."""
    import gc
    import resource

    from tqdm import tqdm

    from recognition.models import forward_flops, get_model

    from recognition.data.record import RecordError

    sources = [("synthetic", None)] + ([("rec", args.rec)] if args.rec else [])
    flops = {}
    for name in args.models:  # every name checked before the first long measurement
        kwargs = {} if name.startswith("gluoncv:") else {"act": args.act}
        try:
            flops[name] = forward_flops(get_model(name, **kwargs))
        except ValueError as err:
            raise SystemExit(f"--models {name}: {err}") from None
    if args.rec:
        try:
            rec_batches(mx, args.rec, args.batch_size, 0, mx.cpu())
        except RecordError as err:
            raise SystemExit(f"--rec: {err}") from None
    from recognition.models.precision import bfloat16_supported
    ctx = context(mx, args)
    # float32 is always measured (the baseline); a low precision, a rewrite of the hybridized graph,
    # only hybridized and where the context runs it (bfloat16: an AVX-512 CPU; float16: a GPU)
    runnable = {"bfloat16": ctx.device_type == "cpu" and bfloat16_supported(), "float16": ctx.device_type == "gpu"}
    low = [p for p in args.precisions if p != "float32"]
    runs = [(mode, "float32") for mode in args.modes] + \
        [("hybrid", p) for p in low if runnable[p] and "hybrid" in args.modes]
    skipped = [{"precision": p, "why": "needs --modes hybrid" if runnable[p] else
                f"{p} cannot run on {args.ctx} here"} for p in low if ("hybrid", p) not in runs]
    rows = []
    for name in args.models:
        fwd_flops = flops[name]
        for source, root in sources:
            for mode, precision in runs:
                if root:
                    batches, rec_classes = rec_batches(mx, root, args.batch_size, args.workers, ctx)
                    classes = max(args.classes, rec_classes)
                else:
                    classes = args.classes
                    batches = synthetic_batches(mx, args.batch_size, classes, ctx)
                net, head, trainer, dim = build(mx, name, args.act, classes, mode, precision, ctx)
                walls, cpus = [], []
                for i in tqdm(range(args.warmup + args.steps), desc=f"{name} {source} {mode} {precision}", file=sys.stderr,
                              leave=False):
                    wall, cpu = train_step(mx, net, head, trainer, batches, args.batch_size)
                    if i >= args.warmup:
                        walls.append(wall)
                        cpus.append(cpu)
                del net, head, trainer, batches
                gc.collect()
                step_s, cpu_s = sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]
                # training ~ 3 forwards: forward, gradient to the inputs, gradient to the weights
                gflops = 3 * args.batch_size * (fwd_flops + 2 * dim * classes) / step_s / 1e9
                rows.append({"model": name, "source": source, "mode": mode, "precision": precision,
                             "samples_per_s": round(args.batch_size / step_s, 2),
                             "step_ms_median": round(step_s * 1000, 1),
                             "step_ms_min": round(min(walls) * 1000, 1),
                             # CPU seconds per step over all threads; well below threads x wall
                             # time means other processes took the cores (a pessimistic figure)
                             "cpu_s_per_step": round(cpu_s, 2),
                             "cpu_utilisation": round(cpu_s / step_s / args.threads, 2),
                             "forward_gflops_per_image": round(fwd_flops / 1e9, 3),
                             "achieved_gflops": round(gflops, 2),
                             "fraction_of_matmul_peak": round(gflops / peak, 3),
                             "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows, skipped


def ratios(rows, over):
    """samples/s of each hybridized row over its baseline row of the same run: the imperative
    float32 one (``over="imperative"``) or the hybridized float32 one (``over="float32"``)."""
    out = {}
    by_key = {(r["model"], r["source"], r["mode"], r["precision"]): r["samples_per_s"] for r in rows}
    for (model, source, mode, precision), rate in by_key.items():
        if mode != "hybrid":
            continue
        if over == "imperative" and precision == "float32":
            base = by_key.get((model, source, "imperative", "float32"))
        elif over == "float32" and precision != "float32":
            base = by_key.get((model, source, "hybrid", "float32"))
        else:
            continue
        if base:
            out[f"{model}/{source}" + (f"/{precision}" if over == "float32" else "")] = round(rate / base, 3)
    return out


def activation_micro(mx, args, shape=(64, 128, 28, 28), reps=5):
    """ms per forward + backward + SGD update of conv3x3-BN-act, hybridized; the variants run in
    turn each repetition (fair under outside load), median of ``reps``, wall-clock and CPU time."""
    from mxnet import autograd, gluon
    from mxnet.gluon import nn
    from recognition.models.embedding import make_activation

    x = mx.nd.random.normal(shape=shape)
    channels = shape[1]
    blocks = {}
    for act in (None, "relu", "prelu", "prelu_native"):
        block = nn.HybridSequential()
        block.add(nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=channels),
                  nn.BatchNorm(in_channels=channels))
        if act:
            block.add(make_activation(act, channels))
        block.initialize(mx.init.Xavier())
        block.hybridize(static_alloc=True, static_shape=True)
        trainer = gluon.Trainer(block.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
        blocks[act or "conv_bn_only"] = (block, trainer)
    times = {name: ([], []) for name in blocks}
    for i in range(reps + 1):
        for name, (block, trainer) in blocks.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            with autograd.record():
                y = block(x)
            y.backward()
            trainer.step(shape[0])
            mx.nd.waitall()
            if i:
                times[name][0].append(time.perf_counter() - start)
                times[name][1].append(time.process_time() - cpu_start)
    median = lambda v: round(sorted(v)[len(v) // 2] * 1000, 1)  # noqa: E731
    return {name: {"wall_ms": median(wall), "cpu_ms": median(cpu)} for name, (wall, cpu) in times.items()}


if __name__ == "__main__":
    main()
