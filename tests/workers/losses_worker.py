"""horovodrun worker for tests/test_losses_horovod.py: non-gradient loss state across workers.

Usage: losses_worker.py OUT_PREFIX
Each rank runs STEPS training steps of several heads on its own, differently sized share of a
global batch, in the trainer's order: update_state, loss, backward, DistributedTrainer step (SGD on
loss.sum(), step(1), so the update is the mean of the ranks' summed gradients). It writes
OUT_PREFIX.rankR.npz with the AdaCos scale after every step, the final centres (after flush_state),
the final classifier weights and every step's local losses. The test runs :func:`simulate` single
process on the concatenated batches (step(size) gives the same update) and compares.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mxnet as mx  # noqa: E402
from mxnet import autograd  # noqa: E402

from recognition import distributed  # noqa: E402
from recognition.losses import get_loss  # noqa: E402

C, D, STEPS = 6, 4, 4
SHARES = (5, 3)  # per-rank batch sizes, uneven on purpose
HEADS = {
    "adacos": ("adacos", {}),
    "center": ("center", {"lambda_c": 0.5, "alpha": 0.5}),
    "km_center": ("km", {"gamma": 2.0, "center": {"lambda_c": 0.1, "alpha": 0.3}}),
    "git": ("git", {"lambda_c": 0.1, "lambda_g": 0.5, "alpha": 0.4}),
    "adacos_center": ("adacos", {"center": {"alpha": 0.6}}),
}


def batch(step, rank):
    """Rank ``rank``'s share at ``step``; labels from 6 classes, so ranks share classes."""
    rng = np.random.RandomState(1000 + 10 * step + rank)
    return rng.normal(size=(SHARES[rank], D)), rng.randint(0, C, size=SHARES[rank])


def global_batch(step):
    parts = [batch(step, r) for r in range(len(SHARES))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build(key):
    name, params = HEADS[key]
    head = get_loss(name, num_classes=C, embedding_size=D, **params)
    head.initialize()
    rng = np.random.RandomState(0)
    w, centers = rng.normal(size=(C, D)), rng.normal(size=(C, D))
    if hasattr(head, "weight"):
        head.weight.set_data(mx.nd.array(w))
    if hasattr(head, "centers"):
        head.centers.set_data(mx.nd.array(centers))
    head.hybridize(static_alloc=True, static_shape=True)
    return head


def simulate(key, batch_fn, update_divisor):
    """Run STEPS steps with batches from ``batch_fn(step)``; returns a dict of results."""
    head = build(key)
    # all parameters, as the trainer passes them: the grad_req='null' state must be skipped
    trainable = any(p.grad_req != "null" for p in head.collect_params().values())
    trainer = distributed.make_trainer(head.collect_params(), "sgd", {"learning_rate": 0.5}) if trainable else None
    scales, losses = [], []
    for step in range(STEPS):
        x, y = batch_fn(step)
        x, y = mx.nd.array(x), mx.nd.array(y)
        with autograd.record():
            head.update_state(x, y)
            loss = head(x, y)
            total = loss.sum()
        if trainer is not None:
            total.backward()
            trainer.step(update_divisor)
        losses.append(loss.asnumpy())
        scales.append(head.scale if hasattr(head, "scale") else np.nan)
    if hasattr(head, "flush_state"):  # as the trainer does before saving
        head.flush_state()
    out = {"scales": np.array(scales), "losses": np.concatenate(losses)}
    if hasattr(head, "centers"):
        out["centers"] = head.centers.data().asnumpy()
    if hasattr(head, "weight"):
        out["weight"] = head.weight.data().asnumpy()
    return out


def main():
    out = sys.argv[1]
    assert distributed.init(), "not started by horovodrun"
    rank = distributed.rank()
    assert distributed.size() == len(SHARES)
    results = {}
    for key in HEADS:
        for name, value in simulate(key, lambda step: batch(step, rank), 1).items():
            results[key + "/" + name] = value
    np.savez("%s.rank%d.npz" % (out, rank), size=distributed.size(), **results)


if __name__ == "__main__":
    main()
