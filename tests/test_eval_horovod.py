"""Distributed evaluate (2 real horovodrun workers) equals the single-process result."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "workers"))

from eval_tiny_net import build_tiny_net, random_faces  # noqa: E402
from recognition.evaluation import embed_images, embed_shared, evaluate  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
HOROVODRUN = os.path.join(VENV_BIN, "horovodrun")
NUM_PAIRS, NUM_ODD = 23, 7


def _horovod_available():
    if not os.path.exists(HOROVODRUN):
        return False
    try:
        import horovod.mxnet  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _horovod_available(), reason="horovod.mxnet / horovodrun not installed")
def test_distributed_evaluate_equals_single_process(tmp_path):
    out = str(tmp_path / "result.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
               PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    cmd = [HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
           os.path.join(HERE, "workers", "eval_worker.py"), out, str(NUM_PAIRS), str(NUM_ODD)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = []
    for r in range(2):
        with open(f"{out}.rank{r}") as f:
            ranks.append(json.load(f))
    assert [d["size"] for d in ranks] == [2, 2]

    net = build_tiny_net(seed=1)
    images = random_faces(2 * NUM_PAIRS, seed=2)
    issame = np.random.RandomState(3).rand(NUM_PAIRS) < 0.5
    single = evaluate(net, images, issame, batch_size=5, flip="sum", nfolds=10)
    odd_single, odd_norms_single = embed_shared(net, random_faces(NUM_ODD, seed=4), batch_size=4, flip="concat")
    assert odd_single.shape == (NUM_ODD, 32)

    for data in ranks:
        # every rank returns the same dict as one process (the embeddings are computed in other
        # batches, so allow float rounding, nothing more)
        assert data["result"].keys() == single.keys()
        for key, value in single.items():
            assert data["result"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        # uneven shares (7 images on 2 workers): gathered in order, padding cut off
        np.testing.assert_allclose(np.array(data["odd"]), odd_single, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(data["odd_norms"]), odd_norms_single, rtol=1e-5)
    # and embed_shared single-process is plain embed_images
    np.testing.assert_allclose(odd_single, embed_images(net, random_faces(NUM_ODD, seed=4), 3, "concat"),
                               rtol=1e-5, atol=1e-6)
