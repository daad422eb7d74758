"""RecordIO round trips in insightface's layout, read back with MXNet's own reader."""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

from recognition.data.record import RecordDataset, RecordError, RecordWriter, decode_jpeg, encode_jpeg, read_property


def _image(seed):
    """A smooth random colour field (JPEG keeps it within a few grey levels)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((4, 4, 3)) * 255).astype(np.float32)
    return np.clip(cv2.resize(coarse, (112, 112), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def test_writer_layout_matches_insightface(tmp_path):
    counts = [3, 1, 2]
    with RecordWriter(str(tmp_path)) as writer:
        for identity, n in enumerate(counts):
            for k in range(n):
                writer.add(identity, encode_jpeg(_image(identity * 10 + k)))
    record = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    header0, _ = mx.recordio.unpack(record.read_idx(0))
    assert header0.flag == 2
    assert list(header0.label) == [7.0, 10.0]  # N + 1 = 7, N + K + 1 = 10
    expected_ranges = [(1, 4), (4, 5), (5, 7)]
    for i, (first, last) in enumerate(expected_ranges):
        header, payload = mx.recordio.unpack(record.read_idx(7 + i))
        assert (int(header.label[0]), int(header.label[1])) == (first, last)
        assert header.flag == 2
        for index in range(first, last):
            image_header, image_payload = mx.recordio.unpack(record.read_idx(index))
            assert image_header.flag == 0 and image_header.label == float(i)
            assert decode_jpeg(image_payload).shape == (112, 112, 3)
    assert sorted(record.keys) == list(range(10))
    assert read_property(str(tmp_path / "property")) == (3, 112, 112)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_dataset_reads_back_labels_and_ranges(tmp_path):
    with RecordWriter(str(tmp_path)) as writer:
        for identity in range(4):
            for k in range(identity + 1):
                writer.add(identity, encode_jpeg(_image(identity * 10 + k)))
    dataset = RecordDataset(str(tmp_path))
    assert len(dataset) == 10 and dataset.num_classes == 4
    assert [tuple(r) for r in dataset.identity_ranges] == [(0, 1, 2), (1, 2, 4), (2, 4, 7), (3, 7, 11)]
    assert list(dataset.label_array()) == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    image, label = dataset.read_image(5)
    assert label == 2
    # JPEG at quality 95 stays close to the source pixels
    assert np.abs(image.astype(int) - _image(21).astype(int)).mean() < 3


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordWriter(str(tmp_path)) as writer:
            writer.add(0, encode_jpeg(_image(0)))
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_identities_out_of_order_rejected(tmp_path):
    with pytest.raises(ValueError, match="out of order"):
        with RecordWriter(str(tmp_path)) as writer:
            writer.add(1, encode_jpeg(_image(0)))


def test_reads_insightface_style_array_labels(tmp_path):
    """Packs like faces_emore store image labels as arrays; the identity is the first value."""
    record = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "w")
    jpeg = encode_jpeg(_image(1))
    for index, identity in [(1, 0), (2, 0), (3, 1)]:
        record.write_idx(index, mx.recordio.pack(mx.recordio.IRHeader(0, [float(identity), 0.0], index, 0), jpeg))
    record.write_idx(4, mx.recordio.pack(mx.recordio.IRHeader(0, [1.0, 3.0], 4, 0), b""))
    record.write_idx(5, mx.recordio.pack(mx.recordio.IRHeader(0, [3.0, 4.0], 5, 0), b""))
    record.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [4.0, 6.0], 0, 0), b""))
    record.close()
    (tmp_path / "property").write_text("2,112,112")
    dataset = RecordDataset(str(tmp_path))
    assert dataset.read_image(3)[1] == 1
    assert list(dataset.label_array()) == [0, 0, 1]


def test_truncated_rec_reported_with_file_name(sample_rec, tmp_path):
    for name in ("train.idx", "property"):
        (tmp_path / name).write_bytes(open(os.path.join(sample_rec, name), "rb").read())
    data = open(os.path.join(sample_rec, "train.rec"), "rb").read()
    (tmp_path / "train.rec").write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError, match="train.idx.*past the end"):
        RecordDataset(str(tmp_path))


def test_property_disagreeing_with_header(sample_rec, tmp_path):
    for name in ("train.idx", "train.rec"):
        (tmp_path / name).write_bytes(open(os.path.join(sample_rec, name), "rb").read())
    (tmp_path / "property").write_text("999,112,112")
    with pytest.raises(RecordError, match="property: says 999 classes"):
        RecordDataset(str(tmp_path))
