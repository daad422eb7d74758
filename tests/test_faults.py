"""Faults and bad input (issue 6): numerics, checkpoints, kill -9 + resume, configuration.

Every fault is real: files are damaged byte by byte, processes are killed with SIGKILL, disk-full
comes from the kernel (RLIMIT_FSIZE: writes past the limit fail with EFBIG), non-finite values
come from a learning rate that overflows the weights. The tools run as subprocesses, exactly as a
user runs them.

This module also holds the fault-injection helpers shared by tests/test_faults_*.py and
bench/faults.py.
"""
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT

# -- shared helpers ------------------------------------------------------------------------------

TINY_CONFIG = """\
# tests/test_faults.py: the tiny training of tests/test_train.py (TINY) as a file
data: {batch_size: 8, num_workers: 1}
model: {name: mobilefacenet}
loss: {name: arcface, params: {s: 16.0, m2: 0.3}}
optimizer: {lr: 0.01, warmup_steps: 2}
train: {log_every: 1}
"""
RECORD_MAGIC = 0xCED7230A
HEADER_BYTES = 8 + 24  # RecordIO magic + length, then IRHeader (flag uint32, label float32, id, id2)


def tool_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.update(extra)
    return env


def tool_command(tool, args):
    return [sys.executable, os.path.join(ROOT, "tools", tool)] + [str(a) for a in args]


def run_tool(tool, args, timeout=180, preexec_fn=None):
    """Run tools/TOOL as a user would; returns the CompletedProcess (text)."""
    return subprocess.run(tool_command(tool, args), cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)


def start_tool(tool, args, log_path):
    """Start tools/TOOL in the background, output to ``log_path``; returns the Popen."""
    log = open(log_path, "w")
    return subprocess.Popen(tool_command(tool, args), cwd=ROOT, env=tool_env(), stdout=log,
                            stderr=subprocess.STDOUT)


def write_tiny_config(folder):
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        f.write(TINY_CONFIG)
    return path


def train_args(config, rec, out, steps, *extra):
    return ["--config", config, "--set", f"data.root={rec}", f"output.dir={out}",
            f"train.max_steps={steps}"] + list(extra)


PROGRESS_BAR = re.compile(r"^\w+: +\d+%\|")


