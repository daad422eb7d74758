"""Training loop: real 2-process horovodrun (identical parameters), resume equals uninterrupted."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT, horovod_failure, run_horovod
from recognition.engine import checkpoint
from recognition.engine.config import ConfigError, load_config
from recognition.engine.trainer import train

TINY = ["model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=1", "train.log_every=1",
        "loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}", "optimizer.lr=0.01", "optimizer.warmup_steps=2"]


def _overrides(rec, out, steps, extra=()):
    return [f"data.root={rec}", f"output.dir={out}", f"train.max_steps={steps}"] + TINY + list(extra)


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def test_horovodrun_two_workers_hold_identical_parameters(sample_rec, tmp_path):
    out = tmp_path / "run"
    result = run_horovod([os.path.join(ROOT, "tests", "workers", "train_worker.py"), str(tmp_path)]
                         + _overrides(sample_rec, out, 4, ["output.checkpoint_every=2"]), timeout=420)
    assert result.returncode == 0, horovod_failure(result)
    assert "rank 0 of 2 done" in result.stdout and "rank 1 of 2 done" in result.stdout
    for part in ("net", "head"):
        rank0, rank1 = _params(tmp_path / f"{part}-rank0.params"), _params(tmp_path / f"{part}-rank1.params")
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    # parameters moved away from the broadcast initial values, and rank 0 wrote the outputs
    assert (out / "model-symbol.json").exists() and (out / "model-0001.params").exists()
    assert [step for step, _ in checkpoint.list_states(str(out))] == [2, 4]
    meta = json.loads((out / "checkpoints" / "step-00000004" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    assert os.listdir(out / "logs")


def test_resume_equals_uninterrupted_run(sample_rec, tmp_path):
    deterministic = ["train.deterministic=true", "output.checkpoint_every=3", "data.flip=true"]
    full = load_config(None, _overrides(sample_rec, tmp_path / "full", 6, deterministic))
    _, net_full, head_full = train(full, return_model=True)

    part = load_config(None, _overrides(sample_rec, tmp_path / "part", 3, deterministic))
    train(part)
    resumed = load_config(None, _overrides(sample_rec, tmp_path / "part", 6, deterministic))
    results, net_resumed, head_resumed = train(resumed, resume="auto", return_model=True)
    assert results["start_step"] == 3
    for block_full, block_resumed in ((net_full, net_resumed), (head_full, head_resumed)):
        full_params = block_full.collect_params()
        for (name, p_full), p_res in zip(full_params.items(), block_resumed.collect_params().values()):
            np.testing.assert_allclose(p_full.data().asnumpy(), p_res.data().asnumpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=name)


def test_exported_model_loads_like_insightface(sample_rec, tmp_path):
    config = load_config(None, _overrides(sample_rec, tmp_path / "run", 2))
    _, net, _ = train(config, return_model=True)
    prefix = str(tmp_path / "run" / "model")
    block = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0001.params")
    x = mx.nd.array(np.random.default_rng(0).uniform(0, 255, (2, 3, 112, 112)))
    np.testing.assert_allclose(block(x).asnumpy(), net(x).asnumpy(), rtol=1e-4, atol=1e-4)
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 1)  # insightface's loader
    assert symbol.list_arguments()[0] == "data" and arg_params and aux_params


def test_config_errors_name_the_key(sample_rec, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.max_step'"):
        load_config(None, [f"data.root={sample_rec}", "train.max_step=3"])
    with pytest.raises(ConfigError, match="train.max_steps: expected int"):
        load_config(None, [f"data.root={sample_rec}", "train.max_steps=many"])
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, [f"data.root={sample_rec}", "data.sampler=pk", "data.batch_size=10",
                           "data.images_per_identity=4", "loss.name=triplet"])
    with pytest.raises(ConfigError, match="train.rec not found"):
        load_config(None, [f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"loss.label_smoothing must be in \[0, 1\), got 1.5"):
        load_config(None, [f"data.root={sample_rec}", "loss.label_smoothing=1.5"])
    with pytest.raises(ConfigError, match="loss.label_smoothing is not available with loss.sharded"):
        load_config(None, [f"data.root={sample_rec}", "loss.label_smoothing=0.1", "loss.sample_ratio=0.5"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad_yaml))


def test_label_smoothing_reaches_the_trained_head(sample_rec, tmp_path):
    config = load_config(None, _overrides(sample_rec, tmp_path / "run", 2, ["loss.label_smoothing=0.1"]))
    results, _, head = train(config, return_model=True)
    assert head.label_smoothing == 0.1 and results["steps"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"]["label_smoothing"] == 0.1


def test_demo_config_is_valid():
    config = load_config(os.path.join(ROOT, "configs", "demo.yaml"), check_files=False)
    assert config.model.name == "mobilefacenet" and config.verification.bins


def test_horovodrun_sharded_partial_fc_checkpoint_and_resume(sample_rec, tmp_path):
    """Classifier split over 2 workers with Partial FC: rank 0 writes every block (sent to it
    through Horovod); resuming under horovodrun continues from the saved step."""
    out = tmp_path / "run"
    sharded = ["loss.sharded=true", "loss.sample_ratio=0.5", "output.checkpoint_every=2"]
    worker = os.path.join(ROOT, "tests", "workers", "train_worker.py")
    first = run_horovod([worker, str(tmp_path)] + _overrides(sample_rec, out, 2, sharded), timeout=420)
    assert first.returncode == 0, horovod_failure(first)
    state = out / "checkpoints" / "step-00000002"
    blocks = [_params(state / checkpoint.BLOCK_FILE.format(r)) for r in (0, 1)]
    assert [b["weight"].shape[0] for b in blocks] == [10, 10]  # the fixture's 20 identities, 10 per rank
    assert all(b["weight.state.0"].shape == b["weight"].shape for b in blocks)  # SGD momentum
    meta = json.loads((state / "meta.json").read_text())
    assert meta["head_blocks"] == [[0, 10], [10, 20]]
    saved_block = [_params(tmp_path / f"head-rank{r}.params") for r in (0, 1)]
    for r in (0, 1):  # what rank 0 wrote is what each rank held
        live = saved_block[r]
        np.testing.assert_array_equal(blocks[r]["weight"], next(v for k, v in live.items() if k.endswith("weight")))
    resumed = run_horovod([worker, str(tmp_path), "--resume"] + _overrides(sample_rec, out, 4, sharded), timeout=420)
    assert resumed.returncode == 0, horovod_failure(resumed)
    assert "resumed from" in resumed.stdout + resumed.stderr
    # the classifier blocks moved on from the saved ones, and the network stayed identical on both ranks
    after = [_params(tmp_path / f"head-rank{r}.params") for r in (0, 1)]
    for before_r, after_r in zip(saved_block, after):
        assert any(not np.allclose(before_r[k], after_r[k]) for k in before_r)
    net0, net1 = _params(tmp_path / "net-rank0.params"), _params(tmp_path / "net-rank1.params")
    for key in net0:
        np.testing.assert_array_equal(net0[key], net1[key], err_msg=key)
