"""Build an insightface verification .bin from a pairs list and images.

Pairs come from one of:
  --pairs FILE  LFW format (`name i j` = same person, `name1 i name2 j` = different; images at
                DIR/name/name_%04d.jpg; a first line of counts such as "10 300" or "1100" is a header
                and skipped; LFW's View 2 pairs.txt gives its 10 folds of 300 same + 300 different in
                file order), or lines `path1 path2 1|0` (paths relative to DIR, 1 = same).
  --cfp ROOT    the CFP benchmark's own protocol: ROOT/Protocol/Pair_list_F.txt, Pair_list_P.txt and
                Protocol/Split/FF|FP/01..10/same.txt|diff.txt -> 10 folds of 350 same + 350
                different, fold by fold, same then different (the order of insightface's cfp bins).
Faces with landmarks (--landmarks: `path<TAB>x1 y1 ... x5 y5`, paths relative to DIR, or --detect:
the five points found by MTCNN) are aligned onto the ArcFace template; faces without are taken as
aligned and resized. With --detect an image without a face stops the build (naming it).
"""
import argparse
import os
import sys

import cv2

from recognition.cli.detect import add_crop_args, add_detector_args, crop_args_problem, detector_options
from recognition.data.align import align_face, read_landmarks, to_size
from recognition.data.binfile import write_bin
from recognition.data.record import encode_jpeg

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class PairsError(ValueError):
    """A pairs/protocol file or an image it names is unusable; the message names file and line."""


class Pair:
    __slots__ = ("first", "second", "issame", "source")

    def __init__(self, first, second, issame, source):
        self.first, self.second, self.issame, self.source = first, second, issame, source


def _is_int(text):
    try:
        int(text)
        return True
    except ValueError:
        return False


def _key(path):
    """Canonical relative path (the landmarks and cache key)."""
    return os.path.normpath(path).replace(os.sep, "/")


def lfw_path(name, number):
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_pairs(path):
    """LFW-format or `path1 path2 0|1` pairs -> list of Pair (relative image paths)."""
    pairs = []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as err:
        raise PairsError(f"{path}: cannot read pairs file ({err.strerror})") from None
    seen_content = False
    for line_no, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{line_no}"
        if not seen_content and len(fields) <= 2 and all(_is_int(v) for v in fields):
            seen_content = True  # "10 300" / "1100": counts header
            continue
        seen_content = True
        if len(fields) == 3 and _is_int(fields[1]) and _is_int(fields[2]):
            name = fields[0]
            pairs.append(Pair(lfw_path(name, fields[1]), lfw_path(name, fields[2]), True, where))
        elif len(fields) == 4 and _is_int(fields[1]) and _is_int(fields[3]):
            pairs.append(Pair(lfw_path(fields[0], fields[1]), lfw_path(fields[2], fields[3]), False, where))
        elif len(fields) == 3 and fields[2] in ("0", "1"):
            pairs.append(Pair(_key(fields[0]), _key(fields[1]), fields[2] == "1", where))
        else:
            raise PairsError(f"{where}: expected 'name i j', 'name1 i name2 j' or 'path1 path2 0|1', "
                             f"got {line.strip()!r}")
    if not pairs:
        raise PairsError(f"{path}: no pairs found")
    return pairs


def _read_cfp_list(path):
    """Pair_list_F/P.txt: `index relative/path` -> {index: path relative to the Protocol folder}."""
    entries = {}
    try:
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or not _is_int(fields[0]):
                    raise PairsError(f"{path}:{line_no}: expected 'index path', got {line.strip()!r}")
                entries[int(fields[0])] = fields[1]
    except OSError as err:
        raise PairsError(f"{path}: cannot read CFP list ({err.strerror})") from None
    return entries


def read_cfp_pairs(root, protocol):
    """CFP's FF or FP protocol -> list of Pair, paths relative to ROOT, in fold order."""
    if protocol not in ("FF", "FP"):
        raise PairsError(f"CFP protocol must be FF or FP, got {protocol!r}")
    proto_dir = os.path.join(root, "Protocol")
    frontal = _read_cfp_list(os.path.join(proto_dir, "Pair_list_F.txt"))
    second_list = frontal if protocol == "FF" else _read_cfp_list(os.path.join(proto_dir, "Pair_list_P.txt"))

    def rel(entry):
        return _key(os.path.relpath(os.path.normpath(os.path.join(proto_dir, entry)), root))

    pairs = []
    for fold in range(1, 11):
        for kind, issame in (("same", True), ("diff", False)):
            path = os.path.join(proto_dir, "Split", protocol, f"{fold:02d}", f"{kind}.txt")
            try:
                with open(path) as f:
                    lines = f.readlines()
            except OSError as err:
                raise PairsError(f"{path}: cannot read CFP split ({err.strerror})") from None
            for line_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                fields = line.strip().split(",")
                if len(fields) != 2 or not all(_is_int(v) for v in fields):
                    raise PairsError(f"{where}: expected 'i,j', got {line.strip()!r}")
                i, j = int(fields[0]), int(fields[1])
                if i not in frontal:
                    raise PairsError(f"{where}: index {i} is not in Pair_list_F.txt")
                if j not in second_list:
                    raise PairsError(f"{where}: index {j} is not in Pair_list_{'F' if protocol == 'FF' else 'P'}.txt")
                pairs.append(Pair(rel(frontal[i]), rel(second_list[j]), issame, where))
    return pairs


