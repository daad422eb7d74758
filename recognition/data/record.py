"""insightface RecordIO datasets: ``train.rec`` + ``train.idx`` + ``property``.

Layout (identical to insightface's packs such as faces_emore and CASIA-WebFace):

* records 1..N: the face images, header label = identity (float; some packs store an array whose
  first value is the identity), images JPEG-encoded;
* records N+1..N+K: one per identity, header label = [first, last + 1) record range of its images;
* record 0: header label = [N + 1, N + K + 1) (flag 2), the range of the identity records;
* ``property``: ``num_classes,height,width``.

The writer puts everything under temporary names and renames only when complete, so a failed or
interrupted pack never leaves files that look valid.
"""
import os
import threading
from collections import namedtuple

import cv2
import numpy as np

import mxnet as mx

from recognition.fileio import fsync_dir

IdentityRange = namedtuple("IdentityRange", "identity first last")  # records [first, last)


class RecordError(ValueError):
    """A .rec/.idx/property that is malformed; the message names the file and the problem."""


def error_line(err):
    """The informative line of an exception: MXNetError messages start with a C++ traceback
    ("Traceback (most recent call last):") and end with the actual check that failed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    for prefix in ("MXNetError: ", "mxnet.base.MXNetError: "):
        if last.startswith(prefix):
            last = last[len(prefix):]
    return last


def rec_paths(root):
    """(rec, idx, property) paths of a dataset folder."""
    return (os.path.join(root, "train.rec"), os.path.join(root, "train.idx"),
            os.path.join(root, "property"))


def label_of(header):
    """The identity of an image record; insightface packs store a float or an array."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return int(label)
    return int(np.asarray(label).ravel()[0])


