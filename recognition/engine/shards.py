"""A sharded classifier's blocks between the workers and rank 0's checkpoint folder.

Clusters often have no filesystem that every host sees, so nothing here assumes one: only rank 0
touches the checkpoint folder, and blocks travel through Horovod.

* Saving (``gather_blocks``): every rank's block (weight rows, bias rows, and the optimizer state
  of both) is broadcast from its rank, one block at a time and in chunks of at most
  ``CHUNK_BYTES``, and rank 0 writes it as ``head-block-NNNN.params``. Rank 0 holds at most its own
  block and one received block, so memory stays bounded however many classes there are.
* Loading (``scatter_blocks``): rank 0 reads the blocks of the checkpoint, whatever number of
  workers wrote them, cuts out the rows of each rank's block under the *current* world size
  (``shard_range``) and sends them, so a checkpoint of 2 workers resumes on 3 and back.

The optimizer state of a block is stored as arrays, not as MXNet's pickle of the optimizer: rows
can only be re-split in arrays. ``optimizer_state_arrays`` / ``set_optimizer_state_arrays`` flatten
whatever state the optimizer keeps per parameter (SGD momentum, Adam's mean and variance, ...);
every state array has the parameter's rows as its first axis. The optimizer's update counters are
the same on every rank and travel in the checkpoint's meta.json.
"""
import os

import numpy as np

import mxnet as mx

from recognition.losses.sharded import shard_range

from .. import distributed as dist
from ..data.record import error_line
from .checkpoint import BLOCK_FILE

CHUNK_BYTES = 64 << 20
_calls = [0]


def _unique(tag):
    """Horovod names must not repeat while in flight; one counter for every transfer here."""
    _calls[0] += 1
    return f"shards.{tag}.{_calls[0]}"


# ---------------------------------------------------------------------- optimizer state as arrays
def optimizer_state_arrays(trainer, roles):
    """``{role.state.PATH: NDArray}`` of a gluon Trainer's per-parameter optimizer state; ``roles``
    names the trainer's parameters in order (e.g. ('weight', 'bias')). PATH is the position inside
    the optimizer's state tuple ('0' for a lone array, '0', '1' for Adam's pair, nested '0.1' ...)."""
    states = trainer._updaters[0].states
    out = {}

    def walk(prefix, state, path):
        if isinstance(state, mx.nd.NDArray):
            out[f"{prefix}.state.{path or '0'}"] = state
        elif isinstance(state, (tuple, list)):
            for j, item in enumerate(state):
                walk(prefix, item, f"{path}.{j}" if path else str(j))

    for index, role in enumerate(roles):
        if index in states:
            walk(role, states[index], "")
    return out


def set_optimizer_state_arrays(trainer, roles, arrays, where):
    """Recreate the optimizer state of every parameter of ``trainer`` and fill it from ``arrays``
    (as written by optimizer_state_arrays); ``where`` names the source in errors."""
    updater, optimizer = trainer._updaters[0], trainer._optimizer
    for index, (role, param) in enumerate(zip(roles, trainer._params)):
        state = optimizer.create_state_multi_precision(index, param.data())

        def fill(item, path):
            if isinstance(item, mx.nd.NDArray):
                key = f"{role}.state.{path or '0'}"
                if key not in arrays:
                    raise ValueError(f"{where}: no optimizer state {key} (another optimizer?)")
                if tuple(arrays[key].shape) != tuple(item.shape):
                    raise ValueError(f"{where}: optimizer state {key} is {tuple(arrays[key].shape)}, "
                                     f"expected {tuple(item.shape)}")
                item[:] = arrays[key].as_in_context(item.context)
            elif isinstance(item, (tuple, list)):
                for j, sub in enumerate(item):
                    fill(sub, f"{path}.{j}" if path else str(j))

        fill(state, "")
        updater.states[index] = state
        updater.states_synced[index] = False


def optimizer_counters(trainer, roles):
    optimizer = trainer._optimizer
    return {"num_update": int(optimizer.num_update),
            "index_update_count": {role: int(optimizer._index_update_count.get(index, 0))
                                   for index, role in enumerate(roles)}}


def set_optimizer_counters(trainer, roles, counters):
    optimizer = trainer._optimizer
    optimizer.num_update = int(counters["num_update"])
    for index, role in enumerate(roles):
        optimizer._index_update_count[index] = int(counters["index_update_count"].get(role, 0))


# ---------------------------------------------------------------------- the block of this rank
def block_roles(head):
    return ("weight", "bias") if head.bias is not None else ("weight",)


def block_arrays(head, trainer):
    """This rank's block as ``{name: NDArray}``: weight, bias and their optimizer state."""
    roles = block_roles(head)
    arrays = {"weight": head.weight.data()}
    if head.bias is not None:
        arrays["bias"] = head.bias.data()
    arrays.update(optimizer_state_arrays(trainer, roles))
    return arrays


def set_block(head, trainer, arrays, where):
    rows = head.end - head.start
    for name, value in arrays.items():
        if value.shape[0] != rows:
            raise ValueError(f"{where}: {name} has {value.shape[0]} rows, block {head.start}-{head.end} needs {rows}")
    head.weight.set_data(arrays["weight"])
    if head.bias is not None:
        if "bias" not in arrays:
            raise ValueError(f"{where}: no classifier bias (was the checkpoint written without loss.params.bias?)")
        head.bias.set_data(arrays["bias"])
    set_optimizer_state_arrays(trainer, block_roles(head), arrays, where)


