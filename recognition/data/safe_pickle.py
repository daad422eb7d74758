"""Restricted unpickling for files that come from elsewhere (.bin verification sets, ...).

A pickle is a program: ``pickle.load`` calls whatever global the stream names, so a .bin
downloaded from the internet could run ``os.system``. The unpickler here resolves only an
allow-list of globals, the ones a verification .bin actually needs (NumPy array and scalar
reconstruction); plain containers, bytes, strings, numbers and booleans need no global at all.
Anything else is refused *before* it is resolved, so nothing is executed.

Every pickle the project reads goes through :func:`safe_load`.
"""
import io
import os
import pickle

import numpy as np

# (module, name) pairs a .bin may name. numpy >= 2 writes ``numpy._core``; the same objects.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: np.core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: np.core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: np.core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): lambda: np.core.multiarray.scalar,
    # protocol 5 pickles of contiguous arrays: np.frombuffer(buffer, dtype).reshape(shape)
    ("numpy.core.numeric", "_frombuffer"): lambda: np.core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: np.core.numeric._frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy", "bool_"): lambda: np.bool_,
}
# Python 3 writes bytes as ``_codecs.encode(text, 'latin1')`` under protocols 0-2; the
# function only turns a string into bytes.
_CODECS_GLOBALS = {
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
}
# protocols 3+ write a bytearray as a call of its (harmless) constructor
_BYTES_GLOBALS = {
    ("builtins", "bytearray"): lambda: bytearray,
    ("__builtin__", "bytearray"): lambda: bytearray,
}
ALLOWED_GLOBALS = {**_NUMPY_GLOBALS, **_CODECS_GLOBALS, **_BYTES_GLOBALS}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allow-list; nothing was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only ``ALLOWED_GLOBALS``."""

    def __init__(self, file, source="<pickle>", allowed=None, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source
        self.allowed = ALLOWED_GLOBALS if allowed is None else allowed

    def find_class(self, module, name):
        resolve = self.allowed.get((module, name))
        if resolve is None:
            raise UnsafePickleError(f"{self.source}: refused to load: the pickle asks for the global "
                                    f"'{module}.{name}', which a data file has no reason to contain "
                                    f"(allowed: NumPy arrays and scalars, lists, tuples, bytes, bools, numbers, strings)")
        return resolve()

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused to load: persistent ids are not allowed")


def _source_name(f):
    return getattr(f, "name", "<pickle>")


def safe_load(path_or_file, encoding="ASCII", errors="strict", allowed=None):
    """Unpickle a path or a binary file object with the restricted unpickler.

    ``encoding``/``errors`` are passed on as in ``pickle.load`` (use ``encoding='bytes'`` for
    Python 2 pickles). Raises :class:`UnsafePickleError` for a forbidden global; other problems
    (truncated or corrupt stream) propagate as the usual ``pickle.UnpicklingError``/``EOFError``.
    """
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return RestrictedUnpickler(f, source=os.fspath(path_or_file), allowed=allowed,
                                       encoding=encoding, errors=errors).load()
    return RestrictedUnpickler(path_or_file, source=_source_name(path_or_file), allowed=allowed,
                               encoding=encoding, errors=errors).load()


def safe_loads(data, source="<bytes>", encoding="ASCII", errors="strict", allowed=None):
    """:func:`safe_load` of an in-memory pickle."""
    return RestrictedUnpickler(io.BytesIO(data), source=source, allowed=allowed,
                               encoding=encoding, errors=errors).load()
