"""Shared plumbing of the comparison benchmarks (compare_losses.py, compare_mining.py, mnist_git.py).

* A deterministic, leak-free LFW split: some people are held out for verification pairs, the
  others are packed for training with ``recognition.data.pack.pack`` (aligned with the five
  landmarks) and the held-out pairs become a ``.bin`` through ``tools/make_bin.py``.
* One training run with the project's real trainer (``recognition.engine.trainer.train``) from a
  project config plus ``--set``-style overrides.
* Reading back the trainer's own mxboard scalars (samples/s of every log interval).
* JSON + Markdown output, written atomically.

``set_threads`` must run before MXNet is imported (MXNet reads OMP_NUM_THREADS when its engine
starts), so nothing here imports MXNet at module level.
"""
import glob
import hashlib
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the benchmarks run from a checkout, installed or not
from recognition.fileio import write_text_atomic  # noqa: E402
LFW_DEVTRAIN = "/work/shared/data/lfw-devtrain"
LFW_SAMPLE = os.path.join(REPO, "tests", "data", "lfw_sample")
DEFAULT_WORK_DIR = os.path.join(REPO, "work_dirs", "bench")
RESULTS_DIR = os.path.join(REPO, "bench", "results")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def set_threads(threads):
    """OpenMP threads of MXNet's operators; call before the first ``import mxnet``."""
    if "mxnet" in sys.modules:
        raise RuntimeError("set_threads must be called before mxnet is imported")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # do not spin on a shared machine
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")


def start(args):
    """What every face benchmark does first, in this order: the OpenMP threads (before MXNet is
    imported), the split (packed and cached), the environment record. Returns (manifest, env)."""
    set_threads(args.threads)
    return prepare_split(args), environment()


def add_split_args(parser):
    """The options that define the LFW split (shared so both face benchmarks use the same one)."""
    parser.add_argument("--data", default=LFW_DEVTRAIN,
                        help="LFW-style folder (images/NAME/NAME_NNNN.jpg + landmarks.txt); when missing, "
                             "the committed sample tests/data/lfw_sample is used with its own pairs")
    parser.add_argument("--holdout-people", type=int, default=300,
                        help="people (with >= 2 images) held out for the verification pairs: one same pair "
                             "each and as many different pairs")
    parser.add_argument("--min-train-images", type=int, default=3,
                        help="training people need at least this many images")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out draw and the pairs")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on this seeded share of the training people (the held-out pairs stay the same)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help="packed data, .bin and training outputs (reused across runs when the split matches)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads for MXNet (more than the idle cores makes OpenMP spin: on this "
                             "shared 2-core machine 2 threads ran 3-5x slower than 1)")
    parser.add_argument("--workers", type=int, default=1, help="decoding threads of the data loader (data.num_workers)")
    parser.add_argument("--train-landmarks", default=None,
                        help="five points of the training images (default: the data's landmarks.txt), e.g. "
                             "tools/detect.py's output, to train from detected instead of provided points; "
                             "the held-out .bin always uses the data's landmarks.txt, so runs compare")


# ---------------------------------------------------------------------------------------------
# the split


def _people(image_root):
    """{name: sorted image file names} of a folder-per-person tree."""
    people = {}
    for name in sorted(os.listdir(image_root)):
        folder = os.path.join(image_root, name)
        if os.path.isdir(folder):
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
            if files:
                people[name] = files
    return people


def _image_number(file_name):
    """NAME_0003.jpg -> 3 (LFW numbering, what the pairs format refers to)."""
    return int(os.path.splitext(file_name)[0].rsplit("_", 1)[1])


