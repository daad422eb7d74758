"""Softmax cross-entropy head, and the classifier base every classifier head builds on.

A classifier head owns the last fully connected layer ``weight`` (C, D) (and optionally ``bias``),
turns the embeddings into class scores with :meth:`ClassifierHead.scores` and turns the scores into
a per-sample loss with :meth:`ClassifierHead.loss_from_scores`. Subclasses override only these two
hooks, so ``predict`` (used by the trainer's train-accuracy metric) always agrees with the loss.
"""
import mxnet as mx
from mxnet.gluon import HybridBlock


def l2_normalize(F, x):
    """Rows of ``x`` scaled to unit L2 norm (the op adds eps=1e-10 under the root, so 0 stays finite)."""
    return F.L2Normalization(x, mode="instance")


def cosine_scores(F, x, weight, num_classes):
    """cos(theta) between every embedding and every class weight, (B, C)."""
    return F.FullyConnected(l2_normalize(F, x), l2_normalize(F, weight), num_hidden=num_classes, no_bias=True)


def cross_entropy(F, logits, label, smoothing=0.0):
    """-log softmax(logits)[label], one value per row (log_softmax is the stable form). With
    ``smoothing`` eps, the cross-entropy against the smoothed target (1 - eps) on the label plus
    eps / C on every class (Szegedy et al. 2016): (1 - eps) (-log p_y) + eps mean_j (-log p_j)."""
    log_p = F.log_softmax(logits, axis=1)
    loss = -F.pick(log_p, label, axis=1)
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * F.mean(log_p, axis=1)
    return loss


def check_sizes(num_classes, embedding_size):
    if num_classes is None or int(num_classes) < 2:
        raise ValueError("num_classes must be an integer >= 2, got %r" % (num_classes,))
    if embedding_size is None or int(embedding_size) < 1:
        raise ValueError("embedding_size must be a positive integer, got %r" % (embedding_size,))
    return int(num_classes), int(embedding_size)


class ClassifierHead(HybridBlock):
    """Base of the heads with a classifier: owns ``weight`` (C, D) and, with ``bias=True``, ``bias`` (C,).

    The weight's shape is fully known here (no deferred init), so ``head.initialize()`` creates it
    and it can be set before the first call. Its initializer is N(0, 0.01), insightface's fc7 choice.
    ``label_smoothing`` (set by ``get_loss`` before hybridizing) is the eps of :func:`cross_entropy`
    for the heads whose loss is the cross-entropy of their logits.
    """
    label_smoothing = 0.0

    def __init__(self, num_classes, embedding_size, bias=False, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self.num_classes, self.embedding_size = check_sizes(num_classes, embedding_size)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(self.num_classes, self.embedding_size),
                                          init=mx.init.Normal(0.01))
            self.bias = (self.params.get("bias", shape=(self.num_classes,), init=mx.init.Zero())
                         if bias else None)

    # --- the two hooks subclasses override -------------------------------------------------------
    def scores(self, F, x, weight, bias=None, **params):
        """Class scores (B, C): the plain fully connected layer W x + b."""
        return F.FullyConnected(x, weight, bias, num_hidden=self.num_classes, no_bias=bias is None)

    def loss_from_scores(self, F, scores, label, **params):
        return cross_entropy(F, scores, label, self.label_smoothing)

    # --- shared plumbing -------------------------------------------------------------------------
    def hybrid_forward(self, F, x, label, **params):
        return self.loss_from_scores(F, self.scores(F, x, **params), label, **params)

    def predict(self, embeddings):
        """Class scores (B, C) for ``embeddings`` (imperative); argmax is the predicted class."""
        ctx = embeddings.context
        params = {name: p.data(ctx) for name, p in self._reg_params.items() if p is not None}
        return self.scores(mx.nd, embeddings, **params)


class SoftmaxLoss(ClassifierHead):
    """``softmax``: fully connected layer (``bias`` optional, default off) and cross-entropy,
    L_i = -log(exp(W_{y_i} x_i + b_{y_i}) / sum_j exp(W_j x_i + b_j))."""
