"""Verification: batched flip-fused embeddings and insightface's 10-fold protocol.

``evaluate`` is distributed-aware: under horovodrun each worker embeds a contiguous share of the
images, the shares are gathered in rank order, and every worker scores the whole set, so all
workers return the same dict as a single process would.
"""
import numpy as np

import mxnet as mx

from .. import distributed
from .embed import FLIP_MODES, embed_images, embed_views, fuse_views
from .verification import kfold_splits, roc_curve, verify_pairs

__all__ = ["evaluate", "embed_shared", "embed_images", "embed_views", "fuse_views", "verify_pairs",
           "kfold_splits", "roc_curve", "FLIP_MODES"]


def embed_shared(net, images, batch_size=64, flip="sum", ctx=None, progress=False):
    """Embeddings of all ``images`` computed jointly by every worker.

    Returns (fused (N, D') float32 embeddings, per-image mean L2 norm of the unfused views).
    Single-process it is :func:`embed_views` + :func:`fuse_views`.
    """
    images = np.asarray(images)
    n, workers, rank = len(images), distributed.size(), distributed.rank()
    if workers == 1:
        views = embed_views(net, images, batch_size, flip, ctx, progress)
        return fuse_views(views, flip), np.mean([np.linalg.norm(v, axis=1) for v in views], axis=0)
    # Every worker embeds the same number of images (allgather wants equal shapes, and a worker
    # with nothing to do would not know D); the short last shares are padded and cut off after.
    share = -(-n // workers)
    start = min(rank * share, n)
    mine = images[start:start + share]
    if len(mine) < share:
        pad = np.zeros((share - len(mine),) + images.shape[1:], dtype=images.dtype)
        mine = np.concatenate([mine, pad])
    views = embed_views(net, mine, batch_size, flip, ctx, progress and rank == 0)
    fused = fuse_views(views, flip)
    norms = np.mean([np.linalg.norm(v, axis=1) for v in views], axis=0)
    # the norm travels as one more column so a single collective carries everything
    packed = mx.nd.array(np.concatenate([fused, norms[:, None]], axis=1), dtype=np.float32)
    gathered = distributed.allgather(packed, name="evaluate_embeddings").asnumpy()[:n]
    return gathered[:, :-1], gathered[:, -1]


def evaluate(net, images, issame, batch_size=64, flip="sum", ctx=None, nfolds=10, progress=False):
    """Embed a verification set and score it (:func:`verify_pairs`); XNorm is insightface's,
    the mean norm of the plain and mirrored embeddings before fusion."""
    embeddings, norms = embed_shared(net, images, batch_size, flip, ctx, progress)
    return verify_pairs(embeddings, issame, nfolds=nfolds, xnorm=float(np.mean(norms)))
