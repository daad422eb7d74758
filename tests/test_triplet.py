"""TripletLoss: value and gradient against the paper's formula in NumPy, hybridized == imperative,
no-triplet batches, explicit (semi-online) triplets, registry and argument checks."""
import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, gluon

from recognition.losses import get_loss
from recognition.losses.mining import STRATEGIES, select_triplets
from recognition.losses.triplet import TripletGatherLoss, TripletLoss

MARGIN = 0.2


def batch(seed, p=6, k=4, dim=8):
    rng = np.random.RandomState(seed)
    labels = np.repeat(rng.choice(1000, p, replace=False), k).astype(np.float32)
    order = rng.permutation(p * k)
    x = (rng.normal(size=(p * k, dim)) * rng.uniform(0.5, 2.0, size=(p * k, 1))).astype(np.float32)
    return x, labels[order]


def numpy_loss_and_grad(x, triplets, margin=MARGIN):
    """Mean over triplets of max(0, |u_a - u_p|^2 + margin - |u_a - u_n|^2), u = x / |x|, and its
    gradient w.r.t. the raw x (through the normalisation)."""
    x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / norm
    a, p, n = triplets
    per_triplet = np.maximum(0.0, ((u[a] - u[p]) ** 2).sum(1) + margin - ((u[a] - u[n]) ** 2).sum(1))
    grad_u = np.zeros_like(u)
    for t in range(len(a)):
        if per_triplet[t] > 0:
            grad_u[a[t]] += 2 * (u[n[t]] - u[p[t]]) / len(a)
            grad_u[p[t]] += -2 * (u[a[t]] - u[p[t]]) / len(a)
            grad_u[n[t]] += 2 * (u[a[t]] - u[n[t]]) / len(a)
    grad_x = (grad_u - u * (u * grad_u).sum(1, keepdims=True)) / norm
    return per_triplet, per_triplet.mean(), grad_x


def numpy_distances(x):
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)


def run(loss_fn, x, labels, reduce="sum", **kwargs):
    emb = mx.nd.array(x)
    emb.attach_grad()
    with autograd.record():
        # head() is what loss_fn(emb, labels) calls; keywords (triplets=) need the method
        loss = loss_fn.head(emb, labels, **kwargs) if kwargs else loss_fn(emb, labels)
        total = loss.sum() if reduce == "sum" else loss.mean()
    total.backward()
    return loss.asnumpy(), emb.grad.asnumpy()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_value_and_gradient_match_numpy(strategy):
    x, labels = batch(0)
    loss_fn = TripletLoss(margin=MARGIN, strategy=strategy, seed=3)
    loss, grad = run(loss_fn, x, labels)
    expected_triplets = select_triplets(numpy_distances(x), labels, strategy, MARGIN, np.random.default_rng(3))
    assert loss_fn.last_num_triplets == len(expected_triplets[0]) > 0
    for got, want in zip(loss_fn.last_triplets, expected_triplets):
        np.testing.assert_array_equal(got, want)
    per_triplet, mean, grad_x = numpy_loss_and_grad(x, expected_triplets)
    assert np.all(per_triplet > 0)  # mining keeps exactly the triplets with a non-zero loss
    np.testing.assert_allclose(loss_fn.last_triplet_losses.asnumpy(), per_triplet, rtol=1e-5, atol=1e-6)
    # per-sample vector: every entry is the mean triplet loss, so the sum-gradient is B x grad L
    assert loss.shape == (len(labels),)
    np.testing.assert_allclose(loss, np.full(len(labels), mean), rtol=1e-5)
    np.testing.assert_allclose(grad, len(labels) * grad_x, rtol=1e-4, atol=1e-5)
    # and loss.mean() is the paper's L with gradient grad L
    loss_fn = TripletLoss(margin=MARGIN, strategy=strategy, seed=3)
    loss, grad = run(loss_fn, x, labels, reduce="mean")
    np.testing.assert_allclose(grad, grad_x, rtol=1e-4, atol=1e-6)


