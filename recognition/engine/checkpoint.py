"""Atomic checkpoints: full training state for --resume, and insightface-style exported models.

A training state is a folder ``OUT/checkpoints/step-00001000/`` holding ``net.params``,
``head.params``, ``trainer.states`` and ``meta.json``. It is written as ``step-...tmp``, every file
flushed to disk, and renamed into place last; a folder without ``meta.json`` or with a ``.tmp``
suffix is never picked up. A sharded classifier adds its blocks as ``head-block-NNNN.params``
(BLOCK_FILE: weight, bias and optimizer-state rows, all written by rank 0; see shards.py). A failure
while saving (disk full, ...) removes the partial folder, keeps the previous checkpoints and is
reported, never raised into the training loop.

``trainer.states`` is MXNet's pickle of the optimizer and its state. A pickle is a program, and a
checkpoint may come from elsewhere (a colleague's run, a download), so it is read with the
restricted unpickler only (recognition.data.safe_pickle): only NDArrays and MXNet's own optimizer
classes may be named, anything else is refused before it runs.

The exported model is ``PREFIX-symbol.json`` + ``PREFIX-NNNN.params`` (arg:/aux: names), loadable
with ``mx.gluon.SymbolBlock.imports`` or insightface's ``mx.model.load_checkpoint``.
"""
import json
import os
import re
import shutil

import mxnet as mx

from recognition.data.record import error_line
from recognition.data.safe_pickle import ALLOWED_GLOBALS, UnsafePickleError, safe_loads
from recognition.fileio import fsync_dir

from .. import distributed as dist

STATE_PATTERN = re.compile(r"^step-(\d{8})$")
BLOCK_FILE = "head-block-{:04d}.params"  # a sharded classifier's block k (recognition.engine.shards)


def _trainer_state_globals():
    """What ``Trainer.save_states`` pickles may name: NDArrays (rebuilt from their bytes), the
    optimizer classes MXNet registers (their state is a plain dict) and the data-file allow-list."""
    allowed = dict(ALLOWED_GLOBALS)
    allowed[("mxnet.ndarray.ndarray", "NDArray")] = lambda: mx.nd.NDArray
    for cls in set(mx.optimizer.Optimizer.opt_registry.values()):
        allowed[(cls.__module__, cls.__name__)] = lambda cls=cls: cls
    return allowed


def load_trainer_states(trainer, path):
    """What ``trainer.load_states(path)`` does, with the file unpickled by the restricted unpickler
    only (UnsafePickleError, a ValueError naming the file and the global, if it names anything else):
    MXNet's ``load_states`` would unpickle it with ``pickle.loads``."""
    with open(path, "rb") as f:
        data = f.read()
    allowed = _trainer_state_globals()
    dist.set_trainer_states(trainer, data, source=path,
                            loads=lambda data: safe_loads(data, source=path, allowed=allowed))


def _fsync_tree(folder):
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def state_dir(out_dir, step):
    return os.path.join(out_dir, "checkpoints", f"step-{step:08d}")


