"""The evaluation command lines end to end on a tiny exported model (built here, independent of
recognition.models): verify, embed, rec_info, rec2images, export, ensemble (ONNX Runtime equality; also on
small recognition.models backbones, whose PReLU the tiny model lacks)."""
import json
import os
import pickle
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))

from conftest import ROOT, SAMPLE  # noqa: E402
from eval_tiny_net import build_tiny_net, random_faces  # noqa: E402
from recognition.cli import embed as embed_tool  # noqa: E402
from recognition.cli import export as export_tool  # noqa: E402
from recognition.cli import rec2images as rec2images_tool  # noqa: E402
from recognition.cli import rec_info as rec_info_tool  # noqa: E402
from recognition.cli.make_bin import load_face  # noqa: E402
from recognition.data.align import read_landmarks  # noqa: E402
from recognition.data.binfile import load_bin, write_bin  # noqa: E402
from recognition.data.record import RecordDataset, encode_jpeg  # noqa: E402
from recognition.evaluation import embed_images, evaluate  # noqa: E402

TOOLS = ["verify", "make_bin", "embed", "rec_info", "rec2images", "export", "ensemble"]


def tool(name, *args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py")] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(net, prefix): the tiny net exported insightface-style at epochs 1 and 2 (2 = different
    weights, the newest, which the tools must pick by default)."""
    folder = tmp_path_factory.mktemp("model")
    prefix = str(folder / "tiny")
    old = build_tiny_net(seed=10)
    old(mx.nd.zeros((1, 3, 112, 112)))
    old.export(prefix, epoch=1)
    net = build_tiny_net(seed=11)
    net(mx.nd.zeros((1, 3, 112, 112)))
    net.export(prefix, epoch=2)
    return net, prefix


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """Two small .bin files: real aligned photos of the LFW sample and synthetic faces."""
    folder = tmp_path_factory.mktemp("bins")
    landmarks = read_landmarks(os.path.join(SAMPLE, "landmarks.txt"))
    with open(os.path.join(SAMPLE, "pairs.txt")) as f:
        lines = [line.split() for line in f if line.strip()][1:]
    lines = lines[:20] + lines[-20:]
    jpegs, issame = [], []
    for fields in lines:
        names = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
                [(fields[0], fields[1]), (fields[2], fields[3])]
        for name, number in names:
            rel = f"{name}/{name}_{int(number):04d}.jpg"
            jpegs.append(encode_jpeg(load_face(os.path.join(SAMPLE, "images", rel), landmarks[rel])))
        issame.append(len(fields) == 3)
    write_bin(str(folder / "lfwpart.bin"), jpegs, issame)
    faces = random_faces(24, seed=12)
    write_bin(str(folder / "synth.bin"), [encode_jpeg(f) for f in faces], np.arange(12) % 2 == 0)
    return str(folder / "lfwpart.bin"), str(folder / "synth.bin")


HELP_RUNNER = """
import contextlib, io, json, runpy, sys
results = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = None
    except SystemExit as exit:
        code = exit.code
    results[path] = [code, out.getvalue()]
