"""How to spend the cores: Horovod workers x OpenMP threads, and the allreduce's share of the step.

Runs the training step of recognition.engine.trainer (network forward, ArcFace head over
--classes classes, backward, allreduce, SGD momentum update) on synthetic 112x112 batches for
each layout, e.g. 1 process x 2 threads against 2 Horovod workers x 1 thread, at the same global
batch. The allreduce is timed apart (gradients made ready first, then allreduce_grads waited on),
so its share of the step is measured, not inferred. Layouts with --groups also try Horovod's
grouped allreduce (DistributedTrainer num_groups).

    python bench/horovod_scaling.py                      # mobilefacenet, global batch 64, 10k classes
    python bench/horovod_scaling.py --model iresnet18 --steps 6 --json-out scaling.json

Prints one JSON object; the first layout is the baseline of the ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from recognition.fileio import print_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
    """One process of a layout: time the steps, rank 0 writes the figures."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import mxnet as mx
    from mxnet import autograd
    from recognition import distributed as dist
    from recognition.losses import get_loss
    from recognition.models import build_backbone
    dist.init()
    rank, size = dist.rank(), dist.size()
    batch = args.global_batch // size
    mx.random.seed(rank)
    # as the trainer's train.precision: net holds the float32 weights, compute_net runs
    net, compute_net, dim = build_backbone(args.model, args.precision, mx.cpu(), initializer=mx.init.Xavier(magnitude=2))
    head = get_loss("arcface", num_classes=args.classes, embedding_size=dim)
    head.initialize(mx.init.Normal(0.01))
    head.hybridize(static_alloc=True, static_shape=True)
    params = mx.gluon.ParameterDict()
    params.update(net.collect_params())
    params.update(head.collect_params())
    dist.broadcast_parameters(params)
    opt = {"learning_rate": 0.01, "momentum": 0.9, "wd": 5e-4}
    hvd = dist.horovod()
    trainer = hvd.DistributedTrainer(params, "sgd", opt, num_groups=args.groups) if hvd \
        else mx.gluon.Trainer(params, "sgd", opt, kvstore=None)
    rng = np.random.default_rng(rank)
    data = mx.nd.array(rng.uniform(0, 255, (batch, 3, 112, 112)))
    label = mx.nd.array(rng.integers(0, args.classes, batch))
    compute, reduce, total = [], [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        with autograd.record():
            loss = head(compute_net(data), label)
        loss.backward()
        mx.nd.waitall()
        middle = time.perf_counter()
        trainer.allreduce_grads()
        mx.nd.waitall()
        reduced = time.perf_counter()
        trainer.update(batch)
        mx.nd.waitall()
        end = time.perf_counter()
        if step >= args.warmup:
            compute.append(middle - start + end - reduced)
            reduce.append(reduced - middle)
            total.append(end - start)
    if rank == 0:
        step_s = float(np.median(total))
        result = {"workers": size, "threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "groups": args.groups,
                  "precision": args.precision,
                  "global_batch": args.global_batch, "step_s": step_s,
                  "samples_per_sec": args.global_batch / step_s,
                  "allreduce_s": float(np.median(reduce)), "allreduce_share": float(np.median(reduce)) / step_s,
                  "compute_s": float(np.median(compute))}
        with open(args.result, "w") as f:
            json.dump(result, f)


def run_layout(args, workers, threads, groups):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--result", result,
                   "--model", args.model, "--classes", str(args.classes), "--global-batch", str(args.global_batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--groups", str(groups),
                   "--precision", args.precision]
        if workers > 1:
            command = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", str(workers),
                       "-H", f"localhost:{workers}", "--gloo"] + command
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0 or not os.path.exists(result):
            return {"workers": workers, "threads": threads, "groups": groups,
                    "error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
        with open(result) as f:
            return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="mobilefacenet")
    p.add_argument("--classes", type=int, default=10000)
    p.add_argument("--global-batch", type=int, default=64, help="samples per step over all workers")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layouts", default="1x2,2x1,2x1g1",
                   help="WORKERSxTHREADS[gGROUPS], comma separated; the first is the baseline")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                   help="the backbone's compute precision (the trainer's train.precision)")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--json-out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--groups", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    rows = []
    for layout in args.layouts.split(","):
        shape, _, groups = layout.partition("g")
        workers, threads = (int(v) for v in shape.split("x"))
        print(f"layout {layout} ...", file=sys.stderr, flush=True)
        rows.append(dict(run_layout(args, workers, threads, int(groups or 0)), layout=layout))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0].get("samples_per_sec")
    for row in rows:
        if base and "samples_per_sec" in row:
            row["ratio_to_first"] = row["samples_per_sec"] / base
    report = {"model": args.model, "precision": args.precision, "classes": args.classes,
              "global_batch": args.global_batch, "layouts": rows}
    print_json(report, args.json_out, indent=1)


if __name__ == "__main__":
    main()
