"""Pieces every backbone shares: input normalisation, the activation, and the embedding heads.

All blocks are Gluon HybridBlocks that know their input channels, so parameter shapes are known
before the first forward and a network can be counted, initialised and hybridized straight away.
"""
import mxnet as mx
from mxnet.gluon import nn

# insightface's networks take raw 0..255 RGB and normalise as their first operation, so an exported
# model needs no preprocessing beyond alignment: (x - 127.5) / 128.
INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125

ACTIVATIONS = ("prelu", "prelu_native", "relu")


def normalize_input(x):
    """Raw 0..255 pixels -> about [-1, 1]; works on NDArray and Symbol alike."""
    return (x - INPUT_MEAN) * INPUT_SCALE


class PReLU(nn.HybridBlock):
    """Per-channel PReLU, ``y = max(x, 0) + alpha * min(x, 0)``, for NCHW feature maps.

    MXNet 1.9's own PReLU (``LeakyReLU(act_type='prelu')``, also behind ``gluon.nn.PReLU``) computes
    the gradient of alpha with a slow generic reduction, and so does every composite built on
    ``minimum``/``where``/broadcast products (``_backward_minimum_scalar`` alone took 15% of an
    IResNet-18 step with 2 threads, and in bfloat16 it is 10x slower still). Here the same function is
    written with MKL-DNN operators only: ``alpha * x + (1 - alpha) * relu(x)``, the two per-channel
    products as depthwise 1x1 convolutions. The alpha gradient becomes two convolution weight
    gradients, which MKL-DNN reduces fast, and the block runs natively in bfloat16 too
    (recognition.models.precision). The parameter (``alpha``, shape (C,), init 0.25 as in
    insightface and PyTorch) and the gradients are exactly those of PReLU (tests/test_models.py).
    """

    def __init__(self, channels, alpha_init=0.25, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.alpha = self.params.get("alpha", shape=(channels,), init=mx.init.Constant(alpha_init))

    def _per_channel(self, F, x, scale):
        return F.Convolution(x, weight=F.reshape(scale, shape=(-1, 1, 1, 1)), kernel=(1, 1),
                             num_filter=self.channels, num_group=self.channels, no_bias=True)

    def hybrid_forward(self, F, x, alpha):
        return self._per_channel(F, x, alpha) + self._per_channel(F, F.Activation(x, act_type="relu"), 1.0 - alpha)

    def __repr__(self):
        return f"{self.__class__.__name__}({self.channels})"


class NativePReLU(nn.HybridBlock):
    """The same PReLU through MXNet's LeakyReLU operator (slow backward; kept for comparison)."""

    def __init__(self, channels, alpha_init=0.25, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.alpha = self.params.get("alpha", shape=(channels,), init=mx.init.Constant(alpha_init))

    def hybrid_forward(self, F, x, alpha):
        return F.LeakyReLU(x, gamma=alpha, act_type="prelu")

    def __repr__(self):
        return f"{self.__class__.__name__}({self.channels})"


def make_activation(act, channels):
    """``act``: 'prelu' (fast formulation), 'prelu_native' (MXNet's operator) or 'relu'."""
    if act == "prelu":
        return PReLU(channels)
    if act == "prelu_native":
        return NativePReLU(channels)
    if act == "relu":
        return nn.Activation("relu")
    raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")


def embedding_batch_norm(bn, F, x):
    """BatchNorm of an (N, D) batch, run as (N, D, 1, 1).

    MXNet 1.9.1's MKL-DNN BatchNorm caches primitives by a key that does not tell a 2-D (N, D)
    input from an MKL-DNN-laid-out (N, D, 1, 1) one: after MobileFaceNet's GDC BatchNorm on
    (N, 512, 1, 1) has run, a 2-D BatchNorm on (N, 512) (the 512-d IResNet head) reuses the wrong
    primitive and crashes the process. Keeping every BatchNorm 4-D avoids the 2-D path entirely.
    """
    return F.flatten(bn(F.reshape(x, shape=(0, 0, 1, 1))))


def batch_norm(channels, **kwargs):
    # eps as arcface_torch (1e-5); momentum 0.9 as insightface's MXNet networks.
    return nn.BatchNorm(in_channels=channels, epsilon=1e-5, momentum=0.9, **kwargs)


class EmbeddingHead(nn.HybridBlock):
    """insightface's 'E' output: BN - Dropout - FC - BN over the flattened last feature map.

    The last BatchNorm has its scale fixed at 1 (MXNet ``fix_gamma``, arcface_torch's frozen
    ``features.weight``), so the embedding is only centred and scaled per dimension by batch
    statistics.
    """

    def __init__(self, in_channels, in_spatial, embedding_size, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn = batch_norm(in_channels)
            self.dropout = nn.Dropout(dropout) if dropout > 0 else None
            # in_units 0 (unknown spatial size, e.g. a gluoncv trunk) is inferred at the first forward
            self.fc = nn.Dense(embedding_size, in_units=in_channels * in_spatial if in_spatial else 0)
            self.features = batch_norm(embedding_size, scale=False)

    def hybrid_forward(self, F, x):
        x = self.bn(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return embedding_batch_norm(self.features, F, self.fc(x))


class GDCHead(nn.HybridBlock):
    """MobileFaceNet's global depthwise convolution output (insightface 'GDC').

    A 7x7 depthwise convolution + BN replaces global pooling so each position has its own weight,
    then FC - BN (scale fixed at 1) give the embedding.
    """

    def __init__(self, in_channels, kernel, embedding_size, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(in_channels, kernel, groups=in_channels, use_bias=False,
                                  in_channels=in_channels)
            self.bn = batch_norm(in_channels)
            self.dropout = nn.Dropout(dropout) if dropout > 0 else None
            self.fc = nn.Dense(embedding_size, in_units=in_channels)
            self.features = batch_norm(embedding_size, scale=False)

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return embedding_batch_norm(self.features, F, self.fc(x))
