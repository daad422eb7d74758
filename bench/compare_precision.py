#!/usr/bin/env python
"""float32 against bfloat16 training: the same run twice, scored on people it never saw.

One config (default ``configs/softmax.yaml``: MobileFaceNet-128 and the best head of
compare_losses) is trained by the project's trainer with ``train.precision`` float32 and then
bfloat16, with the same data, steps, seed and schedule, single process, on the deterministic
held-out split of ``bench/common.py``. Reported per precision: insightface's 10-fold accuracy,
TAR at FAR = 1e-3, training samples/s (median over the log intervals, the first left out), and
bfloat16's samples/s over float32's of the same run.

Prints a Markdown table and a JSON object; writes OUT.json and OUT.md.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=os.path.join(common.REPO, "configs", "softmax.yaml"))
    p.add_argument("--model", default=None, help="override model.name (e.g. iresnet18)")
    p.add_argument("--steps", type=int, default=300, help="training steps per precision")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup (default: a tenth of --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--verify-flip", default="none", choices=("sum", "concat", "none"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra trainer overrides")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "compare_precision"),
                   help="output prefix: OUT.json and OUT.md")
    p.add_argument("--render", metavar="JSON", help="only re-write the Markdown of an earlier result (no training)")
    common.add_split_args(p)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.log_every < 1:
        p.error("--steps, --batch-size and --log-every must be positive")
    if not os.path.isfile(args.config):
        p.error(f"--config {args.config}: not found")
    if args.warmup_steps is None:
        args.warmup_steps = args.steps // 10
    return args


def render(result):
    rows = result["runs"]
    table = [[r["precision"], f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}", f"{r['tar_at_far_1e-3']:.4f}",
              f"{r['samples_per_sec']:.1f}", f"{r['samples_per_sec'] / rows[0]['samples_per_sec']:.2f}x"]
             for r in rows]
    env = result["environment"]
    return "\n".join([
        "## float32 and bfloat16 training on held-out LFW people", "",
        f"Data: {common.split_description(result['split'])}.", "",
        f"Training: {result['setup']}.", "",
        common.markdown_table(["precision", "accuracy ± std (10 folds)", "TAR@FAR=1e-3", "samples/s",
                               "speed vs float32"], table), "",
        common.noise_note(result["split"]["pairs"]), "",
        f"samples/s: median of the trainer's per-interval throughput on a {env['cpus']}-core machine "
        f"(load average at start {env['load_average_at_start'][0]:.1f}).",
    ])


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return common.rerender(args.render, render)
    manifest, env = common.start(args)
    from recognition.models.precision import bfloat16_supported
    if not bfloat16_supported():
        raise SystemExit("compare_precision: this CPU/MXNet build cannot run bfloat16 (MKL-DNN, AVX-512)")
    extra = [f"model.name={args.model}"] if args.model else []
    rows, started = [], time.time()
    for precision in PRECISIONS:
        out_dir = os.path.join(args.work_dir, "precision", precision)
        common.log(f"{precision}: {args.steps} steps of {args.batch_size} ({os.path.basename(args.config)})")
        results, wall, config = common.run_training(args.config, extra + common.trainer_overrides(
            manifest, out_dir, args.steps, args.batch_size, args.seed, args.warmup_steps, args.log_every,
            args.workers, args.verify_flip) + list(args.set) + [f"train.precision={precision}"])
        row = {"precision": precision, "model": config.model.name, "loss": config.loss.name,
               **common.verification_row(results), "samples_per_sec": common.throughput(out_dir),
               "skipped_updates": results["skipped_updates"], "wall_s": round(wall, 1)}
        rows.append(row)
        common.log(f"{precision}: accuracy {row['accuracy']:.4f} +- {row['accuracy_std']:.4f}, "
                   f"{row['samples_per_sec']:.1f} samples/s, {wall:.0f} s")
    setup = (f"{rows[0]['model']} + {rows[0]['loss']} ({os.path.relpath(args.config, common.REPO)}), single "
             f"process, {args.steps} steps x batch {args.batch_size}, seed {args.seed}, {args.warmup_steps} "
             f"warmup steps, {env['omp_threads']} OpenMP thread(s); verification flip: {args.verify_flip}")
    result = {"benchmark": "compare_precision", "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
              "split": manifest, "setup": setup, "environment": env, "runs": rows,
              "bfloat16_over_float32_samples_per_sec": round(rows[1]["samples_per_sec"] / rows[0]["samples_per_sec"], 3),
              "total_wall_s": round(time.time() - started, 1)}
    common.write_outputs(args.out, result, render(result))


if __name__ == "__main__":
    main()
