"""Batched, flip-fused embeddings of face images.

The network takes float32 NCHW RGB in 0..255 and normalises inside (as insightface's exported
models do), so this module only transposes and casts. Flip fusion follows insightface: the
embedding of the image plus that of its horizontal mirror ("sum"), or their concatenation.
Also loads insightface-style exported models (``load_exported_model``).
"""
import glob
import os
import re
import warnings

import numpy as np

import mxnet as mx

from ..data.record import error_line

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


class ModelError(ValueError):
    """An exported model that cannot be found or loaded; the message names the files."""


def parse_model_spec(spec):
    """"PREFIX[,EPOCH]" -> (symbol file, params file, epoch); EPOCH defaults to the newest
    ``PREFIX-NNNN.params`` (insightface's convention)."""
    prefix, _, epoch = spec.partition(",")
    symbol = f"{prefix}-symbol.json"
    if not os.path.exists(symbol):
        raise ModelError(f"{symbol}: model symbol file not found")
    if epoch:
        try:
            epoch = int(epoch)
        except ValueError:
            raise ModelError(f"{spec}: EPOCH must be an integer") from None
    else:
        epochs = []
        for path in glob.glob(glob.escape(prefix) + "-*.params"):
            match = re.fullmatch(r"-(\d+)\.params", path[len(prefix):])
            if match:
                epochs.append(int(match.group(1)))
        if not epochs:
            raise ModelError(f"{prefix}-NNNN.params: no parameter file next to {symbol}")
        epoch = max(epochs)
    params = f"{prefix}-{epoch:04d}.params"
    if not os.path.exists(params):
        raise ModelError(f"{params}: parameter file not found")
    return symbol, params, epoch


def auto_context(use_gpu=None):
    """GPU ``local_rank`` when one exists (and ``use_gpu`` is not False), else CPU."""
    from .. import distributed
    if use_gpu is False or mx.context.num_gpus() == 0:
        return mx.cpu()
    return mx.gpu(distributed.local_rank() % mx.context.num_gpus())


def load_exported_model(spec, ctx=None):
    """An insightface-style exported model (``PREFIX-symbol.json`` + ``PREFIX-%04d.params``, one
    input named ``data``, float32 NCHW RGB 0..255, first output = embedding) as a SymbolBlock.
    Returns (net, epoch)."""
    symbol, params, epoch = parse_model_spec(spec)
    ctx = ctx or mx.cpu()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = mx.gluon.SymbolBlock.imports(symbol, ["data"], params, ctx=ctx)
    except Exception as err:
        raise ModelError(f"{symbol}: cannot load with {params} ({error_line(err)})") from None
    net.hybridize(static_alloc=True, static_shape=False)
    return net, epoch
