"""horovodrun worker for tests/test_sharded_horovod.py: the sharded classifier on 2 real workers.

Usage: sharded_worker.py OUT_PREFIX
For every head of HEADS each rank takes its (uneven) share of one global batch, runs the sharded
head (update_state, loss, backward with a non-uniform head gradient) and records its local losses,
embedding gradients, weight-block gradients, l2softmax alpha gradient, AdaCos scale, the classes
Partial FC sampled and the predicted classes. Then TRAIN_STEPS training steps of a small Dense
"backbone" + sharded ArcFace with the trainer contract (DistributedTrainer for the shared
parameters stepped with the local batch size, a plain Trainer for the weight block stepped with the
global batch size). Writes OUT_PREFIX.rankR.npz; the test compares with the unsharded heads and
NumPy single process.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from recognition import distributed  # noqa: E402
from recognition.losses.sharded import get_sharded_loss  # noqa: E402

C, D = 11, 8  # 11 classes over 2 ranks: blocks of 5 and 6
SHARES = (5, 3)  # per-rank batch sizes, uneven on purpose
# key -> (loss name, head params, sample_ratio)
HEADS = {
    "softmax": ("softmax", {}, 1.0),
    "softmax_bias": ("softmax", {"bias": True}, 1.0),
    "arcface": ("arcface", {"s": 16.0}, 1.0),
    "cosface": ("cosface", {"s": 16.0}, 1.0),
    "combined": ("margin", {"s": 16.0, "m1": 1.1, "m2": 0.2, "m3": 0.1}, 1.0),
    "l2softmax": ("l2softmax", {"alpha": 6.0, "trainable_alpha": True}, 1.0),
    "adacos": ("adacos", {}, 1.0),
    "km": ("km", {"gamma": 2.0}, 1.0),
    "pfc_full_arcface": ("arcface", {"s": 16.0}, 1.0),
    "pfc_arcface": ("arcface", {"s": 16.0}, 0.4),
    "pfc_softmax": ("softmax", {}, 0.4),
}
SEED = 7
TRAIN_SHARES, TRAIN_STEPS, IN_UNITS = (4, 4), 3, 6
TRAIN_OPT = {"learning_rate": 0.2, "momentum": 0.9, "wd": 5e-4}


def global_data():
    """Embeddings (B, D), labels (B,), head gradients (B,), full weight (C, D), bias (C,)."""
    rng = np.random.RandomState(3)
    B = sum(SHARES)
    x = rng.normal(size=(B, D))
    y = rng.randint(0, C, size=B)
    y[:3] = [0, 5, 10]  # both blocks, including the remainder class, are targets
    g = rng.uniform(0.5, 1.5, size=B)
    return x, y, g, rng.normal(size=(C, D)) * 0.5, rng.normal(size=C) * 0.1


def rows(shares, rank):
    start = sum(shares[:rank])
    return slice(start, start + shares[rank])


def train_data(step):
    rng = np.random.RandomState(100 + step)
    B = sum(TRAIN_SHARES)
    return rng.normal(size=(B, IN_UNITS)), rng.randint(0, C, size=B)


def train_init():
    rng = np.random.RandomState(11)
    return rng.normal(size=(D, IN_UNITS)) * 0.3, rng.normal(size=(C, D)) * 0.5


def run_head(key, rank):
    name, params, ratio = HEADS[key]
    x, y, g, w, bias = global_data()
    mine = rows(SHARES, rank)
    head = get_sharded_loss(name, C, D, sample_ratio=ratio, seed=SEED, **params)
    head.initialize()
    head.set_full_weight(w, bias)
    head.hybridize()  # as the trainer does; a Block with no hybrid children: nothing changes
    xx, yy = mx.nd.array(x[mine]), mx.nd.array(y[mine])
    xx.attach_grad()
    with autograd.record():
        head.update_state(xx.detach(), yy)
        loss = head(xx, yy)
    loss.backward(mx.nd.array(g[mine]))
    out = {"loss": loss.asnumpy(), "x_grad": xx.grad.asnumpy(), "w_grad": head.weight.grad().asnumpy(),
           "range": np.array([head.start, head.end]), "predicted": head.predict_class(xx).asnumpy()}
    if head.bias is not None:
        out["b_grad"] = head.bias.grad().asnumpy()
    if name == "l2softmax":
        out["alpha_grad"] = head.alpha.grad().asnumpy()
    if name == "adacos":
        out["scale"] = np.array([head.scale])
    if head.last_sampled is not None:
        out["sampled"] = head.last_sampled
    return out


def run_training(rank, size):
    w_net, w_head = train_init()
    net = gluon.nn.Dense(D, in_units=IN_UNITS, use_bias=False)
    net.initialize()
    net.weight.set_data(mx.nd.array(w_net))
    head = get_sharded_loss("arcface", C, D, s=16.0)
    head.initialize()
    head.set_full_weight(w_head)
    shared = gluon.ParameterDict()
    shared.update(net.collect_params())
    shared.update(head.shared_params())
    distributed.broadcast_parameters(shared)
    trainer = distributed.make_trainer(shared, "sgd", dict(TRAIN_OPT))
    local = gluon.Trainer(head.local_params(), "sgd", dict(TRAIN_OPT), kvstore=None)
    b = TRAIN_SHARES[rank]
    for step in range(TRAIN_STEPS):
        data, labels = train_data(step)
        mine = rows(TRAIN_SHARES, rank)
        with autograd.record():
            loss = head(net(mx.nd.array(data[mine])), mx.nd.array(labels[mine]))
        loss.backward()
        trainer.step(b)
        local.step(b * size)  # the block's gradient is already the global-batch sum
    return {"train_net": net.weight.data().asnumpy(), "train_head": head.full_weight().asnumpy()}


def main():
    out = sys.argv[1]
    assert distributed.init(), "not started by horovodrun"
    rank, size = distributed.rank(), distributed.size()
    assert size == len(SHARES)
    results = {}
    for key in HEADS:
        for name, value in run_head(key, rank).items():
            results[key + "/" + name] = value
    results.update(run_training(rank, size))
    np.savez("%s.rank%d.npz" % (out, rank), size=size, **results)


if __name__ == "__main__":
    main()
