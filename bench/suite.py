#!/usr/bin/env python
"""Resumable multi-seed comparisons on held-out LFW people: ablations, the data-scaling curve, heads.

A suite is a recipe (a config plus the overrides of its budget) and variants, each one change
against the suite's baseline. Every (variant, seed) run trains with the project's trainer on the
split of ``bench/common.py`` (the same 300 held-out people and 600 pairs as product_goal), is
scored once at the end on the held-out pairs, and is written as its own JSON record under
``bench/results/suite_NAME/`` as soon as it finishes. A run whose record exists is skipped, so a
suite runs in parts (``--max-runs``, or stop it at any time: only the unfinished run is lost).

After every run, and with ``--render`` alone, ``bench/results/suite_NAME.md`` / ``.json`` are
rebuilt from the records present: per variant the seeds that finished, mean +- std of the final
held-out accuracy, and the difference to the baseline paired by seed with its 95% Student-t
interval. A difference whose interval holds 0 is reported as "no difference shown". Suites that
test the papers' claims (``heads``, ``mining``) add a table of them, each judged on its two rows
paired by seed: held, contradicted or not shown (:func:`judge_claim`).

Every suite measures against ``bench/suite_base.yaml``: configs/lfw_devtrain.yaml as it was until 2026-12-07
(CosFace, every training person), frozen so that new runs of a suite compare with its earlier records.

Suites (``--list``):
* ``ablations``: issue 17 part 4, one change at a time against the suites' base at a
  proxy budget of 600 steps (1/6 of the 60-minute schedule, about 9 minutes on an idle core pair).
  The budget is a number of steps, not minutes, so that a busy machine does not change what is
  compared; changes that make a step slower or faster (width, embedding, batch) show their
  samples/s beside the accuracy.
* ``data_scaling``: issue 17 part 3, the 60-minute recipe on 25%, 50% and 100% of the training
  people, and on people with at least 2 photos only.
* ``final``: issue 17 part 4's last step, the best changes of ``ablations`` combined, at the
  60-minute recipe, against the suites' base as it is; its best row (softmax_min2) is now
  configs/lfw_devtrain.yaml (with bench/product_goal.py's default --min-train-images 2).
* ``heads``: issue 14, every head under the accuracy goal's recipe (bfloat16) for 800 steps.
* ``data_selection``: issue 17 part 3 at the heads recipe: all training people against those
  with at least 2, 3 or 5 photos (its min3 row is the mining suite's pretrained network).
* ``mining``: issue 14, MassFace's triplet fine-tuning with each mining strategy against softmax
  fine-tuning of the same network for the same images.

``--set`` adds overrides after the suite's (for a smaller trial); records made with other
overrides than the current command's are never mixed: the command stops and names the record.
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from recognition.fileio import write_text_atomic  # noqa: E402

SUITE_BASE = os.path.join("bench", "suite_base.yaml")


def variant(name, change, overrides=(), split=None, config=None, start_from=None, same_as=None):
    """One row of a suite: ``overrides`` (``--set`` items) and ``split`` (changes of the split:
    ``min_train_images``, ``train_fraction``) on top of the suite's recipe; ``config`` instead of
    the suite's; ``start_from``: fine-tune the network of that variant's run with the same seed
    (its classifier is not loaded); ``same_as``: "SUITE" (the row of the same name there) or
    "SUITE:ROW", a row that trains the same thing (checked by :func:`check_shared_rows`): its runs
    are trained once, recorded there and shown in both."""
    return {"name": name, "change": change, "overrides": list(overrides), "split": dict(split or {}),
            "config": config, "start_from": start_from, "same_as": same_as}


def claim(paper, text, variant_a, relation, variant_b):
    """A paper's claim about two rows of a suite: ``variant_a`` above (``>``) or at or above (``>=``)
    ``variant_b``, judged on their accuracies paired by seed (:func:`judge_claim`)."""
    if relation not in (">", ">="):
        raise ValueError(f"claim {text!r}: relation must be '>' or '>=', not {relation!r}")
    return {"paper": paper, "claim": text, "a": variant_a, "relation": relation, "b": variant_b}


# a claim "A at or above B" holds where the whole 95% interval of A - B lies above -AT_OR_ABOVE_TOLERANCE:
# A is not shown to lose more than this (one point of accuracy, below the resolution of 600 pairs)
AT_OR_ABOVE_TOLERANCE = 0.01

PROXY = ["train.max_steps=600", "optimizer.warmup_steps=35", "verification.every=0",
         "output.checkpoint_every=0", "output.keep=1", "train.log_every=50"]

# the changes of the ablations that the final suite combines (one list each, so the rows cannot drift apart)
EMB_256 = ["model.embedding_size=256"]
JITTER_CUTOFF = ["data.color_jitter=0.125", "data.cutoff=32"]
PHOTOMETRIC = ["data.grayscale=0.2", "data.blur=0.2", "data.jpeg=0.3"]
HEAD_SOFTMAX = ["loss.name=softmax", "loss.params={}"]
HEADS_RECIPE = ["train.max_steps=800", "optimizer.warmup_steps=45", "verification.every=0",
                "output.checkpoint_every=0", "output.keep=1", "train.log_every=50"]
SIXTY_MINUTES = ["train.time_budget_minutes=60", "verification.every=0", "output.checkpoint_every=0", "output.keep=1",
                 "train.log_every=100"]

SUITES = {
    "ablations": {
        "issue": 17,
        "description": "one change at a time against bench/suite_base.yaml, 600-step proxy (cosine "
                       "over 600 steps, warmup 35), final model scored on the held-out pairs",
        "config": SUITE_BASE, "recipe": PROXY, "seeds": [0, 1],
        "variants": [
            variant("baseline", "bench/suite_base.yaml as it is"),
            variant("wd_1e-3", "weight decay 1e-3 (from 5e-4)", ["optimizer.wd=0.001"]),
            variant("head_arcface", "ArcFace s 32, m 0.5", ["loss.name=arcface", "loss.params={s: 32.0, m2: 0.5}"]),
            variant("lr_0.2", "learning rate 0.2 (from 0.1)", ["optimizer.lr=0.2"]),
            variant("jitter_cutoff", "colour jitter 0.125 + cutoff 32 (insightface's)",
                    JITTER_CUTOFF),
            variant("geometric", "zoom 1 +- 0.1, rotation +- 10 degrees, shift +- 4 px",
                    ["data.scale_jitter=0.1", "data.rotate=10", "data.shift=4"]),
            variant("emb_256", "embedding 256 (from 128)", EMB_256),
            variant("photometric", "grayscale 0.2, blur 0.2, JPEG 0.3 (probabilities)",
                    PHOTOMETRIC),
            variant("head_softmax", "plain softmax", HEAD_SOFTMAX),
            variant("head_adacos", "dynamic AdaCos", ["loss.name=adacos", "loss.params={dynamic: true}"]),
            variant("head_l2softmax", "L2-softmax, alpha 16", ["loss.name=l2softmax", "loss.params={alpha: 16.0}"]),
            variant("wd_2.5e-4", "weight decay 2.5e-4", ["optimizer.wd=0.00025"]),
            variant("lr_0.05", "learning rate 0.05", ["optimizer.lr=0.05"]),
            variant("emb_512", "embedding 512", ["model.embedding_size=512"]),
            variant("width_2", "MobileFaceNet width x2", ["model.params={scale: 2}"]),
            variant("batch_128", "batch 128, 300 steps (the same images)",
                    ["data.batch_size=128", "train.max_steps=300", "optimizer.warmup_steps=18"]),
            variant("dropout_0.2", "dropout 0.2 before the embedding", ["model.dropout=0.2"]),
            variant("label_smoothing", "label smoothing 0.1 (target 0.9 + 0.1 / C)", ["loss.label_smoothing=0.1"]),
        ],
    },
    "data_scaling": {
        "issue": 17,
        "description": "the 60-minute recipe (bench/suite_base.yaml, train.time_budget_minutes=60) on a "
                       "share of the training people; held-out pairs unchanged",
        "config": SUITE_BASE,
        "plot": "training_images",
        "recipe": SIXTY_MINUTES,
        "seeds": [0, 1],
        "variants": [
            variant("baseline", "all training people (3,738; singletons are classes): the runs of suite final's "
                                "baseline", same_as="final"),
            variant("people_50", "50% of the training people", split={"train_fraction": 0.5}),
            variant("people_25", "25% of the training people", split={"train_fraction": 0.25}),
            variant("min2", "only people with >= 2 photos", split={"min_train_images": 2}),
        ],
    },
    "final": {
        "issue": 17,
        "description": "the best changes of the ablations combined, at the 60-minute recipe "
                       "(bench/suite_base.yaml, train.time_budget_minutes=60); baseline: the suites' base as it is",
        "config": SUITE_BASE,
        "recipe": SIXTY_MINUTES,
        "seeds": [0, 1],
        "variants": [
            variant("baseline", "bench/suite_base.yaml as it is"),
            variant("emb256_aug", "embedding 256 + colour jitter 0.125, cutoff 32 + grayscale 0.2, blur 0.2, JPEG 0.3",
                    EMB_256 + JITTER_CUTOFF + PHOTOMETRIC),
            variant("emb256_aug_wd", "emb256_aug + weight decay 1e-3",
                    EMB_256 + JITTER_CUTOFF + PHOTOMETRIC + ["optimizer.wd=0.001"]),
            variant("emb256_photometric", "embedding 256 + grayscale 0.2, blur 0.2, JPEG 0.3",
                    EMB_256 + PHOTOMETRIC),
            variant("softmax_emb256", "plain softmax + embedding 256 (the proxy's two highest rows)",
                    HEAD_SOFTMAX + EMB_256),
            # data_selection: leaving the single-photo people out gained 2 points at 800 steps
            variant("min2", "only people with >= 2 photos: the runs of suite data_scaling's min2",
                    split={"min_train_images": 2}, same_as="data_scaling"),
            variant("softmax_min2", "plain softmax, only people with >= 2 photos (data_selection's min2 at 60 minutes)",
                    HEAD_SOFTMAX, split={"min_train_images": 2}),
            # the min2 runs classify every training batch without error from a fifth (softmax) to a third
            # (CosFace) of the run: at 44 epochs augmentation might matter where the 600-step proxy (6 epochs,
            # no memorising) could not show it (measured: no difference, and it memorises as early)
            variant("softmax_min2_aug", "softmax_min2 + colour jitter 0.125, cutoff 32 + grayscale 0.2, blur 0.2, "
                    "JPEG 0.3", HEAD_SOFTMAX + JITTER_CUTOFF + PHOTOMETRIC, split={"min_train_images": 2}),
        ],
    },
    "heads": {
        "issue": 14,
        "description": "every head under the accuracy goal's recipe (bench/suite_base.yaml: MobileFaceNet-128, "
                       "bfloat16, batch 64, cosine) for 800 steps (about 13 minutes a run on a 2-core machine: 30 "
                       "runs in about 6.5 hours; the goal run's held-out curve gains 2 points from step 600 to 1,200), "
                       "baseline softmax",
        "config": SUITE_BASE,
        "recipe": HEADS_RECIPE,
        "seeds": [0, 1, 2],
        "variants": [
            variant("baseline", "softmax", HEAD_SOFTMAX),
            variant("l2softmax", "L2-softmax, alpha 16", ["loss.name=l2softmax", "loss.params={alpha: 16.0}"]),
            variant("km", "Knot Magnify, gamma 2", ["loss.name=km", "loss.params={gamma: 2.0}"]),
            variant("km_center", "Knot Magnify + centre loss (configs/km_center.yaml)",
                    ["loss.name=km", "loss.params={gamma: 2.0, center: {lambda_c: 0.01, alpha: 0.5}}"]),
            variant("adacos_fixed", "AdaCos, fixed s", ["loss.name=adacos", "loss.params={dynamic: false}"]),
            variant("adacos_dynamic", "AdaCos, dynamic s", ["loss.name=adacos", "loss.params={dynamic: true}"]),
            # the rows of the papers' claims first (a suite run in parts has them soonest), then the margin heads
            variant("center", "softmax + centre loss, lambda_C 0.01, alpha 0.5 (Git's lambda_G = 0)",
                    ["loss.name=softmax", "loss.params={center: {lambda_c: 0.01, alpha: 0.5}}"]),
            variant("git", "Git loss, lambda_C 0.01, lambda_G 0.1 (configs/git.yaml)", ["loss.name=git", "loss.params={}"]),
            variant("cosface", "CosFace s 32, m 0.35", ["loss.name=cosface", "loss.params={s: 32.0, m3: 0.35}"]),
            variant("arcface", "ArcFace s 32, m 0.5", ["loss.name=arcface", "loss.params={s: 32.0, m2: 0.5}"]),
        ],
        "claims": [
            claim("L2-softmax", "L2-softmax above softmax", "l2softmax", ">", "baseline"),
            claim("Knot Magnify", "KM at or above softmax", "km", ">=", "baseline"),
            claim("Knot Magnify", "KM + centre loss above KM", "km_center", ">", "km"),
            claim("AdaCos", "dynamic AdaCos at or above fixed AdaCos, without tuning s", "adacos_dynamic", ">=",
                  "adacos_fixed"),
            claim("Git loss", "Git loss above centre loss", "git", ">", "center"),
        ],
    },
}

# MassFace's claims (issue 14): triplet fine-tuning of a softmax network, against fine-tuning the same
# network with softmax for the same images (the same start, learning rate and images; only the
# loss differs; the softmax classifier is learnt anew, as the triplet rows drop it)
FINETUNE = ["train.precision=bfloat16", "model.embedding_size=128", "data.batch_size=32",
            "data.images_per_identity=4", "train.max_steps=400", "optimizer.lr=0.005", "optimizer.warmup_steps=0",
            "optimizer.schedule=cosine", "verification.flip=sum"]
SUITES["mining"] = {
    "issue": 14,
    "description": "MassFace: a softmax network (bench/suite_base.yaml with softmax, 800 steps x 64, on the "
                   "people with >= 3 photos) fine-tuned for 12,800 images (400 steps of P x K = 8 x 4; "
                   "softmax: 200 x 64) at lr 0.005 cosine, bfloat16, by each mining strategy; baseline: the "
                   "same fine-tuning with softmax",
    "config": SUITE_BASE, "split": {"min_train_images": 3},
    "recipe": ["verification.every=0", "output.checkpoint_every=0", "output.keep=1", "train.log_every=50"],
    "seeds": [0, 1, 2],
    "variants": [
        variant("pretrained", "the softmax network before fine-tuning",
                ["loss.name=softmax", "loss.params={}", "train.max_steps=800", "optimizer.warmup_steps=45"]),
        variant("baseline", "softmax fine-tuning, 200 steps x 64",
                ["loss.name=softmax", "loss.params={}", "train.max_steps=200", "optimizer.lr=0.005",
                 "optimizer.warmup_steps=0"], start_from="pretrained"),
    ] + [variant(f"triplet_{strategy}", f"triplet, {strategy.replace('batch_', '')} mining, online",
                 FINETUNE + [f"loss.params={{margin: 0.2, strategy: {strategy}, pool: online}}"],
                 config=os.path.join("configs", "triplet_finetune.yaml"), start_from="pretrained")
         # batch_min_min selects the same triplets as batch_min_max (recognition/losses/mining.py)
         for strategy in ("batch_all", "batch_random", "batch_min_max", "batch_hardest")] + [
        variant("semi_online", "triplet, min_max mining over the last 4 batches (semi-online)",
                FINETUNE + ["loss.params={margin: 0.2, strategy: batch_min_max, pool: semi_online, pool_batches: 4}"],
                config=os.path.join("configs", "triplet_semi_online.yaml"), start_from="pretrained"),
    ],
    "claims": [claim("MassFace", f"triplet fine-tuning with {strategy.replace('batch_', '')} mining above softmax "
                                 "fine-tuning for the same images", f"triplet_{strategy}", ">", "baseline")
               for strategy in ("batch_all", "batch_random", "batch_min_max", "batch_hardest")] + [
        claim("MassFace", "semi-online (min_max) above online min_max mining", "semi_online", ">",
              "triplet_batch_min_max"),
    ],
}

# issue 17 part 3 at a short budget: which people to train on. The mining suite's pretrained network is
# this recipe on the people with >= 3 photos (so its runs are this suite's min3 row).
SUITES["data_selection"] = {
    "issue": 17,
    "description": "which training people help: the heads suite's softmax recipe (bench/suite_base.yaml with "
                   "softmax, 800 steps x 64, about 13 minutes a run) on all training people and on those with at "
                   "least 2, 3 or 5 photos; the held-out pairs unchanged",
    "config": SUITE_BASE, "recipe": HEADS_RECIPE, "seeds": [0, 1, 2], "plot": "training_images",
    "variants": [
        variant("baseline", "all training people (singletons are classes): the heads suite's softmax runs",
                HEAD_SOFTMAX, same_as="heads"),
        variant("min2", "only people with >= 2 photos", HEAD_SOFTMAX, split={"min_train_images": 2}),
        variant("min3", "only people with >= 3 photos: the mining suite's pretrained network", HEAD_SOFTMAX,
                split={"min_train_images": 3}, same_as="mining:pretrained"),
        variant("min5", "only people with >= 5 photos", HEAD_SOFTMAX, split={"min_train_images": 5}),
    ],
}

# issue 17: the 60 minutes spent on four 15-minute networks instead of one, combined by
# tools/ensemble.py; bench/ensemble.py scores the combinations, this suite trains the members
SUITES["ensemble"] = {
    "issue": 17,
    "description": "members of an ensemble: configs/lfw_devtrain.yaml's recipe (bench/suite_base.yaml with "
                   "softmax on the people with >= 2 photos) with a 15-minute time budget, one network per seed; "
                   "baseline: the same recipe at 60 minutes (the final suite's softmax_min2)",
    "config": SUITE_BASE, "recipe": SIXTY_MINUTES, "seeds": [0, 1, 2, 3],
    "variants": [
        variant("baseline", "60 minutes: the final suite's softmax_min2", HEAD_SOFTMAX, split={"min_train_images": 2},
                same_as="final:softmax_min2"),
        variant("minutes_15", "15 minutes (a quarter of the budget)", HEAD_SOFTMAX + ["train.time_budget_minutes=15"],
                split={"min_train_images": 2}),
    ],
}

# two-sided 95% quantiles of Student's t, by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df):
    if df in T95:
        return T95[df]
    below = max(k for k in T95 if k <= df)
    return T95[below] if df < 30 else 1.96 + 2.4 / df  # within 0.002 of the exact value beyond 30


# accuracies are multiples of 1/pairs, so a few seeds can give the same difference each by chance; their
# sample std is then 0 and the t interval a point, which would read as certainty from no spread at all
NO_SPREAD = "the same difference on every seed: no spread, no interval"


def paired_interval(differences):
    """(mean, std, low, high) of paired differences; the interval is mean +- t * std / sqrt(n). No
    interval (NaN) from one difference, nor from differences that are all the same (NO_SPREAD: std 0)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan"), float("nan")
    std = float(d.std(ddof=1))
    if std < 1e-9:  # float rounding leaves ~1e-17 of an exact 0
        return float(d.mean()), 0.0, float("nan"), float("nan")
    half = t95(len(d) - 1) * std / math.sqrt(len(d))
    return float(d.mean()), std, float(d.mean() - half), float(d.mean() + half)


