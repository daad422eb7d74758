"""insightface .bin files: every variant found in the wild read back, write_bin's exact format,
and the restricted unpickler refusing pickles that would run code."""
import io
import os
import pickle
import struct
import subprocess

import numpy as np
import pytest

from recognition.data.binfile import BinFileError, load_bin, read_bin, write_bin
from recognition.data.record import decode_jpeg, encode_jpeg
from recognition.data.safe_pickle import UnsafePickleError, safe_load, safe_loads

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lfw_sample", "images")


def real_jpegs(count=6):
    """JPEG bytes of real photos from the committed LFW sample (128x128)."""
    paths = []
    for name in sorted(os.listdir(SAMPLE)):
        for file in sorted(os.listdir(os.path.join(SAMPLE, name))):
            paths.append(os.path.join(SAMPLE, name, file))
    paths = paths[:count]
    assert len(paths) == count
    return [open(p, "rb").read() for p in paths]


ISSAME = [True, False, True]


def expected_images(jpegs, size=112):
    import cv2
    out = []
    for payload in jpegs:
        image = decode_jpeg(payload)
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        out.append(image)
    return np.stack(out)


# ---- a Python 2 (cPickle protocol 2) writer, opcode by opcode --------------------------------
def _py2_str(data):
    """A Python 2 ``str``: SHORT_BINSTRING / BINSTRING (Python 3 has no writer for these)."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _int(value):
    return b"K" + bytes([value]) if value < 256 else b"J" + struct.pack("<i", value)


def _py2_ndarray(array):
    """numpy's py2 pickle of a 1-D array: _reconstruct(ndarray, (0,), 'b') + BUILD state."""
    descr = {np.dtype(np.uint8): b"u1", np.dtype(np.bool_): b"b1"}[array.dtype]
    dtype = (b"cnumpy\ndtype\n" + _py2_str(descr) + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85"
            + _py2_str(b"b") + b"\x87R"
            + b"(" + _int(1) + _int(len(array)) + b"\x85" + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb")


def py2_bin(bins, issame, numpy_images=False, numpy_issame=False):
    out = b"\x80\x02"
    out += b"](" + b"".join(_py2_ndarray(np.frombuffer(b, np.uint8)) if numpy_images else _py2_str(b)
                            for b in bins) + b"e"
    if numpy_issame:
        out += _py2_ndarray(np.array(issame, dtype=np.bool_))
    else:
        out += b"](" + b"".join(b"\x88" if v else b"\x89" for v in issame) + b"e"
    return out + b"\x86."


# ---- variants -----------------------------------------------------------------------------
def _variants(jpegs):
    arrays = [np.frombuffer(b, dtype=np.uint8).copy() for b in jpegs]
    v = {}
    for proto in (2, 4, 5):
        v[f"py3_bytes_p{proto}"] = pickle.dumps((jpegs, ISSAME), protocol=proto)
        v[f"py3_ndarray_jpegs_p{proto}"] = pickle.dumps((arrays, ISSAME), protocol=proto)
        v[f"py3_numpy_issame_p{proto}"] = pickle.dumps((jpegs, np.array(ISSAME)), protocol=proto)
    v["py3_tuple_of_bytearray"] = pickle.dumps((tuple(bytearray(b) for b in jpegs), ISSAME))
    v["py3_numpy_bool_scalars"] = pickle.dumps((jpegs, [np.bool_(x) for x in ISSAME]), protocol=2)
    v["py2_str"] = py2_bin(jpegs, ISSAME)
    v["py2_ndarray_jpegs"] = py2_bin(jpegs, ISSAME, numpy_images=True)
    v["py2_numpy_issame"] = py2_bin(jpegs, ISSAME, numpy_issame=True)
    v["py2_protocol0_bools"] = b"\x80\x02](" + b"".join(_py2_str(b) for b in jpegs) + b"e(lp0\nI01\naI00\naI01\na\x86."
    return v


@pytest.mark.parametrize("variant", sorted(_variants([b"x"] * 6)))
def test_every_variant_reads_back(tmp_path, variant):
    jpegs = real_jpegs()
    path = tmp_path / f"{variant}.bin"
    path.write_bytes(_variants(jpegs)[variant])
    payloads, issame = read_bin(str(path))
    assert payloads == jpegs
    assert issame.dtype == np.bool_ and issame.tolist() == ISSAME
    images, issame = load_bin(str(path))
    assert images.dtype == np.uint8 and images.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(images, expected_images(jpegs))
    assert issame.tolist() == ISSAME


def test_images_of_any_size_are_resized(tmp_path):
    rng = np.random.RandomState(0)
    photo = decode_jpeg(real_jpegs(1)[0])
    jpegs = [encode_jpeg(photo), encode_jpeg(photo[:100, :90]), encode_jpeg(rng.randint(0, 255, (112, 112, 3), np.uint8)),
             encode_jpeg(photo[:60, :60]), encode_jpeg(photo), encode_jpeg(photo[:112, :112])]
    write_bin(str(tmp_path / "sizes.bin"), jpegs, ISSAME)
    images, _ = load_bin(str(tmp_path / "sizes.bin"), image_size=112)
    assert images.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(images, expected_images(jpegs))
    small, _ = load_bin(str(tmp_path / "sizes.bin"), image_size=(96, 80))
    assert small.shape == (6, 96, 80, 3)


def test_write_bin_is_insightface_format(tmp_path):
    jpegs = real_jpegs()
    path = tmp_path / "out.bin"
    write_bin(str(path), [np.frombuffer(j, np.uint8) if i % 2 else j for i, j in enumerate(jpegs)],
              np.array(ISSAME))
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80" + bytes([pickle.HIGHEST_PROTOCOL])
    with open(path, "rb") as f:
        bins, issame_list = pickle.load(f)  # what insightface's load_bin does
    assert bins == jpegs and all(type(b) is bytes for b in bins)
    assert issame_list == ISSAME and all(type(v) is bool for v in issame_list)
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary left
    with pytest.raises(ValueError):
        write_bin(str(tmp_path / "bad.bin"), jpegs[:5], ISSAME)
    assert os.listdir(tmp_path) == ["out.bin"]


def _evil_pickles(marker):
    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Eval:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    class Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["touch", str(marker)],))

    return {
        "os.system": pickle.dumps((["a"], System())),
        "builtins.eval": pickle.dumps(([Eval()], [True])),   # hidden inside the image list
        "subprocess.Popen": pickle.dumps(Popen(), protocol=4),
        "py2 os.system": b"\x80\x02cposix\nsystem\n" + _py2_str(f"touch {marker}".encode()) + b"\x85R.",
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen", "py2 os.system"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(_evil_pickles(marker)[kind])
    with pytest.raises(BinFileError) as err:
        load_bin(str(path))
    message = str(err.value)
    assert str(path) in message and "refused" in message
    forbidden = {"os.system": "system", "builtins.eval": "builtins.eval",
                 "subprocess.Popen": "subprocess.Popen", "py2 os.system": "posix.system"}[kind]
    assert forbidden in message
    with pytest.raises(UnsafePickleError):
        safe_load(str(path))
    with open(path, "rb") as f, pytest.raises(UnsafePickleError):
        safe_load(f)
    assert not marker.exists()
    # the same bytes through plain pickle would have run (shows the test can fail)
    if kind == "os.system":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_safe_load_accepts_plain_data():
    data = {"a": [1, 2.5, "x", b"y", None, (True, False)], "arr": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = safe_loads(pickle.dumps(data, protocol=5))
    assert out["a"] == data["a"]
    np.testing.assert_array_equal(out["arr"], data["arr"])
    out = safe_load(io.BytesIO(pickle.dumps(data, protocol=2)))
    np.testing.assert_array_equal(out["arr"], data["arr"])


@pytest.mark.parametrize("content,problem", [
    (b"not a pickle at all", "not a readable .bin pickle"),
    (pickle.dumps(([b"a", b"b"], [True]))[:-5], "not a readable .bin pickle"),    # truncated
    (pickle.dumps(([b"a", b"b", b"c"], [True])), "3 images for 1 pairs"),
    (pickle.dumps([b"a"]), "expected a pickled (bins, issame_list) pair"),
    (pickle.dumps(([b"a", 5], [True])), "image 1 is a int"),
    (pickle.dumps(([b"a", b"b"], ["yes"])), "issame_list"),
    (pickle.dumps(([b"a", b"b"], [True])), "image 0 does not decode"),
])
def test_bad_files_name_the_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(BinFileError) as err:
        load_bin(str(path))
    assert str(path) in str(err.value) and problem in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(BinFileError, match="file not found"):
        load_bin(str(tmp_path / "nope.bin"))
