"""Backbones: shapes, parameter counts against insightface's definitions, the PReLU formulation,
hybridize / export round trips, input normalisation inside the network, gluoncv trunks."""
import json
import os

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd

from recognition.models import (MODEL_NAMES, count_params, default_initializer, forward_flops, forward_macs,
                                get_model)
from recognition.models.embedding import NativePReLU, PReLU

# Reference parameter counts, transcribed layer by layer from the reference definitions (the
# sum of torch's ``p.numel()`` over parameters, i.e. without BatchNorm running statistics):
# - iresnet*: insightface recognition/arcface_torch/backbones/iresnet.py, num_features=512, 112x112
#   (arcface_torch's own summaries quote 43.6M for r50 and 65.2M for r100);
# - mobilefacenet: insightface recognition/symbol/fmobilefacenet.py ('y1') with symbol_utils.get_fc1
#   'GDC' and emb_size 128 (MXNet arguments: FC with bias, fc1 BatchNorm gamma fixed but present);
# - mobilefacenet scale=2, 512-d: arcface_torch backbones/mobilefacenet.py get_mbf(num_features=512)
#   (its FC has no bias; ours keeps insightface's bias: +512).
REFERENCE_PARAMS = {
    "iresnet18": 24_025_600,
    "iresnet34": 34_139_328,
    "iresnet50": 43_590_848,
    "iresnet100": 65_156_160,
    "mobilefacenet": 1_003_264,
}
ARCFACE_TORCH_MBF_512 = 2_059_520
# Multiply-accumulates per 112x112 image (conv + FC) from the same transcriptions; MobileFaceNet's
# paper (Chen et al. 2018, Table 2) quotes 221M MAdds and arcface_torch's flops tool 2.6G for r18.
REFERENCE_MACS = {"mobilefacenet": 220_965_376, "iresnet18": 2_609_954_816}


def build(name, **kwargs):
    mx.random.seed(7)
    net = get_model(name, **kwargs)
    net.initialize(default_initializer())
    return net


def faces(n=2, seed=0):
    return mx.nd.array(np.random.RandomState(seed).uniform(0, 255, (n, 3, 112, 112)).astype(np.float32))


def randomize_bn_statistics(net, seed=1):
    """Non-trivial running statistics, so inference-mode comparisons exercise them."""
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        if name.endswith("running_mean"):
            param.set_data(mx.nd.array(rng.normal(0, 0.1, param.shape)))
        elif name.endswith("running_var"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 2.0, param.shape)))


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_insightface(name):
    count = count_params(get_model(name))
    assert abs(count - REFERENCE_PARAMS[name]) <= 0.01 * REFERENCE_PARAMS[name]
    assert count == REFERENCE_PARAMS[name]  # the layouts are the same, so the count is exact


def test_mobilefacenet_scale2_is_arcface_torch_mbf():
    count = count_params(get_model("mobilefacenet", scale=2, embedding_size=512))
    assert count - ARCFACE_TORCH_MBF_512 == 512  # insightface's FC bias


def test_count_excludes_running_statistics_and_relu_drops_alphas():
    net = get_model("iresnet18")
    names = list(net.collect_params().keys())
    assert any(n.endswith("running_mean") for n in names)
    alphas = sum(p.shape[0] for n, p in net.collect_params().items() if n.endswith("alpha"))
    assert count_params(get_model("iresnet18", act="relu")) == REFERENCE_PARAMS["iresnet18"] - alphas


@pytest.mark.parametrize("name", sorted(REFERENCE_MACS))
def test_forward_macs(name):
    assert forward_macs(get_model(name)) == REFERENCE_MACS[name]
    assert forward_flops(name) == 2 * REFERENCE_MACS[name]


@pytest.mark.parametrize("name,dim", [("mobilefacenet", 128), ("iresnet18", 512)])
def test_output_shape_default_embedding(name, dim):
    net = build(name)
    out = net(faces(2))
    assert out.shape == (2, dim)
    assert np.isfinite(out.asnumpy()).all()


def test_mobilefacenet_then_iresnet_in_one_process():
    """Regression: MXNet 1.9.1's MKL-DNN BatchNorm cache confused the GDC head's (N, 512, 1, 1)
    BatchNorm with a later 2-D (N, 512) one and crashed; every embedding BatchNorm now runs 4-D."""
    x = faces(2)
    assert build("mobilefacenet")(x).asnumpy().shape == (2, 128)
    assert build("iresnet18")(x).asnumpy().shape == (2, 512)


@pytest.mark.parametrize("name", ["iresnet34", "iresnet50", "iresnet100"])
def test_output_shape_larger_models_symbolic(name):
    out = get_model(name, embedding_size=256)(mx.sym.var("data"))
    _, out_shapes, _ = out.infer_shape(data=(2, 3, 112, 112))
    assert out_shapes == [(2, 256)]


def test_unknown_name_lists_models():
    with pytest.raises(ValueError) as err:
        get_model("resnet9000")
    for name in MODEL_NAMES:
        assert name in str(err.value)
    assert "gluoncv:" in str(err.value)


