"""The GPU path (``pytest -m gpu``; bench/gpu_check.sh runs these on a GPU machine with mxnet-cu112).

- the float16 rewrite computes the trunk in float16 on the GPU (the arrays, not only the inferred
  types), with float32 outputs, gradients and BatchNorm statistics close to float32's;
- dynamic loss scaling on float16: tiny gradients that underflow unscaled survive scaled (and
  unscale to float32's), overflowing ones are caught and the scale comes down until they fit;
- one float32 SGD step (MobileFaceNet + ArcFace) on the GPU equals the same step on the CPU;
- the trainer with ``train.precision: float16`` on one GPU (``mx.gpu(local_rank)``) trains and exports
  a float32 model, whose embeddings on the GPU equal the CPU's and which tools/verify.py scores alike
  on both (the ONNX conversion, tools/export.py, runs on the CPU alone: tests/test_eval_tools.py).

Without a GPU they skip, except with RECOGNITION_GPU_TESTS_ON_CPU=1 (``bench/gpu_check.sh
--dry-run``): then the same code runs on the CPU, bfloat16 standing in for float16 (MXNet's CPU has
no float16 convolution) where the CPU has bf16 kernels, so the GPU run cannot fail on a mistake in
the tests. With GPU_CHECK_DETAILS=DIR each test writes what it measured to DIR/<test>.json.
"""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from conftest import SAMPLE
from recognition.engine.loss_scale import DynamicLossScaler
from recognition.models import default_initializer, get_model
from recognition.models.embedding import PReLU, batch_norm
from recognition.models.precision import BFLOAT16, bfloat16_supported, low_precision_network, low_precision_symbol

ON_CPU = os.environ.get("RECOGNITION_GPU_TESTS_ON_CPU") == "1"
HAS_GPU = mx.context.num_gpus() > 0
CTX = mx.gpu(0) if HAS_GPU else mx.cpu()
# the low-precision type under test: float16 on the GPU; on the CPU stand-in, bfloat16 where it runs
LOW = "float16" if HAS_GPU else ("bfloat16" if ON_CPU and bfloat16_supported() else None)
LOW_NP = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(BFLOAT16)}

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (HAS_GPU or ON_CPU),
                                 reason="no GPU: mx.context.num_gpus() == 0 (bench/gpu_check.sh runs these on a "
                                        "GPU machine; RECOGNITION_GPU_TESTS_ON_CPU=1 runs them on the CPU)")]
needs_low = pytest.mark.skipif(ON_CPU and LOW is None, reason="CPU stand-in: no float16 convolution on the CPU, and this CPU "
                                                   "cannot run bfloat16 either (MKL-DNN, AVX-512)")


def measured(request, **values):
    """What a test measured, for bench/gpu_check.sh's report."""
    folder = os.environ.get("GPU_CHECK_DETAILS")
    if folder:
        values.update(ctx=str(CTX), low_precision=LOW)
        with open(os.path.join(folder, f"{request.node.originalname}.json"), "w") as f:
            json.dump(values, f, indent=2,
                      default=lambda v: float(v) if isinstance(v, (np.floating, np.integer)) else str(v))


def relative(a, b):
    """max |a - b| / max |b| (absolute where b is all zeros)."""
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / (scale if scale > 0 else 1.0)


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def small_network(ctx):
    # one BatchNorm only (see tests/test_precision.py: two in a row give a zero gradient that a
    # 16-bit type turns into noise)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(16, 3, in_channels=3, use_bias=False), batch_norm(16), PReLU(16),
            gluon.nn.Conv2D(16, 3, in_channels=16, groups=16, use_bias=False), PReLU(16),
            gluon.nn.Dense(8, in_units=16 * 12 * 12))
    net.initialize(default_initializer(), ctx=ctx)
    return net


def matmul_outputs(symbol):
    """Names of the outputs of every Convolution and FullyConnected node of ``symbol``."""
    nodes = json.loads(symbol.tojson(remove_amp_cast=False))["nodes"]
    return [node["name"] + "_output" for node in nodes if node["op"] in ("Convolution", "FullyConnected")]


