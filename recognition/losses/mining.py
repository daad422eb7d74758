"""Triplet selection of MassFace (Li, 2019), Algorithms 2-6, and the semi-online mining pool.

Everything here only chooses *indices*; the gather and the loss are done by
``recognition.losses.triplet`` inside a hybridized block so that gradients reach every embedding
used. Distances are squared Euclidean between L2-normalised embeddings (the paper's M), and a
triplet (i, j, k) -- anchor i, positive j != i of i's identity, negative k of another identity --
is *valid* when ``M(i, j) + margin > M(i, k)``, i.e. exactly when its loss is non-zero.

Strategies (names as in ``select_triplets``):

* ``batch_all``      (Alg. 2) every valid triplet;
* ``batch_random``   (Alg. 3) for each (anchor, positive) with a valid negative, one valid negative
  drawn uniformly at random;
* ``batch_min_min``  (Alg. 4) for each anchor, among its valid triplets over all positives, the one
  with the smallest M(i, k);
* ``batch_min_max``  (Alg. 5) for each anchor and positive, the valid negative with the smallest
  M(i, k); then among those (one per positive) the one with the largest M(i, k);
* ``batch_hardest``  (Alg. 6) for each identity, among the valid triplets of all its anchors, the one
  with the smallest M(i, k).

Ties are broken by the paper's loop order, i.e. the first candidate met when anchors, then
positives, then negatives are visited in increasing batch index (this is also what the authors'
code does, replacing the running best only on a strict improvement). Concretely: among equal
M(i, k) the smallest anchor index wins, then the smallest positive index, then the smallest
negative index. Anchors or positives without any valid negative contribute nothing (an empty
``argmin`` in the paper's pseudo-code). Results are returned sorted by (anchor, positive, negative).

A property of the pseudo-code worth knowing: for a fixed anchor the validity test is a threshold
``M(i, k) < M(i, j) + margin``, so the anchor's nearest negative k* passes the test of every
positive that has any valid negative. Hence the per-positive argmin of Algorithms 4 and 5 is the
same k* for all those positives, the outer argmin/argmax compare equal values, and both reduce to
(i, first such positive, k*): ``batch_min_min`` and ``batch_min_max`` select identical triplets
(the authors' code, which also keeps the first positive on ties, behaves the same; the paper's
Table 1 reports 98.0% for both). They are kept as separate names for the paper's experiments.
"""
from collections import namedtuple

import numpy as np

import mxnet as mx

STRATEGIES = ("batch_all", "batch_random", "batch_min_min", "batch_min_max", "batch_hardest")

# Rows of the (pairs x B) validity mask evaluated at once: bounds memory for large semi-online
# pools (2,100 images, 12,600 positive pairs) to a few tens of MB.
_BLOCK_ELEMENTS = 1 << 22


def _as_numpy(array):
    return array.asnumpy() if isinstance(array, mx.nd.NDArray) else np.asarray(array)


def _as_rng(rng):
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    return np.random.default_rng(rng)


def squared_distances(embeddings, normalize=True):
    """B x B matrix M of squared Euclidean distances (float64) between the rows of ``embeddings``
    (NumPy or NDArray), after L2 normalisation unless ``normalize=False``."""
    emb = _as_numpy(embeddings).astype(np.float64)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sq = np.sum(emb * emb, axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (emb @ emb.T)
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)  # rounding can make near-identical rows slightly negative


