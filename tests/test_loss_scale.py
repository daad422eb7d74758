"""Dynamic loss scaling: the scaler's rule, and the trainer with it (exact unscaling, overflow recovery)."""
import json

import mxnet as mx
import numpy as np
import pytest

from recognition.engine.config import ConfigError, load_config
from recognition.engine.loss_scale import DynamicLossScaler
from recognition.engine.trainer import TrainingError, train
from recognition.models.precision import low_precision_symbol

TINY = ["model.name=mobilefacenet", "data.batch_size=8", "data.num_workers=1", "train.log_every=1",
        "loss.name=arcface", "loss.params={s: 16.0, m2: 0.3}", "optimizer.lr=0.01", "optimizer.warmup_steps=0",
        "train.deterministic=true", "data.flip=false"]


def test_scaler_halves_on_overflow_grows_after_interval_and_stops_at_minimum():
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=3, min_scale=2.0)
    scaler.update(False)
    assert scaler.scale == 4.0 and scaler.finite_in_row == 0
    for _ in range(2):
        scaler.update(True)
    assert scaler.scale == 4.0
    scaler.update(True)  # the third finite step in a row
    assert scaler.scale == 8.0 and scaler.finite_in_row == 0
    for _ in range(5):
        scaler.update(False)
    assert scaler.scale == 2.0 and scaler.at_minimum
    other = DynamicLossScaler()
    other.load_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert other.scale == 2.0 and other.finite_in_row == 0
    with pytest.raises(ValueError):
        DynamicLossScaler(factor=1.0)


def _final_params(rec, out, extra, steps=3):
    config = load_config(None, [f"data.root={rec}", f"output.dir={out}", f"train.max_steps={steps}"] + TINY + extra)
    results, net, head = train(config, return_model=True)
    # in creation order: Gluon numbers the blocks of each new run (marginloss0, marginloss1, ...)
    values = [(name, p.data().asnumpy()) for block in (net, head) for name, p in block.collect_params().items()]
    return results, values


def test_scaled_training_equals_unscaled_training(sample_rec, tmp_path):
    # a power-of-two scale is undone exactly: the same parameters as without scaling
    _, plain = _final_params(sample_rec, tmp_path / "plain", ["train.loss_scale=none"])
    results, scaled = _final_params(sample_rec, tmp_path / "scaled",
                                    ["train.loss_scale=dynamic", "train.loss_scale_init=1024"])
    assert results["skipped_updates"] == 0
    assert len(plain) == len(scaled)
    for (name, value), (_, scaled_value) in zip(plain, scaled):
        np.testing.assert_allclose(scaled_value, value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_overflowing_scale_is_halved_until_the_gradients_fit(sample_rec, tmp_path):
    out = tmp_path / "run"
    # the loss times 2^126 overflows float32: the scale comes down, one halving per skipped step,
    # until the scaled gradients fit, and training goes on
    results, values = _final_params(sample_rec, out, ["train.loss_scale=dynamic", "train.loss_scale_init=8.5e37",
                                                      "train.max_nonfinite=1", "output.checkpoint_every=16"], steps=16)
    # max_nonfinite=1: an overflow is not counted as divergence
    assert 1 <= results["skipped_updates"] < 16, results
    assert all(np.isfinite(v).all() for _, v in values)
    meta = json.loads((out / "checkpoints" / "step-00000016" / "meta.json").read_text())
    assert meta["loss_scale"]["scale"] == 8.5e37 / 2 ** results["skipped_updates"]


def test_float16_on_the_cpu_is_refused_clearly(sample_rec, tmp_path):
    config = load_config(None, [f"data.root={sample_rec}", f"output.dir={tmp_path}", "train.max_steps=1"] + TINY
                         + ["train.precision=float16"])
    with pytest.raises(TrainingError, match="float16 needs a GPU"):
        train(config)
    with pytest.raises(ConfigError, match="train.loss_scale"):
        load_config(None, [f"data.root={sample_rec}", "train.loss_scale=static"])


def test_float16_graph_computes_the_trunk_in_float16():
    data, weight, gamma, beta, mean, var = (mx.sym.var(n) for n in ("data", "w", "g", "b", "m", "v"))
    conv = mx.sym.Convolution(data, weight, kernel=(3, 3), num_filter=4, no_bias=True, name="conv")
    out = mx.sym.Activation(mx.sym.BatchNorm(conv, gamma, beta, mean, var, name="bn"), act_type="relu", name="act")
    low = low_precision_symbol(out, "float16")
    shapes = dict(data=(1, 3, 8, 8))
    float32 = {name: "float32" for name in ("data", "w", "g", "b", "m", "v")}  # as the parameters are
    internals = low.get_internals()
    for name in ("conv_output", "bn_output", "act_output"):
        inputs = {k: v for k, v in float32.items() if k in internals[name].list_inputs()}
        _, (dtype,), _ = internals[name].infer_type(**inputs)
        assert dtype == np.float16, name
    arg_types, (out_type,), aux_types = low.infer_type(**float32)
    assert set(arg_types) == {np.float32} and set(aux_types) == {np.float32} and out_type == np.float32
    assert low.infer_shape(**shapes)[1] == [(1, 4, 6, 6)]
