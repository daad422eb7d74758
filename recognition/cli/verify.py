"""Score an exported face model on insightface verification sets (.bin): 10-fold accuracy and
its std, best threshold, XNorm, TAR at FAR=1e-3/1e-4, AUC and EER, per set.

The model is insightface's export format: PREFIX-symbol.json + PREFIX-NNNN.params, one input
named `data` taking float32 NCHW RGB in 0..255 (normalisation inside), first output = embedding.
Works under horovodrun too: the workers share the embedding work and rank 0 prints.
"""
import argparse
import json
import os
import sys

import numpy as np

from recognition.data.binfile import BinFileError, load_bin
from recognition import distributed
from recognition.evaluation import FLIP_MODES, embed_shared, roc_curve
from recognition.evaluation.embed import ModelError, auto_context, load_exported_model
from recognition.evaluation.verification import pair_distances, verify_pairs


def build_parser():
    parser = argparse.ArgumentParser(prog="verify.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="PREFIX[,EPOCH]",
                        help="exported model; EPOCH defaults to the newest PREFIX-NNNN.params")
    parser.add_argument("--bin", required=True, action="append", metavar="A.bin[,B.bin]",
                        help="verification set(s): comma separated and/or repeated")
    parser.add_argument("--flip", choices=FLIP_MODES, default="sum",
                        help="fuse with the mirrored image: sum (insightface), concat or none (default sum)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--image-size", type=int, default=112, help="model input size (default 112)")
    parser.add_argument("--nfolds", type=int, default=10, help="cross-validation folds (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by bin name")
    parser.add_argument("--roc", metavar="ROC.png", help="plot the ROC curves of all sets (log FAR axis)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def bin_paths(values):
    paths = [p for value in values for p in value.split(",") if p]
    if not paths:
        sys.exit("verify: --bin names no file")
    return paths


def bin_names(paths):
    """Report keys: the file name without .bin (the full path where two names collide)."""
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


def format_result(name, r):
    return (f"[{name}] accuracy {100 * r['accuracy']:.2f}% +- {100 * r['accuracy_std']:.2f}%  "
            f"threshold {r['threshold']:.3f}  XNorm {r['xnorm']:.4g}  "
            f"TAR@FAR=1e-3 {100 * r['tar_at_far_1e-3']:.2f}%  TAR@FAR=1e-4 {100 * r['tar_at_far_1e-4']:.2f}%  "
            f"AUC {r['auc']:.4f}  EER {100 * r['eer']:.2f}%  ({r['pairs']} pairs)")


def plot_roc(curves, path):
    """ROC curves (TAR against log FAR) of every set on one figure, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 5))
    smallest = 1e-4
    for name, (fpr, tpr, auc) in curves.items():
        keep = fpr > 0  # log axis
        if keep.any():
            smallest = min(smallest, float(fpr[keep].min()))
        ax.plot(fpr[keep], tpr[keep], label=f"{name} (AUC {auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(10 ** np.floor(np.log10(smallest)), 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext or '.png'}"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        sys.exit(f"verify: --batch-size must be positive, got {args.batch_size}")
    distributed.init()
    is_root = distributed.rank() == 0
    paths = bin_paths(args.bin)
    ctx = auto_context(False if args.cpu else None)
    try:
        net, epoch = load_exported_model(args.model, ctx)
    except ModelError as err:
        sys.exit(f"verify: {err}")
    results, curves = {}, {}
    for name, path in zip(bin_names(paths), paths):
        try:
            images, issame = load_bin(path, args.image_size, progress=is_root and not args.no_progress)
        except BinFileError as err:
            sys.exit(f"verify: {err}")
        embeddings, norms = embed_shared(net, images, args.batch_size, args.flip, ctx,
                                         progress=is_root and not args.no_progress)
        result = verify_pairs(embeddings, issame, nfolds=args.nfolds, xnorm=float(np.mean(norms)))
        results[name] = result
        if args.roc:
            fpr, tpr, _ = roc_curve(pair_distances(embeddings), issame)
            curves[name] = (fpr, tpr, result["auc"])
        if is_root and not args.json:
            print(format_result(name, result), flush=True)
    if not is_root:
        return
    if args.roc:
        plot_roc(curves, args.roc)
        if not args.json:
            print(f"ROC curves written to {args.roc}")
    if args.json:
        print(json.dumps(results, indent=None, sort_keys=False))
    else:
        print(f"model {args.model.split(',')[0]} epoch {epoch}, flip {args.flip}")


if __name__ == "__main__":
    main()
