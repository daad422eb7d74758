"""Backbones that map aligned faces to embeddings, by name.

Every network takes float32 NCHW RGB pixels in 0..255 (normally (N, 3, 112, 112)), normalises them
as its first operation ((x - 127.5) * 0.0078125, as insightface) and returns the (N, D) embedding,
not L2-normalised. Hybridized and exported (``net.export``), the symbol's input is ``data`` and its
only output the embedding, like insightface's released models.

    net = get_model("iresnet50")                  # 512-d
    net = get_model("mobilefacenet")              # 128-d, insightface 'y1'
    net = get_model("gluoncv:resnet18_v1b")       # a gluoncv trunk + the 'E' head
    net.initialize(default_initializer())
"""
import json

import mxnet as mx
from mxnet.gluon import nn

from .embedding import ACTIVATIONS, EmbeddingHead, normalize_input  # noqa: F401 (re-exported)
from .iresnet import STAGE_UNITS, IResNet, iresnet  # noqa: F401
from .mobilefacenet import MobileFaceNet, mobilefacenet  # noqa: F401

GLUONCV_PREFIX = "gluoncv:"
_BUILDERS = {"mobilefacenet": mobilefacenet, **{name: iresnet for name in STAGE_UNITS}}
MODEL_NAMES = tuple(_BUILDERS)

# gluoncv classifiers whose forward is not a ``features`` block: the trunk layers, in forward order
_V1B_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
# layers that end a trunk: global pooling and the classifier
_CLASSIFIER_LAYERS = (nn.GlobalAvgPool2D, nn.GlobalMaxPool2D, nn.Flatten, nn.Dense, nn.Dropout)


def get_model(name, embedding_size=None, dropout=0.0, **kwargs):
    """A backbone by name: one of MODEL_NAMES, or ``gluoncv:<model-zoo name>``.

    ``embedding_size`` defaults to 512 (128 for mobilefacenet); ``dropout`` is the rate before the
    embedding FC. Keyword options: ``act`` ('prelu', 'prelu_native' or 'relu'), ``input_size``
    (112); for mobilefacenet also ``scale`` (1: insightface 'y1', 2: arcface_torch mbf) and
    ``blocks``; other keywords of a gluoncv name go to gluoncv's get_model.
    """
    if name.startswith(GLUONCV_PREFIX):
        return GluonCVBackbone(name[len(GLUONCV_PREFIX):], embedding_size or 512, dropout, **kwargs)
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)} "
                         f"or '{GLUONCV_PREFIX}<gluoncv model-zoo name>' (e.g. {GLUONCV_PREFIX}resnet18_v1b)")
    return _BUILDERS[name](name, embedding_size=embedding_size, dropout=dropout, **kwargs)


def default_initializer():
    """insightface's MXNet initialiser: Gaussian Xavier, fan-out, magnitude 2 (He for conv)."""
    return mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)


class GluonCVBackbone(nn.HybridBlock):
    """A gluoncv model-zoo classifier without its pooling and classifier, plus the 'E' head.

    Built with ``pretrained=False`` (no downloads). The trunk is the model's ``features`` block with
    trailing global pooling / flatten / dense layers removed, or for the ResNetV1b family its stem
    and four stages. Other models raise ValueError.
    """

    def __init__(self, zoo_name, embedding_size=512, dropout=0.0, input_size=112, **kwargs):
        super().__init__(prefix=f"{zoo_name.replace('.', '_')}_")
        import gluoncv
        try:
            classifier = gluoncv.model_zoo.get_model(zoo_name, pretrained=False, **kwargs)
        except ValueError as err:
            raise ValueError(f"gluoncv model {zoo_name!r}: {str(err).splitlines()[0]}") from None
        layers = self._trunk_layers(zoo_name, classifier)
        # the trunk's output shape at input_size fixes the FC width now, so shapes are known early
        _, shapes, _ = self._sequential(layers)(mx.sym.var("data")).infer_shape(
            data=(1, 3, input_size, input_size))
        channels, height, width = shapes[0][1:]
        with self.name_scope():
            self.trunk = self._sequential(layers)
            self.head = EmbeddingHead(channels, height * width, embedding_size, dropout, prefix="head_")

    @staticmethod
    def _sequential(layers):
        trunk = nn.HybridSequential(prefix="")
        trunk.add(*layers)
        return trunk

    @staticmethod
    def _trunk_layers(zoo_name, classifier):
        features = getattr(classifier, "features", None)
        if isinstance(features, nn.HybridSequential):
            layers = list(features._children.values())
            while layers and isinstance(layers[-1], _CLASSIFIER_LAYERS):
                layers.pop()
        elif all(getattr(classifier, attr, None) is not None for attr in _V1B_TRUNK):
            layers = [getattr(classifier, attr) for attr in _V1B_TRUNK]
        else:
            raise ValueError(f"gluoncv model {zoo_name!r}: no recognised feature trunk (supported: models "
                             f"with a 'features' block, and the resnet*_v1b/c/d/s family)")
        if not layers:
            raise ValueError(f"gluoncv model {zoo_name!r}: its feature trunk is empty")
        return layers

    def hybrid_forward(self, F, x):
        return self.head(self.trunk(normalize_input(x)))


