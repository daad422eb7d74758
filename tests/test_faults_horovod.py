"""A Horovod worker dies (issue 6): the job ends non-zero within a bounded time instead of hanging
in an allreduce, and ``--resume auto`` restarts it from the last checkpoint.

Real horovodrun (2 processes, Gloo); rank 1 sends itself SIGKILL from a background thread as soon
as the first checkpoint exists (tests/workers/fault_worker.py), in the middle of training.
"""
import json
import os
import time


from conftest import ROOT, horovod_failure, run_horovod
from test_faults import state_steps, train_args, write_tiny_config

WORKER = os.path.join(ROOT, "tests", "workers", "fault_worker.py")
BOUND_S = 120  # the job must be over this long after the death at most


def test_dead_worker_ends_the_job_and_resume_auto_finishes_it(sample_rec, tmp_path):
    config = write_tiny_config(str(tmp_path))
    out = tmp_path / "run"
    marker = tmp_path / "killed_at"
    args = train_args(config, sample_rec, out, 10, "output.checkpoint_every=2")
    result = run_horovod([WORKER, "1", str(marker)] + args, timeout=300)
    ended = time.time()
    said = result.stdout + result.stderr
    assert marker.exists(), said[-3000:]  # rank 1 really died mid-run
    assert result.returncode != 0
    assert ended - float(marker.read_text()) < BOUND_S
    assert "exit with status code 137" in said  # SIGKILL, seen by horovodrun
    kept = state_steps(out)
    assert kept and kept[-1] < 10 and not (out / "results.json").exists()

    resumed = run_horovod([WORKER, "-1", str(marker), "--resume", "auto"] + args, timeout=300)
    assert resumed.returncode == 0, horovod_failure(resumed)
    assert f"resumed from {out}/checkpoints/step-{kept[-1]:08d} at step {kept[-1]}" in resumed.stdout + resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["start_step"] == kept[-1] and results["steps"] == 10
    said = resumed.stdout + resumed.stderr
    assert state_steps(out)[-1] == 10, said[-3000:]
    meta = json.loads((out / "checkpoints" / "step-00000010" / "meta.json").read_text())
    assert meta["world_size"] == 2
