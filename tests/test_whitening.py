"""The embedding maps fitted on training people (recognition.evaluation.whitening), checked against
their definitions computed here with plain loops."""
import numpy as np
import pytest

from recognition.evaluation.whitening import apply_whitening, fit_whitening, within_class_covariance


def clustered(seed=0, classes=30, per_class=6, dim=8, singletons=5):
    """Anisotropic clusters (a few singleton classes too) with a common offset, as embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2 + 5
    spread = np.diag(np.linspace(0.2, 2.0, dim))
    x = np.concatenate([c + rng.normal(size=(per_class, dim)) @ spread for c in centres]
                       + [rng.normal(size=(singletons, dim)) + 5])
    labels = np.concatenate([np.repeat(np.arange(classes), per_class), classes + np.arange(singletons)])
    return x, labels


def normalised(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_within_class_covariance_is_the_mean_outer_product_over_classes_with_two_images():
    x, labels = clustered()
    expected, count = np.zeros((x.shape[1], x.shape[1])), 0
    for c in np.unique(labels):
        members = x[labels == c]
        if len(members) < 2:
            continue
        for row in members - members.mean(axis=0):
            expected += np.outer(row, row)
            count += 1
    np.testing.assert_allclose(within_class_covariance(x, labels), expected / count, rtol=1e-10)


def test_wccn_without_shrink_makes_the_training_within_class_covariance_the_identity():
    x, labels = clustered()
    mapped = apply_whitening(x, fit_whitening(x, labels, "wccn", shrink=0.0))
    within = np.zeros((x.shape[1], x.shape[1]))
    keep = [c for c in np.unique(labels) if np.sum(labels == c) >= 2]
    for c in keep:
        centred = mapped[labels == c] - mapped[labels == c].mean(axis=0)
        within += centred.T @ centred
    within /= sum(np.sum(labels == c) for c in keep)
    np.testing.assert_allclose(within, np.eye(x.shape[1]), atol=1e-8)


def test_pca_whitening_gives_unit_covariance_and_shrink_scales_each_eigenvalue():
    x, labels = clustered(seed=1)
    mapped = apply_whitening(x, fit_whitening(x, kind="pca", shrink=0.0))
    np.testing.assert_allclose(mapped.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(mapped.T, bias=True), np.eye(x.shape[1]), atol=1e-8)
    # with shrink s every eigenvalue l of the covariance becomes l / (l + s * mean(l))
    eigenvalues = np.linalg.eigvalsh(np.cov(normalised(x).T, bias=True))
    shrunk = apply_whitening(x, fit_whitening(x, kind="pca", shrink=0.5))
    expected = np.sort(eigenvalues / (eigenvalues + 0.5 * eigenvalues.mean()))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.cov(shrunk.T, bias=True))), expected, atol=1e-8)


def test_center_subtracts_the_normalised_training_mean_and_none_only_normalises():
    x, labels = clustered(seed=2)
    held = np.random.default_rng(3).normal(size=(4, x.shape[1]))
    np.testing.assert_allclose(apply_whitening(held, fit_whitening(x, kind="center")),
                               normalised(held) - normalised(x).mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(apply_whitening(held, fit_whitening(x, kind="none")), normalised(held), atol=1e-12)


def test_centring_raises_the_margin_between_same_and_different_pairs_of_offset_clusters():
    # a common offset makes every cosine high; removing it separates people (why "center" exists)
    x, labels = clustered(seed=4)
    fit = fit_whitening(x, labels, "center")
    plain, centred = normalised(x), normalised(apply_whitening(x, fit))
    same = labels[:, None] == labels[None, :]
    gap = [np.mean((e @ e.T)[same & ~np.eye(len(x), dtype=bool)]) - np.mean((e @ e.T)[~same])
           for e in (plain, centred)]
    assert gap[1] > gap[0]


def test_bad_requests_say_what_is_missing():
    x, labels = clustered()
    with pytest.raises(ValueError, match="kind must be one of"):
        fit_whitening(x, labels, "lda")
    with pytest.raises(ValueError, match="needs the identity"):
        fit_whitening(x, None, "wccn")
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_whitening(x[:3], np.arange(3), "wccn")
