"""Training across two simulated hosts (tests/hosts.py: own hostname, own sshd, own private disk;
horovodrun on host 0 reaching host 1 over ssh), as on a cluster without a shared filesystem: the
dataset is copied to each host's local disk and ``output.dir`` is on each host's local disk.

* the replicated head: checkpoints complete on host 0's disk, nothing on host 1's, identical
  parameters on both ranks, line-oriented log;
* the sharded head and Partial FC: the parameters after N steps equal a single-host 2-worker run
  of the same config, and the run resumes 2 -> 3 -> 2 workers from host 0's disk alone;
* the dataset missing on host 1: one line naming host 1 and the path, before any training;
* a host killed (SIGKILL of all its processes) or cut off the network mid-run: every process on
  both hosts is gone within 60 s, horovodrun exits non-zero, the surviving rank's last line says a
  worker was lost, the last checkpoint and the resume command, and ``--resume auto`` completes.

Real namespaces, sshd and horovodrun; skipped with the reason where hosts cannot be made."""
import json
import os
import signal
import subprocess
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT, horovod_failure, once_more_on_native_crash, run_horovod
from hosts import Hosts, unavailable_reason

TRAIN_WORKER = os.path.join(ROOT, "tests", "workers", "train_worker.py")
TRAIN_TOOL = os.path.join(ROOT, "tools", "train.py")
TINY = ["model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=0", "data.prefetch=0",
        "train.log_every=1", "loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}", "optimizer.lr=0.01",
        "optimizer.warmup_steps=2"]
TINY_YAML = """\
data: {batch_size: 8, num_workers: 0, prefetch: 0}
model: {name: mobilefacenet}
loss: {name: arcface, params: {s: 16.0, m2: 0.3}}
optimizer: {lr: 0.01, warmup_steps: 2}
train: {log_every: 5}
"""
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
LOST_BOUND_S = 60


@pytest.fixture(scope="module")
def hosts(sample_rec):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Hosts(2) as made:
        for i in range(2):  # the dataset on each host's local disk, as on a cluster
            copied = made.run(i, ["cp", "-r", sample_rec, os.path.join(made.disk, "rec")])
            assert copied.returncode == 0, copied.stderr
        yield made


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _overrides(hosts, run, steps, extra=()):
    return [f"data.root={hosts.disk}/rec", f"output.dir={hosts.disk}/{run}", f"train.max_steps={steps}"] \
        + TINY + list(extra)


def _said(proc):
    return proc.stdout + proc.stderr


def _on_host(hosts, i, *parts):
    return hosts.host_path(i, os.path.join(hosts.disk, *parts))


def _steps(hosts, i, run):
    folder = _on_host(hosts, i, run, "checkpoints")
    return sorted(int(n[5:]) for n in os.listdir(folder) if n.startswith("step-") and not n.endswith(".tmp")) \
        if os.path.isdir(folder) else []


def test_replicated_head_per_host_disks(hosts):
    save = os.path.join(hosts.shared, "replicated")
    os.makedirs(save)
    proc = hosts.horovodrun([TRAIN_WORKER, save] + _overrides(hosts, "replicated", 4, ["output.checkpoint_every=2"]),
                            env=ENV, timeout=300)
    said = _said(proc)
    assert proc.returncode == 0, said[-4000:]
    assert "rank 0 of 2 done" in said and "rank 1 of 2 done" in said
    assert _steps(hosts, 0, "replicated") == [2, 4]
    assert not os.path.exists(_on_host(hosts, 1, "replicated"))  # rank 1 wrote nothing on its disk
    meta = json.loads(open(_on_host(hosts, 0, "replicated", "checkpoints", "step-00000004", "meta.json")).read())
    assert meta["world_size"] == 2 and meta["hosts"] == hosts.names
    for part in ("net", "head"):
        rank0, rank1 = _params(f"{save}/{part}-rank0.params"), _params(f"{save}/{part}-rank1.params")
        for key in rank0:
            np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    # under horovodrun the log is one line per interval, no carriage-return bar
    assert "train: step 4/4 loss=" in said and "\r" not in said