def test_margin_is_used():
    x, labels = batch(1)
    small = TripletLoss(margin=0.05, strategy="batch_all")
    large = TripletLoss(margin=0.5, strategy="batch_all")
    run(small, x, labels), run(large, x, labels)
    assert large.last_num_triplets > small.last_num_triplets > 0
    per_triplet, _, _ = numpy_loss_and_grad(x, large.last_triplets, margin=0.5)
    np.testing.assert_allclose(large.last_triplet_losses.asnumpy(), per_triplet, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flags", [{}, {"static_alloc": True, "static_shape": True}])
def test_hybridized_equals_imperative(flags):
    imperative = TripletLoss(strategy="batch_all")
    hybrid = TripletLoss(strategy="batch_all")
    hybrid.hybridize(**flags)
    for seed in range(3):  # a different number of triplets (and batch size) every call
        x, labels = batch(seed, p=4 + seed)
        loss_i, grad_i = run(imperative, x, labels)
        loss_h, grad_h = run(hybrid, x, labels)
        assert hybrid.last_num_triplets == imperative.last_num_triplets > 0
        np.testing.assert_allclose(loss_h, loss_i, rtol=1e-6)
        np.testing.assert_allclose(grad_h, grad_i, rtol=1e-5, atol=1e-7)
    # the gather block alone: symbolic and imperative graphs agree
    block = TripletGatherLoss(MARGIN)
    x, _ = batch(5)
    args = [mx.nd.array(x), mx.nd.zeros((len(x), 1)), mx.nd.array([0, 1, 2]), mx.nd.array([3, 4, 5]),
            mx.nd.array([6, 7, 8]), mx.nd.array([1.0])]
    before = [o.asnumpy() for o in block(*args)]
    block.hybridize()
    after = [o.asnumpy() for o in block(*args)]
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_no_valid_triplet_gives_zero_that_backprops():
    # two identities on opposite poles: M(a,p) = 0, M(a,n) = 4 > 0 + margin
    x = np.array([[1, 0, 0], [2, 0, 0], [-1, 0, 0], [-3, 0, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    for strategy in STRATEGIES:
        loss_fn = TripletLoss(strategy=strategy)
        loss_fn.hybridize()
        loss, grad = run(loss_fn, x, labels)
        assert loss_fn.last_num_triplets == 0 and loss_fn.last_triplet_losses is None
        np.testing.assert_array_equal(loss, np.zeros(4))
        np.testing.assert_array_equal(grad, np.zeros_like(x))
    # only singletons: no positive at all
    loss, grad = run(TripletLoss(), x, np.arange(4))
    assert np.all(np.isfinite(grad)) and not loss.any()


def test_explicit_triplets():
    x, labels = batch(2)
    same = [i for i in range(len(labels)) if labels[i] == labels[0] and i != 0]
    other = [i for i in range(len(labels)) if labels[i] != labels[0]]
    triplets = (np.array([0, 0, 0]), np.array(same[:3]), np.array(other[:3]))
    loss_fn = TripletLoss(pool="semi_online", strategy="batch_min_max")
    loss, grad = run(loss_fn, x, labels, triplets=triplets)
    per_triplet, mean, grad_x = numpy_loss_and_grad(x, triplets)
    np.testing.assert_allclose(loss_fn.last_triplet_losses.asnumpy(), per_triplet, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, np.full(len(labels), mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, len(labels) * grad_x, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="outside the batch"):
        run(loss_fn, x, labels, triplets=(np.array([0]), np.array([1]), np.array([len(labels)])))
    with pytest.raises(ValueError, match="24 embeddings but 3 labels"):
        run(loss_fn, x, labels[:3])


def test_cross_worker_single_process_is_online_and_labels_may_be_ndarray():
    x, labels = batch(4)
    online, _ = run(TripletLoss(pool="online"), x, labels)
    cross, _ = run(TripletLoss(pool="cross_worker"), x, mx.nd.array(labels))
    semi, _ = run(TripletLoss(pool="semi_online"), x, labels)  # without triplets: mines the batch
    np.testing.assert_array_equal(cross, online)
    np.testing.assert_array_equal(semi, online)


def test_semi_online_end_to_end_with_a_net():
    rng = np.random.RandomState(6)
    inputs = rng.normal(size=(36, 10)).astype(np.float32)
    labels = np.repeat(rng.choice(5, 12), 3)  # identities recur across the three batches
    net = gluon.nn.Dense(6, in_units=10)
    net.initialize(mx.init.Xavier())
    loss_fn = TripletLoss(strategy="batch_min_max", pool="semi_online", pool_batches=3)
    for step in range(3):
        rows = np.arange(12 * step, 12 * step + 12)
        with autograd.predict_mode():
            emb = net(mx.nd.array(inputs[rows]))
        assert loss_fn.semi_online_pool.add(emb, labels[rows], rows) == (step == 2)
    pooled = net(mx.nd.array(inputs)).asnumpy()
    chunks = loss_fn.select_pool(max_images=12)
    assert len(chunks) >= 2 and len(loss_fn.semi_online_pool) == 0
    for chunk in chunks:
        assert len(chunk.items) <= 12
        with autograd.record():
            loss = loss_fn.head(net(mx.nd.array(inputs[chunk.items])), chunk.labels, triplets=chunk.triplets)
        loss.backward()
        assert loss.shape == (len(chunk.items),)
        # the chunk's loss is the paper's loss of those triplets on the pooled embeddings
        _, mean, _ = numpy_loss_and_grad(pooled[chunk.items], chunk.triplets)
        np.testing.assert_allclose(loss.asnumpy(), mean, rtol=1e-5)
        assert np.abs(net.weight.grad().asnumpy()).sum() > 0
    with pytest.raises(ValueError, match="pool='semi_online'"):
        TripletLoss().select_pool()


def test_registry_and_arguments():
    head = get_loss("triplet", num_classes=10, embedding_size=8, margin=0.3, strategy="batch_all", pool="cross_worker")
    assert isinstance(head, TripletLoss)
    assert (head.margin, head.strategy, head.pool) == (0.3, "batch_all", "cross_worker")
    assert TripletLoss(num_classes=10, embedding_size=8).strategy == "batch_hardest"
    with pytest.raises(ValueError, match="strategy 'hard'"):
        TripletLoss(strategy="hard")
    with pytest.raises(ValueError, match="pool 'offline'"):
        TripletLoss(pool="offline")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-0.1)
    with pytest.raises(ValueError, match="unknown parameter"):
        get_loss("triplet", alpha=0.2)
