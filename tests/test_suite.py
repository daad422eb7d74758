"""bench/suite.py, the resumable multi-seed runner: real (tiny) training runs on the committed sample,
one record per run, resuming without redoing, never mixing recipes, and the paired statistics."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import common  # noqa: E402
import suite  # noqa: E402

# float32: the runner is what is tested here, and bfloat16 needs an AVX-512 CPU
TINY = ["--set", "train.max_steps=2", "data.batch_size=8", "train.log_every=1", "train.precision=float32"]


def run_suite(tmp_path, *extra):
    argv = [sys.executable, os.path.join(REPO, "bench", "suite.py"), "--suite", "ablations",
            "--data", str(tmp_path / "no-such-folder"),  # falls back to the committed sample
            "--work-dir", str(tmp_path / "work"), "--out-root", str(tmp_path / "results"), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def test_paired_interval_is_students_t_over_the_differences():
    d = [0.01, 0.03, 0.02, 0.06]
    mean, std, low, high = suite.paired_interval(d)
    expected_std = np.sqrt(sum((x - 0.03) ** 2 for x in d) / 3)
    assert mean == pytest.approx(0.03) and std == pytest.approx(expected_std)
    half = 3.182 * expected_std / 2  # t(0.975, 3 degrees of freedom) * s / sqrt(4)
    assert (low, high) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert np.isnan(suite.paired_interval([0.02])[2])  # one pair: no interval
    assert suite.paired_interval([0.02, 0.02])[1:3] == (0.0, pytest.approx(float("nan"), nan_ok=True))  # no spread


def test_train_fraction_keeps_the_held_out_pairs():
    rng = np.random.default_rng(0)
    people = {f"p{i:03d}": [f"p{i:03d}_{k:04d}.jpg" for k in range(1, 2 + rng.integers(0, 4))] for i in range(200)}
    held, train, lines = common.draw_split(people, 40, 1, seed=3)
    held_q, train_q, lines_q = common.draw_split(people, 40, 1, seed=3, train_fraction=0.25)
    assert held_q == held and lines_q == lines
    assert len(train_q) == round(0.25 * len(train)) and set(train_q) <= set(train)
    assert common.draw_split(people, 40, 1, seed=3, train_fraction=0.25)[1] == train_q  # seeded
    with pytest.raises(ValueError, match="fraction"):
        common.draw_split(people, 40, 1, seed=3, train_fraction=0)


def test_extended_pairs_are_more_pairs_of_the_same_people_in_person_disjoint_equal_folds():
    rng = np.random.default_rng(1)
    people = {f"p{i:03d}": [f"p{i:03d}_{k:04d}.jpg" for k in range(1, 2 + rng.integers(0, 8))] for i in range(200)}
    held, _, lines = common.draw_split(people, 60, 1, seed=3)
    extended = common.draw_extended_pairs(people, held, seed=3)
    folds, per_fold = map(int, extended[0].split())
    assert folds == 10 and len(extended) == 1 + 2 * folds * per_fold and per_fold > len(held) // folds
    fold_people = []
    for f in range(folds):
        block = [line.split("\t") for line in extended[1 + 2 * f * per_fold:1 + 2 * (f + 1) * per_fold]]
        same, different = block[:per_fold], block[per_fold:]
        assert all(len(p) == 3 and p[1] != p[2] for p in same) and all(len(p) == 4 and p[0] != p[2] for p in different)
        fold_people.append({p[0] for p in same} | {n for p in different for n in (p[0], p[2])})
        assert len({tuple(p) for p in block}) == len(block)  # no pair twice
    assert set().union(*fold_people) <= set(held)
    assert all(not (a & b) for i, a in enumerate(fold_people) for b in fold_people[i + 1:])  # person-disjoint
    same_counts = {}
    for line in extended[1:]:
        if len(line.split("\t")) == 3:
            same_counts[line.split("\t")[0]] = same_counts.get(line.split("\t")[0], 0) + 1
    assert max(same_counts.values()) <= common.EXTENDED_SAME_PER_PERSON
    assert common.draw_extended_pairs(people, held, seed=3) == extended  # seeded
    assert common.draw_split(people, 60, 1, seed=3)[2] == lines  # the 600-pair file does not move
    assert common.draw_extended_pairs({n: people[n][:1] for n in people}, held, seed=3) is None  # no same pair


def test_suite_writes_one_record_per_run_resumes_and_never_mixes_recipes(tmp_path):
    done = run_suite(tmp_path, "--only", "baseline", "wd_1e-3", "--seeds", "0", "1", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "results" / "suite_ablations"
    records = sorted(p.name for p in folder.iterdir())
    assert records == ["baseline_seed0.json", "baseline_seed1.json", "wd_1e-3_seed0.json", "wd_1e-3_seed1.json"]
    record = json.loads((folder / "wd_1e-3_seed1.json").read_text())
    assert record["steps"] == 2 and record["seed"] == 1 and "optimizer.wd=0.001" in record["overrides"]
    assert record["overrides"][-1] == "train.seed=1" and 0 <= record["final"]["accuracy"] <= 1
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    # again: nothing is redone
    again = run_suite(tmp_path, "--only", "baseline", "wd_1e-3", "--seeds", "0", "1", *TINY)
    assert again.returncode == 0 and "0 runs to do" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    # the summary pairs the variant with the baseline seed by seed
    summary = json.loads((tmp_path / "results" / "suite_ablations.json").read_text())
    row = next(r for r in summary["rows"] if r["variant"] == "wd_1e-3")
    base = {s: json.loads((folder / f"baseline_seed{s}.json").read_text())["final"]["accuracy"] for s in (0, 1)}
    mine = {s: json.loads((folder / f"wd_1e-3_seed{s}.json").read_text())["final"]["accuracy"] for s in (0, 1)}
    assert row["seeds"] == [0, 1] and row["paired"]["seeds"] == [0, 1]
    assert row["paired"]["mean"] == pytest.approx(np.mean([mine[s] - base[s] for s in (0, 1)]))
    assert "| wd_1e-3 |" in (tmp_path / "results" / "suite_ablations.md").read_text()

    # each run's exported model was scored on the extended pairs; --rescore scores a record without
    # them again from the kept model, to the same numbers
    assert record["final_extended"]["pairs"] == 300 and 0 <= record["final_extended"]["accuracy"] <= 1
    stripped = dict(record)
    del stripped["final_extended"]
    (folder / "wd_1e-3_seed1.json").write_text(json.dumps(stripped))
    rescored = run_suite(tmp_path, "--rescore")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert json.loads((folder / "wd_1e-3_seed1.json").read_text())["final_extended"] == record["final_extended"]
    assert "### On the extended held-out pairs (300 pairs)" in (tmp_path / "results" / "suite_ablations.md").read_text()

    # another recipe into the same folder is refused, naming the record
    other = run_suite(tmp_path, "--only", "baseline", "--seeds", "0", "--set", "train.max_steps=3")
    assert other.returncode != 0 and "baseline_seed0.json: made with other overrides" in other.stderr


def test_a_shared_row_is_trained_once_and_shown_in_both_suites(tmp_path, monkeypatch):
    suite.check_shared_rows()  # the real definitions: data_scaling's baseline is final's
    tiny = ["--set", "train.time_budget_minutes=0", "train.max_steps=2", "data.batch_size=8", "train.precision=float32"]
    argv = [sys.executable, os.path.join(REPO, "bench", "suite.py"), "--data", str(tmp_path / "no-such-folder"),
            "--work-dir", str(tmp_path / "work"), "--out-root", str(tmp_path / "results"), "--seeds", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(argv + ["--suite", "data_scaling", "--only", "baseline"] + tiny,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    home = tmp_path / "results" / "suite_final"
    assert sorted(p.name for p in home.iterdir()) == ["baseline_seed0.json"]  # recorded in its home suite
    assert not (tmp_path / "results" / "suite_data_scaling").exists()
    assert json.loads((home / "baseline_seed0.json").read_text())["suite"] == "final"

    again = subprocess.run(argv + ["--suite", "final", "--only", "baseline"] + tiny,
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "0 runs to do" in again.stderr, again.stderr[-3000:]
    shown = json.loads((tmp_path / "results" / "suite_data_scaling.json").read_text())
    row = next(r for r in shown["rows"] if r["variant"] == "baseline")
    assert row["seeds"] == [0] and row["accuracy_mean"] == \
        json.loads((home / "baseline_seed0.json").read_text())["final"]["accuracy"]

    mismatched = dict(suite.SUITES["data_scaling"], recipe=suite.SUITES["data_scaling"]["recipe"] + ["data.blur=0.2"])
    monkeypatch.setitem(suite.SUITES, "data_scaling", mismatched)  # restored after the test
    with pytest.raises(SystemExit, match="baseline is not the same run as suite final's"):
        suite.check_shared_rows()


def test_claims_are_judged_on_the_paired_interval():
    above = suite.claim("P", "A above B", "a", ">", "b")
    at_or_above = suite.claim("P", "A at or above B", "a", ">=", "b")
    b = {0: 0.80, 1: 0.82, 2: 0.81}

    def judged(c, diffs):
        return suite.judge_claim(c, {s: b[s] + d for s, d in zip(sorted(b), diffs)}, b)

    consistent_gain = judged(above, [0.030, 0.040, 0.035])
    d = np.array([0.030, 0.040, 0.035])
    half = 4.303 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert consistent_gain["seeds"] == [0, 1, 2] and consistent_gain["mean"] == pytest.approx(0.035)
    assert consistent_gain["ci95"] == [pytest.approx(0.035 - half), pytest.approx(0.035 + half)]
    assert consistent_gain["verdict"] == "held"
    assert judged(above, [-0.030, -0.040, -0.035])["verdict"] == "contradicted"
    assert judged(above, [0.05, -0.04, 0.02])["verdict"] == "not shown"
    # "at or above": a small, consistent loss within the tolerance still holds; "above" does not
    tiny_loss = [-0.002, -0.001, -0.003]  # interval [-0.0045, +0.0005]
    assert judged(at_or_above, tiny_loss)["verdict"] == "held"
    assert judged(above, tiny_loss)["verdict"] == "not shown"
    assert judged(at_or_above, [-0.03, -0.02, -0.025])["verdict"] == "contradicted"
    # pairs only where both rows have the seed; one pair is never a verdict
    assert suite.judge_claim(above, {0: 0.9, 5: 0.9}, b)["verdict"] == "not shown (one seed)"
    assert suite.judge_claim(above, {}, b)["verdict"] == "not run"
    # accuracies are multiples of 1/pairs: the same difference on every seed (7 of 600 pairs each) has no
    # spread, and its zero-width t interval is no verdict, for a claim or a row
    same_gain = suite.judge_claim(above, {0: 0.8700 + 7 / 600, 1: 0.8967 + 7 / 600}, {0: 0.8700, 1: 0.8967})
    assert same_gain["verdict"] == f"not shown ({suite.NO_SPREAD})" and np.isnan(same_gain["ci95"][0])
    assert suite.difference_verdict(suite.paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})) == suite.NO_SPREAD
    with pytest.raises(ValueError, match="relation"):
        suite.claim("P", "A below B", "a", "<", "b")


def test_every_claim_names_rows_of_its_suite_and_is_rendered():
    for name, s in suite.SUITES.items():
        names = {v["name"] for v in s["variants"]}
        for c in s.get("claims", ()):
            assert {c["a"], c["b"]} <= names, (name, c)
    records = [{"variant": v, "seed": seed, "samples_per_sec": 50.0, "steps": 800, "train_wall_s": 600.0,
                "final": {"accuracy": acc}}
               for v, accs in {"baseline": (0.80, 0.82), "l2softmax": (0.85, 0.86)}.items()
               for seed, acc in enumerate(accs)]
    summary = suite.summarize("heads", suite.SUITES["heads"], records)
    l2 = next(c for c in summary["claims"] if c["a"] == "l2softmax")
    assert l2["seeds"] == [0, 1] and l2["mean"] == pytest.approx(0.045)
    text = suite.render(summary)
    assert "### The papers' claims" in text and "| L2-softmax | L2-softmax above softmax | l2softmax > baseline | 0,1 |" in text
    assert "| Git loss | Git loss above centre loss | git > center |  |  |  | not run |" in text


def test_data_scaling_plots_each_seed_at_its_training_image_count(tmp_path):
    import cv2
    split = {"data": "lfw-devtrain", "fallback_to_sample": False, "heldout_people": 300, "pairs": 600,
             "split_seed": 0, "train_fraction": 1.0, "min_train_images": 1}
    rows = {"people_25": (0.25, 1, 2000, 934, (0.76, 0.78)), "min2": (1.0, 2, 5400, 1050, (0.85, 0.84))}
    for name, (fraction, min_images, images, people, accs) in rows.items():
        for seed, acc in enumerate(accs):
            record = {"suite": "data_scaling", "variant": name, "seed": seed, "samples_per_sec": 60.0,
                      "steps": 3200, "train_wall_s": 3600.0, "final": {"accuracy": acc},
                      "final_extended": {"accuracy": acc - 0.01, "pairs": 1860},
                      "split": dict(split, train_fraction=fraction, min_train_images=min_images,
                                    train_images=images, train_people=people)}
            path = suite.record_path(str(tmp_path), "data_scaling", name, seed)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(record, f)
    text = suite.render_all(str(tmp_path), "data_scaling")
    assert "Figure: `suite_data_scaling.png`" in text
    image = cv2.imread(str(tmp_path / "suite_data_scaling.png"))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert image.shape[1] == 2 * 6 * 90 and image.shape[0] == 4 * 90  # a panel each: 600 and extended pairs
    # suites without a plot write none
    suite.render_all(str(tmp_path), "heads")
    assert not (tmp_path / "suite_heads.png").exists()


def test_compare_pairs_two_rows_of_different_suites_by_seed_on_the_same_held_out_pairs(tmp_path):
    held_out = {"data": "lfw-devtrain", "fallback_to_sample": False, "heldout_people": 300, "pairs": 600,
                "split_seed": 0, "train_fraction": 1.0}
    rows = {("heads", "baseline"): (1, 8081, (0.87, 0.85, 0.86), {0: 0.850, 1: 0.840}),
            ("mining", "pretrained"): (3, 4403, (0.89, 0.88, 0.90), {0: 0.870, 1: 0.875, 2: 0.880})}
    overrides = {"heads": ["train.max_steps=800", "loss.name=softmax", "optimizer.lr=0.05"],
                 "mining": ["loss.name=softmax", "train.max_steps=800"]}
    for (suite_name, name), (min_images, images, accs, extended) in rows.items():
        for seed, acc in enumerate(accs):
            record = {"suite": suite_name, "variant": name, "seed": seed, "config": "configs/lfw_devtrain.yaml",
                      "overrides": overrides[suite_name] + [f"train.seed={seed}"], "final": {"accuracy": acc},
                      "split": dict(held_out, min_train_images=min_images, train_images=images)}
            if seed in extended:
                record["final_extended"] = {"accuracy": extended[seed], "pairs": 1860}
            path = suite.record_path(str(tmp_path), suite_name, name, seed)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(record, f)

    text = suite.compare_rows(str(tmp_path), "heads:baseline", "mining:pretrained")
    lines = text.splitlines()
    # only what differs is listed: the same overrides in another order are the same recipe; the seed is not a setting
    assert "| split.min_train_images | 1 | 3 |" in lines and "| split.train_images | 8081 | 4403 |" in lines
    assert "| optimizer.lr | 0.05 | (the config's) |" in lines
    assert not any(line.startswith(("| loss.name", "| train.max_steps", "| train.seed")) for line in lines)
    d = np.array([0.87 - 0.89, 0.85 - 0.88, 0.86 - 0.90])
    half = 4.303 * d.std(ddof=1) / np.sqrt(3)
    assert (f"| 600 | 0,1,2 | 0.8600 ± 0.0100 | 0.8900 ± 0.0100 | {d.mean():+.4f} | "
            f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] | mining:pretrained above |") in lines
    # the extended pairs pair only the seeds both rows were scored on
    d = np.array([0.850 - 0.870, 0.840 - 0.875])
    half = 12.706 * d.std(ddof=1) / np.sqrt(2)
    assert (f"| 1860 | 0,1 | 0.8450 ± 0.0071 | 0.8725 ± 0.0035 | -0.0275 | [{d.mean() - half:+.3f}, "
            f"{d.mean() + half:+.3f}] | no difference shown |") in lines

    other = suite.record_path(str(tmp_path), "mining", "pretrained", 2)
    record = json.load(open(other))
    record["split"]["split_seed"] = 1
    with open(other, "w") as f:
        json.dump(record, f)
    with pytest.raises(SystemExit, match="different held-out pairs"):
        suite.compare_rows(str(tmp_path), "heads:baseline", "mining:pretrained")
    with pytest.raises(SystemExit, match="heads:nope: no such row"):
        suite.compare_rows(str(tmp_path), "heads:nope", "mining:pretrained")
    with pytest.raises(SystemExit, match="heads:km: no finished runs"):
        suite.compare_rows(str(tmp_path), "heads:km", "mining:pretrained")


def test_a_shared_row_may_have_another_name_in_its_home_suite(tmp_path, monkeypatch):
    """data_selection's min3 is the mining suite's pretrained network: recorded there, shown here as min3."""
    suite.check_shared_rows()  # the real definitions: the same settings, whatever the order of the overrides
    min3 = next(v for v in suite.SUITES["data_selection"]["variants"] if v["name"] == "min3")
    assert suite.home_row("data_selection", min3) == ("mining", "pretrained")
    path = suite.record_path(str(tmp_path), "data_selection", "min3", 0)
    assert path == os.path.join(str(tmp_path), "suite_mining", "pretrained_seed0.json")
    mining = suite.SUITES["mining"]
    pretrained = next(v for v in mining["variants"] if v["name"] == "pretrained")
    record = {"suite": "mining", "variant": "pretrained", "seed": 0, "samples_per_sec": 60.0, "steps": 800,
              "train_wall_s": 780.0, "final": {"accuracy": 0.89},
              "overrides": suite.run_overrides(mining, pretrained, 0, [])}
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(record, f)
    shown = {r["variant"]: r for r in suite.read_records(str(tmp_path), "data_selection")}
    assert list(shown) == ["min3"] and shown["min3"]["final"]["accuracy"] == 0.89
    assert [r["variant"] for r in suite.read_records(str(tmp_path), "mining")] == ["pretrained"]
    # finished under either name: the overrides are the same settings in another order
    assert suite.run_overrides(suite.SUITES["data_selection"], min3, 0, []) != record["overrides"]
    assert suite.finished(str(tmp_path), "data_selection", min3, 0, [])
    with pytest.raises(SystemExit, match="made with other overrides"):
        suite.finished(str(tmp_path), "data_selection", min3, 0, ["train.max_steps=400"])

    original = suite.SUITES["data_selection"]
    renamed = [dict(v, split={"min_train_images": 2}) if v["name"] == "min3" else v for v in original["variants"]]
    monkeypatch.setitem(suite.SUITES, "data_selection", dict(original, variants=renamed))  # restored after the test
    with pytest.raises(SystemExit, match="min3 is not the same run as suite mining:pretrained's"):
        suite.check_shared_rows()


def test_recipes_compare_as_settings_unless_keys_nest():
    assert suite.settings(["a.b=1", "c=2", "a.b=3"]) == suite.settings(["c=2", "a.b=3"])
    assert suite.settings(["a.b=1", "c=2"]) != suite.settings(["a.b=1", "c=3"])
    # loss.params={} then loss.params.s=64 is not loss.params.s=64 then loss.params={}
    nested = ["loss.params={}", "loss.params.s=64"]
    assert suite.settings(nested) != suite.settings(nested[::-1])
    assert suite.settings(nested) == suite.settings(list(nested))


def test_every_run_of_every_suite_is_a_valid_config():
    """Each (suite, row)'s config with the row's overrides loads and validates, so a suite never fails
    an hour in on a typo; the suites' base is the frozen CosFace recipe its records were made with."""
    from recognition.engine.config import load_config
    for name, spec in suite.SUITES.items():
        for v in spec["variants"]:
            path = os.path.join(REPO, suite.row_config(spec, v))
            load_config(path, suite.run_overrides(spec, v, 0, []), check_paths=False)
    base = load_config(os.path.join(REPO, suite.SUITE_BASE), check_paths=False)
    assert (base.loss.name, base.train.max_steps, base.train.time_budget_minutes) == ("cosface", 3600, 0)