@needs_low
def test_float16_rewrite_computes_in_float16_on_the_gpu(request):
    mx.random.seed(3)
    net = small_network(CTX)
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(-1, 1, shape=(32, 3, 16, 16), ctx=CTX)
    weights = mx.nd.array(np.random.RandomState(0).normal(size=(32, 8)), ctx=CTX)
    low = low_precision_network(net, LOW, CTX)
    low.hybridize(static_alloc=True, static_shape=True)

    # the arrays themselves: every matrix product's output, computed by the rewritten graph
    symbol = low_precision_symbol(net(mx.sym.var("data")), LOW)
    names = matmul_outputs(symbol)
    assert len(names) == 2 + 4 + 1  # 2 convolutions, PReLU's 4 depthwise 1x1 ones, the FC layer
    internals = symbol.get_internals()
    probe = gluon.SymbolBlock(mx.sym.Group([internals[n] for n in names] + [symbol]), [mx.sym.var("data")],
                              params=net.collect_params())
    with autograd.predict_mode():
        *inner, out = probe(x)
    assert [np.dtype(a.dtype) for a in inner] == [LOW_NP[LOW]] * len(names)
    assert out.dtype == np.float32 and out.context == CTX

    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    running = [p for p in net.collect_params().values() if p.name.endswith(("running_mean", "running_var"))]
    outputs, grads, stats = [], [], []
    for block in (net, low):
        start = [p.data().copy() for p in running]
        with autograd.record():
            y = block(x)
            loss = (y * weights).sum()
        loss.backward()
        assert y.dtype == np.float32
        outputs.append(y.asnumpy())
        grads.append({p.name: p.grad().asnumpy().copy() for p in params})
        assert all(p.grad().dtype == np.float32 and p.data().dtype == np.float32 for p in params)
        stats.append([p.data().asnumpy() for p in running])
        for p, value in zip(running, start):
            p.set_data(value)
    tolerance = {"float16": 0.01, "bfloat16": 0.03}[LOW]
    output_difference = relative(outputs[1], outputs[0])
    cosines = {name: cosine(grads[1][name], g) for name, g in grads[0].items()}
    stat_difference = max(relative(s16, s32) for s32, s16 in zip(*stats))
    measured(request, output_relative_difference=output_difference, gradient_cosines=cosines,
             running_stat_relative_difference=stat_difference)
    assert output_difference < tolerance
    assert not np.array_equal(outputs[0], outputs[1])  # it did compute in 16 bits
    for name, value in cosines.items():
        assert value > 1 - 2 * tolerance, (name, value)
    assert all(s.dtype == np.float32 for s in stats[1])
    assert stat_difference < 3 * tolerance


def _grads(block, params, x, weights, factor):
    with autograd.record():
        loss = (block(x) * weights).sum() * factor
    loss.backward()
    return {p.name: p.grad().asnumpy().copy() for p in params}


@needs_low
def test_loss_scaling_keeps_float16_gradients_and_recovers_from_overflow(request):
    mx.random.seed(4)
    net = small_network(CTX)
    net.hybridize(static_alloc=True, static_shape=True)
    low = low_precision_network(net, LOW, CTX)
    low.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(-1, 1, shape=(32, 3, 16, 16), ctx=CTX)
    weights = mx.nd.array(np.random.RandomState(1).normal(size=(32, 8)), ctx=CTX)
    params = [p for p in net.collect_params().values() if p.grad_req != "null" and "conv" in p.name]
    running = [p for p in net.collect_params().values() if p.name.endswith(("running_mean", "running_var"))]
    start = [p.data().copy() for p in running]

    # a loss so small that its gradients fall below float16's smallest subnormal (6e-8)
    tiny, scale = 2.0 ** -30, 2.0 ** 24
    reference = _grads(net, params, x, weights, tiny)  # float32
    plain = _grads(low, params, x, weights, tiny)
    scaled = {k: v / scale for k, v in _grads(low, params, x, weights, tiny * scale).items()}
    for p, value in zip(running, start):
        p.set_data(value)
    nonzero_unscaled = {k: float(np.count_nonzero(v)) / v.size for k, v in plain.items()}
    cosines = {k: cosine(scaled[k], g) for k, g in reference.items()}

    # overflow: the scaled gradients are not finite; each halving of the scale is a skipped step,
    # until they fit (the trainer's rule, recognition.engine.trainer)
    init = 2.0 ** 40 if LOW == "float16" else 2.0 ** 130  # beyond float16's 65504 / float32's 3.4e38
    scaler = DynamicLossScaler(init_scale=init, growth_interval=1000)
    halvings = 0
    while True:
        grads = _grads(low, params, x, weights, scaler.scale)
        finite = all(np.isfinite(g).all() for g in grads.values())
        scaler.update(finite)
        if finite:
            break
        halvings += 1
        assert halvings < 200 and not scaler.at_minimum
    for p, value in zip(running, start):
        p.set_data(value)
    unscaled = {k: v / scaler.scale for k, v in grads.items()}
    after_overflow = {k: cosine(unscaled[k], reference[k] / tiny) for k in reference}
    measured(request, nonzero_fraction_unscaled=nonzero_unscaled, scaled_gradient_cosines=cosines,
             overflow_halvings=halvings, scale_after_overflow=scaler.scale,
             cosines_after_overflow=after_overflow)
    if LOW == "float16":
        assert max(nonzero_unscaled.values()) < 0.05, nonzero_unscaled  # underflowed to zero unscaled
    for name, value in cosines.items():
        assert value > 0.98, (name, value)
    assert halvings >= 1 and scaler.scale < init
    for name, value in after_overflow.items():
        assert value > 0.98, (name, value)


