#!/usr/bin/env python
"""Git loss versus centre loss on MNIST with 2-D features (Git-loss paper, Table 1 and Figure 3).

Network: the authors' MNIST network (their public gitloss.py, the centre-loss TensorFlow example):
3x3 convolutions 32-32 / pool / 64-64 / pool / 128-128 / pool (ReLU), a fully connected layer to
the 2-D feature, then the loss head. Heads come from ``recognition.losses.get_loss``:
``softmax`` with ``center: {lambda_c, alpha}`` for the centre-loss rows (lambda_G = 0) and ``git``
(lambda_c, lambda_g) for the others, both with a bias in the classifier as in the paper's
Eq. 1. One difference from the authors' network: the heads classify the 2-D feature directly, so
there is no PReLU between the feature and the 10-way layer.

Training as the authors': Adam lr 1e-3, inputs in [0, 1] minus the mean training
image, centre rate alpha 0.5; but batch 64 instead of 128 and far fewer steps (CPU budget) on the 10,000 training digits
available offline, and the official 10,000 test digits as the validation set.

Distances as the authors' script computes them: class centres = mean feature of each class;
intra = mean over classes of the mean Euclidean distance of its features to its centre;
inter = mean Euclidean distance over the 45 pairs of centres. Reported on the training digits (as
Table 1) and on the test digits. One figure: the 2-D test features of every run (Figure 3).

Prints a Markdown table and a JSON object; writes OUT.json, OUT.md and OUT.png.
"""
import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MNIST_DIR = "/work/shared/data/mnist"
DEFAULT_RUNS = "0.01:0,0.01:0.1,0.1:0,0.1:0.1"


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
    def pair(prefix):
        images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), 2051)
        labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), 2049)
        if len(images) != len(labels):
            raise SystemExit(f"mnist_git: {folder}/{prefix}: {len(images)} images but {len(labels)} labels")
        return images.astype(np.float32)[:, None] / 255.0, labels.astype(np.float32)
    return pair("train10k"), pair("t10k")


def parse_runs(text):
    runs = []
    for item in text.split(","):
        try:
            lambda_c, lambda_g = (float(v) for v in item.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--runs: expected LAMBDA_C:LAMBDA_G items, got {item!r}") from None
        runs.append((lambda_c, lambda_g))
    return runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=parse_runs, default=parse_runs(DEFAULT_RUNS),
                   help="comma-separated LAMBDA_C:LAMBDA_G; lambda_G = 0 is the centre-loss row")
    p.add_argument("--steps", type=int, default=600, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=64,
                   help="the authors used 128; 64 gives twice the steps for the same CPU time")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--alpha", type=float, default=0.5, help="centre update rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads for MXNet")
    p.add_argument("--data", default=MNIST_DIR, help="folder with train10k-* and t10k-* IDX files")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "mnist_git"),
                   help="output prefix: OUT.json, OUT.md, OUT.png")
    p.add_argument("--render", metavar="JSON", help="only re-write the Markdown of an earlier result (no training)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be positive")
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


def build_head(lambda_c, lambda_g, alpha):
    from recognition.losses import get_loss
    if lambda_g == 0:
        return get_loss("softmax", num_classes=10, embedding_size=2, bias=True,
                        center={"lambda_c": lambda_c, "alpha": alpha})
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


def train_run(mx, args, train, test, lambda_c, lambda_g):
    from mxnet import autograd
    (train_x, train_y), (test_x, test_y) = train, test
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net, head = build_net(mx), build_head(lambda_c, lambda_g, args.alpha)
    net.initialize(mx.init.Xavier())
    head.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    params = net.collect_params()
    params.update(head.collect_params())
    trainer = mx.gluon.Trainer(params, "adam", {"learning_rate": args.lr})
    order, position = rng.permutation(len(train_x)), 0
    start, losses, curve = time.time(), [], []
    for step in range(args.steps):
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
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            curve.append([step + 1, float(np.mean(losses[-100:]))])
            common.log(f"  step {step + 1}/{args.steps} loss {np.mean(losses[-100:]):.4f} "
                       f"({(step + 1) * args.batch_size / (time.time() - start):.0f} samples/s)")
    head.flush_state()
    wall = time.time() - start
    train_features, test_features = features_of(mx, net, train_x), features_of(mx, net, test_x)
    train_intra, train_inter = distances(train_features, train_y)
    test_intra, test_inter = distances(test_features, test_y)
    return {"lambda_c": lambda_c, "lambda_g": lambda_g, "loss_head": "softmax+center" if lambda_g == 0 else "git",
            "final_loss": float(np.mean(losses[-50:])), "loss_curve": curve,
            "train_acc": accuracy(mx, head, train_features, train_y),
            "val_acc": accuracy(mx, head, test_features, test_y),
            "train_inter": train_inter, "train_intra": train_intra,
            "test_inter": test_inter, "test_intra": test_intra,
            "train_wall_s": round(wall, 1), "samples_per_sec": args.steps * args.batch_size / wall}, test_features


