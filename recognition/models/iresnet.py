"""Improved ResNets (IResNet) of insightface / arcface_torch for 112x112 faces.

Unit ("IBasicBlock", insightface's ``residual_unit_v3``):
``BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN`` plus the shortcut (identity, or conv1x1(stride)
+ BN when the shape changes); no activation after the sum. Stem: conv3x3(64, stride 1) - BN - PReLU;
four stages of 64/128/256/512 channels each starting with a stride-2 unit, so 112x112 -> 7x7; then
the 'E' head (BN - Dropout - FC - BN).
"""
from mxnet.gluon import nn

from .embedding import EmbeddingHead, batch_norm, make_activation, normalize_input

STAGE_UNITS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
STAGE_CHANNELS = (64, 128, 256, 512)


def conv3x3(channels, in_channels, stride=1):
    return nn.Conv2D(channels, 3, strides=stride, padding=1, use_bias=False, in_channels=in_channels)


class IBasicBlock(nn.HybridBlock):
    def __init__(self, in_channels, channels, stride, act="prelu", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn1 = batch_norm(in_channels)
            self.conv1 = conv3x3(channels, in_channels)
            self.bn2 = batch_norm(channels)
            self.act = make_activation(act, channels)
            self.conv2 = conv3x3(channels, channels, stride)
            self.bn3 = batch_norm(channels)
            self.downsample = None
            if stride != 1 or in_channels != channels:
                self.downsample = nn.HybridSequential(prefix="downsample_")
                with self.downsample.name_scope():
                    self.downsample.add(nn.Conv2D(channels, 1, strides=stride, use_bias=False,
                                                  in_channels=in_channels),
                                        batch_norm(channels))

    def hybrid_forward(self, F, x):
        out = self.bn3(self.conv2(self.act(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.HybridBlock):
    """Input (N, 3, H, W) float32 RGB 0..255 -> (N, embedding_size) embedding (not normalised)."""

    def __init__(self, units, embedding_size=512, dropout=0.0, act="prelu", input_size=112, **kwargs):
        super().__init__(**kwargs)
        if input_size % 16:
            raise ValueError(f"input_size {input_size} must be a multiple of 16 (four stride-2 stages)")
        with self.name_scope():
            self.stem = nn.HybridSequential(prefix="stem_")
            with self.stem.name_scope():
                self.stem.add(conv3x3(64, 3), batch_norm(64), make_activation(act, 64))
            self.stages = nn.HybridSequential(prefix="")
            in_channels = 64
            for stage, (num_units, channels) in enumerate(zip(units, STAGE_CHANNELS), 1):
                layer = nn.HybridSequential(prefix=f"stage{stage}_")
                with layer.name_scope():
                    for unit in range(num_units):
                        layer.add(IBasicBlock(in_channels, channels, 2 if unit == 0 else 1, act,
                                              prefix=f"unit{unit + 1}_"))
                        in_channels = channels
                self.stages.add(layer)
            feature_size = input_size // 16
            self.head = EmbeddingHead(in_channels, feature_size * feature_size, embedding_size, dropout,
                                      prefix="head_")

    def hybrid_forward(self, F, x):
        return self.head(self.stages(self.stem(normalize_input(x))))


def iresnet(name, embedding_size=None, dropout=0.0, **kwargs):
    return IResNet(STAGE_UNITS[name], embedding_size or 512, dropout, prefix=f"{name}_", **kwargs)
