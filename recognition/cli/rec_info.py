"""Summary of an insightface RecordIO dataset: its layout (header: record 0 and identity records,
as faces_emore; headerless: every record an image, as SeqRecBuilder and shuffled packs), image and
identity counts, a text histogram of images per identity, and optionally a PNG grid of sample
faces (one per random identity)."""
import argparse
import json
import os
import sys

import cv2
import numpy as np

from recognition.data.align import to_size
from recognition.data.record import RecordDataset, RecordError

LAYOUTS = {"header": "record 0 and identity records index the images",
           "headerless": "every record an image, identities from the record labels"}

# histogram buckets of images per identity: [low, high]
BUCKETS = [(1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 200), (201, None)]


def identity_counts(dataset):
    return np.array([last - first for _, first, last in dataset.identity_ranges], dtype=np.int64)


def histogram(counts):
    """[(label, number of identities)] over BUCKETS."""
    rows = []
    for low, high in BUCKETS:
        inside = (counts >= low) if high is None else (counts >= low) & (counts <= high)
        label = f"{low}+" if high is None else (str(low) if low == high else f"{low}-{high}")
        rows.append((label, int(inside.sum())))
    return rows


def summary(dataset):
    counts = identity_counts(dataset)
    return {
        "layout": dataset.layout,
        "images": int(len(dataset)), "identities": int(len(counts)),
        "image_size": [dataset.height, dataset.width],
        "images_per_identity": {"min": int(counts.min()), "median": float(np.median(counts)),
                                "mean": float(counts.mean()), "max": int(counts.max())} if len(counts) else {},
        "histogram": dict(histogram(counts)),
    }


def format_summary(root, info, width=40):
    lines = [f"{root}: {info['images']} images of {info['identities']} identities, "
             f"{info['image_size'][0]}x{info['image_size'][1]}",
             f"layout: {info['layout']} ({LAYOUTS.get(info['layout'], '?')})"]
    per = info["images_per_identity"]
    if per:
        lines.append(f"images per identity: min {per['min']}, median {per['median']:g}, "
                     f"mean {per['mean']:.2f}, max {per['max']}")
    top = max(info["histogram"].values()) or 1
    lines.append("images/identity  identities")
    for label, count in info["histogram"].items():
        bar = "#" * int(round(width * count / top))
        lines.append(f"{label:>15}  {count:>10}  {bar}")
    return "\n".join(lines)


def sample_grid(dataset, rows=8, cols=8, size=112, seed=0):
    """uint8 RGB grid of rows x cols faces: one random image of each of rows*cols random
    identities (images of random identities again when there are fewer)."""
    rng = np.random.RandomState(seed)
    ranges = dataset.identity_ranges
    picks = rng.permutation(len(ranges))[:rows * cols]
    grid = np.zeros((rows * size, cols * size, 3), np.uint8)
    for slot in range(rows * cols):
        if slot >= len(picks):
            break
        _, first, last = ranges[picks[slot]]
        image, _ = dataset.read_image(int(rng.randint(first, last)))
        r, c = divmod(slot, cols)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = to_size(image, size) \
            if image.shape[0] == image.shape[1] else cv2.resize(image, (size, size))
    return grid


def write_png(path, rgb):
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext or '.png'}"
    if not cv2.imwrite(tmp, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: cannot write image")
    os.replace(tmp, path)


def build_parser():
    parser = argparse.ArgumentParser(prog="rec_info.py", description=__doc__)
    parser.add_argument("root", help="dataset folder (train.rec, train.idx, property)")
    parser.add_argument("--grid", metavar="OUT.png", help="write a grid of sample faces")
    parser.add_argument("--rows", type=int, default=8, help="grid rows (default 8)")
    parser.add_argument("--cols", type=int, default=8, help="grid columns (default 8)")
    parser.add_argument("--cell", type=int, default=112, help="grid cell size in pixels (default 112)")
    parser.add_argument("--seed", type=int, default=0, help="which samples (default 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if min(args.rows, args.cols, args.cell) < 1:
        sys.exit("rec_info: --rows, --cols and --cell must be positive")
    try:
        dataset = RecordDataset(args.root)
        info = summary(dataset)
        if args.grid:
            write_png(args.grid, sample_grid(dataset, args.rows, args.cols, args.cell, args.seed))
    except (RecordError, OSError) as err:
        sys.exit(f"rec_info: {err}")
    print(json.dumps(info) if args.json else format_summary(args.root, info))
    if args.grid and not args.json:
        print(f"sample grid written to {args.grid}")


if __name__ == "__main__":
    main()
