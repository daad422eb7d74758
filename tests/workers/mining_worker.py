"""horovodrun worker for tests/test_mining_horovod.py: cross-worker triplet mining.

Usage: mining_worker.py OUT_PREFIX
Each rank embeds its own share of a fixed global batch with a tiny Dense net, runs
TripletLoss(pool="cross_worker") for every strategy, and writes OUT_PREFIX.rankR.npz with what it
mined, its loss values, the gathered embeddings, the gradient of loss.sum() w.r.t. its own
embeddings and the sum over workers of the parameter gradients. The test recomputes everything single-process.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from recognition import distributed  # noqa: E402
from recognition.losses.mining import STRATEGIES  # noqa: E402
from recognition.losses.triplet import TripletLoss  # noqa: E402

IN_UNITS, OUT_UNITS = 10, 6
SHARES = (12, 15)  # uneven on purpose: rank 0 has 3 identities x 4, rank 1 has 3 x 4 + 1 x 3
SEED = 7


def global_batch():
    """(inputs, labels, rank of each row) of the whole batch, the same in every process."""
    rng = np.random.RandomState(0)
    inputs = rng.normal(size=(sum(SHARES), IN_UNITS)).astype(np.float32)
    labels = np.array([5] * 4 + [9] * 4 + [2] * 4 + [11] * 4 + [3] * 4 + [8] * 4 + [6] * 3)
    owner = np.repeat(np.arange(len(SHARES)), SHARES)
    return inputs, labels, owner


def build_net():
    rng = np.random.RandomState(1)
    net = gluon.nn.Dense(OUT_UNITS, in_units=IN_UNITS)
    net.initialize()
    net.weight.set_data(mx.nd.array(rng.normal(size=(OUT_UNITS, IN_UNITS)) * 0.5))
    net.bias.set_data(mx.nd.array(rng.normal(size=OUT_UNITS) * 0.1))
    return net


def main():
    out = sys.argv[1]
    assert distributed.init(), "not started by horovodrun"
    rank = distributed.rank()
    assert distributed.size() == len(SHARES)
    inputs, labels, owner = global_batch()
    x, y = mx.nd.array(inputs[owner == rank]), labels[owner == rank]
    net = build_net()
    net.hybridize()
    result = {"size": np.array(distributed.size())}
    for strategy in STRATEGIES:
        loss_fn = TripletLoss(strategy=strategy, pool="cross_worker", seed=SEED, num_classes=100, embedding_size=6)
        loss_fn.hybridize()
        # gradient w.r.t. this worker's own embeddings
        emb = net(x)
        emb.attach_grad()
        with autograd.record():
            loss = loss_fn(emb, y)
            total = loss.sum()
        total.backward()
        result[strategy + "/triplets"] = np.stack(loss_fn.last_triplets)
        result[strategy + "/loss"] = loss.asnumpy()
        result[strategy + "/triplet_losses"] = loss_fn.last_triplet_losses.asnumpy()
        result[strategy + "/num_triplets"] = np.array(loss_fn.last_num_triplets)
        result[strategy + "/emb_grad"] = emb.grad.asnumpy()
        result[strategy + "/gathered"] = distributed.allgather(emb, name="test_gathered").asnumpy()
        # the same loss through the net: parameter gradients summed over workers (a fresh head,
        # so batch_random draws the same negatives again)
        loss_fn = TripletLoss(strategy=strategy, pool="cross_worker", seed=SEED)
        with autograd.record():
            total = loss_fn(net(x), y).sum()
        total.backward()
        for name, param in net.collect_params().items():
            summed = distributed.allreduce_sum(param.grad().copy(), name="test_" + strategy + name)
            result[strategy + "/grad_sum/" + name.split("_")[-1]] = summed.asnumpy()

    # semi-online under Horovod: the ranks pool different amounts, yet get as many chunks each
    semi = TripletLoss(strategy="batch_min_max", pool="semi_online", pool_batches=rank + 1, seed=SEED)
    for _ in range(rank + 1):
        semi.semi_online_pool.add(net(x), y, np.arange(len(y)))
    chunks = semi.select_pool(max_images=9)
    padding_losses = []
    for chunk in chunks:
        emb = net(x[mx.nd.array(chunk.items)])
        emb.attach_grad()
        with autograd.record():
            total = semi.head(emb, chunk.labels, triplets=chunk.triplets).sum()
        total.backward()
        if len(chunk.triplets[0]) == 0:
            padding_losses.append(float(total.asscalar()))
            assert float(np.abs(emb.grad.asnumpy()).max()) == 0.0
    result["semi/num_chunks"] = np.array(len(chunks))
    result["semi/num_triplets"] = np.array(sum(len(c.triplets[0]) for c in chunks))
    result["semi/padding_losses"] = np.array(padding_losses)
    np.savez("%s.rank%d.npz" % (out, rank), **result)


if __name__ == "__main__":
    main()
