"""Does a linear map fitted on the training people's embeddings raise held-out verification accuracy?

For each finished run given (a suite record under bench/results/suite_*/ or bench/product_goal.py's
result, and the run's exported model under work_dirs), embed every training image of the run's
split with the model (the run's flip fusion), fit the maps of ``recognition.evaluation.whitening``
(centre, PCA whitening, within-class whitening; shrink fixed before any run was scored) and score
the split's held-out pairs (600 and the 1,860 extended) through each, against the plain cosine that
tools/verify.py computes. Nothing of the held-out people enters a fit. A model that does not score
the record's held-out pairs as recorded is another run's and is refused. Each run's scores are
written when done and reused when the command is run again; the summary pairs every map with
"none" over the runs.
"""
import argparse
import json
import os
import sys

import numpy as np

import common
import suite


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("records", nargs="*", metavar="RECORD.json",
                   help="suite records (bench/results/suite_NAME/ROW_seedN.json) or bench/product_goal.py's "
                        "result (bench/results/product_goal.json) whose models are under --work-dir")
    p.add_argument("--shrink", type=float, default=0.1,
                   help="added to every covariance eigenvalue before whitening, in units of their mean")
    p.add_argument("--work-dir", default=common.DEFAULT_WORK_DIR, help="where the runs are (the benchmarks' --work-dir)")
    p.add_argument("--threads", type=int, default=2, help="OpenMP threads for MXNet")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "whitening"),
                   help="folder of the per-run JSON and the summary (summary.md / summary.json)")
    p.add_argument("--render", action="store_true", help="only rebuild the summary from the per-run JSON")
    return p.parse_args(argv)


def training_embeddings(net, rec_root, flip, batch_size):
    """Flip-fused embeddings and identities of every image of the packed training set."""
    from recognition.data.record import RecordDataset
    from recognition.evaluation import embed_images
    dataset = RecordDataset(rec_root)
    images = np.stack([dataset.read_image(int(i))[0] for i in dataset.image_indices])
    return embed_images(net, images, batch_size, flip, progress=True), dataset.label_array()


def score_run(record_file, record, args):
    _, label, run = suite.kept_run(record, args.work_dir)
    model = os.path.join(run, "model")
    if not os.path.isfile(model + "-symbol.json"):
        raise SystemExit(f"whitening: {record_file}: no exported model at {model}-symbol.json")
    with open(os.path.join(run, "config.json")) as f:
        verification = json.load(f)["verification"]
    from recognition.data.binfile import load_bin
    from recognition.evaluation import embed_shared, verify_pairs
    from recognition.evaluation.embed import load_exported_model
    from recognition.evaluation.whitening import KINDS, apply_whitening, fit_whitening
    net, _ = load_exported_model(model)
    flip, batch = verification["flip"], verification["batch_size"]

    def held_out(path):
        """Fused embeddings, the pairs, and XNorm as verify.py reports it (of the views before fusion)."""
        images, issame = load_bin(path)
        embeddings, norms = embed_shared(net, images, batch, flip)
        return embeddings, issame, float(np.mean(norms))

    extended, _ = common.extended_bin(record["split"])
    if not extended:
        raise SystemExit(f"whitening: {record_file}: too few held-out people for the extended pairs")
    pair_sets = {"600": held_out(record["split"]["bin"])}
    held, issame, xnorm = pair_sets["600"]
    mismatch = suite.another_model(verify_pairs(held, issame, xnorm=xnorm), record["final"])
    if mismatch:
        raise SystemExit(f"whitening: {record_file}: the model at {model} {mismatch}: another run's model")
    pair_sets["extended"] = held_out(extended)
    common.log(f"{record_file}: embedding {record['split']['train_images']} training images")
    train, labels = training_embeddings(net, record["split"]["rec"], flip, batch)
    maps = {kind: fit_whitening(train, labels, kind, args.shrink) for kind in KINDS}
    scores = {}
    for name, (held, issame, _) in pair_sets.items():
        scores[name] = {kind: verify_pairs(apply_whitening(held, m), issame)["accuracy"] for kind, m in maps.items()}
        scores[name]["pairs"] = int(len(issame))
        common.log(f"  {name} pairs: " + ", ".join(f"{k} {scores[name][k]:.4f}" for k in KINDS))
    where = os.path.abspath(record_file)
    inside = where.startswith(common.REPO + os.sep)
    return {"record": os.path.relpath(where, common.REPO) if inside else where, "run": label,
            "recorded_600": record["final"]["accuracy"],
            "train_images": int(len(labels)), "train_people": int(len(np.unique(labels))),
            "shrink": args.shrink, "flip": flip, "scores": scores}


def summarise(runs):
    kinds = [k for k in runs[0]["scores"]["600"] if k != "pairs"]  # "none" first, as score_run wrote them
    table, summary = [], {}
    for name in ("600", "extended"):
        for kind in kinds[1:]:
            diffs = [r["scores"][name][kind] - r["scores"][name]["none"] for r in runs]
            difference = suite.paired_difference({i: r["scores"][name][kind] for i, r in enumerate(runs)},
                                                 {i: r["scores"][name]["none"] for i, r in enumerate(runs)})
            mean, std, (low, high) = difference["mean"], difference["std"], difference["ci95"]
            summary[f"{name}:{kind}"] = {"runs": len(diffs), "mean": mean, "std": std, "low": low, "high": high,
                                         "differences": diffs}
            interval = "" if np.isnan(low) else f"[{100 * low:+.1f}, {100 * high:+.1f}]"
            table.append([name, kind, len(diffs), " ".join(f"{100 * d:+.1f}" for d in diffs), f"{100 * mean:+.2f}",
                          interval, suite.difference_verdict(difference)])
    per_run = [[r["run"], r["train_people"], r["train_images"]]
               + [f"{r['scores'][name][k]:.4f}" for name in ("600", "extended") for k in kinds] for r in runs]
    pairs = runs[0]["scores"]["extended"]["pairs"]
    markdown = "\n".join([
        "## Embeddings mapped by a fit on the training people, held-out pairs", "",
        f"Maps of `recognition.evaluation.whitening` fitted on each run's training embeddings (shrink "
        f"{runs[0]['shrink']}), held-out accuracy on the 600 and {pairs} extended pairs.", "",
        common.markdown_table(["run", "training people", "images"] + [f"{k} ({name})" for name in
                                                                      ("600", "extended") for k in kinds], per_run), "",
        "Difference to `none` (the plain cosine of tools/verify.py), paired by run, points; interval: Student's t "
        "over the runs.", "",
        common.markdown_table(["pairs", "map", "runs", "per run", "mean", "95% interval", "verdict"], table), "",
        "Command: `python bench/whitening.py bench/results/suite_NAME/ROW_seedN.json bench/results/product_goal.json "
        "...` (reuses finished runs; "
        "`--render` rebuilds this summary).",
    ])
    return {"runs": runs, "differences": summary}, markdown


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    for record_file in [] if args.render else args.records:
        with open(record_file) as f:
            record = json.load(f)
        common.write_part(os.path.join(args.out, suite.kept_run(record, args.work_dir)[0] + ".json"),
                          lambda: score_run(record_file, record, args))
    runs = common.finished_parts(args.out)
    if not runs:
        raise SystemExit(f"whitening: no finished runs under {args.out}")
    result, markdown = summarise(runs)
    common.write_outputs(os.path.join(args.out, "summary"), result, markdown)


if __name__ == "__main__":
    sys.exit(main())
