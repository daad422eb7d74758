"""Several exported face models combined into one exported model (an ensemble).

The combined model's embedding is the concatenation of its members' L2-normalised embeddings divided
by sqrt(K): its cosine between two faces is the mean of the members' cosines, and it is an ordinary
insightface-style model (one input ``data``, ``PREFIX-symbol.json`` + ``PREFIX-0000.params``), so
tools/verify.py, tools/embed.py, tools/eval_ijb.py and tools/export.py take it unchanged.
"""
import json
import math
import os

import mxnet as mx

from ..data.record import error_line
from .embed import ModelError, parse_model_spec


def _member(spec, prefix):
    """The member's first output and parameters, every node and parameter renamed ``prefix + name``
    (members trained from one architecture share every name)."""
    symbol_file, params_file, _ = parse_model_spec(spec)
    try:
        with open(symbol_file) as f:
            graph = json.load(f)
        for node in graph["nodes"]:
            node["name"] = prefix + node["name"]
        symbol = mx.sym.load_json(json.dumps(graph))
        saved = mx.nd.load(params_file)
    except (OSError, ValueError, KeyError, mx.base.MXNetError) as err:
        raise ModelError(f"{symbol_file}: cannot be read as an exported model ({error_line(err)})") from None
    if prefix + "data" not in symbol.list_arguments():
        raise ModelError(f"{symbol_file}: no input named 'data'")
    params = {}
    for key, value in saved.items():
        kind, _, name = key.rpartition(":")
        params[f"{kind or 'arg'}:{prefix}{name}"] = value
    return symbol[0], params


def combine_models(specs, out_prefix):
    """Write the ensemble of the exported models ``specs`` ("PREFIX[,EPOCH]" each) to ``out_prefix``
    (epoch 0), atomically. Returns (symbol path, params path)."""
    if len(specs) < 2:
        raise ModelError(f"an ensemble needs at least 2 models, got {len(specs)}")
    data = mx.sym.var("data")
    embeddings, params = [], {}
    for i, spec in enumerate(specs):
        prefix = f"member{i}_"
        symbol, member_params = _member(spec, prefix)
        composed = symbol(**{prefix + "data": data})
        embeddings.append(mx.sym.L2Normalization(composed, mode="instance", name=f"{prefix}l2norm"))
        params.update(member_params)
    combined = mx.sym.concat(*embeddings, dim=1, name="ensemble_concat") * (1.0 / math.sqrt(len(specs)))
    folder = os.path.dirname(out_prefix) or "."
    os.makedirs(folder, exist_ok=True)
    final = [f"{out_prefix}-symbol.json", f"{out_prefix}-0000.params"]
    temporary = [path + ".tmp" for path in final]
    try:
        combined.save(temporary[0])
        mx.nd.save(temporary[1], params)
        for path in temporary:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(temporary, final):
            os.replace(tmp, path)
    finally:
        for tmp in temporary:
            if os.path.exists(tmp):
                os.remove(tmp)
    return tuple(final)
