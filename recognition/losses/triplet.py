"""Triplet loss with MassFace mining (Li, 2019): L = max(0, M(a, p) + alpha - M(a, n)).

M is the squared Euclidean distance between L2-normalised embeddings. ``TripletLoss.head`` mines
triplets with ``recognition.losses.mining`` (NumPy, indices only, no gradient) and then runs the
gather + loss in the hybridized ``TripletGatherLoss`` so that every embedding a selected triplet
uses (anchor, positive and negative) receives its gradient.

Mining pools (``pool=``):

* ``online``       -- the current (local) batch;
* ``cross_worker`` -- under Horovod the embeddings and labels of all workers are gathered and mined
  together, so selection sees P x workers identities and equals single-process mining on the
  concatenated batch. The gathered copy is a constant: each worker computes the loss of *all*
  selected triplets (the returned values are identical on every worker) but its gradient flows
  only into its own rows (gradient scaling: see below). ``batch_random`` needs the same ``seed``
  on every worker (the default);
* ``semi_online``  -- ``self.semi_online_pool`` (a ``mining.SemiOnlinePool``) collects
  ``pool_batches`` batches forwarded without gradient; ``select_pool()`` mines them and returns
  chunks whose images the trainer forwards again and passes to ``head`` with ``triplets=``.

``head(embeddings, labels)`` follows the per-sample contract of every head (see
``recognition.losses``): it returns a (B,) vector recorded by autograd whose every entry is the
batch's triplet loss L = mean over the selected triplets of max(0, M(a,p) + alpha - M(a,n)), so
``loss.mean()`` is the paper's L and ``loss.backward(); trainer.step(B)`` (the sum convention)
applies exactly grad L, as for any per-sample head. With no valid triplet it returns zeros that
still back-propagate (zero gradients, no NaN). ``last_num_triplets``, ``last_triplets`` (indices
in the mined batch: the gathered global batch for ``cross_worker``) and ``last_triplet_losses``
(the (T,) per-triplet values, an NDArray; None when there was no triplet) are kept for logging.

Under ``cross_worker`` each worker's vector has the value L of the global triplets, and the
gradient of its ``sum()`` is (B_global / B_local) x the gradient of L through its own rows, so
the sum over workers of ``sum()``-gradients equals the single-process ``sum()``-gradient of the
concatenated batch -- the same relation per-sample heads have. ``hvd.DistributedTrainer`` (sum of
gradients / workers) stepped with the local batch size then applies grad L, exactly as a single
process stepping the concatenated batch with the global batch size.
"""
import numpy as np

import mxnet as mx
from mxnet import gluon

from recognition import distributed
from recognition.losses.mining import STRATEGIES, SemiOnlinePool, select_triplets, squared_distances

POOLS = ("online", "semi_online", "cross_worker")


class TripletGatherLoss(gluon.HybridBlock):
    """Gather + loss: (B,) vector of the mean triplet loss over the rows ``anchors``/``positives``/
    ``negatives`` of ``embeddings`` (normalised here, so raw embeddings may be passed), and the
    (T,) per-triplet losses. ``samples`` (B, 1) fixes the length of the vector; ``grad_scale``
    (1,) multiplies the gradient, not the value (cross-worker bookkeeping, 1 otherwise).

    The distances are gathered from the N x N matrix M rather than computing differences of
    gathered embeddings: memory is O(N^2 + T) instead of O(T x D), which matters for batch_all
    (a 210-image batch can have 10^5 valid triplets)."""

    def __init__(self, margin=0.2, eps=1e-10, **kwargs):
        super().__init__(**kwargs)
        self.margin = float(margin)
        self.eps = float(eps)

    def hybrid_forward(self, F, embeddings, samples, anchors, positives, negatives, grad_scale):
        unit = F.L2Normalization(embeddings, mode="instance", eps=self.eps)
        sq = F.sum(F.square(unit), axis=1)
        dist = F.broadcast_add(F.reshape(sq, (-1, 1)), F.reshape(sq, (1, -1))) - 2 * F.dot(unit, unit, transpose_b=True)
        d_pos = F.gather_nd(dist, F.stack(anchors, positives, axis=0))
        d_neg = F.gather_nd(dist, F.stack(anchors, negatives, axis=0))
        per_triplet = F.relu(d_pos + self.margin - d_neg)
        mean = F.mean(per_triplet, axis=0, keepdims=True)
        # value: mean; gradient: grad_scale * d(mean)
        scaled = F.broadcast_mul(mean, grad_scale) + F.BlockGrad(F.broadcast_mul(mean, 1 - grad_scale))
        per_sample = F.broadcast_mul(F.ones_like(F.reshape(samples, (-1,))), scaled)
        return per_sample, per_triplet