def load_face(path, landmarks=None, size=112, detector=None):
    """Image file -> RGB uint8 size x size: aligned with the 5 landmarks when given, else with
    those a ``detector`` (recognition.data.detect.FaceDetector) finds, else resized.
    Returns None when the file cannot be read as an image; raises
    recognition.data.detect.NoFaceError when the detector finds no face."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if landmarks is None and detector is not None:
        landmarks = detector.landmarks(rgb)
    if landmarks is not None:
        return align_face(rgb, landmarks, size)
    return to_size(rgb, size) if rgb.shape[0] == rgb.shape[1] else cv2.resize(
        rgb, (size, size), interpolation=cv2.INTER_AREA)


def build_bin(pairs, image_dir, out, landmarks=None, quality=95, image_size=112, progress=True, detector=None):
    """Encode every pair's two faces and write the .bin; returns a small summary dict.
    Checks every image exists before any work, and writes nothing on failure. ``detector``:
    align the images without landmarks on the face it detects (none found: PairsError)."""
    from recognition.data.detect import NoFaceError
    landmarks = {_key(k): v for k, v in (landmarks or {}).items()}
    for pair in pairs:
        for rel in (pair.first, pair.second):
            if not os.path.isfile(os.path.join(image_dir, rel)):
                raise PairsError(f"{pair.source}: image {os.path.join(image_dir, rel)} not found")
    encoded, bins, aligned = {}, [], 0
    iterator = pairs
    if progress:
        from tqdm import tqdm
        iterator = tqdm(pairs, desc=f"make_bin {os.path.basename(out)}", unit="pair")
    for pair in iterator:
        for rel in (pair.first, pair.second):
            if rel not in encoded:
                try:
                    face = load_face(os.path.join(image_dir, rel), landmarks.get(rel), image_size, detector)
                except NoFaceError:
                    raise PairsError(f"{pair.source}: image {os.path.join(image_dir, rel)}: no face detected "
                                     f"(--min-face-size / --min-score, or give its landmarks)") from None
                if face is None:
                    raise PairsError(f"{pair.source}: image {os.path.join(image_dir, rel)} cannot be decoded")
                aligned += rel in landmarks or detector is not None
                encoded[rel] = encode_jpeg(face, quality)
            bins.append(encoded[rel])
    issame = [pair.issame for pair in pairs]
    write_bin(out, bins, issame)
    return {"pairs": len(pairs), "same": sum(issame), "different": len(issame) - sum(issame),
            "images": len(encoded), "aligned": aligned}


def build_parser():
    parser = argparse.ArgumentParser(prog="make_bin.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", metavar="FILE", help="LFW-format or 'path1 path2 0|1' pairs file")
    source.add_argument("--cfp", metavar="ROOT", help="CFP dataset root (holds Protocol/ and Data/)")
    parser.add_argument("--cfp-protocol", choices=("FF", "FP"), default="FP",
                        help="CFP frontal-frontal or frontal-profile (default FP)")
    parser.add_argument("--images", metavar="DIR", help="image root (required with --pairs; default ROOT with --cfp)")
    points = parser.add_mutually_exclusive_group()
    points.add_argument("--landmarks", metavar="FILE", help="five-point landmarks, paths relative to DIR")
    points.add_argument("--detect", action="store_true",
                        help="detect the five points (MTCNN) instead of a landmarks file, then align the same way")
    parser.add_argument("--out", required=True, metavar="FILE.bin", help="output .bin")
    add_crop_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_args(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if crop_args_problem(args):
        sys.exit(f"make_bin: {crop_args_problem(args)}")
    image_dir = args.images or args.cfp
    if image_dir is None:
        sys.exit("make_bin: --images DIR is required with --pairs")
    if not os.path.isdir(image_dir):
        sys.exit(f"make_bin: {image_dir}: image folder not found")
    try:
        landmarks = None
        if args.landmarks:
            if not os.path.isfile(args.landmarks):
                raise PairsError(f"{args.landmarks}: landmarks file not found")
            landmarks = read_landmarks(args.landmarks)
        pairs = read_pairs(args.pairs) if args.pairs else read_cfp_pairs(args.cfp, args.cfp_protocol)
        detector = None
        if args.detect:
            from recognition.data.detect import FaceDetector
            detector = FaceDetector(**detector_options(args))
        summary = build_bin(pairs, image_dir, args.out, landmarks, args.quality, args.image_size,
                            progress=not args.no_progress, detector=detector)
    except (PairsError, ValueError, ImportError, OSError) as err:
        sys.exit(f"make_bin: {err}")
    print(f"wrote {args.out}: {summary['pairs']} pairs ({summary['same']} same, {summary['different']} "
          f"different) of {summary['images']} images, {summary['aligned']} aligned with "
          + ("detected landmarks" if args.detect else "landmarks"))


if __name__ == "__main__":
    main()
