#!/usr/bin/env python
"""Fault injection, end to end: every fault of issue 6 on real files and real processes.

Each case damages real inputs (bytes of images, .rec, .idx, property), kills real processes with
SIGKILL (a pack, a training run at several moments, one Horovod worker), fills the disk (a small
tmpfs when this process may mount one, and RLIMIT_FSIZE, under which the kernel refuses writes with
EFBIG), overflows the weights so losses and gradients turn non-finite, and feeds bad
configurations. The tools run as subprocesses exactly as a user runs them (tools/pack_rec.py,
tools/train.py, horovodrun). The data is the committed LFW sample (tests/data/lfw_sample).

For each case the table gives what the issue expects, what was observed, whether data was lost
(a complete pack, a complete checkpoint or finished training steps beyond the last checkpoint) and
whether the observation matches. The kill -9 cases compare the resumed run with an uninterrupted
run of the same deterministic configuration parameter by parameter.

Prints a Markdown table and one JSON object (also written atomically with --json-out).
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

# the fault-injection helpers are the tests' own (tests/test_faults.py)
from test_faults import (CONFIG_FAULTS, OVERFLOW, batch_records, break_image,  # noqa: E402
                         break_magic, copy_rec, error_lines, kill_when, limit_file_size, load_params,
                         make_damaged_source, many_copies, run_tool, set_image_label, set_range, start_tool,
                         state_steps, tool_env, train_args, truncate_rec, write_tiny_config)

OUTPUTS = ("train.rec", "train.idx", "property")


class Bench:
    """Working folder, the packed sample and the tiny training config shared by the cases."""

    def __init__(self, work):
        self.work = work
        self.config = write_tiny_config(work)
        src = os.path.join(work, "sample_src")
        os.makedirs(src)
        from conftest import SAMPLE, train_people
        for name in train_people()[:20]:
            os.symlink(os.path.join(SAMPLE, "images", name), os.path.join(src, name))
        self.rec = os.path.join(work, "sample_rec")
        result = run_tool("pack_rec.py", [src, self.rec, "--landmarks", os.path.join(SAMPLE, "landmarks.txt"),
                                          "--workers", "1", "--no-progress"])
        if result.returncode != 0:
            raise SystemExit(f"faults: packing the sample failed: {result.stderr}")
        self._count = 0
        self._reference = {}

    def folder(self, name):
        self._count += 1
        path = os.path.join(self.work, f"{self._count:02d}_{name}")
        os.makedirs(path)
        return path

    def reference(self, steps, extra):
        """Final checkpoint of an uninterrupted run (cached per configuration)."""
        key = (steps, tuple(extra))
        if key not in self._reference:
            out = os.path.join(self.folder("reference"), "run")
            result = run_tool("train.py", train_args(self.config, self.rec, out, steps, *extra))
            if result.returncode != 0:
                raise SystemExit(f"faults: reference run failed: {result.stderr[-2000:]}")
            self._reference[key] = os.path.join(out, "checkpoints", f"step-{steps:08d}")
        return self._reference[key]


def _digest(folder, names):
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest() for n in names}


def _last_line(stderr):
    lines = error_lines(stderr)
    return lines[-1] if lines else ""


def _same_state(a, b):
    """Parameters (net, head) and optimizer state of two checkpoints: identical bytes-for-value?"""
    import numpy as np
    for name in ("net.params", "head.params"):
        pa, pb = load_params(os.path.join(a, name)), load_params(os.path.join(b, name))
        if pa.keys() != pb.keys() or any(not np.array_equal(pa[k], pb[k]) for k in pa):
            return False
    with open(os.path.join(a, "trainer.states"), "rb") as fa, open(os.path.join(b, "trainer.states"), "rb") as fb:
        return fa.read() == fb.read()


# -- packing ---------------------------------------------------------------------------------------

def pack_bad_inputs(bench):
    src, landmarks, faults = make_damaged_source(bench.folder("pack_bad"))
    out = os.path.join(os.path.dirname(src), "rec")
    result = run_tool("pack_rec.py", [src, out, "--landmarks", landmarks, "--workers", "2", "--no-progress"])
    warnings = [line for line in error_lines(result.stderr) if line.startswith("warning: ")]
    one_each = all(sum(w.startswith(f"warning: {p}") and r in w for w in warnings) == 1 for p, r in faults.items())
    from recognition.data.record import RecordDataset
    packed = len(RecordDataset(out)) if result.returncode == 0 else 0
    ok = result.returncode == 0 and one_each and len(warnings) == len(faults) and packed == 24 - len(faults)
    summary = result.stdout.strip().replace(out, "OUT")
    return (f"exit {result.returncode}, {len(warnings)} warnings for {len(faults)} bad files "
            f"(garbage, truncated JPEG, 20x20, empty, no landmark row); `{summary}`", packed != 24 - len(faults), ok)


def pack_strict(bench):
    src, landmarks, faults = make_damaged_source(bench.folder("pack_strict"))
    out = os.path.join(os.path.dirname(src), "rec")
    result = run_tool("pack_rec.py", [src, out, "--strict", "--workers", "1", "--no-progress"])
    lines = error_lines(result.stderr)
    left = os.listdir(out) if os.path.isdir(out) else []
    ok = result.returncode != 0 and len(lines) == 1 and not left
    shown = lines[-1].replace(src, "SRC") if lines else ""
    return f"exit {result.returncode}, stderr: `{shown}`; files left: {left or 'none'}", False, ok


def pack_kill(bench):
    folder = bench.folder("pack_kill")
    src = many_copies(os.path.join(folder, "src"))
    out = os.path.join(folder, "rec")
    process = start_tool("pack_rec.py", [src, out, "--workers", "1", "--no-progress"], os.path.join(folder, "log"))
    partial = os.path.join(out, "train.rec.tmp")
    kill_when(process, lambda: os.path.exists(partial) and os.path.getsize(partial) > 200_000)
    found = [n for n in OUTPUTS if os.path.exists(os.path.join(out, n))]
    return (f"killed with {os.path.getsize(partial) // 1000} kB in train.rec.tmp; final names present: "
            f"{found or 'none'}", False, not found)


def pack_kill_repack(bench):
    folder = bench.folder("pack_kill_repack")
    out = os.path.join(folder, "rec")
    shutil.copytree(bench.rec, out)
    before = _digest(out, OUTPUTS)
    src = many_copies(os.path.join(folder, "src"))
    process = start_tool("pack_rec.py", [src, out, "--workers", "1", "--no-progress"], os.path.join(folder, "log"))
    partial = os.path.join(out, "train.rec.tmp")
    kill_when(process, lambda: os.path.exists(partial) and os.path.getsize(partial) > 200_000)
    intact = _digest(out, OUTPUTS) == before
    return f"previous pack byte-identical after the kill: {intact}", not intact, intact


# -- reading -----------------------------------------------------------------------------------------

def _refused_at_start(bench, name, damage, words):
    root = copy_rec(bench.rec, os.path.join(bench.folder(name), "rec"))
    damage(root)
    out = os.path.join(os.path.dirname(root), "run")
    result = run_tool("train.py", train_args(bench.config, root, out, 3))
    line = _last_line(result.stderr)
    trained = os.path.isdir(out) and bool({"logs", "checkpoints"} & set(os.listdir(out)))
    ok = result.returncode != 0 and all(w in line for w in words) and not trained
    return f"exit {result.returncode} before training: `{line.replace(root, 'REC')}`", False, ok


def read_truncated(bench):
    return _refused_at_start(bench, "truncated_rec", lambda r: truncate_rec(r, 0.5),
                             ["train.idx", "past the end of", "train.rec"])


def read_bad_index(bench):
    def damage(root):
        path = os.path.join(root, "train.idx")
        lines = open(path).read().splitlines(True)
        lines[10] = "eleven\tnowhere\n"
        open(path, "w").writelines(lines)
    return _refused_at_start(bench, "bad_idx", damage, ["train.idx:11", "malformed"])


def read_bad_header0(bench):
    return _refused_at_start(bench, "bad_header0", lambda r: break_magic(r, 0), ["record 0 is corrupt"])


def read_header0_vs_index(bench):
    def damage(root):
        from recognition.data.record import write_property
        set_range(root, 0, 121, 145)
        write_property(os.path.join(root, "property"), 24, 112, 112)
    return _refused_at_start(bench, "header0_vs_idx", damage, ["train.idx", "record 141 missing"])


def read_property_classes(bench):
    def damage(root):
        from recognition.data.record import write_property
        write_property(os.path.join(root, "property"), 21, 112, 112)
    return _refused_at_start(bench, "property_classes", damage, ["property", "21 classes", "20 identities"])


def read_property_size(bench):
    def damage(root):
        from recognition.data.record import write_property
        write_property(os.path.join(root, "property"), 20, 96, 96)
    return _refused_at_start(bench, "property_size", damage, ["property", "96x96", "112x112"])


def corrupt_records_skipped(bench):
    root = copy_rec(bench.rec, os.path.join(bench.folder("bad_records"), "rec"))
    first, second = batch_records(root, steps=2)
    break_magic(root, first[0])
    break_image(root, first[5])
    set_image_label(root, second[2], 1000.0)
    out = os.path.join(os.path.dirname(root), "run")
    result = run_tool("train.py", train_args(bench.config, root, out, 30, "data.max_bad_records=0.05",
                                             "train.log_every=10"))
    said = result.stdout + result.stderr
    logged = sum("skipped corrupt record" in line for line in said.splitlines())
    bad = json.load(open(os.path.join(out, "results.json")))["bad_records"] if result.returncode == 0 else None
    ok = result.returncode == 0 and bad == 3 and logged == 3
    return (f"exit {result.returncode}, 3 damaged records (framing, JPEG, label) over 2 epochs: "
            f"bad_records={bad}, {logged} log lines", False, ok)


def corrupt_records_stop(bench):
    root = copy_rec(bench.rec, os.path.join(bench.folder("too_many_bad"), "rec"))
    for index in batch_records(root)[0][:4]:
        break_image(root, index)
    out = os.path.join(os.path.dirname(root), "run")
    result = run_tool("train.py", train_args(bench.config, root, out, 5, "data.max_bad_records=0.02"))
    line = _last_line(result.stderr)
    ok = result.returncode != 0 and "data.max_bad_records=0.02" in line and "4 corrupt records" in line
    return f"exit {result.returncode}: `{line.replace(root, 'REC')}`", False, ok


# -- numerics ----------------------------------------------------------------------------------------

def nonfinite_skipped(bench):
    import numpy as np
    out = os.path.join(bench.folder("nonfinite_skip"), "run")
    result = run_tool("train.py", train_args(bench.config, bench.rec, out, 6, "output.checkpoint_every=3",
                                             "train.max_nonfinite=10", *OVERFLOW))
    if result.returncode != 0:
        return f"exit {result.returncode}: `{_last_line(result.stderr)}`", True, False
    before, after = (os.path.join(out, "checkpoints", f"step-{s:08d}") for s in (3, 6))
    pb, pa = load_params(os.path.join(before, "net.params")), load_params(os.path.join(after, "net.params"))
    stats = [k for k in pb if k.endswith(("running_mean", "running_var"))]
    trainable_same = all(np.array_equal(pb[k], pa[k]) for k in pb if k not in stats) and \
        all(np.array_equal(v, load_params(os.path.join(after, "head.params"))[k])
            for k, v in load_params(os.path.join(before, "head.params")).items())
    with open(os.path.join(before, "trainer.states"), "rb") as fb, open(os.path.join(after, "trainer.states"), "rb") as fa:
        optimizer_same = fb.read() == fa.read()
    stats_same = all(np.array_equal(pb[k], pa[k]) for k in stats)
    stats_finite = all(np.isfinite(pa[k]).all() for k in stats)
    skipped = json.load(open(os.path.join(out, "results.json")))["skipped_updates"]
    logged = b"nonfinite_skipped" in b"".join(open(os.path.join(out, "logs", n), "rb").read()
                                              for n in os.listdir(os.path.join(out, "logs")))
    ok = skipped == 3 and trainable_same and optimizer_same and stats_same and logged
    return (f"3 updates skipped (counted {skipped}, mxboard: {logged}); weights untouched: {trainable_same}, "
            f"momentum untouched: {optimizer_same}, BatchNorm running stats untouched: {stats_same} "
            f"(finite: {stats_finite})", not (stats_same and stats_finite), ok)


def nonfinite_stop(bench):
    import numpy as np
    out = os.path.join(bench.folder("nonfinite_stop"), "run")
    result = run_tool("train.py", train_args(bench.config, bench.rec, out, 20, "output.checkpoint_every=2",
                                             "train.max_nonfinite=3", *OVERFLOW))
    steps = state_steps(out)
    finite = {s: all(np.isfinite(v).all() for name in ("net.params", "head.params")
                     for v in load_params(os.path.join(out, "checkpoints", f"step-{s:08d}", name)).values())
              for s in steps}
    line = _last_line(result.stderr)
    ok = result.returncode != 0 and "3 non-finite updates in a row" in line and 2 in steps and all(finite.values())
    return (f"exit {result.returncode}: `{line.replace(out, 'OUT')}`; checkpoints {steps}, all-finite per step: "
            f"{finite}", not finite.get(2, False), ok)


# -- checkpoints -------------------------------------------------------------------------------------

def _resume_after_failed_save(bench, out, run_full):
    """Run to step 2 normally, then to step 4 under a full disk, then resume with space again."""
    first = run_tool("train.py", train_args(bench.config, bench.rec, out, 2, "output.checkpoint_every=2"))
    assert first.returncode == 0, first.stderr[-2000:]
    kept = os.path.join(out, "checkpoints", "step-00000002")
    before = _digest(kept, ("net.params", "head.params", "trainer.states", "meta.json"))
    full = run_full()
    said = full.stdout + full.stderr
    message = next((line for line in said.splitlines() if line.startswith("checkpoint: saving step 4")), "")
    intact = _digest(kept, before) == before and state_steps(out) == [2]
    return full, message, intact


def disk_full_rlimit(bench):
    out = os.path.join(bench.folder("disk_full_efbig"), "run")
    args = train_args(bench.config, bench.rec, out, 4, "output.checkpoint_every=2") + ["--resume", "auto"]
    full, message, intact = _resume_after_failed_save(
        bench, out, lambda: run_tool("train.py", args, preexec_fn=limit_file_size(1 << 20)))
    again = run_tool("train.py", args)
    resumed = again.returncode == 0 and json.load(open(os.path.join(out, "results.json")))["start_step"] == 2
    ok = bool(message) and intact and resumed
    return (f"exit {full.returncode}; `{message.replace(out, 'OUT')}`; step 2 intact: {intact}; "
            f"resume with space back: {resumed}", not intact, ok)


def disk_full_tmpfs(bench):
    folder = bench.folder("disk_full_enospc")
    mount = os.path.join(folder, "tmpfs")
    os.makedirs(mount)
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"not run: cannot mount a tmpfs here ({probe.stderr.strip()[:60]})", False, None
    subprocess.run(["umount", mount], check=True)
    # measure a 2-step run (one checkpoint + the exported model + logs) and size the tmpfs for it
    # plus half a checkpoint: the next save runs out of space half-way
    probe_out = os.path.join(folder, "probe")
    run_tool("train.py", train_args(bench.config, bench.rec, probe_out, 2, "output.checkpoint_every=2"))
    state = os.path.join(probe_out, "checkpoints", "step-00000002")
    size = sum(os.path.getsize(os.path.join(state, n)) for n in os.listdir(state))
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(probe_out) for n in names)
    tmpfs_bytes = total + size // 2 + (256 << 10)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_bytes}", "tmpfs", mount], check=True)
    try:
        out = os.path.join(mount, "run")
        args = train_args(bench.config, bench.rec, out, 4, "output.checkpoint_every=2") + ["--resume", "auto"]
        full, message, intact = _resume_after_failed_save(bench, out, lambda: run_tool("train.py", args))
        ok = bool(message) and intact
        return (f"tmpfs of {tmpfs_bytes / 1e6:.1f} MB, checkpoint {size / 1e6:.1f} MB: exit "
                f"{full.returncode}; `{message.replace(out, 'OUT')}`; step 2 intact: {intact}", not intact, ok)
    finally:
        subprocess.run(["umount", mount], check=False)


DETERMINISTIC = ["train.deterministic=true", "output.checkpoint_every=2", "train.seed=3"]
KILL_STEPS = 8


def _kill_and_resume(bench, name, condition_factory, poll=0.02):
    reference = bench.reference(KILL_STEPS, DETERMINISTIC)
    folder = bench.folder(name)
    out = os.path.join(folder, "run")
    args = train_args(bench.config, bench.rec, out, KILL_STEPS, *DETERMINISTIC)
    process = start_tool("train.py", args, os.path.join(folder, "killed.log"))
    condition = condition_factory(out)
    try:
        kill_when(process, condition, poll=poll)
    except AssertionError as err:
        return f"not injected: {err}", False, None
    kept = state_steps(out)
    leftovers = [n for n in os.listdir(os.path.join(out, "checkpoints"))] if os.path.isdir(
        os.path.join(out, "checkpoints")) else []
    resumed = run_tool("train.py", args + ["--resume", "auto"])
    if resumed.returncode != 0:
        return f"resume failed: `{_last_line(resumed.stderr)}`", True, False
    start = json.load(open(os.path.join(out, "results.json")))["start_step"]
    same = _same_state(reference, os.path.join(out, "checkpoints", f"step-{KILL_STEPS:08d}"))
    lost = start != (kept[-1] if kept else 0)
    return (f"left {sorted(leftovers)}; resumed at step {start}; final parameters and optimizer state equal "
            f"to the uninterrupted run: {same}", lost or not same, same and not lost)


def kill_after_checkpoint(bench):
    return _kill_and_resume(bench, "kill_after_ckpt", lambda out: lambda: state_steps(out))


def kill_during_save(bench):
    def factory(out):
        root = os.path.join(out, "checkpoints")
        return lambda: os.path.isdir(root) and any(n.endswith(".tmp") for n in os.listdir(root))
    return _kill_and_resume(bench, "kill_during_save", factory, poll=0.002)


def kill_at_random(bench, seed=6):
    """SIGKILL at a random time (seeded) after the first checkpoint."""
    def factory(out):
        delay = random.Random(seed).uniform(0.0, 1.5)
        started = []

        def condition():
            if not started and state_steps(out):
                started.append(time.time())
            return bool(started) and time.time() - started[0] > delay
        return condition
    return _kill_and_resume(bench, "kill_random", factory, poll=0.005)


def resume_ignores_partial(bench):
    """A complete run keeping every state; then the crash debris is recreated: state 6 half-written
    (.tmp), state 8 without meta.json, no results. --resume auto must take state 4."""
    reference = bench.reference(KILL_STEPS, DETERMINISTIC)
    out = os.path.join(bench.folder("resume_decoys"), "run")
    args = train_args(bench.config, bench.rec, out, KILL_STEPS, *DETERMINISTIC)
    first = run_tool("train.py", args + ["output.keep=10"])
    if first.returncode != 0:
        return f"first run failed: `{_last_line(first.stderr)}`", False, False
    states = os.path.join(out, "checkpoints")
    os.replace(os.path.join(states, "step-00000006"), os.path.join(states, "step-00000006.tmp"))
    os.remove(os.path.join(states, "step-00000008", "meta.json"))
    os.remove(os.path.join(out, "results.json"))
    resumed = run_tool("train.py", args + ["--resume", "auto"])
    said = resumed.stdout + resumed.stderr
    picked = f"resumed from {os.path.join(states, 'step-00000004')} at step 4" in said
    # the final save replaces the folder without meta.json
    same = resumed.returncode == 0 and _same_state(reference, os.path.join(states, "step-00000008"))
    return (f"debris step-6.tmp and step-8 without meta.json: picked step 4: {picked}; final equal to the "
            f"uninterrupted run: {same}", not same, picked and same)


# -- distributed -------------------------------------------------------------------------------------

def _horovod_kill(bench, kill_rank):
    from conftest import run_horovod
    folder = bench.folder(f"horovod_kill_rank{kill_rank}")
    out = os.path.join(folder, "run")
    marker = os.path.join(folder, "killed_at")
    worker = os.path.join(ROOT, "tests", "workers", "fault_worker.py")
    args = train_args(bench.config, bench.rec, out, 10, "output.checkpoint_every=2")
    started = time.time()
    result = run_horovod([worker, str(kill_rank), marker] + args, timeout=300)
    ended = time.time()
    if not os.path.exists(marker):
        return f"not injected (exit {result.returncode})", False, None
    after = ended - float(open(marker).read())
    kept = state_steps(out)
    resumed = run_horovod([worker, "-1", marker, "--resume", "auto"] + args, timeout=300)
    results = json.load(open(os.path.join(out, "results.json"))) if resumed.returncode == 0 else {}
    final_saved = state_steps(out)[-1:] == [10]
    failure = next((line.split(">:", 1)[-1] for line in (resumed.stdout + resumed.stderr).splitlines()
                    if "checkpoint: saving step 10" in line), "")
    ok = result.returncode != 0 and after < 120 and resumed.returncode == 0 and \
        results.get("start_step") == (kept[-1] if kept else 0) and final_saved
    return (f"horovodrun exit {result.returncode} {after:.1f} s after the SIGKILL (run {ended - started:.0f} s); "
            f"--resume auto from step {results.get('start_step')} finished 10 steps: {resumed.returncode == 0}; "
            f"final checkpoint written: {final_saved}" + (f" (`{failure.replace(out, 'OUT')[:150]}`)" if failure else ""),
            not ok, ok)


def horovod_kill_rank1(bench):
    return _horovod_kill(bench, 1)


def horovod_kill_rank0(bench):
    return _horovod_kill(bench, 0)


def _host_loss(bench, fault):
    """Two simulated hosts (tests/hosts.py), the dataset on each one's local disk, output.dir on
    each one's local disk; host 1 lost after the first checkpoint (tests/test_multihost.py)."""
    from hosts import Hosts, unavailable_reason
    reason = unavailable_reason()
    if reason:
        return f"not run: {reason}", False, None
    from test_multihost import LOST_BOUND_S, lose_host
    with Hosts(2) as hosts:
        for i in range(2):
            hosts.run(i, ["cp", "-r", bench.rec, os.path.join(hosts.disk, "rec")])
        seen = lose_host(hosts, fault, f"lost-{fault}")
    last = seen["last_line"].replace(hosts.disk, "DISK").replace(ROOT + "/", "")
    for name, alias in zip(hosts.names, ("HOST1", "HOST2")):
        last = last.replace(name, alias)
    resumed = seen["resumed"].returncode == 0 and seen["results"].get("steps") == seen["steps"]
    start = seen["results"].get("start_step")
    ok = seen["returncode"] not in (None, 0) and seen["ended_s"] < LOST_BOUND_S and seen["gone_s"] < LOST_BOUND_S \
        and seen["left"] == {0: [], 1: []} and "a worker was lost" in last and resumed \
        and start == seen["kept"][-1] and not seen["tmp_left"]
    return (f"horovodrun exit {seen['returncode']} {seen['ended_s']:.1f} s after the fault, every process on both "
            f"hosts gone after {seen['gone_s']:.1f} s; rank 0's last line: `{last[:260]}`; --resume auto from step "
            f"{start} finished {seen['steps']} steps: {resumed}; .tmp left: {seen['tmp_left'] or 'none'}",
            not resumed or start != seen["kept"][-1], ok)


