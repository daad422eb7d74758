"""A tiny face-embedding network for the evaluation tests (independent of recognition.models).

It takes what insightface's exported models take, float32 NCHW RGB in 0..255, and normalises
inside; its parameters come from a seeded NumPy generator so every process builds the same net.
"""
import numpy as np

import mxnet as mx
from mxnet.gluon import nn


class TinyFaceNet(nn.HybridBlock):
    def __init__(self, dim=16, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(8, 3, strides=2, padding=1)
            self.bn1 = nn.BatchNorm()
            self.conv2 = nn.Conv2D(16, 3, strides=2, padding=1)
            self.pool = nn.GlobalAvgPool2D()
            self.fc = nn.Dense(dim)

    def hybrid_forward(self, F, x):
        x = (x - 127.5) * 0.0078125  # normalisation inside the network, as insightface's models
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        # an explicit Reshape (as PReLU and flatten layers of real backbones export to)
        return self.fc(F.reshape(self.pool(x), shape=(0, -1)))


def build_tiny_net(seed=0, dim=16, image_size=112):
    """An initialised, hybridised TinyFaceNet with seeded parameters (same in every process)."""
    net = TinyFaceNet(dim, prefix="tinyface_")  # fixed names: every instance exports alike
    net.initialize(ctx=mx.cpu())
    net(mx.nd.zeros((1, 3, image_size, image_size)))  # materialise deferred shapes
    rng = np.random.RandomState(seed)
    for name, param in sorted(net.collect_params().items()):
        shape = param.shape
        if name.endswith("running_var") or name.endswith("gamma"):
            value = 1.0 + 0.1 * rng.rand(*shape)
        else:
            value = 0.2 * rng.randn(*shape)
        param.set_data(mx.nd.array(value.astype(np.float32)))
    net.hybridize()
    return net


def random_faces(n, size=112, seed=0):
    """Smooth random uint8 RGB images (blurred noise), so mirrored images differ but not wildly."""
    import cv2
    rng = np.random.RandomState(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        small = rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)
        images[i] = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    return images
