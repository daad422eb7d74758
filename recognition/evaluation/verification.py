"""The 10-fold face-verification protocol of insightface's ``verification.py`` (LFW, CFP, AgeDB).

Pairs are scored by the squared L2 distance of their L2-normalised embeddings. Accuracy: the
pairs, in file order, are cut into 10 contiguous folds (scikit-learn ``KFold(10, shuffle=False)``:
the first ``P % 10`` folds one pair longer); for each fold the threshold out of
``np.arange(0, 4, 0.01)`` with the best accuracy on the other nine folds is applied to it.
TAR@FAR is insightface's ``calculate_val`` (thresholds ``np.arange(0, 4, 0.001)``, the threshold
reaching the target FAR on the training folds by linear interpolation, as insightface's
``interp1d(far, thresholds, 'slinear')``; see :func:`threshold_for_far`),
reported for several targets instead of discarded. AUC and EER come from the exact ROC over all
pairs.

Counting is vectorised with ``searchsorted`` over sorted distances; it counts exactly the
``dist < threshold`` decisions of insightface's per-threshold loop, so the results are identical.
"""
import numpy as np

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGETS = (1e-3, 1e-4)


def kfold_splits(n, n_splits=10):
    """(train, test) index arrays of scikit-learn ``KFold(n_splits, shuffle=False)`` over range(n);
    one split with train = test = everything when ``n_splits == 1`` (insightface's LFold)."""
    indices = np.arange(n)
    if n_splits == 1:
        return [(indices, indices)]
    if n_splits < 1 or n_splits > n:
        raise ValueError(f"cannot cut {n} pairs into {n_splits} folds")
    sizes = np.full(n_splits, n // n_splits, dtype=np.int64)
    sizes[:n % n_splits] += 1
    splits, start = [], 0
    for size in sizes:
        test = indices[start:start + size]
        train = np.concatenate([indices[:start], indices[start + size:]])
        splits.append((train, test))
        start += size
    return splits


def l2_normalise(embeddings):
    """Rows scaled to unit L2 norm, float64; zero rows stay zero (like sklearn.preprocessing.normalize)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms == 0, 1.0, norms)


def pair_distances(embeddings):
    """(2P, D) embeddings, pair i at rows 2i and 2i+1 -> squared L2 distances (P,) after
    :func:`l2_normalise`."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) % 2:
        raise ValueError(f"embeddings must be (2P, D), got shape {embeddings.shape}")
    normalised = l2_normalise(embeddings)
    diff = normalised[0::2] - normalised[1::2]
    return np.sum(np.square(diff), 1)


def _counts_below(dist, issame, thresholds):
    """For every threshold t: (#same pairs with dist < t, #different pairs with dist < t)."""
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    return (np.searchsorted(same, thresholds, side="left"),
            np.searchsorted(diff, thresholds, side="left"), len(same), len(diff))


def accuracy_at(dist, issame, thresholds):
    """Accuracy of ``dist < t`` for each threshold t (insightface's calculate_accuracy)."""
    tp, fp, n_same, n_diff = _counts_below(dist, issame, thresholds)
    tn = n_diff - fp
    return (tp + tn).astype(np.float64) / dist.size


def val_far_at(dist, issame, thresholds):
    """(TAR, FAR) of ``dist < t`` for each threshold t (insightface's calculate_val_far;
    a side with no pairs gives 0 instead of dividing by zero)."""
    ta, fa, n_same, n_diff = _counts_below(dist, issame, np.atleast_1d(thresholds))
    val = ta / float(n_same) if n_same else np.zeros(len(ta))
    far = fa / float(n_diff) if n_diff else np.zeros(len(fa))
    return val, far


def threshold_for_far(far, thresholds, far_target):
    """The threshold at which the (non-decreasing) FAR curve reaches ``far_target``.

    This is what insightface's ``interp1d(far, thresholds, kind='slinear')(far_target)`` computed
    with the SciPy of its time: a degree-1 spline through the points, where a run of equal FAR
    values (there are many: FAR is a count over the training pairs) is a jump, so the target
    falls between the *last* threshold of the run at or below it and the *first* threshold above.
    SciPy >= 1.9 refuses duplicate x in ``slinear``, hence the explicit form.
    """
    lo = int(np.searchsorted(far, far_target, side="right")) - 1
    if lo < 0:  # below the curve (cannot happen with insightface's thresholds: FAR(0) = 0)
        return float(thresholds[0])
    if lo >= len(far) - 1 or far[lo] == far_target:
        return float(thresholds[lo])
    hi = lo + 1
    weight = (far_target - far[lo]) / (far[hi] - far[lo])
    return float(thresholds[lo] + weight * (thresholds[hi] - thresholds[lo]))


def tar_at_far(dist, issame, far_target, nfolds=10, thresholds=VAL_THRESHOLDS):
    """insightface's calculate_val: per fold, the training-fold threshold reaching ``far_target``
    (linear interpolation of FAR -> threshold), then TAR and FAR on the test fold.
    Returns (mean TAR, std TAR, mean FAR)."""
    vals, fars = [], []
    for train, test in kfold_splits(len(dist), nfolds):
        _, far_train = val_far_at(dist[train], issame[train], thresholds)
        if np.max(far_train) >= far_target:
            threshold = threshold_for_far(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        val, far = val_far_at(dist[test], issame[test], threshold)
        vals.append(val[0])
        fars.append(far[0])
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def roc_curve(dist, issame):
    """Exact ROC of accepting pairs with ``dist <= t`` over all thresholds:
    (fpr, tpr, thresholds), starting at (0, 0) and ending at (1, 1)."""
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    order = np.argsort(dist, kind="mergesort")
    sorted_dist, sorted_same = dist[order], issame[order]
    # the last index of every run of equal distances: ties are accepted together
    last = np.r_[np.nonzero(np.diff(sorted_dist))[0], len(dist) - 1]
    tp = np.cumsum(sorted_same)[last]
    fp = np.cumsum(~sorted_same)[last]
    n_same, n_diff = max(int(issame.sum()), 1), max(int((~issame).sum()), 1)
    tpr = np.r_[0.0, tp / n_same]
    fpr = np.r_[0.0, fp / n_diff]
    return fpr, tpr, np.r_[-np.inf, sorted_dist[last]]


def auc_eer(dist, issame):
    """Area under the exact ROC (ties count one half) and the equal error rate (the FAR where
    FAR = 1 - TAR, linearly interpolated between ROC points)."""
    fpr, tpr, _ = roc_curve(dist, issame)
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    gap = fpr - (1 - tpr)  # rises from -1 to +1 along the curve
    k = int(np.argmax(gap >= 0))
    if k == 0:
        return auc, float(fpr[0])
    g0, g1 = gap[k - 1], gap[k]
    w = 0.0 if g1 == g0 else -g0 / (g1 - g0)
    return auc, float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def verify_pairs(embeddings, issame, nfolds=10, xnorm=None, far_targets=FAR_TARGETS):
    """Score a verification set.

    ``embeddings``: (2P, D) raw embeddings, pair i at rows 2i, 2i+1 (normalised here).
    ``issame``: (P,) booleans. ``xnorm``: the mean L2 norm to report; by default that of the
    given rows (insightface reports the mean norm of the unfused plain and mirrored embeddings,
    which :func:`recognition.evaluation.evaluate` passes in).

    Returns a dict of Python floats: accuracy, accuracy_std (over folds), threshold (mean of the
    per-fold best thresholds), auc, eer, xnorm, and tar_at_far_1e-3 / tar_at_far_1e-4 with their
    ``_std`` and the achieved ``far_at_far_...``; plus ``pairs``.
    """
    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame).astype(bool).ravel()
    if len(embeddings) != 2 * len(issame):
        raise ValueError(f"{len(embeddings)} embeddings for {len(issame)} pairs (expected {2 * len(issame)})")
    dist = pair_distances(embeddings)
    accuracies, best_thresholds = [], []
    for train, test in kfold_splits(len(dist), nfolds):
        best = int(np.argmax(accuracy_at(dist[train], issame[train], ACCURACY_THRESHOLDS)))
        threshold = ACCURACY_THRESHOLDS[best]
        accuracies.append(accuracy_at(dist[test], issame[test], np.array([threshold]))[0])
        best_thresholds.append(threshold)
    if xnorm is None:
        xnorm = float(np.mean(np.linalg.norm(embeddings.astype(np.float64), axis=1)))
    auc, eer = auc_eer(dist, issame)
    result = {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "threshold": float(np.mean(best_thresholds)),
        "auc": auc,
        "eer": eer,
        "xnorm": float(xnorm),
        "pairs": int(len(issame)),
    }
    for target in far_targets:
        tar, tar_std, far = tar_at_far(dist, issame, target, nfolds)
        key = f"{target:.0e}".replace("e-0", "e-")
        result[f"tar_at_far_{key}"] = tar
        result[f"tar_at_far_{key}_std"] = tar_std
        result[f"far_at_far_{key}"] = far
    return result