def results_dir(out_root, suite):
    return os.path.join(out_root, f"suite_{suite}")


def home_row(suite_name, v):
    """(suite, row) where the runs of ``suite_name``'s row ``v`` are trained and recorded."""
    if not v["same_as"]:
        return suite_name, v["name"]
    home, _, name = v["same_as"].partition(":")
    return home, name or v["name"]


def row_config(suite, v):
    """The config file ``suite``'s row ``v`` trains from: the row's own, else the suite's."""
    return v["config"] or suite["config"]


def record_path(out_root, suite, name, seed):
    """Where the record of (``suite``'s row ``name``, ``seed``) is: a shared row's is in its home suite."""
    v = next((v for v in SUITES[suite]["variants"] if v["name"] == name), None) if suite in SUITES else None
    home, home_name = home_row(suite, v) if v else (suite, name)
    return os.path.join(results_dir(out_root, home), f"{home_name}_seed{seed}.json")


def read_records(out_root, suite):
    """The records of ``suite``'s rows, those of shared rows (``same_as``) from their home suite under
    the row's name here."""
    variants = SUITES[suite]["variants"] if suite in SUITES else []
    shared = {home_row(suite, v): v["name"] for v in variants if v["same_as"]}  # (home, row there) -> row here
    own_shared = {v["name"] for v in variants if v["same_as"]}
    records = []
    for home in [suite] + sorted({h for h, _ in shared} - {suite}):
        for path in sorted(glob.glob(os.path.join(results_dir(out_root, home), "*_seed*.json"))):
            with open(path) as f:
                record = json.load(f)
            if home == suite and record["variant"] not in own_shared:
                records.append(record)
            elif (home, record["variant"]) in shared and home != suite:
                records.append(dict(record, variant=shared[(home, record["variant"])]))
    return records


