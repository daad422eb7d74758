"""Combined angular margin head (``margin``; ``arcface`` and ``cosface`` are presets of it).

With normalised weights and features, cos(theta_j) = W_j x / (|W_j| |x|). The target logit becomes
s * (cos(m1 * theta_y + m2) - m3) and every other logit s * cos(theta_j); the loss is the
cross-entropy of those logits. ArcFace is (m1, m2, m3) = (1, 0.5, 0), CosFace is (1, 0, 0.35).

Where m1 * theta + m2 passes pi, cos(m1 theta + m2) turns back up, so a sample on the wrong side
would be *rewarded* for moving further away. We follow insightface (its ArcFace ``easy_margin``
off path, also arcface_torch's old ``CombinedMarginLoss``): past the threshold
theta_t = (pi - m2) / m1 the target logit is replaced by cos(theta) - m3 - delta, with
delta = ((m1 - 1) theta_t + m2) * sin(theta_t), the first-order expansion of the margin around the
threshold. For m1 = 1 this is exactly insightface's ``cos(theta) - m * sin(m)``. The fallback is
monotone in theta, so the gradient never changes sign.

At cos = +-1 the derivative of arccos is infinite; cos is clipped to [-1 + 1e-6, 1 - 1e-6] before
arccos, so the gradient is finite there (zero exactly at +-1, where the clip saturates) and equals
the analytic derivative of the formula everywhere inside the clip range. Pure additive cosine margins
(m1 = 1, m2 = 0) never take the arccos path at all.
"""
import math

from .softmax import ClassifierHead, cosine_scores, cross_entropy

COS_CLIP = 1e-6


class MarginLoss(ClassifierHead):
    """``margin``: s * (cos(m1 theta + m2) - m3) on the target class, cross-entropy.

    Parameters: ``s`` (scale, default 64), ``m1`` (multiplicative angular), ``m2`` (additive
    angular, radians), ``m3`` (additive cosine). Defaults are ArcFace's (1, 0.5, 0).
    ``predict`` returns the cosines (B, C).
    """

    def __init__(self, num_classes, embedding_size, s=64.0, m1=1.0, m2=0.5, m3=0.0,
                 prefix=None, params=None):
        super().__init__(num_classes, embedding_size, bias=False, prefix=prefix, params=params)
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        if self.s <= 0 or self.m1 <= 0:
            raise ValueError("margin head needs s > 0 and m1 > 0, got s=%g m1=%g" % (self.s, self.m1))
        if self.m2 < 0 or self.m3 < 0:
            raise ValueError("margin head needs m2 >= 0 and m3 >= 0, got m2=%g m3=%g" % (self.m2, self.m3))
        self._needs_angle = not (self.m1 == 1.0 and self.m2 == 0.0)
        self._theta_t = (math.pi - self.m2) / self.m1
        self._delta = ((self.m1 - 1.0) * self._theta_t + self.m2) * math.sin(self._theta_t)

    def scores(self, F, x, weight, **params):
        return cosine_scores(F, x, weight, self.num_classes)

    def target_logit(self, F, cos_t):
        """cos(m1 theta + m2) - m3 with the insightface fallback past pi (unscaled)."""
        if not self._needs_angle:
            return cos_t - self.m3
        theta = F.arccos(F.clip(cos_t, -1.0 + COS_CLIP, 1.0 - COS_CLIP))
        margined = F.cos(self.m1 * theta + self.m2) - self.m3
        if self._theta_t >= math.pi:  # m1 theta + m2 can never pass pi
            return margined
        fallback = cos_t - self.m3 - self._delta
        return F.where(theta > self._theta_t, fallback, margined)

    def loss_from_scores(self, F, cos, label, **params):
        cos_t = F.pick(cos, label, axis=1)
        # Only the target column changes: add (new - old) on it through a one-hot mask.
        change = F.expand_dims(self.target_logit(F, cos_t) - cos_t, axis=1)
        logits = F.broadcast_add(cos, F.broadcast_mul(F.one_hot(label, self.num_classes), change))
        return cross_entropy(F, self.s * logits, label, self.label_smoothing)
