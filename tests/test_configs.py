"""Every experiment in configs/ trains through the real loop (a few steps on the committed sample)."""
import glob
import os

import numpy as np
import pytest

from conftest import ROOT
from recognition.engine import checkpoint
from recognition.engine.config import load_config
from recognition.engine.trainer import train
from recognition.models.precision import bfloat16_supported

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_trains(path, sample_rec, tmp_path):
    overrides = [f"data.root={sample_rec}", f"output.dir={tmp_path}", "train.max_steps=3", "data.batch_size=8",
                 "verification.bins=", "train.log_every=1", "output.checkpoint_every=0", "optimizer.warmup_steps=1",
                 "train.time_budget_minutes=0"]  # a time budget would replace max_steps (tests/test_ema_budget.py)
    if "semi_online" in path:
        overrides.append("loss.params.pool_batches=2")
    if "iresnet" in open(path).read():  # the recipe's settings, on the small network (test time)
        overrides += ["model.name=mobilefacenet", "model.embedding_size=128", "optimizer.lr_steps=[1]"]
    if "bfloat16" in open(path).read() and not bfloat16_supported():
        overrides.append("train.precision=float32")  # the rest of the recipe, on a CPU without AVX-512
    config = load_config(path, overrides)
    results, net, head = train(config, return_model=True)
    assert results["skipped_updates"] == 0
    assert checkpoint.latest_state(str(tmp_path)).endswith("step-00000003")
    for name, param in net.collect_params().items():
        assert np.isfinite(param.data().asnumpy()).all(), name
    if config.loss.name == "triplet":
        assert head.last_num_triplets >= 0


def test_finetune_from_pretrained_drops_classifier(sample_rec, tmp_path):
    base = [f"data.root={sample_rec}", "train.max_steps=2", "data.batch_size=8", "verification.bins=",
            "output.checkpoint_every=0"]
    arc = load_config(os.path.join(ROOT, "configs", "demo.yaml"), base + [f"output.dir={tmp_path / 'arc'}"])
    _, net_pretrained, _ = train(arc, return_model=True)
    state = checkpoint.latest_state(str(tmp_path / "arc"))
    for source in (state, f"{tmp_path / 'arc' / 'model'},1"):  # training state or exported model
        tri = load_config(os.path.join(ROOT, "configs", "triplet_finetune.yaml"),
                          base + [f"output.dir={tmp_path / 'tri'}", "train.max_steps=1", "optimizer.lr=1e-12",
                                  "optimizer.wd=0"])
        _, net, _ = train(tri, pretrained=source, return_model=True)
        for (name, p0), p1 in zip(net_pretrained.collect_params().items(), net.collect_params().values()):
            if "running" not in name:  # BN statistics move in one step; weights barely (lr 1e-12)
                np.testing.assert_allclose(p0.data().asnumpy(), p1.data().asnumpy(), rtol=1e-4, atol=1e-6, err_msg=name)