def _symbol(net, input_shape):
    out = net(mx.sym.var("data"))
    if isinstance(out, (list, tuple)):
        out = out[0]
    arg_shapes, out_shapes, aux_shapes = out.infer_shape(data=input_shape)
    if arg_shapes is None:
        raise ValueError(f"cannot infer the shapes of {net.name} for input {input_shape}")
    return out, dict(zip(out.list_arguments(), arg_shapes))


def count_params(net, input_shape=(1, 3, 112, 112)):
    """Number of parameters as PyTorch counts them: weights, biases, BN gamma/beta (also a fixed
    gamma), PReLU alphas; not BatchNorm running statistics. Needs no initialisation: shapes are
    inferred symbolically."""
    _, shapes = _symbol(net, input_shape)
    total = 0
    for name, shape in shapes.items():
        if name == "data":
            continue
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def forward_macs(net, input_shape=(1, 3, 112, 112)):
    """Multiply-accumulates of one forward over the batch in ``input_shape``, counting the
    convolutions and fully-connected layers with learned weights (the ptflops / arcface_torch
    convention, which reports these as "GFLOPs"; BN, activations and additions are left out, and so
    is the depthwise 1x1 convolution that implements PReLU, whose weight is computed, not learned)."""
    out, shapes = _symbol(net, input_shape)
    internals = out.get_internals()
    _, int_shapes, _ = internals.infer_shape(data=input_shape)
    out_shape = dict(zip(internals.list_outputs(), int_shapes))
    graph = json.loads(out.tojson())
    nodes = graph["nodes"]
    macs = 0
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        weight = nodes[node["inputs"][1][0]]
        if weight["op"] != "null" or weight["name"] not in shapes:
            continue  # weight computed inside the graph (the PReLU formulation)
        w_shape = shapes[weight["name"]]
        per_output = 1
        for dim in w_shape[1:]:
            per_output *= dim  # (in_channels / groups) * kernel area, or in_units
        y_shape = out_shape[node["name"] + "_output"]
        outputs = 1
        for dim in y_shape:
            outputs *= dim
        macs += outputs * per_output
    return macs


def forward_flops(name_or_net, input_size=112, **kwargs):
    """FLOPs of one image's forward (2 x multiply-accumulates, see forward_macs)."""
    net = get_model(name_or_net, **kwargs) if isinstance(name_or_net, str) else name_or_net
    return 2 * forward_macs(net, (1, 3, input_size, input_size))


def build_backbone(name, precision="float32", ctx=None, hybridize=True, initializer=None, **model_kwargs):
    """The network every trainer and benchmark trains: ``get_model(name, **model_kwargs)``,
    initialised (deferred shapes resolved), hybridized, and for ``precision`` bfloat16 / float16 a
    low-precision graph of it (recognition.models.precision). Returns (net, compute_net,
    embedding_size): ``net`` holds the float32 parameters (save, export, load and broadcast it);
    ``compute_net`` is what forwards run (``net`` itself in float32). RuntimeError where the
    precision cannot run on ``ctx``."""
    from .precision import low_precision_network
    ctx = ctx or mx.cpu()
    if precision not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown precision {precision!r} (float32, bfloat16, float16)")
    net = get_model(name, **model_kwargs)
    net.initialize(initializer or default_initializer(), ctx=ctx)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    # a training-mode forward (nothing recorded, so no BatchNorm statistics move): in inference mode
    # MKL-DNN reorders convolution weights in place into a layout that bfloat16 casts cannot read
    with mx.autograd.train_mode():
        side = model_kwargs.get("input_size", 112)
        embedding_size = net(mx.nd.zeros((2, 3, side, side), ctx=ctx)).shape[1]
    if precision == "float32":
        return net, net, embedding_size
    compute_net = low_precision_network(net, precision, ctx)
    if hybridize:
        compute_net.hybridize(static_alloc=True, static_shape=True)
    return net, compute_net, embedding_size
