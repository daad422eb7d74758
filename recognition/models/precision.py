"""Mixed precision training: the backbone's graph rewritten to compute in bfloat16 (CPU) or float16 (GPU).

MXNet 1.9's AMP (``mxnet.contrib.amp``) keeps every operator outside its short low-precision list
in float32 and puts a cast before and after each of them; our networks' elementwise operators
then bounce between the two types, and AMP bf16 training was measured slower than float32 on
CPU. Here the hybridized backbone's symbol is rebuilt so that the whole trunk computes in the
low-precision type:

- the ``data`` input is cast once, at the start;
- Convolution and FullyConnected get their weights (float32 parameters) through an ``amp_cast``
  inside the graph, so the optimizer, the allreduce and the checkpoints keep float32 master
  weights and receive float32 gradients (the cast's backward): the multi-precision update comes
  for free, with any optimizer;
- BatchNorm keeps float32 scale, shift and running statistics (MKL-DNN and cuDNN normalise
  low-precision data with float32 parameters and accumulate the statistics in float32);
- every other operator runs in the type of its inputs, except the few without a low-precision
  kernel (FLOAT32_OPS), whose inputs are cast back to float32;
- the embedding is cast to float32 at the end, so the loss head (margins, softmax, the
  classifier's cosines) stays in float32.

bfloat16 (``train.precision: bfloat16``) is the CPU path: MKL-DNN kernels, float32's exponent
range, no loss scaling. float16 (``train.precision: float16``) is the GPU path (``mxnet-cu112``;
MXNet has no float16 GEMM on CPU): its narrow range needs the trainer's dynamic loss scaling
(recognition.engine.loss_scale). The rewritten block shares the original network's Parameter
objects: saving, exporting and evaluating the original network (float32) see the trained weights.
"""
import functools
import json

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..mxnet_errors import clear_pending_errors

# MXNet's bfloat16 type (the same object as mxnet.contrib.amp.bfloat16): numpy has no bf16
BFLOAT16 = np.dtype([("bfloat16", np.uint16)])
_MX_DTYPES = {"bfloat16": BFLOAT16, "float16": "float16", "float32": "float32"}

# operators whose inputs are cast to the low-precision type: the matrix products, where it halves the time
LOW_PRECISION_OPS = frozenset({"Convolution", "FullyConnected"})
# operators without a bfloat16 CPU kernel in MXNet 1.9.1 (probed op by op) or numerically unsafe in
# 16 bits (reductions into norms and softmax): computed in float32
FLOAT32_OPS = frozenset({"L2Normalization", "Dropout", "LeakyReLU", "softmax", "log_softmax", "SoftmaxOutput",
                         "SoftmaxActivation", "norm", "InstanceNorm", "LayerNorm"})
# BatchNorm's inputs after the data: gamma, beta, moving mean, moving variance (kept in float32)
_PARAMETER_INPUTS_IN_FLOAT32 = frozenset({"BatchNorm"})


def _operator(name):
    op = getattr(mx.sym, name, None)
    return op if op is not None else getattr(mx.sym._internal, name)


def _cast(symbol, dtype, want):
    if dtype == want:
        return symbol
    return mx.sym.amp_cast(symbol, dtype=_MX_DTYPES[want])


def _output(symbol, index):
    return symbol[index] if len(symbol.list_outputs()) > 1 else symbol


