"""Faults while packing (issue 6): bad images and lines are skipped with one warning each, --strict
stops, and an interrupted or failed pack never leaves a .rec/.idx/property that looks valid.

The sources are copies of the committed LFW sample, damaged by the tests: garbage bytes, a JPEG cut
in half, a 20x20 thumbnail, landmark rows removed, malformed .lst lines. tools/pack_rec.py runs as
a subprocess and is killed with SIGKILL for the interruption test.
"""
import hashlib
import os

import cv2
import numpy as np
import pytest

from conftest import SAMPLE, train_people
from test_faults import error_lines, kill_when, make_damaged_source, many_copies, run_tool, start_tool
from recognition.data.pack import is_truncated_jpeg
from recognition.data.record import RecordDataset, RecordError

OUTPUTS = ("train.rec", "train.idx", "property")


@pytest.fixture
def damaged_source(tmp_path):
    return make_damaged_source(str(tmp_path))


def _warnings(stderr):
    return [line for line in error_lines(stderr) if line.startswith("warning: ")]


def _assert_one_warning_each(stderr, faults):
    warnings = _warnings(stderr)
    assert len(warnings) == len(faults), "\n".join(warnings)
    for where, reason in faults.items():
        matching = [w for w in warnings if w.startswith(f"warning: {where}")]
        assert len(matching) == 1 and reason in matching[0], (where, warnings)


def test_damaged_folder_is_packed_with_one_warning_per_bad_image(damaged_source, tmp_path):
    src, landmarks, faults = damaged_source
    out = tmp_path / "rec"
    result = run_tool("pack_rec.py", [src, out, "--landmarks", landmarks, "--workers", "2"])
    assert result.returncode == 0, result.stderr
    _assert_one_warning_each(result.stderr, faults)
    assert f"packed 19 images of 4 identities into {out} (5 skipped" in result.stdout
    dataset = RecordDataset(str(out))
    assert len(dataset) == 19 and dataset.num_classes == 4
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)


def test_lst_problems_are_skipped_with_one_warning_each(damaged_source, tmp_path):
    """An insightface .lst: malformed lines (wrong field count, non-numeric label, non-numeric
    landmark), a missing file, the damaged images, and a photo without a landmark row (it would
    otherwise be packed unaligned among aligned faces)."""
    src, landmarks, faults = damaged_source
    people = sorted(os.listdir(src))
    lines = []
    for label, person in enumerate(people):
        for name in sorted(os.listdir(os.path.join(src, person))):
            lines.append(f"1\t{person}/{name}\t{label}")
    lst = os.path.join(src, "train.lst")
    bad_lines = {3: "just one field", 8: f"1\t{people[1]}/x.jpg\tseven", 12: f"1\t{people[2]}/y.jpg\t2\t0\t0",
                 15: f"1\t{people[2]}/z.jpg\t2\t0\t0\t9\t9" + "\t5.0" * 9 + "\tfive"}
    for line_no in sorted(bad_lines):
        lines.insert(line_no - 1, bad_lines[line_no])
    # inline bbox + landmarks (x1..x5 y1..y5), so its only problem is the missing file
    lines.append(f"1\t{people[0]}/missing.jpg\t0\t0\t0\t128\t128\t" +
                 "\t".join(["52", "75", "63", "57", "77", "53", "54", "72", "81", "80"]))
    with open(lst, "w") as f:
        f.write("\n".join(lines) + "\n")
    expected = dict(faults)
    for line_no in bad_lines:
        expected[f"{lst}:{line_no}:"] = "malformed line"
    expected[os.path.join(src, people[0], "missing.jpg")] = "file not found"
    out = tmp_path / "rec"
    result = run_tool("pack_rec.py", [lst, out, "--landmarks", landmarks, "--workers", "1"])
    assert result.returncode == 0, result.stderr
    _assert_one_warning_each(result.stderr, expected)
    assert f"packed 19 images of 4 identities into {out} ({len(expected)} skipped" in result.stdout
    assert len(RecordDataset(str(out))) == 19


@pytest.mark.parametrize("source", ["folder", "image fault first"])
def test_strict_stops_with_one_line_and_writes_nothing(damaged_source, tmp_path, source):
    src, landmarks, faults = damaged_source
    args = [src, tmp_path / "rec", "--strict", "--workers", "1"]
    if source == "folder":  # the missing landmark row is found while listing, before any image
        args += ["--landmarks", landmarks]
    result = run_tool("pack_rec.py", args)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("pack_rec: "), result.stderr
    assert any(lines[0].startswith(f"pack_rec: {where}") and reason in lines[0] for where, reason in faults.items())
    assert not (tmp_path / "rec").exists() or os.listdir(tmp_path / "rec") == []


