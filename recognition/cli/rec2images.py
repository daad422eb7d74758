"""Unpack an insightface RecordIO dataset into image folders: OUT/IDENTITY/RECORDINDEX.jpg.

The stored encoded bytes are written as they are (no re-encoding). The folders are built under
a temporary name and renamed to OUT at the end, so an interrupted run leaves no partial OUT.
"""
import argparse
import os
import shutil
import sys

from recognition.data.record import RecordDataset, RecordError, label_of


def extension_of(payload):
    if payload[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".jpg"


def unpack(root, out, limit=None, progress=True):
    """Write every image record (or the first ``limit``); returns (images, identities)."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise RecordError(f"{out}: already exists and is not an empty folder")
    dataset = RecordDataset(root)
    indices = dataset.image_indices[:limit] if limit else dataset.image_indices
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out))}.partial{os.getpid()}")
    identities = set()
    try:
        iterator = indices
        if progress:
            from tqdm import tqdm
            iterator = tqdm(indices, desc="rec2images", unit="img")
        for index in iterator:
            header, payload = dataset.read(int(index))
            identity = label_of(header)
            folder = os.path.join(tmp, str(identity))
            if identity not in identities:
                os.makedirs(folder, exist_ok=True)
                identities.add(identity)
            with open(os.path.join(folder, f"{dataset.record_key(int(index))}{extension_of(payload)}"), "wb") as f:
                f.write(payload)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(indices), len(identities)


def build_parser():
    parser = argparse.ArgumentParser(prog="rec2images.py", description=__doc__)
    parser.add_argument("root", help="dataset folder (train.rec, train.idx, property)")
    parser.add_argument("out", help="output folder (must not exist or be empty)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        images, identities = unpack(args.root, args.out, args.limit, progress=not args.no_progress)
    except (RecordError, OSError) as err:
        sys.exit(f"rec2images: {err}")
    print(f"wrote {images} images of {identities} identities under {args.out}")


if __name__ == "__main__":
    main()
