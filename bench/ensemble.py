"""Is the 60-minute budget better spent on K networks of 60/K minutes combined than on one network?

The members are finished suite runs whose exported models are kept under work_dirs (``bench/suite.py
--suite ensemble --only minutes_15``: 15-minute networks of configs/lfw_devtrain.yaml's recipe, one
per seed). Each member is scored alone by tools/verify.py on its split's 600 and 1,860 extended
held-out pairs (refused if it does not score the 600 pairs as its record says: another run's model);
the members are then dealt, in the order given, into disjoint groups of every size from 2 to K,
each group is combined by tools/ensemble.py (the mean of the members' cosines) and scored the same
way. The baseline rows are the records of single networks trained for the whole budget (``--baseline``,
the suite's ``ensemble:baseline`` = ``final:softmax_min2``, scored at their run's end). Each group's
scores are written when done and reused when the command is run again.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

import common
import suite


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("members", nargs="*", metavar="RECORD.json",
                   help="suite records of the members (bench/results/suite_ensemble/minutes_15_seedN.json)")
    p.add_argument("--baseline", nargs="*", default=[], metavar="RECORD.json",
                   help="records of single networks trained for the whole budget (their recorded scores are used)")
    p.add_argument("--work-dir", default=common.DEFAULT_WORK_DIR, help="where the runs are (the suite's --work-dir)")
    p.add_argument("--threads", type=int, default=2, help="OpenMP threads for MXNet")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "ensemble"),
                   help="folder of the per-group JSON and the summary (summary.md / summary.json)")
    p.add_argument("--render", action="store_true", help="only rebuild the summary from the per-group JSON")
    args = p.parse_args(argv)
    if not args.render and len(args.members) < 2:
        p.error("give at least 2 member records (or --render)")
    return args


def load(path):
    with open(path) as f:
        return json.load(f)


def check_same_held_out(records, paths):
    """Members are scored on the first one's pairs: a member drawn from another split may have trained
    on those people, so refuse it instead of scoring a leak."""
    keys = suite.HELD_OUT_KEYS
    first = {key: records[0]["split"].get(key) for key in keys}
    for path, record in zip(paths[1:], records[1:]):
        other = {key: record["split"].get(key) for key in keys}
        if other != first:
            differ = ", ".join(f"{key} {other[key]!r} (first member: {first[key]!r})" for key in keys
                               if other[key] != first[key])
            raise SystemExit(f"ensemble: {path}: held out other people than {paths[0]}: {differ}")


def groups(count):
    """Disjoint groups of consecutive members, of every size from 1 to ``count``."""
    return [list(range(start, start + size)) for size in range(1, count + 1)
            for start in range(0, count - size + 1, size)]


def score_group(members, records, args):
    """Scores (600, extended) of one member alone or of its ensemble, with the first member's
    verification settings (flip fusion, batch size)."""
    runs = [suite.kept_run(records[m], args.work_dir) for m in members]
    with open(os.path.join(runs[0][2], "config.json")) as f:
        verification = json.load(f)["verification"]
    split = records[members[0]]["split"]
    extended, extended_pairs = common.extended_bin(split)
    if not extended:
        raise SystemExit(f"ensemble: {args.members[members[0]]}: too few held-out people for the extended pairs")
    if len(members) == 1:
        model = os.path.join(runs[0][2], "model")
        if not os.path.isfile(model + "-symbol.json"):
            raise SystemExit(f"ensemble: {args.members[members[0]]}: no exported model at {model}-symbol.json")
    else:
        model = os.path.join(args.work_dir, "ensemble", "+".join(run[0] for run in runs), "model")
        argv = [sys.executable, os.path.join(common.REPO, "tools", "ensemble.py"), "--out", model,
                "--models"] + [os.path.join(run[2], "model") for run in runs]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"ensemble: tools/ensemble.py failed: {done.stderr.strip().splitlines()[-1:]}")
    scores = suite.verify_model(model, [split["bin"], extended], verification, args.threads)
    if len(members) == 1:
        mismatch = suite.another_model(scores[0], records[members[0]]["final"])
        if mismatch:
            raise SystemExit(f"ensemble: {args.members[members[0]]}: the model at {model} {mismatch}: "
                             f"another run's model")
    common.log(f"{' + '.join(run[1] for run in runs)}: {scores[0]['accuracy']:.4f} on the 600 pairs, "
               f"{scores[1]['accuracy']:.4f} on the extended")
    return {"members": [run[1] for run in runs], "size": len(members),
            "member_minutes": float(np.mean([records[m]["train_wall_s"] / 60 for m in members])),
            "minutes": float(sum(records[m]["train_wall_s"] / 60 for m in members)),
            "600": common.scores_row(scores[0]), "extended": common.scores_row(scores[1]),
            "pairs": {"600": split["pairs"], "extended": extended_pairs}}


def accuracy_cell(values):
    """Mean (± std where there are several) and each value."""
    spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread} ({', '.join(f'{v:.3f}' for v in values)})"


def summarise(results, baselines):
    """Accuracy by ensemble size (mean ± std over its disjoint groups) and the single full-budget networks."""
    sizes = sorted({r["size"] for r in results})
    rows, summary = [], {"sizes": {}, "baseline": {}}
    for size in sizes:
        of_size = [r for r in results if r["size"] == size]
        entry = {"groups": [r["members"] for r in of_size]}
        cells = []
        for name in ("600", "extended"):
            values = [r[name]["accuracy"] for r in of_size]
            entry[name] = values
            cells.append(accuracy_cell(values))
        summary["sizes"][str(size)] = entry
        member_minutes = np.mean([r["member_minutes"] for r in of_size])
        rows.append([f"{size} x {member_minutes:.0f} min" + (" (members alone)" if size == 1 else ""), len(of_size),
                     f"{np.mean([r['minutes'] for r in of_size]):.0f}"] + cells)
    if baselines:
        cells = []
        for name, key in (("600", "final"), ("extended", "final_extended")):
            values = [b[key]["accuracy"] for b in baselines if key in b]
            summary["baseline"][name] = values
            cells.append(accuracy_cell(values) if values else "")
        minutes = np.mean([b["train_wall_s"] / 60 for b in baselines])
        rows.append([f"1 x {minutes:.0f} min (the whole budget, one network)", len(baselines), f"{minutes:.0f}"] + cells)
    pairs = results[0]["pairs"]
    markdown = "\n".join([
        "## Ensembles of short runs against one network of the whole budget, held-out pairs", "",
        "Members: " + ", ".join(r["members"][0] for r in results if r["size"] == 1) + ". Groups are disjoint, "
        "in the order the members were given; an ensemble's embedding is its members' L2-normalised embeddings "
        "side by side (`tools/ensemble.py`: the mean of their cosines), scored by `tools/verify.py` (float32); the "
        "whole-budget networks' scores are their records' (600 pairs: at the run's end in its precision; extended: "
        "tools/verify.py).", "",
        common.markdown_table(["networks", "groups", "training minutes in all",
                               f"accuracy, {pairs['600']} pairs (per group)",
                               f"accuracy, {pairs['extended']} extended pairs (per group)"], rows), "",
        common.noise_note(pairs["extended"]), "",
        "Command: `python bench/ensemble.py bench/results/suite_ensemble/minutes_15_seed{0,1,2,3}.json --baseline "
        "bench/results/suite_final/softmax_min2_seed{0,1}.json` (reuses finished groups; `--render` rebuilds this "
        "summary).",
    ])
    return {"groups": results, "summary": summary}, markdown


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)
    records = [load(path) for path in args.members]
    if records:
        check_same_held_out(records, args.members)
    os.makedirs(args.out, exist_ok=True)
    for members in [] if args.render else groups(len(records)):
        name = "+".join(suite.kept_run(records[m], args.work_dir)[0] for m in members)
        common.write_part(os.path.join(args.out, name + ".json"), lambda: score_group(members, records, args))
    results = common.finished_parts(args.out)
    if not results:
        raise SystemExit(f"ensemble: no finished groups under {args.out}")
    baseline = [os.path.abspath(path) for path in args.baseline]
    summary_file = os.path.join(args.out, "summary.json")
    if not baseline and os.path.isfile(summary_file):  # --render or more members: the baseline given before
        baseline = [os.path.join(common.REPO, path) for path in load(summary_file)["baseline_records"]]
    result, markdown = summarise(results, [load(path) for path in baseline])
    result["baseline_records"] = [os.path.relpath(path, common.REPO) for path in baseline]
    common.write_outputs(os.path.join(args.out, "summary"), result, markdown)


if __name__ == "__main__":
    sys.exit(main())