def _first_extreme_per_group(groups, values, largest=False):
    """Index (into ``values``) of the first element reaching the min (or max) of each group;
    "first" means smallest position, which the caller arranges to be the paper's loop order."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(values)), -values if largest else values, groups))
    sorted_groups = groups[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return order[starts]


def select_triplets(dist, labels, strategy, margin, rng=None):
    """Mine triplets from a B x B distance matrix ``dist`` and identities ``labels`` (B,).

    ``dist`` and ``labels`` may be NumPy arrays or NDArrays; ``margin`` is alpha; ``rng`` (a NumPy
    Generator/RandomState or a seed) is used by ``batch_random`` only -- give every Horovod worker
    the same seed when they mine the same gathered batch. Returns ``(anchors, positives,
    negatives)``, three int64 arrays of equal length, sorted by (anchor, positive, negative).
    """
    if strategy not in STRATEGIES:
        raise ValueError("unknown triplet strategy %r; choose one of %s" % (strategy, ", ".join(STRATEGIES)))
    dist = _as_numpy(dist).astype(np.float64)
    labels = _as_numpy(labels).reshape(-1)
    batch = len(labels)
    if dist.shape != (batch, batch):
        raise ValueError("distance matrix is %s but there are %d labels" % (dist.shape, batch))
    empty = np.zeros(0, dtype=np.int64)
    if batch == 0:
        return empty, empty, empty

    same = labels[:, None] == labels[None, :]
    # Positive pairs (i, j), j != i, in row-major order = the paper's (anchor, positive) loop order.
    anchors, positives = np.nonzero(same & ~np.eye(batch, dtype=bool))
    pair_dist = dist[anchors, positives]
    random = _as_rng(rng) if strategy == "batch_random" else None

    all_parts = []                                            # batch_all: (pair, negative) hits
    best_neg = np.zeros(len(anchors), dtype=np.int64)         # per pair: chosen negative
    best_dist = np.zeros(len(anchors), dtype=np.float64)      # per pair: M(i, chosen negative)
    has_neg = np.zeros(len(anchors), dtype=bool)              # per pair: any valid negative
    step = max(1, _BLOCK_ELEMENTS // batch)
    for start in range(0, len(anchors), step):
        rows = slice(start, start + step)
        anchor_rows = dist[anchors[rows]]
        valid = ~same[anchors[rows]] & (pair_dist[rows, None] + margin > anchor_rows)
        if strategy == "batch_all":
            pair, neg = np.nonzero(valid)
            all_parts.append((pair + start, neg))
            continue
        has_neg[rows] = valid.any(axis=1)
        if strategy == "batch_random":
            # argmax of i.i.d. uniform keys over the valid entries = a uniform valid negative
            keys = random.random(valid.shape)
            keys[~valid] = -1.0
            best_neg[rows] = np.argmax(keys, axis=1)
        else:
            # nearest valid negative of each pair; argmin returns the smallest index among ties
            masked = np.where(valid, anchor_rows, np.inf)
            best_neg[rows] = np.argmin(masked, axis=1)
            best_dist[rows] = masked[np.arange(masked.shape[0]), best_neg[rows]]

    if strategy == "batch_all":
        pair = np.concatenate([p for p, _ in all_parts]) if all_parts else empty
        neg = np.concatenate([n for _, n in all_parts]) if all_parts else empty
        # row-major nonzero over (anchor, positive)-sorted pairs: already in (a, p, n) order
        return tuple(t.astype(np.int64, copy=False) for t in (anchors[pair], positives[pair], neg))

    kept = np.nonzero(has_neg)[0]
    if strategy == "batch_random":
        chosen = kept
    elif strategy == "batch_min_min":
        chosen = kept[_first_extreme_per_group(anchors[kept], best_dist[kept])]
    elif strategy == "batch_min_max":
        chosen = kept[_first_extreme_per_group(anchors[kept], best_dist[kept], largest=True)]
    else:  # batch_hardest: one triplet per identity
        identity = np.unique(labels, return_inverse=True)[1].reshape(-1)
        chosen = kept[_first_extreme_per_group(identity[anchors[kept]], best_dist[kept])]
    return _sorted(anchors[chosen], positives[chosen], best_neg[chosen])


def _sorted(anchors, positives, negatives):
    order = np.lexsort((negatives, positives, anchors))
    return (anchors[order].astype(np.int64), positives[order].astype(np.int64),
            negatives[order].astype(np.int64))


# --------------------------------------------------------------------------------------------
# Semi-online mining (the paper's Table 4): the pool is the last N batches' embeddings, computed
# without gradient; the images of the mined triplets are forwarded again for the gradient step.

PoolChunk = namedtuple("PoolChunk", "items labels triplets")
PoolChunk.__doc__ = """One gradient step of semi-online training.

items:    the pooled per-sample items (what was passed to ``add``, e.g. record indices) of the
          images to forward again, each pooled sample at most once;
