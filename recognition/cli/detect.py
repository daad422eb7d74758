"""Detect the five facial points of every image (MTCNN) and write a landmarks file.

The output is the lfw-devtrain landmarks.txt format (a `#` header, then `path<TAB>x1<TAB>y1 ...
x5<TAB>y5`: left eye, right eye, nose tip, left and right mouth corner, in pixels of the image),
so `pack_rec.py --landmarks`, `make_bin.py --landmarks` and `embed.py --landmarks` take it as is.
Paths are relative to SRC for a folder (a flat folder of images, one sub-folder per identity, or
deeper), and exactly as written in the .lst for an insightface .lst.

One face per image: with several, the --pick rule chooses (default center-weighted, insightface's
RetinaFace/SCRFD rule: box area minus 2 x squared distance of the box centre from the image
centre). Images without a face and unreadable or corrupt files are skipped and listed in the
report file (`path<TAB>reason`); --strict stops at the first of them instead (non-zero exit,
nothing written). The output order is the sorted input order whatever --workers.
"""
import argparse
import os
import sys

from recognition.data import detect
from recognition.data.pack import worker_pool
from recognition.fileio import fsync_dir

HEADER = ("# path\tx1\ty1\tx2\ty2\tx3\ty3\tx4\ty4\tx5\ty5  (left eye, right eye, nose tip, left mouth corner, "
          "right mouth corner; pixels of the images; MTCNN, tools/detect.py)")


class SourceError(ValueError):
    pass


def list_images(root):
    """(relative path, full path) of every image under ``root`` (links followed), sorted by path."""
    from recognition.data.pack import IMAGE_EXTENSIONS, list_images as relative_paths
    found = [(rel, os.path.join(root, rel)) for rel in relative_paths(root)]
    if not found:
        raise SourceError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return found


def list_lst_images(lst_path):
    """(path as written in the .lst, full path) of the images of an insightface .lst, in the
    packer's order (recognition.data.pack.list_lst: by label then path); malformed lines are
    reported as problems."""
    from recognition.data.pack import list_lst
    items, problems = list_lst(lst_path)
    base = os.path.dirname(os.path.abspath(lst_path))
    written = {}
    with open(lst_path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3:
                path = fields[1]
                written.setdefault(path if os.path.isabs(path) else os.path.join(base, path), path)
    entries, seen = [], set()
    for item in items:
        if item.path not in seen:  # one row per image, even when the .lst repeats it
            seen.add(item.path)
            entries.append((written[item.path], item.path))
    return entries, problems


def list_source(src):
    """(entries, problems) of a folder or an insightface .lst."""
    if os.path.isdir(src):
        return list_images(src), []
    if os.path.isfile(src):
        entries, problems = list_lst_images(src)
        if not entries and not problems:
            raise SourceError(f"{src}: no images listed")
        return entries, problems
    raise SourceError(f"{src}: no such folder or .lst file")


_WORKER_OPTIONS = {}


def _init_worker(options):
    _WORKER_OPTIONS.clear()
    _WORKER_OPTIONS.update(options)


def _detect(path):
    """(landmarks (5, 2) or None, faces found, problem or None): what crosses the process boundary."""
    face, count, problem = detect.detect_file(detect.process_detector(**_WORKER_OPTIONS), path)
    return (None if face is None else face.landmarks), count, problem


def format_row(key, points):
    return key + "\t" + "\t".join(f"{v:.1f}" for v in points.reshape(-1))


def write_lines_atomic(path, lines):
    """``lines`` to ``path`` through a temporary name (never a half-written file), flushed to disk."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            for line in lines:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(folder)


def run(src, out, report=None, workers=1, strict=False, progress=True, options=None):
    """Detect, then write ``out`` and ``report``. Returns a dict of counts; raises SourceError
    (naming the file) on the first problem when ``strict``, before writing anything."""
    options = dict(options or {})
    detect.process_detector(**options)  # fails early (bad option, missing networks), in this process
    entries, problems = list_source(src)
    if strict and problems:
        raise SourceError(problems[0])
    report = report or default_report(out)
    rows, skipped = [], [problem.replace(": malformed", "\tmalformed", 1) for problem in problems]
    counts = {"images": len(entries), "detected": 0, "no_face": 0, "unreadable": 0,
              "several_faces": 0, "malformed_lines": len(problems)}
    paths = [full for _, full in entries]
    pool = None
    if workers > 1 and len(paths) > 1:
        pool = worker_pool(min(workers, len(paths)), initializer=_init_worker, initargs=(options,))
        results = pool.imap(_detect, paths, chunksize=8)
    else:
        _init_worker(options)
        results = map(_detect, paths)
    try:
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(paths), desc="detect", unit="img")
        for (key, full), (points, count, problem) in zip(entries, results):
            if problem:
                if strict:
                    raise SourceError(f"{full}: {problem}")
                counts["no_face" if problem == detect.NO_FACE else "unreadable"] += 1
                skipped.append(f"{key}\t{problem}")
                continue
            counts["detected"] += 1
            counts["several_faces"] += count > 1
            rows.append(format_row(key, points))
    finally:
        if pool:
            pool.terminate()
            pool.join()
    write_lines_atomic(out, [HEADER] + rows)
    write_lines_atomic(report, ["# path\tproblem  (images tools/detect.py skipped)"] + skipped)
    counts["report"] = report
    return counts


def default_report(out):
    return os.path.splitext(out)[0] + ".report.txt"


def add_detector_args(parser, title="face detection (MTCNN), with --detect"):
    """The detector's options (shared with pack_rec, make_bin, embed and compare)."""
    group = parser.add_argument_group(title)
    group.add_argument("--min-face-size", type=int, default=detect.DEFAULT_MIN_FACE_SIZE, metavar="PX",
                       help=f"smallest face searched for, pixels (default {detect.DEFAULT_MIN_FACE_SIZE})")
    group.add_argument("--min-score", type=float, default=detect.DEFAULT_MIN_SCORE, metavar="S",
                       help=f"final (O-Net) score a face needs (default {detect.DEFAULT_MIN_SCORE}; "
                            f"stage thresholds {'/'.join(str(t) for t in detect.DEFAULT_THRESHOLDS)})")
    group.add_argument("--pick", choices=detect.PICK_RULES, default="center-weighted",
                       help="which face when there are several: center-weighted (insightface: area - 2 x squared "
                            "centre offset), largest, or center (nearest the image centre); default center-weighted")
    group.add_argument("--backend", choices=detect.BACKENDS, default=None,
                       help="network runtime (default onnxruntime when installed: faster; else opencv)")
    return group


def add_crop_args(parser):
    """The aligned crop's options (shared with pack_rec and make_bin); check with :func:`crop_args_problem`."""
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95, as insightface)")
    parser.add_argument("--image-size", type=int, default=112, help="side of the aligned face crop (default 112)")