def last_values(overrides):
    """--set items as a dict of key -> value, the last of a key winning, as the trainer applies them."""
    return dict(o.split("=", 1) for o in overrides)


def settings(overrides):
    """--set items as the trainer applies them: the last of a key wins, so their order is no part of
    the recipe, unless one key nests in another (``loss.params`` and ``loss.params.s``): then the
    list as it is, order and all."""
    values = last_values(overrides)
    if any(b.startswith(a + ".") for a in values for b in values):
        return list(overrides)
    return values


def check_shared_rows():
    """Each shared row (``same_as``) trains exactly what its home row trains: the same config,
    recipe, overrides and split; else the records would be another recipe's."""
    for name, suite in SUITES.items():
        for v in suite["variants"]:
            if not v["same_as"]:
                continue
            home_name, twin_name = home_row(name, v)
            home = SUITES[home_name]
            twin = next((h for h in home["variants"] if h["name"] == twin_name), None)
            same = twin is not None and not twin["same_as"] and \
                row_config(suite, v) == row_config(home, twin) and \
                settings(suite["recipe"] + v["overrides"]) == settings(home["recipe"] + twin["overrides"]) and \
                {**suite.get("split", {}), **v["split"]} == {**home.get("split", {}), **twin["split"]} and \
                v["start_from"] is None and twin["start_from"] is None
            if not same:
                raise SystemExit(f"suite {name}: row {v['name']} is not the same run as suite {v['same_as']}'s")


