#!/usr/bin/env python
"""Git loss versus centre loss on MNIST with 2-D features (Git-loss paper, Table 1 and Figure 3).

Network: the authors' MNIST network (their public gitloss.py, the centre-loss TensorFlow example):
3x3 convolutions 32-32 / pool / 64-64 / pool / 128-128 / pool (ReLU), a fully connected layer to
the 2-D feature, then the loss head. Heads come from ``recognition.losses.get_loss``:
``softmax`` with ``center: {lambda_c, alpha}`` for the centre-loss rows (lambda_G = 0) and ``git``
(lambda_c, lambda_g) for the others, both with a bias in the classifier as in the paper's
Eq. 1. One difference from the authors' network: the heads classify the 2-D feature directly, so
there is no PReLU between the feature and the 10-way layer.

``--push authors`` swaps the push term of ``git`` for the one the authors' gitloss.py computes
(not the paper's Eq. 1): a Cauchy kernel per *coordinate*, 1 / (1 + (x_ik - c_{y_j}k)^2), with the
i == j entries masked to a constant 1, averaged over all B x B x D entries; the centre term and the
centre update are the same as ours there. ``--push eq1`` (default) is ``recognition.losses.git``.

Training as the authors': Adam lr 1e-3, batch 128, 8,000 steps, inputs in [0, 1] minus the mean
training image, centre rate alpha 0.5; but on the 10,000 training digits available offline (the
authors: 55,000), and the official 10,000 test digits as the validation set (the authors: the
5,000 validation digits of the TensorFlow split).

Distances as the authors' script computes them: class centres = mean feature of each class;
intra = mean over classes of the mean Euclidean distance of its features to its centre;
inter = mean Euclidean distance over the 45 pairs of class centres. On the training digits (as
Table 1). Every ``--eval-every`` steps the run also records these, the accuracies and the loss
(the budget curve). The authors' script reports, as "inter", the running mean over its
evaluations at steps 1000, 2000, ..., 7000 (its list of distances is never reset), with the other
columns of step 7000; ``inter (authors' mean)`` is that statistic computed from our curve.

Resumable: every finished (push, lambda_C, lambda_G, seed, steps, batch) run is written as its own
JSON record under OUT/ (plus a small .npz of test features for the figure), and a run whose record
exists is skipped, so the suite can be run in parts. After every run, and with ``--render`` alone,
OUT.md / OUT.json / OUT.png are rebuilt from all records present: mean +- std over the seeds that
finished, their count per row, the paper's Table 1 numbers beside.
"""
import argparse
import glob
import gzip
import json
import os
import pickle
import shutil
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from recognition.fileio import write_text_atomic  # noqa: E402

MNIST_DIR = "/work/shared/data/mnist"
DEFAULT_RUNS = ",".join(f"{c}:{g}" for c in ("0.01", "0.001") for g in ("0", "0.1", "1", "0.01"))

# Table 1 of the paper (10-run means): (lambda_C, lambda_G) -> loss, train acc %, val acc %, inter, intra
PAPER = {
    (0.0001, 0): (0.020, 99.77, 98.52, 85.95, 8.39), (0.0001, 0.0001): (0.0132, 100.00, 98.65, 87.87, 8.52),
    (0.0001, 0.001): (0.016, 99.77, 98.66, 89.82, 8.20), (0.0001, 0.01): (0.020, 99.77, 98.62, 88.48, 8.54),
    (0.0001, 0.1): (0.032, 99.61, 98.46, 96.76, 9.56), (0.0001, 1): (0.466, 89.77, 88.95, 137.37, 15.45),
    (0.001, 0): (0.021, 99.61, 98.67, 44.36, 3.10), (0.001, 0.0001): (0.117, 96.75, 95.66, 51.77, 4.75),
    (0.001, 0.001): (0.024, 99.84, 98.53, 47.81, 3.23), (0.001, 0.01): (0.025, 99.77, 98.62, 46.13, 3.16),
    (0.001, 0.1): (0.053, 99.22, 98.69, 51.22, 3.46), (0.001, 1): (0.779, 76.10, 76.33, 68.77, 6.55),
    (0.01, 0): (0.025, 99.65, 98.89, 21.36, 1.09), (0.01, 0.0001): (0.031, 99.69, 98.77, 22.07, 1.16),
    (0.01, 0.001): (0.024, 100.00, 98.75, 20.63, 1.18), (0.01, 0.01): (0.051, 99.53, 98.61, 21.96, 1.09),
    (0.01, 0.1): (0.037, 99.84, 98.70, 22.93, 1.22), (0.01, 1): (0.937, 71.17, 71.38, 30.25, 2.02),
    (0.1, 0): (0.040, 99.74, 98.89, 9.76, 0.38), (0.1, 0.1): (0.040, 100.00, 98.96, 10.99, 0.37),
    (0.1, 1): (1.508, 57.11, 57.90, 10.52, 0.55),
}
FIGURE_DIGITS = 2000  # test digits kept per run for the figure


