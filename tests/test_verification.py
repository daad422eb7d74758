"""verify_pairs against an independent, loop-by-loop transcription of insightface's
verification.py (calculate_roc / calculate_accuracy / calculate_val / calculate_val_far)."""
import numpy as np
import pytest
from scipy import interpolate

from recognition.evaluation.verification import (auc_eer, kfold_splits, pair_distances, roc_curve,
                                                 threshold_for_far, verify_pairs)


# ---- the reference: insightface's code with sklearn's KFold/normalize written out ------------
def ref_kfold(n, k):
    """sklearn KFold(k, shuffle=False).split(range(n))"""
    fold_sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    current = 0
    for size in fold_sizes:
        test = list(range(current, current + size))
        train = [i for i in range(n) if i < current or i >= current + size]
        yield np.array(train), np.array(test)
        current += size


def ref_normalize(x):
    out = np.array(x, dtype=np.float64)
    for i in range(len(out)):
        norm = np.sqrt(np.sum(out[i] ** 2))
        if norm > 0:
            out[i] = out[i] / norm
    return out


def ref_calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def ref_calculate_roc(thresholds, e1, e2, actual_issame, nrof_folds=10):
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    accuracy, best = [], []
    for train_set, test_set in ref_kfold(len(actual_issame), nrof_folds):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = ref_calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        _, _, acc = ref_calculate_accuracy(thresholds[best_threshold_index], dist[test_set], actual_issame[test_set])
        accuracy.append(acc)
        best.append(thresholds[best_threshold_index])
    return np.array(accuracy), np.array(best)


def ref_calculate_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    return float(true_accept) / float(n_same), float(false_accept) / float(n_diff)


def old_scipy_slinear(x, y, at):
    """interp1d(x, y, kind='slinear') as SciPy < 1.9 computed it (duplicates allowed): the
    degree-1 B-spline with knots [x0, x, xn] and coefficients y."""
    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    return float(interpolate.BSpline(np.r_[x[0], x, x[-1]], y, 1)(at))