def plot(path, runs, features, labels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = 3 if len(runs) % 3 == 0 else min(2, len(runs))
    rows = (len(runs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, run, feats in zip(axes.flat, runs, features):
        for digit in range(10):
            points = feats[labels == digit]
            ax.scatter(points[:, 0], points[:, 1], s=0.6, color=colours(digit), label=str(digit), rasterized=True)
        name = "centre loss" if run["lambda_g"] == 0 else "Git loss"
        ax.set_title(f"{name}: $\\lambda_C$={run['lambda_c']:g}, $\\lambda_G$={run['lambda_g']:g}\n"
                     f"test acc {100 * run['val_acc']:.1f}%, intra {run['test_intra']:.2f}, "
                     f"inter {run['test_inter']:.1f}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal", adjustable="datalim")
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=10 if columns > 1 else 5, fontsize=7, markerscale=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def render(result):
    """The Markdown of a result (everything it shows comes from the JSON)."""
    rows = result["runs"]
    def below_chance(run):
        """First logged step whose 100-step mean loss is clearly under chance (ln 10 = 2.30)."""
        return next((str(step) for step, value in run["loss_curve"] if value < 2.0), "never")

    table = [[f"{r['lambda_c']:g}", f"{r['lambda_g']:g}", f"{r['final_loss']:.3f}", below_chance(r),
              f"{100 * r['train_acc']:.2f}", f"{100 * r['val_acc']:.2f}", f"{r['train_inter']:.2f}",
              f"{r['train_intra']:.3f}", f"{r['test_inter']:.2f}", f"{r['test_intra']:.3f}"] for r in rows]
    epochs = result["steps"] * result["batch_size"] / result["train_digits"]
    return "\n".join([
        "## Git loss vs centre loss on MNIST (2-D features; Git-loss paper Table 1)", "",
        f"One run per row (the paper averages 10), {result['steps']} steps x batch {result['batch_size']} "
        f"({epochs:.1f} epochs of the {result['train_digits']:,} training digits; the paper: 8,000 steps of 128 "
        f"on 55,000), Adam lr {result['lr']:g}, centre rate alpha {result['alpha']:g}, seed {result['seed']}, "
        f"{result['total_wall_s'] / 60:.0f} minutes in all. Heads: `softmax` + `center` for lambda_G = 0, `git` "
        f"otherwise. Val. = the {result['test_digits']:,} official test digits. Distances: Euclidean in the 2-D "
        "feature space; inter = mean over the 45 pairs of class means, intra = mean distance to the class mean, "
        "averaged over the classes (the authors' script; the paper's Table 1 uses the training digits).", "",
        common.markdown_table(["λ_C", "λ_G", "loss", "loss < 2.0 at step", "train acc %", "val acc %", "inter (train)",
                               "intra (train)", "inter (test)", "intra (test)"], table), "",
        "loss: mean over the last 50 steps. loss < 2.0 at step: the first 100-step window whose mean loss is "
        "clearly below chance level (ln 10 = 2.30), i.e. when the run started to learn.", "",
        f"Figure: `{result['figure']}` (2-D features of the test digits, one panel per row).",
    ])


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        return common.rerender(args.render, render)
    common.set_threads(args.threads)
    import mxnet as mx
    train, test = load_mnist(args.data)
    common.log(f"MNIST: {len(train[0])} training digits, {len(test[0])} test digits")
    env = common.environment()
    rows, test_features, started = [], [], time.time()
    for number, (lambda_c, lambda_g) in enumerate(args.runs, 1):
        common.log(f"[{number}/{len(args.runs)}] lambda_C={lambda_c:g} lambda_G={lambda_g:g}: "
                   f"{args.steps} steps of {args.batch_size}")
        row, feats = train_run(mx, args, train, test, lambda_c, lambda_g)
        rows.append(row)
        test_features.append(feats)
        common.log(f"  train acc {row['train_acc']:.4f} test acc {row['val_acc']:.4f} "
                   f"inter {row['train_inter']:.2f} intra {row['train_intra']:.3f} ({row['train_wall_s']:.0f} s)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(args.out + ".png", rows, test_features, test[1])
    result = {"benchmark": "mnist_git", "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "alpha": args.alpha,
              "seed": args.seed, "train_digits": len(train[0]), "test_digits": len(test[0]),
              "environment": env, "total_wall_s": round(time.time() - started, 1), "runs": rows,
              "figure": os.path.basename(args.out) + ".png"}
    common.write_outputs(args.out, result, render(result))


if __name__ == "__main__":
    main()
