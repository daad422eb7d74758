"""Convert an exported face model (PREFIX-symbol.json + PREFIX-NNNN.params) to ONNX with MXNet's
own exporter (mx.onnx.export_model), then check that ONNX Runtime gives the same embeddings as
MXNet on random images (max |difference| <= --tolerance x max |embedding|).

The ONNX model has one input `data`, float32 (N, 3, H, W) RGB 0..255 with a dynamic batch size,
and the model's outputs. A failed export or check leaves no output file.
"""
import argparse
import os
import sys
import warnings

import numpy as np

import mxnet as mx

from recognition.evaluation.embed import ModelError, load_exported_model, parse_model_spec


class ExportError(RuntimeError):
    pass


# MXNet 1.9.1's converters are written for ONNX opsets 12 and 13 (each operator is emitted by the
# newest converter <= the opset), but export_model stamps the model with the newest opset the
# installed onnx package knows (19 for onnx 1.14), which ONNX Runtime then holds it to (e.g. it
# has no Reshape-19 kernel). The graph is opset 13; say so.
EXPORTER_OPSET = 13


def _fix_exported_model(path):
    """Declare the opset the graph was written for, and keep only the real graph inputs: MXNet's
    exporter lists every weight as an input too, which stops ONNX Runtime from constant-folding."""
    import onnx
    model = onnx.load(path)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = EXPORTER_OPSET
    weights = {init.name for init in model.graph.initializer}
    real = [inp for inp in model.graph.input if inp.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return [inp.name for inp in real]


def export_onnx(spec, out, image_size=112):
    """Write the ONNX file (atomically); returns its path."""
    symbol, params, _ = parse_model_spec(spec)
    tmp = f"{out}.tmp{os.getpid()}.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mx.onnx.export_model(symbol, params, in_shapes=[(1, 3, image_size, image_size)],
                                 in_types=[np.float32], onnx_file_path=tmp, dynamic=True,
                                 dynamic_input_shapes=[(None, 3, image_size, image_size)])
        inputs = _fix_exported_model(tmp)
        if inputs != ["data"]:
            raise ExportError(f"{symbol}: the ONNX graph has inputs {inputs}, expected ['data']")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def onnx_embeddings(path, batch):
    """First output of the ONNX model on a float32 NCHW batch, with ONNX Runtime on CPU."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def check_onnx(spec, path, image_size=112, count=8, tolerance=1e-4, seed=0):
    """Compare ONNX Runtime with MXNet on ``count`` random images (and a batch of one);
    returns the largest relative difference, raises ExportError beyond ``tolerance``."""
    net, _ = load_exported_model(spec, mx.cpu())
    rng = np.random.RandomState(seed)
    worst = 0.0
    for n in (count, 1):
        batch = rng.randint(0, 256, (n, 3, image_size, image_size)).astype(np.float32)
        reference = net(mx.nd.array(batch))
        reference = (reference[0] if isinstance(reference, (list, tuple)) else reference).asnumpy()
        got = onnx_embeddings(path, batch)
        if got.shape != reference.shape:
            raise ExportError(f"{path}: ONNX output shape {got.shape} != MXNet {reference.shape}")
        scale = float(np.abs(reference).max()) or 1.0
        worst = max(worst, float(np.abs(got - reference).max()) / scale)
    if worst > tolerance:
        raise ExportError(f"{path}: ONNX Runtime differs from MXNet by {worst:.3g} (> {tolerance:g})")
    return worst


def build_parser():
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="PREFIX[,EPOCH]", help="exported MXNet model")
    parser.add_argument("--out", metavar="MODEL.onnx", help="output (default PREFIX.onnx)")
    parser.add_argument("--image-size", type=int, default=112, help="input size (default 112)")
    parser.add_argument("--check-images", type=int, default=8, help="random images for the check (default 8)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="allowed relative difference (default 1e-4)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.out or args.model.split(",")[0] + ".onnx"
    try:
        import onnx  # noqa: F401
    except ImportError:
        sys.exit("export: the onnx package is not installed (pip install onnx==1.14.1)")
    if not args.no_check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            sys.exit("export: onnxruntime is not installed (pip install --no-deps onnxruntime==1.15.1) "
                     "or use --no-check")
    try:
        export_onnx(args.model, out, args.image_size)
        if not args.no_check:
            try:
                worst = check_onnx(args.model, out, args.image_size, args.check_images, args.tolerance)
            except BaseException:
                os.remove(out)
                raise
            print(f"ONNX Runtime matches MXNet: max relative difference {worst:.2e} <= {args.tolerance:g}")
    except (ModelError, ExportError) as err:
        sys.exit(f"export: {err}")
    except Exception as err:  # the MXNet exporter raises plain exceptions for unsupported operators
        sys.exit(f"export: {args.model}: ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
