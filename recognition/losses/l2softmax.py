"""L2-constrained softmax head (Ranjan, Castillo, Chellappa 2017): ``l2softmax``.

The feature is L2-normalised and scaled to a hypersphere of radius alpha, then fed to the ordinary
softmax classifier: L_i = -log softmax(W (alpha x_i / |x_i|) + b)[y_i]. alpha is fixed or, with
``trainable_alpha: true``, a learned scalar (the paper reports a learned 40.7; best fixed 16 on LFW).

A too small radius cannot reach a probability p for the target even when the class is perfectly
separated; the paper's lower bound for reaching p with C classes is
alpha_low = log(p (C - 2) / (1 - p)). ``alpha: auto`` uses it with p = 0.9, and a fixed alpha below
it gets a warning.
"""
import math
import warnings

import mxnet as mx

from .softmax import ClassifierHead, l2_normalize


def alpha_lower_bound(num_classes, p=0.9):
    """Ranjan et al.'s alpha_low = log(p (C - 2) / (1 - p)) for C classes and target probability p."""
    if num_classes <= 2:
        raise ValueError("alpha_lower_bound needs num_classes > 2, got %r" % (num_classes,))
    if not 0.0 < p < 1.0:
        raise ValueError("alpha_lower_bound needs 0 < p < 1, got %r" % (p,))
    return math.log(p * (num_classes - 2) / (1.0 - p))


class L2SoftmaxLoss(ClassifierHead):
    """``l2softmax``: parameters ``alpha`` (float or ``"auto"``, default 16, the paper's best fixed
    value on LFW), ``trainable_alpha`` (default false), ``bias`` (default false).

    alpha lives in the Parameter ``head.alpha`` (shape (1,)); grad_req is 'write' when trainable,
    'null' when fixed, so either way it is saved with the other parameters.
    """

    def __init__(self, num_classes, embedding_size, alpha=16.0, trainable_alpha=False, bias=False,
                 prefix=None, params=None):
        super().__init__(num_classes, embedding_size, bias=bias, prefix=prefix, params=params)
        if isinstance(alpha, str):
            if alpha != "auto":
                raise ValueError("l2softmax alpha must be a number or 'auto', got %r" % (alpha,))
            alpha = alpha_lower_bound(self.num_classes)
        alpha = float(alpha)
        if alpha <= 0:
            raise ValueError("l2softmax alpha must be > 0, got %g" % alpha)
        if not trainable_alpha and self.num_classes > 2:
            low = alpha_lower_bound(self.num_classes)
            if alpha < low:
                warnings.warn("l2softmax alpha=%g is below the lower bound %.3f for %d classes "
                              "(Ranjan et al., p=0.9); training may not reach high target probabilities"
                              % (alpha, low, self.num_classes))
        self.initial_alpha = alpha
        with self.name_scope():
            self.alpha = self.params.get("alpha", shape=(1,), init=mx.init.Constant(alpha),
                                         grad_req="write" if trainable_alpha else "null")

    def scores(self, F, x, weight, bias=None, alpha=None, **params):
        scaled = F.broadcast_mul(l2_normalize(F, x), F.reshape(alpha, shape=(1, 1)))
        return super().scores(F, scaled, weight, bias)