class TripletLoss(gluon.Block):
    """Triplet loss head; ``loss_fn(embeddings, labels)`` is ``loss_fn.head(embeddings, labels)``.

    ``num_classes``/``embedding_size`` are accepted (the ``get_loss`` registry passes them to
    every head) and ignored: the triplet loss has no classifier and no parameters.
    """

    def __init__(self, margin=0.2, strategy="batch_hardest", pool="online", pool_batches=10, seed=0,
                 num_classes=None, embedding_size=None, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if strategy not in STRATEGIES:
            raise ValueError("triplet strategy %r is unknown; choose one of %s" % (strategy, ", ".join(STRATEGIES)))
        if pool not in POOLS:
            raise ValueError("triplet pool %r is unknown; choose one of %s" % (pool, ", ".join(POOLS)))
        if not float(margin) >= 0.0:
            raise ValueError("triplet margin must be >= 0, got %r" % (margin,))
        self.margin = float(margin)
        self.strategy = strategy
        self.pool = pool
        self.rng = np.random.default_rng(seed)  # batch_random; identical on every worker
        self.semi_online_pool = SemiOnlinePool(pool_batches) if pool == "semi_online" else None
        self.last_num_triplets = 0
        self.last_triplets = (np.zeros(0, np.int64),) * 3
        self.last_triplet_losses = None
        with self.name_scope():
            self.gather_loss = TripletGatherLoss(self.margin)

    def forward(self, embeddings, labels, triplets=None):
        return self.head(embeddings, labels, triplets)

    def head(self, embeddings, labels, triplets=None):
        """(B,) loss vector (every entry = mean loss of the selected triplets) of ``embeddings``
        (B, D), raw or normalised, with identities ``labels`` (B,).

        ``triplets``: explicit (anchors, positives, negatives) row indices, e.g. from a
        ``SemiOnlinePool`` chunk; when omitted they are mined with ``self.strategy`` from the
        current batch (``online``/``semi_online``) or from all workers' batches (``cross_worker``).
        """
        labels = (labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else np.asarray(labels)).reshape(-1)
        batch = embeddings.shape[0]
        if len(labels) != batch:
            raise ValueError("triplet loss: %d embeddings but %d labels" % (batch, len(labels)))
        rows, grad_scale = embeddings, 1.0
        if triplets is not None:
            anchors, positives, negatives = (np.asarray(t, dtype=np.int64).reshape(-1) for t in triplets)
            if any(len(t) and (t.min() < 0 or t.max() >= batch) for t in (anchors, positives, negatives)):
                raise ValueError("triplet loss: triplet indices outside the batch of %d" % batch)
            mined = (anchors, positives, negatives)
        elif self.pool == "cross_worker" and distributed.size() > 1:
            mined, rows, (anchors, positives, negatives) = self._mine_across_workers(embeddings, labels)
            # this worker holds B_local of the B_global rows whose sum-gradients add up over workers
            grad_scale = (rows.shape[0] - batch) / float(batch)
        else:
            mined = select_triplets(squared_distances(embeddings), labels, self.strategy, self.margin, self.rng)
            anchors, positives, negatives = mined
        self.last_triplets = mined
        self.last_num_triplets = len(anchors)
        if len(anchors) == 0:
            # nothing to learn from: zeros that are still part of the graph (zero gradients)
            self.last_triplet_losses = None
            return (embeddings * 0).sum(axis=1)
        ctx = embeddings.context
        index = [mx.nd.array(t, ctx=ctx, dtype="int32") for t in (anchors, positives, negatives)]
        scale = mx.nd.array([grad_scale], ctx=ctx)
        samples = mx.nd.zeros((batch, 1), ctx=ctx)
        per_sample, self.last_triplet_losses = self.gather_loss(rows, samples, *index, scale)
        return per_sample

    def _mine_across_workers(self, embeddings, labels):
        """Mine the concatenation of all workers' batches (in rank order). Returns the global
        triplets, the rows to gather from -- ``concat(local live rows, gathered constant copy)`` --
        and the triplets re-indexed into those rows (own samples -> live rows, others -> copy)."""
        batch = embeddings.shape[0]
        gathered = distributed.allgather(embeddings.detach(), name="triplet_embeddings")
        all_labels = distributed.allgather(mx.nd.array(labels, dtype="int32"), name="triplet_labels")
        sizes = distributed.allgather(mx.nd.array([batch], dtype="int32"), name="triplet_sizes").asnumpy()
        offset = int(sizes[:distributed.rank()].sum())
        mined = select_triplets(squared_distances(gathered), all_labels.asnumpy(), self.strategy, self.margin, self.rng)
        remap = np.arange(gathered.shape[0], dtype=np.int64) + batch
        remap[offset:offset + batch] = np.arange(batch)
        rows = mx.nd.concat(embeddings, gathered.as_in_context(embeddings.context), dim=0)
        return mined, rows, tuple(remap[t] for t in mined)

    def select_pool(self, max_images=None):
        """Semi-online: mine the full ``semi_online_pool`` with this head's strategy, margin and
        rng; returns ``PoolChunk``s (equal in number on every Horovod worker)."""
        if self.semi_online_pool is None:
            raise ValueError("select_pool needs TripletLoss(pool='semi_online'), this one is %r" % self.pool)
        return self.semi_online_pool.select(self.strategy, self.margin, rng=self.rng, max_images=max_images,
                                            equalize_across_workers=distributed.size() > 1)
