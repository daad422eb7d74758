"""P x K batch sampling for triplet training (Hermans et al. 2017, as used by MassFace).

Each batch holds exactly P distinct identities with K images each, so every anchor has K - 1
positives and (P - 1) K negatives in the batch. An epoch is one pass over the identities: they
are shuffled from (seed, epoch) -- the same permutation on every Horovod rank -- and cut into
steps of P x num_ranks identities; at a given step rank r takes the r-th slice of P, so ranks
never share an identity within a step (which is what cross-worker mining needs: the gathered
batch then has P x num_ranks distinct identities). Identities left over after the last full step
are dropped for this epoch and come back shuffled in the next.
"""
import numpy as np

SMALL_POLICIES = ("replace", "skip")


class PKSampler:
    """Yields int64 arrays of P*K record indices, identity-major (K consecutive per identity).

    ``identity_ranges``: (identity, first, last) tuples, records first..last-1 of each identity
    (``RecordDataset.identity_ranges``). Identities with fewer than K images are sampled with
    replacement (``small="replace"``) or left out (``small="skip"``); empty identities are always
    left out. Call ``set_epoch(epoch)`` before iterating to get that epoch's deterministic shuffle.
    """

    def __init__(self, identity_ranges, p, k, rank=0, num_ranks=1, seed=0, small="replace"):
        p, k, rank, num_ranks = int(p), int(k), int(rank), int(num_ranks)
        if p < 1 or k < 1:
            raise ValueError("PKSampler needs p >= 1 and k >= 1, got p=%d k=%d" % (p, k))
        if not 0 <= rank < num_ranks:
            raise ValueError("PKSampler: rank %d is not in [0, %d)" % (rank, num_ranks))
        if small not in SMALL_POLICIES:
            raise ValueError("PKSampler: small=%r, choose one of %s" % (small, ", ".join(SMALL_POLICIES)))
        minimum = k if small == "skip" else 1
        kept = [(int(first), int(last)) for _, first, last in identity_ranges if int(last) - int(first) >= minimum]
        self.first = np.array([f for f, _ in kept], dtype=np.int64)
        self.count = np.array([l - f for f, l in kept], dtype=np.int64)
        self.p, self.k, self.rank, self.num_ranks = p, k, rank, num_ranks
        self.seed = int(seed)
        self.small = small
        self.epoch = 0
        if len(self) == 0:
            raise ValueError("PKSampler: %d identities with >= %d images, but one step needs p x ranks = %d"
                             % (len(kept), minimum, p * num_ranks))

    @property
    def batch_size(self):
        return self.p * self.k

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        """Batches per epoch on this rank (the same on every rank)."""
        return len(self.count) // (self.p * self.num_ranks)

    def __iter__(self):
        # identity order shared by all ranks; image draws private to this rank
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.count))
        images = np.random.default_rng([self.seed, self.epoch, self.rank + 1])
        per_step = self.p * self.num_ranks
        for step in range(len(self)):
            start = step * per_step + self.rank * self.p
            batch = np.empty(self.p * self.k, dtype=np.int64)
            for slot, identity in enumerate(order[start:start + self.p]):
                count = self.count[identity]
                picks = images.choice(count, self.k, replace=count < self.k)
                batch[slot * self.k:(slot + 1) * self.k] = self.first[identity] + picks
            yield batch
