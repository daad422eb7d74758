"""Faults in a packed dataset (issue 6): damage found at open is reported with the file and the
problem before any training; a corrupt image record met during training is skipped, counted once
and logged once; past data.max_bad_records (a share of the images) the run stops.

Each test damages a copy of the packed sample (tests/conftest.py sample_rec) byte by byte.
"""
import json
import os

import numpy as np
import pytest

from test_faults import (batch_records, break_image, break_magic, copy_rec, error_lines, run_tool,
                         set_image_label, set_range, train_args, truncate_rec, write_tiny_config)
from recognition.data.dataset import ShardedOrder, TooManyBadRecords, TrainBatches
from recognition.data.record import RecordDataset, RecordError, write_property

NUM_IMAGES, NUM_IDS = 120, 20  # sample_rec: 20 people x 6 photos


def _truncate(root):
    truncate_rec(root, 0.5)
    return "train.idx:", "past the end of", "train.rec", "truncated"


def _truncate_tail(root):
    truncate_rec(root, 0.999)  # only the last records (identity ranges, header 0) are cut
    return "train.idx:", "past the end of", "train.rec"


def _idx_garbage(root):
    path = os.path.join(root, "train.idx")
    lines = open(path).read().splitlines(True)
    lines[10] = "eleven\tnowhere\n"
    open(path, "w").writelines(lines)
    return "train.idx:11: malformed index line",


def _idx_missing_image(root):
    path = os.path.join(root, "train.idx")
    lines = [line for line in open(path) if not line.startswith("50\t")]
    open(path, "w").writelines(lines)
    return "train.idx: record 50 missing", "header 0 says 120 images and 20 identities"


def _idx_offset_past_end(root):
    path = os.path.join(root, "train.idx")
    size = os.path.getsize(os.path.join(root, "train.rec"))
    lines = [f"7\t{size + 4096}\n" if line.startswith("7\t") else line for line in open(path)]
    open(path, "w").writelines(lines)
    return "train.idx:", f"offset {size + 4096} past the end of"


def _header0_bad_magic(root):
    break_magic(root, 0)
    return "train.rec: record 0 is corrupt", "Invalid RecordIO File"


def _identity_record_bad_magic(root):
    break_magic(root, NUM_IMAGES + 5)
    return f"train.rec: record {NUM_IMAGES + 5} is corrupt", "Invalid RecordIO File"


def _header0_more_ids_than_index(root):
    # header 0 claims 24 identities, property agrees, the index has 20: they disagree
    set_range(root, 0, NUM_IMAGES + 1, NUM_IMAGES + 25)
    write_property(os.path.join(root, "property"), 24, 112, 112)
    return f"train.idx: record {NUM_IMAGES + 21} missing",


def _header0_points_at_images(root):
    # header 0 claims the identity records start at 101: record 101 is an image, not a range
    set_range(root, 0, 101, 121)
    return "train.rec: record 101 should hold an identity range", "header 0 disagrees"


def _identity_range_gap(root):
    set_range(root, NUM_IMAGES + 4, 20, 25)  # identity 3 (record 124) holds records [19, 25)
    return f"train.rec: identity record {NUM_IMAGES + 4} has range [20, 25)", "does not continue at 19"


def _property_more_classes(root):
    write_property(os.path.join(root, "property"), 21, 112, 112)
    return "property: says 21 classes", "header has 20 identities"


def _property_other_size(root):
    write_property(os.path.join(root, "property"), NUM_IDS, 96, 96)
    return "property: says 96x96 images", "is 112x112"


def _property_garbage(root):
    with open(os.path.join(root, "property"), "w") as f:
        f.write("twenty classes\n")
    return "property: expected 'num_classes,height,width'",


def _property_missing(root):
    os.remove(os.path.join(root, "property"))
    return "property: missing property file",


OPEN_FAULTS = {f.__name__[1:]: f for f in (
    _truncate, _truncate_tail, _idx_garbage, _idx_missing_image, _idx_offset_past_end, _header0_bad_magic,
    _identity_record_bad_magic, _header0_more_ids_than_index, _header0_points_at_images, _identity_range_gap,
    _property_more_classes, _property_other_size, _property_garbage, _property_missing)}


@pytest.mark.parametrize("fault", sorted(OPEN_FAULTS))
def test_damaged_dataset_is_refused_at_open_naming_file_and_problem(fault, sample_rec, tmp_path):
    root = copy_rec(sample_rec, tmp_path / "rec")
    words = OPEN_FAULTS[fault](root)
    with pytest.raises(RecordError) as caught:
        RecordDataset(root)
    message = str(caught.value)
    assert message.startswith(root + os.sep), message
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("fault", ["truncate", "header0_points_at_images", "property_other_size"])
def test_train_tool_reports_damage_before_training(fault, sample_rec, tmp_path):
    root = copy_rec(sample_rec, tmp_path / "rec")
    words = OPEN_FAULTS[fault](root)
    out = tmp_path / "run"
    result = run_tool("train.py", train_args(write_tiny_config(str(tmp_path)), root, out, 3))
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"train: {root}{os.sep}"), result.stderr[-2000:]
    for word in words:
        assert word in lines[0]
    # nothing of a training: no logs, no checkpoint, no model
    assert not {"logs", "checkpoints", "model-symbol.json", "results.json"} & set(os.listdir(out) if out.exists() else [])