print(json.dumps(results))
"""


def test_help():
    """Every shim runs as a script (one interpreter, from outside the repository) and --help works."""
    paths = [os.path.join(ROOT, "tools", f"{name}.py") for name in TOOLS]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", HELP_RUNNER] + paths, capture_output=True, text=True,
                          timeout=120, cwd="/", env=dict(env, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for path in paths:
        code, text = results[path]
        assert code == 0 and text.startswith("usage:") and "--help" in text, (path, code, text)


def test_verify_end_to_end(model, bins, tmp_path):
    net, prefix = model
    roc = tmp_path / "roc.png"
    proc = tool("verify", "--model", prefix, "--bin", f"{bins[0]},{bins[1]}", "--json", "--nfolds", "5",
                "--batch-size", "16", "--roc", roc, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert list(report) == ["lfwpart", "synth"]
    for key, path in zip(report, bins):
        images, issame = load_bin(path)
        expected = evaluate(net, images, issame, batch_size=16, nfolds=5)  # epoch 2 = newest
        for field in ("accuracy", "accuracy_std", "threshold", "xnorm", "tar_at_far_1e-3", "auc", "eer"):
            assert report[key][field] == pytest.approx(expected[field], rel=1e-5, abs=1e-6), (key, field)
    png = cv2.imread(str(roc))
    assert png is not None and png.shape[0] > 100

    # text output, an explicit older epoch, another flip mode, repeated --bin
    proc = tool("verify", "--model", f"{prefix},1", "--bin", bins[0], "--bin", bins[1], "--flip", "concat",
                "--nfolds", "5", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "[lfwpart] accuracy" in proc.stdout and "[synth] accuracy" in proc.stdout
    assert "epoch 1" in proc.stdout and "XNorm" in proc.stdout and "TAR@FAR=1e-3" in proc.stdout


def test_ensemble_is_the_members_normalised_side_by_side_and_verify_takes_it(model, bins, tmp_path):
    net, prefix = model
    other = build_tiny_net(seed=13)  # the same parameter names as the first: the tool must rename them
    other(mx.nd.zeros((1, 3, 112, 112)))
    other.export(str(tmp_path / "other"), epoch=5)
    out = tmp_path / "ens" / "model"
    proc = tool("ensemble", "--models", prefix, f"{tmp_path / 'other'},5", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "2 members" in proc.stdout and sorted(os.listdir(out.parent)) == ["model-0000.params", "model-symbol.json"]
    from recognition.evaluation.embed import load_exported_model
    ensemble, _ = load_exported_model(str(out))
    faces = mx.nd.array(random_faces(6, seed=14).transpose(0, 3, 1, 2).astype(np.float32))
    members = [m(faces).asnumpy().astype(np.float64) for m in (net, other)]
    got = ensemble(faces).asnumpy().astype(np.float64)
    unit = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in members]
    assert got == pytest.approx(np.concatenate(unit, axis=1) / np.sqrt(2), abs=1e-5)
    # the cosine it gives a pair is the mean of the members' cosines
    assert got[0] @ got[1] == pytest.approx(np.mean([u[0] @ u[1] for u in unit]), abs=1e-5)
    proc = tool("verify", "--model", out, "--bin", bins[0], "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert 0 <= json.loads(proc.stdout)["lfwpart"]["accuracy"] <= 1

    for models, message in (([prefix], "at least 2 models"), ([prefix, str(tmp_path / "missing")],
                                                              "missing-symbol.json: model symbol file not found")):
        proc = tool("ensemble", "--models", *models, "--out", tmp_path / "bad" / "model")
        assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists() or not os.listdir(tmp_path / "bad")


def test_verify_refuses_bad_inputs(model, tmp_path):
    _, prefix = model
    evil = tmp_path / "evil.bin"
    marker = tmp_path / "marker"
    evil.write_bytes(b"\x80\x02cposix\nsystem\n" + pickle.dumps(f"touch {marker}", protocol=2)[2:-1] + b"\x85R.")
    proc = tool("verify", "--model", prefix, "--bin", evil, "--no-progress")
    assert proc.returncode != 0 and "posix.system" in proc.stderr and str(evil) in proc.stderr
    assert not marker.exists()
    proc = tool("verify", "--model", str(tmp_path / "missing"), "--bin", evil)
    assert proc.returncode != 0 and "missing-symbol.json" in proc.stderr
    # a params file cut short (an interrupted copy): MXNet's own check, not its C++ traceback's first line
    cut = tmp_path / "cut"
    (tmp_path / "cut-symbol.json").write_bytes(open(prefix + "-symbol.json", "rb").read())
    data = open(prefix + "-0001.params", "rb").read()
    (tmp_path / "cut-0001.params").write_bytes(data[:len(data) // 2])
    proc = tool("verify", "--model", f"{cut},1", "--bin", evil, "--no-progress")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "cut-0001.params" in lines[0] and "Invalid NDArray file format" in lines[0], lines[0]


def test_embed_folder_and_rec(model, tmp_path, sample_rec, sample_train_src):
    net, prefix = model
    out = tmp_path / "folder.npy"
    embed_tool.main(["--model", prefix, "--images", sample_train_src, "--out", str(out), "--flip", "sum",
                     "--landmarks", os.path.join(SAMPLE, "landmarks.txt"), "--chunk", "7", "--no-progress"])
    emb = np.load(out)
    with open(tmp_path / "folder.tsv") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert rows[0] == ["row", "path", "label"] and len(rows) - 1 == len(emb)
    landmarks = read_landmarks(os.path.join(SAMPLE, "landmarks.txt"))
    paths = [r[1] for r in rows[1:]]
    assert paths == sorted(paths) and all(r[2] == r[1].split("/")[0] for r in rows[1:])
    faces = np.stack([load_face(os.path.join(sample_train_src, p), landmarks[p]) for p in paths])
    np.testing.assert_allclose(emb, embed_images(net, faces, 32, "sum"), rtol=1e-5, atol=1e-5)

    out = tmp_path / "rec.npy"
    embed_tool.main(["--model", prefix, "--rec", sample_rec, "--out", str(out), "--flip", "none",
                     "--normalize", "--no-progress"])
    emb = np.load(out)
    dataset = RecordDataset(sample_rec)
    with open(tmp_path / "rec.tsv") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    assert [int(r[1]) for r in rows] == dataset.image_indices.tolist()
    assert [int(r[2]) for r in rows] == dataset.label_array().tolist()
    faces = np.stack([dataset.read_image(int(i))[0] for i in dataset.image_indices])
    expected = embed_images(net, faces, 32, "none")
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)


def test_rec_info_and_rec2images(sample_rec, tmp_path, capsys):
    dataset = RecordDataset(sample_rec)
    grid = tmp_path / "grid.png"
    rec_info_tool.main([sample_rec, "--json", "--grid", str(grid), "--rows", "2", "--cols", "3"])
    info = json.loads(capsys.readouterr().out)
    counts = [last - first for _, first, last in dataset.identity_ranges]
    assert info["images"] == len(dataset) and info["identities"] == dataset.num_classes == len(counts)
    assert info["images_per_identity"]["max"] == max(counts)
    assert sum(info["histogram"].values()) == len(counts)
    assert cv2.imread(str(grid)).shape == (2 * 112, 3 * 112, 3)
    rec_info_tool.main([sample_rec])
    text = capsys.readouterr().out
    assert f"{len(dataset)} images of {len(counts)} identities" in text

    out = tmp_path / "unpacked"
    rec2images_tool.main([sample_rec, str(out), "--no-progress"])
    written = sorted(os.path.join(d, f) for d, _, files in os.walk(out) for f in files)
    assert len(written) == len(dataset)
    for index in dataset.image_indices[::7]:
        header, payload = dataset.read(int(index))
        label = dataset.label_array()[int(index) - 1]
        with open(out / str(label) / f"{int(index)}.jpg", "rb") as f:
            assert f.read() == payload
    with pytest.raises(SystemExit):  # refuses to overwrite
        rec2images_tool.main([sample_rec, str(out), "--no-progress"])


def test_export_onnx_matches_mxnet(model, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (see requirements.txt)")
    net, prefix = model
    out = tmp_path / "tiny.onnx"
    export_tool.main(["--model", prefix, "--out", str(out)])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    faces = random_faces(5, seed=13).transpose(0, 3, 1, 2).astype(np.float32)
    got = session.run(None, {"data": faces})[0]
    expected = net(mx.nd.array(faces)).asnumpy()
    assert got.shape == expected.shape == (5, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# (model, act, constructor options): small but real backbones with every PReLU site of the full
# ones: MobileFaceNet's after 3x3 and depthwise convolutions (one block per stage, 32x32 input) and
# IResNet's stem and residual units (one unit per stage, 16x16). 'prelu' is the default formulation
# (depthwise 1x1 convolutions by alpha and 1 - alpha), 'prelu_native' MXNet's LeakyReLU operator.
PRELU_BACKBONES = [
    ("mobilefacenet", "prelu", dict(blocks=(1, 1, 1, 1), input_size=32)),
    ("mobilefacenet", "prelu_native", dict(blocks=(1, 1, 1, 1), input_size=32)),
    ("iresnet", "prelu", dict(units=(1, 1, 1, 1), input_size=16)),
]


@pytest.mark.parametrize("name,act,options", PRELU_BACKBONES, ids=[f"{n}-{a}" for n, a, _ in PRELU_BACKBONES])
def test_export_onnx_prelu_backbones_match_mxnet(name, act, options, tmp_path):
    """MXNet 1.9.1's exporter turned our PReLU's 1 - alpha into alpha - 1 and gave ONNX PRelu a (C,)
    slope that broadcasts over W (relative error ~1, or a model ONNX Runtime refuses): the export
    must match MXNet on these networks too."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (see requirements.txt)")
    from recognition.models import IResNet, MobileFaceNet, default_initializer
    size = options["input_size"]
    if name == "mobilefacenet":
        net = MobileFaceNet(embedding_size=16, act=act, prefix="mbf_", **options)
    else:
        net = IResNet(options["units"], embedding_size=16, act=act, input_size=size, prefix="iresnet_")
    mx.random.seed(0)
    net.initialize(default_initializer())
    rng = np.random.RandomState(3)
    for param_name, param in net.collect_params().items():
        # distinct per-channel alphas, negative and above 1 included, so a slope applied along the
        # wrong axis or a wrong 1 - alpha cannot go unnoticed; non-trivial BatchNorm statistics
        if param_name.endswith("_alpha"):
            param.set_data(mx.nd.array(rng.uniform(-0.5, 1.5, param.shape)))
        elif param_name.endswith("_running_mean"):
            param.set_data(mx.nd.array(rng.normal(0, 0.2, param.shape)))
        elif param_name.endswith("_running_var"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 2.0, param.shape)))
    net.hybridize()
    faces = random_faces(3, size=size, seed=14).transpose(0, 3, 1, 2).astype(np.float32)
    expected = net(mx.nd.array(faces)).asnumpy()
    prefix = str(tmp_path / name)
    net.export(prefix, epoch=1)
    out = tmp_path / f"{name}.onnx"
    # the tool's own check (1e-4) runs too: it exits with an error on a mismatch
    export_tool.main(["--model", prefix, "--out", str(out), "--image-size", str(size), "--check-images", "2"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"data": faces})[0]
    assert got.shape == expected.shape == (3, 16)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
