"""A sharded checkpoint resumed with another number of workers (real horovodrun): written by 2
workers and read by 3 (sharded ArcFace), written by 3 and read by 2 (Partial FC). After the
re-split, each rank's block holds the checkpoint's rows and their momentum, the loss and weight
gradients on one batch equal those of the ordinary (unsharded) head loaded from the same
checkpoint, and one SGD step moves the rows as the momentum formula says (NumPy)."""
import json
import os
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from conftest import ROOT, horovod_failure, once_more_on_native_crash, run_horovod
sys.path.insert(0, os.path.join(ROOT, "tests", "workers"))
from reshard_worker import LR, MOMENTUM, WD, fixed_batch  # noqa: E402
from recognition.data.record import RecordDataset
from recognition.engine import checkpoint
from recognition.losses import get_loss
from recognition.models import get_model

TRAIN_WORKER = os.path.join(ROOT, "tests", "workers", "train_worker.py")
RESHARD_WORKER = os.path.join(ROOT, "tests", "workers", "reshard_worker.py")
HEAD = ["loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}"]
TINY = ["model.name=mobilefacenet", "data.batch_size=4", "data.num_workers=0", "train.log_every=1",
        "optimizer.lr=0.02", "output.checkpoint_every=2", "train.max_steps=2", "loss.sharded=true"] + HEAD


def _load(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _reference(state, rec, got):
    """The ordinary head and network from the checkpoint's files, on the same fixed batch."""
    meta = json.loads((state / "meta.json").read_text())
    blocks = [_load(state / checkpoint.BLOCK_FILE.format(k)) for k in range(len(meta["head_blocks"]))]
    weight = np.concatenate([b["weight"] for b in blocks])
    momentum = np.concatenate([b["weight.state.0"] for b in blocks])
    net = get_model("mobilefacenet")
    net.load_parameters(str(state / "net.params"))
    head = get_loss("arcface", num_classes=weight.shape[0], embedding_size=weight.shape[1], s=16.0, m2=0.3)
    head.initialize()
    head.weight.set_data(mx.nd.array(weight))
    dataset = RecordDataset(rec)
    world = len(got)
    parts = [fixed_batch(dataset, r, world, 4) for r in range(world)]
    data = mx.nd.concat(*[p[0] for p in parts], dim=0)
    labels = mx.nd.concat(*[p[1] for p in parts], dim=0)
    with autograd.record(train_mode=False):
        loss = head(net(data), labels)
    loss.backward()
    return meta, weight, momentum, loss.asnumpy(), head.weight.grad().asnumpy(), data.shape[0]


def _write_then_reshard(sample_rec, tmp_path, written_by, read_by, extra):
    out = tmp_path / "run"
    overrides = [f"data.root={sample_rec}", f"output.dir={out}"] + TINY + extra
    first = run_horovod([TRAIN_WORKER, str(tmp_path)] + overrides, np=written_by, timeout=300)
    assert first.returncode == 0, horovod_failure(first)
    result = str(tmp_path / "resharded")
    # the re-split only reads the checkpoint: safe to repeat after a native crash (conftest)
    second = once_more_on_native_crash(lambda: run_horovod([RESHARD_WORKER, result] + overrides, np=read_by,
                                                           timeout=300))
    assert second.returncode == 0, horovod_failure(second)
    return out / "checkpoints" / "step-00000002", [dict(np.load(f"{result}.rank{r}.npz")) for r in range(read_by)]


@pytest.mark.parametrize("written_by,read_by,extra", [(2, 3, []), (3, 2, ["loss.sample_ratio=0.5"])],
                         ids=["sharded-2-to-3", "partial-fc-3-to-2"])
def test_resharded_blocks_equal_the_unsharded_head(sample_rec, tmp_path, written_by, read_by, extra):
    state, got = _write_then_reshard(sample_rec, tmp_path, written_by, read_by, extra)
    meta, weight, momentum, loss, w_grad, global_batch = _reference(state, sample_rec, got)
    assert meta["world_size"] == written_by and len(meta["head_blocks"]) == written_by
    classes = weight.shape[0]
    assert [tuple(g["range"]) for g in got] == [(r * (classes // read_by), classes if r == read_by - 1
                                                 else (r + 1) * (classes // read_by)) for r in range(read_by)]
    assert np.abs(momentum).sum() > 0  # two momentum steps were taken before the checkpoint
    for g in got:
        start, end = g["range"]
        assert int(g["world_written"][0]) == written_by
        np.testing.assert_array_equal(g["weight"], weight[start:end])
        np.testing.assert_array_equal(g["momentum"], momentum[start:end])
        np.testing.assert_allclose(g["w_grad"], w_grad[start:end], rtol=1e-4, atol=1e-6)
        # SGD with momentum (MXNet's): m <- 0.9 m - lr (g / B + wd w); w <- w + m
        expected = weight[start:end] + MOMENTUM * momentum[start:end] - LR * (
            w_grad[start:end] / global_batch + WD * weight[start:end])
        np.testing.assert_allclose(g["stepped"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([g["loss"] for g in got]), loss, rtol=1e-4, atol=1e-5)
