"""Rank-sharded, augmented training batches from an insightface RecordIO dataset.

Every rank walks the same seeded permutation of the images for an epoch and takes its own
interleaved shard (``perm[rank::num_ranks]``, trimmed so all ranks run the same number of steps:
an uneven count would leave one worker waiting in an allreduce forever). The order, the flips and
the optional augmentations (recognition.data.augment) depend only on (seed, epoch, position),
never on thread timing, so a run resumed at step N sees
exactly the batches an uninterrupted run sees.

Decoding (OpenCV, GIL released) runs in a thread pool with batches prefetched in the background.
A corrupt record (unreadable, undecodable, wrong size, label outside the classes) is replaced by
another image of the same batch, counted once and logged once however many epochs meet it; when
the number of distinct corrupt records passes ``max_bad_share`` of the dataset's images the
iterator raises.
"""
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import augment
from .record import RecordError

AUGMENT_SALT = 1 << 40  # epoch_rng salt of the augmentation draws, apart from the flips' 1 + position


class TooManyBadRecords(RuntimeError):
    pass


def epoch_rng(seed, epoch, salt=0):
    return np.random.default_rng([seed, epoch, salt])


class ShardedOrder:
    """Record indices of each step for one rank: random permutation sharded across ranks.

    A step consumes ``stride`` = batch x ranks consecutive positions of the epoch's permutation,
    each rank every ranks-th of them, so after t steps the epoch's first t x stride positions are
    used whatever the number of ranks: a run resumed at global position p with another number of
    workers goes on at p, and no image of the epoch is seen twice or skipped (only the epoch's
    tail shorter than one global batch is left out, as in every epoch)."""

    def __init__(self, dataset, batch_size, rank=0, num_ranks=1, seed=0):
        self.indices = dataset.image_indices
        self.batch_size, self.rank, self.num_ranks, self.seed = batch_size, rank, num_ranks, seed
        self.stride = batch_size * num_ranks
        self.steps_per_epoch = len(self.indices) // self.stride
        if self.steps_per_epoch == 0:
            raise ValueError(f"{dataset.rec_path}: {len(self.indices)} images are fewer than one batch of "
                             f"{batch_size} per worker x {num_ranks} workers")

    def rows(self, offset):
        """Steps left in an epoch from global position ``offset``."""
        return max(len(self.indices) - offset, 0) // self.stride

    def epoch(self, epoch, offset=0):
        """This rank's (steps, batch) record indices of ``epoch`` from global position ``offset``."""
        perm = epoch_rng(self.seed, epoch).permutation(self.indices)
        rows = self.rows(offset)
        shard = perm[offset + self.rank:offset + rows * self.stride:self.num_ranks]
        return shard.reshape(rows, self.batch_size)


