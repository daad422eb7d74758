#!/usr/bin/env python
"""Classifier heads with very many identities across Horovod workers: memory and samples/s.

For each number of classes and each mode, a separate ``horovodrun -np N`` job (so peak RSS belongs
to one setting) trains only the loss head, fed with random embeddings (no backbone: the head is
what grows with the classes), for a few SGD-with-momentum steps, exactly as the trainer steps it:

* ``full``    the ordinary head (recognition.losses.get_loss): every worker holds all C rows, the
              (C, D) weight gradient is averaged by hvd.DistributedTrainer each step (the baseline);
* ``sharded`` recognition.losses.sharded: C / N rows per worker, softmax over all classes of the
              global batch, block stepped by a plain Trainer (nothing of it is allreduced);
* ``pfc``     the sharded head with Partial FC (``--sample-ratio``).

Per setting and rank: peak and final RSS (VmHWM / VmRSS), the head's parameter, gradient and
optimizer-state bytes on that rank, and global-batch samples/s over the timed steps. The summary
fits RSS = a + b * C per mode through the measured class counts and extrapolates how many classes
fit in ``--budget-gib`` per worker (at this embedding size and batch; parameters, gradient and
momentum scale with D, the logits with the global batch).

``--checkpoint`` (sharded and pfc modes) also measures what a checkpoint of the head costs now that
rank 0 writes every block (recognition.engine.shards: blocks broadcast one at a time, in chunks,
so nothing assumes a shared filesystem): the time to gather and write all blocks, against each rank
writing its own block to its own disk (the layout that needed a shared folder), the time for rank
0 to read and re-send them on resume, and how much each rank's peak RSS grew while doing so.

Prints one JSON object (also written atomically to ``--json-out``).
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
MODES = ("full", "sharded", "pfc")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--classes", default="10000,100000,1000000",
                   help="comma-separated class counts (the smaller ones also guard memory for the larger)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    p.add_argument("--loss", default="arcface", help="head (a get_loss name with a classifier)")
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--sample-ratio", type=float, default=0.1, help="Partial FC ratio of the pfc mode")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--np", type=int, default=2, help="Horovod workers (all on localhost)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per worker")
    p.add_argument("--budget-gib", type=float, default=24.0, help="memory per worker for the 'fits' estimate")
    p.add_argument("--timeout", type=int, default=900, help="seconds per setting")
    p.add_argument("--memory-margin-gib", type=float, default=2.0,
                   help="skip a setting whose peak RSS, extrapolated from the smaller class counts of "
                        "the same mode, would leave less than this much of MemAvailable (shared machine)")
    p.add_argument("--checkpoint", action="store_true",
                   help="sharded/pfc: also time saving the blocks to rank 0 and loading them back")
    p.add_argument("--json-out", default=None, help="also write the JSON here")
    p.add_argument("--worker", nargs=3, metavar=("MODE", "CLASSES", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.classes = [int(c) for c in args.classes.split(",") if c]
    except ValueError:
        p.error(f"--classes: expected comma-separated integers, got {args.classes!r}")
    args.modes = [m for m in args.modes.split(",") if m]
    for mode in args.modes:
        if mode not in MODES:
            p.error(f"--modes: unknown mode {mode!r} ({', '.join(MODES)})")
    if min(args.classes, default=0) < args.np or args.embedding_size < 1 or args.batch_size < 1 \
            or args.steps < 1 or args.warmup < 0 or args.np < 1 or args.threads < 1:
        p.error("--classes must be >= --np; sizes, --steps, --np, --threads positive, --warmup not negative")
    if not 0 < args.sample_ratio <= 1:
        p.error("--sample-ratio must be in (0, 1]")
    return args


def proc_status():
    """(VmRSS, VmHWM) of this process in bytes."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def nbytes(arrays):
    import numpy as np
    return int(sum(a.size * np.dtype(a.dtype).itemsize for a in arrays))


def optimizer_state_bytes(trainer):
    """Bytes of the optimizer states (momentum) the trainer's updater holds."""
    import mxnet as mx
    total = []

    def walk(state):
        if isinstance(state, mx.nd.NDArray):
            total.append(state)
        elif isinstance(state, (list, tuple)):
            for s in state:
                walk(s)
    for updater in trainer._updaters:
        for state in updater.states.values():
            walk(state)
    return nbytes(total)