def draw_split(people, holdout, min_train_images, seed, folds=10, train_fraction=1.0):
    """Held-out people and LFW-format pair lines, and the training people.

    ``holdout`` people are drawn uniformly (seeded) among those with >= 2 images; each gives one
    same pair (two of its images at random) and takes part in different pairs (a random
    derangement of the held-out people, so every person appears once as first and once as second
    member). Pairs are written fold by fold, half same, half different in each fold, because the
    10-fold protocol cuts the file into contiguous folds (a fold of only same pairs has no threshold
    to learn). Training people: every other person with >= ``min_train_images`` images; with
    ``train_fraction`` < 1 a seeded share of them (drawn after the pairs, from a generator of its
    own, so the held-out people and pairs are the same whatever the fraction)."""
    rng = np.random.default_rng(seed)
    eligible = sorted(name for name, files in people.items() if len(files) >= 2)
    if holdout > len(eligible):
        raise ValueError(f"cannot hold out {holdout} people: only {len(eligible)} have 2 or more images")
    if holdout % folds or holdout < 2 * folds:
        raise ValueError(f"--holdout-people must be a multiple of {folds} and at least {2 * folds}, got {holdout}")
    held = sorted(rng.choice(eligible, size=holdout, replace=False).tolist())
    order = rng.permutation(held).tolist()
    same = []
    for name in order:
        i, j = sorted(rng.choice(len(people[name]), size=2, replace=False))
        same.append(f"{name}\t{_image_number(people[name][i])}\t{_image_number(people[name][j])}")
    shift = rng.permutation(len(order))
    partner = {order[shift[k]]: order[shift[(k + 1) % len(order)]] for k in range(len(order))}  # derangement
    different = []
    for name in order:
        other = partner[name]
        different.append(f"{name}\t{_image_number(people[name][rng.integers(len(people[name]))])}\t"
                         f"{other}\t{_image_number(people[other][rng.integers(len(people[other]))])}")
    per_fold = holdout // folds
    lines = [f"{folds}\t{per_fold}"]
    for fold in range(folds):
        lines += same[fold * per_fold:(fold + 1) * per_fold] + different[fold * per_fold:(fold + 1) * per_fold]
    held_set = set(held)
    train = sorted(name for name, files in people.items()
                   if name not in held_set and len(files) >= min_train_images)
    if not 0 < train_fraction <= 1:
        raise ValueError(f"the training-people fraction must be in (0, 1], got {train_fraction}")
    if train_fraction < 1:
        keep = max(1, int(round(train_fraction * len(train))))
        train = sorted(np.random.default_rng([seed, 1]).choice(train, size=keep, replace=False).tolist())
    return held, train, lines


