"""Score an exported face model on IJB-C or IJB-B templates, as insightface does: 1:1 template
verification (TAR at FAR 1e-6 ... 1e-1, AUC, ROC) and 1:N identification (rank-1/5/10, TPIR at
FPIR 1e-2 and 1e-1, per gallery and their mean).

The folder is the IJB layout as released (ijbb_ instead of ijbc_ for --target IJBB):
  ROOT/loose_crop/*.jpg
  ROOT/meta/ijbc_name_5pts_score.txt   NAME x1 y1 ... x5 y5 SCORE
  ROOT/meta/ijbc_face_tid_mid.txt      NAME TEMPLATE_ID MEDIA_ID     (line for line as above)
  ROOT/meta/ijbc_template_pair_label.txt  TEMPLATE_ID TEMPLATE_ID LABEL
  ROOT/meta/ijbc_1N_gallery_G1.csv, ijbc_1N_gallery_G2.csv, ijbc_1N_probe_mixed.csv  (1:N,
      optional; IJB-B: ijbb_1N_gallery_S1.csv, _S2.csv)
ROOT may also be the folder that holds IJBC/ (IJBB/).

Each crop is aligned on its five points (112x112 ArcFace template) and embedded with its mirror
(--flip); the crops stream through in chunks, so memory does not grow with the set. A template's
feature is the sum over its media of the mean crop feature of each media, crops weighted by their
detector score (--no-detector-score: not), L2-normalised. Under horovodrun the workers share the
embedding (each decodes and embeds its share of every chunk) and rank 0 scores and prints.
"""
import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from recognition import distributed
from recognition.evaluation import FLIP_MODES
from recognition.evaluation.embed import ModelError, auto_context, load_exported_model
from recognition.evaluation.ijb import (FAR_TARGETS, FPIR_TARGETS, RANKS, TARGETS, IJBError, TemplateAggregator,
                                        check_crops, embed_chunks, identification, ijb_paths,
                                        load_identification, load_protocol, pair_scores, rate_key, roc,
                                        verification_report)

PROG = "eval_ijb"


def build_parser():
    parser = argparse.ArgumentParser(prog="eval_ijb.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="PREFIX[,EPOCH]",
                        help="exported model; EPOCH defaults to the newest PREFIX-NNNN.params")
    parser.add_argument("--root", required=True, metavar="IJB_ROOT", help="the IJB-C (IJB-B) folder")
    parser.add_argument("--target", type=str.upper, choices=TARGETS, default="IJBC",
                        help="IJBC or IJBB: the file prefix (default IJBC)")
    parser.add_argument("--flip", choices=FLIP_MODES, default="sum",
                        help="fuse with the mirrored crop: sum (insightface), concat or none (default sum)")
    parser.add_argument("--no-detector-score", action="store_true",
                        help="do not weight crops by their detector score (insightface D0)")
    parser.add_argument("--normalize-images", action="store_true",
                        help="L2-normalise each crop's feature before aggregation (insightface N0; "
                             "default keeps the norm as a quality weight, N1)")
    parser.add_argument("--no-1n", action="store_true", help="skip 1:N identification")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    parser.add_argument("--chunk", type=int, default=2048,
                        help="crops decoded at a time, all workers together (default 2048)")
    parser.add_argument("--threads", type=int, default=2, help="decoding/alignment threads per worker (default 2)")
    parser.add_argument("--image-size", type=int, default=112, help="model input size (default 112)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--roc", metavar="ROC.png", help="plot the 1:1 ROC (log FAR axis)")
    parser.add_argument("--scores", metavar="SCORES.npy", help="save the 1:1 pair scores (cosine, pair order)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def crop_loader(crop_dir, names, points, size, threads, list_path):
    """load(start, stop) -> aligned uint8 RGB faces of crops start..stop (decoded in threads)."""
    import cv2
    from recognition.data.align import align_face
    pool = ThreadPoolExecutor(max(1, threads))

    def one(i):
        path = os.path.join(crop_dir, names[i])
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise IJBError(f"{path}: cannot be decoded as an image (listed at {list_path}:{i + 1})")
        return align_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), points[i], size)

    def load(start, stop):
        return np.stack(list(pool.map(one, range(start, stop))))
    return load


def format_verification(target, r):
    head = "  ".join(f"{rate_key(t):>7}" for t in FAR_TARGETS)
    values = "  ".join(f"{100 * r[f'tar_at_far_{rate_key(t)}']:7.2f}" for t in FAR_TARGETS)
    return (f"[{target}] 1:1 verification: {r['pairs']} pairs ({r['genuine']} genuine, {r['impostor']} impostor)"
            f" of {r['templates']} templates, AUC {r['auc']:.4f}\n"
            f"  FAR      {head}\n  TAR (%)  {values}")


