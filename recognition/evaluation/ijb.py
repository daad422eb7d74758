"""IJB-B / IJB-C template evaluation: the released file formats, insightface's template
aggregation, 1:1 verification (TAR at FAR) and 1:N identification (rank-k, TPIR at FPIR).

Layout (as distributed with insightface's ``recognition/_evaluation_/ijb``; ``ijbb_`` for IJB-B)::

    ROOT/loose_crop/NAME.jpg                   the face crops
    ROOT/meta/ijbc_name_5pts_score.txt         "NAME x1 y1 ... x5 y5 SCORE" (five points in the
                                               crop's pixels, detector score)
    ROOT/meta/ijbc_face_tid_mid.txt            "NAME TEMPLATE_ID MEDIA_ID", line i = line i above
    ROOT/meta/ijbc_template_pair_label.txt     "TEMPLATE_ID TEMPLATE_ID LABEL" (1 = same subject)
    ROOT/meta/ijbc_1N_gallery_G1.csv, _G2.csv  TEMPLATE_ID,SUBJECT_ID,FILENAME,... (header row);
    ROOT/meta/ijbc_1N_probe_mixed.csv          IJB-B's galleries are ijbb_1N_gallery_S1/S2.csv

Template features (insightface's ``image2template_feature``): every crop's flip-fused embedding,
optionally L2-normalised (insightface's N0; the default keeps the norm, N1) and multiplied by its
detector score (D1, default); the crops of one media of a template (frames of one video) are
averaged; the media features of a template are summed; the sum is L2-normalised. Here the sum is
accumulated while crops stream by (each crop weighted by 1 / size of its media), so no crop and
no crop feature has to be held.

1:1: the cosine of each pair's template features; TAR at FAR is insightface's table: on
scikit-learn's ROC (``roc_curve`` with its default ``drop_intermediate``), the point whose FAR is
nearest the target, the highest TAR among equally near points (see :func:`tar_at_far`).

1:N: the open-set protocol of the IJB-B/IJB-C papers: the mixed-media probe templates are searched
in gallery G1 and in gallery G2 separately; a probe whose subject has a template in the gallery is
mated, else non-mated. Rank-k identification rate: the share of mated probes whose subject is
among the k best-scoring gallery subjects (a subject scores its best template). TPIR at FPIR f:
the threshold t lets through a share of at most f of the non-mated probes (top score > t); TPIR is
the share of mated probes whose subject is at rank 1 with a score > t. Also the closed-set rank-k
of G1 + G2 together, which is what insightface's ``ijb_1n.py`` prints as top1/top5.
"""
import csv
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIR_TARGETS = (1e-2, 1e-1)
RANKS = (1, 5, 10)
TARGETS = ("IJBC", "IJBB")
GALLERY_NAMES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


class IJBError(ValueError):
    """Bad or missing IJB input; the message names the file (and line) and the problem."""


def rate_key(value):
    """1e-06 -> "1e-6" (the JSON keys and column titles)."""
    return f"{value:.0e}".replace("e-0", "e-")


# ----------------------------------------------------------------------------------------------
# Files


def resolve_root(root, target):
    """The folder holding meta/ and loose_crop/: ROOT itself, or ROOT/IJBC (ROOT/IJBB)."""
    target = target.upper()
    if target not in TARGETS:
        raise IJBError(f"{target}: target must be one of {', '.join(TARGETS)}")
    if not os.path.isdir(root):
        raise IJBError(f"{root}: IJB folder not found")
    if not os.path.isdir(os.path.join(root, "meta")) and os.path.isdir(os.path.join(root, target, "meta")):
        root = os.path.join(root, target)
    return root