def decode_jpeg(payload):
    """Encoded image bytes -> RGB uint8 HxWx3, or None when they do not decode."""
    if not payload:
        return None
    try:
        image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # some malformed headers raise instead of returning None
        return None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb, quality=95):
    """RGB uint8 image -> JPEG bytes (OpenCV, as insightface's packers)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def read_property(path):
    try:
        with open(path) as f:
            fields = f.read().strip().split(",")
        num_classes, height, width = (int(v) for v in fields)
    except FileNotFoundError:
        raise RecordError(f"{path}: missing property file") from None
    except ValueError:
        raise RecordError(f"{path}: expected 'num_classes,height,width'") from None
    return num_classes, height, width


def write_property(path, num_classes, height, width):
    with open(path, "w") as f:
        f.write(f"{num_classes},{height},{width}\n")




class RecordWriter:
    """Writes an insightface-layout dataset; images must arrive grouped by identity 0..K-1.

    Use as a context manager: on success the files are renamed into place; on any exception the
    temporary files are removed and nothing is left behind.
    """

    def __init__(self, root, image_size=(112, 112)):
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.image_size = image_size
        self.final = rec_paths(root)
        self.tmp = tuple(p + ".tmp" for p in self.final)
        self._record = mx.recordio.MXIndexedRecordIO(self.tmp[1], self.tmp[0], "w")
        self._ranges = []  # (first, last) per identity in order
        self._next_index = 1

    def add(self, identity, jpeg_bytes):
        """Append one encoded image of ``identity`` (identities must be 0, 1, 2, ... in order)."""
        if self._ranges and identity == len(self._ranges) - 1:
            self._ranges[-1][1] = self._next_index + 1
        elif identity == len(self._ranges):
            self._ranges.append([self._next_index, self._next_index + 1])
        else:
            raise ValueError(f"identity {identity} out of order (expected {len(self._ranges)})")
        header = mx.recordio.IRHeader(0, float(identity), self._next_index, 0)
        self._record.write_idx(self._next_index, mx.recordio.pack(header, jpeg_bytes))
        self._next_index += 1

    def _finish(self):
        num_images = self._next_index - 1
        num_ids = len(self._ranges)
        for i, (first, last) in enumerate(self._ranges):
            index = num_images + 1 + i
            header = mx.recordio.IRHeader(0, [float(first), float(last)], index, 0)
            self._record.write_idx(index, mx.recordio.pack(header, b""))
        header0 = mx.recordio.IRHeader(0, [float(num_images + 1), float(num_images + num_ids + 1)], 0, 0)
        self._record.write_idx(0, mx.recordio.pack(header0, b""))
        self._record.close()
        write_property(self.tmp[2], num_ids, *self.image_size)
        for tmp, final in zip(self.tmp, self.final):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        # property last: a reader checks all three, and a crash mid-rename leaves no property.
        # An older pack in the same folder loses its property first, so a crash between the
        # renames cannot pair the new .rec with the old .idx under a valid-looking property.
        if os.path.exists(self.final[2]):
            os.remove(self.final[2])
        for tmp, final in zip(self.tmp, self.final):
            os.replace(tmp, final)
        fsync_dir(self.root)
        return num_images, num_ids

    def abort(self):
        try:
            self._record.close()
        finally:
            for tmp in self.tmp:
                if os.path.exists(tmp):
                    os.remove(tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stats = self._finish()
        else:
            self.abort()
        return False


class RecordDataset:
    """Random access to an insightface-layout dataset, validated on open.

    Opening checks (each failure is a :class:`RecordError` naming the file): the three files exist,
    every offset in the index lies inside the .rec, header 0 agrees with the index, the identity
    records cover the images contiguously, and ``property`` agrees with the number of identities.
    The handle reopens itself after ``fork`` so DataLoader workers can share the object.
    """

    def __init__(self, root, check=True):
        self.root = root
        self.rec_path, self.idx_path, self.prop_path = rec_paths(root)
        for path in (self.rec_path, self.idx_path):
            if not os.path.exists(path):
                raise RecordError(f"{path}: file not found")
        self.num_classes, self.height, self.width = read_property(self.prop_path)
        self._offsets = self._read_index()
        self._handle, self._pid = None, None
        self._lock = threading.Lock()  # one file handle: seek + read must not interleave
        header0 = self._header(0)
        if header0.flag <= 0:
            raise RecordError(f"{self.rec_path}: record 0 has no identity range; not an insightface pack")
        id_first, id_last = self._range(0)
        if id_first < 2 or id_last <= id_first:
            raise RecordError(f"{self.rec_path}: record 0 says identities are records [{id_first}, {id_last}); "
                              f"expected images from 1 and at least one identity")
        self.image_indices = np.arange(1, id_first)
        self.identity_ranges = []
        if check:
            self._check(id_first, id_last)
        else:
            self.identity_ranges = [IdentityRange(i, *self._range(id_first + i)) for i in range(id_last - id_first)]
        self.labels = None

    # -- low level ---------------------------------------------------------------------------
    def _read_index(self):
        size = os.path.getsize(self.rec_path)
        offsets = {}
        with open(self.idx_path) as f:
            for line_no, line in enumerate(f, 1):
                parts = line.split("\t")
                try:
                    key, pos = int(parts[0]), int(parts[1])
                except (ValueError, IndexError):
                    raise RecordError(f"{self.idx_path}:{line_no}: malformed index line") from None
                if pos < 0 or pos + 8 > size:
                    raise RecordError(f"{self.idx_path}:{line_no}: offset {pos} past the end of "
                                      f"{self.rec_path} ({size} bytes); the .rec is truncated")
                offsets[key] = pos
        if 0 not in offsets:
            raise RecordError(f"{self.idx_path}: no record 0 (header) in the index")
        return offsets

    def _open(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = mx.recordio.MXIndexedRecordIO(self.idx_path, self.rec_path, "r")
            self._pid = os.getpid()
        return self._handle

    def read(self, index):
        """Raw record ``index`` -> (header, payload bytes); RecordError if it cannot be read."""
        if index not in self._offsets:
            raise RecordError(f"{self.idx_path}: record {index} is not in the index")
        try:
            with self._lock:
                data = self._open().read_idx(index)
        except Exception as err:  # MXNetError on a bad magic number or length
            raise RecordError(f"{self.rec_path}: record {index} is corrupt ({error_line(err)})") from None
        if not data:
            raise RecordError(f"{self.rec_path}: record {index} is empty or truncated")
        try:
            return mx.recordio.unpack(data)
        except Exception as err:  # a damaged header: label count past the record's end, ...
            raise RecordError(f"{self.rec_path}: record {index} has a corrupt header ({error_line(err)})") from None

    def _header(self, index):
        return self.read(index)[0]

    def _range(self, index):
        label = np.asarray(self._header(index).label).ravel()
        if label.size < 2 or not np.all(np.isfinite(label[:2])):
            raise RecordError(f"{self.rec_path}: record {index} should hold an identity range but its "
                              f"label is {label.tolist()}; header 0 disagrees with the records")
        first, last = (int(v) for v in label[:2])
        return first, last

    def _check(self, id_first, id_last):
        num_ids = id_last - id_first
        if num_ids != self.num_classes:
            raise RecordError(f"{self.prop_path}: says {self.num_classes} classes but "
                              f"{self.rec_path} header has {num_ids} identities")
        for key in range(id_last):
            if key not in self._offsets:
                raise RecordError(f"{self.idx_path}: record {key} missing (header 0 says "
                                  f"{id_first - 1} images and {num_ids} identities)")
        expected = 1
        for i in range(num_ids):
            first, last = self._range(id_first + i)
            if first != expected or last <= first or last > id_first:
                raise RecordError(f"{self.rec_path}: identity record {id_first + i} has range "
                                  f"[{first}, {last}) which does not continue at {expected}")
            self.identity_ranges.append(IdentityRange(i, first, last))
            expected = last
        if expected != id_first:
            raise RecordError(f"{self.rec_path}: identity ranges end at {expected}, images end at {id_first}")
        self._check_image_size()

    def _check_image_size(self, tries=8):
        """The first decodable image must have the size ``property`` announces (else every
        record would be rejected during training, one by one)."""
        for index in self.image_indices[:tries]:
            try:
                image = self.read_image(int(index))[0]
            except RecordError:
                continue  # a single corrupt record is the training loop's business
            if image.shape[:2] != (self.height, self.width):
                raise RecordError(f"{self.prop_path}: says {self.width}x{self.height} images but record "
                                  f"{index} of {self.rec_path} is {image.shape[1]}x{image.shape[0]}")
            return

    # -- public ------------------------------------------------------------------------------
    def __len__(self):
        return len(self.image_indices)

    def label_array(self):
        """Identity of every image (from the identity ranges, no image decoding)."""
        if self.labels is None:
            labels = np.empty(len(self.image_indices), dtype=np.int64)
            for identity, first, last in self.identity_ranges:
                labels[first - 1:last - 1] = identity
            self.labels = labels
        return self.labels

    def read_image(self, index):
        """Record ``index`` -> (RGB uint8 HxWx3 image, identity)."""
        header, payload = self.read(index)
        image = decode_jpeg(payload)
        if image is None:
            raise RecordError(f"{self.rec_path}: record {index} holds no decodable image")
        try:
            label = label_of(header)
        except (ValueError, OverflowError, IndexError):  # NaN / inf / empty label bytes
            raise RecordError(f"{self.rec_path}: record {index} has an unreadable label {header.label!r}") from None
        return image, label

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