def _backbone_and_head(ctx, classes):
    from recognition.losses import get_loss
    net = get_model("mobilefacenet")
    net.initialize(default_initializer(), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    with autograd.train_mode():
        dim = net(mx.nd.zeros((2, 3, 112, 112), ctx=ctx)).shape[1]
    head = get_loss("arcface", num_classes=classes, embedding_size=dim)
    head.initialize(mx.init.Normal(0.01), ctx=ctx)
    head.hybridize(static_alloc=True, static_shape=True)
    return net, head


def _all_params(net, head):
    return [p for block in (net, head) for p in block.collect_params().values()]


def test_float32_step_on_the_gpu_equals_the_cpu(request):
    classes, batch = 1000, 16
    rng = np.random.RandomState(5)
    data = rng.uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32)
    labels = rng.randint(0, classes, batch).astype(np.float32)
    mx.random.seed(5)
    runs = {}
    cpu_net, cpu_head = _backbone_and_head(mx.cpu(), classes)
    initial = [p.data().asnumpy().copy() for p in _all_params(cpu_net, cpu_head)]
    for name, ctx in (("cpu", mx.cpu()), ("gpu", CTX)):
        net, head = (cpu_net, cpu_head) if name == "cpu" else _backbone_and_head(ctx, classes)
        params = _all_params(net, head)
        assert [p.shape for p in params] == [v.shape for v in initial]
        for p, value in zip(params, initial):  # the same starting point, BatchNorm statistics included
            p.set_data(mx.nd.array(value, ctx=ctx))
        trainer = gluon.Trainer([p for p in params if p.grad_req != "null"], "sgd",
                                {"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4})
        with autograd.record():
            embeddings = net(mx.nd.array(data, ctx=ctx))
            loss = head(embeddings, mx.nd.array(labels, ctx=ctx))
        loss.backward()
        trainer.step(batch)
        assert params[0].data().context == ctx
        runs[name] = {"loss": loss.asnumpy(), "embeddings": embeddings.asnumpy(),
                      "params": [p.data().asnumpy() for p in params], "names": [p.name for p in params]}
    cpu, gpu = runs["cpu"], runs["gpu"]
    names = cpu["names"]
    # the update (new - initial) of every parameter, and the moved BatchNorm statistics
    updates = {n: relative(g - i, c - i) for n, i, c, g in zip(names, initial, cpu["params"], gpu["params"])
               if np.abs(c - i).max() > 0}
    unchanged = [n for n, i, c, g in zip(names, initial, cpu["params"], gpu["params"]) if np.abs(c - i).max() == 0
                 and np.abs(g - i).max() > 1e-7]
    worst = max(updates, key=updates.get)
    measured(request, loss_cpu=float(cpu["loss"].mean()), loss_gpu=float(gpu["loss"].mean()),
             embedding_relative_difference=relative(gpu["embeddings"], cpu["embeddings"]),
             update_relative_difference_worst={worst: updates[worst]},
             update_relative_difference_median=float(np.median(list(updates.values()))),
             parameters_compared=len(updates), nvidia_tf32_override=os.environ.get("NVIDIA_TF32_OVERRIDE"))
    np.testing.assert_allclose(gpu["loss"], cpu["loss"], rtol=1e-3, atol=1e-3)
    assert relative(gpu["embeddings"], cpu["embeddings"]) < 1e-3
    assert len(updates) > len(names) // 2
    assert not unchanged, unchanged
    assert updates[worst] < 1e-2, (worst, updates[worst])


@pytest.fixture(scope="module")
def trained(sample_rec, tmp_path_factory):
    """The trainer on one device (the GPU: float16; the CPU stand-in: bfloat16 or float32)."""
    from recognition.engine.config import load_config
    from recognition.engine.trainer import train
    precision = "float16" if HAS_GPU else (LOW or "float32")
    out = tmp_path_factory.mktemp("gpu_run")
    config = load_config(None, [f"data.root={sample_rec}", f"output.dir={out}", "train.max_steps=6",
                                "model.name=mobilefacenet", "data.batch_size=16", "data.num_workers=1",
                                "train.log_every=1", "loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}",
                                "optimizer.lr=0.01", "optimizer.warmup_steps=0", f"train.precision={precision}"])
    results, net, _ = train(config, return_model=True)
    return {"precision": precision, "out": out, "results": results, "net": net}


def test_trainer_trains_float16_on_one_gpu(trained, request):
    results, net = trained["results"], trained["net"]
    params = list(net.collect_params().values())
    measured(request, precision=trained["precision"], results=results)
    assert results["steps"] == 6
    assert results["skipped_updates"] < 6  # an early overflow at the first loss scale may skip a step
    assert all(p.list_ctx() == [CTX] for p in params)  # the trainer's placement: mx.gpu(local_rank)
    assert all(p.data().dtype == np.float32 and np.isfinite(p.data().asnumpy()).all() for p in params)
    out = trained["out"]
    assert "amp_cast" not in (out / "model-symbol.json").read_text()  # exported: a plain float32 model
    exported = mx.nd.load(str(out / "model-0001.params"))
    assert exported and all(v.dtype == np.float32 for v in exported.values())


def _small_bin(path, pairs=20):
    from recognition.cli.make_bin import load_face
    from recognition.data.align import read_landmarks
    from recognition.data.binfile import write_bin
    from recognition.data.record import encode_jpeg
    landmarks = read_landmarks(os.path.join(SAMPLE, "landmarks.txt"))
    with open(os.path.join(SAMPLE, "pairs.txt")) as f:
        lines = [line.split() for line in f if line.strip()][1:]
    jpegs, issame = [], []
    # same-person pairs (first in pairs.txt) and different-person ones (last) in turn, as in LFW's folds
    for fields in [f for two in zip(lines[:pairs], lines[-pairs:]) for f in two]:
        names = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
                [(fields[0], fields[1]), (fields[2], fields[3])]
        for name, number in names:
            rel = f"{name}/{name}_{int(number):04d}.jpg"
            jpegs.append(encode_jpeg(load_face(os.path.join(SAMPLE, "images", rel), landmarks[rel])))
        issame.append(len(fields) == 3)
    write_bin(str(path), jpegs, issame)
    return str(path)


def test_exported_model_embeds_and_verifies_alike_on_gpu_and_cpu(trained, tmp_path, capsys, request):
    from recognition.cli import verify as verify_tool
    from recognition.data.binfile import load_bin
    from recognition.evaluation import embed_images
    from recognition.evaluation.embed import load_exported_model
    spec = f"{trained['out'] / 'model'},1"
    bin_path = _small_bin(tmp_path / "pairs.bin")
    images, _ = load_bin(bin_path, 112, progress=False)
    embeddings = {}
    for name, ctx in (("gpu", CTX), ("cpu", mx.cpu())):
        net, epoch = load_exported_model(spec, ctx)
        assert epoch == 1
        embeddings[name] = embed_images(net, images, batch_size=32)
    embedding_difference = relative(embeddings["gpu"], embeddings["cpu"])
    scores = {}
    for name, extra in (("gpu", []), ("cpu", ["--cpu"])):  # verify.py takes the GPU when there is one
        verify_tool.main(["--model", spec, "--bin", bin_path, "--json", "--nfolds", "5", "--no-progress"] + extra)
        scores[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"]
    measured(request, embedding_relative_difference=embedding_difference,
             accuracy={k: v["accuracy"] for k, v in scores.items()}, xnorm={k: v["xnorm"] for k, v in scores.items()})
    assert embedding_difference < 1e-3
    assert abs(scores["gpu"]["accuracy"] - scores["cpu"]["accuracy"]) <= 0.05
    assert abs(scores["gpu"]["xnorm"] - scores["cpu"]["xnorm"]) <= 1e-3 * abs(scores["cpu"]["xnorm"])
