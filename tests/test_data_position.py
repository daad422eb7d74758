"""The data position survives a change of the number of workers (multi-host resume): a run of 2
workers stopped mid-epoch and resumed by 3 (and 3 -> 2) from the checkpoint's global position sees
every image of that epoch exactly once, except the tail shorter than one global batch; with the
same number of workers the position reproduces the uninterrupted batches exactly. Every rank is
simulated in one process with the real ShardedOrder / TrainBatches over the committed sample."""
from collections import Counter

import numpy as np
import pytest

from recognition.data.dataset import ShardedOrder, TrainBatches
from recognition.data.record import RecordDataset

BATCH = 4


def _batches(dataset, rank, world, start_step=0, start_position=None):
    return TrainBatches(dataset, ShardedOrder(dataset, BATCH, rank, world, seed=11), flip=False, num_workers=0,
                        prefetch=0, start_step=start_step, start_position=start_position)


def _records(dataset, world, steps, start_step=0, start_position=None):
    """Record indices read by every rank over ``steps`` steps, and the position after them."""
    ranks = [_batches(dataset, r, world, start_step, start_position) for r in range(world)]
    seen = []
    for step in range(start_step, start_step + steps):
        for batches in ranks:
            seen.extend(int(i) for i in batches.record_indices(step)[2])
    return seen, ranks[0].position(start_step + steps)


@pytest.mark.parametrize("before,after", [(2, 3), (3, 2)])
def test_resume_with_another_world_size_neither_repeats_nor_skips(sample_rec, before, after):
    dataset = RecordDataset(sample_rec)
    total = len(dataset.image_indices)
    first_steps = 3
    seen, position = _records(dataset, before, first_steps)
    assert position == (0, first_steps * BATCH * before)
    remaining = (total - position[1]) // (BATCH * after)
    rest, end = _records(dataset, after, remaining, start_step=first_steps, start_position=position)
    assert end == (1, 0)  # the next step starts the next epoch
    counts = Counter(seen + rest)
    assert max(counts.values()) == 1  # nothing seen twice in the epoch
    left_out = total - len(counts)
    assert 0 <= left_out < BATCH * after  # only the tail shorter than one global batch
    assert set(counts) <= set(int(i) for i in dataset.image_indices)


def test_same_world_size_reproduces_the_uninterrupted_batches(sample_rec):
    dataset = RecordDataset(sample_rec)
    full = _batches(dataset, 1, 2)
    expected = [next(full)[1] for _ in range(12)]
    resumed = _batches(dataset, 1, 2, start_step=7)  # no saved position: where step 7 falls
    np.testing.assert_array_equal(next(resumed)[1], expected[7])
    saved = _batches(dataset, 1, 2).position(9)
    resumed = _batches(dataset, 1, 2, start_step=9, start_position=saved)
    for step in range(9, 12):
        np.testing.assert_array_equal(next(resumed)[1], expected[step])
