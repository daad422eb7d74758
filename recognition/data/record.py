"""insightface RecordIO datasets: ``train.rec`` + ``train.idx`` + ``property``.

Two layouts are read, told apart by record 0 (``RecordDataset.layout``):

``"header"`` -- insightface's classic packs (faces_emore, CASIA-WebFace, its RecBuilder, our
:class:`RecordWriter`):

* records 1..N: the face images, header label = identity (float; some packs store an array whose
  first value is the identity), images JPEG-encoded;
* records N+1..N+K: one per identity, header label = [first, last + 1) record range of its images;
* record 0: header label = [N + 1, N + K + 1) (flag 2), the range of the identity records;
* ``property``: ``num_classes,height,width``.

``"headerless"`` -- insightface's SeqRecBuilder and shuffled (rec2shufrec) packs, which
arcface_torch's MXFaceDataset reads by iterating the index keys: every record of the index is an
image (record 0 included; keys usually 0..N-1, in identity or shuffled order), its label the
identity (float, or an array whose first value is the identity), no identity records, and
``property`` beside them. The identities come from one pass over the record headers (read from
the raw bytes, no image decoding) and must be 0..K-1 with K = ``property``'s class count.

Record 0 is the header when its flag is > 0 (a label array) and it holds no image, or holds
something that is not an image while its label is a valid identity range; a record 0 with flag 0,
or one that holds an image, or no record 0 in the index, means headerless.

The dataset's image indices (``image_indices``, ``identity_ranges``, ``read``, ``read_image``) are
the record keys in the header layout. In the headerless layout they are 0..N-1 with each
identity's images consecutive (identity 0 first, each identity's in index order), so the
identity ranges stay [first, last) ranges even when the pack is shuffled; ``record_key(i)`` is
the key of image i in ``train.idx`` and the errors name that key. ``image_indices`` lists the
images in index (file) order.

The writer puts everything under temporary names and renames only when complete, so a failed or
interrupted pack never leaves files that look valid.
"""
import mmap
import os
import threading
from collections import namedtuple

import cv2
import numpy as np

import mxnet as mx

from recognition.fileio import fsync_dir

IdentityRange = namedtuple("IdentityRange", "identity first last")  # records [first, last)

HEADER, HEADERLESS = "header", "headerless"  # RecordDataset.layout
RECORDIO_MAGIC = 0xCED7230A  # dmlc RecordIO: uint32 magic, uint32 (cflag << 29 | length), data
IRHEADER_SIZE = 24  # mx.recordio IRHeader "IfQQ": flag, label, id, id2; then flag float32 labels


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


