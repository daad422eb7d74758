"""Loss state under a real 2-process horovodrun: after a few training steps on different per-rank
batches, the AdaCos scale, the class centres and the head weights agree across ranks and equal the
single-process result on the concatenated batches."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))

from conftest import run_worker_ranks  # noqa: E402
from losses_worker import HEADS, SHARES, STEPS, global_batch, simulate  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_worker_ranks("losses_worker.py", tmp_path_factory.mktemp("losses"), len(SHARES))


@pytest.mark.parametrize("key", list(HEADS))
def test_horovod_state_agrees_across_ranks_and_with_single_process(ranks, key):
    assert [int(r["size"]) for r in ranks] == [len(SHARES)] * len(SHARES)
    # single process on the concatenated batch; step(size) matches DistributedTrainer's averaging
    single = simulate(key, global_batch, len(SHARES))
    for name in ("scales", "centers", "weight"):
        if key + "/" + name not in ranks[0]:
            continue
        np.testing.assert_array_equal(ranks[1][key + "/" + name], ranks[0][key + "/" + name])
        np.testing.assert_allclose(ranks[0][key + "/" + name], single[name], rtol=1e-5, atol=1e-6)
    # each rank's losses are the single-process losses of its own rows
    owner = np.tile(np.repeat(np.arange(len(SHARES)), SHARES), STEPS)
    for rank, data in enumerate(ranks):
        np.testing.assert_allclose(data[key + "/losses"], single["losses"][owner == rank], rtol=1e-5, atol=1e-6)
    if key.startswith("adacos"):
        assert len(set(np.round(single["scales"], 5))) == STEPS  # the scale really moved every step
    if "centers" in single:
        initial = np.random.RandomState(0)
        initial.normal(size=(6, 4))
        assert not np.allclose(single["centers"], initial.normal(size=(6, 4)))  # centres really moved