def host_killed(bench):
    return _host_loss(bench, "kill")


def host_partitioned(bench):
    return _host_loss(bench, "partition")


# -- configuration -----------------------------------------------------------------------------------

def _config_case(bench, case, spec):
    yaml_text, overrides, words = spec[:3]
    folder = bench.folder("config")
    if yaml_text == "MISSING":
        config = os.path.join(folder, "missing.yaml")
    elif yaml_text is None:
        config = bench.config
    else:
        config = os.path.join(folder, "bad.yaml")
        with open(config, "w") as f:
            f.write(yaml_text)
    nowhere = os.path.join(folder, "nowhere")
    extra = [item.replace("NOWHERE", nowhere) for item in overrides]
    resume = []
    if "--resume" in extra:
        at = extra.index("--resume")
        resume, extra = extra[at:at + 2], extra[:at] + extra[at + 2:]
    out = os.path.join(folder, "run")
    result = run_tool("train.py", train_args(config, bench.rec, out, 3, *extra) + resume)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    written = os.listdir(out) if os.path.isdir(out) else []
    ok = result.returncode != 0 and len(lines) == 1 and \
        all(w.replace("NOWHERE", nowhere) in lines[0] for w in words) and not written
    meaningful = error_lines(result.stderr)  # without progress-bar redraws
    shown = lines[0] if len(lines) == 1 else \
        f"{len(lines)} stderr lines, last: {meaningful[-1] if meaningful else '(progress bar)'}"
    shown = shown.replace(folder, "DIR").replace(bench.rec, "REC").replace(bench.work, "WORK")
    return f"exit {result.returncode}: `{shown[:120]}`; written in output.dir: {written or 'nothing'}", False, ok