def paired_difference(accuracy_a, accuracy_b):
    """A - B over the seeds both {seed: accuracy} have: seeds, mean, std and 95% interval (None if no seed)."""
    seeds = sorted(set(accuracy_a) & set(accuracy_b))
    if not seeds:
        return None
    mean, std, low, high = paired_interval([accuracy_a[s] - accuracy_b[s] for s in seeds])
    return {"seeds": seeds, "mean": mean, "std": std, "ci95": [low, high]}


def difference_verdict(difference, better="better", worse="worse"):
    """A paired difference A - B read from its 95% interval."""
    if len(difference["seeds"]) < 2:
        return "one seed: no interval"
    if difference["std"] == 0:
        return NO_SPREAD
    low, high = difference["ci95"]
    return better if low > 0 else worse if high < 0 else "no difference shown"


def judge_claim(c, accuracy_a, accuracy_b):
    """``c`` judged on {seed: accuracy} of its two rows, paired by the seeds both have.

    held: the 95% interval of A - B is above 0 (``>``), or above -AT_OR_ABOVE_TOLERANCE (``>=``);
    contradicted: the interval is below 0 (B above A); otherwise not shown."""
    difference = paired_difference(accuracy_a, accuracy_b)
    if difference is None:
        return dict(c, seeds=[], verdict="not run")
    judged = dict(c, **difference)
    if len(difference["seeds"]) < 2:
        return dict(judged, verdict="not shown (one seed)")
    if difference["std"] == 0:
        return dict(judged, verdict=f"not shown ({NO_SPREAD})")
    low, high = difference["ci95"]
    floor = 0.0 if c["relation"] == ">" else -AT_OR_ABOVE_TOLERANCE
    verdict = "held" if low > floor else "contradicted" if high < 0 else "not shown"
    return dict(judged, verdict=verdict)