def crop_args_problem(args):
    """What is wrong with the options of :func:`add_crop_args`, in one line, or None."""
    if not 1 <= args.quality <= 100:
        return f"--quality must be 1..100, got {args.quality}"
    if args.image_size < 8:
        return f"--image-size must be at least 8, got {args.image_size}"
    return None


def detector_options(args):
    """FaceDetector keyword arguments from the options of :func:`add_detector_args` (one
    intra-op thread: deterministic, and parallelism comes from --workers)."""
    return {"min_face_size": args.min_face_size, "min_score": args.min_score, "pick": args.pick,
            "backend": args.backend, "threads": 1}


def build_parser():
    parser = argparse.ArgumentParser(prog="detect.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="image folder (flat or one sub-folder per identity) or insightface .lst")
    parser.add_argument("--out", required=True, metavar="LANDMARKS.txt", help="landmarks file to write")
    parser.add_argument("--report", metavar="FILE",
                        help="skipped images and why (default: OUT with .report.txt, e.g. landmarks.report.txt)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image without a face or unreadable: exit 1, write nothing")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (default: cores); the output does not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_detector_args(parser, "face detection (MTCNN)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        sys.exit(f"detect: --workers must be at least 1, got {args.workers}")
    try:
        counts = run(args.src, args.out, args.report, args.workers, args.strict, not args.no_progress,
                     detector_options(args))
    except (SourceError, ValueError, ImportError, OSError) as err:
        sys.exit(f"detect: {err}")
    skipped = counts["no_face"] + counts["unreadable"] + counts["malformed_lines"]
    print(f"wrote {args.out}: {counts['detected']} of {counts['images']} images with a face; "
          f"{counts['several_faces']} with several faces (kept the {args.pick} one); {skipped} skipped "
          f"({counts['no_face']} no face, {counts['unreadable']} unreadable"
          + (f", {counts['malformed_lines']} malformed .lst lines" if counts["malformed_lines"] else "")
          + f"), listed in {counts['report']}")


if __name__ == "__main__":
    main()