def worker(args):
    """One setting on one rank; writes OUT.rankR.json."""
    mode, classes, out = args.worker[0], int(args.worker[1]), args.worker[2]
    import mxnet as mx
    from mxnet import autograd, gluon

    from recognition import distributed
    from recognition.losses import get_loss
    from recognition.losses.sharded import get_sharded_loss

    distributed.init()
    rank, size = distributed.rank(), distributed.size()
    rss_start, _ = proc_status()
    opt = {"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4}
    b, d = args.batch_size, args.embedding_size
    if mode == "full":
        head = get_loss(args.loss, num_classes=classes, embedding_size=d)
        head.initialize(mx.init.Normal(0.01))
        trainer = distributed.make_trainer(head.collect_params(), "sgd", opt)
        step = lambda: trainer.step(b)  # noqa: E731
        own = head.collect_params()
    else:
        ratio = args.sample_ratio if mode == "pfc" else 1.0
        head = get_sharded_loss(args.loss, classes, d, sample_ratio=ratio, seed=0)
        head.initialize(mx.init.Normal(0.01))
        own = head.local_params()
        local = gluon.Trainer(own, "sgd", opt, kvstore=None)
        shared = head.shared_params()
        trainers = [local] + ([distributed.make_trainer(shared, "sgd", opt)] if len(shared.keys()) else [])
        trainer = local

        def step():
            local.step(b * size)
            for t in trainers[1:]:
                t.step(b)
    mx.random.seed(1000 + rank)  # different random embeddings per rank
    times = []
    for i in range(args.warmup + args.steps):
        x = mx.nd.random.normal(shape=(b, d))
        y = mx.nd.random.randint(0, classes, shape=(b,)).astype("float32")
        x.attach_grad()
        mx.nd.waitall()
        distributed.barrier()
        start = time.perf_counter()
        with autograd.record():
            if hasattr(head, "update_state"):
                head.update_state(x.detach(), y)
            loss = head(x, y)
        loss.backward()
        step()
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    rss, peak = proc_status()
    params = [p.data() for p in own.values()]
    grads = [p.grad() for p in own.values() if p.grad_req != "null"]
    result = {"mode": mode, "classes": classes, "rank": rank, "size": size,
              "rows_on_rank": int(own[head.weight.name].shape[0]),
              "rows_in_logits": (int(head.num_sample) if mode == "pfc" else int(own[head.weight.name].shape[0])),
              "param_bytes": nbytes(params), "grad_bytes": nbytes(grads),
              "optimizer_bytes": optimizer_state_bytes(trainer),
              "rss_start_bytes": rss_start, "rss_bytes": rss, "peak_rss_bytes": peak,
              "step_seconds": times[args.warmup:],
              "samples_per_sec": b * size * args.steps / sum(times[args.warmup:]),
              "loss": float(loss.mean().asscalar())}
    if args.checkpoint and mode != "full":
        result["checkpoint"] = checkpoint_cost(head, local, out)
    tmp = f"{out}.rank{rank}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, f"{out}.rank{rank}.json")


def checkpoint_cost(head, trainer, out):
    """Seconds and peak-RSS growth of saving a sharded head's blocks to rank 0 (the trainer's way),
    of each rank writing its own block locally (the baseline), and of rank 0 re-sending them."""
    import mxnet as mx

    from recognition import distributed
    from recognition.engine import shards
    from recognition.engine.checkpoint import BLOCK_FILE
    from recognition.losses.sharded import shard_range
    rank, size = distributed.rank(), distributed.size()
    folder = f"{out}.checkpoint"
    if rank == 0:
        os.makedirs(folder)
    mx.nd.waitall()
    distributed.barrier()
    _, peak_before = proc_status()
    start = time.perf_counter()
    for k, arrays in shards.gather_blocks(head, trainer):  # rank 0 only gets blocks
        mx.nd.save(os.path.join(folder, BLOCK_FILE.format(k)), arrays)
    distributed.barrier()
    gather_s = time.perf_counter() - start
    _, peak_saved = proc_status()
    start = time.perf_counter()
    own = f"{out}.own-block.rank{rank}"
    mx.nd.save(own, shards.block_arrays(head, trainer))
    distributed.barrier()
    local_s = time.perf_counter() - start
    written = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)) if rank == 0 else 0
    os.remove(own)
    meta = {"head_blocks": [list(shard_range(head.num_classes, r, size)) for r in range(size)],
            "head_optimizer": shards.optimizer_counters(trainer, shards.block_roles(head))}
    start = time.perf_counter()
    shards.scatter_blocks(folder, meta, head, trainer)
    mx.nd.waitall()
    distributed.barrier()
    scatter_s = time.perf_counter() - start
    _, peak_loaded = proc_status()
    return {"gather_to_rank0_and_write_s": gather_s, "each_rank_writes_own_block_s": local_s,
            "rank0_reads_and_scatters_s": scatter_s, "bytes_written_by_rank0": written,
            "peak_rss_growth_save_gib": (peak_saved - peak_before) / 2 ** 30,
            "peak_rss_growth_load_gib": (peak_loaded - peak_saved) / 2 ** 30,
            "chunk_mib": shards.CHUNK_BYTES / 2 ** 20}


