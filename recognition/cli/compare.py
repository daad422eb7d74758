"""Compare face photos with an exported model: cosine similarity and same / different.

    compare.py --model PREFIX[,EPOCH] A.jpg B.jpg --threshold 0.3
    compare.py --model PREFIX[,EPOCH] --pairs pairs.txt --detect --bin lfw.bin --json

Each photo is embedded as verify.py and embed.py do (plain + mirrored, summed: --flip), the two
embeddings are L2-normalised and their dot product is the similarity, in [-1, 1]. A pair is
"same" when the similarity is above the threshold: --threshold T (cosine), or the one picked on a
verification .bin (--bin): the threshold of insightface's protocol grid (squared L2 distance of
normalised embeddings, np.arange(0, 4, 0.01), distance < t means same) with the best accuracy
over all pairs of the .bin embedded with this model, turned into a cosine (1 - t / 2).

Photos are taken as aligned 112x112 faces (others are resized, with a note on stderr) unless
--detect: then MTCNN finds the five points and the face is aligned as pack_rec.py does.
Output: one line per pair, `A<TAB>B<TAB>similarity<TAB>same|different` (the threshold on stderr),
or with --json one object. A file that cannot be read, or has no face with --detect: one line
naming it, exit status 1.
"""
import argparse
import json
import os
import sys

import numpy as np

from recognition.cli.detect import add_detector_args, detector_options
from recognition.data import detect as face_detect
from recognition.data.align import align_face, to_size


class CompareError(ValueError):
    pass


def read_pairs_file(path, root=None):
    """Lines `A B` (whitespace separated; `#` comments and blank lines skipped) -> [(A, B)];
    relative paths are taken relative to ``root`` when given."""
    pairs = []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as err:
        raise CompareError(f"{path}: cannot read pairs file ({err.strerror})") from None
    for line_no, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise CompareError(f"{path}:{line_no}: expected 'A B' (two image paths), got {line.strip()!r}")
        pairs.append(tuple(os.path.join(root, p) if root and not os.path.isabs(p) else p for p in fields))
    if not pairs:
        raise CompareError(f"{path}: no pairs found")
    return pairs


def load_faces(paths, size=112, detector=None, note=None):
    """{path: RGB uint8 size x size face}: aligned on the detected points with a detector, else
    taken as aligned (resized when not size x size, with a ``note``). Raises CompareError naming
    the first file that cannot be read or has no face."""
    faces = {}
    for path in paths:
        if path in faces:
            continue
        if not os.path.isfile(path):
            raise CompareError(f"{path}: file not found")
        try:
            image = face_detect.read_image(path)
        except face_detect.DetectError as err:
            raise CompareError(f"{path}: {err}") from None
        if detector is not None:
            face, count = detector.detect_one(image)
            if face is None:
                raise CompareError(f"{path}: no face detected")
            if count > 1 and note:
                note(f"{path}: {count} faces, compared the {detector.pick} one")
            faces[path] = align_face(image, face.landmarks, size)
        else:
            if image.shape[:2] != (size, size) and note:
                note(f"{path}: {image.shape[1]}x{image.shape[0]}, not an aligned {size}x{size} face: resized "
                     f"(use --detect for photos that are not aligned)")
            faces[path] = to_size(image, size)
    return faces


def threshold_from_bin(net, path, image_size, batch_size, flip, ctx, progress=False):
    """The cosine threshold of best accuracy over all pairs of a .bin, and what it came from."""
    from recognition.data.binfile import load_bin
    from recognition.evaluation import embed_images, verify_pairs
    from recognition.evaluation.verification import ACCURACY_THRESHOLDS, accuracy_at, pair_distances
    images, issame = load_bin(path, image_size, progress=progress)
    issame = np.asarray(issame, dtype=bool)
    embeddings = embed_images(net, images, batch_size, flip, ctx, progress)
    dist = pair_distances(embeddings)
    accuracy = accuracy_at(dist, issame, ACCURACY_THRESHOLDS)
    best = int(np.argmax(accuracy))
    distance = float(ACCURACY_THRESHOLDS[best])
    info = {"bin": path, "pairs": int(len(issame)), "distance_threshold": distance,
            "accuracy_at_threshold": float(accuracy[best])}
    if len(issame) >= 10:
        info["accuracy_10fold"] = verify_pairs(embeddings, issame, far_targets=())["accuracy"]
    return 1.0 - distance / 2.0, info


