"""AdaCos (Zhang et al., CVPR 2019): cosine softmax with an adaptive scale, ``adacos``.

Logits are s * cos(theta_j) with normalised features and weights, no margin, and cross-entropy.

* fixed (``dynamic: false``): s = sqrt(2) * ln(C - 1) for C classes.
* dynamic (default): s starts at the fixed value and is re-estimated every step without gradient,
      s <- ln(B_avg) / cos(min(pi/4, theta_med)),
  B_avg = (1/N) sum_i sum_{k != y_i} exp(s_old cos theta_{i,k}) over the batch (old s), theta_med the
  median target angle theta_{i,y_i} (for even N the mean of the two middle values).
  The trainer calls ``update_state`` before the loss, so the loss of step t uses the s estimated on
  batch t, as in the paper's algorithm. Each rank computes, per sample, log sum_{k != y_i} exp(...)
  (log form, so large s or C cannot overflow) and its target angle; both are allgathered, so B_avg
  and theta_med come from the global batch and every rank sets the same s.

The scale lives in the Parameter ``head.s`` (shape (1,), grad_req='null', saved in checkpoints);
``head.scale`` reads it as a float. ``update_state`` recomputes the cosines with the current
weights (one extra B x C x D product per step, under ``autograd.pause``).
"""
import math

import mxnet as mx
from mxnet import autograd

from .. import distributed
from .softmax import ClassifierHead, cosine_scores, cross_entropy


def fixed_scale(num_classes):
    """The paper's fixed AdaCos scale sqrt(2) * ln(C - 1)."""
    if num_classes <= 2:
        raise ValueError("AdaCos needs num_classes > 2 (ln(C - 1) > 0), got %r" % (num_classes,))
    return math.sqrt(2.0) * math.log(num_classes - 1)


class AdaCosLoss(ClassifierHead):
    """``adacos``: parameter ``dynamic`` (default true). ``predict`` returns the cosines."""

    def __init__(self, num_classes, embedding_size, dynamic=True, prefix=None, params=None):
        super().__init__(num_classes, embedding_size, bias=False, prefix=prefix, params=params)
        self.dynamic = bool(dynamic)
        with self.name_scope():
            self.s = self.params.get("s", shape=(1,), init=mx.init.Constant(fixed_scale(self.num_classes)),
                                     grad_req="null")

    @property
    def scale(self):
        return float(self.s.list_data()[0].asscalar())

    def scores(self, F, x, weight, **params):
        return cosine_scores(F, x, weight, self.num_classes)

    def loss_from_scores(self, F, cos, label, s=None, **params):
        return cross_entropy(F, F.broadcast_mul(cos, F.reshape(s, shape=(1, 1))), label, self.label_smoothing)

    def update_state(self, embeddings, labels):
        """Dynamic AdaCos: re-estimate s on this step's (global) batch; no-op when fixed."""
        if not self.dynamic:
            return
        nd = mx.nd
        with autograd.pause():
            ctx = embeddings.context
            labels = labels.detach().reshape((-1,)).astype("float32")
            cos = self.scores(nd, embeddings.detach(), self.weight.data(ctx))
            s_old = self.s.data(ctx)
            target = nd.one_hot(labels, self.num_classes)
            theta = nd.arccos(nd.clip(nd.pick(cos, labels, axis=1), -1.0, 1.0))
            # log sum_{k != y} exp(s cos_k): push the target column to -1e30 so it vanishes.
            z = nd.broadcast_mul(cos, s_old.reshape((1, 1))) - 1e30 * target
            log_sums = _logsumexp(z, axis=1)

            theta = distributed.allgather(theta, name=self.name + "_theta")
            log_sums = distributed.allgather(log_sums, name=self.name + "_logsum")
            n = theta.shape[0]
            log_b_avg = _logsumexp(log_sums, axis=0) - math.log(n)
            ordered = nd.sort(theta)
            theta_med = 0.5 * (ordered[(n - 1) // 2:(n - 1) // 2 + 1] + ordered[n // 2:n // 2 + 1])
            s_new = log_b_avg.reshape((1,)) / nd.cos(nd.minimum(theta_med, math.pi / 4))
            self.s.set_data(s_new)


def _logsumexp(z, axis):
    top = z.max(axis=axis, keepdims=True)
    return (mx.nd.log(mx.nd.exp(mx.nd.broadcast_sub(z, top)).sum(axis=axis, keepdims=True)) + top).squeeze(axis=axis)
