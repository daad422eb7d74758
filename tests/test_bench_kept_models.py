"""The benchmarks that score suite runs' kept models (bench/whitening.py, bench/ensemble.py) on two
real (tiny, float32) suite runs of the committed sample: their plain scores are tools/verify.py's,
finished work is reused, and a record whose run folder holds another model is refused."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def bench(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "bench", f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(work dir, [record of seed 0, record of seed 1]) of the ablations suite's baseline, 2 steps each."""
    root = tmp_path_factory.mktemp("runs")
    trained = bench("suite", "--suite", "ablations", "--only", "baseline", "--seeds", "0", "1",
                    "--data", root / "no-such-folder", "--out-root", root / "results", "--work-dir", root / "work",
                    "--set", "train.max_steps=2", "data.batch_size=8", "train.precision=float32")
    assert trained.returncode == 0, trained.stderr[-3000:]
    folder = root / "results" / "suite_ablations"
    return root / "work", [folder / f"baseline_seed{seed}.json" for seed in (0, 1)]


def altered(record_file, tmp_path, change):
    record = json.loads(record_file.read_text())
    change(record)
    path = tmp_path / record_file.name
    path.write_text(json.dumps(record))
    return path


def as_another_runs(record_file, tmp_path):
    """The record, altered as if another model had scored it (0.2 more accuracy)."""
    return altered(record_file, tmp_path, lambda record: record["final"].update(accuracy=record["final"]["accuracy"] + 0.2))


def test_whitening_none_is_verify_and_another_runs_model_is_refused(runs, tmp_path):
    work, records = runs
    record = json.loads(records[0].read_text())
    done = bench("whitening", records[0], "--out", tmp_path / "maps", "--work-dir", work)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "maps" / "ablations_baseline_seed0.json").read_text())
    assert run["run"] == "ablations:baseline seed 0" and run["train_images"] == record["split"]["train_images"]
    assert run["scores"]["extended"]["pairs"] == record["final_extended"]["pairs"]
    assert run["scores"]["extended"]["none"] == pytest.approx(record["final_extended"]["accuracy"])
    assert abs(run["scores"]["600"]["none"] - record["final"]["accuracy"]) <= 0.01
    assert all(0 <= run["scores"][name][kind] <= 1 for name in ("600", "extended") for kind in ("center", "pca", "wccn"))
    assert "| ablations:baseline seed 0 |" in (tmp_path / "maps" / "summary.md").read_text()
    assert "done already" in bench("whitening", records[0], "--out", tmp_path / "maps", "--work-dir", work).stderr

    refused = bench("whitening", as_another_runs(records[1], tmp_path), "--out", tmp_path / "maps", "--work-dir", work)
    assert refused.returncode != 0 and "another run's model" in refused.stderr.strip().splitlines()[-1]
    assert "baseline_seed1.json: the model at" in refused.stderr
    assert not (tmp_path / "maps" / "ablations_baseline_seed1.json").exists()


def test_ensemble_scores_members_and_their_combination_as_verify_does(runs, tmp_path):
    work, records = runs
    done = bench("ensemble", *records, "--baseline", records[0], "--out", tmp_path / "ens", "--work-dir", work)
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(os.listdir(tmp_path / "ens"))
    assert names == ["ablations_baseline_seed0+ablations_baseline_seed1.json", "ablations_baseline_seed0.json",
                     "ablations_baseline_seed1.json", "summary.json", "summary.md"]
    for seed, record_file in enumerate(records):
        record = json.loads(record_file.read_text())
        alone = json.loads((tmp_path / "ens" / f"ablations_baseline_seed{seed}.json").read_text())
        assert alone["size"] == 1 and alone["extended"] == pytest.approx(
            {k: v for k, v in record["final_extended"].items() if k != "pairs"})
    pair = json.loads((tmp_path / "ens" / names[0]).read_text())
    assert pair["size"] == 2 and pair["members"] == ["ablations:baseline seed 0", "ablations:baseline seed 1"]
    assert 0 <= pair["extended"]["accuracy"] <= 1 and pair["pairs"]["extended"] == 300
    assert (work / "ensemble" / "ablations_baseline_seed0+ablations_baseline_seed1" / "model-symbol.json").exists()
    summary = (tmp_path / "ens" / "summary.md").read_text()
    assert "| 2 x " in summary and "(members alone)" in summary and "(the whole budget, one network)" in summary
    again = bench("ensemble", "--render", "--out", tmp_path / "ens")
    assert again.returncode == 0 and (tmp_path / "ens" / "summary.md").read_text() == summary  # baseline kept

    refused = bench("ensemble", as_another_runs(records[0], tmp_path), records[1], "--out", tmp_path / "other",
                    "--work-dir", work)
    assert refused.returncode != 0 and "another run's model" in refused.stderr.strip().splitlines()[-1]
    other_split = altered(records[1], tmp_path, lambda record: record["split"].update(split_seed=1))
    refused = bench("ensemble", records[0], other_split, "--out", tmp_path / "split", "--work-dir", work)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and "held out other people" in last and "split_seed 1 (first member: 0)" in last
    assert not (tmp_path / "split").exists() or not os.listdir(tmp_path / "split")
