"""Batched, flip-fused embeddings of face images.

The network takes float32 NCHW RGB in 0..255 and normalises inside (as insightface's exported
models do), so this module only transposes and casts. Flip fusion follows insightface: the
embedding of the image plus that of its horizontal mirror ("sum"), or their concatenation.
"""
import numpy as np

import mxnet as mx

FLIP_MODES = ("sum", "concat", "none")


def default_context(net):
    """The context the network's parameters live on (CPU when it has none yet)."""
    for param in net.collect_params().values():
        try:
            return param.list_ctx()[0]
        except Exception:  # parameter not initialised yet
            break
    return mx.cpu()


def _forward(net, batch, ctx):
    """uint8 NHWC batch -> float32 (B, D) NumPy embeddings (first output of the network)."""
    data = mx.nd.array(batch, ctx=ctx, dtype=np.float32).transpose((0, 3, 1, 2))
    out = net(data)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.asnumpy().astype(np.float32, copy=False).reshape(len(batch), -1)


def embed_views(net, images, batch_size=64, flip="sum", ctx=None, progress=False):
    """Embeddings of each view: a list of float32 (N, D) arrays, [plain] or [plain, mirrored]."""
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got shape {images.shape}")
    ctx = ctx or default_context(net)
    mirrors = (False,) if flip == "none" else (False, True)
    views = [[] for _ in mirrors]
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="embed", unit="batch", leave=False)
    for start in starts:
        batch = images[start:start + batch_size]
        for view, mirrored in zip(views, mirrors):
            view.append(_forward(net, batch[:, :, ::-1] if mirrored else batch, ctx))
    if len(images) == 0:
        return [np.zeros((0, 0), np.float32) for _ in mirrors]
    return [np.concatenate(view) for view in views]


def fuse_views(views, flip="sum"):
    if flip == "none" or len(views) == 1:
        return views[0]
    if flip == "sum":
        return views[0] + views[1]
    if flip == "concat":
        return np.concatenate(views, axis=1)
    raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")


def embed_images(net, images, batch_size=64, flip="sum", ctx=None, progress=False):
    """uint8 NHWC RGB images -> float32 (N, D') embeddings, not normalised.

    ``flip``: "sum" (insightface: f(x) + f(mirror x)), "concat" ([f(x), f(mirror x)], 2D
    columns) or "none" (f(x)).
    """
    return fuse_views(embed_views(net, images, batch_size, flip, ctx, progress), flip)