def test_sharded_and_partial_fc_per_host_disks_equal_single_host_and_resume_2_3_2(hosts, sample_rec, tmp_path):
    sharded = ["loss.sharded=true", "loss.sample_ratio=0.5", "output.checkpoint_every=2", "train.seed=5"]
    save = os.path.join(hosts.shared, "sharded")
    os.makedirs(save)
    proc = hosts.horovodrun([TRAIN_WORKER, save] + _overrides(hosts, "sharded", 4, sharded), env=ENV, timeout=300)
    assert proc.returncode == 0, horovod_failure(proc)
    state = _on_host(hosts, 0, "sharded", "checkpoints", "step-00000004")
    assert sorted(os.listdir(state)) == ["head-block-0000.params", "head-block-0001.params", "head.params",
                                         "meta.json", "net.params", "trainer.states"]
    assert not os.path.exists(_on_host(hosts, 1, "sharded"))

    # the same config on one host (2 workers, shared /tmp): the same parameters
    local = tmp_path / "local"
    single = run_horovod([TRAIN_WORKER, str(tmp_path), f"data.root={sample_rec}", f"output.dir={local}",
                          "train.max_steps=4"] + TINY + sharded)
    assert single.returncode == 0, horovod_failure(single)
    for r in (0, 1):
        for part in ("net", "head"):
            multi, one = _params(f"{save}/{part}-rank{r}.params"), _params(tmp_path / f"{part}-rank{r}.params")
            assert multi.keys() == one.keys()
            for key in multi:
                np.testing.assert_allclose(multi[key], one[key], rtol=1e-5, atol=1e-6, err_msg=f"rank {r} {key}")

    # resume with 3 workers (2 on host 0, 1 on host 1), then with 2 again: host 0's disk only
    for slots, steps, previous in (((2, 1), 6, 2), ((1, 1), 8, 3)):
        # a native crash while the blocks are scattered writes nothing: repeatable (conftest); one
        # later would have written step STEPS-2+2, and the repeat would fail the "at step" check
        resumed = once_more_on_native_crash(lambda: hosts.horovodrun(
            [TRAIN_WORKER, save, "--resume"] + _overrides(hosts, "sharded", steps, sharded),
            slots=slots, env=ENV, timeout=300))
        said = _said(resumed)
        assert resumed.returncode == 0, horovod_failure(resumed)
        assert f"at step {steps - 2} (written by {previous} workers, now {sum(slots)}: classifier blocks " \
               f"re-split" in said, said[-3000:]
        meta = json.loads(open(_on_host(hosts, 0, "sharded", "checkpoints", f"step-{steps:08d}", "meta.json")).read())
        assert meta["world_size"] == sum(slots) and len(meta["head_blocks"]) == sum(slots)
    assert not os.path.exists(_on_host(hosts, 1, "sharded"))


def test_dataset_missing_on_one_host_is_one_line_naming_it(hosts):
    removed = hosts.run(1, ["mv", f"{hosts.disk}/rec", f"{hosts.disk}/rec.away"])
    assert removed.returncode == 0
    try:
        proc = hosts.horovodrun([TRAIN_TOOL, "--config", _tiny_yaml(hosts), "--set"] +
                                _overrides(hosts, "missing", 4), env=ENV, timeout=300)
    finally:
        hosts.run(1, ["mv", f"{hosts.disk}/rec.away", f"{hosts.disk}/rec"])
    said = _said(proc)
    assert proc.returncode != 0
    expected = f"train: rank 1 on {hosts.names[1]}: data.root {hosts.disk}/rec: train.rec not found"
    assert expected in said, said[-3000:]
    assert f"rank 0 on {hosts.names[0]}: data.root" not in said  # host 0 has its copy
    workers = _worker_lines(said)
    assert not any("Traceback" in line for lines in workers.values() for line in lines), said[-3000:]
    assert workers[1] == [expected], workers  # horovodrun's own report follows
    assert not os.path.exists(_on_host(hosts, 0, "missing"))  # nothing written before the check


