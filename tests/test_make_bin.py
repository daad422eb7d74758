"""tools/make_bin.py on real photos (the committed LFW sample): LFW-format pairs, path pairs,
a CFP-layout folder built here, and the errors (named file and line, nothing written)."""
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import pytest

from conftest import ROOT, SAMPLE, train_people
from recognition.cli.make_bin import main as make_bin
from recognition.data.align import align_face, read_landmarks
from recognition.data.binfile import load_bin
from recognition.data.record import encode_jpeg

IMAGES = os.path.join(SAMPLE, "images")
LANDMARKS = os.path.join(SAMPLE, "landmarks.txt")


def rgb(path):
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def read_raw(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_lfw_sample_pairs(tmp_path):
    out = str(tmp_path / "lfw_sample.bin")
    make_bin(["--pairs", os.path.join(SAMPLE, "pairs.txt"), "--images", IMAGES,
              "--landmarks", LANDMARKS, "--out", out, "--no-progress"])
    bins, issame = read_raw(out)
    # independent reading of the pairs file: header line, then 3 fields = same, 4 = different
    with open(os.path.join(SAMPLE, "pairs.txt")) as f:
        lines = [line.split() for line in f if line.strip()][1:]
    assert issame == [len(fields) == 3 for fields in lines]
    assert len(bins) == 2 * len(lines) == 600
    landmarks = read_landmarks(LANDMARKS)
    for k in (0, 1, 298, 299):  # a same pair and a different pair
        fields = lines[k]
        names = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
                [(fields[0], fields[1]), (fields[2], fields[3])]
        for slot, (name, number) in enumerate(names):
            rel = f"{name}/{name}_{int(number):04d}.jpg"
            expected = encode_jpeg(align_face(rgb(os.path.join(IMAGES, rel)), landmarks[rel], 112), 95)
            assert bins[2 * k + slot] == expected, rel
    images, flags = load_bin(out)
    assert images.shape == (600, 112, 112, 3) and flags.sum() == 150


@pytest.mark.parametrize("header", ["10 300", "1100", None])
def test_lfw_headers_and_path_pairs(tmp_path, header):
    people = train_people()[:3]
    lines = [f"{people[0]}\t1\t2", f"{people[1]}\t3\t{people[2]}\t4"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(("" if header is None else header + "\n") + "\n".join(lines) + "\n")
    out = str(tmp_path / "a.bin")
    make_bin(["--pairs", str(pairs), "--images", IMAGES, "--out", out, "--quality", "90",
              "--image-size", "96", "--no-progress"])
    bins, issame = read_raw(out)
    assert issame == [True, False]
    # no landmarks: taken as aligned, resized (INTER_AREA) to the requested size
    first = rgb(os.path.join(IMAGES, people[0], f"{people[0]}_0001.jpg"))
    assert bins[0] == encode_jpeg(cv2.resize(first, (96, 96), interpolation=cv2.INTER_AREA), 90)

    # the same pairs as 'path1 path2 1|0' lines give the same file
    path_pairs = tmp_path / "paths.txt"
    path_pairs.write_text(f"{people[0]}/{people[0]}_0001.jpg {people[0]}/{people[0]}_0002.jpg 1\n"
                          f"{people[1]}/{people[1]}_0003.jpg {people[2]}/{people[2]}_0004.jpg 0\n")
    out2 = str(tmp_path / "b.bin")
    make_bin(["--pairs", str(path_pairs), "--images", IMAGES, "--out", out2, "--quality", "90",
              "--image-size", "96", "--no-progress"])
    assert read_raw(out2) == (bins, issame)


def build_cfp(root, people):
    """A folder laid out like CFP (Data/Images/NNN/frontal|profile/NN.jpg, Protocol/...) from
    real photos, with one same and one different pair per fold; returns the landmarks file and
    the expected (source photo, CFP path) of every pair slot per protocol."""
    sample_lm = read_landmarks(LANDMARKS)
    lm_lines, f_list, p_list, source = [], [], [], {}
    for p, name in enumerate(people):
        for kind, numbers, listing in (("frontal", (1, 2), f_list), ("profile", (3, 4), p_list)):
            for slot, number in enumerate(numbers):
                rel = f"Data/Images/{p + 1:03d}/{kind}/{slot + 1:02d}.jpg"
                src = f"{name}/{name}_{number:04d}.jpg"
                os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
                shutil.copy(os.path.join(IMAGES, src), os.path.join(root, rel))
                lm_lines.append(rel + "\t" + "\t".join(f"{v:.1f}" for v in sample_lm[src].ravel()))
                listing.append(rel)
                source[rel] = src
    os.makedirs(os.path.join(root, "Protocol"))
    for listing, file in ((f_list, "Pair_list_F.txt"), (p_list, "Pair_list_P.txt")):
        with open(os.path.join(root, "Protocol", file), "w") as f:
            f.writelines(f"{i + 1} ../{rel}\n" for i, rel in enumerate(listing))
    expected = {"FF": [], "FP": []}
    for fold in range(10):
        a, b = fold, (fold + 1) % 10
        splits = {"FF": {"same": (2 * a + 1, 2 * a + 2), "diff": (2 * a + 1, 2 * b + 2)},
                  "FP": {"same": (2 * a + 1, 2 * a + 1), "diff": (2 * a + 2, 2 * b + 2)}}
        for protocol, kinds in splits.items():
            second = f_list if protocol == "FF" else p_list
            folder = os.path.join(root, "Protocol", "Split", protocol, f"{fold + 1:02d}")
            os.makedirs(folder)
            for kind in ("same", "diff"):
                i, j = kinds[kind]
                with open(os.path.join(folder, f"{kind}.txt"), "w") as f:
                    f.write(f"{i},{j}\n")
                expected[protocol].append((f_list[i - 1], second[j - 1], kind == "same"))
    lm_path = os.path.join(root, "landmarks.txt")
    with open(lm_path, "w") as f:
        f.write("\n".join(lm_lines) + "\n")
    return lm_path, expected, source


@pytest.mark.parametrize("protocol", ["FF", "FP"])
def test_cfp_protocol_folder(tmp_path, protocol):
    root = tmp_path / "cfp"
    lm_path, expected, source = build_cfp(str(root), train_people()[:10])
    out = str(tmp_path / f"cfp_{protocol.lower()}.bin")
    make_bin(["--cfp", str(root), "--cfp-protocol", protocol, "--landmarks", lm_path,
              "--out", out, "--no-progress"])
    bins, issame = read_raw(out)
    # fold by fold, same then different within each fold
    assert issame == [True, False] * 10
    landmarks = read_landmarks(lm_path)
    for k, (first, second, same) in enumerate(expected[protocol]):
        assert issame[k] == same
        for slot, rel in enumerate((first, second)):
            face = align_face(rgb(os.path.join(IMAGES, source[rel])), landmarks[rel], 112)
            assert bins[2 * k + slot] == encode_jpeg(face, 95), (k, rel)


def run_tool(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_bin.py")] + args,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_missing_image_names_file_and_line(tmp_path):
    people = train_people()[:2]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"2\n{people[0]}\t1\t2\n{people[1]}\t1\t{people[0]}\t9\n")
    out = tmp_path / "x.bin"
    proc = run_tool(["--pairs", str(pairs), "--images", IMAGES, "--out", str(out), "--no-progress"])
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"{pairs}:3" in message and f"{people[0]}_0009.jpg" in message and "not found" in message
    assert os.listdir(tmp_path) == ["pairs.txt"]  # nothing written


@pytest.mark.parametrize("bad_line", ["Some_Body 1", "a b c d e", "x/1.jpg y/2.jpg 2", "Name one two"])
def test_bad_line_names_file_and_line(tmp_path, bad_line):
    pairs = tmp_path / "pairs.txt"
    people = train_people()[:1]
    pairs.write_text(f"{people[0]}\t1\t2\n{bad_line}\n")
    with pytest.raises(SystemExit) as err:
        make_bin(["--pairs", str(pairs), "--images", IMAGES, "--out", str(tmp_path / "x.bin"), "--no-progress"])
    assert err.value.code != 0 and f"{pairs}:2" in str(err.value.code)
    assert os.listdir(tmp_path) == ["pairs.txt"]


def test_cfp_bad_index(tmp_path):
    root = tmp_path / "cfp"
    lm_path, _, _ = build_cfp(str(root), train_people()[:10])
    same = root / "Protocol" / "Split" / "FP" / "04" / "same.txt"
    same.write_text("1,999\n")
    with pytest.raises(SystemExit) as err:
        make_bin(["--cfp", str(root), "--cfp-protocol", "FP", "--out", str(tmp_path / "x.bin"), "--no-progress"])
    assert f"{same}:1" in str(err.value.code) and "999" in str(err.value.code)
    assert not (tmp_path / "x.bin").exists()
