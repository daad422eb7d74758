"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

Format: a pickle of ``(bins, issame_list)``; ``bins`` holds 2P encoded images (pair i is
``bins[2i]``, ``bins[2i+1]``), ``issame_list`` P booleans. Files in the wild vary: Python 2
pickles (byte strings, read with ``encoding='bytes'``), JPEGs as ``bytes`` or as 1-D uint8 NumPy
arrays, ``issame`` as a list or a NumPy bool array, images of any size. All are read here, always
through the restricted unpickler (a .bin is a pickle from the internet).
"""
import os
import pickle

import numpy as np

from .align import to_size
from .record import decode_jpeg
from .safe_pickle import UnsafePickleError, safe_load


class BinFileError(ValueError):
    """A .bin that cannot be used; the message names the file and the problem."""


def _unpickle(path):
    try:
        try:
            return safe_load(path)
        except UnicodeDecodeError:
            # Python 2 ``str`` (the JPEG bytes) cannot be decoded as ASCII text: read as bytes,
            # as insightface's own load_bin does.
            return safe_load(path, encoding="bytes")
    except UnsafePickleError as err:
        raise BinFileError(str(err)) from None
    except FileNotFoundError:
        raise BinFileError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError) as err:
        raise BinFileError(f"{path}: not a readable .bin pickle ({type(err).__name__}: {err})") from None


def _as_bytes(item):
    """One encoded image as bytes, whatever container the writer used."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, str):  # a Python 2 str read as text: the bytes are its latin-1 code points
        return item.encode("latin1")
    return None


def read_bin(path):
    """Raw contents: (list of 2P encoded-image byte strings, np.bool_ array of P)."""
    content = _unpickle(path)
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise BinFileError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(content).__name__}")
    bins, issame = content
    if not isinstance(bins, (list, tuple)):
        raise BinFileError(f"{path}: bins is a {type(bins).__name__}, expected a list of encoded images")
    try:
        issame = np.asarray(issame)
    except Exception:
        raise BinFileError(f"{path}: issame_list is not a sequence of booleans") from None
    if issame.ndim != 1 or not (issame.dtype == np.bool_ or np.issubdtype(issame.dtype, np.integer)):
        raise BinFileError(f"{path}: issame_list must be a 1-D list of booleans (got dtype {issame.dtype}, "
                           f"shape {issame.shape})")
    if np.issubdtype(issame.dtype, np.integer) and not np.isin(issame, (0, 1)).all():
        raise BinFileError(f"{path}: issame_list holds values other than 0/1")
    if len(bins) != 2 * len(issame):
        raise BinFileError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    payloads = []
    for i, item in enumerate(bins):
        payload = _as_bytes(item)
        if payload is None:
            raise BinFileError(f"{path}: image {i} is a {type(item).__name__}, expected encoded bytes")
        payloads.append(payload)
    return payloads, issame.astype(np.bool_)


def _size_hw(image_size):
    if isinstance(image_size, (tuple, list)):
        return int(image_size[0]), int(image_size[1])
    return int(image_size), int(image_size)


def decode_images(payloads, image_size=112, source="<bin>", progress=False):
    """Encoded images -> uint8 (N, H, W, 3) RGB, each resized to ``image_size`` if needed."""
    import cv2
    height, width = _size_hw(image_size)
    images = np.empty((len(payloads), height, width, 3), dtype=np.uint8)
    iterator = enumerate(payloads)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=len(payloads), desc=f"decode {os.path.basename(source)}",
                        unit="img", leave=False)
    for i, payload in iterator:
        image = decode_jpeg(payload)
        if image is None:
            raise BinFileError(f"{source}: image {i} does not decode")
        if image.shape[:2] != (height, width):
            image = to_size(image, height) if height == width else cv2.resize(
                image, (width, height), interpolation=cv2.INTER_AREA)
        images[i] = image
    return images


def load_bin(path, image_size=112, progress=False):
    """A verification .bin -> (uint8 (2P, H, W, 3) RGB images, np.bool_ (P,) issame).

    Raises :class:`BinFileError` naming the file for anything unusable, including a pickle that
    asks for a forbidden global (nothing of it is executed).
    """
    payloads, issame = read_bin(path)
    return decode_images(payloads, image_size, source=os.fspath(path), progress=progress), issame


def write_bin(path, jpeg_bytes_list, issame):
    """Write insightface's format exactly: ``pickle.dump((bins, issame_list), f, HIGHEST_PROTOCOL)``
    with ``bins`` a list of 2P byte strings and ``issame_list`` a list of P Python bools.
    Written to a temporary name and renamed, so a failure leaves no partial file."""
    bins = [bytes(b) if not isinstance(b, np.ndarray) else b.tobytes() for b in jpeg_bytes_list]
    issame_list = [bool(v) for v in issame]
    if len(bins) != 2 * len(issame_list):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame_list)} pairs (expected {2 * len(issame_list)})")
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            pickle.dump((bins, issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
