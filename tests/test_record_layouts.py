"""insightface packs without a header record (SeqRecBuilder, rec2shufrec), read next to the classic
layout: the committed sample (tests/conftest.py sample_rec, 20 identities) re-packed the way those
tools write, read back, trained from (random and P x K batches) and summarised by rec_info."""
import json
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT
from recognition.cli import rec_info
from recognition.data.dataset import PKOrder, ShardedOrder
from recognition.data.record import RecordDataset, RecordError, write_property
from recognition.engine.config import load_config
from recognition.engine.trainer import train

TINY = ["model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=1", "train.log_every=1",
        "optimizer.lr=0.01", "optimizer.warmup_steps=2", "train.max_steps=2"]


@pytest.fixture(scope="module")
def source(sample_rec):
    """(label, stored JPEG bytes) of every image of the classic sample pack, in record order."""
    dataset = RecordDataset(sample_rec)
    assert dataset.layout == "header"
    items = []
    for index in dataset.image_indices:
        header, payload = dataset.read(int(index))
        items.append((int(header.label), payload))
    return items


def write_headerless(folder, records, num_classes=None, keys=None):
    """A pack as SeqRecBuilder / rec2shufrec write it: records ``(label, payload)`` at keys
    0..N-1 (or ``keys``) with IRHeader(0, label, key, 0), no header record, ``property`` = the
    largest label + 1 (SeqRecBuilder's) unless ``num_classes``. A payload that is an image array
    (BGR) goes through mx.recordio.pack_img (JPEG 95, as SeqRecBuilder), bytes through pack."""
    os.makedirs(folder, exist_ok=True)
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(folder, "train.idx"), os.path.join(folder, "train.rec"), "w")
    keys = list(range(len(records))) if keys is None else keys
    for key, (label, payload) in zip(keys, records):
        header = mx.recordio.IRHeader(0, label, key, 0)
        if isinstance(payload, np.ndarray):
            writer.write_idx(key, mx.recordio.pack_img(header, payload, quality=95, img_fmt=".jpg"))
        else:
            writer.write_idx(key, mx.recordio.pack(header, payload))
    writer.close()
    top = max(int(np.asarray(label).ravel()[0]) for label, _ in records)
    write_property(os.path.join(folder, "property"), top + 1 if num_classes is None else num_classes, 112, 112)
    return str(folder)


def shuffled(source, seed=0):
    """rec2shufrec: the images in a random order (identities interleaved), bytes copied as stored."""
    order = np.random.default_rng(seed).permutation(len(source))
    return [(float(source[i][0]), source[i][1]) for i in order]


@pytest.fixture(scope="module")
def shuffled_pack(source, tmp_path_factory):
    records = shuffled(source)
    return write_headerless(tmp_path_factory.mktemp("shuffled"), records), records


def check_reads_back(dataset, records, keys=None):
    """Counts, identities, every image's label and bytes, identity ranges usable by the sampler."""
    keys = list(range(len(records))) if keys is None else keys
    by_key = dict(zip(keys, records))
    labels = [int(np.asarray(label).ravel()[0]) for label, _ in records]
    assert dataset.layout == "headerless"
    assert len(dataset) == len(records) == 120 and dataset.num_classes == 20
    assert [r.identity for r in dataset.identity_ranges] == list(range(20))
    assert [r.last - r.first for r in dataset.identity_ranges] == list(np.bincount(labels))
    # images in index order, label_array aligned with them
    assert [dataset.record_key(i) for i in dataset.image_indices] == keys
    assert list(dataset.label_array()) == labels
    for identity, first, last in dataset.identity_ranges:
        assert sorted(dataset.identity_keys(identity)) == sorted(k for k, lab in zip(keys, labels) if lab == identity)
        assert list(dataset.identity_images(identity)) == list(range(first, last))
        for index in range(first, last):
            header, payload = dataset.read(index)
            label, stored = by_key[dataset.record_key(index)]
            assert payload == stored if isinstance(stored, bytes) else payload[:2] == b"\xff\xd8"
            image, read_label = dataset.read_image(index)
            assert read_label == identity and image.shape == (112, 112, 3)


