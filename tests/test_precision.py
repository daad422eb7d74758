"""bfloat16 training path: the rewritten graph, its numbers against float32, and the trainer with it."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from recognition.engine.config import load_config
from recognition.engine.trainer import train
from recognition.models import default_initializer, get_model
from recognition.models.embedding import PReLU, batch_norm
from recognition.models.precision import BFLOAT16, bfloat16_network, bfloat16_supported, bfloat16_symbol

needs_bf16 = pytest.mark.skipif(not bfloat16_supported(),
                                reason="this CPU/MXNet build cannot run bfloat16 convolutions (MKL-DNN, AVX-512)")


def small_network():
    # one BatchNorm only: a BatchNorm followed by another one (through per-channel or positively
    # homogeneous layers) has a mathematically zero scale/shift gradient, which bf16 turns into noise
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, in_channels=3, use_bias=False), batch_norm(8), PReLU(8),
            gluon.nn.Conv2D(8, 3, in_channels=8, groups=8, use_bias=False), PReLU(8),
            gluon.nn.Dense(6, in_units=8 * 4 * 4))
    net.initialize(default_initializer())
    return net


def node_ops(symbol):
    return [node["op"] for node in json.loads(symbol.tojson(remove_amp_cast=False))["nodes"]]


def test_rewritten_graph_keeps_parameters_and_casts_only_at_the_edges():
    net = small_network()
    symbol = net(mx.sym.var("data"))
    low = bfloat16_symbol(symbol)
    assert low.list_arguments() == symbol.list_arguments()
    assert low.list_auxiliary_states() == symbol.list_auxiliary_states()
    ops = node_ops(low)
    # data once; the weights of 2 convolutions, 4 per-channel PReLU convolutions and the FC layer
    # (weight + bias); the output once. BatchNorm parameters stay float32: no cast.
    assert ops.count("amp_cast") == 1 + 2 + 4 + 2 + 1
    assert ops.count("BatchNorm") == 1
    arg_types, out_types, aux_types = low.infer_type(data="float32")
    assert set(arg_types) == {np.float32} and set(aux_types) == {np.float32}
    assert out_types == [np.float32]
    internals = low.get_internals()
    conv_outputs = [name for name in internals.list_outputs() if name.endswith("_fwd_output") and "conv" in name]
    assert conv_outputs
    for name in conv_outputs:
        _, (dtype,), _ = internals[name].infer_type(data="float32")
        assert np.dtype(dtype) == BFLOAT16, name


@needs_bf16
def test_bfloat16_network_matches_float32_within_bfloat16_precision():
    mx.random.seed(3)
    net = small_network()
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(-1, 1, shape=(16, 3, 8, 8))
    weights = mx.nd.array(np.random.RandomState(0).normal(size=(16, 6)))
    low = bfloat16_network(net)
    low.hybridize(static_alloc=True, static_shape=True)
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    running = [p for p in net.collect_params().values() if p.name.endswith("running_mean")]
    outputs, grads, stats = [], [], []
    for block in (net, low):
        start = [p.data().copy() for p in running]
        with autograd.record():
            y = block(x)
            loss = (y * weights).sum()
        loss.backward()
        outputs.append(y.asnumpy())
        assert y.dtype == np.float32
        grads.append({p.name: p.grad().asnumpy().copy() for p in params})
        stats.append([p.data().asnumpy() for p in running])
        for p, value in zip(running, start):
            p.set_data(value)
    scale = np.abs(outputs[0]).max()
    assert np.abs(outputs[1] - outputs[0]).max() < 0.03 * scale
    assert not np.array_equal(outputs[0], outputs[1])  # it did compute in bfloat16
    for name, g32 in grads[0].items():
        g16 = grads[1][name]
        assert g16.dtype == np.float32, name
        cosine = float((g32 * g16).sum() / (np.linalg.norm(g32) * np.linalg.norm(g16)))
        assert cosine > 0.98, (name, cosine)
    for s32, s16 in zip(*stats):  # the bf16 forward moves the float32 running statistics alike
        assert np.abs(s32).max() > 0
        np.testing.assert_allclose(s16, s32, rtol=0.03, atol=0.03 * np.abs(s32).max())


@needs_bf16
def test_bfloat16_training_updates_the_shared_float32_parameters():
    net = get_model("mobilefacenet")
    net.initialize(default_initializer())
    net.hybridize(static_alloc=True, static_shape=True)
    with autograd.train_mode():
        net(mx.nd.zeros((2, 3, 112, 112)))
    low = bfloat16_network(net)
    low.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    first = next(p for p in net.collect_params().values() if p.grad_req != "null")
    before = first.data().asnumpy().copy()
    x = mx.nd.random.uniform(0, 255, shape=(4, 3, 112, 112))
    target = mx.nd.array(np.random.RandomState(1).normal(size=(4, 128)))
    for _ in range(2):
        with autograd.record():
            loss = ((low(x) - target) ** 2).mean()
        loss.backward()
        trainer.step(4)
    assert first.data().dtype == np.float32 and first.grad().dtype == np.float32
    assert not np.allclose(first.data().asnumpy(), before)
    with autograd.predict_mode():  # evaluation in bf16 and in float32 agree after training
        b = low(x).asnumpy()
        a = net(x).asnumpy()  # last: float32 inference re-lays the weights out for MKL-DNN
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


@needs_bf16
def test_trainer_runs_bfloat16_and_saves_float32(sample_rec, tmp_path):
    out = tmp_path / "run"
    config = load_config(None, [f"data.root={sample_rec}", f"output.dir={out}", "train.max_steps=3",
                                "model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=1",
                                "train.log_every=1", "loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}",
                                "optimizer.lr=0.01", "train.precision=bfloat16"])
    results, net, _ = train(config, return_model=True)
    assert results["steps"] == 3 and results["skipped_updates"] == 0
    exported = mx.nd.load(str(out / "model-0001.params"))
    assert exported and all(v.dtype == np.float32 for v in exported.values())
    assert "amp_cast" not in (out / "model-symbol.json").read_text()  # an ordinary float32 model
    loaded = gluon.SymbolBlock.imports(str(out / "model-symbol.json"), ["data"], str(out / "model-0001.params"))
    x = mx.nd.random.uniform(0, 255, shape=(2, 3, 112, 112))
    np.testing.assert_allclose(loaded(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-4)


def test_unknown_precision_is_refused(sample_rec, tmp_path):
    from recognition.engine.config import ConfigError
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, [f"data.root={sample_rec}", "train.precision=int8"])