def build_parser():
    parser = argparse.ArgumentParser(prog="compare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", metavar="A B", help="two photos (or give --pairs)")
    parser.add_argument("--model", required=True, metavar="PREFIX[,EPOCH]",
                        help="exported model; EPOCH defaults to the newest PREFIX-NNNN.params")
    parser.add_argument("--pairs", metavar="FILE", help="many pairs: lines 'A B'")
    parser.add_argument("--root", metavar="DIR", help="folder the relative paths of --pairs are in (default: here)")
    decision = parser.add_mutually_exclusive_group(required=True)
    decision.add_argument("--threshold", type=float, metavar="T", help="same when cosine similarity > T")
    decision.add_argument("--bin", metavar="FILE.bin",
                          help="pick the threshold on this verification set (best accuracy over its pairs)")
    parser.add_argument("--detect", action="store_true",
                        help="detect and align the faces (MTCNN) instead of taking the photos as aligned")
    parser.add_argument("--flip", choices=("sum", "concat", "none"), default="sum",
                        help="fuse with the mirrored image (default sum, as verify.py)")
    parser.add_argument("--image-size", type=int, default=112, help="model input size (default 112)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (embedding the .bin)")
    add_detector_args(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if len(args.images) % 2 or (not args.images and not args.pairs):
        sys.exit("compare: give two photos A B (or several A B A B ...), or --pairs FILE")
    if args.threshold is not None and not -1 <= args.threshold <= 1:
        sys.exit(f"compare: --threshold is a cosine similarity in [-1, 1], got {args.threshold}")
    if args.batch_size < 1:
        sys.exit(f"compare: --batch-size must be positive, got {args.batch_size}")

    def note(message):
        print(f"compare: note: {message}", file=sys.stderr)

    try:
        pairs = list(zip(args.images[0::2], args.images[1::2]))
        if args.pairs:
            pairs += read_pairs_file(args.pairs, args.root)
        if args.bin and not os.path.isfile(args.bin):
            raise CompareError(f"{args.bin}: verification set not found")
        detector = face_detect.FaceDetector(**detector_options(args)) if args.detect else None
        paths = [path for pair in pairs for path in pair]
        faces = load_faces(paths, args.image_size, detector, note)  # all files checked before the model

        from recognition.data.binfile import BinFileError
        from recognition.evaluation import embed_images
        from recognition.evaluation.embed import ModelError, auto_context, load_exported_model
        ctx = auto_context(False if args.cpu else None)
        try:
            net, epoch = load_exported_model(args.model, ctx)
            if args.bin:
                threshold, source = threshold_from_bin(net, args.bin, args.image_size, args.batch_size, args.flip,
                                                       ctx, progress=not args.no_progress)
            else:
                threshold, source = args.threshold, "given"
        except (ModelError, BinFileError) as err:
            raise CompareError(str(err)) from None
        order = list(faces)
        embeddings = embed_images(net, np.stack([faces[p] for p in order]), args.batch_size, args.flip, ctx)
    except (CompareError, ValueError, ImportError, OSError) as err:
        sys.exit(f"compare: {err}")
    embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    row = {path: i for i, path in enumerate(order)}
    results = []
    for a, b in pairs:
        similarity = float(np.clip(np.dot(embeddings[row[a]], embeddings[row[b]]), -1.0, 1.0))
        results.append({"a": a, "b": b, "similarity": similarity, "same": similarity > threshold})

    if args.json:
        print(json.dumps({"model": args.model.split(",")[0], "epoch": epoch, "flip": args.flip,
                          "detect": bool(args.detect), "threshold": threshold, "threshold_from": source,
                          "pairs": results}))
        return
    if source == "given":
        print(f"threshold: cosine {threshold:.4f} (given)", file=sys.stderr)
    else:
        print(f"threshold: cosine {threshold:.4f} = squared distance {source['distance_threshold']:.2f}, "
              f"best accuracy {100 * source['accuracy_at_threshold']:.2f}% over the {source['pairs']} pairs of "
              f"{source['bin']}" + (f" (10-fold accuracy {100 * source['accuracy_10fold']:.2f}%)"
                                    if "accuracy_10fold" in source else ""), file=sys.stderr)
    for result in results:
        print(f"{result['a']}\t{result['b']}\t{result['similarity']:.4f}\t"
              f"{'same' if result['same'] else 'different'}", flush=True)


if __name__ == "__main__":
    main()
