"""The sharded classifier under a real 2-process horovodrun (classes 0-4 on rank 0, 5-10 on rank 1;
uneven batch shares 5 + 3): losses and gradients (embeddings, weight blocks, bias, alpha), AdaCos
scale and predictions equal the ordinary head on the global batch; Partial FC with r = 1 equals the
full head and with r < 1 the float64 NumPy softmax over the union of the classes the ranks sampled;
three training steps with the trainer contract equal single-process training."""
import os
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))
sys.path.insert(0, HERE)

from conftest import run_worker_ranks  # noqa: E402
from sharded_worker import (C, D, HEADS, SHARES, TRAIN_OPT, TRAIN_STEPS, global_data, train_data,  # noqa: E402
                            train_init)
from test_sharded import np_restricted  # noqa: E402

from recognition.losses import get_loss  # noqa: E402
from recognition.losses.sharded import num_sampled  # noqa: E402

RANKS = len(SHARES)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_worker_ranks("sharded_worker.py", tmp_path_factory.mktemp("sharded"), RANKS)


def joined(ranks, key):
    return np.concatenate([r[key] for r in ranks])


def ordinary(name, params):
    """The ordinary head's loss, gradients, scale and predictions on the whole global batch."""
    x, y, g, w, bias = global_data()
    head = get_loss(name, num_classes=C, embedding_size=D, **params)
    head.initialize()
    head.weight.set_data(mx.nd.array(w))
    if getattr(head, "bias", None) is not None:
        head.bias.set_data(mx.nd.array(bias))
    xx, yy = mx.nd.array(x), mx.nd.array(y)
    xx.attach_grad()
    with autograd.record():
        if hasattr(head, "update_state"):
            head.update_state(xx.detach(), yy)
        loss = head(xx, yy)
    loss.backward(mx.nd.array(g))
    out = {"loss": loss.asnumpy(), "x_grad": xx.grad.asnumpy(), "w_grad": head.weight.grad().asnumpy(),
           "predicted": head.predict(xx).asnumpy().argmax(axis=1)}
    if getattr(head, "bias", None) is not None:
        out["b_grad"] = head.bias.grad().asnumpy()
    if name == "l2softmax":
        out["alpha_grad"] = head.alpha.grad().asnumpy()
    if name == "adacos":
        out["scale"] = np.array([head.scale])
    return out


def test_blocks(ranks):
    assert [int(r["size"]) for r in ranks] == [RANKS] * RANKS
    assert [tuple(r["softmax/range"]) for r in ranks] == [(0, 5), (5, 11)]


@pytest.mark.parametrize("key", [k for k, v in HEADS.items() if v[2] == 1.0])
def test_sharded_equals_ordinary_head(ranks, key):
    name, params, _ = HEADS[key]
    expected = ordinary(name, params)
    tolerance = dict(rtol=1e-4, atol=2e-5)
    for what in ("loss", "x_grad", "w_grad", "b_grad", "predicted"):
        if what in expected:
            np.testing.assert_allclose(joined(ranks, key + "/" + what), expected[what], err_msg=what, **tolerance)
        else:
            assert key + "/" + what not in ranks[0]
    if "alpha_grad" in expected:  # each rank's part through its block; DistributedTrainer sums them
        np.testing.assert_allclose(sum(r[key + "/alpha_grad"] for r in ranks), expected["alpha_grad"], **tolerance)
        assert all(abs(float(r[key + "/alpha_grad"][0])) > 0 for r in ranks)
    if "scale" in expected:
        for r in ranks:
            np.testing.assert_allclose(r[key + "/scale"], expected["scale"], rtol=1e-5)
    for r in ranks:  # every block got gradient
        assert np.abs(r[key + "/w_grad"]).sum() > 0


@pytest.mark.parametrize("key", [k for k, v in HEADS.items() if v[2] < 1.0])
def test_partial_fc_equals_numpy_over_sampled_classes(ranks, key):
    name, params, ratio = HEADS[key]
    x, y, g, w, _ = global_data()
    sampled = []
    for r in ranks:
        start, end = r[key + "/range"]
        mine = r[key + "/sampled"]
        positives = set(int(v) for v in y if start <= v < end)
        assert positives <= set(mine.tolist()) and np.all(np.diff(mine) > 0)
        assert mine.min() >= start and mine.max() < end
        assert len(mine) == max(num_sampled(end - start, ratio), len(positives))
        sampled.append(mine)
    classes = np.concatenate(sampled)
    assert len(classes) < C
    loss, x_grad, w_grad = np_restricted(name, params, x, y, w, classes, g)
    np.testing.assert_allclose(joined(ranks, key + "/loss"), loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(joined(ranks, key + "/x_grad"), x_grad, rtol=1e-3, atol=1e-4)
    got_w = joined(ranks, key + "/w_grad")
    np.testing.assert_allclose(got_w, w_grad, rtol=1e-3, atol=1e-4)
    assert np.all(got_w[np.setdiff1d(np.arange(C), classes)] == 0)


def test_training_steps_equal_single_process(ranks):
    """DistributedTrainer.step(b) for the shared parameters + Trainer.step(b * size) for the blocks
    == one process training the ordinary head on the global batches with step(B)."""
    w_net, w_head = train_init()
    net = gluon.nn.Dense(D, in_units=w_net.shape[1], use_bias=False)
    net.initialize()
    net.weight.set_data(mx.nd.array(w_net))
    head = get_loss("arcface", num_classes=C, embedding_size=D, s=16.0)
    head.initialize()
    head.weight.set_data(mx.nd.array(w_head))
    params = gluon.ParameterDict()
    params.update(net.collect_params())
    params.update(head.collect_params())
    trainer = gluon.Trainer(params, "sgd", dict(TRAIN_OPT), kvstore=None)
    for step in range(TRAIN_STEPS):
        data, labels = train_data(step)
        with autograd.record():
            loss = head(net(mx.nd.array(data)), mx.nd.array(labels))
        loss.backward()
        trainer.step(len(labels))
    for r in ranks:
        np.testing.assert_allclose(r["train_net"], net.weight.data().asnumpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r["train_head"], head.weight.data().asnumpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(ranks[0]["train_head"], w_head, atol=1e-3)  # training really moved the weights
