"""Pack face images into an insightface RecordIO dataset (the library behind tools/pack_rec.py).

Sources: a folder with one sub-folder per identity, or an insightface ``.lst`` file
(``aligned<TAB>path<TAB>label`` optionally followed by 4 bbox values and 10 landmark values
x1..x5 y1..y5). Landmarks may also come from a separate file in the lfw-devtrain format
(``path<TAB>x1 y1 ... x5 y5``, paths relative to the source folder), or be detected on the fly
(``detect``: MTCNN, :mod:`recognition.data.detect`) for the images that have none. Images with
landmarks are aligned onto the ArcFace template; images without are taken as already aligned and
resized.

Identity labels are 0..K-1 in sorted identity order whatever the input order (insightface's packer
creates extra identities from an unsorted .lst; this one does not). Output is deterministic.
"""
import multiprocessing
import os
import sys
from collections import namedtuple

import cv2
import numpy as np
from tqdm import tqdm

from .align import align_face, read_landmarks, to_size
from .record import RecordWriter, encode_jpeg

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Item = namedtuple("Item", "identity path landmarks")  # identity: sort key (folder name or label)


class PackError(ValueError):
    """Input that cannot be packed; the message names the file (and line) and the problem."""


def list_folder(src, landmarks_file=None):
    """Items of a folder-per-identity source, sorted by identity then file name."""
    landmarks = read_landmarks(landmarks_file) if landmarks_file else {}
    items = []
    for identity in sorted(os.listdir(src)):
        folder = os.path.join(src, identity)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel = f"{identity}/{name}"
                items.append(Item(identity, os.path.join(folder, name), landmarks.get(rel)))
    if not items:
        raise PackError(f"{src}: no images found (expected one sub-folder of images per identity)")
    return items, []


