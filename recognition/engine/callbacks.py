"""What happens around the training step: logging (tqdm + mxboard), verification on .bin files,
checkpoints, learning-rate schedule. Rank 0 writes and prints; every rank takes part in
verification (embedding is shared across workers) and in checkpoints (statistics are averaged
and a sharded head's blocks gathered).

A callback has ``wants_prediction(state, step)`` (whether the step ending at ``step`` should also
return the head's class predictions) and ``after_step(state, batches, last)``, called with the
TrainState after each step and the step's last (loss, predicted, labels) or None.
"""
import math
import os
import sys
import time

import numpy as np

from recognition.fileio import write_json_atomic

from . import checkpoint
from .. import distributed as dist


def learning_rate(step, base_lr, total_steps, schedule="cosine", warmup_steps=0, lr_steps=(), lr_factor=0.1):
    """lr at optimizer step ``step`` (0-based): linear warmup, then cosine / step / constant."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * lr_factor ** sum(step >= boundary for boundary in lr_steps)
    return base_lr


def _line_oriented():
    """horovodrun (or a log file) collects the output: a carriage-return bar would pile up
    there, so one line per log interval instead; a terminal keeps the tqdm bar."""
    return dist.launched_by_horovodrun() or not sys.stderr.isatty()


class Logger:
    """tqdm progress bar (a line per log interval where the output is not a terminal) with
    samples/s, and mxboard scalars, on rank 0 only."""

    def __init__(self, out_dir, total_steps, start_step, global_batch, enabled=True):
        self.out_dir, self.wanted = out_dir, enabled
        self.global_batch = global_batch
        self.writer, self.bar, self.enabled = None, None, False
        self.total_steps = total_steps
        self._last_time, self._last_step = time.time(), start_step
        self.samples_per_sec = 0.0
        self.rates = []  # samples/s of every log interval
        self.follow_rank(start_step)

    def follow_rank(self, step):
        """Write where this process is rank 0 now (an elastic reset can move rank 0 to another
        worker: the new one goes on with the log, on its own disk)."""
        enabled = self.wanted and dist.rank() == 0
        if enabled == self.enabled:
            return
        self.enabled = enabled
        if not enabled:
            self.close()
            self.writer = self.bar = None
            return
        from mxboard import SummaryWriter
        from tqdm import tqdm
        self.writer = SummaryWriter(logdir=os.path.join(self.out_dir, "logs"), flush_secs=10)
        if not _line_oriented():
            self.bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0)

    def set_total(self, total_steps):
        self.total_steps = total_steps
        if self.bar:
            self.bar.total = total_steps
            self.bar.refresh()

    def scalars(self, step, values):
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(name, value, global_step=step)

    def step(self, step, values):
        """Called every log interval with the latest scalars; updates the bar and mxboard."""
        now = time.time()
        done = step - self._last_step
        if done > 0:
            self.samples_per_sec = done * self.global_batch / max(now - self._last_time, 1e-9)
            self.rates.append(self.samples_per_sec)
        self._last_time, self._last_step = now, step
        values = dict(values, samples_per_sec=self.samples_per_sec)
        self.scalars(step, values)
        shown = {k: f"{v:.4g}" for k, v in values.items() if k in
                 ("loss", "lr", "train_acc", "samples_per_sec", "scale")}
        if self.bar:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(shown, refresh=False)
        elif self.enabled:
            print(f"train: step {step}/{self.total_steps} " + " ".join(f"{k}={v}" for k, v in shown.items()),
                  flush=True)

    def median_samples_per_sec(self):
        """Median over the log intervals, the first (start-up, first verification) left out."""
        rates = self.rates[1:] or self.rates
        return float(sorted(rates)[len(rates) // 2]) if rates else 0.0

    def message(self, text):
        if self.enabled:
            (self.bar.write if self.bar else print)(text)

    def close(self):
        if self.bar:
            self.bar.close()
        if self.writer:
            self.writer.close()


class Verification:
    """Embeds every configured .bin (image + flip, summed, L2-normalised) and scores the pairs with
    insightface's 10-fold protocol; results are identical on every rank."""

    def __init__(self, bins, batch_size=64, flip="sum", image_size=112):
        from recognition.data.binfile import load_bin
        self.sets = []
        for path in bins:
            images, issame = load_bin(path, image_size=image_size)
            self.sets.append((os.path.splitext(os.path.basename(path))[0], images, issame))
        self.batch_size, self.flip = batch_size, flip

    def __call__(self, net):
        from recognition.evaluation import evaluate
        return {name: evaluate(net, images, issame, batch_size=self.batch_size, flip=self.flip)
                for name, images, issame in self.sets}


