#!/usr/bin/env python
"""Every loss head trained the same way, scored on people it never saw.

Each head is trained by the project's trainer (``recognition.engine.trainer.train``) from its own
config (``configs/HEAD.yaml``: the head's parameters, on top of ``demo.yaml``'s network
MobileFaceNet-128, SGD lr 0.05, cosine schedule) with the same data, batch size, number of
steps, warmup and seed, single process. Data: a deterministic split of LFW's
development-training people (see ``bench/common.py``): the held-out people's pairs are the
verification ``.bin``, the others are packed for training. Reported per head: insightface's
10-fold accuracy (mean +- std over the folds), TAR at FAR = 1e-3, and training samples/s (median
over the trainer's log intervals, the first left out).

Prints a Markdown table and a JSON object; writes OUT.json and OUT.md.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONFIGS = os.path.join(common.REPO, "configs")
# head name in the table -> (config file, extra overrides). "center" has no config of its own:
# the centre loss alone (no classifier), on top of demo.yaml.
HEADS = {
    "softmax": ("softmax.yaml", []),
    "arcface": ("arcface.yaml", []),
    "cosface": ("cosface.yaml", []),
    "l2softmax": ("l2softmax.yaml", []),
    "adacos": ("adacos.yaml", []),
    "km": ("km.yaml", []),
    "km+center": ("km_center.yaml", []),
    "git": ("git.yaml", []),
    "center": ("demo.yaml", ["loss.name=center", "loss.params={}"]),
}
DEFAULT_HEADS = "softmax,arcface,cosface,l2softmax,adacos,km,km+center,git"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--heads", default=DEFAULT_HEADS,
                   help="comma-separated, from: " + ", ".join(HEADS) + " (center alone has no classifier: "
                        "features and centres start at zero and can both stay there)")
    p.add_argument("--steps", type=int, default=120, help="training steps per head")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="override optimizer.lr of every head (default: the configs')")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warmup of every head (default: a tenth of --steps)")
    p.add_argument("--verify-flip", default="none", choices=("sum", "concat", "none"),
                   help="test-time flip of the verification (none halves its cost)")
    p.add_argument("--seed", type=int, default=0, help="train.seed (initialisation and data order)")
    p.add_argument("--log-every", type=int, default=10, help="trainer log interval (samples/s is measured over it)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra trainer overrides applied to every head")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "compare_losses"),
                   help="output prefix: OUT.json and OUT.md")
    p.add_argument("--render", metavar="JSON", help="only re-write the Markdown of an earlier result (no training)")
    common.add_split_args(p)
    args = p.parse_args(argv)
    args.heads = [h for h in args.heads.split(",") if h]
    unknown = [h for h in args.heads if h not in HEADS]
    if unknown:
        p.error(f"--heads: unknown {', '.join(unknown)} (known: {', '.join(HEADS)})")
    if args.steps < 1 or args.batch_size < 1 or args.log_every < 1:
        p.error("--steps, --batch-size and --log-every must be positive")
    if args.warmup_steps is None:
        args.warmup_steps = args.steps // 10
    return args


def render(result):
    """The Markdown of a result (everything it shows comes from the JSON)."""
    env, rows = result["environment"], result["heads"]
    table = [[r["head"], f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}", f"{r['tar_at_far_1e-3']:.4f}",
              f"{r['samples_per_sec']:.1f}"] for r in rows]
    return "\n".join([
        "## Loss heads on held-out LFW people", "",
        f"Data: {common.split_description(result['split'])}.", "",
        f"Training: {result['setup']}. Each head's parameters are those of its `configs/HEAD.yaml`.", "",
        common.markdown_table(["head", "accuracy ± std (10 folds)", "TAR@FAR=1e-3", "samples/s"], table), "",
        common.noise_note(result["split"]["pairs"]), "",
        f"Budget: {result['steps'] * result['batch_size']} training images per head "
        f"({result['steps'] * result['batch_size'] / result['split']['train_images']:.2f} epochs), "
        f"{result['total_wall_s'] / 60:.0f} minutes for all heads: an early-training snapshot, not converged "
        "models; heads that need long training (large margins, s = 64) are at a disadvantage.", "",
        "samples/s: median of the trainer's per-interval throughput (first interval left out) on a "
        f"{env['cpus']}-core machine shared with other jobs (load average at start "
        f"{env['load_average_at_start'][0]:.1f}); differences between heads are mostly load noise.",
    ])


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return common.rerender(args.render, render)
    manifest, env = common.start(args)
    runs_dir = os.path.join(args.work_dir, "losses")
    rows = []
    started = time.time()
    for number, head in enumerate(args.heads, 1):
        config_file, extra = HEADS[head]
        out_dir = os.path.join(runs_dir, head.replace("+", "_"))
        common.log(f"[{number}/{len(args.heads)}] {head}: {args.steps} steps of {args.batch_size} "
                   f"(configs/{config_file} {' '.join(extra)})")
        results, wall, config = common.run_training(os.path.join(CONFIGS, config_file),
                                                    extra + common.trainer_overrides(
            manifest, out_dir, args.steps, args.batch_size, args.seed, args.warmup_steps, args.log_every,
            args.workers, args.verify_flip, args.lr) + list(args.set))
        scores = common.verification_row(results)
        row = {"head": head, "config": f"configs/{config_file}", "loss": config.loss.name,
               "loss_params": config.loss.params, **scores,
               "samples_per_sec": common.throughput(out_dir),
               "samples_per_sec_last_interval": results["samples_per_sec"],
               "skipped_updates": results["skipped_updates"], "wall_s": round(wall, 1),
               "checkpoint": os.path.join(out_dir, "checkpoints", f"step-{args.steps:08d}")}
        rows.append(row)
        common.log(f"{head}: accuracy {row['accuracy']:.4f} +- {row['accuracy_std']:.4f}, "
                   f"TAR@FAR=1e-3 {row['tar_at_far_1e-3']:.4f}, {row['samples_per_sec']:.1f} samples/s, "
                   f"{wall:.0f} s")

    setup = (f"MobileFaceNet-128, single process, {args.steps} steps x batch {args.batch_size} per head, "
             f"seed {args.seed}, SGD momentum 0.9, wd 5e-4, cosine lr with {args.warmup_steps} warmup steps "
             f"(lr {'%g' % args.lr if args.lr is not None else 'of each config: 0.05'}), "
             f"{env['omp_threads']} OpenMP thread(s); verification flip: {args.verify_flip}")
    result = {"benchmark": "compare_losses", "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
              "split": manifest, "setup": setup, "steps": args.steps, "batch_size": args.batch_size,
              "seed": args.seed, "environment": env, "total_wall_s": round(time.time() - started, 1),
              "heads": rows}
    common.write_outputs(args.out, result, render(result))


if __name__ == "__main__":
    main()