CASES = [
    ("pack: bad images, missing landmark rows", "skipped, one warning each, summary count", pack_bad_inputs),
    ("pack --strict", "non-zero exit, one line, no files", pack_strict),
    ("pack: kill -9 mid-way", "no train.rec/.idx/property", pack_kill),
    ("pack: kill -9 while re-packing a folder", "previous pack untouched", pack_kill_repack),
    ("read: truncated .rec", "error at start naming file + problem", read_truncated),
    ("read: malformed .idx line", "error at start naming file:line", read_bad_index),
    ("read: header record 0 corrupt", "error at start naming the record", read_bad_header0),
    ("read: header 0 disagrees with the index", "error at start", read_header0_vs_index),
    ("read: property classes != identities", "error at start", read_property_classes),
    ("read: property image size != records", "error at start", read_property_size),
    ("train: 3 corrupt records (share 0.05)", "skipped, counted once, logged once", corrupt_records_skipped),
    ("train: 4 corrupt records (share 0.02)", "stops with a clear message", corrupt_records_stop),
    ("numerics: 3 non-finite updates", "skipped; parameters + optimizer untouched; mxboard", nonfinite_skipped),
    ("numerics: train.max_nonfinite in a row", "stops, last good checkpoint kept", nonfinite_stop),
    ("checkpoint: file too large (EFBIG)", "previous checkpoint kept, message", disk_full_rlimit),
    ("checkpoint: disk full (tmpfs, ENOSPC)", "previous checkpoint kept, message", disk_full_tmpfs),
    ("kill -9 after the first checkpoint", "resume auto == uninterrupted", kill_after_checkpoint),
    ("kill -9 while a checkpoint is written", "resume auto == uninterrupted", kill_during_save),
    ("kill -9 at a random moment after a checkpoint", "resume auto == uninterrupted", kill_at_random),
    ("resume auto with .tmp / meta-less states", "newest complete state picked", resume_ignores_partial),
    ("horovod: rank 1 SIGKILL", "job exits non-zero < 120 s; resume finishes", horovod_kill_rank1),
    ("horovod: rank 0 SIGKILL", "job exits non-zero < 120 s; resume finishes", horovod_kill_rank0),
    ("multi-host: host 2 SIGKILL (per-host disks)", "all processes gone < 60 s, one line naming the checkpoint "
     "and the resume command; resume finishes", host_killed),
    ("multi-host: host 2 cut off the network", "all processes gone < 60 s, one line naming the checkpoint "
     "and the resume command; resume finishes", host_partitioned),
]
for _case, _spec in sorted(CONFIG_FAULTS.items()):
    CASES.append((f"config: {_case}", "one line, non-zero exit, nothing written",
                  (lambda spec: lambda bench: _config_case(bench, None, spec))(_spec)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated substrings: run only the matching cases")
    p.add_argument("--work-dir", default=None, help="keep the working files here (default: a temporary folder)")
    p.add_argument("--json-out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def markdown(rows):
    lines = ["| case | expected | observed | data lost | as expected |", "|---|---|---|---|---|"]
    for row in rows:
        verdict = {True: "yes", False: "**no**", None: "not run"}[row["as_expected"]]
        lines.append(f"| {row['case']} | {row['expected']} | {row['observed'].replace('|', '/')} | "
                     f"{'**yes**' if row['data_lost'] else 'no'} | {verdict} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.environ.update(tool_env())
    only = [s for s in args.only.split(",") if s]
    work = args.work_dir or tempfile.mkdtemp(prefix="faults-")
    os.makedirs(work, exist_ok=True)
    started = time.time()
    bench = Bench(work)
    rows = []
    for case, expected, run in CASES:
        if only and not any(s in case for s in only):
            continue
        t0 = time.time()
        try:
            observed, lost, ok = run(bench)
        except Exception as err:  # a case that could not run is reported, not hidden
            observed, lost, ok = f"bench error: {type(err).__name__}: {str(err)[:200]}", False, False
        rows.append({"case": case, "expected": expected, "observed": observed, "data_lost": bool(lost),
                     "as_expected": ok, "seconds": round(time.time() - t0, 1)})
        print(f"[{time.time() - started:6.0f}s] {case}: {'ok' if ok else 'NOT AS EXPECTED' if ok is False else 'not run'}",
              file=sys.stderr, flush=True)
    result = {"benchmark": "faults", "cases": rows,
              "as_expected": sum(r["as_expected"] is True for r in rows),
              "not_as_expected": sum(r["as_expected"] is False for r in rows),
              "not_run": sum(r["as_expected"] is None for r in rows),
              "seconds": round(time.time() - started, 1), "work_dir": work}
    print(markdown(rows))
    print(json.dumps(result))
    if args.json_out:
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json_out)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