def read_idx(path, magic):
    """IDX file (gzip) -> uint8 array; images (N, 28, 28), labels (N,)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise SystemExit(f"mnist_git: {path}: magic {found}, expected {magic}")
    if magic == 2051:
        count, rows, cols = struct.unpack(">III", data[4:16])
        return np.frombuffer(data, np.uint8, count * rows * cols, 16).reshape(count, rows, cols)
    (count,) = struct.unpack(">I", data[4:8])
    return np.frombuffer(data, np.uint8, count, 8)


def load_mnist(folder):
    """((train images, labels), (test images, labels)); images in [0, 1] minus the mean training
    image (the authors' preprocessing), (N, 1, 28, 28)."""
    def pair(prefix):
        images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), 2051)
        labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), 2049)
        if len(images) != len(labels):
            raise SystemExit(f"mnist_git: {folder}/{prefix}: {len(images)} images but {len(labels)} labels")
        return images.astype(np.float32)[:, None] / 255.0, labels.astype(np.float32)
    (train_x, train_y), (test_x, test_y) = pair("train10k"), pair("t10k")
    mean = train_x.mean(axis=0)
    return (train_x - mean, train_y), (test_x - mean, test_y)


def parse_runs(text):
    runs = []
    for item in text.split(","):
        try:
            lambda_c, lambda_g = (float(v) for v in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--runs: expected LAMBDA_C:LAMBDA_G items, got {item!r}") from None
        runs.append((lambda_c, lambda_g))
    return runs


def parse_seeds(text):
    try:
        if "-" in text:
            first, last = (int(v) for v in text.split("-"))
            return list(range(first, last + 1))
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: expected N, N,M,... or N-M, got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=parse_runs, default=parse_runs(DEFAULT_RUNS),
                   help="comma-separated LAMBDA_C:LAMBDA_G; lambda_G = 0 is the centre-loss row")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-3"),
                   help="seeds per row: N, N,M,... or N-M; runs go seed-major (every row once, then again)")
    p.add_argument("--push", choices=("eq1", "authors"), default="eq1",
                   help="push term of the Git rows: eq1 = recognition.losses.git (the paper's Eq. 1), "
                        "authors = the per-coordinate form of the authors' gitloss.py")
    p.add_argument("--steps", type=int, default=8000, help="training steps per run (the authors: 8,000)")
    p.add_argument("--batch-size", type=int, default=128, help="the authors: 128")
    p.add_argument("--eval-every", type=int, default=1000,
                   help="steps between the recorded evaluations (the authors' script: 1,000)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--alpha", type=float, default=0.5, help="centre update rate")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads for MXNet")
    p.add_argument("--data", default=MNIST_DIR, help="folder with train10k-* and t10k-* IDX files")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "mnist_git"),
                   help="OUT/ holds one record per finished run; OUT.json, OUT.md, OUT.png are rendered from them")
    p.add_argument("--work-dir", default=os.path.join(common.DEFAULT_WORK_DIR, "mnist_git"),
                   help="checkpoints of unfinished runs (one folder per run, removed when it finishes)")
    p.add_argument("--render", action="store_true", help="only re-render OUT.md/.json/.png from the records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1:
        p.error("--steps, --batch-size and --eval-every must be positive")
    return args


def build_net(mx):
    from mxnet.gluon import nn
    net = nn.HybridSequential()
    with net.name_scope():
        for channels in (32, 64, 128):
            net.add(nn.Conv2D(channels, 3, padding=1, activation="relu"),
                    nn.Conv2D(channels, 3, padding=1, activation="relu"),
                    nn.MaxPool2D(2))  # 28 -> 14 -> 7 -> 3, as TensorFlow's VALID pooling
        net.add(nn.Flatten(), nn.Dense(2))
    return net


def authors_git_loss(num_classes, embedding_size, lambda_c, lambda_g, alpha, bias):
    """``git`` with the push term of the authors' gitloss.py instead of Eq. 1 (see the docstring).

    Per sample i (the batch mean is their loss2): (1 / (N D)) sum_j sum_k 1 / (1 + (m_ij d_ijk)^2),
    d_ijk = x_ik - c_{y_j}k, m_ij = 0 for j == i else 1. Centre term lambda_C mean_k (x_ik - c_k)^2
    = (lambda_C / 2) ||x_i - c||^2 at D = 2, as ours; centre update the same rule as ours."""
    from recognition.losses.center import WithCenterLoss
    from recognition.losses.git import GitLoss, PullPushTerm
    from recognition.losses.softmax import SoftmaxLoss

    class AuthorsPullPush(PullPushTerm):
        def hybrid_forward(self, F, x, label, pair_labels, offset, centers):
            pull = 0.5 * self.lambda_c * F.sum(F.square(x - F.take(centers, label)), axis=1)
            c = F.take(centers, pair_labels)                                        # (N, D)
            diff = F.broadcast_sub(F.expand_dims(x, 1), F.expand_dims(c, 0))       # (B, N, D)
            own = F.broadcast_add(F.contrib.arange_like(label, axis=0), offset)
            keep = 1.0 - F.broadcast_equal(F.expand_dims(own, 1),
                                           F.expand_dims(F.contrib.arange_like(pair_labels, axis=0), 0))
            diff = F.broadcast_mul(diff, F.expand_dims(keep, 2))
            kernel = 1.0 / (1.0 + F.square(diff))
            push = F.sum(F.reshape(kernel, (0, -1)), axis=1) / (embedding_size * F.sum(F.ones_like(keep), axis=1))
            return pull + self.lambda_g * push

    class AuthorsGitLoss(GitLoss):
        def __init__(self):
            WithCenterLoss.__init__(self, SoftmaxLoss(num_classes, embedding_size, bias=bias),
                                    AuthorsPullPush(num_classes, embedding_size, lambda_c, lambda_g, alpha, False))
            self._pairs = None

    return AuthorsGitLoss()


def build_head(lambda_c, lambda_g, alpha, push):
    from recognition.losses import get_loss
    if lambda_g == 0:
        return get_loss("softmax", num_classes=10, embedding_size=2, bias=True,
                        center={"lambda_c": lambda_c, "alpha": alpha})
    if push == "authors":
        return authors_git_loss(10, 2, lambda_c, lambda_g, alpha, bias=True)
    return get_loss("git", num_classes=10, embedding_size=2, lambda_c=lambda_c, lambda_g=lambda_g,
                    alpha=alpha, bias=True)


def features_of(mx, net, images, batch=1000):
    return np.concatenate([net(mx.nd.array(images[i:i + batch])).asnumpy() for i in range(0, len(images), batch)])


def distances(features, labels):
    """(intra, inter) as the authors' script: mean distance to the class mean, averaged over the
    classes; mean distance between the class means over all pairs."""
    classes = np.unique(labels)
    centres = np.stack([features[labels == c].mean(axis=0) for c in classes])
    intra = np.mean([np.linalg.norm(features[labels == c] - centres[k], axis=1).mean() for k, c in enumerate(classes)])
    pairwise = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    inter = pairwise[np.triu_indices(len(classes), 1)].mean()
    return float(intra), float(inter)


def accuracy(mx, head, features, labels):
    scores = head.predict(mx.nd.array(features)).asnumpy()
    return float((scores.argmax(axis=1) == labels).mean())


def evaluate(mx, net, head, train, test):
    """Metrics of the current model; returns (metrics, test features)."""
    head.flush_state()  # the pending centre update (does not change the trajectory)
    train_features, test_features = features_of(mx, net, train[0]), features_of(mx, net, test[0])
    train_intra, train_inter = distances(train_features, train[1])
    test_intra, test_inter = distances(test_features, test[1])
    return {"train_acc": accuracy(mx, head, train_features, train[1]),
            "val_acc": accuracy(mx, head, test_features, test[1]),
            "train_inter": train_inter, "train_intra": train_intra,
            "test_inter": test_inter, "test_intra": test_intra}, test_features


def save_checkpoint(folder, net, head, trainer, state):
    """Everything a run needs to go on from this step: parameters (centres included), Adam's state,
    the sampler's state and the history so far. Written to a temporary folder, then renamed."""
    tmp = folder + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    net.save_parameters(os.path.join(tmp, "net.params"))
    head.save_parameters(os.path.join(tmp, "head.params"))
    trainer.save_states(os.path.join(tmp, "trainer.states"))
    with open(os.path.join(tmp, "state.pkl"), "wb") as f:
        pickle.dump(state, f)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_checkpoint(folder, net, head, trainer):
    # both pickles through the restricted unpickler, as every pickle the project reads
    from recognition.data.safe_pickle import safe_load
    from recognition.engine.checkpoint import load_trainer_states
    net.load_parameters(os.path.join(folder, "net.params"))
    head.load_parameters(os.path.join(folder, "head.params"))
    load_trainer_states(trainer, os.path.join(folder, "trainer.states"))
    return safe_load(os.path.join(folder, "state.pkl"))


def train_run(mx, args, train, test, lambda_c, lambda_g, seed, progress, key=None, on_eval=None):
    """One run; with ``key``, a checkpoint under --work-dir/KEY at every evaluation, and a run that
    finds one goes on from it (same trajectory: no randomness but the sampler's, which is saved).
    ``on_eval(evals)`` is called after every evaluation (the partial record)."""
    from mxnet import autograd
    (train_x, train_y), _ = train, test
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    net, head = build_net(mx), build_head(lambda_c, lambda_g, args.alpha, args.push)
    net.initialize(mx.init.Xavier())
    head.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    params = net.collect_params()
    params.update(head.collect_params())
    trainer = mx.gluon.Trainer(params, "adam", {"learning_rate": args.lr})
    order, position = rng.permutation(len(train_x)), 0
    losses, curve, evals, eval_s, done_s, first = [], [], [], 0.0, 0.0, 0
    checkpoint = os.path.join(args.work_dir, key) if key else None
    if checkpoint and os.path.exists(os.path.join(checkpoint, "state.pkl")):
        state = load_checkpoint(checkpoint, net, head, trainer)
        rng.bit_generator.state = state["rng"]
        order, position, first = state["order"], state["position"], state["step"]
        losses, curve, evals, eval_s, done_s = (state[k] for k in ("losses", "curve", "evals", "eval_s", "wall_s"))
        progress.update(first)
        progress.write(f"[{time.strftime('%H:%M:%S')}]   resumed at step {first} from {checkpoint}")
    start = time.time() - done_s
    for step in range(first, args.steps):
        if position + args.batch_size > len(order):
            order, position = rng.permutation(len(train_x)), 0
        index = order[position:position + args.batch_size]
        position += args.batch_size
        data, label = mx.nd.array(train_x[index]), mx.nd.array(train_y[index])
        with autograd.record():
            features = net(data)
            head.update_state(features.detach(), label)  # the head contract: before the loss
            loss = head(features, label)
        loss.backward()
        trainer.step(args.batch_size)
        losses.append(float(loss.mean().asscalar()))
        progress.update(1)
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            curve.append([step + 1, float(np.mean(losses[-100:]))])
            progress.set_postfix(loss=f"{curve[-1][1]:.3f}", refresh=False)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            tick = time.time()
            metrics, test_features = evaluate(mx, net, head, train, test)
            eval_s += time.time() - tick
            evals.append(dict(step=step + 1, loss=float(np.mean(losses[-50:])), **metrics))
            progress.write(f"[{time.strftime('%H:%M:%S')}]   step {step + 1}: loss {evals[-1]['loss']:.3f} "
                           f"train acc {metrics['train_acc']:.4f} val acc {metrics['val_acc']:.4f} "
                           f"inter {metrics['train_inter']:.2f} intra {metrics['train_intra']:.3f}")
            if checkpoint and step + 1 < args.steps:
                save_checkpoint(checkpoint, net, head, trainer, {
                    "step": step + 1, "rng": rng.bit_generator.state, "order": order, "position": position,
                    "losses": losses, "curve": curve, "evals": evals, "eval_s": eval_s,
                    "wall_s": time.time() - start})
            if on_eval:
                on_eval(evals)
    wall = time.time() - start
    final = evals[-1]
    authors = [e["train_inter"] for e in evals if e["step"] % 1000 == 0 and e["step"] < 8000]
    record = {"push": args.push if lambda_g else "none", "lambda_c": lambda_c, "lambda_g": lambda_g, "seed": seed,
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "alpha": args.alpha,
              "loss_head": "softmax+center" if lambda_g == 0 else f"git ({args.push})",
              "final_loss": final["loss"], **{k: final[k] for k in final if k not in ("step", "loss")},
              "authors_inter": float(np.mean(authors)) if authors else None,
              "evals": evals, "loss_curve": curve, "train_wall_s": round(wall, 1), "eval_wall_s": round(eval_s, 1),
              "samples_per_sec": args.steps * args.batch_size / (wall - eval_s)}
    if checkpoint and os.path.exists(checkpoint):
        shutil.rmtree(checkpoint)
    return record, test_features


# ---------------------------------------------------------------------------------------------
# records


def run_key(push, lambda_c, lambda_g, seed, steps, batch_size):
    push = push if lambda_g else "none"
    return f"lc{lambda_c:g}_lg{lambda_g:g}_{push}_{steps}x{batch_size}_s{seed}"


def write_record(folder, key, record, test_features, test_labels):
    os.makedirs(folder, exist_ok=True)
    keep = np.linspace(0, len(test_labels) - 1, FIGURE_DIGITS).astype(int)
    tmp = os.path.join(folder, key + ".tmp.npz")
    np.savez_compressed(tmp, features=test_features[keep].astype(np.float16), labels=test_labels[keep].astype(np.uint8))
    os.replace(tmp, os.path.join(folder, key + ".npz"))
    write_text_atomic(os.path.join(folder, key + ".json"), json.dumps(record, indent=1) + "\n")


def write_partial(folder, key, record):
    os.makedirs(folder, exist_ok=True)
    write_text_atomic(os.path.join(folder, key + ".partial.json"), json.dumps(record, indent=1) + "\n")


def read_records(folder, partial=False):
    """Finished runs' records (``partial``: the unfinished runs' evaluations so far instead)."""
    records = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        if path.endswith(".partial.json") != partial:
            continue
        with open(path) as f:
            record = json.load(f)
        record["key"] = os.path.basename(path)[:-len(".partial.json" if partial else ".json")]
        records.append(record)
    return records


def group_rows(records):
    """{(steps, batch, push, lambda_c, lambda_g): [records sorted by seed]}, in a stable order."""
    groups = {}
    for r in records:
        groups.setdefault((r["steps"], r["batch_size"], r["push"], r["lambda_c"], r["lambda_g"]), []).append(r)
    order = lambda k: (-k[0] * k[1], k[2] == "authors", -k[3], k[4])  # noqa: E731
    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups, key=order)}