def launch(args, mode, classes, folder):
    """Run one setting under horovodrun; returns the list of per-rank results (or an error)."""
    out = os.path.join(folder, f"{mode}_{classes}")
    python = sys.executable
    bindir = os.path.dirname(python)
    horovodrun = os.path.join(bindir, "horovodrun")
    if not os.path.exists(horovodrun):
        return {"error": f"{horovodrun}: not found (the venv's Horovod)"}
    passed = ["--loss", args.loss, "--embedding-size", str(args.embedding_size), "--batch-size",
              str(args.batch_size), "--sample-ratio", str(args.sample_ratio), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--classes", str(classes)] + \
        (["--checkpoint"] if args.checkpoint else [])
    command = [horovodrun, "-np", str(args.np), "-H", f"localhost:{args.np}", "--gloo", python,
               os.path.abspath(__file__)] + passed + ["--worker", mode, str(classes), out]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT,
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    if proc.returncode != 0:
        # horovodrun prefixes the workers' lines with [rank]<stderr>:; keep those, they say why
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "<stderr>" in line]
        return {"error": f"exit {proc.returncode}: " + "\n".join(lines[-8:] or [proc.stderr[-600:]])}
    ranks = []
    for r in range(args.np):
        with open(f"{out}.rank{r}.json") as f:
            ranks.append(json.load(f))
    return {"ranks": ranks}


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def expected_peak(result, mode, classes, workers):
    """All workers' peak RSS at ``classes``, extrapolated linearly from the measured smaller
    settings of ``mode`` (None before two have been measured)."""
    points = sorted((int(key.split("/")[1]), s["peak_rss_gib"] * 2 ** 30) for key, s in result["settings"].items()
                    if key.startswith(mode + "/") and "peak_rss_gib" in s)
    line = fits(points, 0)
    if line is None:
        return None
    return workers * (line["fixed_bytes"] + line["bytes_per_class"] * classes)


def summarise(setting):
    """Per-setting figures: the worst rank's memory, samples/s (every rank times the same steps)."""
    ranks = setting["ranks"]
    worst = max(ranks, key=lambda r: r["peak_rss_bytes"])
    state = worst["param_bytes"] + worst["grad_bytes"] + worst["optimizer_bytes"]
    summary = {"checkpoint": {k: max(r["checkpoint"][k] for r in ranks) for k in ranks[0]["checkpoint"]}} \
        if "checkpoint" in ranks[0] else {}
    return summary | {"peak_rss_gib": worst["peak_rss_bytes"] / 2 ** 30, "rss_gib": worst["rss_bytes"] / 2 ** 30,
            "head_param_grad_optimizer_gib": state / 2 ** 30,
            "param_gib": worst["param_bytes"] / 2 ** 30, "optimizer_gib": worst["optimizer_bytes"] / 2 ** 30,
            "rows_on_rank": worst["rows_on_rank"], "rows_in_logits": worst["rows_in_logits"],
            "samples_per_sec": min(r["samples_per_sec"] for r in ranks)}


def fits(points, budget):
    """Classes whose peak RSS per worker stays under ``budget`` bytes, from the line through the
    two largest (classes, peak RSS) points (None with fewer than two points or a flat line)."""
    if len(points) < 2:
        return None
    (c0, m0), (c1, m1) = sorted(points)[-2:]
    slope = (m1 - m0) / (c1 - c0)
    if slope <= 0:
        return None
    return {"bytes_per_class": slope, "fixed_bytes": m0 - slope * c0,
            "max_classes": int((budget - (m0 - slope * c0)) / slope)}


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    from tqdm import tqdm
    result = {"loss": args.loss, "embedding_size": args.embedding_size, "batch_per_worker": args.batch_size,
              "workers": args.np, "threads_per_worker": args.threads, "steps": args.steps,
              "warmup": args.warmup, "sample_ratio": args.sample_ratio, "fed_with": "random embeddings (head only)",
              "baseline": "full", "settings": {}}
    jobs = [(mode, classes) for classes in sorted(args.classes) for mode in args.modes]
    with tempfile.TemporaryDirectory() as folder:
        for mode, classes in tqdm(jobs, desc="settings", file=sys.stderr):
            key = f"{mode}/{classes}"
            need, free = expected_peak(result, mode, classes, args.np), mem_available()
            if need is not None and free is not None and need > free - args.memory_margin_gib * 2 ** 30:
                result["settings"][key] = {"skipped": f"needs about {need / 2 ** 30:.1f} GiB, "
                                                      f"{free / 2 ** 30:.1f} GiB available"}
                continue
            setting = launch(args, mode, classes, folder)
            result["settings"][key] = dict(summarise(setting), ranks=setting["ranks"]) if "ranks" in setting \
                else setting
    budget = args.budget_gib * 2 ** 30
    result["fits_in_budget"] = {}
    for mode in args.modes:
        points = [(c, result["settings"][f"{mode}/{c}"]["peak_rss_gib"] * 2 ** 30) for c in sorted(args.classes)
                  if "peak_rss_gib" in result["settings"][f"{mode}/{c}"]]
        result["fits_in_budget"][mode] = fits(points, budget)
        for c in sorted(args.classes):
            s, base = result["settings"][f"{mode}/{c}"], result["settings"].get(f"full/{c}", {})
            if "samples_per_sec" in s and "samples_per_sec" in base:
                s["speedup_over_full"] = s["samples_per_sec"] / base["samples_per_sec"]
    print_json(result, args.json_out, indent=1)


if __name__ == "__main__":
    main()
