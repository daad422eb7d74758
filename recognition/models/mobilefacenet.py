"""MobileFaceNet (Chen et al. 2018) as in insightface's MXNet 'y1' network and arcface_torch's ``mbf``.

Layout for a 112x112 input, ``scale`` multiplying the 64/128 trunk widths (1: insightface 'y1',
2: arcface_torch ``get_mbf``), ``blocks`` the residual bottlenecks per stage:

    conv3x3/2 64s - conv3x3 dw (64 groups)                      56x56
    bottleneck/2 (expand 128) 64s + blocks[1] x residual(128)   28x28
    bottleneck/2 (expand 256) 128s + blocks[2] x residual(256)  14x14
    bottleneck/2 (expand 512) 128s + blocks[3] x residual(256)   7x7
    conv1x1 512 - GDC head (7x7 depthwise + BN, FC, BN)

A bottleneck is conv1x1 expand - BN - PReLU - 3x3 depthwise(stride) - BN - PReLU - conv1x1 project
- BN (linear, no activation), with an identity shortcut in the residual ones.
"""
from mxnet.gluon import nn

from .embedding import GDCHead, batch_norm, make_activation, normalize_input


class ConvBlock(nn.HybridSequential):
    """conv - BN - activation (no activation: insightface's 'Linear' block)."""

    def __init__(self, in_channels, channels, kernel=1, stride=1, padding=0, groups=1, act="prelu", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.add(nn.Conv2D(channels, kernel, strides=stride, padding=padding, groups=groups,
                               use_bias=False, in_channels=in_channels),
                     batch_norm(channels))
            if act is not None:
                self.add(make_activation(act, channels))


class Bottleneck(nn.HybridBlock):
    """insightface's ``DResidual``; ``residual`` adds the identity shortcut (stride 1, same width)."""

    def __init__(self, in_channels, channels, expand, stride, residual, act="prelu", **kwargs):
        super().__init__(**kwargs)
        self.residual = residual
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            with self.body.name_scope():
                self.body.add(ConvBlock(in_channels, expand, act=act, prefix="expand_"),
                              ConvBlock(expand, expand, 3, stride, 1, groups=expand, act=act, prefix="dw_"),
                              ConvBlock(expand, channels, act=None, prefix="project_"))

    def hybrid_forward(self, F, x):
        out = self.body(x)
        return out + x if self.residual else out


class MobileFaceNet(nn.HybridBlock):
    """Input (N, 3, H, W) float32 RGB 0..255 -> (N, embedding_size) embedding (not normalised)."""

    def __init__(self, embedding_size=128, dropout=0.0, scale=1, blocks=(1, 4, 6, 2), act="prelu",
                 input_size=112, **kwargs):
        super().__init__(**kwargs)
        if input_size % 16:
            raise ValueError(f"input_size {input_size} must be a multiple of 16 (four stride-2 steps)")
        if len(blocks) != 4:
            raise ValueError(f"blocks must have 4 entries, got {blocks!r}")
        wide, wider = 64 * scale, 128 * scale
        with self.name_scope():
            self.trunk = nn.HybridSequential(prefix="")
            with self.trunk.name_scope():
                self.trunk.add(ConvBlock(3, wide, 3, 2, 1, act=act, prefix="conv1_"))
                if blocks[0] == 1:
                    # both references: 64 groups, depthwise at scale 1
                    self.trunk.add(ConvBlock(wide, wide, 3, 1, 1, groups=64, act=act, prefix="conv2_dw_"))
                else:
                    for i in range(blocks[0]):
                        self.trunk.add(Bottleneck(wide, wide, 128, 1, True, act, prefix=f"res2_{i}_"))
                stages = ((wide, wide, 128, blocks[1], 128), (wide, wider, 256, blocks[2], 256),
                          (wider, wider, 512, blocks[3], 256))
                for stage, (cin, cout, expand, repeats, res_expand) in enumerate(stages, 3):
                    self.trunk.add(Bottleneck(cin, cout, expand, 2, False, act, prefix=f"dconv{stage}_"))
                    for i in range(repeats):
                        self.trunk.add(Bottleneck(cout, cout, res_expand, 1, True, act, prefix=f"res{stage}_{i}_"))
                self.trunk.add(ConvBlock(wider, 512, act=act, prefix="conv6_sep_"))
            self.head = GDCHead(512, input_size // 16, embedding_size, dropout, prefix="head_")

    def hybrid_forward(self, F, x):
        return self.head(self.trunk(normalize_input(x)))


def mobilefacenet(name="mobilefacenet", embedding_size=None, dropout=0.0, **kwargs):
    return MobileFaceNet(embedding_size or 128, dropout, prefix=f"{name}_", **kwargs)
