"""Linear maps of embeddings fitted on the training people, applied before cosine scoring.

Verification scores a pair by the angle between its two embeddings. Three maps change what the
angle measures, each fitted on the L2-normalised embeddings of the training images only (never the
pairs being scored):

- ``center``: subtract the training mean. A direction every face shares inflates all cosines
  alike; removing it leaves the directions that tell people apart.
- ``pca``: centre, then whiten the total covariance (Jegou & Chum 2012, retrieval): every
  direction of the training embeddings gets unit variance.
- ``wccn``: centre, then whiten the within-class covariance (within-class covariance
  normalisation, Hatch et al. 2006): directions along which one person's photos vary count less.

Whitening divides by the square roots of the covariance's eigenvalues; the smallest are noise, so
``shrink`` adds ``shrink`` x their mean to every eigenvalue first (0 whitens fully).
"""
import numpy as np

from .verification import l2_normalise

KINDS = ("none", "center", "pca", "wccn")


def within_class_covariance(features, labels):
    """Mean over the images of classes with >= 2 images of (x - class mean)(x - class mean)^T."""
    labels = np.asarray(labels).ravel()
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2  # a class of one image has no within-class spread
    if not keep.any():
        raise ValueError("within-class covariance needs a class with at least 2 images")
    x, inverse = features[keep], inverse[keep]
    means = np.zeros((len(classes), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    centred = x - means[inverse]
    return centred.T @ centred / len(x)


def inverse_sqrt(covariance, shrink):
    """(C + shrink * mean eigenvalue * I)^(-1/2), symmetric."""
    values, vectors = np.linalg.eigh(covariance)
    values = np.clip(values, 0.0, None) + shrink * max(float(np.mean(values)), 1e-12)
    return (vectors / np.sqrt(values)) @ vectors.T


def fit_whitening(features, labels=None, kind="wccn", shrink=0.1):
    """Fit a map on training embeddings (N, D) (normalised here). Returns {"kind", "shrink",
    "mean" (D,), "matrix" (D, D)}: :func:`apply_whitening` computes (x / |x| - mean) @ matrix."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = l2_normalise(features)
    dim = x.shape[1]
    mean = np.zeros(dim) if kind == "none" else x.mean(axis=0)
    if kind in ("none", "center"):
        matrix = np.eye(dim)
    elif kind == "pca":
        centred = x - mean
        matrix = inverse_sqrt(centred.T @ centred / len(x), shrink)
    else:
        if labels is None:
            raise ValueError("wccn needs the identity of every training embedding")
        matrix = inverse_sqrt(within_class_covariance(x, labels), shrink)
    return {"kind": kind, "shrink": float(shrink), "mean": mean, "matrix": matrix}


def apply_whitening(features, transform):
    """Embeddings (N, D) mapped by a fitted transform (not normalised again: the scorer does)."""
    return (l2_normalise(features) - transform["mean"]) @ transform["matrix"]
