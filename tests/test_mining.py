"""select_triplets against plain-loop transcriptions of MassFace Algorithms 2-6.

The reference functions below follow the paper's pseudo-code line by line (persons -> anchors ->
positives -> negatives), keeping the first candidate met on ties (the running best is replaced
only on a strict improvement), which is the tie rule mining.py documents.
"""
import numpy as np
import pytest

import mxnet as mx

from recognition.losses.mining import STRATEGIES, SemiOnlinePool, select_triplets, squared_distances

MARGIN = 0.2


def persons(labels):
    """The paper's loop: for each person, its images in increasing index."""
    return [[i for i in range(len(labels)) if labels[i] == person] for person in dict.fromkeys(labels.tolist())]


def valid_negatives(dist, labels, i, j):
    """Algorithm 1/2 inner loop: negatives k of another person with M(i,j) + alpha > M(i,k)."""
    return [k for k in range(len(labels)) if labels[k] != labels[i] and float(dist[i, j]) + MARGIN > float(dist[i, k])]


def ref_batch_all(dist, labels):
    t = []
    for images in persons(labels):
        for i in images:
            for j in images:
                if j != i:
                    t.extend((i, j, k) for k in valid_negatives(dist, labels, i, j))
    return t


def ref_batch_min_min(dist, labels):
    t = []
    for images in persons(labels):
        for i in images:
            best = None
            for j in images:
                if j == i:
                    continue
                for k in valid_negatives(dist, labels, i, j):
                    if best is None or dist[i, k] < dist[best[0], best[2]]:
                        best = (i, j, k)
            if best is not None:
                t.append(best)
    return t


def ref_batch_min_max(dist, labels):
    t = []
    for images in persons(labels):
        for i in images:
            t1 = []
            for j in images:
                if j == i:
                    continue
                k_min = None
                for k in valid_negatives(dist, labels, i, j):
                    if k_min is None or dist[i, k] < dist[i, k_min]:
                        k_min = k
                if k_min is not None:
                    t1.append((i, j, k_min))
            best = None
            for triplet in t1:
                if best is None or dist[i, triplet[2]] > dist[i, best[2]]:
                    best = triplet
            if best is not None:
                t.append(best)
    return t


def ref_batch_hardest(dist, labels):
    t = []
    for images in persons(labels):
        best = None
        for i in images:
            for j in images:
                if j == i:
                    continue
                for k in valid_negatives(dist, labels, i, j):
                    if best is None or dist[i, k] < dist[best[0], best[2]]:
                        best = (i, j, k)
        if best is not None:
            t.append(best)
    return t


REFERENCES = {"batch_all": ref_batch_all, "batch_min_min": ref_batch_min_min,
              "batch_min_max": ref_batch_min_max, "batch_hardest": ref_batch_hardest}


def random_problem(seed, batch=30, quantized=False):
    """Shuffled labels with uneven identity sizes (incl. a singleton) and non-contiguous ids, and a
    symmetric distance matrix; ``quantized`` rounds the distances to 0.1 so ties are common."""
    rng = np.random.RandomState(seed)
    sizes = [1, 2, 3, 4, 5] + [rng.randint(2, 6) for _ in range(batch)]
    labels = np.concatenate([[100 + 7 * p] * s for p, s in enumerate(sizes)])[:batch]
    labels = labels[rng.permutation(batch)]
    dist = rng.uniform(0.0, 1.6, size=(batch, batch))
    if quantized:
        dist = np.round(dist * 10) / 10
    dist = (dist + dist.T) / 2 if not quantized else np.minimum(dist, dist.T)
    np.fill_diagonal(dist, 0.0)
    return dist, labels


def as_set(triplets):
    return set(zip(*(t.tolist() for t in triplets)))


PROBLEMS = [(seed, q) for seed in range(4) for q in (False, True)]


@pytest.mark.parametrize("seed,quantized", PROBLEMS)
@pytest.mark.parametrize("strategy", sorted(REFERENCES))
def test_deterministic_strategies_match_the_paper_loops(strategy, seed, quantized):
    dist, labels = random_problem(seed, quantized=quantized)
    got = select_triplets(dist, labels, strategy, MARGIN)
    expected = REFERENCES[strategy](dist, labels)
    assert len(expected) > 0
    assert [len(t) for t in got] == [len(expected)] * 3
    assert all(t.dtype == np.int64 for t in got)
    # exact triplets (tie-breaking included), returned sorted by (anchor, positive, negative)
    assert list(zip(*(t.tolist() for t in got))) == sorted(expected)


@pytest.mark.parametrize("seed", range(4))
def test_min_min_and_min_max_coincide(seed):
    # documented consequence of the pseudo-code: an anchor's nearest negative is valid for every
    # positive that has a valid negative, so Algorithms 4 and 5 pick the same triplets
    dist, labels = random_problem(seed, quantized=bool(seed % 2))
    min_min = select_triplets(dist, labels, "batch_min_min", MARGIN)
    min_max = select_triplets(dist, labels, "batch_min_max", MARGIN)
    assert len(min_min[0]) > 0
    assert all(np.array_equal(x, y) for x, y in zip(min_min, min_max))


def test_ties_are_common_in_the_quantized_problems():
    # guards the previous test: with rounded distances the argmin/argmax really has ties to break
    dist, labels = random_problem(0, quantized=True)
    ties = 0
    for a, p, n in ref_batch_min_min(dist, labels):
        ks = [k for j in range(len(labels)) if labels[j] == labels[a] and j != a
              for k in valid_negatives(dist, labels, a, j)]
        ties += sum(dist[a, k] == dist[a, n] for k in ks) > 1
    assert ties > 5


