"""IJB-B/IJB-C template evaluation (tools/eval_ijb.py, recognition/evaluation/ijb.py) on a small
IJB-format set built here from the committed LFW sample, checked against NumPy computations
written below (insightface's per-template loops, a threshold-by-threshold ROC, a probe-by-probe
search), single-process and under a real 2-worker horovodrun.

Run as a script it writes that set: ``python tests/test_ijb.py OUT [--pairs-people PAIRS.txt]``.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))
sys.path.insert(0, os.path.dirname(HERE))

from conftest import ROOT, SAMPLE, horovod_failure, run_horovod  # noqa: E402
from recognition.data.align import align_face, read_landmarks  # noqa: E402
from recognition.evaluation.ijb import (TemplateAggregator, identification_report, ijb_paths,  # noqa: E402
                                        pair_scores, roc, tar_at_far, verification_report)

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (1e-2, 1e-1)
CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"


# ----------------------------------------------------------------------------------------------
# The IJB-format set from the LFW sample


def sample_people():
    root = os.path.join(SAMPLE, "images")
    return {p: sorted(os.listdir(os.path.join(root, p))) for p in sorted(os.listdir(root))}


def split_templates(photos):
    """A person's photos -> templates, each a list of media, each a list of photos: with 6 photos
    a gallery template of a two-frame media and a still, a probe of two stills, a probe of one;
    with fewer, the first half as gallery and the rest as one probe, one media per photo."""
    if len(photos) >= 6:
        return [[photos[0:2], photos[2:3]], [photos[3:4], photos[4:5]], [photos[5:6]]]
    half = (len(photos) + 1) // 2
    return [[[p] for p in photos[:half]], [[p] for p in photos[half:]]]


def build_ijb(out, people, target="IJBC", seed=0):
    """Write an IJB-format folder (released file names and formats) at ``out``: every photo a
    loose crop (the 128x128 sample photo inside a margin of random width, its five points moved
    with it, a random detector score), templates as :func:`split_templates`, 1:1 pairs of every
    gallery template with every probe (and a person's two probes), galleries G1/G2 (S1/S2 for
    IJB-B) of alternate people, every probe in probe_mixed."""
    rng = np.random.RandomState(seed)
    landmarks = read_landmarks(os.path.join(SAMPLE, "landmarks.txt"))
    prefix = target.lower()
    os.makedirs(os.path.join(out, "loose_crop"))
    os.makedirs(os.path.join(out, "meta"))
    pts_lines, media_lines, gallery_rows, probe_rows = [], [], ([], []), []
    galleries, probes = [], []  # (template, subject)
    crop, template, media = 0, 100, 5000
    for subject, (person, photos) in enumerate(people.items(), 1):
        for k, medias in enumerate(split_templates(photos)):
            template += int(rng.randint(1, 4))  # ids with gaps, as IJB's
            (galleries if k == 0 else probes).append((template, subject))
            for frames in medias:
                media += int(rng.randint(1, 3))
                for photo in frames:
                    crop += 1
                    name = f"{crop}.jpg"
                    image = cv2.imread(os.path.join(SAMPLE, "images", person, photo))
                    top, bottom, left, right = (int(v) for v in rng.randint(0, 25, 4))
                    loose = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT)
                    cv2.imwrite(os.path.join(out, "loose_crop", name), loose, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    points = landmarks[f"{person}/{photo}"] + np.array([left, top])
                    score = rng.uniform(0.5, 1.0)
                    pts_lines.append(" ".join([name] + [f"{v:.3f}" for v in points.ravel()] + [f"{score:.6f}"]))
                    media_lines.append(f"{name} {template} {media}")
                    kind = "frames" if len(frames) > 1 else "img"
                    row = f"{template},{subject},{kind}/{crop}.jpg,{subject},{left},{top},128,128"
                    if k == 0:
                        gallery_rows[subject % 2].append(row)
                    else:
                        probe_rows.append(row)
    pairs = []
    for g, gs in galleries:
        pairs += [(g, p, int(gs == ps)) for p, ps in probes]
    by_subject = {}
    for p, ps in probes:
        by_subject.setdefault(ps, []).append(p)
    pairs += [(ts[0], ts[1], 1) for ts in by_subject.values() if len(ts) > 1]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    meta = os.path.join(out, "meta")
    names = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}[target]

    def write(name, lines, header=None):
        with open(os.path.join(meta, name), "w") as f:
            f.write("".join(f"{line}\n" for line in ([header] if header else []) + lines))
    write(f"{prefix}_name_5pts_score.txt", pts_lines)
    write(f"{prefix}_face_tid_mid.txt", media_lines)
    write(f"{prefix}_template_pair_label.txt", [f"{a} {b} {c}" for a, b, c in pairs])
    write(f"{prefix}_1N_gallery_{names[0]}.csv", gallery_rows[1], CSV_HEADER)  # odd subjects
    write(f"{prefix}_1N_gallery_{names[1]}.csv", gallery_rows[0], CSV_HEADER)
    write(f"{prefix}_1N_probe_mixed.csv", probe_rows, CSV_HEADER)
    return {"crops": crop, "pairs": len(pairs), "templates": len(galleries) + len(probes)}


def pairs_people(path):
    """The people an LFW pairs file names (``name i j`` and ``name1 i name2 j`` lines)."""
    names = set()
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 3:
                names.add(fields[0])
            elif len(fields) == 4:
                names.update((fields[0], fields[2]))
    return names


# ----------------------------------------------------------------------------------------------
# Independent NumPy versions


def read_meta(root, target="IJBC"):
    p = target.lower()
    with open(os.path.join(root, "meta", f"{p}_name_5pts_score.txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    names = [r[0] for r in rows]
    points = np.array([[float(v) for v in r[1:11]] for r in rows]).reshape(-1, 5, 2)
    scores = np.array([float(r[11]) for r in rows])
    with open(os.path.join(root, "meta", f"{p}_face_tid_mid.txt")) as f:
        tm = np.array([[int(v) for v in line.split()[1:]] for line in f if line.strip()])
    pairs = np.loadtxt(os.path.join(root, "meta", f"{p}_template_pair_label.txt"), dtype=int)
    return names, points, scores, tm[:, 0], tm[:, 1], pairs


def read_csv_subjects(path):
    with open(path) as f:
        rows = [line.strip().split(",") for line in f][1:]
    out = {}
    for r in rows:
        out[int(r[0])] = int(r[1])
    return out


def insightface_templates(img_feats, templates, medias):
    """insightface's image2template_feature, loop for loop."""
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = img_feats[ind_t], medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(face_feats[ind_m][0] if ct == 1 else np.mean(face_feats[ind_m], axis=0))
        template_feats[count] = np.sum(np.array(media_feats), axis=0)
    norms = np.sqrt(np.sum(template_feats ** 2, -1, keepdims=True))
    return template_feats / norms, unique_templates