def prepare_split(args):
    """Pack the training people and build the held-out .bin (cached under ``--work-dir``).

    Returns a manifest dict: rec (folder for data.root), bin (the .bin), counts and the choices."""
    data = args.data
    fallback = not os.path.isdir(os.path.join(data, "images"))
    if fallback:
        log(f"{data}: not found; falling back to the committed sample {LFW_SAMPLE} (its own 300 pairs, "
            f"its 100 training people)")
        data = LFW_SAMPLE
    image_root = os.path.join(data, "images")
    landmarks = os.path.join(data, "landmarks.txt")
    if not os.path.isfile(landmarks):
        raise SystemExit(f"bench: {landmarks}: landmarks file not found")
    train_landmarks = os.path.abspath(getattr(args, "train_landmarks", None) or landmarks)
    if not os.path.isfile(train_landmarks):
        raise SystemExit(f"bench: --train-landmarks {train_landmarks}: not found")
    split = {"data": os.path.abspath(data), "holdout": args.holdout_people,
             "min_train": args.min_train_images, "seed": args.split_seed, "fallback": fallback}
    if train_landmarks != os.path.abspath(landmarks):  # the key of earlier splits stays as it was
        split["train_landmarks"] = train_landmarks
    train_fraction = getattr(args, "train_fraction", 1.0)
    if train_fraction != 1.0:
        split["train_fraction"] = train_fraction
    key = json.dumps(split, sort_keys=True)
    split_dir = os.path.join(args.work_dir, "split-" + hashlib.sha1(key.encode()).hexdigest()[:10])
    manifest_path = os.path.join(split_dir, "manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        log(f"split: reusing {split_dir} ({manifest['train_people']} training people, "
            f"{manifest['train_images']} images; {manifest['pairs']} held-out pairs)")
        return manifest

    people = _people(image_root)
    if fallback:
        with open(os.path.join(data, "train_people.txt")) as f:
            train = sorted(line.strip() for line in f if line.strip())
        pairs_file = os.path.join(data, "pairs.txt")
        held = None
    else:
        held, train, lines = draw_split(people, args.holdout_people, args.min_train_images, args.split_seed,
                                        train_fraction=train_fraction)
    tmp_dir = split_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    if not fallback:
        pairs_file = os.path.join(tmp_dir, "heldout_pairs.txt")
        write_text_atomic(pairs_file, "\n".join(lines) + "\n")

    # training people: a folder of links, so pack() sees exactly them (landmark paths are relative)
    src = os.path.join(tmp_dir, "train_src")
    os.makedirs(src)
    for name in train:
        os.symlink(os.path.abspath(os.path.join(image_root, name)), os.path.join(src, name))
    from recognition.data.pack import pack
    log(f"split: packing {len(train)} training people")
    counts = pack(src, os.path.join(tmp_dir, "rec"), landmarks=train_landmarks, min_images=1,
                  workers=max(1, args.threads))

    from recognition.cli.make_bin import main as make_bin  # tools/make_bin.py
    log("split: building the held-out .bin")
    make_bin(["--pairs", pairs_file, "--images", image_root, "--landmarks", landmarks,
              "--out", os.path.join(tmp_dir, "heldout.bin")])
    shutil.rmtree(src)
    with open(pairs_file) as f:
        n_pairs = sum(1 for line in f if len(line.split()) in (3, 4))
    manifest = {
        "data": os.path.abspath(data), "fallback_to_sample": fallback,
        "rec": os.path.join(split_dir, "rec"), "bin": os.path.join(split_dir, "heldout.bin"),
        "pairs_file": os.path.join(split_dir, "heldout_pairs.txt") if not fallback else pairs_file,
        "heldout_people": len(held) if held is not None else None, "pairs": n_pairs,
        "train_people": counts["identities"], "train_images": counts["images"],
        "min_train_images": args.min_train_images if not fallback else None, "split_seed": args.split_seed,
        "train_landmarks": train_landmarks, "train_fraction": train_fraction,
    }
    write_text_atomic(os.path.join(tmp_dir, "manifest.json"), json.dumps(manifest, indent=1))
    shutil.rmtree(split_dir, ignore_errors=True)
    os.replace(tmp_dir, split_dir)
    log(f"split: {manifest['train_people']} training people ({manifest['train_images']} images), "
        f"{n_pairs} held-out pairs -> {split_dir}")
    return manifest


EXTENDED_SAME_PER_PERSON = 10


def held_out_people(pairs_file):
    """The people named in an LFW-format pairs file."""
    with open(pairs_file) as f:
        fields = [line.split() for line in f.readlines()[1:]]
    return sorted({f[0] for f in fields if len(f) == 3} | {f[i] for f in fields if len(f) == 4 for i in (0, 2)})


def draw_extended_pairs(people, held, seed, folds=10, same_per_person=EXTENDED_SAME_PER_PERSON):
    """More pairs from the same held-out people, to score with less pair-sampling noise than one
    same pair each. The people are dealt into ``folds`` person-disjoint folds; each person gives up
    to ``same_per_person`` same pairs (all of its image pairs when it has fewer), each fold as many
    same pairs as the poorest fold has (folds must be equal: the 10-fold protocol cuts the file into
    contiguous equal folds) and as many different pairs between two of its people (drawn without
    repeating an ordered pair; the same two images in the other order can recur: 6 of the 930
    different pairs of lfw-devtrain's split, kept so that scores already recorded stay comparable).
    Returns the LFW-format lines, or None when the folds cannot be filled."""
    import itertools
    rng = np.random.default_rng([seed, 2])  # its own stream: the 600-pair file stays as it was
    order = rng.permutation(sorted(held)).tolist()
    groups = [order[f::folds] for f in range(folds)]
    same_by_fold = []
    for group in groups:
        same = []
        for name in group:
            combos = list(itertools.combinations(range(len(people[name])), 2))
            for k in sorted(rng.permutation(len(combos))[:same_per_person]):
                i, j = combos[k]
                same.append(f"{name}\t{_image_number(people[name][i])}\t{_image_number(people[name][j])}")
        same_by_fold.append(same)
    per_fold = min(len(same) for same in same_by_fold)
    possible_different = min(sum(len(people[a]) * len(people[b]) for a in g for b in g if a != b) for g in groups)
    if per_fold == 0 or per_fold > possible_different:
        return None
    lines = [f"{folds}\t{per_fold}"]
    for group, same in zip(groups, same_by_fold):
        different = set()
        while len(different) < per_fold:
            a, b = rng.choice(len(group), size=2, replace=False)
            first, second = group[a], group[b]
            different.add(f"{first}\t{_image_number(people[first][rng.integers(len(people[first]))])}\t"
                          f"{second}\t{_image_number(people[second][rng.integers(len(people[second]))])}")
        lines += [same[k] for k in sorted(rng.permutation(len(same))[:per_fold])] + sorted(different)
    return lines


def extended_bin(manifest):
    """The split's extended held-out .bin (:func:`draw_extended_pairs`), built once beside the
    600-pair one. Returns (path, pairs), or (None, 0) where the held-out people are too few."""
    split_dir = os.path.dirname(manifest["bin"])
    path = os.path.join(split_dir, "heldout_extended.bin")
    pairs_file = os.path.join(split_dir, "heldout_extended_pairs.txt")
    if not os.path.isfile(path):
        image_root = os.path.join(manifest["data"], "images")
        lines = draw_extended_pairs(_people(image_root), held_out_people(manifest["pairs_file"]),
                                    manifest["split_seed"])
        if lines is None:
            return None, 0
        write_text_atomic(pairs_file, "\n".join(lines) + "\n")
        from recognition.cli.make_bin import main as make_bin  # tools/make_bin.py; writes atomically
        log(f"split: building the extended held-out .bin ({len(lines) - 1} pairs)")
        make_bin(["--pairs", pairs_file, "--images", image_root,
                  "--landmarks", os.path.join(manifest["data"], "landmarks.txt"), "--out", path])
    with open(pairs_file) as f:
        return path, sum(1 for line in f if len(line.split()) in (3, 4))


def split_description(manifest):
    if manifest["fallback_to_sample"]:
        return (f"committed LFW sample (tests/data/lfw_sample): {manifest['train_people']} training people "
                f"({manifest['train_images']} images); its own {manifest['pairs']} pairs of other people")
    return (f"lfw-devtrain: {manifest['heldout_people']} people with >= 2 images held out (seed "
            f"{manifest['split_seed']}) -> {manifest['pairs']} pairs (one same pair per person, as many "
            f"different pairs, 10 folds); training on {_share(manifest)}the other {manifest['train_people']} people with "
            f">= {manifest['min_train_images']} images ({manifest['train_images']} images, aligned "
            f"112x112 with the five {_landmark_source(manifest)})")


def _share(manifest):
    fraction = manifest.get("train_fraction", 1.0)
    return "" if fraction == 1.0 else f"a seeded {fraction:.0%} share of "


def _landmark_source(manifest):
    chosen = manifest.get("train_landmarks")
    if not chosen or chosen == os.path.join(manifest["data"], "landmarks.txt"):
        return "landmarks"
    return f"points of {os.path.relpath(chosen, REPO)}; the held-out .bin with the provided landmarks"


# ---------------------------------------------------------------------------------------------
# training with the project's trainer


def trainer_overrides(manifest, out_dir, steps, batch_size, seed=0, warmup_steps=0, log_every=10,
                      workers=1, verify_flip="none", lr=None):
    """``--set`` overrides shared by the face benchmarks: data, budget, seed, the held-out .bin
    scored once at the end, one checkpoint at the end."""
    overrides = [f"data.root={manifest['rec']}", f"data.batch_size={batch_size}", f"data.num_workers={workers}",
                 f"train.max_steps={steps}", f"train.seed={seed}", f"train.log_every={log_every}",
                 f"optimizer.warmup_steps={warmup_steps}", f"verification.bins={manifest['bin']}",
                 "verification.every=0", f"verification.flip={verify_flip}", f"output.dir={out_dir}",
                 "output.checkpoint_every=0", "output.keep=1"]
    if lr is not None:
        overrides.append(f"optimizer.lr={lr}")
    return overrides


def run_training(config_path, overrides, pretrained=None):
    """``recognition.engine.trainer.train`` on ``configs/...`` + overrides, in a fresh output.dir
    (an earlier run's logs would mix into the throughput); returns (results, wall seconds, Config)."""
    from recognition.engine.config import load_config
    from recognition.engine.trainer import train
    config = load_config(config_path, overrides)
    shutil.rmtree(config.output.dir, ignore_errors=True)
    start = time.time()
    results = train(config, pretrained=pretrained)
    return results, time.time() - start, config


def logged_scalars(log_dir, tag):
    """[(step, value)] of one scalar the trainer wrote with mxboard (TFRecord event files)."""
    from mxboard.proto import event_pb2
    values = []
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            while True:
                header = f.read(12)  # uint64 length + uint32 masked crc of the length
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                body = f.read(length)
                f.read(4)  # crc of the body
                if len(body) < length:
                    break
                event = event_pb2.Event.FromString(body)
                for value in event.summary.value:
                    if value.tag == tag:
                        values.append((event.step, value.simple_value))
    return sorted(values)


def throughput(out_dir):
    """Median samples/s over the trainer's log intervals, the first one (graph building,
    first-touch allocation) left out when there are others."""
    values = [v for _, v in logged_scalars(os.path.join(out_dir, "logs"), "samples_per_sec")]
    if len(values) > 1:
        values = values[1:]
    return float(np.median(values)) if values else float("nan")


def verification_row(results, bin_name="heldout"):
    return scores_row(results["verification"][bin_name])


def scores_row(scores):
    """The verification numbers a benchmark record keeps, from one set's scores (trainer or verify.py)."""
    return {key: float(scores[key]) for key in ("accuracy", "accuracy_std", "tar_at_far_1e-3", "xnorm")
            if key in scores}


# ---------------------------------------------------------------------------------------------
# output


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_part(path, compute):
    """Write ``compute()``'s JSON to ``path`` (atomically), unless a finished part is there already."""
    if os.path.isfile(path):
        log(f"{path}: done already")
        return
    write_text_atomic(path, json.dumps(compute(), indent=1) + "\n")


def finished_parts(folder):
    """The per-part JSON a resumable benchmark wrote under ``folder`` (one file a finished part, beside
    its summary.json), in the order of their names."""
    parts = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and name != "summary.json":
            with open(os.path.join(folder, name)) as f:
                parts.append(json.load(f))
    return parts


def write_outputs(out_prefix, result, markdown):
    """``OUT.json`` and ``OUT.md`` (atomically); prints the Markdown then the JSON on stdout."""
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    text = json.dumps(result, indent=1)
    write_text_atomic(out_prefix + ".json", text + "\n")
    write_text_atomic(out_prefix + ".md", markdown + "\n")
    print(markdown)
    print(text)
    log(f"wrote {out_prefix}.json and {out_prefix}.md")


def noise_note(pairs, folds=10):
    """What the verification numbers can resolve with ``pairs`` pairs (half same, half different)."""
    different_train = pairs // 2 * (folds - 1) // folds
    return (f"Resolution: the standard error of an accuracy near 0.8 over {pairs} pairs is about "
            f"{(0.8 * 0.2 / pairs) ** 0.5:.3f}, so differences below about "
            f"{2 * (2 * 0.8 * 0.2 / pairs) ** 0.5:.2f} are within noise. TAR@FAR=1e-3 picks its threshold on "
            f"the {different_train} different pairs of 9 folds, where 1e-3 is less than one false accept: it "
            "is in effect the TAR at zero false accepts, a coarse number.")


def rerender(json_path, render):
    """Re-write ``X.md`` beside ``X.json`` from the JSON alone (no training); prints it."""
    with open(json_path) as f:
        result = json.load(f)
    markdown = render(result)
    write_text_atomic(os.path.splitext(json_path)[0] + ".md", markdown + "\n")
    print(markdown)


def environment():
    import mxnet as mx
    return {"mxnet": mx.__version__, "omp_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
            "cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
