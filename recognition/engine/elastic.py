"""Elastic training for Gluon (``train.elastic: true`` under ``horovodrun --min-np N --max-np M
--host-discovery-script ...``), on Horovod's own machinery: a ``horovod.common.elastic.State``
whose save / restore / sync are the TrainState's snapshot / restore / broadcast, and
``horovod.common.elastic.run_fn`` around the steps, as Horovod's PyTorch adapter does. Two things
differ from PyTorch:

- a failed collective does not raise ``HorovodInternalError`` where it is called: MXNet runs
  Horovod's operators asynchronously, and the failure surfaces as an ``MXNetError`` ("Horovod has
  been shut down") at the next synchronisation point (``asnumpy``, ``waitall``). ``_translated``
  turns it into the HorovodInternalError that makes ``run_fn`` restore the last commit and reset.
- after the reset (``shutdown(); init()``) the arrays of the failed step still carry the error;
  TrainState.restore gives every parameter new arrays instead of waiting on the old ones.

Every (re)start takes the state of the rank with the newest commit (a worker that joins has none),
the optimizers are rebuilt for the new number of workers (learning rate linear in it, as at
start; warmup is not restarted: the schedule follows the global step), and each rank's batches
follow its new rank and the new world size from the committed global data position, so within an
epoch no sample is repeated or skipped. Host changes are looked at on every commit.
"""
import contextlib
import json
import os

import mxnet as mx

from .. import distributed as dist
from ..mxnet_errors import clear_pending_errors

TRACE_ENV = "RECOGNITION_ELASTIC_TRACE"  # a folder: each rank appends the records of committed steps


def launched_elastic():
    """Whether horovodrun started this worker in elastic mode (--min-np / --host-discovery-script)."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


def refusal(head):
    """Why ``head`` cannot train elastically (None when it can)."""
    if hasattr(head, "local_params") and list(head.local_params().keys()):
        return ("a sharded or Partial FC classifier keeps each block of rows only on its own worker, so a lost "
                "host would take its rows with it; use a replicated head (loss.sharded: false, loss.sample_ratio: 1)")
    if getattr(head, "semi_online_pool", None) is not None:
        return "semi-online mining keeps a pool of past batches that a commit does not hold; use another mining"
    return None


def discard_pending(block):
    """Drop a centre update still pending from an uncommitted step (recognition.losses.center)."""
    if getattr(block, "_pending", None) is not None:
        block._pending = None
    for child in block._children.values():
        discard_pending(child)


@contextlib.contextmanager
def _translated():
    from horovod.common.exceptions import HorovodInternalError
    try:
        yield
    except mx.base.MXNetError as err:
        if "Horovod has been shut down" not in str(err):
            raise
        raise HorovodInternalError(str(err).strip().splitlines()[0]) from None


def _state_class():
    from horovod.common.elastic import State

    class GluonState(State):
        """The TrainState under Horovod's elastic protocol. ``committed``: the last commit's
        snapshot, in this process's memory."""

        def __init__(self, train_state, on_reset, on_rejoined):
            super().__init__(bcast_object=lambda obj: dist.broadcast_object(obj, name="elastic.hosts"),
                             get_rank=dist.rank)
            self.train_state, self._on_reset, self._on_rejoined = train_state, on_reset, on_rejoined
            self.committed, self._was_reset = None, False

        def save(self):
            self.committed = self.train_state.snapshot()

        def restore(self):
            # the failed step's operators (Horovod has already failed every one it held)
            clear_pending_errors()
            if self.committed is not None:
                self.train_state.restore(self.committed)

        def reset(self):
            self._on_reset()
            self._was_reset = True

        def sync(self):
            """Every rank takes the newest state: the last commit of the ranks that have one, or a
            checkpoint rank 0 resumed from (-1: a worker that has neither, e.g. one that joins)."""
            state = self.train_state
            mine = self.committed["scalars"]["step"] if self.committed else (state.step if state.step else -1)
            with _translated():
                steps = dist.allgather_object(mine, name="elastic.steps")
                root = max(range(len(steps)), key=lambda r: (steps[r], -r))
                state.broadcast_from(root)
                dist.hosts()
            self.save()
            if self._was_reset:  # only now have all the new workers got the state
                self._was_reset = False
                self._on_rejoined()

    return GluonState


def run(state, make_batches, callbacks, logger, commit_every, run_steps, log):
    """The steps of ``state`` up to its max_steps inside Horovod's elastic loop, committing every
    ``commit_every`` steps."""
    from horovod.common.elastic import run_fn
    from horovod.common.exceptions import HostsUpdatedInterrupt
    trace = _Trace(os.environ.get(TRACE_ENV))

    def on_reset():
        # the optimizer states move into the new trainers (after a failure: the restored commit's)
        optimizer = dist.trainer_states(state.trainer)
        state.make_trainers()
        dist.set_trainer_states(state.trainer, optimizer)
        logger.global_batch = state.config.data.batch_size * state.world

    def on_rejoined():
        logger.follow_rank(state.step)
        if dist.rank() == 0:
            log(f"elastic: {state.world} workers now; going on from the commit of step {state.step}")

    def body(elastic_state):
        batches = make_batches()
        trace.start(state.step)
        try:
            with _translated():
                while state.step < state.max_steps:
                    until = (state.step // commit_every + 1) * commit_every
                    run_steps(state, batches, callbacks, logger, until)
                    state.data_position = batches.position(state.step)
                    elastic_state.save()  # commit() is save() + check_host_updates()
                    trace.committed(batches, state.step)
                    elastic_state.check_host_updates()
        except HostsUpdatedInterrupt:
            # never skip the sync (Horovod skips it when hosts were only removed): a worker that
            # left abruptly can fail the commit's collective on some ranks (which then restore and
            # sync) while it completed on others; every rank syncing keeps them in step
            raise HostsUpdatedInterrupt(False) from None
        finally:
            batches.close()

    run_fn(body, dist.reinit)(_state_class()(state, on_reset, on_rejoined))


class _Trace:
    """For tests: which records each committed step read on this rank (one JSON line per commit
    in FOLDER/HOST-PID.jsonl: [step, epoch, record...] each), so that counting them shows no
    sample repeated or skipped."""

    def __init__(self, folder):
        self.folder, self.since = folder, None

    def start(self, step):
        self.since = step

    def committed(self, batches, step):
        if not self.folder:
            return
        steps = []
        for s in range(self.since, step):
            epoch, _, records = batches.record_indices(s)
            steps.append([s, int(epoch)] + [int(i) for i in records])
        line = json.dumps({"rank": dist.rank(), "world": dist.size(), "host": dist.hostname(), "steps": steps})
        with open(os.path.join(self.folder, f"{dist.hostname()}-{os.getpid()}.jsonl"), "a") as f:
            f.write(line + "\n")
        self.since = step