def brute_roc(scores, labels):
    """The ROC threshold by threshold (accept score >= t), then scikit-learn's drop of points
    whose step equals the next step, then (0, 0) in front."""
    thresholds = sorted(set(scores.tolist()), reverse=True)
    tps = [int(np.sum((scores >= t) & labels)) for t in thresholds]
    fps = [int(np.sum((scores >= t) & ~labels)) for t in thresholds]
    keep = [i for i in range(len(tps))
            if i in (0, len(tps) - 1) or (fps[i + 1] - fps[i], tps[i + 1] - tps[i]) != (fps[i] - fps[i - 1], tps[i] - tps[i - 1])]
    fpr = np.array([0.0] + [fps[i] / fps[-1] for i in keep])
    tpr = np.array([0.0] + [tps[i] / tps[-1] for i in keep])
    return fpr, tpr


def brute_tar(scores, labels, far):
    """insightface's table cell: flip the ROC, the point nearest the FAR (first in flipped order)."""
    fpr, tpr = brute_roc(scores, np.asarray(labels, bool))
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, index = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[index]


def brute_identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects):
    """Probe by probe: each gallery subject's best template score, the mate's rank, the top score."""
    out = {"rank": [], "mate": [], "top_non_mated": []}
    subjects = sorted(set(int(s) for s in gallery_subjects))
    for feat, subject in zip(probe_feats, probe_subjects):
        best = {s: max(float(feat @ g) for g, gs in zip(gallery_feats, gallery_subjects) if gs == s) for s in subjects}
        if subject in best:
            out["rank"].append(1 + sum(1 for s, v in best.items() if s != subject and v > best[subject]))
            out["mate"].append(best[subject])
        else:
            out["top_non_mated"].append(max(best.values()))
    rank, mate = np.array(out["rank"]), np.array(out["mate"])
    result = {f"rank_{k}": float(np.mean(rank <= k)) for k in (1, 5, 10)}
    tops = sorted(out["top_non_mated"], reverse=True)
    for f in FPIRS:
        key = f"{f:.0e}".replace("e-0", "e-")
        if not tops:
            continue
        allowed = int(math.floor(f * len(tops) + 1e-9))  # false alarms allowed
        t = tops[allowed] if allowed < len(tops) else -np.inf
        assert sum(1 for v in tops if v > t) <= allowed
        result[f"tpir_at_fpir_{key}"] = float(np.mean((rank == 1) & (mate > t)))
    return result


