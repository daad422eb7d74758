#!/usr/bin/env python
"""Triplet mining strategies fine-tuned from one pretrained network (MassFace Tables 1 and 4).

Every strategy (batch_all, batch_random, batch_min_min, batch_min_max, batch_hardest) with online
mining, plus semi-online mining (batch_min_max over the last ``pool_batches`` batches), fine-tunes
the *same* pretrained MobileFaceNet with the project's trainer, from the project's configs
(``configs/triplet_finetune.yaml``: margin 0.2, SGD lr 0.005 without warmup, P x K batches with
K = 4; ``configs/triplet_semi_online.yaml`` for semi-online), with the same data, steps and seed.
Scores on the held-out LFW people of ``bench/common.py``'s split; the first row is the pretrained
network itself, scored the same way.

The pretrained network: ``--pretrained PATH`` (a training state folder, net.params or an exported
PREFIX,EPOCH), else the newest checkpoint of ``compare_losses.py``'s ``--pretrain-head`` run on
the same split (under --work-dir), else that head is trained here first with compare_losses'
defaults.

Prints a Markdown table and a JSON object; writes OUT.json and OUT.md.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONFIGS = os.path.join(common.REPO, "configs")
STRATEGIES = ("batch_all", "batch_random", "batch_min_min", "batch_min_max", "batch_hardest")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="online strategies, comma-separated")
    p.add_argument("--semi-online", default="batch_min_max",
                   help="strategy of the semi-online run ('' for none)")
    p.add_argument("--pool-batches", type=int, default=None,
                   help="semi-online pool size in batches (default: configs/triplet_semi_online.yaml's)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps (batches read) per run")
    p.add_argument("--batch-size", type=int, default=32, help="P x K images per batch")
    p.add_argument("--images-per-identity", type=int, default=4, help="K")
    p.add_argument("--lr", type=float, default=None, help="override the configs' optimizer.lr (0.005)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--verify-flip", default="none", choices=("sum", "concat", "none"))
    p.add_argument("--pretrained", default=None, help="network to fine-tune (state folder, net.params, PREFIX,EPOCH)")
    p.add_argument("--pretrain-head", default="softmax",
                   help="without --pretrained: the compare_losses.py head run to start from (the paper: softmax)")
    p.add_argument("--pretrain-steps", type=int, default=120, help="steps when that run must be trained here")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra trainer overrides for every run")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "compare_mining"),
                   help="output prefix: OUT.json and OUT.md")
    p.add_argument("--render", metavar="JSON", help="only re-write the Markdown of an earlier result (no training)")
    common.add_split_args(p)
    args = p.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    for strategy in args.strategies + ([args.semi_online] if args.semi_online else []):
        if strategy not in STRATEGIES:
            p.error(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    if args.batch_size % args.images_per_identity:
        p.error(f"--batch-size {args.batch_size} is not a multiple of --images-per-identity {args.images_per_identity}")
    if args.steps < 1 or args.log_every < 1:
        p.error("--steps and --log-every must be positive")
    return args


def find_or_train_pretrained(args, manifest):
    """(path, description) of the network every run starts from."""
    if args.pretrained:
        return args.pretrained, f"--pretrained {args.pretrained}"
    from recognition.engine.checkpoint import latest_state
    run_dir = os.path.join(args.work_dir, "losses", args.pretrain_head.replace("+", "_"))
    config_file = os.path.join(run_dir, "config.json")
    state = latest_state(run_dir) if os.path.isdir(run_dir) else None
    if state and os.path.isfile(config_file):
        with open(config_file) as f:
            used = json.load(f)
        if used["data"]["root"] == manifest["rec"]:
            return state, f"compare_losses.py's {args.pretrain_head} run ({os.path.relpath(state, common.REPO)})"
        common.log(f"{run_dir}: trained on {used['data']['root']}, not this split; training anew")
    common.log(f"pretraining {args.pretrain_head} for {args.pretrain_steps} steps (compare_losses defaults)")
    import compare_losses
    config_name, extra = compare_losses.HEADS[args.pretrain_head]
    defaults = compare_losses.parse_args([])
    common.run_training(os.path.join(CONFIGS, config_name), extra + common.trainer_overrides(
        manifest, run_dir, args.pretrain_steps, defaults.batch_size, args.seed, args.pretrain_steps // 10,
        args.log_every, args.workers, args.verify_flip))
    state = latest_state(run_dir)
    return state, f"{args.pretrain_head} trained here for {args.pretrain_steps} steps ({os.path.relpath(state, common.REPO)})"


def score_pretrained(path, manifest, flip):
    """The starting network on the held-out pairs, embedded exactly as the trainer's verification."""
    import mxnet as mx
    from recognition.engine.callbacks import Verification
    from recognition.engine.checkpoint import load_pretrained
    from recognition.engine.config import load_config
    from recognition.engine.trainer import build_network
    config = load_config(os.path.join(CONFIGS, "softmax.yaml"), [f"data.root={manifest['rec']}"], check_files=False)
    net, _, _, _ = build_network(config, num_classes=2, ctx=mx.cpu())  # the classifier is not used
    load_pretrained(net, path)
    return Verification([manifest["bin"]], flip=flip)(net)["heldout"]


