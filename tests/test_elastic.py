"""Elastic training (``train.elastic``) over three simulated hosts (tests/hosts.py: own hostname,
sshd and private disk each) with a real ``horovodrun --min-np 2 --max-np 3
--host-discovery-script``, in one run of the job:

* host 3 removed from the discovery script's output mid-run -> training goes on with 2 workers;
* host 3 added back -> it joins at the next commit and receives the state, 3 workers;
* host 2 SIGKILLed -> the others go on with 2 from the last commit;

and then the job ends by itself: horovodrun exits 0, the run made exactly the steps the config
asked, every final rank holds identical parameters, no process is left on any host, each change
is taken up within a bound, and counting the records the committed steps read (the trainer's
trace) shows that within each epoch no sample was read twice and none skipped: every epoch's
samples are a prefix of its permutation, whatever the number of workers at each step. A sharded
head is refused in one line. Skipped with the reason where hosts cannot be made."""
import glob
import json
import os
import re
import signal
import subprocess
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT
from hosts import Hosts, unavailable_reason

TRAIN_WORKER = os.path.join(ROOT, "tests", "workers", "train_worker.py")
TINY = ["model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=0", "data.prefetch=0",
        "train.log_every=1", "loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}", "optimizer.lr=0.01",
        "optimizer.warmup_steps=2", "train.elastic=true", "train.seed=3"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
STEPS = 90
CHANGE_BOUND_S = 120  # from a change of hosts to the line saying the workers went on without / with it


@pytest.fixture(scope="module")
def hosts(sample_rec):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Hosts(3) as made:
        for i in range(3):  # the dataset on each host's local disk
            copied = made.run(i, ["cp", "-r", sample_rec, os.path.join(made.disk, "rec")])
            assert copied.returncode == 0, copied.stderr
        yield made


def write_hosts(hosts, path, members):
    """The discovery script's host list, replaced atomically (the script may read it any time)."""
    with open(path + ".tmp", "w") as f:
        f.write("".join(f"{hosts.names[i]}:1\n" for i in members))
    os.replace(path + ".tmp", path)


class Log:
    """The job's output, each line with the time this process first saw it."""

    def __init__(self, path, launcher):
        self.path, self.launcher = path, launcher
        self.lines, self._read = [], 0

    def poll(self):
        with open(self.path, "rb") as f:
            f.seek(self._read)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        now = time.time()
        self.lines.extend((now, line) for line in complete.decode(errors="replace").splitlines())

    def text(self):
        self.poll()
        return "\n".join(line for _, line in self.lines)

    def find(self, pattern, after=0.0):
        """(time, match) of the first line matching ``pattern`` seen at or after ``after``."""
        for seen, line in self.lines:
            match = re.search(pattern, line)
            if match and seen >= after:
                return seen, match
        return None

    def wait(self, pattern, after=0.0, bound=CHANGE_BOUND_S):
        """(time, match) of the first line matching ``pattern`` at or after ``after``."""
        start = time.time()
        while True:
            self.poll()
            found = self.find(pattern, after)
            if found:
                return found
            assert self.launcher.poll() is None, f"job ended before {pattern!r}:\n{self.text()[-4000:]}"
            if any("Segmentation fault" in line for _, line in self.lines):  # faulthandler's stacks, less its module list
                stacks = "\n".join(line for _, line in self.lines if "Extension modules:" not in line)
                raise AssertionError(f"a worker crashed by itself (SIGSEGV), not by a change of hosts:\n{stacks[-8000:]}")
            assert time.time() - start < bound, f"no {pattern!r} within {bound} s:\n{self.text()[-4000:]}"
            time.sleep(0.1)

    def step(self):
        steps = re.findall(r"train: step (\d+)/", self.text())
        return int(steps[-1]) if steps else 0


def committed_steps(trace_dir):
    """[(step, epoch, records)] of every committed step and rank, from the trainer's trace."""
    out = []
    for path in glob.glob(os.path.join(trace_dir, "*.jsonl")):
        with open(path) as f:
            for line in f:
                for step, epoch, *records in json.loads(line)["steps"]:
                    out.append((step, epoch, records))
    return out


def elastic_scenario(hosts, steps=STEPS, commit_every=5, run="elastic"):
    """One elastic job over hosts 1-3 (1 worker each): host 3 removed from the discovery output
    at step 10, added back 10 steps after the job went on without it, host 2 SIGKILLed 10 steps
    after it joined; the job runs to the end. Returns what was observed, with for each change
    the seconds from it to the line saying the workers went on, to the first step after that, and
    the steps done again (shared with bench/elastic.py)."""
    shared = os.path.join(hosts.shared, run)
    os.makedirs(shared)
    host_list = os.path.join(shared, "hosts.txt")
    discover = os.path.join(shared, "discover.sh")
    with open(discover, "w") as f:
        f.write(f"#!/bin/sh\ncat {host_list}\n")
    os.chmod(discover, 0o755)
    write_hosts(hosts, host_list, [0, 1, 2])
    save, trace = os.path.join(shared, "params"), os.path.join(shared, "trace")
    os.makedirs(save)
    os.makedirs(trace)
    args = [TRAIN_WORKER, save, f"data.root={hosts.disk}/rec", f"output.dir={hosts.disk}/{run}",
            f"train.max_steps={steps}", "output.checkpoint_every=30", f"train.elastic_commit_every={commit_every}"] + TINY
    argv = hosts.horovodrun_elastic_argv(args, discover, np=3, min_np=2, max_np=3)
    log_path = os.path.join(shared, "job.log")
    with open(log_path, "w") as out:
        launcher = hosts.popen(0, argv, env=hosts.env(dict(ENV, RECOGNITION_ELASTIC_TRACE=trace)),
                               stdout=out, stderr=subprocess.STDOUT)
    log = Log(log_path, launcher)
    changes = []

    def change(name, act, workers):
        at_step = log.step()
        began = time.time()
        act()
        went_on, match = log.wait(rf"elastic: {workers} workers now; going on from the commit of step (\d+)", began)
        commit = int(match.group(1))
        first, _ = log.wait(r"train: step \d+/", went_on)
        changes.append({"change": name, "workers_after": workers, "step_at_change": at_step, "commit": commit,
                        "steps_redone": max(at_step - commit, 0), "to_going_on_s": round(went_on - began, 2),
                        "to_first_step_s": round(first - began, 2)})

    try:
        log.wait(r"train: step 10/", bound=300)
        change("host removed from the discovery output", lambda: write_hosts(hosts, host_list, [0, 1]), 2)
        log.wait(rf"train: step {log.step() + 10}/")
        change("host added back", lambda: write_hosts(hosts, host_list, [0, 1, 2]), 3)
        log.wait(rf"train: step {log.step() + 10}/")
        change("host SIGKILLed", lambda: hosts.kill_host(1, signal.SIGKILL), 2)
        launcher.wait(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    ended = time.time()
    while any(hosts.pids(i) for i in range(3)) and time.time() < ended + 60:
        time.sleep(0.5)
    # rank 0 of the end wrote results.json on its own disk; which host holds rank 0 is Horovod's choice
    written = [i for i in range(3) if os.path.exists(hosts.host_path(i, f"{hosts.disk}/{run}/results.json"))]
    results = json.loads(open(hosts.host_path(written[0], f"{hosts.disk}/{run}/results.json")).read()) \
        if written else {}
    return {"returncode": launcher.returncode, "log": log.text(), "changes": changes, "save": save,
            "trace": trace, "left": {i: hosts.pids(i) for i in range(3)}, "steps": steps, "results": results,
            "results_on": written}


def test_elastic_remove_add_and_kill_a_host_goes_on_to_the_end(hosts, sample_rec):
    from recognition.data.dataset import epoch_rng
    from recognition.data.record import RecordDataset

    seen = elastic_scenario(hosts)
    said = seen["log"]
    assert seen["returncode"] == 0, said[-4000:]
    assert [c["workers_after"] for c in seen["changes"]] == [2, 3, 2]
    assert all(c["to_first_step_s"] < CHANGE_BOUND_S for c in seen["changes"]), seen["changes"]
    assert seen["left"] == {0: [], 1: [], 2: []}, f"left running: {seen['left']}"
    assert len(seen["results_on"]) == 1 and seen["results_on"] != [1]  # host 2 was killed before the end
    assert seen["results"]["steps"] == STEPS and seen["results"]["world_size"] == 2
    assert f"train: step {STEPS}/{STEPS}" in said
    # the two final ranks hold the same network and head
    save = seen["save"]
    for part in ("net", "head"):
        rank0 = {k: v.asnumpy() for k, v in mx.nd.load(f"{save}/{part}-rank0.params").items()}
        rank1 = {k: v.asnumpy() for k, v in mx.nd.load(f"{save}/{part}-rank1.params").items()}
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    assert not glob.glob(os.path.join(save, "*-rank2.params"))

    # data: per epoch, the records the committed steps read are distinct and a prefix of the
    # epoch's permutation (no sample twice, none skipped), whatever the number of workers. The
    # killed rank may have died between its last step and writing that commit's trace: that
    # commit's steps are left out of the prefix check (not of the repeat check).
    committed = committed_steps(seen["trace"])
    assert sorted({s for s, _, _ in committed}) == list(range(STEPS))
    lost = seen["changes"][-1]["commit"]
    window = range(lost - 5, lost + 5)
    dataset = RecordDataset(sample_rec)
    by_epoch = {}
    for step, epoch, records in committed:
        by_epoch.setdefault(epoch, []).append((step, records))
    for epoch, entries in by_epoch.items():
        records = [r for _, rs in entries for r in rs]
        assert len(records) == len(set(records)), f"epoch {epoch}: a sample read twice"
        if any(step in window for step, _ in entries):
            continue
        perm = list(epoch_rng(3, epoch).permutation(dataset.image_indices))
        assert sorted(records) == sorted(perm[:len(records)]), f"epoch {epoch}: a sample skipped"


def test_elastic_refuses_a_sharded_head_in_one_line(hosts):
    shared = hosts.shared
    host_list = os.path.join(shared, "hosts-sharded.txt")
    discover = os.path.join(shared, "discover-sharded.sh")
    with open(discover, "w") as f:
        f.write(f"#!/bin/sh\ncat {host_list}\n")
    os.chmod(discover, 0o755)
    write_hosts(hosts, host_list, [0, 1])
    args = [TRAIN_WORKER, shared, f"data.root={hosts.disk}/rec", f"output.dir={hosts.disk}/sharded",
            "train.max_steps=4", "loss.sharded=true"] + TINY
    proc = hosts.run(0, hosts.horovodrun_elastic_argv(args, discover, np=2, min_np=2, max_np=2),
                     env=hosts.env(ENV), timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.elastic: a sharded or Partial FC classifier keeps each block of rows only on its own worker" \
        in said, said[-3000:]
    assert not os.path.exists(hosts.host_path(0, f"{hosts.disk}/sharded"))