def ijb_paths(root, target):
    """The paths of a target's files under ``root`` (see the module docstring); the 1:N entries
    are None where that file does not exist (IJB-C's G1/G2 or IJB-B's S1/S2 naming, either)."""
    target = target.upper()
    root = resolve_root(root, target)
    meta = os.path.join(root, "meta")
    t = target.lower()
    paths = {
        "root": root,
        "crops": os.path.join(root, "loose_crop"),
        "landmarks": os.path.join(meta, f"{t}_name_5pts_score.txt"),
        "media": os.path.join(meta, f"{t}_face_tid_mid.txt"),
        "pairs": os.path.join(meta, f"{t}_template_pair_label.txt"),
        "probe": os.path.join(meta, f"{t}_1N_probe_mixed.csv"),
    }
    if not os.path.isdir(paths["crops"]):
        raise IJBError(f"{paths['crops']}: crop folder not found")
    for name in ("landmarks", "media", "pairs"):
        if not os.path.isfile(paths[name]):
            raise IJBError(f"{paths[name]}: file not found")
    names = GALLERY_NAMES[target]
    galleries = {}
    for naming in (names, tuple(n for n in ("G1", "G2", "S1", "S2") if n not in names)):
        found = {n: os.path.join(meta, f"{t}_1N_gallery_{n}.csv") for n in naming}
        if all(os.path.isfile(p) for p in found.values()):
            galleries = found
            break
    paths["galleries"] = galleries
    if not os.path.isfile(paths["probe"]):
        paths["probe"] = None
    return paths


def _lines(path):
    """(line number, fields) of the non-blank lines of a whitespace-separated text file."""
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                fields = line.split()
                if fields:
                    yield number, fields
    except UnicodeDecodeError:
        raise IJBError(f"{path}: not a text file") from None
    except OSError as err:
        raise IJBError(f"{path}: cannot read ({err.strerror or err})") from None