def test_shuffled_pack_reads_back(shuffled_pack, source):
    root, records = shuffled_pack
    dataset = RecordDataset(root)
    check_reads_back(dataset, records)
    # shuffled indeed: some identity's records are not consecutive keys
    assert any(np.any(np.diff(np.sort(dataset.identity_keys(i))) > 1) for i in range(20))
    # the same multiset of (label, bytes) as the classic source
    assert sorted((int(lab), p) for lab, p in records) == sorted(source)


def test_sequential_pack_of_images_reads_back(source, sample_rec, tmp_path):
    """SeqRecBuilder.add(label, img): BGR arrays re-encoded by pack_img, keys 0..N-1 in identity order."""
    records = [(float(label), cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR))
               for label, payload in source]
    dataset = RecordDataset(write_headerless(tmp_path / "seq", records))
    check_reads_back(dataset, records)
    assert [dataset.record_key(i) for i in range(len(dataset))] == list(range(len(dataset)))
    original = RecordDataset(sample_rec)
    for index in range(0, len(dataset), 17):  # the same faces, JPEG-encoded twice
        again, _ = dataset.read_image(index)
        first, _ = original.read_image(index + 1)
        assert np.abs(again.astype(int) - first.astype(int)).mean() < 3


def test_array_labels_and_arbitrary_keys(source, tmp_path):
    """Array labels (first value = identity), record 0's looking like an identity range [id, 1000):
    it holds an image, so the pack is headerless; keys need not start at 0 or be 0..N-1."""
    records = [([float(label), 1000.0], payload) for label, payload in shuffled(source, seed=1)]
    swap = next(i for i, (label, _) in enumerate(records) if label[0] >= 2)
    records[0], records[swap] = records[swap], records[0]
    dataset = RecordDataset(write_headerless(tmp_path / "array", records))
    check_reads_back(dataset, records)
    header0, _ = dataset.read(dataset.image_indices[0])
    assert header0.flag == 2 and header0.label[0] >= 2
    keys = [1000 + 3 * i for i in range(len(records))]
    check_reads_back(RecordDataset(write_headerless(tmp_path / "keys", records, keys=keys)), records, keys)


def test_records_split_by_recordio_keep_their_labels(source, tmp_path):
    """RecordIO cuts a record where its data holds the magic number (4-byte aligned): inside the
    IRHeader (an id equal to the magic: the header pass reads that record through MXNet) or after
    it (the first part still holds the label)."""
    magic = (0xCED7230A).to_bytes(4, "little")
    records = [(float(label), payload) for label, payload in source]
    for i in (3, 40):
        payload = records[i][1] + b"\0" * (-len(records[i][1]) % 4)
        records[i] = (records[i][0], payload + magic + b"tail")  # JPEG decoders stop at the end marker
    root = str(tmp_path / "split")
    write_headerless(root, records)  # the property
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(root, "train.idx"), os.path.join(root, "train.rec"), "w")
    for key, (label, payload) in enumerate(records):  # again, record 7's id = the magic number
        header = mx.recordio.IRHeader(0, label, 0xCED7230A if key == 7 else key, 0)
        writer.write_idx(key, mx.recordio.pack(header, payload))
    writer.close()
    offsets = dict(tuple(map(int, line.split("\t"))) for line in open(os.path.join(root, "train.idx")))
    with open(os.path.join(root, "train.rec"), "rb") as f:
        data = f.read()
    for key in (3, 7, 40):  # split indeed: the length word's cflag 1 = first part
        assert int.from_bytes(data[offsets[key] + 4:offsets[key] + 8], "little") >> 29 == 1
    dataset = RecordDataset(root)
    assert list(dataset.label_array()) == [int(label) for label, _ in records]
    for key in (3, 7, 40):
        index = int(dataset.image_indices[key])
        assert dataset.read(index)[1] == records[key][1]
        assert dataset.read_image(index)[1] == int(records[key][0])


