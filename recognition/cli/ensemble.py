"""Combine exported face models into one exported model (an ensemble).

The ensemble's embedding is the concatenation of the members' L2-normalised embeddings divided by
sqrt(K), so the cosine it gives a pair is the mean of the members' cosines. The output is an
ordinary exported model (PREFIX-symbol.json + PREFIX-0000.params, input `data`): tools/verify.py,
tools/embed.py, tools/eval_ijb.py and tools/export.py take it as they take one network. The members
must take the same input (112x112 RGB for the models of this toolkit and insightface's).

After writing, the ensemble is checked against its members on random images: its embedding must be
their normalised embeddings side by side (max |difference| <= --tolerance); a failed check removes
the output.

Example (four networks of 15 minutes each, bench/ensemble.py):
  python tools/ensemble.py --models runs/a/model runs/b/model runs/c/model runs/d/model --out runs/ensemble/model
"""
import argparse
import os
import sys

import numpy as np

import mxnet as mx

from recognition.evaluation.embed import ModelError, load_exported_model
from recognition.evaluation.ensemble import combine_models


def check_ensemble(specs, prefix, image_size=112, count=4, tolerance=1e-4, seed=0):
    """The largest |ensemble - members side by side| on ``count`` random images; ModelError beyond
    ``tolerance``."""
    batch = mx.nd.array(np.random.RandomState(seed).randint(0, 256, (count, 3, image_size, image_size)))

    def first_output(net):
        out = net(batch)
        return (out[0] if isinstance(out, (list, tuple)) else out).asnumpy().astype(np.float64)

    parts = []
    for spec in specs:
        member = first_output(load_exported_model(spec)[0])
        parts.append(member / np.linalg.norm(member, axis=1, keepdims=True))
    expected = np.concatenate(parts, axis=1) / np.sqrt(len(specs))
    got = first_output(load_exported_model(prefix)[0])
    if got.shape != expected.shape:
        raise ModelError(f"{prefix}: ensemble output shape {got.shape}, its members' {expected.shape}")
    worst = float(np.abs(got - expected).max())
    if worst > tolerance:
        raise ModelError(f"{prefix}: the ensemble differs from its members by {worst:.3g} (> {tolerance:g})")
    return worst


def build_parser():
    parser = argparse.ArgumentParser(prog="ensemble.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, metavar="PREFIX[,EPOCH]",
                        help="exported models to combine (at least 2)")
    parser.add_argument("--out", required=True, metavar="PREFIX", help="output prefix (writes PREFIX-symbol.json "
                        "and PREFIX-0000.params)")
    parser.add_argument("--image-size", type=int, default=112, help="input size for the check (default 112)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="allowed difference in the check (default 1e-4)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        written = combine_models(args.models, args.out)
        try:
            worst = check_ensemble(args.models, args.out, args.image_size, tolerance=args.tolerance)
        except BaseException:
            for path in written:
                os.remove(path)
            raise
    except ModelError as err:
        sys.exit(f"ensemble: {err}")
    print(f"wrote {written[0]} and {written[1]}: {len(args.models)} members, "
          f"matches them within {worst:.1e}")


if __name__ == "__main__":
    main()