@pytest.mark.parametrize("seed", range(3))
def test_batch_random_one_valid_negative_per_pair(seed):
    dist, labels = random_problem(seed)
    got = select_triplets(dist, labels, "batch_random", MARGIN, rng=seed)
    pairs_with_negatives = {(i, j) for i, j, _ in ref_batch_all(dist, labels)}
    assert len(pairs_with_negatives) > 0
    pairs = list(zip(got[0].tolist(), got[1].tolist()))
    assert len(pairs) == len(set(pairs))                 # one triplet per (anchor, positive)
    assert set(pairs) == pairs_with_negatives            # for every pair that has a valid negative
    assert as_set(got) <= set(ref_batch_all(dist, labels))  # and each one is valid


def test_batch_random_is_uniform_and_seeded():
    dist, labels = random_problem(1)
    anchor, positive = next((i, j) for i, j, _ in ref_batch_all(dist, labels)
                            if len(valid_negatives(dist, labels, i, j)) >= 4)
    candidates = valid_negatives(dist, labels, anchor, positive)
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(candidates, 0)
    draws = 100 * len(candidates)
    for _ in range(draws):
        a, p, n = select_triplets(dist, labels, "batch_random", MARGIN, rng=rng)
        counts[int(n[(a == anchor) & (p == positive)][0])] += 1
    # every valid negative is drawn, roughly equally often (expected 100 each)
    assert min(counts.values()) > 50 and max(counts.values()) < 150
    first = select_triplets(dist, labels, "batch_random", MARGIN, rng=5)
    again = select_triplets(dist, labels, "batch_random", MARGIN, rng=5)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_blocked_evaluation_gives_the_same_result(strategy, monkeypatch):
    # the pairs are processed in blocks to bound memory; the result must not depend on it
    import recognition.losses.mining as mining
    dist, labels = random_problem(7, batch=40, quantized=True)
    whole = select_triplets(dist, labels, strategy, MARGIN, rng=3)
    monkeypatch.setattr(mining, "_BLOCK_ELEMENTS", 40 * 3)  # 3 pairs per block
    blocked = select_triplets(dist, labels, strategy, MARGIN, rng=3)
    assert len(whole[0]) > 0
    assert all(np.array_equal(x, y) for x, y in zip(blocked, whole))


def test_ndarray_inputs_and_no_triplets():
    dist, labels = random_problem(2)
    np_result = select_triplets(dist, labels, "batch_hardest", MARGIN)
    nd_result = select_triplets(mx.nd.array(dist, dtype="float64"), mx.nd.array(labels), "batch_hardest", MARGIN)
    assert all(np.array_equal(x, y) for x, y in zip(np_result, nd_result))
    # all negatives farther than every positive + margin: nothing is valid
    labels = np.array([0, 0, 1, 1])
    far = np.array([[0, .1, 2, 2], [.1, 0, 2, 2], [2, 2, 0, .1], [2, 2, .1, 0]])
    for strategy in STRATEGIES:
        got = select_triplets(far, labels, strategy, MARGIN, rng=0)
        assert all(len(t) == 0 and t.dtype == np.int64 for t in got)
    # singletons only: no positives at all
    assert all(len(t) == 0 for t in select_triplets(np.zeros((3, 3)), np.arange(3), "batch_all", MARGIN))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown triplet strategy"):
        select_triplets(np.zeros((2, 2)), np.zeros(2), "semi_hard", MARGIN)
    with pytest.raises(ValueError, match="distance matrix"):
        select_triplets(np.zeros((3, 3)), np.zeros(2), "batch_all", MARGIN)


def test_squared_distances_of_normalised_embeddings():
    rng = np.random.RandomState(0)
    emb = rng.normal(size=(9, 5)) * rng.uniform(0.5, 3, size=(9, 1))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(emb), expected, atol=1e-12)
    np.testing.assert_allclose(squared_distances(mx.nd.array(emb)), expected, atol=1e-6)
    raw = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(emb, normalize=False), raw, atol=1e-10)


def test_semi_online_pool_mines_the_pooled_batches():
    rng = np.random.RandomState(3)
    pool = SemiOnlinePool(3)
    embeddings, labels, items = [], [], []
    for step in range(3):
        emb = rng.normal(size=(12, 4)).astype(np.float32)
        lab = np.repeat(rng.choice(8, 4, replace=False), 3)  # identities recur across batches
        ids = np.arange(12) + 1000 * step
        full = pool.add(mx.nd.array(emb), lab, ids)
        assert full == (step == 2) and len(pool) == step + 1
        embeddings.append(emb), labels.append(lab), items.append(ids)
    embeddings, labels, items = map(np.concatenate, (embeddings, labels, items))
    expected = select_triplets(squared_distances(embeddings), labels, "batch_min_max", MARGIN)
    assert len(expected[0]) > 10

    chunks = pool.select("batch_min_max", MARGIN, max_images=7)
    assert len(pool) == 0 and not pool.full
    assert len(chunks) > 1
    mined = []
    for chunk in chunks:
        assert len(chunk.items) <= 7 and len(set(chunk.items.tolist())) == len(chunk.items)
        assert len(chunk.triplets[0]) > 0
        position = {item: k for k, item in enumerate(items.tolist())}
        pooled = np.array([position[item] for item in chunk.items.tolist()])
        np.testing.assert_array_equal(chunk.labels, labels[pooled])
        mined.extend(zip(*(pooled[t].tolist() for t in chunk.triplets)))
    # chunks cover every mined triplet exactly once, in order
    assert mined == list(zip(*(t.tolist() for t in expected)))

    with pytest.raises(ValueError, match="empty pool"):
        pool.select("batch_min_max", MARGIN)
    with pytest.raises(ValueError, match="3 embeddings, 2 labels"):
        pool.add(np.zeros((3, 4)), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="size_batches"):
        SemiOnlinePool(0)