# -- corrupt records met during training -------------------------------------------------------------

def _damage_three_kinds(root, indices):
    """Three image records damaged three ways: framing, JPEG bytes, label outside the classes."""
    break_magic(root, indices[0])
    break_image(root, indices[1])
    set_image_label(root, indices[2], 1000.0)
    return {indices[0]: "Invalid RecordIO File", indices[1]: "holds no decodable image",
            indices[2]: "has label 1000, outside the 20 classes"}


@pytest.mark.parametrize("threads", [0, 2])
def test_corrupt_records_are_skipped_counted_and_logged_once(sample_rec, tmp_path, threads):
    root = copy_rec(sample_rec, tmp_path / "rec")
    first_batch = batch_records(root)[0]
    damaged = _damage_three_kinds(root, first_batch[:3])
    dataset = RecordDataset(root)  # single damaged images do not stop the open
    messages = []
    order = ShardedOrder(dataset, 8, seed=0)
    batches = TrainBatches(dataset, order, num_workers=threads, prefetch=threads, max_bad_share=0.05,
                           log=messages.append)
    try:
        labels_seen = []
        for _ in range(2 * order.steps_per_epoch):  # two epochs: every record met twice
            data, labels = next(batches)
            assert data.shape == (8, 3, 112, 112) and labels.shape == (8,)
            assert np.isfinite(data).all() and data.max() > 0
            labels_seen.append(labels)
    finally:
        batches.close()
    assert batches.bad_records == 3
    assert len(messages) == 3
    # batches made anew (an elastic reset) with the run's record of corrupt ones: met again, not
    # counted or logged again
    again = TrainBatches(dataset, order, num_workers=threads, prefetch=threads, max_bad_share=0.05,
                         log=messages.append, bad=batches.bad)
    try:
        next(again)
    finally:
        again.close()
    assert again.bad_records == 3 and len(messages) == 3
    for index, reason in damaged.items():
        hits = [m for m in messages if f"record {index} " in m]
        assert len(hits) == 1 and reason in hits[0] and hits[0].startswith(f"skipped corrupt record: {root}"), messages
    # a replaced slot takes another image of the batch: labels stay inside the classes
    assert 0 <= np.concatenate(labels_seen).min() and np.concatenate(labels_seen).max() < NUM_IDS


def test_too_many_corrupt_records_stop_the_iterator(sample_rec, tmp_path):
    root = copy_rec(sample_rec, tmp_path / "rec")
    for index in batch_records(root)[0][:3]:
        break_image(root, index)
    dataset = RecordDataset(root)
    batches = TrainBatches(dataset, ShardedOrder(dataset, 8, seed=0), num_workers=1, prefetch=2,
                           max_bad_share=0.02, log=lambda message: None)
    with pytest.raises(TooManyBadRecords, match=r"train.rec: 3 corrupt records met, more than "
                                                r"data.max_bad_records=0.02 of its 120 images; stopping"):
        next(batches)
    batches.close()


def test_training_skips_corrupt_records_and_reports_them(sample_rec, tmp_path):
    root = copy_rec(sample_rec, tmp_path / "rec")
    first, second = batch_records(root, steps=2)
    damaged = _damage_three_kinds(root, [first[0], first[5], second[2]])
    out = tmp_path / "run"
    result = run_tool("train.py", train_args(write_tiny_config(str(tmp_path)), root, out, 3,
                                             "train.deterministic=true", "data.max_bad_records=0.05"))
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    for index, reason in damaged.items():
        hits = [line for line in said.splitlines() if f"skipped corrupt record: {root}/train.rec: record {index} " in line]
        assert len(hits) == 1 and reason in hits[0], said[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["bad_records"] == 3 and results["steps"] == 3


def test_training_stops_past_the_bad_record_share(sample_rec, tmp_path):
    root = copy_rec(sample_rec, tmp_path / "rec")
    for index in batch_records(root)[0][:4]:
        break_image(root, index)
    out = tmp_path / "run"
    # not deterministic: decoding threads + prefetch, the error crosses from the producer thread
    result = run_tool("train.py", train_args(write_tiny_config(str(tmp_path)), root, out, 5,
                                             "data.max_bad_records=0.02", "output.checkpoint_every=1"))
    assert result.returncode != 0
    lines = [line for line in error_lines(result.stderr) if line.startswith("train: ")]
    assert lines == [f"train: {root}/train.rec: 4 corrupt records met, more than data.max_bad_records=0.02 "
                     f"of its 120 images; stopping"], result.stderr[-3000:]
    assert not (out / "checkpoints").exists()