# ----------------------------------------------------------------------------------------------
# Fixtures


def tool(*args, timeout=180):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_ijb.py")] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def small_people():
    people = sample_people()
    six = [p for p, photos in people.items() if len(photos) >= 6][:10]
    two = [p for p, photos in people.items() if len(photos) == 2][:10]
    return {p: people[p] for p in sorted(six + two)}


@pytest.fixture(scope="module")
def ijb(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ijb") / "IJBC")
    info = build_ijb(root, small_people())
    return root, info


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from eval_tiny_net import build_tiny_net
    prefix = str(tmp_path_factory.mktemp("model") / "tiny")
    net = build_tiny_net(seed=21)
    net(mx.nd.zeros((1, 3, 112, 112)))
    net.export(prefix, epoch=3)
    return net, prefix


@pytest.fixture(scope="module")
def expected(ijb, model):
    """The whole evaluation recomputed here: crops aligned and embedded (plain + mirror summed),
    insightface's aggregation, pair cosines, the brute-force table and search."""
    from recognition.evaluation import embed_images
    root, _ = ijb
    net, _ = model
    names, points, scores, templates, medias, pairs = read_meta(root)
    faces = np.stack([align_face(cv2.cvtColor(cv2.imread(os.path.join(root, "loose_crop", n)), cv2.COLOR_BGR2RGB),
                                 p, 112) for n, p in zip(names, points)])
    feats = embed_images(net, faces, 32, "sum").astype(np.float64)
    tfeats, tids = insightface_templates(feats * scores[:, None], templates, medias)
    row = {t: i for i, t in enumerate(tids)}
    cosines = np.array([tfeats[row[a]] @ tfeats[row[b]] for a, b, _ in pairs])
    labels = pairs[:, 2].astype(bool)
    verification = {f"tar_at_far_{f:.0e}".replace("e-0", "e-"): brute_tar(cosines, labels, f) for f in FARS}
    subjects = {n: read_csv_subjects(os.path.join(root, "meta", f"ijbc_1N_{n}.csv"))
                for n in ("gallery_G1", "gallery_G2", "probe_mixed")}
    probe_ids = sorted(subjects["probe_mixed"])
    probe_feats = tfeats[[row[t] for t in probe_ids]]
    probe_subj = [subjects["probe_mixed"][t] for t in probe_ids]
    ident = {}
    for g in ("G1", "G2"):
        ids = sorted(subjects[f"gallery_{g}"])
        ident[g] = brute_identification(probe_feats, probe_subj, tfeats[[row[t] for t in ids]],
                                        [subjects[f"gallery_{g}"][t] for t in ids])
    both = {**subjects["gallery_G1"], **subjects["gallery_G2"]}
    ids = sorted(both)
    ident["G1+G2"] = brute_identification(probe_feats, probe_subj, tfeats[[row[t] for t in ids]], [both[t] for t in ids])
    return {"scores": cosines, "labels": labels, "verification": verification, "identification": ident,
            "features": feats, "template_features": tfeats, "template_ids": tids}


@pytest.fixture(scope="module")
def single_run(ijb, model, tmp_path_factory):
    root, _ = ijb
    out = tmp_path_factory.mktemp("run")
    proc = tool("--model", model[1], "--root", root, "--json", "--roc", out / "roc.png", "--scores",
                out / "scores.npy", "--chunk", "24", "--batch-size", "16", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


# ----------------------------------------------------------------------------------------------
# Tests


def test_help():
    proc = tool("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage:") and "--target" in proc.stdout


def test_roc_and_tar_at_far_against_threshold_by_threshold():
    """Scores with ties (rounded), enough impostors for FAR 1e-4: every table cell and the ROC
    equal the brute-force ones."""
    rng = np.random.RandomState(0)
    genuine, impostor = rng.normal(0.6, 0.15, 600), rng.normal(0.1, 0.12, 12000)
    scores = np.round(np.r_[genuine, impostor], 3)
    labels = np.r_[np.ones(600, bool), np.zeros(12000, bool)]
    order = rng.permutation(len(scores))
    scores, labels = scores[order], labels[order]
    fpr, tpr, thresholds = roc(scores, labels)
    bf, bt = brute_roc(scores, labels)
    np.testing.assert_allclose(fpr, bf, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, bt, rtol=0, atol=1e-15)
    assert np.isinf(thresholds[0]) and np.all(np.diff(thresholds[1:]) < 0)
    report = verification_report(scores, labels)
    for far in FARS + (3e-3, 0.5):
        key = f"{far:.0e}".replace("e-0", "e-")
        assert tar_at_far(fpr, tpr, far)[1] == brute_tar(scores, labels, far), far
        if far in FARS:
            assert report[f"tar_at_far_{key}"] == brute_tar(scores, labels, far)
    assert report["genuine"] == 600 and report["impostor"] == 12000
    # AUC = probability that a genuine pair outscores an impostor (ties count half)
    g, i = scores[labels], scores[~labels]
    wins = (g[:, None] > i[None, :]).mean() + 0.5 * (g[:, None] == i[None, :]).mean()
    assert report["auc"] == pytest.approx(wins, abs=1e-12)


def test_streamed_aggregation_equals_insightface_loops():
    """Crops of interleaved templates and media, added in uneven chunks, with detector scores
    and with per-crop normalisation (N0)."""
    rng = np.random.RandomState(1)
    n = 157
    templates = rng.randint(0, 12, n) * 7 + 3
    medias = rng.randint(0, 4, n) + 100 * templates  # several media per template
    medias[::5] = 9  # and one media id that several templates share
    feats = rng.randn(n, 10)
    scores = rng.uniform(0.3, 1.0, n)
    for normalize in (False, True):
        agg = TemplateAggregator(templates, medias, scores, normalize)
        start = 0
        for size in (1, 7, 30, 0, 64, 55):
            agg.add(start, feats[start:start + size])
            start += size
        ids, got = agg.result()
        x = feats / np.linalg.norm(feats, axis=1, keepdims=True) if normalize else feats
        want, want_ids = insightface_templates(x * scores[:, None], templates, medias)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not added"):
        TemplateAggregator(templates, medias).result()


def test_pair_scores_dense_and_sparse():
    """Pair cosines by blocked matrix products (pairs dense among few first templates) and by
    one dot product per pair (sparse) both equal the per-pair dot product."""
    rng = np.random.RandomState(3)
    ids = np.sort(rng.choice(10000, 400, replace=False))
    feats = rng.randn(400, 16)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    for pairs, first, block in ((20000, 40, 16), (3000, 400, 64)):
        t1, t2 = ids[rng.randint(0, first, pairs)], ids[rng.randint(0, 400, pairs)]
        want = [feats[np.searchsorted(ids, a)] @ feats[np.searchsorted(ids, b)] for a, b in zip(t1, t2)]
        np.testing.assert_allclose(pair_scores(ids, feats, t1, t2, block=block), want, rtol=0, atol=1e-14)


def test_identification_against_probe_by_probe_search():
    """Several templates per gallery subject, mated and non-mated probes."""
    rng = np.random.RandomState(2)
    centres = rng.randn(30, 8)
    gallery_subjects = np.r_[np.arange(20), rng.randint(0, 20, 15)]  # subjects 0..19, some twice
    gallery = centres[gallery_subjects] + 0.9 * rng.randn(len(gallery_subjects), 8)
    probe_subjects = rng.randint(0, 30, 300)  # 20..29 are not in the gallery
    probes = centres[probe_subjects] + 0.9 * rng.randn(300, 8)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    got = identification_report(probes, probe_subjects, gallery, gallery_subjects)
    want = brute_identification(probes, probe_subjects, gallery, gallery_subjects)
    assert got["mated"] == int((probe_subjects < 20).sum()) and got["subjects"] == 20
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < got["rank_1"] < got["rank_5"] < 1 and got["fpir_at_fpir_1e-1"] <= 0.1


def test_eval_ijb_end_to_end(ijb, expected, single_run):
    root, info = ijb
    report, out = single_run
    assert report["crops"] == info["crops"] == 80 and report["templates"] == info["templates"] == 50
    assert report["epoch"] == 3 and report["flip"] == "sum" and report["detector_score"]
    np.testing.assert_allclose(np.load(out / "scores.npy"), expected["scores"], rtol=0, atol=1e-5)
    v = report["verification"]
    assert v["pairs"] == info["pairs"] and v["genuine"] == int(expected["labels"].sum())
    for key, value in expected["verification"].items():
        assert v[key] == pytest.approx(value, abs=1e-12), key
    g, i = expected["scores"][expected["labels"]], expected["scores"][~expected["labels"]]
    assert v["auc"] == pytest.approx((g[:, None] > i).mean() + 0.5 * (g[:, None] == i).mean(), abs=1e-6)
    ident = report["identification"]
    assert ident["G1"]["mated"] + ident["G2"]["mated"] == ident["G1"]["probes"] == 30
    for gallery, want in expected["identification"].items():
        for key, value in want.items():
            assert ident[gallery][key] == pytest.approx(value, abs=1e-12), (gallery, key)
    for key in ("rank_1", "tpir_at_fpir_1e-1"):
        assert ident["mean"][key] == pytest.approx((ident["G1"][key] + ident["G2"][key]) / 2)
    png = cv2.imread(str(out / "roc.png"))
    assert png is not None and png.shape[0] > 100


def test_eval_ijb_options_and_text_output(ijb, model, expected):
    """IJB-B naming (S1/S2) under ROOT/IJBB, text output, no detector weighting, per-crop
    normalisation, concatenated flip."""
    root, _ = ijb
    parent = os.path.join(os.path.dirname(root), "b")
    ijbb = os.path.join(parent, "IJBB")
    shutil.copytree(root, ijbb)
    for name in os.listdir(os.path.join(ijbb, "meta")):
        new = name.replace("ijbc_", "ijbb_").replace("_G1", "_S1").replace("_G2", "_S2")
        os.rename(os.path.join(ijbb, "meta", name), os.path.join(ijbb, "meta", new))
    assert sorted(ijb_paths(parent, "IJBB")["galleries"]) == ["S1", "S2"]
    proc = tool("--model", model[1] + ",3", "--root", parent, "--target", "ijbb", "--no-detector-score",
                "--normalize-images", "--flip", "concat", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "[IJBB] 1:1 verification: 610 pairs" in proc.stdout and "TAR (%)" in proc.stdout
    assert "S1+S2 (closed set)" in proc.stdout and "TPIR@FPIR=1e-2" in proc.stdout
    # the numbers behind the text: this variant recomputed
    from recognition.evaluation import embed_images
    names, points, _, templates, medias, pairs = read_meta(ijbb, "IJBB")
    faces = np.stack([align_face(cv2.cvtColor(cv2.imread(os.path.join(ijbb, "loose_crop", n)), cv2.COLOR_BGR2RGB),
                                 p, 112) for n, p in zip(names, points)])
    feats = embed_images(model[0], faces, 32, "concat").astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    tfeats, tids = insightface_templates(feats, templates, medias)
    row = {t: i for i, t in enumerate(tids)}
    scores = np.array([tfeats[row[a]] @ tfeats[row[b]] for a, b, _ in pairs])
    table = re.search(r"TAR \(%\)\s+(.*)", proc.stdout).group(1).split()
    want = [100 * brute_tar(scores, pairs[:, 2].astype(bool), f) for f in FARS]
    np.testing.assert_allclose([float(v) for v in table], want, atol=0.006)


def test_eval_ijb_under_horovodrun(ijb, model, single_run):
    """2 workers share the crops (chunks of 24 over 80 crops: uneven last shares); rank 0 alone
    prints the same report as one process."""
    root, _ = ijb
    args = [os.path.join(ROOT, "tools", "eval_ijb.py"), "--model", model[1], "--root", root, "--json",
            "--chunk", "24", "--batch-size", "16", "--no-progress"]
    proc = run_horovod(args, timeout=180)
    assert proc.returncode == 0, horovod_failure(proc)
    printed = [re.match(r"^\[(\d+)\]<stdout>:(.*)$", line) for line in proc.stdout.splitlines()]
    printed = [(m.group(1), m.group(2)) for m in printed if m and m.group(2).strip()]
    assert [rank for rank, _ in printed] == ["0"], proc.stdout
    report = json.loads(printed[0][1])
    single = single_run[0]
    for section in ("verification",):
        for key, value in single[section].items():
            assert report[section][key] == pytest.approx(value, abs=1e-6), key
    for gallery, values in single["identification"].items():
        for key, value in values.items():
            assert report["identification"][gallery][key] == pytest.approx(value, abs=1e-6), (gallery, key)


def _fails(argv):
    from recognition.cli import eval_ijb
    with pytest.raises(SystemExit) as exit:
        eval_ijb.main(argv)
    message = str(exit.value.code)
    assert exit.value.code not in (0, None) and "\n" not in message
    return message


def test_bad_input_one_line(ijb, model, tmp_path):
    root, _ = ijb
    bad = str(tmp_path / "IJBC")
    shutil.copytree(root, bad)
    meta = os.path.join(bad, "meta")
    argv = ["--model", model[1], "--root", bad, "--no-progress"]

    # a crop the lists name is missing: one line on stderr naming it and where it is listed
    os.remove(os.path.join(bad, "loose_crop", "7.jpg"))
    proc = tool(*argv)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.strip() == (f"eval_ijb: {bad}/loose_crop/7.jpg: image not found "
                                   f"(listed at {meta}/ijbc_name_5pts_score.txt:7)")
    # a crop that is not an image
    with open(os.path.join(bad, "loose_crop", "7.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    assert _fails(argv).endswith("7.jpg: cannot be decoded as an image "
                                         f"(listed at {meta}/ijbc_name_5pts_score.txt:7)")
    shutil.copy(os.path.join(root, "loose_crop", "7.jpg"), os.path.join(bad, "loose_crop", "7.jpg"))

    def edit(name, change):
        path = os.path.join(meta, name)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(change(text))
        return text

    original = edit("ijbc_name_5pts_score.txt", lambda t: t.replace("\n3.jpg ", "\n3.jpg 12 "))
    assert "ijbc_name_5pts_score.txt:3: expected 'NAME x1 y1 ... x5 y5 SCORE' (12 fields), got 13" in _fails(argv)
    edit("ijbc_name_5pts_score.txt", lambda t: original)
    original = edit("ijbc_face_tid_mid.txt", lambda t: t.replace("\n3.jpg ", "\n33.jpg "))
    assert "ijbc_face_tid_mid.txt: crop 3 is 33.jpg" in _fails(argv)
    edit("ijbc_face_tid_mid.txt", lambda t: original)
    original = edit("ijbc_template_pair_label.txt", lambda t: "99999 " + t.split(" ", 1)[1])
    assert "ijbc_template_pair_label.txt: pair 1 names template 99999, which has no crop" in _fails(argv)
    edit("ijbc_template_pair_label.txt", lambda t: t.replace("99999 ", "x ", 1))
    assert "ijbc_template_pair_label.txt:1: expected three integers" in _fails(argv)
    edit("ijbc_template_pair_label.txt", lambda t: original)
    original = edit("ijbc_1N_probe_mixed.csv", lambda t: t.replace("TEMPLATE_ID", "TID"))
    assert "ijbc_1N_probe_mixed.csv:1: expected a header naming TEMPLATE_ID and SUBJECT_ID" in _fails(argv)
    edit("ijbc_1N_probe_mixed.csv", lambda t: original)
    os.remove(os.path.join(meta, "ijbc_template_pair_label.txt"))
    assert _fails(argv) == f"eval_ijb: {meta}/ijbc_template_pair_label.txt: file not found"
    assert _fails(["--model", model[1], "--root", str(tmp_path / "nowhere")]).endswith("IJB folder not found")


def main():
    import argparse
    parser = argparse.ArgumentParser(description="Write the LFW-sample IJB-format set (all sample people, "
                                                 "or those an LFW pairs file names).")
    parser.add_argument("out", help="folder to create (holds meta/ and loose_crop/)")
    parser.add_argument("--pairs-people", metavar="PAIRS.txt", help="only the sample people this pairs file names")
    parser.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC")
    args = parser.parse_args()
    people = sample_people()
    if args.pairs_people:
        keep = pairs_people(args.pairs_people)
        people = {p: v for p, v in people.items() if p in keep}
    info = build_ijb(args.out, people, args.target)
    print(f"wrote {args.out}: {len(people)} people, {info['crops']} crops, {info['templates']} templates, "
          f"{info['pairs']} pairs")


if __name__ == "__main__":
    main()