def summarize(suite_name, suite, records, score="final"):
    """Per variant: seeds, mean/std accuracy, samples/s, and the paired difference to the baseline;
    the papers' claims. ``score``: the records' "final" (the 600 pairs) or "final_extended" (the
    extended pairs; records without it are left out)."""
    by_variant = {}
    for r in records:
        if score in r:
            by_variant.setdefault(r["variant"], {})[r["seed"]] = r

    def accuracies(name):
        return {s: r[score]["accuracy"] for s, r in by_variant.get(name, {}).items()}

    rows = []
    for v in suite["variants"]:
        runs = by_variant.get(v["name"], {})
        accs = [runs[s][score]["accuracy"] for s in sorted(runs)]
        row = {"variant": v["name"], "change": v["change"], "seeds": sorted(runs),
               "accuracy_mean": float(np.mean(accs)) if accs else None,
               "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
               "samples_per_sec": float(np.mean([runs[s]["samples_per_sec"] for s in runs])) if runs else None,
               "steps": sorted({runs[s]["steps"] for s in runs}),
               "train_minutes": float(np.mean([runs[s]["train_wall_s"] for s in runs]) / 60) if runs else None}
        difference = paired_difference(accuracies(v["name"]), accuracies("baseline"))
        if v["name"] != "baseline" and difference:
            row["paired"] = dict(difference, verdict=difference_verdict(difference))
        rows.append(row)

    claims = [judge_claim(c, accuracies(c["a"]), accuracies(c["b"])) for c in suite.get("claims", ())]
    return {"suite": suite_name, "issue": suite["issue"], "description": suite["description"],
            "config": suite["config"], "recipe": suite["recipe"], "planned_seeds": suite["seeds"], "rows": rows,
            "claims": claims}


def render_table(rows):
    def fmt(x, digits=4):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    table = []
    for row in rows:
        p = row.get("paired")
        if p:
            diff = f"{p['mean']:+.4f}"
            interval = "" if math.isnan(p["ci95"][0]) else f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
            verdict = p["verdict"]
        else:
            diff = interval = verdict = ""
        acc = fmt(row["accuracy_mean"])
        if row["accuracy_std"] is not None:
            acc += f" ± {row['accuracy_std']:.4f}"
        table.append([row["variant"], row["change"], len(row["seeds"]), acc, diff, interval, verdict,
                      fmt(row["samples_per_sec"], 1), ",".join(str(s) for s in row["steps"])])
    return common.markdown_table(["variant", "change", "seeds", "held-out accuracy (mean ± std)",
                                  "paired diff. to baseline", "95% interval", "verdict", "samples/s", "steps"], table)


def render(summary, split_note="", pairs=600):
    lines = [
        f"## Suite `{summary['suite']}` (issue {summary['issue']})", "",
        f"{summary['description']}. Config {summary['config']} + `{' '.join(summary['recipe'])}`; "
        f"planned seeds {summary['planned_seeds']} (train.seed: initialisation and data order).", "",
        split_note,
        "",
        render_table(summary["rows"]), "",
        "Paired by seed: the same seed gives the baseline and the variant the same initial draw and data "
        "order where the change allows. The interval is Student's t over the paired differences (n - 1 "
        "degrees of freedom): with 2 seeds (t = 12.7) only a large, consistent difference can exclude 0. " +
        common.noise_note(pairs),
        "",
    ] + render_claims(summary.get("claims", ()))
    extended = summary.get("extended")
    if extended:
        lines += [
            f"### On the extended held-out pairs ({extended['pairs']} pairs)", "",
            f"The same held-out people, more pairs of them: up to {common.EXTENDED_SAME_PER_PERSON} same pairs "
            "per person (all of its image pairs when it has fewer), dealt into 10 person-disjoint folds of "
            "equal same and different pairs (`common.draw_extended_pairs`), so that a run's score carries "
            "less pair-sampling noise. Each run's exported model is scored by tools/verify.py (float32) at "
            "the run's end; earlier runs whose model was still on the machine were scored by `--rescore` "
            "(after scoring the record's 600 pairs again); runs without either are not in this table, so "
            "its seed counts can be lower. " +
            common.noise_note(extended["pairs"]), "",
            render_table(extended["rows"]), "",
        ] + render_claims(extended["claims"], "The papers' claims on the extended pairs")
    return "\n".join(lines + [
        f"Command: `python bench/suite.py --suite {summary['suite']}` (resumes; `--render` rebuilds this table; "
        "`--rescore` scores kept models on the extended pairs).",
    ])


def render_claims(claims, title="The papers' claims"):
    """The papers' claims as a table and the rule behind the verdicts (no lines where there are none)."""
    if not claims:
        return []
    table = []
    for c in claims:
        interval = "" if "ci95" not in c or math.isnan(c["ci95"][0]) else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        table.append([c["paper"], c["claim"], f"{c['a']} {c['relation']} {c['b']}", ",".join(map(str, c["seeds"])),
                      f"{c['mean']:+.4f}" if "mean" in c else "", interval, c["verdict"]])
    return [
        f"### {title}", "",
        common.markdown_table(["paper", "claim", "rows", "paired seeds", "mean A - B", "95% interval", "verdict"],
                              table), "",
        f"held: the 95% interval of A - B (paired by seed, Student's t) lies above 0 for 'above', above "
        f"-{AT_OR_ABOVE_TOLERANCE:g} for 'at or above'; contradicted: it lies below 0; not shown: neither "
        "(including every claim with fewer than 2 paired seeds).", "",
    ]