@pytest.mark.parametrize("tool,option", [("pack_rec.py", ["--quality", "0"]), ("pack_rec.py", ["--image-size", "4"]),
                                         ("make_bin.py", ["--quality", "101"]), ("make_bin.py", ["--image-size", "4"])])
def test_out_of_range_options_stop_with_one_line_before_reading_anything(damaged_source, tmp_path, tool, option):
    src, _, _ = damaged_source
    if tool == "pack_rec.py":
        args = [src, tmp_path / "out"]
    else:  # the pairs file does not exist: the range check must come first
        args = ["--pairs", tmp_path / "pairs.txt", "--images", src, "--out", tmp_path / "out.bin"]
    result = run_tool(tool, args + option)
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(tool[:-3] + ": " + option[0]), result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.bin").exists()


def _digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest() for name in OUTPUTS}


def test_kill_9_mid_pack_leaves_nothing_that_looks_valid(tmp_path):
    src = many_copies(str(tmp_path / "src"))
    out = tmp_path / "rec"
    process = start_tool("pack_rec.py", [src, out, "--workers", "1", "--no-progress"], tmp_path / "pack.log")
    partial = out / "train.rec.tmp"
    kill_when(process, lambda: partial.exists() and partial.stat().st_size > 200_000)
    for name in OUTPUTS:
        assert not (out / name).exists(), name
    with pytest.raises(RecordError, match="train.rec: file not found"):
        RecordDataset(str(out))
    # the next pack into the same folder replaces the leftovers and completes
    small = tmp_path / "small"
    os.makedirs(small)
    for person in train_people()[:3]:
        os.symlink(os.path.join(SAMPLE, "images", person), small / person)
    result = run_tool("pack_rec.py", [small, out, "--workers", "1", "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == sorted(OUTPUTS) and len(RecordDataset(str(out))) == 18


def test_kill_9_while_repacking_keeps_the_previous_pack(tmp_path):
    out = tmp_path / "rec"
    small = tmp_path / "small"
    os.makedirs(small)
    for person in train_people()[:3]:
        os.symlink(os.path.join(SAMPLE, "images", person), small / person)
    assert run_tool("pack_rec.py", [small, out, "--workers", "1", "--no-progress"]).returncode == 0
    before = _digest(out)
    src = many_copies(str(tmp_path / "src"))
    process = start_tool("pack_rec.py", [src, out, "--workers", "1", "--no-progress"], tmp_path / "pack.log")
    partial = out / "train.rec.tmp"
    kill_when(process, lambda: partial.exists() and partial.stat().st_size > 200_000)
    assert _digest(out) == before
    assert len(RecordDataset(str(out))) == 18


def _jpeg(seed, **flags):
    rng = np.random.default_rng(seed)
    image = cv2.resize((rng.random((8, 8, 3)) * 255).astype(np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
    params = []
    if flags.get("progressive"):
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    if flags.get("restart"):
        params += [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]
    return cv2.imencode(".jpg", image, params)[1].tobytes()


@pytest.mark.parametrize("kind", ["baseline", "progressive", "restart markers", "sample photo"])
def test_truncated_jpeg_detection(kind):
    if kind == "sample photo":
        person = train_people()[0]
        data = open(os.path.join(SAMPLE, "images", person, f"{person}_0001.jpg"), "rb").read()
    else:
        data = _jpeg(1, progressive=kind == "progressive", restart=kind == "restart markers")
    assert not is_truncated_jpeg(data)
    assert not is_truncated_jpeg(data + b"\x00trailing bytes after the end \xff\xda")
    for keep in (len(data) - 1, len(data) - 2, len(data) * 3 // 4, len(data) // 2, 200, 3):
        assert is_truncated_jpeg(data[:keep]), keep
    if kind in ("baseline", "sample photo"):  # OpenCV decodes the cut file: the check is what catches it
        assert cv2.imdecode(np.frombuffer(data[:len(data) * 3 // 4], np.uint8), cv2.IMREAD_COLOR) is not None


def test_truncated_jpeg_with_intact_exif_thumbnail_is_caught():
    """An EXIF block carrying a complete thumbnail (its own scan and end marker) before the main
    image's scans must not make a cut main image look complete."""
    thumbnail, main = _jpeg(2), _jpeg(3)
    payload = b"Exif\x00\x00" + thumbnail
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_thumbnail = main[:2] + app1 + main[2:]
    assert cv2.imdecode(np.frombuffer(with_thumbnail, np.uint8), cv2.IMREAD_COLOR).shape == (96, 96, 3)
    assert not is_truncated_jpeg(with_thumbnail)
    assert is_truncated_jpeg(with_thumbnail[:len(with_thumbnail) - len(main) // 3])
