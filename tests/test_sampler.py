"""PKSampler: P x K batches, small identities, disjoint identities across ranks, determinism."""
import numpy as np
import pytest

from recognition.data.record import IdentityRange
from recognition.data.sampler import PKSampler


def ranges(counts):
    """Consecutive record ranges starting at record 1 (record 0 is the header in a .rec)."""
    out, first = [], 1
    for identity, count in enumerate(counts):
        out.append(IdentityRange(identity, first, first + count))
        first += count
    return out


def identity_of(ranges_):
    lookup = {}
    for identity, first, last in ranges_:
        lookup.update({record: identity for record in range(first, last)})
    return lookup


COUNTS = [5, 2, 8, 4, 1, 12, 3, 6, 4, 9, 7, 0, 4, 5, 2, 10, 3, 4, 6, 8, 5, 4, 2, 7]


@pytest.mark.parametrize("small", ["replace", "skip"])
def test_batches_are_p_identities_with_k_images(small):
    rs = ranges(COUNTS)
    owner = identity_of(rs)
    sampler = PKSampler(rs, p=3, k=4, small=small, seed=1)
    eligible = [i for i, c in enumerate(COUNTS) if (c >= 4 if small == "skip" else c >= 1)]
    assert len(sampler) == len(eligible) // 3 and sampler.batch_size == 12
    seen = []
    for batch in sampler:
        assert batch.shape == (12,) and batch.dtype == np.int64
        ids = [owner[int(r)] for r in batch]               # every index is a real record
        blocks = [ids[s:s + 4] for s in range(0, 12, 4)]  # identity-major: K consecutive each
        assert all(len(set(b)) == 1 for b in blocks)
        identities = [b[0] for b in blocks]
        assert len(set(identities)) == 3                  # exactly P distinct identities
        for identity, start in zip(identities, range(0, 12, 4)):
            records = batch[start:start + 4]
            if COUNTS[identity] >= 4:                     # enough images: no repeats
                assert len(set(records.tolist())) == 4
            else:
                assert small == "replace"
        seen.extend(identities)
    assert len(set(seen)) == len(seen)                    # one pass: no identity twice per epoch
    assert set(seen) <= set(eligible) and 11 not in seen  # the empty identity never comes
    if small == "skip":
        assert all(COUNTS[i] >= 4 for i in seen)


def test_small_identities_are_sampled_with_replacement():
    rs = ranges([1, 2, 2])
    owner = identity_of(rs)
    batch = next(iter(PKSampler(rs, p=3, k=5, seed=0)))
    assert sorted(set(owner[int(r)] for r in batch)) == [0, 1, 2]
    blocks = sorted(batch.reshape(3, 5).tolist())
    assert blocks[0] == [1] * 5                           # the single image five times
    assert all(set(b) <= {2, 3} or set(b) <= {4, 5} for b in blocks[1:])


def test_ranks_draw_disjoint_identities_each_step():
    rs = ranges(COUNTS)
    owner = identity_of(rs)
    samplers = [PKSampler(rs, p=2, k=3, rank=r, num_ranks=3, seed=4) for r in range(3)]
    assert len({len(s) for s in samplers}) == 1 and len(samplers[0]) == 23 // 6
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        everything = []
        for step, batches in enumerate(zip(*samplers)):
            per_rank = [{owner[int(r)] for r in b} for b in batches]
            assert all(len(ids) == 2 for ids in per_rank)
            union = set().union(*per_rank)
            assert len(union) == 6                       # P x ranks distinct identities per step
            everything.extend(union)
        assert len(everything) == len(set(everything))   # and none repeats within the epoch
    # images are drawn independently per rank (not the same draw shifted)
    a, b = (next(iter(s)) for s in samplers[:2])
    assert not np.array_equal(a - a.min(), b - b.min())


def test_deterministic_per_epoch_and_reshuffled_across_epochs():
    rs = ranges(COUNTS)
    first = PKSampler(rs, p=3, k=2, seed=7)
    second = PKSampler(rs, p=3, k=2, seed=7)
    first.set_epoch(2), second.set_epoch(2)
    epoch2 = [b.tolist() for b in first]
    assert epoch2 == [b.tolist() for b in second]
    assert epoch2 == [b.tolist() for b in first]          # iterating again repeats the epoch
    first.set_epoch(3)
    assert [b.tolist() for b in first] != epoch2
    other_seed = PKSampler(rs, p=3, k=2, seed=8)
    other_seed.set_epoch(2)
    assert [b.tolist() for b in other_seed] != epoch2


def test_bad_arguments():
    rs = ranges([3, 3, 3])
    with pytest.raises(ValueError, match="p >= 1 and k >= 1"):
        PKSampler(rs, p=0, k=2)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        PKSampler(rs, p=1, k=2, rank=2, num_ranks=2)
    with pytest.raises(ValueError, match="small='drop'"):
        PKSampler(rs, p=1, k=2, small="drop")
    with pytest.raises(ValueError, match="0 identities with >= 4 images"):
        PKSampler(rs, p=1, k=4, small="skip")
    with pytest.raises(ValueError, match="p x ranks = 4"):
        PKSampler(rs, p=2, k=2, num_ranks=2)


def test_record_dataset_ranges(sample_rec):
    # the real input: RecordDataset.identity_ranges of a packed .rec (records 1..N)
    from recognition.data.record import RecordDataset
    dataset = RecordDataset(sample_rec)
    sampler = PKSampler(dataset.identity_ranges, p=4, k=2, seed=0)
    labels = dataset.label_array()  # identity of record r is labels[r - 1]
    assert len(sampler) == len(dataset.identity_ranges) // 4 > 0
    for batch in sampler:
        assert batch.min() >= 1 and batch.max() <= len(dataset)
        identities = labels[batch - 1]
        assert len(set(identities.tolist())) == 4
        assert all(len(set(identities[s:s + 2].tolist())) == 1 for s in range(0, 8, 2))
        assert dataset.read_image(int(batch[0]))[1] == identities[0]