def render_all(out_root, suite_name):
    suite = SUITES[suite_name]
    records = read_records(out_root, suite_name)
    summary = summarize(suite_name, suite, records)
    note = ""
    if records:
        note = "Data: " + common.split_description(records[0]["split"]) + "."
        if any(r["split"].get("train_fraction", 1.0) != 1.0 or r["split"]["min_train_images"] != 1 for r in records):
            note += " Variants that change the training people say so in their row; the held-out pairs are the same."
    summary["records"] = len(records)
    extended = [r for r in records if "final_extended" in r]
    if extended:
        pairs = sorted({r["final_extended"]["pairs"] for r in extended})
        if len(pairs) > 1:
            raise SystemExit(f"suite {suite_name}: records scored on extended pair sets of different sizes {pairs}")
        part = summarize(suite_name, suite, extended, score="final_extended")
        summary["extended"] = {"pairs": pairs[0], "rows": part["rows"], "claims": part["claims"]}
    prefix = os.path.join(out_root, f"suite_{suite_name}")
    text = render(summary, note, records[0]["split"]["pairs"] if records else 600)
    os.makedirs(out_root, exist_ok=True)
    if suite.get("plot") == "training_images" and records:
        plot_against_training_images(summary, records, prefix + ".png")
        text += (f"\n\nFigure: `suite_{suite_name}.png` (held-out accuracy against the number of training "
                 "images, log scale, on the 600 pairs and, where runs have them, the extended pairs; one dot per "
                 "seed, the line through the means of the rows that keep every person's photos; squares: rows "
                 "that leave people with few photos out).")
    write_text_atomic(prefix + ".json", json.dumps(summary, indent=1) + "\n")
    write_text_atomic(prefix + ".md", text + "\n")
    return text


def plot_against_training_images(summary, records, path):
    """The data-scaling curve: each seed's held-out accuracy at its training-image count; rows that drop
    people by a share (train_fraction) form the curve, others (e.g. singletons left out) stand apart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # one panel per score: the 600 pairs, and the extended pairs where any run has them
    scores = [("final", f"{records[0]['split']['pairs']} pairs")]
    extended = [r["final_extended"]["pairs"] for r in records if "final_extended" in r]
    if extended:
        scores.append(("final_extended", f"{extended[0]} extended pairs"))
    fig, axes = plt.subplots(1, len(scores), figsize=(6 * len(scores), 4), squeeze=False)
    for ax, (score, pairs) in zip(axes[0], scores):
        by_variant = {}
        for r in records:
            if score in r:
                by_variant.setdefault(r["variant"], []).append(r)
        curve = []
        for i, row in enumerate(summary["rows"]):
            runs = by_variant.get(row["variant"], [])
            if not runs:
                continue
            images = [r["split"]["train_images"] for r in runs]
            accs = [r[score]["accuracy"] for r in runs]
            on_curve = all(r["split"]["min_train_images"] == 1 for r in runs)
            label = f"{row['variant']}: {runs[0]['split']['train_people']} people, {len(runs)} seed(s)"
            ax.scatter(images, accs, color=f"C{i}", marker="o" if on_curve else "s", label=label, zorder=3)
            if on_curve:
                curve.append((float(np.mean(images)), float(np.mean(accs))))
        if len(curve) > 1:
            xs, ys = zip(*sorted(curve))
            ax.plot(xs, ys, color="0.5", zorder=2)
        ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.set_ylabel(f"held-out accuracy ({pairs})")
        ax.set_title(f"suite {summary['suite']}: {summary['config']} + {' '.join(summary['recipe'][:1])}",
                     fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def planned_runs(suite, only=None, seeds=None):
    names = [v["name"] for v in suite["variants"]]
    for name in only or ():
        if name not in names:
            raise SystemExit(f"suite: no variant {name!r} (have: {', '.join(names)})")
    # variant by variant (all seeds of one before the next), so that finished rows are paired
    return [(v, s) for v in suite["variants"] if not only or v["name"] in only for s in (seeds or suite["seeds"])]


def run_dir(work_dir, suite_name, name, seed):
    return os.path.join(work_dir, "suite", suite_name, f"{name}_seed{seed}")


def kept_run(record, work_dir):
    """(file name, label, folder) of the run a record describes, whose exported model is folder/model:
    a suite run, or bench/product_goal.py's (for the benchmarks that score kept models)."""
    if record.get("benchmark") == "product_goal":
        return "product_goal", "product_goal (configs/lfw_devtrain.yaml)", os.path.join(work_dir, "product_goal")
    return (f"{record['suite']}_{record['variant']}_seed{record['seed']}",
            f"{record['suite']}:{record['variant']} seed {record['seed']}",
            run_dir(work_dir, record["suite"], record["variant"], record["seed"]))


def start_network(work_dir, suite_name, v, seed):
    """The final checkpoint of the same-seed run of ``v['start_from']`` (work_dirs, not in git)."""
    from recognition.engine.checkpoint import latest_state
    folder = run_dir(work_dir, suite_name, v["start_from"], seed)
    state = latest_state(folder) if os.path.isdir(folder) else None
    if not state:
        raise SystemExit(f"suite {suite_name}: {v['name']} starts from {v['start_from']} seed {seed}, whose "
                         f"checkpoint is not in {folder} (work dirs are not kept in git): delete its record "
                         f"in bench/results/suite_{suite_name}/ to train it again")
    return state


def run_overrides(suite, v, seed, extra):
    return suite["recipe"] + v["overrides"] + list(extra) + [f"train.seed={seed}"]


def finished(out_root, suite_name, v, seed, extra):
    """Whether the record of (v, seed) exists; stops if it was made with other overrides."""
    path = record_path(out_root, suite_name, v["name"], seed)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        made_with = json.load(f).get("overrides")
    if made_with is None or settings(made_with) != settings(run_overrides(SUITES[suite_name], v, seed, extra)):
        raise SystemExit(f"suite: {path}: made with other overrides ({' '.join(made_with or [])}); "
                         "use another --out-root for this recipe")
    return True