def _tiny_yaml(hosts):
    path = os.path.join(hosts.shared, "tiny.yaml")
    with open(path, "w") as f:
        f.write(TINY_YAML)
    return path


def _worker_lines(said):
    """Each rank's output lines without horovodrun's '[r]<stderr>:' prefix, in order."""
    lines = {}
    for line in said.splitlines():
        if line.startswith("[") and "]<" in line and ">:" in line:
            rank = int(line[1:line.index("]")])
            text = line.split(">:", 1)[1]
            if text.strip():
                lines.setdefault(rank, []).append(text)
    return lines


def lose_host(hosts, fault, run, steps=30, checkpoint_every=3):
    """Train ``steps`` on both hosts, lose host 1 (``fault``: 'kill' = SIGKILL of all its processes,
    'partition' = its link down) right after the first checkpoint, then ``--resume auto``.
    Returns what was observed (shared with bench/faults.py)."""
    args = [TRAIN_TOOL, "--config", _tiny_yaml(hosts), "--set"] + \
        _overrides(hosts, run, steps, [f"output.checkpoint_every={checkpoint_every}"])
    log_path = os.path.join(hosts.shared, f"{run}.log")
    with open(log_path, "w") as log:
        launcher = hosts.horovodrun_popen(args, env=ENV, stdout=log, stderr=log)
    deadline = time.time() + 240
    while not _steps(hosts, 0, run):
        assert launcher.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
        time.sleep(0.2)
    hit = time.time()
    if fault == "kill":
        assert hosts.kill_host(1, signal.SIGKILL)
    else:
        hosts.partition(1)
    try:
        try:
            launcher.wait(timeout=LOST_BOUND_S)
        except subprocess.TimeoutExpired:
            pass
        ended = time.time()
        while (hosts.pids(0) or hosts.pids(1)) and time.time() < hit + LOST_BOUND_S:
            time.sleep(0.5)
        left = {i: hosts.pids(i) for i in (0, 1)}
        gone = time.time()
    finally:
        if fault == "partition":
            hosts.heal(1)
    said = open(log_path).read()
    kept = _steps(hosts, 0, run)
    survivor = _worker_lines(said).get(0, [""])
    resumed = hosts.horovodrun(args + ["--resume", "auto"], env=ENV, timeout=400)
    results_path = _on_host(hosts, 0, run, "results.json")
    return {"returncode": launcher.returncode, "ended_s": ended - hit, "gone_s": gone - hit, "left": left,
            "last_line": survivor[-1], "said": said, "kept": kept,
            "checkpoint": f"{hosts.disk}/{run}/checkpoints/step-{kept[-1]:08d}" if kept else None, "resumed": resumed, "steps": steps,
            "results": json.loads(open(results_path).read()) if os.path.exists(results_path) else {},
            "tmp_left": [n for n in os.listdir(_on_host(hosts, 0, run, "checkpoints")) if n.endswith(".tmp")],
            "host1_written": os.path.exists(_on_host(hosts, 1, run))}


@pytest.mark.parametrize("fault", ["kill", "partition"])
def test_losing_a_host_ends_the_job_and_resume_auto_completes_it(hosts, fault):
    seen = lose_host(hosts, fault, f"lost-{fault}")
    assert seen["returncode"] not in (None, 0)
    assert seen["ended_s"] < LOST_BOUND_S and seen["gone_s"] < LOST_BOUND_S, seen
    assert seen["left"] == {0: [], 1: []}, f"left running: {seen['left']}"
    last = seen["last_line"]  # rank 0 survived (host 0); its last line, before horovodrun's report
    assert "a worker was lost" in last and "last complete checkpoint" in last and "--resume auto" in last, \
        seen["said"][-4000:]
    assert seen["checkpoint"] and seen["checkpoint"] in last, last
    assert seen["resumed"].returncode == 0, horovod_failure(seen["resumed"])
    assert seen["results"]["start_step"] == seen["kept"][-1] and seen["results"]["steps"] == seen["steps"]
    assert not seen["tmp_left"] and not seen["host1_written"]
