"""Pack face images into insightface RecordIO: OUT/train.rec, OUT/train.idx, OUT/property."""
import argparse
import os
import sys

from recognition.cli.detect import add_crop_args, add_detector_args, crop_args_problem, detector_options
from recognition.data.pack import PackError, pack


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pack_rec.py", description=__doc__,
        epilog="SRC is a folder with one sub-folder of images per identity, or an insightface .lst "
               "(aligned<TAB>path<TAB>label [4 bbox] [x1..x5 y1..y5]).")
    parser.add_argument("src", help="image folder or .lst file")
    parser.add_argument("out", help="output folder (created)")
    points = parser.add_mutually_exclusive_group()
    points.add_argument("--landmarks", help="five-point landmarks file: path<TAB>x1 y1 ... x5 y5 "
                                            "(paths relative to SRC); images are aligned to 112x112")
    points.add_argument("--detect", action="store_true",
                        help="detect the five points (MTCNN) instead of a landmarks file, then align the "
                             "same way; images without a face are skipped (--strict: fail)")
    parser.add_argument("--min-images", type=int, default=1, help="drop identities with fewer images (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel encoders (default: cores)")
    add_crop_args(parser)
    parser.add_argument("--strict", action="store_true", help="fail on the first bad image or line instead of skipping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_args(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if crop_args_problem(args):
        sys.exit(f"pack_rec: {crop_args_problem(args)}")
    if args.landmarks and not os.path.isfile(args.landmarks):
        sys.exit(f"pack_rec: {args.landmarks}: landmarks file not found")
    try:
        counts = pack(args.src, args.out, landmarks=args.landmarks, min_images=args.min_images,
                      workers=args.workers, quality=args.quality, image_size=args.image_size,
                      strict=args.strict, progress=not args.no_progress,
                      detect=detector_options(args) if args.detect else None)
    except (PackError, ValueError, ImportError, OSError) as err:
        sys.exit(f"pack_rec: {err}")
    print(f"packed {counts['images']} images of {counts['identities']} identities into {args.out} "
          f"({counts['skipped']} skipped, {counts['too_few_images']} identities under --min-images)")


if __name__ == "__main__":
    main()