def _pct(value):
    return "     -" if value is None else f"{100 * value:6.2f}"


def format_identification(target, report):
    probes = next(iter(report.values()))["probes"]
    labels = {name: name + (" (closed set)" if "+" in name else "") for name in report}
    width = max(len("gallery"), *map(len, labels.values())) + 2
    cols = [f"rank-{k}" for k in RANKS] + [f"TPIR@FPIR={rate_key(f)}" for f in FPIR_TARGETS]
    keys = [f"rank_{k}" for k in RANKS] + [f"tpir_at_fpir_{rate_key(f)}" for f in FPIR_TARGETS]
    lines = [f"[{target}] 1:N identification: {probes} mixed-media probe templates",
             f"  {'gallery':<{width}}{'subjects':>8}{'mated':>7}{'non-mated':>11}  " + "  ".join(cols)]
    for name, r in report.items():
        counts = f"{r['subjects']:>8}{r['mated']:>7}{r['non_mated']:>11}" if "subjects" in r else " " * 26
        cells = "  ".join(f"{_pct(r.get(k)):>{len(c)}}" for k, c in zip(keys, cols))
        lines.append(f"  {labels[name]:<{width}}{counts}  {cells}")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.chunk < 1 or args.threads < 1 or args.image_size < 16:
        sys.exit(f"{PROG}: --batch-size, --chunk and --threads must be positive, --image-size >= 16")
    distributed.init()
    is_root = distributed.rank() == 0
    progress = is_root and not args.no_progress
    try:
        paths = ijb_paths(args.root, args.target)
        protocol = load_protocol(paths)
        sets = None if args.no_1n else load_identification(paths, protocol["templates"])
        check_crops(paths["crops"], protocol["names"], paths["landmarks"])
    except IJBError as err:
        sys.exit(f"{PROG}: {err}")
    ctx = auto_context(False if args.cpu else None)
    try:
        net, epoch = load_exported_model(args.model, ctx)
    except ModelError as err:
        sys.exit(f"{PROG}: {err}")

    n = len(protocol["names"])
    load = crop_loader(paths["crops"], protocol["names"], protocol["points"], args.image_size, args.threads,
                       paths["landmarks"])
    aggregator = TemplateAggregator(protocol["templates"], protocol["medias"],
                                    None if args.no_detector_score else protocol["scores"],
                                    args.normalize_images)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=f"embed {args.target}", unit="crop")
    try:
        for start, stop, features in embed_chunks(net, n, load, args.chunk, args.batch_size, args.flip, ctx,
                                                  args.image_size):
            aggregator.add(start, features)
            if bar is not None:
                bar.update(stop - start)
    except IJBError as err:
        sys.exit(f"{PROG}: {err}")
    finally:
        if bar is not None:
            bar.close()
    unique, features = aggregator.result()
    if not is_root:  # every worker checked the input and shared the embedding; rank 0 scores
        return None

    scores = pair_scores(unique, features, protocol["t1"], protocol["t2"])
    verification = verification_report(scores, protocol["labels"])
    verification["templates"] = int(len(np.unique(np.r_[protocol["t1"], protocol["t2"]])))
    report = {"target": args.target, "model": args.model.split(",")[0], "epoch": epoch, "flip": args.flip,
              "detector_score": not args.no_detector_score, "normalize_images": args.normalize_images,
              "crops": n, "templates": int(len(unique)), "verification": verification,
              "identification": identification(unique, features, sets) if sets else None}
    if args.scores:
        tmp = f"{args.scores}.tmp{os.getpid()}.npy"
        np.save(tmp, scores)
        os.replace(tmp, args.scores)
    if args.roc:
        from recognition.cli.verify import plot_roc
        fpr, tpr, _ = roc(scores, protocol["labels"])
        plot_roc({f"{args.target} 1:1": (fpr, tpr, verification["auc"])}, args.roc)
    if args.json:
        print(json.dumps(report))
        return report
    print(format_verification(args.target, verification))
    if report["identification"]:
        print(format_identification(args.target, report["identification"]))
    elif not args.no_1n:
        print(f"[{args.target}] 1:N: no {args.target.lower()}_1N_*.csv files in {os.path.join(paths['root'], 'meta')}, skipped")
    print(f"model {report['model']} epoch {epoch}, flip {args.flip}, "
          f"detector score {'on' if report['detector_score'] else 'off'}, "
          f"crop features {'normalised' if args.normalize_images else 'with their norm'}; "
          f"{n} crops, {len(unique)} templates"
          + (f"; ROC written to {args.roc}" if args.roc else ""))
    return report


if __name__ == "__main__":
    main()