def run_rows(args, manifest, pretrained):
    runs = [(s, "online", "triplet_finetune.yaml", [f"loss.params.strategy={s}", "loss.params.pool=online"])
            for s in args.strategies]
    if args.semi_online:
        extra = [f"loss.params.strategy={args.semi_online}"]
        if args.pool_batches:
            extra.append(f"loss.params.pool_batches={args.pool_batches}")
        runs.append((args.semi_online, "semi_online", "triplet_semi_online.yaml", extra))
    rows = []
    for number, (strategy, pool, config_file, extra) in enumerate(runs, 1):
        out_dir = os.path.join(args.work_dir, "mining", f"{strategy}-{pool}")
        common.log(f"[{number}/{len(runs)}] {strategy} ({pool}): {args.steps} steps of "
                   f"{args.batch_size // args.images_per_identity} x {args.images_per_identity}")
        overrides = extra + [f"data.images_per_identity={args.images_per_identity}"] + common.trainer_overrides(
            manifest, out_dir, args.steps, args.batch_size, args.seed, 0, args.log_every, args.workers,
            args.verify_flip, args.lr) + list(args.set)
        results, wall, config = common.run_training(os.path.join(CONFIGS, config_file), overrides, pretrained)
        triplets = [v for _, v in common.logged_scalars(os.path.join(out_dir, "logs"), "triplets")]
        row = {"strategy": strategy, "pool": pool, "config": f"configs/{config_file}", "loss_params": config.loss.params,
               "lr": config.optimizer.lr,
               **common.verification_row(results), "mean_triplets_logged": sum(triplets) / max(len(triplets), 1),
               "samples_per_sec": common.throughput(out_dir), "skipped_updates": results["skipped_updates"],
               "wall_s": round(wall, 1)}
        rows.append(row)
        common.log(f"{strategy} ({pool}): accuracy {row['accuracy']:.4f} +- {row['accuracy_std']:.4f}, "
                   f"TAR@FAR=1e-3 {row['tar_at_far_1e-3']:.4f}, {wall:.0f} s")
    return rows


def render(result):
    """The Markdown of a result (everything it shows comes from the JSON)."""
    env, rows = result["environment"], result["runs"]
    fmt = lambda r: [f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}", f"{r['tar_at_far_1e-3']:.4f}"]  # noqa: E731
    table = [["pretrained (no fine-tuning)", "-"] + fmt(result["pretrained_scores"]) + ["-", "-"]]
    table += [[r["strategy"], r["pool"] + (f" ({r['loss_params']['pool_batches']} batches)" if r["pool"] == "semi_online"
                                           else "")] + fmt(r)
              + [f"{r['mean_triplets_logged']:.1f}", f"{r['samples_per_sec']:.1f}"] for r in rows]
    k = result["images_per_identity"]
    online = {r["strategy"]: r for r in rows if r["pool"] == "online"}
    same = ("batch_min_min" in online and "batch_min_max" in online
            and online["batch_min_min"]["accuracy"] == online["batch_min_max"]["accuracy"])
    lrs = sorted({r["lr"] for r in rows})
    return "\n".join([
        "## Triplet mining strategies, fine-tuned from one network, on held-out LFW people", "",
        f"Data: {common.split_description(result['split'])}.", "",
        f"Start: {result['pretrained_origin']}. Each row: {result['steps']} steps of P x K = "
        f"{result['batch_size'] // k} x {k} images, triplet margin 0.2, SGD lr {', '.join('%g' % v for v in lrs)} "
        f"(cosine, no warmup), seed {result['seed']}, {env['omp_threads']} OpenMP thread(s), verification flip: "
        f"{result['verify_flip']}. Semi-online: the pool's batches are embedded without gradient, mined together, "
        "and the mined images forwarded again for the updates (steps count batches read, so it makes fewer, "
        "larger updates).", "",
        common.markdown_table(["strategy", "pool", "accuracy ± std (10 folds)", "TAR@FAR=1e-3",
                               "triplets / update (logged)", "samples/s"], table), "",
        common.noise_note(result["split"]["pairs"]), "",
        *(["batch_min_min and batch_min_max select the same triplets as the paper's pseudo-code defines them "
           "(see recognition/losses/mining.py), hence identical rows.", ""] if same else []),
        f"Budget: {result['steps'] * result['batch_size']} images read per run, "
        f"{result['total_wall_s'] / 60:.0f} minutes in all (the paper: 60k iterations of 210 images).", "",
        "triplets / update: mean of the trainer's logged count at each log interval. samples/s: batches read "
        "per second x batch size, median over the trainer's log intervals, on a "
        f"{env['cpus']}-core machine shared with other jobs.",
    ])


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return common.rerender(args.render, render)
    manifest, env = common.start(args)
    started = time.time()
    pretrained, origin = find_or_train_pretrained(args, manifest)
    common.log(f"fine-tuning from {origin}")
    start_scores = score_pretrained(pretrained, manifest, args.verify_flip)
    rows = run_rows(args, manifest, pretrained)
    result = {"benchmark": "compare_mining", "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
              "split": manifest, "pretrained": pretrained, "pretrained_origin": origin,
              "pretrained_scores": {k: start_scores[k] for k in ("accuracy", "accuracy_std", "tar_at_far_1e-3")},
              "steps": args.steps, "batch_size": args.batch_size, "images_per_identity": args.images_per_identity,
              "seed": args.seed, "verify_flip": args.verify_flip, "environment": env,
              "total_wall_s": round(time.time() - started, 1), "runs": rows}
    common.write_outputs(args.out, result, render(result))


if __name__ == "__main__":
    main()