class TimeBudget:
    """``train.time_budget_minutes``: the step time is measured over ``measure`` steps (after
    ``skip`` start-up steps), and ``state.max_steps`` set so that the whole schedule (warmup,
    cosine or steps) ends inside the budget, counted from the start of training, less a
    ``margin`` for the final checkpoint, verification and export. A machine whose first steps run
    slow (a cold cache, a neighbour's job ending) would leave much of the budget unused, so the
    decision is revised with the step time over the steps since the previous decision when
    ``revise_at`` fractions of the decided steps are done: early enough that only the cosine's
    tail moves, after the warmup. Rank 0's figure holds for every rank; kept in checkpoints, so a
    resumed run keeps it (and revises no more: its timer did not see the earlier steps)."""

    def __init__(self, minutes, started, start_step, logger, skip=5, measure=20, margin=0.05,
                 revise_at=(0.1, 0.25)):
        self.minutes, self.started, self.logger = minutes, started, logger
        self.skip, self.measure, self.margin, self.revise_at = skip, measure, margin, revise_at
        self.first, self.timer, self.timer_step = start_step, None, None

    def wants_prediction(self, state, step):
        return False

    def _steps_in_budget(self, state, step_s):
        left = self.minutes * 60 * (1 - self.margin) - (time.time() - self.started)
        return state.step + max(int(left // step_s), 0)

    def after_step(self, state, batches, last):
        if state.budget is not None:
            if state.step in state.budget.get("revise_at_steps", ()):
                self._revise(state)
            return
        done = state.step - self.first
        if done == self.skip:
            self.timer, self.timer_step = time.time(), state.step
        if done != self.skip + self.measure or self.timer is None:
            return
        now = time.time()
        step_s = (now - self.timer) / self.measure
        self.timer, self.timer_step = now, state.step  # a revision measures from here
        steps = dist.broadcast_object(self._steps_in_budget(state, step_s), name="time.budget")
        state.max_steps = max(steps, state.step)
        revise = sorted({round(state.max_steps * f) for f in self.revise_at} - {0})
        state.budget = {"minutes": self.minutes, "step_s": round(step_s, 4), "measured_steps": self.measure,
                        "decided_at_step": state.step, "steps": state.max_steps,
                        "revise_at_steps": [s for s in revise if s > state.step], "revisions": []}
        self.logger.set_total(state.max_steps)
        self.logger.message(f"time budget {self.minutes:g} min: {step_s:.3f} s/step over {self.measure} steps "
                            f"-> {state.max_steps} steps in all (train.max_steps {state.config.train.max_steps} "
                            f"replaced; the schedule fits the budget)")

    def _revise(self, state):
        # every rank reaches this step (the revision steps travel with the state); one without the
        # timer (resumed, or joined an elastic job) offers None, and rank 0's answer holds for all
        now = time.time()
        measured = state.step - self.timer_step if self.timer is not None else 0
        step_s = (now - self.timer) / measured if measured > 0 else None
        offer = (self._steps_in_budget(state, step_s), round(step_s, 4)) if step_s else None
        decided = dist.broadcast_object(offer, name=f"time.budget.revise.{state.step}")
        self.timer, self.timer_step = now, state.step  # the next revision measures from here
        if decided is None:
            return
        steps, step_s = decided
        before, state.max_steps = state.max_steps, max(steps, state.step)
        state.budget = dict(state.budget, steps=state.max_steps, step_s=step_s, revisions=state.budget["revisions"] +
                            [{"at_step": state.step, "step_s": step_s, "measured_steps": measured,
                              "steps": state.max_steps}])
        self.logger.set_total(state.max_steps)
        self.logger.message(f"time budget {self.minutes:g} min revised at step {state.step}: {step_s:.3f} s/step "
                            f"over {measured} steps -> {state.max_steps} steps in all (was {before})")


class LogProgress:
    """Every ``every`` steps and at the last: loss, lr, epoch, training accuracy and the head's
    and data's counters, to the bar / log line and mxboard."""

    def __init__(self, logger, every):
        self.logger, self.every = logger, every
        self.last = None

    def wants_prediction(self, state, step):
        return step % self.every == 0 or step == state.max_steps

    def after_step(self, state, batches, last):
        self.last = last or self.last
        done = state.step
        if not self.wants_prediction(state, done) or not self.last:
            return
        loss, predicted, labels = self.last
        values = {"loss": float(loss.mean().asscalar()), "lr": state.trainer.learning_rate,
                  "epoch": done / batches.steps_per_epoch}
        if predicted is not None:
            values["train_acc"] = float((predicted == labels).mean().asscalar())
        head = state.head
        if hasattr(head, "last_num_triplets"):
            values["triplets"] = head.last_num_triplets
        if hasattr(head, "scale"):
            values["scale"] = float(head.scale)
        if batches.bad_records:
            values["bad_records"] = batches.bad_records
        if state.scaler:
            values["loss_scale"] = state.scaler.scale
        self.logger.step(done, values)


class VerifyEvery:
    """Scores the .bin sets every ``every`` steps (not at the last: the caller verifies the final
    network itself); the best network by mean accuracy is exported to OUT/best on rank 0."""

    def __init__(self, verification, every, logger, out_dir):
        self.verification, self.every = verification, every
        self.logger, self.out_dir = logger, out_dir

    def wants_prediction(self, state, step):
        return False

    def after_step(self, state, batches, last):
        if self.every and state.step % self.every == 0 and state.step != state.max_steps:
            self(state, state.step)

    def __call__(self, state, step):
        with state.averaged():  # train.ema: the averaged network is scored and exported
            return self._score(state, step)

    def _score(self, state, step):
        dist.average_running_stats(state.params)
        scores = self.verification(state.compute_net)
        logger = self.logger
        logger.scalars(step, {f"verification/{name}/accuracy": r["accuracy"] for name, r in scores.items()})
        logger.scalars(step, {f"verification/{name}/xnorm": r["xnorm"] for name, r in scores.items()})
        mean_accuracy = float(np.mean([r["accuracy"] for r in scores.values()]))
        for name, r in scores.items():
            logger.message(f"step {step}: {name} accuracy {r['accuracy']:.4f}+-{r['accuracy_std']:.4f} "
                           f"xnorm {r['xnorm']:.2f} tar@far1e-3 {r['tar_at_far_1e-3']:.4f}")
        if mean_accuracy > state.best["accuracy"]:
            state.best.update(accuracy=mean_accuracy, step=step)
            if dist.rank() == 0:
                checkpoint.export_model(state.net, os.path.join(self.out_dir, "best", "model"), 1)
                write_json_atomic(os.path.join(self.out_dir, "best", "scores.json"), {"step": step, "scores": scores})
        return scores


class Checkpoints:
    """A training state every ``every`` steps, never in the middle of a non-finite streak (it
    would replace good checkpoints). ``progress["step"]``: the step of the last checkpoint this
    rank took part in (for the lost-worker message)."""

    def __init__(self, out_dir, every, progress, start_step):
        self.out_dir, self.every, self.progress = out_dir, every, progress
        self.last_saved = start_step

    def wants_prediction(self, state, step):
        return False

    def after_step(self, state, batches, last):
        if self.every and state.step % self.every == 0 and state.nonfinite_in_row == 0:
            self.save(state, batches)

    def save(self, state, batches):
        saved = state.save(self.out_dir, batches)
        self.last_saved = state.step
        if saved:
            self.progress["step"] = state.step
        return saved