def numpy_prelu(x, alpha):
    a = alpha.reshape(1, -1, 1, 1)
    return np.where(x > 0, x, a * x)


@pytest.mark.parametrize("block_type", [PReLU, NativePReLU])
def test_prelu_value_and_gradients(block_type):
    rng = np.random.RandomState(3)
    x_np = rng.normal(size=(4, 5, 3, 3)).astype(np.float32)
    alpha_np = rng.uniform(0.05, 0.6, 5).astype(np.float32)
    head_np = rng.normal(size=x_np.shape).astype(np.float32)  # upstream gradient
    block = block_type(5)
    block.initialize()
    block.alpha.set_data(mx.nd.array(alpha_np))
    x = mx.nd.array(x_np)
    x.attach_grad()
    with autograd.record():
        y = block(x)
    y.backward(mx.nd.array(head_np))
    np.testing.assert_allclose(y.asnumpy(), numpy_prelu(x_np, alpha_np), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x.grad.asnumpy(), np.where(x_np > 0, 1.0, alpha_np.reshape(1, -1, 1, 1)) * head_np,
                               rtol=1e-5, atol=1e-6)
    grad_alpha = (head_np * np.minimum(x_np, 0)).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(block.alpha.grad().asnumpy(), grad_alpha, rtol=1e-4, atol=1e-5)


def test_prelu_default_alpha_is_quarter():
    block = PReLU(3)
    block.initialize(default_initializer())  # a global initialiser must not override alpha
    np.testing.assert_array_equal(block.alpha.data().asnumpy(), np.full(3, 0.25, np.float32))


def test_input_is_normalised_inside_the_network():
    net = build("mobilefacenet")
    seen = []
    stem_conv = net.trunk[0][0]
    stem_conv.register_forward_hook(lambda block, inputs, output: seen.append(inputs[0].asnumpy()))
    x = faces(2)
    net(x)
    np.testing.assert_allclose(seen[0], (x.asnumpy() - 127.5) / 128.0, rtol=1e-6, atol=1e-6)
    # mid-grey is the zero input: the bias-free stem convolution outputs exactly zero
    net(mx.nd.full((1, 3, 112, 112), 127.5))
    assert not seen[1].any()
    assert not stem_conv(mx.nd.array(seen[1])).asnumpy().any()


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_hybridized_equals_imperative(name):
    net = build(name, dropout=0.0)
    randomize_bn_statistics(net)
    x = faces(2, seed=4)
    with autograd.record(train_mode=True):  # batch statistics
        train_imperative = net(x)
    infer_imperative = net(x)
    net.hybridize(static_alloc=True, static_shape=True)
    with autograd.record(train_mode=True):
        train_hybrid = net(x)
    infer_hybrid = net(x)
    np.testing.assert_allclose(train_hybrid.asnumpy(), train_imperative.asnumpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(infer_hybrid.asnumpy(), infer_imperative.asnumpy(), rtol=1e-3, atol=1e-4)
    assert np.abs(infer_imperative.asnumpy() - train_imperative.asnumpy()).max() > 1e-3  # BN modes differ


def test_export_round_trip(tmp_path):
    net = build("mobilefacenet")
    randomize_bn_statistics(net)
    net.hybridize(static_alloc=True, static_shape=True)
    x = faces(2, seed=5)
    expected = net(x).asnumpy()
    prefix = str(tmp_path / "model")
    net.export(prefix, epoch=3)
    symbol_file, params_file = prefix + "-symbol.json", prefix + "-0003.params"
    assert os.path.exists(symbol_file) and os.path.exists(params_file)
    graph = json.load(open(symbol_file))
    inputs = [graph["nodes"][i]["name"] for i in graph["arg_nodes"]
              if not graph["nodes"][i]["name"].startswith(net.prefix)]
    assert inputs == ["data"]
    assert len(graph["heads"]) == 1
    # the first operations on 'data' are insightface's normalisation
    first = next(n for n in graph["nodes"] if n["op"] != "null")
    assert first["op"] == "_minus_scalar" and float(first["attrs"]["scalar"]) == 127.5
    loaded = mx.gluon.SymbolBlock.imports(symbol_file, ["data"], params_file)
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_gluoncv_backbone_builds_and_trains():
    net = build("gluoncv:resnet18_v1b", embedding_size=64)
    names = list(net.collect_params().keys())
    assert not any("dense" in n or n.endswith("fc_weight") for n in names if "head" not in n)
    # resnet18_v1b at 112x112 ends at 512 x 4 x 4 -> FC 8192 -> 64
    assert net.head.fc.weight.shape == (64, 512 * 4 * 4)
    x = faces(2)
    with autograd.record():
        out = net(x)
    out.backward()
    assert out.shape == (2, 64)
    assert np.abs(net.trunk[0].weight.grad().asnumpy()).sum() > 0
    net.hybridize()
    assert net(x).shape == (2, 64)


def test_gluoncv_unknown_model():
    with pytest.raises(ValueError, match="no_such_net"):
        get_model("gluoncv:no_such_net")