class PKOrder:
    """P identities x K images per step (triplet training), from recognition.data.sampler."""

    def __init__(self, dataset, batch_size, images_per_identity, rank=0, num_ranks=1, seed=0, small="replace"):
        from .sampler import PKSampler
        self.sampler = PKSampler(dataset.identity_ranges, batch_size // images_per_identity,
                                 images_per_identity, rank=rank, num_ranks=num_ranks, seed=seed, small=small)
        self.batch_size, self.seed = batch_size, seed
        self.stride = batch_size * num_ranks
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{dataset.rec_path}: too few identities for one P x K batch per worker")

    def rows(self, offset):
        return max(self.steps_per_epoch - offset // self.stride, 0)

    def epoch(self, epoch, offset=0):
        """P x K batches are drawn per rank, not from one global order: a position is whole steps."""
        self.sampler.set_epoch(epoch)
        return np.stack([np.asarray(batch) for batch in self.sampler])[offset // self.stride:]


class TrainBatches:
    """Iterator of (data float32 (B,3,H,W) RGB 0..255, labels float32 (B,)) numpy batches.

    ``start_step`` resumes in the middle of an epoch, at ``start_position`` = (epoch, global
    position in it) when given (a checkpoint's ``data_position``, which stays right when the number
    of workers changed), else where ``start_step`` falls with the current number of workers.
    ``num_workers`` = 0 decodes inline.
    """

    def __init__(self, dataset, order, flip=True, num_workers=1, prefetch=4, max_bad_share=0.01,
                 start_step=0, log=None, augmentation=None, start_position=None, bad=None):
        self.dataset, self.order, self.flip = dataset, order, flip
        self.augmentation = augmentation or augment.Policy()
        self.num_workers, self.prefetch, self.max_bad_share = num_workers, prefetch, max_bad_share
        self.step = self.start_step = start_step
        if start_position is None:
            epoch, row = divmod(start_step, order.steps_per_epoch)
            start_position = (epoch, row * order.stride)
        self.start_position = (int(start_position[0]), int(start_position[1]))
        self.seen_records = 0
        # record index -> problem, each corrupt record once; ``bad`` shares it with the batches an
        # elastic reset replaced, so the count and data.max_bad_records hold over the whole run
        self.bad = {} if bad is None else bad
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self._pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self._queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread = None
        self._epoch_cache = (None, None)

    @property
    def bad_records(self):
        """Distinct corrupt records met so far."""
        return len(self.bad)

    @property
    def steps_per_epoch(self):
        return self.order.steps_per_epoch

    def _load(self, index, do_flip, params=None):
        try:
            image, label = self.dataset.read_image(int(index))
        except RecordError as err:
            return None, str(err)
        key = self.dataset.record_key(index)  # its key in train.idx (headerless packs number images apart)
        if image.shape[0] != self.dataset.height or image.shape[1] != self.dataset.width:
            return None, f"{self.dataset.rec_path}: record {key} is {image.shape[1]}x{image.shape[0]}, " \
                         f"property says {self.dataset.width}x{self.dataset.height}"
        if not 0 <= label < self.dataset.num_classes:  # the loss would index outside its classifier
            return None, f"{self.dataset.rec_path}: record {key} has label {label}, outside the " \
                         f"{self.dataset.num_classes} classes of {self.dataset.prop_path}"
        if do_flip:
            image = image[:, ::-1]
        image = augment.apply(image, params, self.augmentation)
        return (image.transpose(2, 0, 1), label), None

    def position(self, step):
        """(epoch, global position in the epoch) where the batch of ``step`` (>= start_step) starts."""
        epoch, offset = self.start_position
        k = step - self.start_step
        first = self.order.rows(offset)
        if k < first:
            return epoch, offset + k * self.order.stride
        k -= first
        return epoch + 1 + k // self.order.steps_per_epoch, (k % self.order.steps_per_epoch) * self.order.stride

    def record_indices(self, step):
        """(epoch, index of the step in its epoch, this rank's record indices) of ``step``."""
        epoch, offset = self.position(step)
        base = self.start_position[1] if epoch == self.start_position[0] else 0
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, self.order.epoch(epoch, base))
        return epoch, offset // self.order.stride, self._epoch_cache[1][(offset - base) // self.order.stride]

    def _make_batch(self, step):
        epoch, position, indices = self.record_indices(step)  # position seeds the flips and augmentations
        flips = epoch_rng(self.order.seed, epoch, 1 + position).random(len(indices)) < 0.5 \
            if self.flip else np.zeros(len(indices), bool)
        # a stream of its own, so turning augmentations on leaves the flips as they were
        augmentations = augment.draw(epoch_rng(self.order.seed, epoch, AUGMENT_SALT + position), len(indices),
                                     self.dataset.height, self.dataset.width, self.augmentation)
        jobs = list(zip(indices, flips, augmentations))
        results = list(self._pool.map(lambda job: self._load(*job), jobs)) if self._pool \
            else [self._load(*job) for job in jobs]
        good = [r for r, _ in results if r is not None]
        problems = [p for _, p in results if p is not None]
        self.seen_records += len(results)
        for index, (result, problem) in zip(indices, results):
            if problem is not None and int(index) not in self.bad:
                self.bad[int(index)] = problem
                self.log(f"skipped corrupt record: {problem}")
        if problems and self.bad_records > self.max_bad_share * len(self.dataset):
            raise TooManyBadRecords(
                f"{self.dataset.rec_path}: {self.bad_records} corrupt records met, more than "
                f"data.max_bad_records={self.max_bad_share:g} of its {len(self.dataset)} images; stopping")
        if not good:
            raise TooManyBadRecords(f"{self.dataset.rec_path}: no readable record in a batch at step {step}")
        # keep the batch shape: corrupt slots take the batch's first good images again
        while len(good) < len(results):
            good.append(good[len(good) % max(len(results) - len(problems), 1)])
        data = np.stack([image for image, _ in good]).astype(np.float32)
        labels = np.array([label for _, label in good], dtype=np.float32)
        return data, labels

    def _producer(self):
        step = self.step
        while not self._stop.is_set():
            try:
                item = self._make_batch(step)
            except Exception as err:  # handed to the consumer, raised in the training loop
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            step += 1

    def __iter__(self):
        return self

    def __next__(self):
        if self.prefetch <= 0:
            batch = self._make_batch(self.step)
        else:
            if self._thread is None:
                self._thread = threading.Thread(target=self._producer, daemon=True)
                self._thread.start()
            batch = self._queue.get()
            if isinstance(batch, Exception):
                raise batch
        self.step += 1
        return batch

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool:
            self._pool.shutdown(wait=False)
