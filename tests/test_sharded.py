"""Sharded classifier and Partial FC, single process (size 1): the sharded head equals the ordinary
head (values and gradients of embeddings, weights, bias, alpha; AdaCos scale; predictions), and
Partial FC with r < 1 equals an independent float64 NumPy transcription of the softmax over the
sampled classes, with gradients from central finite differences of that transcription.
The 2-worker checks are in test_sharded_horovod.py."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from recognition.losses import get_loss
from recognition.losses.sharded import (ShardedClassifier, get_sharded_loss, num_sampled, sample_classes,
                                        shard_range)

C, D, B = 11, 6, 7


# ---------------------------------------------------------------- NumPy reference (float64)
def np_unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_logits(name, params, x, y, w, b=None):
    """Logits (B, n) of the head ``name`` for labels y given as columns of w."""
    if name in ("softmax", "km"):
        return x @ w.T + (0 if b is None else b)
    if name == "l2softmax":
        return params.get("alpha", 16.0) * np_unit(x) @ w.T + (0 if b is None else b)
    cos = np_unit(x) @ np_unit(w).T
    defaults = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.35), "margin": (1.0, 0.5, 0.0)}[name]
    m1, m2, m3 = (params.get(k, v) for k, v in zip(("m1", "m2", "m3"), defaults))
    logits = cos.copy()
    theta_t = (math.pi - m2) / m1
    for i, label in enumerate(y):
        theta = math.acos(cos[i, label])
        if m1 * theta + m2 > math.pi:  # insightface's fallback past pi
            logits[i, label] = cos[i, label] - m3 - ((m1 - 1) * theta_t + m2) * math.sin(theta_t)
        else:
            logits[i, label] = math.cos(m1 * theta + m2) - m3
    return params.get("s", 64.0) * logits


def np_losses(name, params, x, y, w, b=None):
    z = np_logits(name, params, x, y, w, b)
    top = z.max(axis=1, keepdims=True)
    log_p = z[np.arange(len(y)), y] - top[:, 0] - np.log(np.exp(z - top).sum(axis=1))
    if name == "km":
        return -log_p / (params.get("gamma", 1.0) * np.exp(log_p) + 1.0) ** 2
    return -log_p


def np_restricted(name, params, x, y, w, classes, g):
    """Loss (B,) of the head restricted to the global class ids ``classes`` (sorted), and the
    finite-difference gradients of sum_i g_i L_i w.r.t. x (B, D) and the full w (C, D) (zero rows
    outside ``classes``)."""
    classes = np.asarray(classes)
    column = np.searchsorted(classes, y)
    assert np.array_equal(classes[column], y), "every target must be sampled"

    def objective(xv, wv):
        return float(g @ np_losses(name, params, xv, column, wv[classes]))

    eps = 1e-6
    grads = []
    for array in (x, w):
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            if array is w and index[0] not in set(classes.tolist()):
                continue
            up, down = array.copy(), array.copy()
            up[index] += eps
            down[index] -= eps
            args_up = (up, w) if array is x else (x, up)
            args_down = (down, w) if array is x else (x, down)
            grad[index] = (objective(*args_up) - objective(*args_down)) / (2 * eps)
        grads.append(grad)
    return np_losses(name, params, x, column, w[classes]), grads[0], grads[1]


# ---------------------------------------------------------------- helpers
def data(seed=0):
    rng = np.random.RandomState(seed)
    x, w = rng.normal(size=(B, D)), rng.normal(size=(C, D)) * 0.5
    y = rng.randint(0, C, size=B)
    return x, y, w, rng.normal(size=C) * 0.1, rng.uniform(0.5, 1.5, size=B)


def run(head, x, y, g, training=True):
    """(loss, x grad, weight grad, bias grad or None, alpha grad or None) of head(x, y) with head
    gradient g, after update_state as the trainer calls it."""
    xx, yy = mx.nd.array(x), mx.nd.array(y)
    xx.attach_grad()
    with autograd.record(train_mode=training):
        if hasattr(head, "update_state"):
            head.update_state(xx.detach(), yy)
        loss = head(xx, yy)
    loss.backward(mx.nd.array(g))
    grad = lambda p: None if p is None or p.grad_req == "null" else p.grad().asnumpy()  # noqa: E731
    return (loss.asnumpy(), xx.grad.asnumpy(), head.weight.grad().asnumpy(), grad(getattr(head, "bias", None)),
            grad(getattr(head, "alpha", None)))


def build(factory, name, params, w, b, **extra):
    head = factory(name, num_classes=C, embedding_size=D, **params, **extra)
    head.initialize()
    if isinstance(head, ShardedClassifier):
        head.set_full_weight(w, b)
    else:
        head.weight.set_data(mx.nd.array(w))
        if head.bias is not None:
            head.bias.set_data(mx.nd.array(b))
    return head


HEADS = {
    "softmax": ("softmax", {}),
    "softmax_bias": ("softmax", {"bias": True}),
    "arcface": ("arcface", {"s": 16.0}),
    "cosface": ("cosface", {"s": 16.0}),
    "combined": ("margin", {"s": 16.0, "m1": 1.1, "m2": 0.2, "m3": 0.1}),
    "combined_past_pi": ("margin", {"s": 8.0, "m1": 1.6, "m2": 0.9, "m3": 0.0}),
    "l2softmax_trainable": ("l2softmax", {"alpha": 6.0, "trainable_alpha": True, "bias": True}),
    "adacos_dynamic": ("adacos", {}),
    "adacos_fixed": ("adacos", {"dynamic": False}),
    "km": ("km", {"gamma": 2.0}),
    "km_detached": ("km", {"gamma": 2.0, "detach_weight": True}),
}


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("key", list(HEADS))
def test_size_one_sharded_equals_ordinary_head(key):
    name, params = HEADS[key]
    x, y, w, b, g = data()
    ordinary = build(get_loss, name, params, w, b)
    sharded = build(get_sharded_loss, name, params, w, b)
    expected, got = run(ordinary, x, y, g), run(sharded, x, y, g)
    for what, e, s in zip(("loss", "x grad", "weight grad", "bias grad", "alpha grad"), expected, got):
        assert (e is None) == (s is None), what
        if e is not None:
            np.testing.assert_allclose(s, e, rtol=1e-4, atol=2e-5, err_msg=what)
    assert np.abs(got[2]).sum() > 0
    if name == "adacos":
        assert sharded.scale == pytest.approx(ordinary.scale, rel=1e-5)
        if params.get("dynamic", True):
            assert sharded.scale != pytest.approx(math.sqrt(2) * math.log(C - 1))  # it really moved
    with autograd.pause():
        predicted = sharded.predict_class(mx.nd.array(x)).asnumpy()
        assert np.array_equal(predicted, ordinary.predict(mx.nd.array(x)).asnumpy().argmax(axis=1))


@pytest.mark.parametrize("key", ["softmax", "arcface", "cosface", "km"])
def test_size_one_matches_numpy(key):
    name, params = HEADS[key]
    x, y, w, b, g = data(1)
    loss, x_grad, w_grad, _, _ = run(build(get_sharded_loss, name, params, w, b), x, y, g)
    ref_loss, ref_x, ref_w = np_restricted(name, params, x, y, w, np.arange(C), g)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x_grad, ref_x, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(w_grad, ref_w, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name,params", [("arcface", {"s": 16.0}), ("softmax", {})])
def test_partial_fc_equals_numpy_over_sampled_classes(name, params):
    x, y, w, b, g = data(2)
    head = build(get_sharded_loss, name, params, w, b, sample_ratio=0.5, seed=3)
    loss, x_grad, w_grad, _, _ = run(head, x, y, g)
    sampled = head.last_sampled
    assert len(sampled) == max(num_sampled(C, 0.5), len(set(y.tolist())))
    assert set(y.tolist()) <= set(sampled.tolist()) and len(sampled) < C
    ref_loss, ref_x, ref_w = np_restricted(name, params, x, y, w, sampled, g)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x_grad, ref_x, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(w_grad, ref_w, rtol=1e-3, atol=1e-4)
    unsampled = np.setdiff1d(np.arange(C), sampled)
    assert np.all(w_grad[unsampled] == 0)  # only the sampled rows get gradients
    assert head.step == 1
    # outside training all classes are used (and nothing is sampled)
    full_loss, *_ = run(head, x, y, g, training=False)
    np.testing.assert_allclose(full_loss, np_losses(name, params, x, y, w), rtol=1e-4, atol=1e-5)
    assert head.last_sampled is None and head.step == 1


def test_partial_fc_ratio_one_equals_full_head():
    x, y, w, b, g = data(4)
    full = run(build(get_loss, "arcface", {"s": 16.0}, w, b), x, y, g)
    pfc = run(build(get_sharded_loss, "arcface", {"s": 16.0}, w, b, sample_ratio=1.0), x, y, g)
    for e, s in zip(full[:3], pfc[:3]):
        np.testing.assert_allclose(s, e, rtol=1e-4, atol=2e-5)


def test_sample_classes_positives_first_deterministic():
    positives = np.array([7, 2, 7, 40])
    pick = lambda seed, step: sample_classes(positives, 50, 10, np.random.default_rng([seed, 0, step]))  # noqa: E731
    first = pick(1, 0)
    assert len(first) == 10 and len(set(first.tolist())) == 10
    assert {2, 7, 40} <= set(first.tolist()) and np.all(np.diff(first) > 0)
    assert np.array_equal(first, pick(1, 0))  # same seed and step: same sample
    assert not np.array_equal(first, pick(1, 1)) and not np.array_equal(first, pick(2, 0))
    # more positives than the budget: all positives, nothing else
    many = sample_classes(np.arange(0, 30, 2), 50, 10, np.random.default_rng(0))
    assert np.array_equal(many, np.arange(0, 30, 2))
    assert num_sampled(1000, 0.1) == 100 and num_sampled(1001, 0.1) == 101 and num_sampled(5, 0.01) == 1


def test_partial_fc_sampling_follows_seed_and_step():
    x, y, w, b, g = data(5)
    samples = {}
    for seed in (0, 1):
        head = build(get_sharded_loss, "softmax", {}, w, b, sample_ratio=0.6, seed=seed)
        samples[seed] = []
        for _ in range(3):
            run(head, x[:1], y[:1], g[:1])
            samples[seed].append(head.last_sampled.copy())
        head.set_step(1)
        run(head, x[:1], y[:1], g[:1])
        assert np.array_equal(head.last_sampled, samples[seed][1])  # resumable
    assert any(not np.array_equal(a, b) for a, b in zip(samples[0], samples[1]))
    assert not np.array_equal(samples[0][0], samples[0][1])


def test_shard_range():
    assert [shard_range(11, r, 2) for r in range(2)] == [(0, 5), (5, 11)]
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert shard_range(7, 0, 1) == (0, 7)
    with pytest.raises(ValueError, match="cannot shard"):
        shard_range(2, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 2, 2)


def test_parameters_and_contract():
    head = get_sharded_loss("l2softmax", C, D, alpha=5.0, trainable_alpha=True, bias=True)
    head.initialize()
    assert head.weight.shape == (C, D) and head.bias.shape == (C,)
    assert sorted(head.local_params().keys()) == sorted([head.weight.name, head.bias.name])
    assert list(head.shared_params().keys()) == [head.alpha.name]
    assert head.alpha.grad_req == "write" and float(head.alpha.data().asscalar()) == 5.0
    x, y, w, b, g = data(6)
    head.set_full_weight(w, b)
    np.testing.assert_allclose(head.full_weight().asnumpy(), w, rtol=1e-6)
    adacos = get_sharded_loss("adacos", C, D)
    assert adacos.s.grad_req == "null" and list(adacos.shared_params().keys()) == [adacos.s.name]
    assert not hasattr(get_sharded_loss("arcface", C, D), "scale")  # as the ordinary heads: adacos only


@pytest.mark.parametrize("name,params,message", [
    ("triplet", {}, "no shardable classifier"),
    ("center", {}, "no shardable classifier"),
    ("arcface", {"center": {"lambda_c": 0.1}}, "center"),
    ("arcface", {"sample_ratio": 0.0}, "sample_ratio"),
    ("arcface", {"sample_ratio": 1.5}, "sample_ratio"),
    ("arcface", {"margin": 0.5}, "unknown parameter"),
    ("nope", {}, "unknown loss"),
])
def test_bad_configuration(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_sharded_loss(name, C, D, **params)


def test_checkpoint_blocks_read_back_across_files_and_a_damaged_one_is_named(tmp_path):
    """Resharding reads a checkpoint's classifier blocks (one file per saving rank) by row range: rows
    spanning two files come back as written; a damaged file is named with MXNet's failed check."""
    from recognition.engine.checkpoint import BLOCK_FILE
    from recognition.engine.shards import _BlockReader
    weight = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    ranges = [(0, 4), (4, 7)]
    for k, (first, last) in enumerate(ranges):
        mx.nd.save(str(tmp_path / BLOCK_FILE.format(k)), {"weight": mx.nd.array(weight[first:last])})
    np.testing.assert_array_equal(_BlockReader(str(tmp_path), ranges).rows(2, 6)["weight"].asnumpy(), weight[2:6])
    damaged = tmp_path / BLOCK_FILE.format(1)
    damaged.write_bytes(damaged.read_bytes()[:20])
    with pytest.raises(ValueError) as err:
        _BlockReader(str(tmp_path), ranges).rows(2, 6)
    assert str(damaged) in str(err.value) and "Invalid NDArray file format" in str(err.value), err.value