def mean_std(values, digits, scale=1.0):
    values = [scale * v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def paper_cell(key, column, digits):
    value = PAPER.get((key[3], key[4]))
    return "–" if value is None else f"{value[column]:.{digits}f}"


def render(result):
    """The Markdown of a result (everything it shows comes from the JSON)."""
    groups = group_rows(result["records"])
    sections = []
    for budget in sorted({(k[0], k[1]) for k in groups}, key=lambda b: -b[0] * b[1]):
        steps, batch = budget
        table = []
        for key, runs in groups.items():
            if (key[0], key[1]) != budget:
                continue
            col = lambda name: [r[name] for r in runs]  # noqa: E731
            table.append([f"{key[3]:g}", f"{key[4]:g}", {"none": "–", "eq1": "Eq. 1", "authors": "authors'"}[key[2]],
                          ",".join(str(r["seed"]) for r in runs),
                          mean_std(col("final_loss"), 3), paper_cell(key, 0, 3),
                          mean_std(col("train_acc"), 2, 100), paper_cell(key, 1, 2),
                          mean_std(col("val_acc"), 2, 100), paper_cell(key, 2, 2),
                          mean_std(col("train_inter"), 2), paper_cell(key, 3, 2),
                          mean_std(col("authors_inter"), 2),
                          mean_std(col("train_intra"), 3), paper_cell(key, 4, 2),
                          mean_std(col("test_inter"), 2), mean_std(col("test_intra"), 3)])
        epochs = steps * batch / result["train_digits"]
        sections += [f"**{steps:,} steps x batch {batch}** ({epochs:.1f} epochs of the {result['train_digits']:,} "
                     f"training digits; the paper: 8,000 x 128 on 55,000)", "",
                     common.markdown_table(
                         ["λ_C", "λ_G", "push", "seeds", "loss", "paper", "train acc %", "paper", "val acc %", "paper",
                          "inter (train)", "paper", "inter (authors' mean)", "intra (train)", "paper",
                          "inter (test)", "intra (test)"], table), ""]
    walls = [r["train_wall_s"] - r.get("paused_s", 0) for r in result["records"]]
    return "\n".join([
        "## Git loss vs centre loss on MNIST (2-D features; Git-loss paper Table 1)", "",
        f"{len(walls)} finished runs, {sum(walls) / 3600:.1f} hours of training in all. Cells: mean ± sample std over "
        "the seeds listed (one value where one seed finished); paper = Table 1 (10-run means, no spread given). "
        f"Adam lr {result['lr']:g}, centre rate alpha {result['alpha']:g}, inputs minus the mean training image. "
        "Heads: `softmax` + `center` for λ_G = 0, `git` otherwise (push Eq. 1 = `recognition.losses.git`; "
        "authors' = the per-coordinate push of the authors' gitloss.py). Val. = the "
        f"{result['test_digits']:,} official test digits (the paper: the 5,000 validation digits). Distances: "
        "Euclidean in the 2-D feature space; inter = mean over the 45 pairs of class means, intra = mean distance "
        "to the class mean, averaged over the classes (the authors' script). loss: the mean total loss of the last "
        "50 steps (the paper: the last batch's); train acc: all training digits (the paper: the last batch of "
        "128). inter (authors' mean): the mean of inter over the evaluations at steps 1000, ..., 7000, which is what "
        "the authors' script prints as inter.", "",
        *sections,
        *budget_curve(result), "",
        f"Figure: `{result['figure']}` (2-D features of {FIGURE_DIGITS:,} test digits, the lowest seed of each row).",
    ])


def budget_curve(result):
    """Lines of the per-run table of the evaluations every --eval-every steps (unfinished runs too)."""
    runs = result["records"] + result.get("unfinished", [])
    if not runs:
        return []
    runs = sorted(runs, key=lambda r: (-r["steps"] * r["batch_size"], -r["lambda_c"], r["lambda_g"], r["push"], r["seed"]))
    steps = sorted({e["step"] for r in runs for e in r["evals"]})
    rows = []
    for r in runs:
        by_step = {e["step"]: e for e in r["evals"]}
        cells = [f"{by_step[s]['train_inter']:.1f} / {by_step[s]['train_intra']:.2f} / {100 * by_step[s]['val_acc']:.1f}"
                 if s in by_step else "" for s in steps]
        state = "" if "final_loss" in r else f" (unfinished, {r['evals'][-1]['step']} of {r['steps']})"
        rows.append([f"{r['lambda_c']:g}", f"{r['lambda_g']:g}",
                     {"none": "–", "eq1": "Eq. 1", "authors": "authors'"}[r["push"]],
                     f"{r['seed']}{state}", f"{r['steps']}x{r['batch_size']}"] + cells)
    return ["**Budget curve**: inter (train) / intra (train) / val acc % at each evaluation, every run "
            "(unfinished runs too, from their last checkpoint).", "",
            common.markdown_table(["λ_C", "λ_G", "push", "seed", "budget"] + [f"step {s}" for s in steps], rows)]


def plot(path, groups, folder):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(key, runs[0]) for key, runs in groups.items()
              if os.path.exists(os.path.join(folder, runs[0]["key"] + ".npz"))]
    if not panels:
        return
    columns = min(4, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.3 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (key, run) in zip(axes.flat, panels):
        data = np.load(os.path.join(folder, run["key"] + ".npz"))
        feats, labels = data["features"].astype(np.float32), data["labels"]
        for digit in range(10):
            points = feats[labels == digit]
            ax.scatter(points[:, 0], points[:, 1], s=0.8, color=colours(digit), label=str(digit), rasterized=True)
        name = "centre loss" if run["lambda_g"] == 0 else f"Git ({'authors' if run['push'] == 'authors' else 'Eq. 1'})"
        ax.set_title(f"{name}: $\\lambda_C$={run['lambda_c']:g}, $\\lambda_G$={run['lambda_g']:g}, "
                     f"{run['steps']}x{run['batch_size']}, seed {run['seed']}\n"
                     f"val acc {100 * run['val_acc']:.1f}%, intra {run['train_intra']:.2f}, "
                     f"inter {run['train_inter']:.1f}", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal", adjustable="datalim")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=10, fontsize=7, markerscale=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def render_all(args, train_digits=10000, test_digits=10000, quiet=False):
    """OUT.json / OUT.md / OUT.png from every record under OUT/."""
    records = read_records(args.out)
    result = {"benchmark": "mnist_git", "lr": args.lr, "alpha": args.alpha, "train_digits": train_digits,
              "test_digits": test_digits, "figure": os.path.basename(args.out) + ".png", "records": records,
              "unfinished": read_records(args.out, partial=True)}
    # the summary keeps every field but the 100-step loss curves (those stay in the per-run files)
    summary = dict(result, records=[{k: v for k, v in r.items() if k != "loss_curve"} for r in records])
    markdown = render(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_text_atomic(args.out + ".json", json.dumps(summary, indent=1) + "\n")
    write_text_atomic(args.out + ".md", markdown + "\n")
    plot(args.out + ".png", group_rows(records), args.out)
    if not quiet:
        print(markdown)
    common.log(f"rendered {len(records)} records into {args.out}.md, .json, .png")


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return render_all(args)
    common.set_threads(args.threads)
    import mxnet as mx
    from tqdm import tqdm
    train, test = load_mnist(args.data)
    common.log(f"MNIST: {len(train[0])} training digits, {len(test[0])} test digits")
    env = common.environment()
    todo = [(c, g, s) for s in args.seeds for c, g in args.runs]
    keys = [run_key(args.push, c, g, s, args.steps, args.batch_size) for c, g, s in todo]
    pending = [(run, key) for run, key in zip(todo, keys) if not os.path.exists(os.path.join(args.out, key + ".json"))]
    common.log(f"{len(todo) - len(pending)} of {len(todo)} runs already recorded under {args.out}/; "
               f"{len(pending)} to go")
    for number, ((lambda_c, lambda_g, seed), key) in enumerate(pending, 1):
        with tqdm(total=args.steps, desc=f"[{number}/{len(pending)}] {key}", file=sys.stderr,
                  disable=args.no_progress, dynamic_ncols=True, mininterval=5) as progress:
            head = {"push": args.push if lambda_g else "none", "lambda_c": lambda_c, "lambda_g": lambda_g,
                    "seed": seed, "steps": args.steps, "batch_size": args.batch_size}

            def on_eval(evals, head=head, key=key):
                write_partial(args.out, key, dict(head, evals=evals))
                render_all(args, len(train[0]), len(test[0]), quiet=True)
            record, feats = train_run(mx, args, train, test, lambda_c, lambda_g, seed, progress, key, on_eval)
        record["environment"] = env
        write_record(args.out, key, record, feats, test[1])
        if os.path.exists(os.path.join(args.out, key + ".partial.json")):
            os.remove(os.path.join(args.out, key + ".partial.json"))
        common.log(f"  {key}: train acc {record['train_acc']:.4f} val acc {record['val_acc']:.4f} "
                   f"inter {record['train_inter']:.2f} intra {record['train_intra']:.3f} "
                   f"({record['train_wall_s']:.0f} s)")
        render_all(args, len(train[0]), len(test[0]), quiet=True)
    render_all(args, len(train[0]), len(test[0]))


if __name__ == "__main__":
    main()