# ---------------------------------------------------------------------- transfer
def _broadcast_rows(value, shape, dtype, root, keep):
    """``value`` (an NDArray on ``root``) on every rank, sent in chunks of rows of at most
    CHUNK_BYTES; returns the whole array where ``keep``, else None (nothing accumulated)."""
    shape = tuple(shape)
    row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize, 1)
    per_chunk = max(1, CHUNK_BYTES // row_bytes)
    whole = mx.nd.empty(shape, dtype=dtype) if keep and dist.rank() != root else None
    for first in range(0, max(shape[0], 1), per_chunk):
        last = min(first + per_chunk, shape[0])
        if dist.rank() == root:
            piece = value[first:last]  # hvd.broadcast copies the root's input itself
        else:
            piece = mx.nd.zeros((last - first,) + shape[1:], dtype=dtype)
        got = dist.broadcast(piece, root_rank=root, name=_unique("rows"))
        got.wait_to_read()
        if whole is not None:
            whole[first:last] = got  # filled in place: one block and one chunk in memory at most
    if not keep:
        return None
    return value if dist.rank() == root else whole


def _send(arrays, root, keep, error=None):
    """One collective round: ``arrays`` (a dict on ``root``) to every rank; kept where ``keep``
    (on ``root`` itself that is ``arrays``).
    ``error`` (on root) is sent instead and raised everywhere, so no rank is left waiting."""
    spec = None
    if dist.rank() == root:
        spec = {"error": error} if error else {
            "arrays": {name: (tuple(value.shape), np.dtype(value.dtype).str) for name, value in arrays.items()}}
    spec = dist.broadcast_object(spec, root_rank=root, name=_unique("spec"))
    if "error" in spec:
        raise ValueError(spec["error"])
    received = {}
    for name in sorted(spec["arrays"]):
        shape, dtype = spec["arrays"][name]
        value = _broadcast_rows(arrays[name] if dist.rank() == root else None, shape, np.dtype(dtype), root, keep)
        if keep:
            received[name] = value
    return received


def gather_blocks(head, trainer):
    """Collective. Yields on rank 0 ``(k, {name: NDArray})`` for every rank k's block, in rank
    order, one at a time; the other ranks yield nothing but must exhaust the generator too."""
    mine = block_arrays(head, trainer)
    for k in range(dist.size()):
        received = _send(mine, root=k, keep=dist.rank() == 0)
        if dist.rank() == 0:
            yield k, received


class _BlockReader:
    """Rows [start, end) of a checkpoint's blocks, whatever worker count wrote them; holds one
    block file in memory at a time (new blocks are read in increasing row order)."""

    def __init__(self, folder, ranges):
        self.folder, self.ranges = folder, [tuple(r) for r in ranges]
        self._cached = (None, None)

    def _block(self, k):
        if self._cached[0] != k:
            path = os.path.join(self.folder, BLOCK_FILE.format(k))
            try:
                arrays = mx.nd.load(path)
            except Exception as err:  # MXNetError for a missing or damaged file
                raise ValueError(f"{path}: cannot be loaded ({error_line(err)[:200]})") from None
            rows = self.ranges[k][1] - self.ranges[k][0]
            if not isinstance(arrays, dict) or "weight" not in arrays or \
                    any(v.shape[0] != rows for v in arrays.values()):
                raise ValueError(f"{path}: not a classifier block of {rows} rows")
            self._cached = (k, arrays)
        return self._cached[1]

    def rows(self, start, end):
        pieces = {}
        for k, (first, last) in enumerate(self.ranges):
            lo, hi = max(start, first), min(end, last)
            if lo >= hi:
                continue
            for name, value in self._block(k).items():
                pieces.setdefault(name, []).append(value[lo - first:hi - first])
        return {name: (parts[0] if len(parts) == 1 else mx.nd.concat(*parts, dim=0)).copy()
                for name, parts in pieces.items()}


def scatter_blocks(folder, meta, head, trainer):
    """Collective. Rank 0 reads the blocks in ``folder`` (``meta['head_blocks']``: their row
    ranges) and every rank receives the rows of its block under the current world size, with
    their optimizer state. ``folder`` matters on rank 0 only."""
    world = dist.size()
    ranges = [tuple(r) for r in meta["head_blocks"]]
    reader = _BlockReader(folder, ranges) if dist.rank() == 0 else None
    problem = None
    if dist.rank() == 0 and (not ranges or ranges[0][0] != 0 or ranges[-1][1] != head.num_classes
                             or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:]))):
        problem = f"{folder}: classifier blocks {ranges} do not cover the {head.num_classes} classes"
    mine = None
    for r in range(world):
        start, end = shard_range(head.num_classes, r, world)
        arrays, error = {}, problem
        if dist.rank() == 0 and not error:
            try:
                arrays = reader.rows(start, end)
            except ValueError as err:
                error = str(err)
        received = _send(arrays, root=0, keep=dist.rank() == r, error=error)
        if dist.rank() == r:
            mine = received
    set_block(head, trainer, mine, folder)
    set_optimizer_counters(trainer, block_roles(head), meta["head_optimizer"])
