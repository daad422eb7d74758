#!/usr/bin/env python
"""Face detection (recognition.data.detect, MTCNN) against the provided five points of lfw-devtrain.

For each image of ``--data``/landmarks.txt (the first ``--limit`` rows, in file order): read and
decode it, detect the picked face (one process, ``--threads`` intra-op threads, 1 by default),
and compare its five points with the provided ones in the aligned 112x112 frame: both sets are
mapped by the similarity transform that takes the PROVIDED points onto the ArcFace template
(what ``pack_rec.py --landmarks`` does to the image), and the distance of each detected point from
its provided point is measured there, in pixels of the 112x112 crop.

Reports, per backend: detection rate (images with a face of at least ``--min-score``), images
with several faces, images/s of detection alone and of decode + detection (one worker, so this
is per core; ``cpu_utilisation`` = CPU seconds / wall seconds tells whether others shared the
core), the mean / median / 95th percentile / max of the per-image mean point distance, the mean
distance per point, the share of images over 10 px (a different face or a failed fit), and the
mean signed offset of the detected points from the provided ones in the original image's pixels
(a systematic bias of either annotation shows up there).

Skips with a message (exit 0) when the data folder is absent. Prints one JSON object, also
written atomically with ``--json-out``.

    python bench/detection.py --limit 1000
    python bench/detection.py --backend both --limit 300 --json-out bench/results/detection.json
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from recognition.data.align import read_landmarks, similarity_transform, template_for  # noqa: E402
from recognition.data import detect  # noqa: E402
from recognition.fileio import print_json  # noqa: E402

LFW_DEVTRAIN = "/work/shared/data/lfw-devtrain"
POINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


def aligned_distances(detected, provided, size=112):
    """Per-point distances (5,) between detected and provided points after the similarity that
    maps the provided points onto the template (pixels of the size x size aligned crop)."""
    matrix = similarity_transform(provided, template_for(size))
    a = detected @ matrix[:, :2].T + matrix[:, 2]
    b = provided @ matrix[:, :2].T + matrix[:, 2]
    return np.linalg.norm(a - b, axis=1)


def run(backend, rows, image_root, args):
    detector = detect.FaceDetector(min_face_size=args.min_face_size, min_score=args.min_score,
                                   pick=args.pick, backend=backend, threads=args.threads)
    # warm-up (first-run allocations), not timed
    for rel, _ in rows[:3]:
        try:
            detector.detect(detect.read_image(os.path.join(image_root, rel)))
        except detect.DetectError:
            pass
    per_image, per_point, offsets = [], [], []
    unreadable, no_face, several = [], [], 0
    detect_wall = total_wall = total_cpu = 0.0
    for rel, provided in rows:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        try:
            image = detect.read_image(os.path.join(image_root, rel))
        except detect.DetectError as err:
            unreadable.append(f"{rel}: {err}")
            continue
        wall1 = time.perf_counter()
        face, count = detector.detect_one(image)
        wall2 = time.perf_counter()
        detect_wall += wall2 - wall1
        total_wall += wall2 - wall0
        total_cpu += time.process_time() - cpu0
        several += count > 1
        if face is None:
            no_face.append(rel)
            continue
        distances = aligned_distances(face.landmarks, provided)
        per_point.append(distances)
        per_image.append(distances.mean())
        offsets.append((face.landmarks - provided).mean(axis=0))
    n = len(rows) - len(unreadable)
    per_image = np.array(per_image)
    result = {
        "backend": backend, "images": len(rows), "unreadable": len(unreadable),
        "detected": int(len(per_image)), "detection_rate": len(per_image) / max(n, 1),
        "no_face": no_face[:50], "several_faces": int(several),
        "detect_images_per_s": n / detect_wall if detect_wall else None,
        "decode_and_detect_images_per_s": n / total_wall if total_wall else None,
        "cpu_utilisation": total_cpu / total_wall if total_wall else None,
    }
    if len(per_image):
        result["aligned_distance_px"] = {
            "mean": float(per_image.mean()), "median": float(np.median(per_image)),
            "p95": float(np.percentile(per_image, 95)), "max": float(per_image.max()),
            "over_10px": int(np.sum(per_image > 10)),
            "per_point_mean": dict(zip(POINTS, np.mean(per_point, axis=0).round(4).tolist())),
        }
        result["mean_offset_original_px"] = dict(zip(("x", "y"), np.mean(offsets, axis=0).round(4).tolist()))
    if unreadable:
        result["unreadable_files"] = unreadable[:50]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=LFW_DEVTRAIN, help="folder with images/ and landmarks.txt")
    parser.add_argument("--limit", type=int, default=0, help="first N rows of landmarks.txt (0: all)")
    parser.add_argument("--backend", default=detect.DEFAULT_BACKEND, choices=detect.BACKENDS + ("both",),
                        help="network runtime ('both': one after the other, same images)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the networks")
    parser.add_argument("--workers", type=int, default=1, choices=(1,),
                        help="processes (1: the figures are per core)")
    parser.add_argument("--min-face-size", type=int, default=detect.DEFAULT_MIN_FACE_SIZE)
    parser.add_argument("--min-score", type=float, default=detect.DEFAULT_MIN_SCORE)
    parser.add_argument("--pick", choices=detect.PICK_RULES, default="center-weighted")
    parser.add_argument("--json-out", help="also write the JSON here (atomically)")
    args = parser.parse_args(argv)

    landmarks_path = os.path.join(args.data, "landmarks.txt")
    image_root = os.path.join(args.data, "images")
    if not (os.path.isfile(landmarks_path) and os.path.isdir(image_root)):
        print(f"bench/detection.py: skipped: {args.data} has no images/ and landmarks.txt "
              f"(lfw-devtrain is not on this machine; pass --data)", file=sys.stderr)
        return 0
    rows = list(read_landmarks(landmarks_path).items())  # file order
    if args.limit > 0:
        rows = rows[:args.limit]
    backends = detect.BACKENDS if args.backend == "both" else (args.backend,)
    result = {
        "data": os.path.abspath(args.data), "images": len(rows), "threads": args.threads, "workers": 1,
        "min_face_size": args.min_face_size, "thresholds": list(detect.DEFAULT_THRESHOLDS),
        "min_score": args.min_score, "pick": args.pick, "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "results": [run(backend, rows, image_root, args) for backend in backends],
    }
    print_json(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
