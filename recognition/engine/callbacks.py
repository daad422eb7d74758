"""What happens around the training step: logging (tqdm + mxboard), verification on .bin files,
learning-rate schedule. Rank 0 writes and prints; every rank takes part in verification because
embedding is shared across workers."""
import math
import os
import sys
import time

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
        self.enabled = enabled and dist.rank() == 0
        self.global_batch = global_batch
        self.writer, self.bar = None, None
        self.total_steps = total_steps
        self._last_time, self._last_step = time.time(), start_step
        self.samples_per_sec = 0.0
        self.rates = []  # samples/s of every log interval
        if self.enabled:
            from mxboard import SummaryWriter
            from tqdm import tqdm
            self.writer = SummaryWriter(logdir=os.path.join(out_dir, "logs"), flush_secs=10)
            if not _line_oriented():
                self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                                dynamic_ncols=True, mininterval=1.0)

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