def run_one(args, suite_name, variant_name, seed):
    """Train one (variant, seed) in this process and write its record."""
    suite = SUITES[suite_name]
    v = next(v for v in suite["variants"] if v["name"] == variant_name)
    split_args = argparse.Namespace(**vars(args))
    for key, value in {**suite.get("split", {}), **v["split"]}.items():
        setattr(split_args, key, value)
    manifest, env = common.start(split_args)
    home, home_name = home_row(suite_name, v)  # a shared row trains as its home row
    out_dir = run_dir(args.work_dir, home, home_name, seed)
    config_path = os.path.join(common.REPO, row_config(suite, v))
    pretrained = start_network(args.work_dir, suite_name, v, seed) if v["start_from"] else None
    recipe = run_overrides(suite, v, seed, args.set)  # what the record names; the paths below are this machine's
    overrides = ([f"data.root={manifest['rec']}", f"verification.bins={manifest['bin']}", f"output.dir={out_dir}",
                  f"data.num_workers={args.workers}"] + recipe)
    common.log(f"suite {suite_name}: {variant_name} seed {seed} ({v['change']})")
    results, wall, config = common.run_training(config_path, overrides, pretrained=pretrained)
    record = {"suite": home, "variant": home_name, "seed": seed, "change": v["change"],
              "config": row_config(suite, v), "start_from": v["start_from"], "overrides": recipe,
              "split": manifest, "environment": env, "final": common.verification_row(results),
              "steps": int(results.get("steps", config.train.max_steps)),
              "train_wall_s": round(wall, 1), "samples_per_sec": common.throughput(out_dir),
              "time_budget": results.get("time_budget"), "commit": _commit(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    extended = score_extended(record, out_dir, args.threads)
    if extended:
        record["final_extended"] = extended
    path = record_path(args.out_root, suite_name, variant_name, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    common.log(f"suite {suite_name}: {variant_name} seed {seed}: accuracy {record['final']['accuracy']:.4f} "
               f"in {wall / 60:.1f} min -> {path}")


def another_model(again, recorded):
    """Why a kept model's scores on a record's held-out pairs (``again``) say it is not the model the
    record scored, or None: a float32 rescore of the same model lands within 0.01 in accuracy and 1%
    in XNorm of a bfloat16 one (two bfloat16 trainings of one seed may differ by more: they are not bit-reproducible)."""
    if abs(again["accuracy"] - recorded["accuracy"]) <= 0.01 and \
            abs(again["xnorm"] - recorded["xnorm"]) <= 0.01 * recorded["xnorm"]:
        return None
    return (f"scores {again['accuracy']:.4f} (XNorm {again['xnorm']:.2f}) on the record's held-out "
            f"pairs, the record {recorded['accuracy']:.4f} ({recorded['xnorm']:.2f})")


def score_extended(record, out_dir, threads, check=False):
    """The run's exported model (``out_dir``/model) scored by tools/verify.py on the split's extended
    held-out pairs (``common.extended_bin``), float32 as a user's verify.py would (the trainer's
    own final score uses the training precision: bfloat16 moves it by a pair or a few). With
    ``check``, the model must first score the record's 600 pairs as recorded (within 0.01 in
    accuracy and 1% in XNorm, what the precision allows): a run directory reused by another run
    holds another model. Returns the scores with the pair count, or None (with the reason logged)."""
    model = os.path.join(out_dir, "model")
    name = f"{record['variant']} seed {record['seed']}"
    if not os.path.isfile(model + "-symbol.json"):
        common.log(f"extended pairs: {name}: no exported model under {out_dir}; not scored")
        return None
    extended, pairs = common.extended_bin(record["split"])
    if not extended:
        common.log(f"extended pairs: {name}: too few held-out people for the extended pairs; not scored")
        return None
    with open(os.path.join(out_dir, "config.json")) as f:
        verification = json.load(f)["verification"]
    bins = ([record["split"]["bin"]] if check else []) + [extended]
    scores = verify_model(model, bins, verification, threads)
    if check:
        mismatch = another_model(scores[0], record["final"])
        if mismatch:
            common.log(f"extended pairs: {name}: the model under {out_dir} {mismatch}: another run's model; not scored")
            return None
    common.log(f"extended pairs: {name}: {record['final']['accuracy']:.4f} on {record['split']['pairs']} pairs, "
               f"{scores[-1]['accuracy']:.4f} on {pairs}")
    return dict(common.scores_row(scores[-1]), pairs=pairs)


def rescore(args, suite_name):
    """Score the kept model of every record of ``suite_name`` that lacks it on the extended pairs."""
    for v in SUITES[suite_name]["variants"]:
        if v["same_as"]:
            continue  # its home suite rescores it
        for path in sorted(glob.glob(os.path.join(results_dir(args.out_root, suite_name), f"{v['name']}_seed*.json"))):
            with open(path) as f:
                record = json.load(f)
            if record["variant"] != v["name"] or "final_extended" in record:
                continue
            extended = score_extended(record, run_dir(args.work_dir, suite_name, v["name"], record["seed"]),
                                      args.threads, check=True)
            if extended:
                record["final_extended"] = extended
                write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def row_records(out_root, spec):
    """{seed: record} of the row ``SUITE:VARIANT``."""
    suite, _, name = spec.partition(":")
    if suite not in SUITES or not any(v["name"] == name for v in SUITES[suite]["variants"]):
        raise SystemExit(f"--compare: {spec}: no such row (SUITE:VARIANT; --list shows them)")
    return {r["seed"]: r for r in read_records(out_root, suite) if r["variant"] == name}


CONFIG_VALUE = "(the config's)"

# what a record's split says about its held-out pairs (the training side may differ between compared rows)
HELD_OUT_KEYS = ("data", "fallback_to_sample", "heldout_people", "split_seed", "pairs")


def compare_rows(out_root, spec_a, spec_b):
    """Two rows of any suites (``SUITE:VARIANT``) paired by seed, on the 600 pairs and the extended
    pairs, after checking that every run of both was scored on the same held-out pairs; with what
    their recipes and training data differ in. Markdown."""
    a, b = row_records(out_root, spec_a), row_records(out_root, spec_b)
    if not a or not b:
        raise SystemExit(f"--compare: {spec_a if not a else spec_b}: no finished runs")
    held_out = {tuple(r["split"][k] for k in HELD_OUT_KEYS) for r in list(a.values()) + list(b.values())}
    if len(held_out) > 1:
        raise SystemExit(f"--compare: {spec_a} and {spec_b} were scored on different held-out pairs "
                         f"({', '.join(HELD_OUT_KEYS)}: {sorted(held_out)})")

    def recipe(r):
        """The overrides as the trainer applies them (the last of a key wins), the config and the training data."""
        settings = last_values(o for o in r["overrides"] if not o.startswith("train.seed="))
        settings.update({"config": r["config"], "start_from": r.get("start_from")},
                        **{f"split.{k}": r["split"].get(k) for k in ("min_train_images", "train_fraction",
                                                                     "train_people", "train_images")})
        return settings

    ra, rb = recipe(next(iter(a.values()))), recipe(next(iter(b.values())))
    # a key one row does not override keeps the value of that row's config
    differs = [[k, ra.get(k, CONFIG_VALUE), rb.get(k, CONFIG_VALUE)] for k in sorted(set(ra) | set(rb))
               if ra.get(k) != rb.get(k)]
    table = []
    for score in ("final", "final_extended"):
        acc_a = {s: r[score]["accuracy"] for s, r in a.items() if score in r}
        acc_b = {s: r[score]["accuracy"] for s, r in b.items() if score in r}
        difference = paired_difference(acc_a, acc_b)
        if difference is None:
            continue
        pairs = next(r[score].get("pairs", r["split"]["pairs"]) for r in a.values() if score in r)
        seeds = difference["seeds"]

        def mean_std(acc):
            values = [acc[s] for s in seeds]
            return f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")

        interval = "" if math.isnan(difference["ci95"][0]) else \
            f"[{difference['ci95'][0]:+.3f}, {difference['ci95'][1]:+.3f}]"
        table.append([pairs, ",".join(map(str, seeds)), mean_std(acc_a), mean_std(acc_b), f"{difference['mean']:+.4f}",
                      interval, difference_verdict(difference, f"{spec_a} above", f"{spec_b} above")])
    return "\n".join([
        f"### {spec_a} against {spec_b}", "",
        "Where they differ:", "", common.markdown_table(["setting", spec_a, spec_b], differs), "",
        common.markdown_table(["held-out pairs", "paired seeds", spec_a, spec_b, "mean A - B", "95% interval",
                               "verdict"], table), "",
        "Paired by seed (the seeds both rows have); the interval is Student's t over the paired differences.",
    ])


def verify_model(model, bins, verification, threads):
    """tools/verify.py's scores of an exported model on ``bins``, with the run's flip and batch size."""
    argv = [sys.executable, os.path.join(common.REPO, "tools", "verify.py"), "--model", model, "--bin", ",".join(bins),
            "--flip", verification["flip"], "--batch-size", str(verification["batch_size"]), "--json",
            "--no-progress", "--cpu"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"extended pairs: {model}: tools/verify.py failed: {done.stderr.strip().splitlines()[-1:]}")
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    return [scores[os.path.splitext(os.path.basename(path))[0]] for path in bins]


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="ablations")
    p.add_argument("--only", nargs="*", metavar="VARIANT", help="run only these variants (default: all)")
    p.add_argument("--seeds", type=int, nargs="*", help="seeds to run (default: the suite's)")
    p.add_argument("--max-runs", type=int, default=0, help="stop after this many new runs (0: all missing)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides after the suite's (e.g. a shorter trial; use another --out-root)")
    p.add_argument("--list", action="store_true", help="print the suites, their variants and what has finished")
    p.add_argument("--render", action="store_true", help="only rebuild suite_NAME.md/.json from the records")
    p.add_argument("--rescore", action="store_true",
                   help="score the kept models of finished runs on the extended held-out pairs (more pairs of "
                        "the same held-out people), then render; new runs score them as they finish")
    p.add_argument("--compare", nargs=2, metavar=("SUITE:VARIANT", "SUITE:VARIANT"),
                   help="print two rows of any suites paired by seed (e.g. heads:baseline mining:pretrained: the "
                        "same recipe on fewer people), on both sets of held-out pairs; runs nothing")
    p.add_argument("--out-root", default=common.RESULTS_DIR, help="records go to OUT_ROOT/suite_NAME/")
    p.add_argument("--run-one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    common.add_split_args(p)
    p.set_defaults(min_train_images=1, threads=2)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_shared_rows()
    suite = SUITES[args.suite]
    if args.run_one:
        return run_one(args, args.suite, args.run_one[0], int(args.run_one[1]))
    if args.compare:
        print(compare_rows(args.out_root, *args.compare))
        return
    if args.list:
        for name, s in SUITES.items():
            done = {(r["variant"], r["seed"]) for r in read_records(args.out_root, name)}
            print(f"{name} (issue {s['issue']}): {s['description']}")
            for v in s["variants"]:
                seeds = [seed for seed in s["seeds"] if (v["name"], seed) in done]
                print(f"  {v['name']:<16} {v['change']}  [finished seeds: {seeds or 'none'}]")
        return
    if args.rescore:
        rescore(args, args.suite)
    elif not args.render:
        todo = [(v, s) for v, s in planned_runs(suite, args.only, args.seeds)
                if not finished(args.out_root, args.suite, v, s, args.set)]
        if args.max_runs:
            todo = todo[:args.max_runs]
        common.log(f"suite {args.suite}: {len(todo)} runs to do")
        # the child gets the whole command line: it acts on --run-one alone (a later --suite wins)
        passthrough = list(argv if argv is not None else sys.argv[1:])
        for i, (v, seed) in enumerate(todo, 1):
            common.log(f"suite {args.suite}: run {i}/{len(todo)}")
            # a fresh process per run: one run's MXNet state, threads or failure cannot leak into the next
            done = subprocess.run([sys.executable, os.path.abspath(__file__)] + passthrough +
                                  ["--suite", args.suite, "--run-one", v["name"], str(seed)])
            if done.returncode != 0:
                raise SystemExit(f"suite {args.suite}: {v['name']} seed {seed} failed (exit {done.returncode}); "
                                 "finished runs are kept, run the same command again to continue")
            render_all(args.out_root, args.suite)
    print(render_all(args.out_root, args.suite))


if __name__ == "__main__":
    main()