@pytest.mark.parametrize("case", ["more_classes", "fewer_classes", "gap", "negative", "corrupt", "header_lost"])
def test_headerless_errors_are_one_line_naming_the_file(case, source, sample_rec, tmp_path):
    records = shuffled(source)
    if case == "header_lost":  # a classic pack whose idx lost record 0 is not read as headerless images
        root = str(tmp_path / "lost")
        os.makedirs(root)
        for name in ("train.rec", "property"):
            with open(os.path.join(sample_rec, name), "rb") as f, open(os.path.join(root, name), "wb") as g:
                g.write(f.read())
        lines = [line for line in open(os.path.join(sample_rec, "train.idx")) if not line.startswith("0\t")]
        open(os.path.join(root, "train.idx"), "w").writelines(lines)
        words, where = ["no record 0 (header) in the index", "holds no image"], "train.idx"
    elif case == "gap":  # identity 19 labelled 20: property 20 agrees with the count, not the labels
        records = [(20.0 if label == 19 else label, p) for label, p in records]
        root = write_headerless(tmp_path / case, records, num_classes=20)
        words, where = ["run 0..20", "only 20 identities", "identity 19 has none"], "train.rec"
    elif case == "negative":
        records[5] = (-1.0, records[5][1])
        root = write_headerless(tmp_path / case, records, num_classes=20)
        words, where = ["record 5 has label -1"], "train.rec"
    elif case == "corrupt":
        root = write_headerless(tmp_path / case, records)
        offset = int(open(os.path.join(root, "train.idx")).read().splitlines()[7].split("\t")[1])
        with open(os.path.join(root, "train.rec"), "r+b") as f:
            f.seek(offset)
            f.write(b"\0\0\0\0")
        words, where = ["record 7 is corrupt"], "train.rec"
    else:
        classes = 21 if case == "more_classes" else 19
        root = write_headerless(tmp_path / case, records, num_classes=classes)
        words, where = [f"says {classes} classes", "120 images", "have 20 identities"], "property"
    with pytest.raises(RecordError) as caught:
        RecordDataset(root)
    message = str(caught.value)
    assert message.startswith(os.path.join(root, where)) and "\n" not in message, message
    for word in words:
        assert word in message, message


def test_pk_batches_are_p_identities_in_a_shuffled_pack(shuffled_pack):
    dataset = RecordDataset(shuffled_pack[0])
    order = PKOrder(dataset, 8, 4, seed=3)
    for batch in order.epoch(0)[:3]:
        labels = [dataset.read_image(int(i))[1] for i in batch]
        assert len({dataset.record_key(int(i)) for i in batch}) >= 5  # real, distinct records
        for slot in range(2):
            assert len(set(labels[slot * 4:(slot + 1) * 4])) == 1
        assert labels[0] != labels[4]
    # random order: every image once per epoch
    rows = ShardedOrder(dataset, 8, seed=3).epoch(0)
    assert len(set(rows.ravel().tolist())) == rows.size == 8 * (120 // 8)


@pytest.mark.parametrize("extra", [["loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}"],
                                   ["data.sampler=pk", "data.images_per_identity=4", "loss.name=triplet"]],
                         ids=["random", "pk"])
def test_trains_from_shuffled_headerless_pack(extra, shuffled_pack, tmp_path):
    out = tmp_path / "run"
    config = load_config(None, [f"data.root={shuffled_pack[0]}", f"output.dir={out}"] + TINY + extra)
    results = train(config, log=lambda *a, **k: None)
    assert results["steps"] == 2 and results["bad_records"] == 0
    assert (out / "model-symbol.json").exists()


def test_rec_info_reports_layout(shuffled_pack, sample_rec, capsys):
    rec_info.main([shuffled_pack[0], "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "headerless" and info["images"] == 120 and info["identities"] == 20
    assert sum(info["histogram"].values()) == 20
    rec_info.main([sample_rec, "--json"])
    assert json.loads(capsys.readouterr().out)["layout"] == "header"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "rec_info.py"), shuffled_pack[0]],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "120 images of 20 identities" in result.stdout and "layout: headerless" in result.stdout