def save_state(out_dir, step, net, head, trainer, meta, keep=2, protect=(), head_params=None, blocks=(),
               arrays=None):
    """Write the training state of ``step``; returns its folder, or None when saving failed.

    ``head_params``: save only these head parameters (a sharded head's replicated ones); ``blocks``:
    the sharded head's blocks as ``(k, {name: NDArray})`` (recognition.engine.shards.gather_blocks),
    written as BLOCK_FILE k. ``blocks`` is always exhausted, also after a failure: the other ranks
    are sending them. ``arrays``: more files, ``{file name: {name: NDArray}}`` (the weight average).
    """
    final = state_dir(out_dir, step)
    tmp = final + ".tmp"
    error = None
    try:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    except OSError as err:
        error = err
    for k, block in blocks:
        if error is None:
            try:
                mx.nd.save(os.path.join(tmp, BLOCK_FILE.format(k)), block)
            except (OSError, mx.base.MXNetError) as err:
                error = err
    try:
        if error is not None:
            raise error
        net.save_parameters(os.path.join(tmp, "net.params"))
        if head_params is None:
            head.save_parameters(os.path.join(tmp, "head.params"))
        else:
            head_params.save(os.path.join(tmp, "head.params"))
        trainer.save_states(os.path.join(tmp, "trainer.states"))
        for name, saved in (arrays or {}).items():
            mx.nd.save(os.path.join(tmp, name), saved)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(dict(meta, step=step), f, indent=1)
        _fsync_tree(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(os.path.dirname(final))  # the rename itself survives a power cut
    except (OSError, mx.base.MXNetError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"checkpoint: saving step {step} to {final} failed ({error_line(err)}); "
              f"previous checkpoints kept", flush=True)
        return None
    prune(out_dir, keep, protect=set(protect) | {final})
    return final


def list_states(out_dir):
    """Complete training states, oldest first, as (step, folder)."""
    root = os.path.join(out_dir, "checkpoints")
    found = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            match = STATE_PATTERN.match(name)
            folder = os.path.join(root, name)
            if match and os.path.isfile(os.path.join(folder, "meta.json")):
                found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_state(out_dir):
    states = list_states(out_dir)
    return states[-1][1] if states else None


def remove_partial(out_dir):
    """Remove the ``.tmp`` folders of saves that never completed (a worker lost mid-save): they are
    never picked up, and a new start leaves nothing half-written behind."""
    root = os.path.join(out_dir, "checkpoints")
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.endswith(".tmp"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def prune(out_dir, keep, protect=()):
    states = list_states(out_dir)
    for _, folder in states[:max(len(states) - keep, 0)]:
        if folder not in protect:
            shutil.rmtree(folder, ignore_errors=True)


def load_state(folder, net, head, trainer, head_params=None):
    """Load a training state written by save_state; returns its meta dict.

    ``head_params``: a sharded head's replicated parameters (its blocks come from load_shard)."""
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{meta_path}: not a complete checkpoint ({err})") from None
    load_head = head.load_parameters if head_params is None else \
        (lambda path: head_params.load(path) if list(head_params.keys()) else None)
    for name, load in (("net.params", net.load_parameters), ("head.params", load_head),
                       ("trainer.states", lambda path: load_trainer_states(trainer, path))):
        _load(os.path.join(folder, name), load)
    return meta


def _load(path, load):
    try:
        load(path)
    except UnsafePickleError:
        raise  # its message names the file and the refused global already
    except Exception as err:  # MXNetError, Gluon's AssertionError on names/shapes, pickle errors
        raise ValueError(f"{path}: cannot be loaded ({error_line(err)})") from None


def export_model(net, prefix, epoch):
    """Export the hybridized embedding network insightface-style, atomically.

    Returns (symbol path, params path), or None when writing failed (previous files kept).
    """
    folder = os.path.dirname(prefix) or "."
    os.makedirs(folder, exist_ok=True)
    tmp_prefix = prefix + ".tmp"
    try:
        net.export(tmp_prefix, epoch)
        pairs = [(f"{tmp_prefix}-symbol.json", f"{prefix}-symbol.json"),
                 (f"{tmp_prefix}-{epoch:04d}.params", f"{prefix}-{epoch:04d}.params")]
        for tmp, _ in pairs:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for tmp, final in pairs:
            os.replace(tmp, final)
    except (OSError, mx.base.MXNetError) as err:
        for suffix in ("-symbol.json", f"-{epoch:04d}.params"):
            if os.path.exists(tmp_prefix + suffix):
                os.remove(tmp_prefix + suffix)
        print(f"export: writing {prefix} failed ({error_line(err)}); previous export kept", flush=True)
        return None
    return pairs[0][1], pairs[1][1]


def load_pretrained(net, path):
    """Backbone and embedding weights from a training state folder, a net.params file or an exported
    PREFIX,EPOCH model; the classifier (head) is not loaded (fine-tuning, e.g. triplet after softmax)."""
    if os.path.isdir(path):
        path = os.path.join(path, "net.params")
    if os.path.isfile(path) and path.endswith(".params") and "-" not in os.path.basename(path):
        net.load_parameters(path)
        return
    prefix, _, epoch = path.rpartition(",")
    params_file = f"{prefix}-{int(epoch):04d}.params" if prefix else path
    loaded = mx.nd.load(params_file)
    values = {key.split(":", 1)[-1]: value for key, value in loaded.items()}
    params = net.collect_params()
    missing = []
    # exported names are the network's own parameter names (prefix included)
    for name, param in params.items():
        if name in values:
            param.set_data(values[name])
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"{params_file}: {len(missing)} network parameters missing (e.g. {missing[0]}); "
                         f"is it the same model?")
