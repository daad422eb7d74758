"""Cross-worker triplet mining under a real 2-process horovodrun equals single-process mining on
the concatenated batch, and the workers' gradients sum to the single-process gradient."""
import os
import sys

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))

from conftest import run_worker_ranks  # noqa: E402
from mining_worker import SEED, SHARES, build_net, global_batch  # noqa: E402
from recognition.losses.mining import STRATEGIES, select_triplets, squared_distances  # noqa: E402
from recognition.losses.triplet import TripletLoss  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_worker_ranks("mining_worker.py", tmp_path_factory.mktemp("mining"), len(SHARES))


def single_process(strategy, gathered, labels):
    """TripletLoss(pool="online") on the concatenated batch: triplets, per-sample loss, per-triplet
    losses and the gradient of loss.sum() w.r.t. the embeddings."""
    loss_fn = TripletLoss(strategy=strategy, pool="online", seed=SEED)
    emb = mx.nd.array(gathered)
    emb.attach_grad()
    with autograd.record():
        loss = loss_fn(emb, labels)
        total = loss.sum()
    total.backward()
    return np.stack(loss_fn.last_triplets), loss.asnumpy(), loss_fn.last_triplet_losses.asnumpy(), emb.grad.asnumpy()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cross_worker_equals_single_process(ranks, strategy):
    inputs, labels, owner = global_batch()
    assert [int(r["size"]) for r in ranks] == [2, 2]
    gathered = ranks[0][strategy + "/gathered"]
    np.testing.assert_array_equal(ranks[1][strategy + "/gathered"], gathered)
    triplets, loss, triplet_losses, emb_grad = single_process(strategy, gathered, labels)
    assert triplets.shape[1] > 0  # the batch is random: there is something to mine
    # identities of a rank never appear on the other rank, so mining across workers matters:
    # some selected triplets mix samples of both workers
    assert np.any(owner[triplets[0]] != owner[triplets[2]])
    np.testing.assert_array_equal(np.stack(select_triplets(squared_distances(gathered), labels, strategy, 0.2,
                                                           np.random.default_rng(SEED))), triplets)
    for rank, data in enumerate(ranks):
        np.testing.assert_array_equal(data[strategy + "/triplets"], triplets)
        assert int(data[strategy + "/num_triplets"]) == triplets.shape[1]
        np.testing.assert_allclose(data[strategy + "/triplet_losses"], triplet_losses, rtol=1e-6, atol=1e-7)
        # every entry of each worker's (B_local,) vector is the global mean triplet loss
        assert data[strategy + "/loss"].shape == (SHARES[rank],)
        np.testing.assert_allclose(data[strategy + "/loss"], loss[0], rtol=1e-6)
        # each worker's loss.sum() gradient is the single-process one restricted to its own rows
        np.testing.assert_allclose(data[strategy + "/emb_grad"], emb_grad[owner == rank], rtol=1e-5, atol=1e-7)

    # parameter gradients of loss.sum() summed over workers = single process through the same net
    net = build_net()
    x = mx.nd.array(inputs)
    with autograd.record():
        emb = net(x)
    emb.backward(mx.nd.array(emb_grad))
    for name, param in net.collect_params().items():
        summed = ranks[0][strategy + "/grad_sum/" + name.split("_")[-1]]
        np.testing.assert_allclose(summed, param.grad().asnumpy(), rtol=1e-5, atol=1e-6)  # sums of float32 terms in another order
        np.testing.assert_array_equal(ranks[1][strategy + "/grad_sum/" + name.split("_")[-1]], summed)


def test_semi_online_chunks_agree_across_workers(ranks):
    # rank 1 pooled twice as much, yet both ranks step the same number of times; the extra steps
    # of rank 0 are padding chunks whose zero loss back-propagates zero gradients (checked there)
    counts = [int(r["semi/num_chunks"]) for r in ranks]
    assert counts[0] == counts[1] > 0
    assert int(ranks[1]["semi/num_triplets"]) > int(ranks[0]["semi/num_triplets"]) > 0
    assert len(ranks[0]["semi/padding_losses"]) > 0
    assert len(ranks[1]["semi/padding_losses"]) == 0
    assert np.all(ranks[0]["semi/padding_losses"] == 0.0)
