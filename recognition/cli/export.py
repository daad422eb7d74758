"""Convert an exported face model (PREFIX-symbol.json + PREFIX-NNNN.params) to ONNX with MXNet's
own exporter (mx.onnx.export_model), then check that ONNX Runtime gives the same embeddings as
MXNet on random images (max |difference| <= --tolerance x max |embedding|).

The ONNX model has one input `data`, float32 (N, 3, H, W) RGB 0..255 with a dynamic batch size,
and the model's outputs. A failed export or check leaves no output file.

Two MXNet 1.9.1 exporter bugs are repaired in the written graph: the constants it folds from
parameters (the PReLU's 1 - alpha, which it wrote as alpha - 1) are recomputed with MXNet, and the
slopes of ONNX PRelu are reshaped to broadcast over the channel axis, not the width.
"""
import argparse
import json
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


def _refold_constants(model, symbol_file, params_file):
    """Recompute, with MXNet, every initializer the exporter folded from parameters.

    mx2onnx evaluates a scalar operator whose input is a parameter itself and stores the result as an
    initializer named after the MXNet node. For ``_rminus_scalar`` / ``_rdiv_scalar`` (``c - x``,
    ``c / x``) it decides the operand order by ``name.startswith("_rminusscalar")``, which Gluon's
    prefixed names ("..._prelu0__rminusscalar0") never match, so it writes ``x - c``: our PReLU's
    ``1 - alpha`` became ``alpha - 1`` and every PReLU network was wrong (relative error ~1). Each
    such initializer is an MXNet node computed from parameters alone, so its true value is that
    node evaluated on the parameters, whatever operator it is. Returns the names recomputed."""
    from onnx import numpy_helper
    symbol = mx.sym.load(symbol_file)
    internals = symbol.get_internals()
    outputs = {name: i for i, name in enumerate(internals.list_outputs())}
    ops = {node["name"]: node["op"] for node in json.loads(symbol.tojson())["nodes"]}
    saved = mx.nd.load(params_file)
    values = {key.split(":", 1)[-1]: value for key, value in saved.items()}
    fixed = []
    for index, init in enumerate(model.graph.initializer):
        if ops.get(init.name, "null") == "null" or f"{init.name}_output" not in outputs:
            continue  # a parameter or an exporter constant (scalar_opN, shapes), not a folded node
        node = internals[outputs[f"{init.name}_output"]]
        arguments = node.list_arguments()
        if node.list_auxiliary_states() or not all(name in values for name in arguments):
            raise ExportError(f"{symbol_file}: the exporter folded {init.name!r}, which depends on more "
                              f"than parameters; cannot check its value")
        value = node.eval(ctx=mx.cpu(), **{name: values[name] for name in arguments})[0].asnumpy()
        old = numpy_helper.to_array(init)
        if value.size != old.size:
            raise ExportError(f"{symbol_file}: folded {init.name!r} has {old.size} values, "
                              f"MXNet {value.size}")
        model.graph.initializer[index].CopyFrom(
            numpy_helper.from_array(value.astype(old.dtype).reshape(old.shape), init.name))
        fixed.append(init.name)
    return fixed


def _fix_prelu_slopes(model, symbol_file, image_size):
    """Make each PRelu slope of shape (C,) broadcast over the channel axis: (C, 1, 1) for NCHW.

    MXNet's LeakyReLU(act_type='prelu') applies gamma (C,) along axis 1, but mx2onnx passes it to
    ONNX PRelu unchanged, where numpy broadcasting aligns it with the last axis (W): ONNX Runtime
    refuses it when W != C and computes the wrong thing when W == C. Returns the nodes changed."""
    import onnx
    from onnx import numpy_helper
    # each ONNX PRelu is named after its MXNet LeakyReLU, whose output has its input's rank; MXNet's
    # shape inference is used rather than ONNX's, which re-encodes every weight (slow in the
    # pure-Python protobuf this project pins)
    internals = mx.sym.load(symbol_file).get_internals()
    _, shapes, _ = internals.infer_shape(data=(1, 3, image_size, image_size))
    ranks = {name[:-len("_output")]: len(shape) for name, shape in zip(internals.list_outputs(), shapes)
             if name.endswith("_output")}
    initializers = {init.name: init for init in model.graph.initializer}
    fixed, replaced = [], set()
    for index in reversed(range(len(model.graph.node))):  # reversed: inserting keeps earlier indices
        node = model.graph.node[index]
        if node.op_type != "PRelu":
            continue
        slope = node.input[1]
        rank = ranks.get(node.name)
        if rank is None:
            raise ExportError(f"PRelu {node.name!r}: no MXNet node of that name; cannot align its slope")
        if rank <= 2:
            continue  # (N, C): (C,) already lines up with the channel axis
        shape = [-1] + [1] * (rank - 2)
        name = f"{slope}_channel_{rank}d"
        if slope in initializers:
            dims = list(initializers[slope].dims)
            if len(dims) != 1 or dims == [1]:
                continue  # one shared slope broadcasts anywhere; another rank is left as written
            if name not in initializers:  # a new initializer: whatever else reads the slope keeps it
                value = numpy_helper.to_array(initializers[slope]).reshape(shape)
                initializers[name] = numpy_helper.from_array(value, name)
                model.graph.initializer.append(initializers[name])
        else:  # a computed slope: reshape it in the graph, just before its PRelu
            shape_name = f"{name}_shape"
            if shape_name not in initializers:
                initializers[shape_name] = numpy_helper.from_array(np.array(shape, np.int64), shape_name)
                model.graph.initializer.append(initializers[shape_name])
            model.graph.node.insert(index, onnx.helper.make_node("Reshape", [slope, shape_name], [name],
                                                                 name=name))
        replaced.add(slope)
        node.input[1] = name
        fixed.append(node.name)
    used = {name for node in model.graph.node for name in node.input}
    for init in [init for init in model.graph.initializer if init.name not in used]:
        if init.name in replaced:  # an original (C,) slope that nothing reads any more
            model.graph.initializer.remove(init)
    return fixed


def _fix_exported_model(path, symbol_file, params_file, image_size):
    """Declare the opset the graph was written for, keep only the real graph inputs (MXNet's
    exporter lists every weight as an input too, which stops ONNX Runtime from constant-folding),
    recompute the constants the exporter folded and align the PRelu slopes (see above)."""
    import onnx
    model = onnx.load(path)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = EXPORTER_OPSET
    weights = {init.name for init in model.graph.initializer}
    real = [inp for inp in model.graph.input if inp.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real)
    _refold_constants(model, symbol_file, params_file)
    _fix_prelu_slopes(model, symbol_file, image_size)
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
        inputs = _fix_exported_model(tmp, symbol, params, image_size)
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