def error_lines(stderr):
    """stderr without tqdm's progress-bar redraws."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not PROGRESS_BAR.match(line)]


def copy_rec(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def record_offsets(root):
    with open(os.path.join(root, "train.idx")) as f:
        return {int(key): int(pos) for key, pos in (line.split("\t")[:2] for line in f if line.strip())}


def patch_rec(root, position, data):
    with open(os.path.join(root, "train.rec"), "r+b") as f:
        f.seek(position)
        f.write(data)


def break_magic(root, index):
    """Zero the RecordIO magic number of record ``index`` (the reader's framing check fails)."""
    patch_rec(root, record_offsets(root)[index], b"\0\0\0\0")


def break_image(root, index):
    """Overwrite the start of record ``index``'s JPEG (framing and header intact): undecodable."""
    patch_rec(root, record_offsets(root)[index] + HEADER_BYTES, b"\x00" * 64)


def set_image_label(root, index, value):
    """Rewrite the identity label stored in image record ``index``'s header."""
    patch_rec(root, record_offsets(root)[index] + 8 + 4, struct.pack("<f", value))


def set_range(root, index, first, last):
    """Rewrite the [first, last) range of an identity record or of header record 0."""
    patch_rec(root, record_offsets(root)[index] + HEADER_BYTES, struct.pack("<ff", first, last))


def truncate_rec(root, keep=0.5):
    path = os.path.join(root, "train.rec")
    os.truncate(path, int(os.path.getsize(path) * keep))


def batch_records(root, batch_size=8, steps=1, seed=0):
    """Record indices of the first ``steps`` batches of a single-process run (its data order)."""
    from recognition.data.dataset import ShardedOrder
    from recognition.data.record import RecordDataset
    order = ShardedOrder(RecordDataset(root), batch_size, 0, 1, seed).epoch(0)
    return [[int(i) for i in row] for row in order[:steps]]


def limit_file_size(max_bytes):
    """preexec_fn: the kernel refuses writes past ``max_bytes`` per file (EFBIG) - a full disk for
    any file that outgrows it. SIGXFSZ is ignored so the write fails instead of killing the process."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def load_params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def state_steps(out):
    from recognition.engine import checkpoint
    return [step for step, _ in checkpoint.list_states(str(out))]


def kill_when(process, condition, timeout=120, poll=0.02):
    """SIGKILL ``process`` as soon as ``condition()`` holds; returns seconds waited. Fails the test
    if the process ends first (the fault would not have been injected)."""
    start = time.time()
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended (rc {process.returncode}) before the kill condition")
        if time.time() - start > timeout:
            process.kill()
            raise AssertionError("kill condition not reached in time")
        time.sleep(poll)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return time.time() - start


def make_damaged_source(folder):
    """Four people of the committed sample (6 photos each) copied to FOLDER/src, five photos damaged
    five ways, and FOLDER/landmarks.txt without one photo's row.
    Returns (src, landmarks, {damaged path: words its warning must hold})."""
    from conftest import SAMPLE, train_people
    src = os.path.join(folder, "src")
    people = train_people()[:4]
    for person in people:
        shutil.copytree(os.path.join(SAMPLE, "images", person), os.path.join(src, person))

    def photo(person, k):
        return os.path.join(src, person, f"{person}_{k:04d}.jpg")
    faults = {}
    garbage = photo(people[0], 2)
    with open(garbage, "wb") as f:
        f.write(b"this is not an image " * 20)
    faults[garbage] = "not a readable image"
    truncated = photo(people[1], 3)
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    faults[truncated] = "truncated JPEG"
    small = photo(people[2], 1)
    import cv2
    cv2.imwrite(small, cv2.resize(cv2.imread(small), (20, 20)))
    faults[small] = "image too small (20x20"
    empty = photo(people[3], 5)
    open(empty, "wb").close()
    faults[empty] = "not a readable image"
    no_row = photo(people[3], 2)
    landmarks = os.path.join(folder, "landmarks.txt")
    dropped = f"{people[3]}/{os.path.basename(no_row)}\t"
    with open(os.path.join(SAMPLE, "landmarks.txt")) as f, open(landmarks, "w") as g:
        g.write("".join(line for line in f if not line.startswith(dropped)))
    faults[no_row] = f"no row in {landmarks}"
    return src, landmarks, faults


def many_copies(folder, people=12, copies=150):
    """A large pack source without copying data: symlinks to the sample's photos (packed without
    landmarks, each photo is decoded, resized and re-encoded)."""
    from conftest import SAMPLE, train_people
    photos = sorted(os.path.join(SAMPLE, "images", p, n) for p in train_people()[:people]
                    for n in os.listdir(os.path.join(SAMPLE, "images", p)))
    for i in range(people):
        os.makedirs(os.path.join(folder, f"id{i:03d}"))
        for k in range(copies):
            os.symlink(photos[(i * 7 + k) % len(photos)], os.path.join(folder, f"id{i:03d}", f"{k:04d}.jpg"))
    return folder


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return write_tiny_config(str(tmp_path_factory.mktemp("config")))


# -- numerics ------------------------------------------------------------------------------------

# Two sane updates at lr 0.01, then a step schedule multiplies the rate by 1e32: the third update
# throws the weights to ~1e31, every later forward pass overflows to inf/NaN. Deterministic.
OVERFLOW = ["optimizer.schedule=step", "optimizer.lr_steps=[2]", "optimizer.lr_factor=1e32",
            "optimizer.warmup_steps=0", "train.deterministic=true"]


@pytest.fixture(scope="module")
def skipped_updates_run(sample_rec, tiny_config, tmp_path_factory):
    """6 steps; update 3 overflows the weights, steps 3, 4, 5 are non-finite and skipped
    (train.max_nonfinite=10): checkpoints at step 3 (before the skips) and 6 (after)."""
    out = tmp_path_factory.mktemp("nonfinite") / "run"
    result = run_tool("train.py", train_args(tiny_config, sample_rec, out, 6, "output.checkpoint_every=3",
                                             "train.max_nonfinite=10", *OVERFLOW))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_nonfinite_update_is_skipped_counted_and_logged(skipped_updates_run):
    out, result = skipped_updates_run
    assert state_steps(out) == [3, 6]
    before, after = out / "checkpoints" / "step-00000003", out / "checkpoints" / "step-00000006"
    # trainable parameters and the optimizer state (momentum) are exactly those of step 3
    for name in ("net.params", "head.params"):
        params_before, params_after = load_params(before / name), load_params(after / name)
        trainable = [k for k in params_before if not k.endswith(("running_mean", "running_var"))]
        assert trainable
        for key in trainable:
            np.testing.assert_array_equal(params_after[key], params_before[key], err_msg=key)
    assert (before / "trainer.states").read_bytes() == (after / "trainer.states").read_bytes()
    # the weights did blow up (the fault is real) but stayed finite: the skip kept NaN out
    weights = load_params(before / "net.params")
    assert max(np.abs(v).max() for v in weights.values()) > 1e20
    # counted, logged on the console and to mxboard
    assert json.loads((out / "results.json").read_text())["skipped_updates"] == 3
    for step in (3, 4, 5):
        assert f"step {step}: non-finite loss or gradient, update skipped" in result.stdout + result.stderr
    events = b"".join(p.read_bytes() for p in (out / "logs").iterdir())
    assert b"nonfinite_skipped" in events


def test_skipped_update_leaves_batchnorm_statistics_untouched(skipped_updates_run):
    out, _ = skipped_updates_run
    before = load_params(out / "checkpoints" / "step-00000003" / "net.params")
    after = load_params(out / "checkpoints" / "step-00000006" / "net.params")
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


@pytest.fixture(scope="module")
def stopped_run(sample_rec, tiny_config, tmp_path_factory):
    """Checkpoints every 2 steps; update 3 overflows, steps 3, 4, 5 are non-finite and the third
    in a row stops the run (train.max_nonfinite=3)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = run_tool("train.py", train_args(tiny_config, sample_rec, out, 20, "output.checkpoint_every=2",
                                             "train.max_nonfinite=3", *OVERFLOW))
    return out, result