def read_landmarks_scores(path):
    """``NAME x1 y1 ... x5 y5 SCORE`` lines -> (names, (N, 5, 2) float32 points, (N,) float32
    detector scores)."""
    names, points, scores = [], [], []
    for number, fields in _lines(path):
        if len(fields) != 12:
            raise IJBError(f"{path}:{number}: expected 'NAME x1 y1 ... x5 y5 SCORE' (12 fields), "
                           f"got {len(fields)}")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise IJBError(f"{path}:{number}: the five points and the score must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise IJBError(f"{path}:{number}: the five points and the score must be finite")
        names.append(fields[0])
        points.append(values[:10])
        scores.append(values[10])
    if not names:
        raise IJBError(f"{path}: no crop listed")
    return (names, np.array(points, np.float32).reshape(-1, 5, 2), np.array(scores, np.float32))


def read_template_media(path):
    """``NAME TEMPLATE_ID MEDIA_ID`` lines -> (names, (N,) int64 templates, (N,) int64 medias)."""
    names, ids = [], []
    for number, fields in _lines(path):
        if len(fields) != 3:
            raise IJBError(f"{path}:{number}: expected 'NAME TEMPLATE_ID MEDIA_ID', got {len(fields)} fields")
        try:
            ids.append((int(fields[1]), int(fields[2])))
        except ValueError:
            raise IJBError(f"{path}:{number}: TEMPLATE_ID and MEDIA_ID must be integers") from None
        names.append(fields[0])
    if not names:
        raise IJBError(f"{path}: no crop listed")
    ids = np.array(ids, np.int64)
    return names, ids[:, 0], ids[:, 1]


def read_pairs(path):
    """``TEMPLATE_ID TEMPLATE_ID LABEL`` lines -> (t1, t2, labels), int64 arrays (label 0 or 1).

    Read with NumPy's C parser (IJB-C has 15.7 million pairs); on a bad line a second, Python
    pass names it."""
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError:
        table = None
    except OSError as err:
        raise IJBError(f"{path}: cannot read ({err.strerror or err})") from None
    if table is None or (table.size and table.shape[1] != 3):
        for number, fields in _lines(path):
            if len(fields) != 3:
                raise IJBError(f"{path}:{number}: expected 'TEMPLATE_ID TEMPLATE_ID LABEL', got {len(fields)} fields")
            try:
                [int(v) for v in fields]
            except ValueError:
                raise IJBError(f"{path}:{number}: expected three integers") from None
        raise IJBError(f"{path}: cannot be read as 'TEMPLATE_ID TEMPLATE_ID LABEL' lines")
    if table.size == 0:
        raise IJBError(f"{path}: no pair listed")
    bad = np.nonzero((table[:, 2] != 0) & (table[:, 2] != 1))[0]
    if len(bad):
        raise IJBError(f"{path}: pair {bad[0] + 1}: LABEL must be 0 or 1, got {table[bad[0], 2]}")
    return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()


def read_protocol_csv(path):
    """A 1:N protocol file (``TEMPLATE_ID,SUBJECT_ID,FILENAME,...`` with a header, one row per
    image) -> (unique templates, their subjects), int64, sorted by template."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise IJBError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if not rows:
        raise IJBError(f"{path}: empty")
    header = [h.strip().upper() for h in rows[0]]
    if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
        raise IJBError(f"{path}:1: expected a header naming TEMPLATE_ID and SUBJECT_ID")
    ti, si = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
    subject_of = {}
    for number, row in enumerate(rows[1:], 2):
        if not row or not any(v.strip() for v in row):
            continue
        try:
            template, subject = int(row[ti]), int(row[si])
        except (IndexError, ValueError):
            raise IJBError(f"{path}:{number}: TEMPLATE_ID and SUBJECT_ID must be integers") from None
        if subject_of.setdefault(template, subject) != subject:
            raise IJBError(f"{path}:{number}: template {template} listed with subjects "
                           f"{subject_of[template]} and {subject}")
    if not subject_of:
        raise IJBError(f"{path}: no template listed")
    templates = np.array(sorted(subject_of), np.int64)
    return templates, np.array([subject_of[t] for t in templates], np.int64)


def load_protocol(paths):
    """Read and cross-check a target's 1:1 files (see :func:`ijb_paths`).

    Returns a dict: names (crop names, in file order), points (N, 5, 2), scores (N,), templates,
    medias (N,), t1, t2, labels. The two crop lists must name the same crops line for line
    (insightface pairs them by line), and every pair must name templates that have crops."""
    names, points, scores = read_landmarks_scores(paths["landmarks"])
    media_names, templates, medias = read_template_media(paths["media"])
    if len(media_names) != len(names):
        raise IJBError(f"{paths['media']}: {len(media_names)} crops, but {paths['landmarks']} lists {len(names)}")
    for i, (a, b) in enumerate(zip(names, media_names)):
        if a != b:
            raise IJBError(f"{paths['media']}: crop {i + 1} is {b}, but {paths['landmarks']} "
                           f"names {a} there (the files go line for line)")
    t1, t2, labels = read_pairs(paths["pairs"])
    known = np.unique(templates)
    for side in (t1, t2):
        missing = np.nonzero(~np.isin(side, known))[0]
        if len(missing):
            raise IJBError(f"{paths['pairs']}: pair {missing[0] + 1} names template {side[missing[0]]}, "
                           f"which has no crop in {paths['media']}")
    if labels.all() or not labels.any():
        raise IJBError(f"{paths['pairs']}: needs both genuine (1) and impostor (0) pairs")
    return {"names": names, "points": points, "scores": scores, "templates": templates,
            "medias": medias, "t1": t1, "t2": t2, "labels": labels}


def load_identification(paths, templates):
    """The 1:N files -> {"probe": (templates, subjects), "G1": ..., "G2": ...} (IJB-B: S1, S2),
    or None when the target's folder has no 1:N files. Every listed template must have crops."""
    if not paths["galleries"] or not paths["probe"]:
        return None
    known = np.unique(templates)
    sets = {}
    for name, path in [("probe", paths["probe"])] + list(paths["galleries"].items()):
        ids, subjects = read_protocol_csv(path)
        missing = ids[~np.isin(ids, known)]
        if len(missing):
            raise IJBError(f"{path}: template {missing[0]} has no crop in {paths['media']}")
        sets[name] = (ids, subjects)
    return sets


def check_crops(crop_dir, names, list_path):
    """Every listed crop must be a file: IJBError naming the first one that is not."""
    for number, name in enumerate(names, 1):
        path = os.path.join(crop_dir, name)
        if not os.path.isfile(path):
            raise IJBError(f"{path}: image not found (listed at {list_path}:{number})")


# ----------------------------------------------------------------------------------------------
# Template features


class TemplateAggregator:
    """insightface's template features, accumulated while crop features stream by.

    ``templates``, ``medias``: (N,) ids of every crop. ``add(start, features)`` takes the fused
    features of crops ``start .. start+len``; ``result()`` gives (sorted unique template ids,
    (T, D) float64 L2-normalised template features)."""

    def __init__(self, templates, medias, scores=None, normalize_images=False):
        templates = np.asarray(templates, np.int64).ravel()
        medias = np.asarray(medias, np.int64).ravel()
        if len(templates) != len(medias):
            raise ValueError("templates and medias differ in length")
        self.unique, self.row = np.unique(templates, return_inverse=True)
        _, group, counts = np.unique(np.stack([templates, medias], 1), axis=0,
                                     return_inverse=True, return_counts=True)
        # the mean over a media then the sum over media = a sum weighted by 1 / media size
        self.weight = 1.0 / counts[group.ravel()]
        if scores is not None:
            scores = np.asarray(scores, np.float64).ravel()
            if len(scores) != len(templates):
                raise ValueError("scores and templates differ in length")
            self.weight = self.weight * scores
        self.normalize_images = normalize_images
        self.sums = None
        self.added = np.zeros(len(templates), bool)

    def add(self, start, features):
        features = np.asarray(features, np.float64)
        stop = start + len(features)
        if len(features) == 0:
            return
        if self.added[start:stop].any() or stop > len(self.added):
            raise ValueError(f"crops {start}..{stop} added twice or out of range")
        self.added[start:stop] = True
        if self.normalize_images:
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            features = features / np.where(norms == 0, 1.0, norms)
        if self.sums is None:
            self.sums = np.zeros((len(self.unique), features.shape[1]))
        rows = self.row[start:stop]
        weighted = features * self.weight[start:stop, None]
        order = np.argsort(rows, kind="stable")
        rows, weighted = rows[order], weighted[order]
        first = np.r_[0, np.nonzero(np.diff(rows))[0] + 1]
        self.sums[rows[first]] += np.add.reduceat(weighted, first, axis=0)

    def result(self):
        if self.sums is None or not self.added.all():
            raise ValueError(f"{int((~self.added).sum())} of {len(self.added)} crops not added")
        norms = np.linalg.norm(self.sums, axis=1, keepdims=True)
        return self.unique, self.sums / np.where(norms == 0, 1.0, norms)


def template_features(features, templates, medias, scores=None, normalize_images=False):
    """All crops' features at once -> (unique templates, L2-normalised template features)."""
    aggregator = TemplateAggregator(templates, medias, scores, normalize_images)
    aggregator.add(0, features)
    return aggregator.result()


def rows_of(unique_templates, ids):
    """Row of each template id in the sorted ``unique_templates`` (ids must be present)."""
    rows = np.searchsorted(unique_templates, ids)
    if len(ids) and (rows.max() >= len(unique_templates) or (unique_templates[rows] != ids).any()):
        raise ValueError("template id without a feature")
    return rows


def pair_scores(unique_templates, features, t1, t2, block=512):
    """Cosine similarity of each template pair (features L2-normalised), float64.

    The pairs are taken ``block`` first templates at a time. Where those pairs are dense (IJB-C:
    15.7 million pairs among 23,124 templates), one matrix product of the first templates with
    every second template they meet, read at the pairs, is cheaper than a dot product per pair
    (measured: a 512-wide dot costs about 30 times more per pair gathered than inside a matrix
    product); where they are sparse, one dot product per pair, 8192 pairs at a time."""
    r1, r2 = rows_of(unique_templates, t1), rows_of(unique_templates, t2)
    scores = np.empty(len(r1))
    order = np.argsort(r1, kind="stable")
    sorted_r1 = r1[order]
    firsts = np.unique(sorted_r1)[::block]
    bounds = np.r_[np.searchsorted(sorted_r1, firsts), len(order)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        pairs = order[a:b]
        rows1, at1 = np.unique(r1[pairs], return_inverse=True)
        rows2, at2 = np.unique(r2[pairs], return_inverse=True)
        if len(rows1) * len(rows2) <= 16 * len(pairs):
            scores[pairs] = (features[rows1] @ features[rows2].T)[at1, at2]
            continue
        for start in range(0, len(pairs), 8192):
            some = pairs[start:start + 8192]
            scores[some] = np.einsum("ij,ij->i", features[r1[some]], features[r2[some]])
    return scores


# ----------------------------------------------------------------------------------------------
# 1:1 verification


def roc(scores, labels):
    """scikit-learn's ``roc_curve(labels, scores)`` with ``drop_intermediate=True``, in NumPy:
    (fpr, tpr, thresholds) over the thresholds "score >= t", from (0, 0) (threshold +inf).

    Points are the distinct scores from high to low; a point whose step from the previous one is
    the same as the step to the next (in both counts) is dropped, as scikit-learn does."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores, sorted_labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]
    tps = np.cumsum(sorted_labels)[last].astype(np.float64)
    fps = 1.0 + last - tps
    thresholds = sorted_scores[last]
    if len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    if fps[-1] <= 0 or tps[-1] <= 0:
        raise ValueError("need both genuine and impostor pairs")
    return fps / fps[-1], tps / tps[-1], thresholds


def tar_at_far(fpr, tpr, far_target):
    """insightface's TAR at FAR (``ijb_11.py``): the ROC point whose FAR is nearest the target;
    among equally near points the last one (the highest TAR). Returns (index, TAR, FAR there).

    A target under half of one false accept (1 / 2 impostor pairs) is nearest FAR 0: the TAR at
    zero false accepts."""
    distance = np.abs(np.asarray(fpr) - far_target)
    index = len(distance) - 1 - int(np.argmin(distance[::-1]))
    return index, float(tpr[index]), float(fpr[index])


def verification_report(scores, labels, far_targets=FAR_TARGETS):
    """Pair scores -> dict: pairs, genuine, impostor, auc and for every FAR target
    tar_at_far_X, far_at_far_X (the FAR of the chosen point) and threshold_at_far_X (the cosine
    there; None at the +inf start)."""
    labels = np.asarray(labels).astype(bool)
    fpr, tpr, thresholds = roc(scores, labels)
    result = {"pairs": int(len(labels)), "genuine": int(labels.sum()), "impostor": int((~labels).sum()),
              "auc": float(np.trapz(tpr, fpr))}
    for target in far_targets:
        index, tar, far = tar_at_far(fpr, tpr, target)
        key = rate_key(target)
        result[f"tar_at_far_{key}"] = tar
        result[f"far_at_far_{key}"] = far
        result[f"threshold_at_far_{key}"] = float(thresholds[index]) if np.isfinite(thresholds[index]) else None
    return result


# ----------------------------------------------------------------------------------------------
# 1:N identification


def search(probe_features, probe_subjects, gallery_features, gallery_subjects, chunk=4096):
    """Search every probe in a gallery (features L2-normalised; a subject scores its best
    template). Returns per probe: mated (its subject is in the gallery), rank of its subject
    (1 + the number of other subjects scoring strictly higher; 0 when non-mated), the mated score
    (nan when non-mated) and the top score over all gallery subjects."""
    probe_features = np.asarray(probe_features, np.float64)
    gallery_features = np.asarray(gallery_features, np.float64)
    probe_subjects = np.asarray(probe_subjects).ravel()
    subjects, column = np.unique(np.asarray(gallery_subjects).ravel(), return_inverse=True)
    order = np.argsort(column, kind="stable")
    first = np.r_[0, np.nonzero(np.diff(column[order]))[0] + 1]
    gallery = gallery_features[order]
    n = len(probe_features)
    position = np.searchsorted(subjects, probe_subjects)
    position = np.minimum(position, len(subjects) - 1)
    mated = subjects[position] == probe_subjects
    rank = np.zeros(n, np.int64)
    mate = np.full(n, np.nan)
    top = np.empty(n)
    one_each = len(first) == len(gallery)  # one template per subject: no reduction
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        similarity = probe_features[start:stop] @ gallery.T
        by_subject = similarity if one_each else np.maximum.reduceat(similarity, first, axis=1)  # (p, S)
        top[start:stop] = by_subject.max(axis=1)
        m = mated[start:stop]
        if m.any():
            rows = np.nonzero(m)[0]
            scores = by_subject[rows, position[start:stop][rows]]
            mate[start + rows] = scores
            rank[start + rows] = 1 + (by_subject[rows] > scores[:, None]).sum(axis=1)
    return mated, rank, mate, top


def identification_report(probe_features, probe_subjects, gallery_features, gallery_subjects,
                          ranks=RANKS, fpir_targets=FPIR_TARGETS):
    """Open-set 1:N metrics of one gallery (see the module docstring) as a dict: probes, mated,
    non_mated, subjects, rank_K (share of mated probes at rank <= K; None without mated probes)
    and for every FPIR target tpir_at_fpir_X, fpir_at_fpir_X (achieved) and threshold_at_fpir_X
    (None without non-mated probes)."""
    mated, rank, mate, top = search(probe_features, probe_subjects, gallery_features, gallery_subjects)
    result = {"probes": int(len(mated)), "mated": int(mated.sum()), "non_mated": int((~mated).sum()),
              "subjects": int(len(np.unique(gallery_subjects)))}
    for k in ranks:
        result[f"rank_{k}"] = float(np.mean(rank[mated] <= k)) if mated.any() else None
    non_mated_top = np.sort(top[~mated])[::-1]
    for target in fpir_targets:
        key = rate_key(target)
        if not len(non_mated_top) or not mated.any():
            result[f"tpir_at_fpir_{key}"] = result[f"fpir_at_fpir_{key}"] = None
            result[f"threshold_at_fpir_{key}"] = None
            continue
        allowed = int(math.floor(target * len(non_mated_top) + 1e-9))
        threshold = -np.inf if allowed >= len(non_mated_top) else non_mated_top[allowed]
        result[f"tpir_at_fpir_{key}"] = float(np.mean((rank[mated] == 1) & (mate[mated] > threshold)))
        result[f"fpir_at_fpir_{key}"] = float(np.mean(non_mated_top > threshold))
        result[f"threshold_at_fpir_{key}"] = float(threshold) if np.isfinite(threshold) else None
    return result


def identification(unique_templates, features, sets, ranks=RANKS, fpir_targets=FPIR_TARGETS):
    """1:N over the protocol sets of :func:`load_identification`: the probes against each
    gallery (open set), the mean of the galleries, and the closed-set rank-k of all galleries
    together ("G1+G2")."""
    probe_ids, probe_subjects = sets["probe"]
    probe = features[rows_of(unique_templates, probe_ids)]
    galleries = [name for name in sets if name != "probe"]
    report = {}
    for name in galleries:
        ids, subjects = sets[name]
        report[name] = identification_report(probe, probe_subjects, features[rows_of(unique_templates, ids)],
                                              subjects, ranks, fpir_targets)
    mean = {}
    for key, value in report[galleries[0]].items():
        values = [report[g][key] for g in galleries]
        if key.startswith(("rank_", "tpir_", "fpir_")) and all(v is not None for v in values):
            mean[key] = float(np.mean(values))
    report["mean"] = mean
    ids = np.concatenate([sets[g][0] for g in galleries])
    subjects = np.concatenate([sets[g][1] for g in galleries])
    ids, first = np.unique(ids, return_index=True)
    combined = identification_report(probe, probe_subjects, features[rows_of(unique_templates, ids)],
                                     subjects[first], ranks, ())
    report["+".join(galleries)] = combined
    return report


# ----------------------------------------------------------------------------------------------
# Streaming the crops through a network


def embed_chunks(net, n, load, chunk=2048, batch_size=64, flip="sum", ctx=None, image_size=112,
                 prefetch=True):
    """Yield (start, stop, fused float32 features) for consecutive chunks of ``n`` crops.

    ``load(start, stop)`` returns the uint8 NHWC faces of crops start..stop. Under horovodrun
    every worker loads and embeds only its share of each chunk (the same split as
    :func:`recognition.evaluation.embed_shared`, short shares padded) and the shares are gathered
    in rank order, so every worker gets every chunk's features. ``prefetch``: load the next chunk
    in a background thread while this one is embedded."""
    import mxnet as mx
    from .. import distributed
    from .embed import embed_views, fuse_views
    workers, rank = distributed.size(), distributed.rank()
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]

    def my_share(start, stop):
        # equal shares (allgather wants equal shapes); the short last ones padded with black
        share = -(-(stop - start) // workers)
        a = min(start + rank * share, stop)
        b = min(a + share, stop)
        faces = np.zeros((share, image_size, image_size, 3), np.uint8)
        if b > a:
            faces[:b - a] = load(a, b)
        return faces

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(my_share, *bounds[0]) if bounds and prefetch else None
        for k, (start, stop) in enumerate(bounds):
            faces = pending.result() if prefetch else my_share(start, stop)
            if prefetch and k + 1 < len(bounds):
                pending = pool.submit(my_share, *bounds[k + 1])
            fused = fuse_views(embed_views(net, faces, batch_size, flip, ctx), flip)
            if workers > 1:
                gathered = distributed.allgather(mx.nd.array(fused, dtype=np.float32), name="ijb_embeddings")
                fused = gathered.asnumpy()[:stop - start]
            yield start, stop, fused