def list_images(root, extensions=IMAGE_EXTENSIONS):
    """Paths of the images anywhere under ``root``, relative to it ('/'-separated, links followed),
    sorted: the flat or nested folders that detect.py and embed.py take."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in files:
            if name.lower().endswith(extensions):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def list_lst(lst_path, landmarks_file=None):
    """Items of an insightface .lst file, sorted by numeric label then path.

    Returns (items, problems): malformed lines are reported as problems, not items.
    """
    base = os.path.dirname(os.path.abspath(lst_path))
    landmarks = read_landmarks(landmarks_file) if landmarks_file else {}
    items, problems = [], []
    with open(lst_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            try:
                if len(fields) not in (3, 7, 17):
                    raise ValueError(f"{len(fields)} fields, expected 3, 7 or 17")
                path, label = fields[1], int(float(fields[2]))
                points = None
                if len(fields) == 17:
                    values = np.array([float(v) for v in fields[7:17]])
                    points = np.stack([values[:5], values[5:]], axis=1)  # x1..x5 y1..y5 -> 5x2
            except ValueError as err:
                problems.append(f"{lst_path}:{line_no}: malformed line ({err})")
                continue
            full = path if os.path.isabs(path) else os.path.join(base, path)
            if points is None and landmarks_file:
                points = landmarks.get(path)
                if points is None:  # would be packed unaligned among aligned faces
                    problems.append(f"{full}: skipped, no row in {landmarks_file}")
                    continue
            items.append(Item(label, full, points))
    items.sort(key=lambda item: (item.identity, item.path))
    return items, problems


def is_truncated_jpeg(data):
    """True for a JPEG that ends before its end-of-image marker: cut short by an interrupted
    download or copy. libjpeg decodes such a file without an error (the missing rows come out
    grey), so OpenCV alone would pack a half-grey face. Walks the marker segments (skipping their
    payloads, where EXIF thumbnails with their own markers live) and the entropy-coded data of each
    scan (where 0xFF is followed by 0x00 or a restart marker) until EOI or the end of the bytes."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not raw.startswith(b"\xff\xd8"):
        return False
    pos, size = 2, len(raw)
    while True:
        if pos + 1 >= size:
            return True
        if raw[pos] != 0xFF:
            return False  # not a layout this walk understands: leave the verdict to the decoder
        marker = raw[pos + 1]
        if marker == 0xD9:
            return False  # end of image
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if pos + 4 > size:
            return True
        pos += 2 + ((raw[pos + 2] << 8) | raw[pos + 3])
        if marker == 0xDA:  # start of scan: skip the entropy-coded data up to the next real marker
            while True:
                pos = raw.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return True
                following = raw[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break


def load_face(item, image_size=112, min_size=32, detector=None):
    """Read, align and return an RGB face; raises ValueError with the reason.

    With a ``detector`` (recognition.data.detect.FaceDetector), an item without landmarks gets
    those of the face it detects (no face: ValueError "no face detected")."""
    data = np.fromfile(item.path, dtype=np.uint8) if os.path.exists(item.path) else None
    if data is None:
        raise ValueError("file not found")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise ValueError("not a readable image (corrupt or unknown format)")
    if is_truncated_jpeg(data):
        raise ValueError("truncated JPEG (no end-of-image marker after the last scan)")
    if min(image.shape[:2]) < min_size:
        raise ValueError(f"image too small ({image.shape[1]}x{image.shape[0]}, minimum {min_size})")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if item.landmarks is not None:
        return align_face(image, item.landmarks, image_size)
    if detector is not None:
        return align_face(image, detector.landmarks(image), image_size)
    return to_size(image, image_size)


def detector_options(detect):
    """``pack(detect=...)``: None/False (no detection), True (default detector) or a dict of
    FaceDetector keyword arguments -> the dict, or None."""
    if not detect:
        return None
    return {"threads": 1} if detect is True else dict(detect)


def _encode(args):
    item, image_size, quality, detect_options = args
    try:
        detector = None
        if detect_options is not None and item.landmarks is None:
            from .detect import process_detector  # one per (worker) process
            detector = process_detector(**detect_options)
        return encode_jpeg(load_face(item, image_size, detector=detector), quality), None
    except ValueError as err:
        return None, f"{item.path}: skipped, {err}"


def worker_pool(processes, **kwargs):
    """A ``multiprocessing.Pool`` whose workers are forked from a fresh server process, not from
    this one: forking a process that holds MXNet's engine and OpenMP threads aborts now and then
    (seen in the test suite, in ``os.fork``)."""
    return multiprocessing.get_context("forkserver").Pool(processes, **kwargs)


def pack(src, out, landmarks=None, min_images=1, workers=1, quality=95, image_size=112,
         strict=False, progress=True, warn=None, detect=None):
    """Pack ``src`` into ``out``/train.rec,.idx,property. Returns a dict of counts.

    Unreadable images, missing landmark rows (with a landmarks file) and malformed .lst lines are
    skipped with one warning each; ``strict`` turns the first of them into a PackError.
    ``detect`` (True or a dict of FaceDetector options): detect the five points of every image
    that has none (all of a folder; the .lst lines without landmarks), skipping images without a
    face like unreadable ones; not together with ``landmarks``.
    """
    # tqdm.write keeps each warning on its own line while the progress bar is drawn
    warn = warn or (lambda message: tqdm.write("warning: " + message, file=sys.stderr))
    detect_options = detector_options(detect)
    if detect_options is not None:
        if landmarks:
            raise PackError("detect and a landmarks file exclude each other")
        from .detect import process_detector
        process_detector(**detect_options)  # a bad option or missing networks fail here, once
    if os.path.isdir(src):
        items, problems = list_folder(src, landmarks)
        if landmarks:
            with_points = [item for item in items if item.landmarks is not None]
            problems += [f"{item.path}: skipped, no row in {landmarks}" for item in items if item.landmarks is None]
            items = with_points
    elif os.path.isfile(src):
        items, problems = list_lst(src, landmarks)
    else:
        raise PackError(f"{src}: no such folder or .lst file")
    for problem in problems:
        if strict:
            raise PackError(problem)
        warn(problem)

    counts = {"images": 0, "identities": 0, "skipped": len(problems), "too_few_images": 0}
    jobs = ((item, image_size, quality, detect_options) for item in items)
    pool = worker_pool(workers) if workers > 1 else None
    results = pool.imap(_encode, jobs, chunksize=16) if pool else map(_encode, jobs)
    try:
        with RecordWriter(out, (image_size, image_size)) as writer:
            group, group_key = [], None

            def flush():
                if len(group) >= min_images:
                    for jpeg in group:
                        writer.add(counts["identities"], jpeg)
                    counts["identities"] += 1
                    counts["images"] += len(group)
                elif group_key is not None:
                    counts["too_few_images"] += 1

            for item, (jpeg, problem) in tqdm(zip(items, results), total=len(items), desc="pack",
                                              unit="img", disable=not progress):
                if item.identity != group_key:
                    flush()
                    group, group_key = [], item.identity
                if problem:
                    if strict:
                        raise PackError(problem)
                    warn(problem)
                    counts["skipped"] += 1
                    continue
                group.append(jpeg)
            flush()
            if counts["images"] == 0:
                raise PackError(f"{src}: no identity has {min_images} or more usable images")
    finally:
        if pool:
            pool.terminate()
    return counts