def test_too_many_nonfinite_updates_stop_and_keep_last_good_checkpoint(stopped_run, sample_rec, tiny_config):
    from recognition.engine import checkpoint
    from recognition.engine.config import load_config
    from recognition.engine.trainer import build_network
    out, result = stopped_run
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert lines[-1] == (f"train: 3 non-finite updates in a row at step 5; stopping "
                         f"(last good checkpoint kept in {out}/checkpoints)")
    assert 2 in state_steps(out) and max(state_steps(out)) < 6
    assert not [n for n in os.listdir(out / "checkpoints") if n.endswith(".tmp")]
    good = out / "checkpoints" / "step-00000002"
    assert all(np.isfinite(v).all() for v in load_params(good / "net.params").values())
    # a complete state: loads into a fresh network and trainer
    config = load_config(tiny_config, [f"data.root={sample_rec}"])
    net, _, head, _ = build_network(config, 20, mx.cpu())
    params = mx.gluon.ParameterDict()
    params.update(net.collect_params())
    params.update(head.collect_params())
    trainer = mx.gluon.Trainer(params, "sgd", {"learning_rate": 0.01, "momentum": 0.9}, kvstore=None)
    assert checkpoint.load_state(str(good), net, head, trainer)["step"] == 2


def test_no_checkpoint_with_nonfinite_values_is_written(stopped_run):
    out, _ = stopped_run
    for step in state_steps(out):
        folder = out / "checkpoints" / f"step-{step:08d}"
        for name in ("net.params", "head.params"):
            for key, value in load_params(folder / name).items():
                assert np.isfinite(value).all(), f"step {step} {name} {key}"