def ref_calculate_val(thresholds, e1, e2, actual_issame, far_target, nrof_folds=10):
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    val, far = [], []
    for train_set, test_set in ref_kfold(len(actual_issame), nrof_folds):
        far_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, far_train[threshold_idx] = ref_calculate_val_far(threshold, dist[train_set], actual_issame[train_set])
        if np.max(far_train) >= far_target:
            threshold = old_scipy_slinear(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        v, f = ref_calculate_val_far(threshold, dist[test_set], actual_issame[test_set])
        val.append(v)
        far.append(f)
    return np.mean(val), np.std(val), np.mean(far)


def ref_evaluate(raw, issame, nfolds=10):
    xnorm = np.mean([np.linalg.norm(row) for row in raw])
    emb = ref_normalize(raw)
    acc, best = ref_calculate_roc(np.arange(0, 4, 0.01), emb[0::2], emb[1::2], issame, nfolds)
    thresholds = np.arange(0, 4, 0.001)
    val3 = ref_calculate_val(thresholds, emb[0::2], emb[1::2], issame, 1e-3, nfolds)
    val4 = ref_calculate_val(thresholds, emb[0::2], emb[1::2], issame, 1e-4, nfolds)
    return acc, best, xnorm, val3, val4


def make_pairs(num_pairs, dim, noise, seed):
    rng = np.random.RandomState(seed)
    raw = rng.randn(2 * num_pairs, dim) * rng.uniform(5, 30, (2 * num_pairs, 1))
    issame = rng.rand(num_pairs) < 0.5
    partner = raw[0::2][issame] + noise * rng.randn(int(issame.sum()), dim) * np.linalg.norm(raw[0::2][issame], axis=1, keepdims=True) / np.sqrt(dim)
    raw[1::2][issame] = partner
    return raw, issame


@pytest.mark.parametrize("num_pairs,dim,noise,nfolds,seed", [
    (600, 32, 0.6, 10, 0),     # LFW-like: 10 equal folds
    (1237, 16, 1.0, 10, 1),    # uneven folds (1237 % 10 = 7 folds of 124)
    (3000, 16, 0.9, 10, 2),    # enough different pairs to reach FAR 1e-3 in the training folds
    (150, 24, 0.8, 5, 3),
])
def test_verify_pairs_matches_insightface_transcription(num_pairs, dim, noise, nfolds, seed):
    raw, issame = make_pairs(num_pairs, dim, noise, seed)
    acc, best, xnorm, val3, val4 = ref_evaluate(raw, issame, nfolds)
    result = verify_pairs(raw, issame, nfolds=nfolds)
    assert 0.55 < result["accuracy"] < 1.0  # a non-trivial case
    assert result["accuracy"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(np.std(acc), abs=1e-12)
    assert result["threshold"] == pytest.approx(np.mean(best), abs=1e-12)
    assert result["xnorm"] == pytest.approx(xnorm, rel=1e-12)
    assert result["tar_at_far_1e-3"] == pytest.approx(val3[0], abs=1e-12)
    assert result["tar_at_far_1e-3_std"] == pytest.approx(val3[1], abs=1e-12)
    assert result["far_at_far_1e-3"] == pytest.approx(val3[2], abs=1e-12)
    assert result["tar_at_far_1e-4"] == pytest.approx(val4[0], abs=1e-12)
    assert result["tar_at_far_1e-4_std"] == pytest.approx(val4[1], abs=1e-12)
    assert result["pairs"] == num_pairs


def test_kfold_is_sklearn_semantics():
    splits = kfold_splits(23, 10)
    assert [len(test) for _, test in splits] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    for (train, test), (rtrain, rtest) in zip(splits, ref_kfold(23, 10)):
        assert test.tolist() == rtest.tolist() and train.tolist() == rtrain.tolist()
    assert np.concatenate([t for _, t in splits]).tolist() == list(range(23))
    train, test = kfold_splits(5, 1)[0]
    assert train.tolist() == test.tolist() == list(range(5))
    with pytest.raises(ValueError):
        kfold_splits(5, 10)


def test_threshold_for_far_is_old_slinear():
    rng = np.random.RandomState(5)
    for _ in range(50):
        far = np.sort(np.round(rng.rand(40), 1))  # many duplicates, as counted FARs have
        thresholds = np.arange(40) * 0.1
        for target in (0.0, 0.05, 0.1, 0.33):
            if far.min() < target < far.max():  # inside the curve, as FAR targets are (FAR(0) = 0)
                assert threshold_for_far(far, thresholds, target) == pytest.approx(
                    old_scipy_slinear(far, thresholds, target), abs=1e-12)


def test_auc_eer_against_pair_counting():
    rng = np.random.RandomState(7)
    dist = np.round(rng.rand(400) * 4, 2)  # with ties
    issame = rng.rand(400) < 0.4
    dist[issame] *= 0.6
    auc, eer = auc_eer(dist, issame)
    same, diff = dist[issame], dist[~issame]
    # AUC = P(same pair closer than different pair) + half the ties
    wins = sum((s < d) + 0.5 * (s == d) for s in same for d in diff)
    assert auc == pytest.approx(wins / (len(same) * len(diff)), abs=1e-12)
    # EER: where FAR (accept different) meets FRR (reject same) as the threshold moves
    fpr, tpr, _ = roc_curve(dist, issame)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    grid = np.linspace(0, 4, 40001)
    far = np.array([(diff <= t).mean() for t in grid[::50]])
    frr = np.array([(same > t).mean() for t in grid[::50]])
    k = np.argmin(np.abs(far - frr))
    assert abs(eer - (far[k] + frr[k]) / 2) < 0.03
    assert 0 < eer < 0.5


def test_perfect_and_random_embeddings():
    rng = np.random.RandomState(8)
    base = rng.randn(100, 16)
    issame = np.arange(100) % 2 == 0
    raw = np.empty((200, 16))
    raw[0::2] = base
    raw[1::2] = np.where(issame[:, None], base * 3.0, rng.randn(100, 16))  # scale does not matter
    result = verify_pairs(raw, issame)
    assert result["accuracy"] == 1.0 and result["auc"] == 1.0 and result["eer"] == 0.0
    assert result["tar_at_far_1e-3"] == 1.0
    noise = verify_pairs(rng.randn(2000, 16), rng.rand(1000) < 0.5)
    assert 0.4 < noise["accuracy"] < 0.6 and 0.4 < noise["auc"] < 0.6


def test_pair_distances_and_bad_shapes():
    raw = np.array([[3.0, 0], [0, 2.0], [0, 0], [0, 0]])
    assert pair_distances(raw).tolist() == pytest.approx([2.0, 0.0])
    with pytest.raises(ValueError):
        verify_pairs(np.zeros((5, 3)), [True, False])
    with pytest.raises(ValueError):
        verify_pairs(np.zeros((6, 3)), [True, False])