def looks_like_image(payload):
    """Whether encoded bytes are an image (JPEG/PNG signature, else whether OpenCV decodes them)."""
    if not payload:
        return False
    if payload[:3] == b"\xff\xd8\xff" or payload[:8] == b"\x89PNG\r\n\x1a\n":
        return True
    return decode_jpeg(payload) is not None


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
    """Random access to an insightface dataset of either layout (module docstring), validated on open.

    Opening checks (each failure is a :class:`RecordError` naming the file): the three files exist,
    every offset in the index lies inside the .rec, and, in the header layout, header 0 agrees
    with the index, the identity records cover the images contiguously and ``property`` agrees
    with the number of identities; in the headerless layout every record's header is readable,
    its identity a number, and the identities are 0..K-1 with K = ``property``'s class count. In
    both, the first decodable image has ``property``'s size.
    ``layout`` says which layout was read. The handle reopens itself after ``fork`` so
    DataLoader workers can share the object.
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
        self._keys = None  # headerless: record key of each image index
        self.labels = None
        if self._has_header():
            self.layout = HEADER
            self._open_header(check)
        else:
            self.layout = HEADERLESS
            self._open_headerless(check)

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
        if not offsets:
            raise RecordError(f"{self.idx_path}: no records in the index")
        return offsets

    def _open(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = mx.recordio.MXIndexedRecordIO(self.idx_path, self.rec_path, "r")
            self._pid = os.getpid()
        return self._handle

    def record_key(self, index):
        """The key in ``train.idx`` of image index ``index`` (the same number in the header layout)."""
        if self._keys is None:
            return int(index)
        if not 0 <= index < len(self._keys):
            raise RecordError(f"{self.idx_path}: image {index} is not in the dataset "
                              f"({len(self._keys)} images)")
        return int(self._keys[index])

    def read(self, index):
        """Record of image index ``index`` (in the header layout any record key, header and identity
        records included) -> (header, payload bytes); RecordError if it cannot be read."""
        return self._read_key(self.record_key(index))

    def _read_key(self, key):
        if key not in self._offsets:
            raise RecordError(f"{self.idx_path}: record {key} is not in the index")
        try:
            with self._lock:
                data = self._open().read_idx(key)
        except Exception as err:  # MXNetError on a bad magic number or length
            raise RecordError(f"{self.rec_path}: record {key} is corrupt ({error_line(err)})") from None
        if not data:
            raise RecordError(f"{self.rec_path}: record {key} is empty or truncated")
        try:
            return mx.recordio.unpack(data)
        except Exception as err:  # a damaged header: label count past the record's end, ...
            raise RecordError(f"{self.rec_path}: record {key} has a corrupt header ({error_line(err)})") from None

    def _header(self, index):
        return self.read(index)[0]

    def _range(self, index):
        label = np.asarray(self._header(index).label).ravel()
        if label.size < 2 or not np.all(np.isfinite(label[:2])):
            raise RecordError(f"{self.rec_path}: record {index} should hold an identity range but its "
                              f"label is {label.tolist()}; header 0 disagrees with the records")
        first, last = (int(v) for v in label[:2])
        return first, last

    # -- layout detection --------------------------------------------------------------------
    def _has_header(self):
        """Whether record 0 is an insightface header record (module docstring)."""
        if 0 not in self._offsets:
            return False
        header0, payload0 = self._read_key(0)
        if header0.flag <= 0:
            return False  # a scalar label: an image's identity
        if not payload0:
            return True  # header records hold no image (errors about its range come from the checks)
        if looks_like_image(payload0):
            return False  # an image record with an array label
        label = np.asarray(header0.label, dtype=np.float64).ravel()
        valid_range = label.size >= 2 and bool(np.all(np.isfinite(label[:2]))) \
            and 2 <= label[0] < label[1]
        return valid_range

    # -- header layout -----------------------------------------------------------------------
    def _open_header(self, check):
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

    # -- headerless layout -------------------------------------------------------------------
    def _open_headerless(self, check):
        keys = np.fromiter(self._offsets.keys(), dtype=np.int64, count=len(self._offsets))
        offsets = np.fromiter(self._offsets.values(), dtype=np.int64, count=len(self._offsets))
        labels, empty = self._scan_labels(keys, offsets)
        if 0 not in self._offsets and empty.any():
            # records without an image: identity records of a header pack that lost its record 0
            raise RecordError(f"{self.idx_path}: no record 0 (header) in the index, and record "
                              f"{int(keys[np.argmax(empty)])} of {self.rec_path} holds no image")
        lowest, top = int(np.argmin(labels)), int(labels.max())
        if labels[lowest] < 0:
            raise RecordError(f"{self.rec_path}: record {int(keys[lowest])} has label {int(labels[lowest])}; "
                              f"identities are 0..{self.num_classes - 1}")
        # identities 0..K-1 cannot reach past N + property's K (and a far label must not size an array)
        counts = np.bincount(labels) if top < len(labels) + self.num_classes else None
        found = int(np.count_nonzero(counts)) if counts is not None else len(np.unique(labels))
        if check and found != self.num_classes:
            raise RecordError(f"{self.prop_path}: says {self.num_classes} classes but the {len(labels)} "
                              f"images of {self.rec_path} have {found} identities (labels 0..{top})")
        if counts is None or (check and top != found - 1):
            missing = "" if counts is None else f" (identity {int(np.argmin(counts))} has none)"
            raise RecordError(f"{self.rec_path}: labels of its {len(labels)} images run 0..{top} but only "
                              f"{found} identities have images{missing}; expected identities 0..{found - 1}")
        order = np.argsort(labels, kind="stable")  # identity-major, each identity in index order
        self._keys = keys[order]
        self.image_indices = np.empty(len(labels), dtype=np.int64)
        self.image_indices[order] = np.arange(len(labels))  # images in index order
        self.labels = labels  # aligned with image_indices, as label_array() promises
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.identity_ranges = [IdentityRange(i, int(bounds[i]), int(bounds[i + 1])) for i in range(len(counts))]
        if check:
            self._check_image_size()

    def _scan_labels(self, keys, offsets):
        """(identity, holds no payload) of every record, in index order, from the raw RecordIO
        framing and IRHeader bytes of the .rec (memory-mapped; no image is decoded). A record whose
        header is not plainly in its first bytes (split by RecordIO's magic-number escaping,
        misaligned, damaged) is read through MXNet instead, which names the damage."""
        size = os.path.getsize(self.rec_path)
        labels = np.zeros(len(keys), dtype=np.int64)
        empty = np.zeros(len(keys), dtype=bool)
        slow = np.ones(len(keys), dtype=bool)
        with open(self.rec_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            words = np.frombuffer(mapped, dtype="<u4", count=size // 4)
            chunk = 1 << 20  # records per step: bounded temporaries for huge packs
            try:
                for start in range(0, len(keys) if len(words) > 8 else 0, chunk):
                    part = slice(start, start + chunk)
                    off = offsets[part]
                    # magic, length word, IRHeader (24 bytes) and the first label of an array
                    fits = (off % 4 == 0) & (off + 8 + IRHEADER_SIZE + 4 <= size)
                    at = np.where(fits, off // 4, 0)
                    magic, length_word, flag = words[at], words[at + 1], words[at + 2].astype(np.int64)
                    scalar, first = words[at + 3].view("<f4"), words[at + 8].view("<f4")
                    cflag, length = length_word >> 29, (length_word & ((1 << 29) - 1)).astype(np.int64)
                    whole = (cflag == 0) & (length >= IRHEADER_SIZE + 4 * flag) & (off + 8 + length <= size)
                    # first part of a split record: its first bytes still hold the header and label
                    split_head = (cflag == 1) & (length >= IRHEADER_SIZE + 4 * np.minimum(flag, 1))
                    label = np.where(flag > 0, first, scalar).astype(np.float64)
                    good = fits & (magic == RECORDIO_MAGIC) & (whole | split_head) & np.isfinite(label) \
                        & (np.abs(label) < 2 ** 31)
                    labels[part] = np.where(good, np.trunc(label), 0).astype(np.int64)  # as label_of
                    empty[part] = good & whole & (length == IRHEADER_SIZE + 4 * flag)
                    slow[part] = ~good
            finally:
                del words  # the map cannot close while an array views it
        for i in np.flatnonzero(slow):
            key = int(keys[i])
            header, payload = self._read_key(key)
            try:
                label = label_of(header)
            except (ValueError, OverflowError, IndexError):
                raise RecordError(f"{self.rec_path}: record {key} has an unreadable label {header.label!r}") from None
            if not -2 ** 31 < label < 2 ** 31:
                raise RecordError(f"{self.rec_path}: record {key} has label {label}, not an identity")
            labels[i], empty[i] = label, not payload
        return labels, empty

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
                                  f"{self.record_key(index)} of {self.rec_path} is {image.shape[1]}x{image.shape[0]}")
            return

    # -- public ------------------------------------------------------------------------------
    def __len__(self):
        return len(self.image_indices)

    def label_array(self):
        """Identity of every image, aligned with ``image_indices`` (no image decoding)."""
        if self.labels is None:
            labels = np.empty(len(self.image_indices), dtype=np.int64)
            for identity, first, last in self.identity_ranges:
                labels[first - 1:last - 1] = identity
            self.labels = labels
        return self.labels

    def identity_images(self, identity):
        """Image indices of ``identity`` (what ``read_image`` takes): its [first, last) range."""
        _, first, last = self.identity_ranges[identity]
        return np.arange(first, last, dtype=np.int64)

    def identity_keys(self, identity):
        """``train.idx`` keys of the records of ``identity``'s images (not contiguous in a shuffled pack)."""
        _, first, last = self.identity_ranges[identity]
        return np.arange(first, last, dtype=np.int64) if self._keys is None else self._keys[first:last].copy()

    def read_image(self, index):
        """Image index ``index`` -> (RGB uint8 HxWx3 image, identity)."""
        header, payload = self.read(index)
        image = decode_jpeg(payload)
        key = self.record_key(index)
        if image is None:
            raise RecordError(f"{self.rec_path}: record {key} holds no decodable image")
        try:
            label = label_of(header)
        except (ValueError, OverflowError, IndexError):  # NaN / inf / empty label bytes
            raise RecordError(f"{self.rec_path}: record {key} has an unreadable label {header.label!r}") from None
        return image, label

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