labels:   their identities (int64);
triplets: (anchors, positives, negatives), int64 indices into ``items`` (empty for a padding chunk).
"""


class SemiOnlinePool:
    """Collects ``size_batches`` batches of (embeddings, labels, items), then mines them at once.

    Contract for the trainer::

        pool = SemiOnlinePool(10)
        with autograd.predict_mode():                 # no gradient, nothing recorded
            emb = net(images)
        if pool.add(emb, labels, record_indices):    # True once size_batches batches are held
            for chunk in pool.select(strategy, margin, rng=rng, max_images=batch_size):
                with autograd.record():
                    emb = net(load(chunk.items))
                    loss = triplet_loss.head(emb, chunk.labels, triplets=chunk.triplets)
                loss.mean().backward()
                trainer.step(...)

    ``select`` mines the whole pool (distances over the pooled embeddings, L2-normalised), then
    cuts the triplets, in (anchor, positive, negative) order, into chunks whose distinct images
    number at most ``max_images`` (a triplet is never split; a single triplet needs at most 3
    images), and empties the pool. ``items`` can be anything indexable per sample along axis 0 --
    record indices are cheapest; pass the images themselves to skip re-reading. With
    ``equalize_across_workers=True`` (Horovod) every worker returns the same number of chunks so
    the DistributedTrainer steps stay in lockstep: short workers get padding chunks that re-forward
    up to ``max_images`` pooled images with no triplets (``head`` then returns a zero loss that
    still back-propagates zero gradients). Meant for the selective strategies (at most one triplet
    per anchor, as in the paper's Table 4 with batch_min_max); batch_all / batch_random on a large
    pool give very many chunks.
    """

    def __init__(self, size_batches):
        if int(size_batches) < 1:
            raise ValueError("SemiOnlinePool needs size_batches >= 1, got %r" % (size_batches,))
        self.size_batches = int(size_batches)
        self.clear()

    def clear(self):
        self._embeddings, self._labels, self._items = [], [], []

    def __len__(self):
        """Number of batches held."""
        return len(self._embeddings)

    @property
    def full(self):
        return len(self) >= self.size_batches

    def add(self, embeddings, labels, items):
        """Store one batch (copied to host memory, no gradient); returns ``self.full``."""
        embeddings = _as_numpy(embeddings).astype(np.float32)
        labels = _as_numpy(labels).reshape(-1).astype(np.int64)
        items = _as_numpy(items)
        if not (len(embeddings) == len(labels) == len(items)):
            raise ValueError("SemiOnlinePool.add: %d embeddings, %d labels, %d items"
                             % (len(embeddings), len(labels), len(items)))
        self._embeddings.append(embeddings)
        self._labels.append(labels)
        self._items.append(items)
        return self.full

    def select(self, strategy, margin, rng=None, max_images=None, equalize_across_workers=False):
        """Mine the pooled batches and return a list of ``PoolChunk``; empties the pool."""
        if not self._embeddings:
            raise ValueError("SemiOnlinePool.select called on an empty pool")
        embeddings = np.concatenate(self._embeddings)
        labels = np.concatenate(self._labels)
        items = np.concatenate(self._items)
        self.clear()
        max_images = len(labels) if max_images is None else int(max_images)
        if max_images < 3:
            raise ValueError("SemiOnlinePool.select needs max_images >= 3 (one triplet)")
        triplets = np.stack(select_triplets(squared_distances(embeddings), labels, strategy, margin, rng), axis=1)

        chunks = []
        start = 0
        while start < len(triplets):
            members = {}
            stop = start
            while stop < len(triplets):
                new = [int(i) for i in triplets[stop] if int(i) not in members]
                new = list(dict.fromkeys(new))
                if len(members) + len(new) > max_images:
                    break
                for index in new:
                    members[index] = len(members)
                stop += 1
            pooled = np.fromiter(members, dtype=np.int64, count=len(members))
            local = np.vectorize(members.__getitem__, otypes=[np.int64])(triplets[start:stop])
            chunks.append(PoolChunk(items[pooled], labels[pooled], (local[:, 0], local[:, 1], local[:, 2])))
            start = stop

        if equalize_across_workers:
            from recognition import distributed
            counts = distributed.allgather(mx.nd.array([len(chunks)], dtype="int32"), name="semi_online_chunks")
            wanted = int(counts.asnumpy().max())
            padding = np.arange(min(max_images, len(labels)), dtype=np.int64)
            empty = np.zeros(0, dtype=np.int64)
            while len(chunks) < wanted:
                chunks.append(PoolChunk(items[padding], labels[padding], (empty, empty, empty)))
        return chunks
