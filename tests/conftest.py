import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "lfw_sample")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def train_people():
    with open(os.path.join(SAMPLE, "train_people.txt")) as f:
        return [line.strip() for line in f if line.strip()]


@pytest.fixture(scope="session")
def sample_train_src(tmp_path_factory):
    """A folder-per-identity view of the committed sample's training people (symlinks)."""
    src = tmp_path_factory.mktemp("train_src")
    for name in train_people()[:20]:
        os.symlink(os.path.join(SAMPLE, "images", name), src / name)
    return str(src)


@pytest.fixture(scope="session")
def sample_rec(tmp_path_factory, sample_train_src):
    """The first 20 training people of the sample packed into RecordIO (aligned 112x112)."""
    from recognition.data.pack import pack
    out = str(tmp_path_factory.mktemp("rec"))
    pack(sample_train_src, out, landmarks=os.path.join(SAMPLE, "landmarks.txt"), progress=False)
    return out


def venv_bin(name):
    """An executable next to the running interpreter (horovodrun in the venv)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else shutil.which(name)


def run_horovod(args, np=2, timeout=300, env=None):
    """Run ``python args...`` under a real 2-process horovodrun (Gloo, localhost)."""
    horovodrun = venv_bin("horovodrun")
    if horovodrun is None:
        pytest.fail("horovodrun not found: the venv must have Horovod (make test builds it)")
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
                    PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    full_env.update(env or {})
    command = [horovodrun, "-np", str(np), "-H", f"localhost:{np}", "--gloo", sys.executable] + list(args)
    return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def horovod_failure(proc, lines=25):
    """What a failed horovodrun said: each rank's last ``lines`` lines (horovodrun prefixes them
    ``[r]<stdout>:`` / ``[r]<stderr>:``, and a plain tail would show only the rank that printed
    last, not the one that died first), then the launcher's own last lines."""
    ranks, launcher = {}, []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        if line.startswith("[") and "]<std" in line[:16]:
            ranks.setdefault(line[1:line.index("]")], []).append(line)
        elif line.strip():
            launcher.append(line)
    parts = [f"exit {proc.returncode}"] + ["\n".join(ranks[r][-lines:]) for r in sorted(ranks)]
    return "\n".join(parts + launcher[-lines:])


NATIVE_CRASH = re.compile(r"Segmentation fault|terminate called")


def once_more_on_native_crash(run):
    """``run()`` (a CompletedProcess of horovodrun), and once more if a rank died in native code.

    Known defect, not understood yet: about one job in 15 on a 2-core machine, a receiving rank
    segfaults inside MXNet/Horovod while a sharded checkpoint's blocks are scattered
    (shards.scatter_blocks -> hvd.broadcast), before anything is written. Only runs that crash
    there, and only those that can be repeated as they are, come here; the crash is reported as a
    warning with each rank's last lines, and a second crash fails the test."""
    proc = run()
    if proc.returncode != 0 and NATIVE_CRASH.search(proc.stdout + proc.stderr):
        warnings.warn("a horovodrun worker crashed in native code; running it once more:\n" + horovod_failure(proc))
        proc = run()
    return proc


def run_worker_ranks(worker, out_dir, num_ranks, timeout=90):
    """Run tests/workers/WORKER under a real horovodrun (``num_ranks`` processes); each rank saves
    OUT.rank{r}.npz; returns the per-rank dicts of arrays."""
    import numpy as np
    out = os.path.join(str(out_dir), "result")
    proc = run_horovod([os.path.join(ROOT, "tests", "workers", worker), out], np=num_ranks, timeout=timeout)
    assert proc.returncode == 0, horovod_failure(proc)
    return [dict(np.load("%s.rank%d.npz" % (out, r))) for r in range(num_ranks)]
