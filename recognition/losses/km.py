"""Knot Magnify loss (Rao, Yu, Yang, Feng; Huawei Noah's Ark): ``km``.

With p the softmax probability of the true class, L = -(1 / (gamma p + 1)^2) log p. Easy samples
(large p) are damped relative to hard ones; gamma = 0 is exactly softmax cross-entropy.

Gradient: by default (``detach_weight: false``) the whole formula is differentiated, factor
included, as the loss is written. With ``detach_weight: true`` the factor 1/(gamma p + 1)^2 is held
constant in the backward pass, i.e. it acts as a per-sample weight on the softmax gradient (the
poster's reading "adds different weight to each sample's loss"). Both give the same loss value.
"""
import math

from .softmax import ClassifierHead


def critical_point(gamma):
    """p_c(gamma) = sqrt(1 / (gamma log(1 + gamma))) - 1 / gamma, where the normalised KM loss
    equals the normalised softmax loss (poster: 0.1 -> 0.244, 1 -> 0.202, ..., 8 -> 0.114)."""
    gamma = float(gamma)
    if gamma <= 0:
        raise ValueError("critical_point needs gamma > 0, got %g" % gamma)
    return math.sqrt(1.0 / (gamma * math.log1p(gamma))) - 1.0 / gamma


class KnotMagnifyLoss(ClassifierHead):
    """``km``: parameters ``gamma`` (default 1), ``detach_weight`` (default false), ``bias``."""

    def __init__(self, num_classes, embedding_size, gamma=1.0, detach_weight=False, bias=False,
                 prefix=None, params=None):
        super().__init__(num_classes, embedding_size, bias=bias, prefix=prefix, params=params)
        self.gamma = float(gamma)
        if self.gamma < 0:
            raise ValueError("km gamma must be >= 0, got %g" % self.gamma)
        self.detach_weight = bool(detach_weight)

    def loss_from_scores(self, F, logits, label, **params):
        log_p = F.pick(F.log_softmax(logits, axis=1), label, axis=1)
        factor = 1.0 / F.square(self.gamma * F.exp(log_p) + 1.0)
        if self.detach_weight:
            factor = F.BlockGrad(factor)
        return -factor * log_p