# -- checkpoints -----------------------------------------------------------------------------------

def test_disk_full_while_saving_keeps_previous_checkpoint(sample_rec, tiny_config, tmp_path):
    out = tmp_path / "run"
    first = run_tool("train.py", train_args(tiny_config, sample_rec, out, 2, "output.checkpoint_every=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = {name: (out / "checkpoints" / "step-00000002" / name).read_bytes()
              for name in ("net.params", "head.params", "trainer.states", "meta.json")}
    # net.params of MobileFaceNet is ~4 MB: with files limited to 1 MB the kernel refuses the write
    full = run_tool("train.py", train_args(tiny_config, sample_rec, out, 4, "output.checkpoint_every=2")
                    + ["--resume", "auto"], preexec_fn=limit_file_size(1 << 20))
    said = full.stdout + full.stderr
    assert "resumed from" in said and "at step 2" in said
    message = [line for line in said.splitlines() if line.startswith("checkpoint: saving step 4")]
    assert len(message) == 1, said[-3000:]
    assert message[0].startswith(f"checkpoint: saving step 4 to {out}/checkpoints/step-00000004 failed (")
    assert "FileStream.Write incomplete" in message[0] and message[0].endswith("; previous checkpoints kept")
    assert state_steps(out) == [2]
    assert not (out / "checkpoints" / "step-00000004.tmp").exists()
    for name, content in before.items():
        assert (out / "checkpoints" / "step-00000002" / name).read_bytes() == content, name
    # once space is back the run resumes from the kept state and completes
    again = run_tool("train.py", train_args(tiny_config, sample_rec, out, 4, "output.checkpoint_every=2")
                     + ["--resume", "auto"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["start_step"] == 2
    assert state_steps(out) == [2, 4]


class _RunsCommand:
    """Unpickling this calls os.system: what a hostile trainer.states would hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_hostile_trainer_states_are_refused_before_they_run(sample_rec, tiny_config, tmp_path):
    import pickle
    out, marker = tmp_path / "run", tmp_path / "ran"
    first = run_tool("train.py", train_args(tiny_config, sample_rec, out, 2, "output.checkpoint_every=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    states = out / "checkpoints" / "step-00000002" / "trainer.states"
    # what the run wrote passes the restricted unpickler (MXNet's NDArrays and its SGD only)
    from recognition.engine.checkpoint import _trainer_state_globals
    from recognition.data.safe_pickle import safe_load
    assert isinstance(safe_load(str(states), allowed=_trainer_state_globals()), tuple)
    states.write_bytes(pickle.dumps(({0: _RunsCommand(f"touch {marker}")}, None)))
    resumed = run_tool("train.py", train_args(tiny_config, sample_rec, out, 4, "output.checkpoint_every=2")
                       + ["--resume", "auto"])
    assert resumed.returncode != 0
    lines = error_lines(resumed.stderr)
    assert lines and str(states) in lines[-1] and "refused to load" in lines[-1] and "system" in lines[-1], lines[-3:]
    assert not marker.exists()
    assert state_steps(out) == [2]  # nothing new written, the checkpoint kept as it was


def test_trainer_states_load_as_mxnet_loads_them_without_the_unrestricted_unpickler(tmp_path, monkeypatch):
    """load_trainer_states gives the trainer what Trainer.load_states gives it (momentum, update
    counts, the next step), and never calls pickle.loads, the unpickler that runs anything."""
    import pickle
    from recognition.engine.checkpoint import load_trainer_states

    def make():
        net = mx.gluon.nn.Dense(3, in_units=4)
        net.initialize(mx.init.Constant(0.5))
        return net, mx.gluon.Trainer(net.collect_params(), "sgd",
                                     {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-3}, kvstore=None)

    x = mx.nd.array(np.arange(8, dtype=np.float32).reshape(2, 4) / 8)

    def step(net, trainer):
        with mx.autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(2)

    net, trainer = make()
    for _ in range(3):
        step(net, trainer)
    path = str(tmp_path / "trainer.states")
    trainer.save_states(path)
    net.save_parameters(str(tmp_path / "net.params"))

    by_mxnet, by_us = make(), make()
    for model, _ in (by_mxnet, by_us):
        model.load_parameters(str(tmp_path / "net.params"))
    by_mxnet[1].load_states(path)
    with monkeypatch.context() as patch:
        def refuse(*args, **kwargs):
            raise AssertionError("pickle.loads called")
        patch.setattr(pickle, "loads", refuse)
        load_trainer_states(by_us[1], path)
    ours, theirs = by_us[1]._updaters[0], by_mxnet[1]._updaters[0]
    assert sorted(ours.states) == sorted(theirs.states) and ours.states
    for key in theirs.states:
        np.testing.assert_array_equal(ours.states[key].asnumpy(), theirs.states[key].asnumpy())
    assert ours.optimizer.num_update == theirs.optimizer.num_update == 3
    assert by_us[1]._optimizer is ours.optimizer and by_us[1]._optimizer.param_dict[0] is by_us[1]._params[0]
    for model, trainer_ in (by_mxnet, by_us):
        step(model, trainer_)
    np.testing.assert_array_equal(by_us[0].weight.data().asnumpy(), by_mxnet[0].weight.data().asnumpy())
    assert not np.array_equal(by_us[0].weight.data().asnumpy(), net.weight.data().asnumpy())


def test_kill_9_then_resume_auto_equals_uninterrupted_run(sample_rec, tiny_config, tmp_path):
    """Deterministic single-process run killed with SIGKILL right after its first checkpoint; a
    half-written newer state (.tmp) and one without meta.json are planted; --resume auto must pick
    the complete state and finish with exactly the parameters of an uninterrupted run."""
    deterministic = ["train.deterministic=true", "output.checkpoint_every=2", "train.seed=3"]
    steps = 6
    full = run_tool("train.py", train_args(tiny_config, sample_rec, tmp_path / "full", steps, *deterministic))
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    process = start_tool("train.py", train_args(tiny_config, sample_rec, out, steps, *deterministic),
                         tmp_path / "killed.log")
    kill_when(process, lambda: state_steps(out))
    assert process.returncode == -signal.SIGKILL
    kept = state_steps(out)
    assert kept and kept[-1] < steps and not (out / "results.json").exists()
    newest = out / "checkpoints" / f"step-{kept[-1]:08d}"
    # decoys a crash can leave: a state still being written, and one whose meta.json never came
    shutil.copytree(newest, out / "checkpoints" / f"step-{kept[-1] + 2:08d}.tmp")
    shutil.copytree(newest, out / "checkpoints" / f"step-{kept[-1] + 4:08d}", ignore=shutil.ignore_patterns("meta.*"))

    resumed = run_tool("train.py", train_args(tiny_config, sample_rec, out, steps, *deterministic)
                       + ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {newest} at step {kept[-1]}" in resumed.stdout + resumed.stderr
    final_full = tmp_path / "full" / "checkpoints" / f"step-{steps:08d}"
    final_resumed = out / "checkpoints" / f"step-{steps:08d}"
    for name in ("net.params", "head.params"):
        reference, got = load_params(final_full / name), load_params(final_resumed / name)
        assert reference.keys() == got.keys()
        for key in reference:
            np.testing.assert_array_equal(got[key], reference[key], err_msg=f"{name}: {key}")
    assert (final_full / "trainer.states").read_bytes() == (final_resumed / "trainer.states").read_bytes()


# -- configuration -------------------------------------------------------------------------------

CONFIG_FAULTS = {
    # case: (YAML text or None for the tiny config, --set overrides, words the single line must hold)
    "K of zero": (None, ["data.sampler=pk", "data.images_per_identity=0", "loss.name=triplet"],
                  ["data.images_per_identity"]),
    "bad-record share above 1": (None, ["data.max_bad_records=1.5"], ["data.max_bad_records"]),
    "negative decoding threads": (None, ["data.num_workers=-1"], ["data.num_workers"]),
    "unknown loss parameter": (None, ["loss.params.scale=3"], ["loss", "scale"]),
    "unknown model": (None, ["model.name=resnet1000"], ["resnet1000"]),
    "batch larger than the dataset": (None, ["data.batch_size=512"], ["512"]),
    "missing --resume folder": (None, ["--resume", "NOWHERE/step-00000100"], ["NOWHERE/step-00000100"]),
    "missing config file": ("MISSING", [], ["missing.yaml", "config file not found"]),
    "not YAML": ("data: [unclosed\n", [], ["bad.yaml", "not valid YAML"]),
    "unknown key in file": ("data: {batch_size: 8}\ntrian: {max_steps: 3}\n", [], ["bad.yaml", "unknown key 'trian'"]),
    "unknown nested key": ("data: {batch_sise: 8}\n", [], ["bad.yaml", "unknown key 'data.batch_sise'"]),
    "wrong type in file": ("data: {batch_size: eight}\n", [], ["bad.yaml", "data.batch_size", "expected int"]),
    "unknown --set key": (None, ["train.max_step=3"], ["unknown key 'train.max_step'"]),
    "wrong --set type": (None, ["train.deterministic=maybe"], ["train.deterministic", "expected true/false"]),
    "missing data files": (None, ["data.root=NOWHERE"], ["NOWHERE", "train.rec not found"]),
    "missing verification bin": (None, ["verification.bins=NOWHERE/lfw.bin"], ["NOWHERE/lfw.bin", "not found"]),
    "batch not divisible by K": (None, ["data.sampler=pk", "data.images_per_identity=3", "loss.name=triplet"],
                                 ["data.batch_size 8", "not divisible", "data.images_per_identity 3"]),
    "triplet without P x K": (None, ["loss.name=triplet"], ["triplet", "data.sampler"]),
    "negative learning rate": (None, ["optimizer.lr=-0.1"], ["optimizer.lr", "positive"]),
    "zero steps": (None, ["train.max_steps=0"], ["train.max_steps", "positive"]),
    "unknown optimizer": (None, ["optimizer.name=rmsprop"], ["optimizer.name", "rmsprop"]),
}

# Impossible values that currently get past validation and fail (or not) after work has started.


def _run_config_case(case, yaml_text, overrides, sample_rec, tiny_config, tmp_path):
    if yaml_text == "MISSING":
        config = str(tmp_path / "missing.yaml")
    elif yaml_text is None:
        config = tiny_config
    else:
        config = str(tmp_path / "bad.yaml")
        with open(config, "w") as f:
            f.write(yaml_text)
    out = tmp_path / "run"
    extra, resume = [item.replace("NOWHERE", str(tmp_path / "nowhere")) for item in overrides], []
    if "--resume" in extra:
        at = extra.index("--resume")
        resume, extra = extra[at:at + 2], extra[:at] + extra[at + 2:]
    result = run_tool("train.py", train_args(config, sample_rec, out, 3, *extra) + resume)
    return result, out


def _assert_one_clear_line(result, out, words, tmp_path):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    for word in words:
        assert word.replace("NOWHERE", str(tmp_path / "nowhere")) in lines[0], lines[0]
    assert not out.exists(), f"{out} was written: {os.listdir(out)}"


@pytest.mark.parametrize("case", sorted(CONFIG_FAULTS))
def test_config_error_is_one_line_before_any_work(case, sample_rec, tiny_config, tmp_path):
    yaml_text, overrides, words = CONFIG_FAULTS[case]
    result, out = _run_config_case(case, yaml_text, overrides, sample_rec, tiny_config, tmp_path)
    _assert_one_clear_line(result, out, words, tmp_path)