def low_precision_symbol(symbol, dtype="bfloat16", data_names=("data",)):
    """``symbol`` (a float32 graph) rebuilt to compute in ``dtype`` ('bfloat16' or 'float16'),
    its outputs cast back to float32.

    Variables keep their names, so a block built on the result binds the same parameters.
    """
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"low precision type must be bfloat16 or float16, got {dtype!r}")
    graph = json.loads(symbol.tojson())
    built = []  # per node: (symbol, dtype of its outputs)
    for node in graph["nodes"]:
        attrs = node.get("attrs", {})
        if node["op"] == "null":
            variable = mx.sym.var(node["name"], attr=dict(attrs))
            built.append((_cast(variable, "float32", dtype), dtype) if node["name"] in data_names
                         else (variable, "float32"))
            continue
        inputs = [(_output(built[node_id][0], index), built[node_id][1]) for node_id, index, _ in node["inputs"]]
        op = node["op"]
        if op in LOW_PRECISION_OPS:
            out_dtype = dtype
            args = [_cast(s, in_dtype, out_dtype) for s, in_dtype in inputs]
        elif op in FLOAT32_OPS:
            out_dtype = "float32"
            args = [_cast(s, in_dtype, out_dtype) for s, in_dtype in inputs]
        elif op in _PARAMETER_INPUTS_IN_FLOAT32:
            out_dtype = inputs[0][1]
            args = [inputs[0][0]] + [_cast(s, in_dtype, "float32") for s, in_dtype in inputs[1:]]
        else:  # runs in its inputs' type; mixed inputs meet in the low-precision type
            out_dtype = dtype if any(in_dtype == dtype for _, in_dtype in inputs) else "float32"
            args = [_cast(s, in_dtype, out_dtype) for s, in_dtype in inputs]
        built.append((_operator(op)(*args, name=node["name"], **attrs), out_dtype))
    heads = [_cast(_output(built[node_id][0], index), built[node_id][1], "float32")
             for node_id, index, _ in graph["heads"]]
    return heads[0] if len(heads) == 1 else mx.sym.Group(heads)


def low_precision_network(net, dtype="bfloat16", ctx=None):
    """A block computing ``net`` (initialised, float32, input ``data``) in ``dtype``, sharing its
    parameters; hybridize it like any block. Raises RuntimeError where ``dtype`` cannot run on
    ``ctx`` (default: the CPU).

    With bfloat16, run inference through this block too, not through ``net``: a float32
    inference-mode forward lets MKL-DNN re-lay grouped convolution weights out in place, and MXNet
    1.9.1 then cannot cast them ("could not create a primitive descriptor for a reorder
    primitive"). Training-mode forwards of ``net`` and saving or exporting it are fine.
    """
    ctx = ctx or mx.cpu()
    if dtype == "bfloat16" and not (ctx.device_type == "cpu" and bfloat16_supported()):
        raise RuntimeError("bfloat16 needs MXNet's MKL-DNN bfloat16 kernels on the CPU (an AVX-512 CPU); "
                           f"this {'machine' if ctx.device_type == 'cpu' else 'GPU context'} cannot run them "
                           "(train.precision=float32 runs anywhere)")
    if dtype == "float16" and ctx.device_type != "gpu":
        raise RuntimeError("float16 needs a GPU (mxnet-cu112): MXNet has no float16 matrix product on the CPU")
    data = mx.sym.var("data")
    return gluon.SymbolBlock(low_precision_symbol(net(data), dtype), [data], params=net.collect_params())


def bfloat16_symbol(symbol, data_names=("data",)):
    return low_precision_symbol(symbol, "bfloat16", data_names)


def bfloat16_network(net):
    return low_precision_network(net, "bfloat16")


@functools.lru_cache(maxsize=None)
def bfloat16_supported():
    """Whether a bfloat16 convolution, forward and backward, runs on this machine's CPU."""
    try:
        from mxnet import autograd
        x = mx.nd.amp_cast(mx.nd.ones((1, 8, 4, 4)), dtype=BFLOAT16)
        w = mx.nd.amp_cast(mx.nd.ones((8, 8, 3, 3)), dtype=BFLOAT16)
        w.attach_grad()
        with autograd.record():
            y = mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=8, no_bias=True)
        y.backward()
        return bool(np.isfinite(mx.nd.amp_cast(w.grad, dtype="float32").asnumpy()).all())
    except mx.base.MXNetError:
        clear_pending_errors()  # the probe's other failed operators would fail the next training step
        return False
