"""Distributed evaluation (2 real horovodrun workers) equals the single-process result."""
import json
import os
import re
import sys

import mxnet as mx
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))

from conftest import ROOT, horovod_failure, run_horovod  # noqa: E402
from eval_tiny_net import build_tiny_net, random_faces  # noqa: E402
from recognition.data.binfile import load_bin, write_bin  # noqa: E402
from recognition.data.record import encode_jpeg  # noqa: E402
from recognition.evaluation import embed_images, embed_shared, evaluate  # noqa: E402

NUM_PAIRS, NUM_ODD = 23, 7


def test_distributed_evaluate_equals_single_process(tmp_path):
    out = str(tmp_path / "result.json")
    proc = run_horovod([os.path.join(HERE, "workers", "eval_worker.py"), out, str(NUM_PAIRS), str(NUM_ODD)],
                       timeout=120)
    assert proc.returncode == 0, horovod_failure(proc)
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


def test_verify_tool_under_horovodrun(tmp_path):
    """tools/verify.py under horovodrun: rank 0 alone prints, the numbers equal one process."""
    net = build_tiny_net(seed=5)
    net(mx.nd.zeros((1, 3, 112, 112)))  # export needs one forward pass
    net.export(str(tmp_path / "tiny"), epoch=1)
    images = random_faces(2 * 15, seed=6)
    issame = np.arange(15) % 3 == 0
    write_bin(str(tmp_path / "t.bin"), [encode_jpeg(im) for im in images], issame)
    args = [os.path.join(ROOT, "tools", "verify.py"), "--model", str(tmp_path / "tiny"),
            "--bin", str(tmp_path / "t.bin"), "--json", "--batch-size", "4", "--nfolds", "5", "--no-progress"]
    proc = run_horovod(args, timeout=120)
    assert proc.returncode == 0, horovod_failure(proc)
    # horovodrun prefixes each line with "[RANK]<stdout>:"
    printed = [re.match(r"^\[(\d+)\]<stdout>:(.*)$", line) for line in proc.stdout.splitlines()]
    printed = [(m.group(1), m.group(2)) for m in printed if m and m.group(2).strip()]
    assert [rank for rank, _ in printed] == ["0"], proc.stdout  # rank 0 alone prints
    result = json.loads(printed[0][1])["t"]
    images, issame = load_bin(str(tmp_path / "t.bin"))
    single = evaluate(net, images, issame, batch_size=4, nfolds=5)
    for key, value in single.items():
        assert result[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
