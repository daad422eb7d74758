"""Center loss (Wen, Zhang, Li, Qiao; ECCV 2016): ``center``, and the combinator that adds it to
any other head (``center: {lambda_c: ..., alpha: ...}`` in that head's params).

Loss of sample i: (lambda_c / 2) ||x_i - c_{y_i}||^2, gradient lambda_c (x_i - c_{y_i}) w.r.t. x_i.
The centres are not trained by the optimiser (Parameter ``head.centers``, grad_req='null') but by
the paper's rule, with n_j the number of samples of class j in the batch (repeated labels add up):

    delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),        c_j <- c_j - alpha * delta_j

Timing. The trainer calls ``update_state(embeddings, labels)`` once per step *before* the loss, and
the loss of step t must use c^t while the update uses batch t (as in the paper's algorithm). So
``update_state`` first applies the update still pending from the previous step (giving c^t), then
records batch t as the new pending update; the loss of step t therefore sees c^t, and c^{t+1} is
written at the start of step t+1. ``flush_state()`` applies a pending update now; the trainer calls
it before saving a checkpoint so the update is not lost. Flushing early does not change the
trajectory (nothing else touches the centres in between), so it may be called any time.

Horovod: the batch recorded is the *global* one (embeddings and labels allgathered in rank order),
and every rank applies the same arithmetic on the same data, so centres stay identical on all ranks
and equal the single-process result on the concatenated batch.
"""
import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import HybridBlock

from .. import distributed
from .softmax import check_sizes


class CenterLoss(HybridBlock):
    """``center``: parameters ``lambda_c`` (default 0.003) and ``alpha`` (centre rate, default 0.5),
    Wen et al.'s face-recognition settings. Centres start at zero."""

    def __init__(self, num_classes, embedding_size, lambda_c=0.003, alpha=0.5, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self.num_classes, self.embedding_size = check_sizes(num_classes, embedding_size)
        self.lambda_c, self.alpha = float(lambda_c), float(alpha)
        if self.lambda_c < 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError("center loss needs lambda_c >= 0 and 0 <= alpha <= 1, got lambda_c=%g alpha=%g"
                             % (self.lambda_c, self.alpha))
        with self.name_scope():
            self.centers = self.params.get("centers", shape=(self.num_classes, self.embedding_size),
                                           init=mx.init.Zero(), grad_req="null")
        self._pending = None

    def hybrid_forward(self, F, x, label, centers):
        return 0.5 * self.lambda_c * F.sum(F.square(x - F.take(centers, label)), axis=1)

    def update_state(self, embeddings, labels):
        """Apply the pending update (c^t), then record this step's global batch for c^{t+1}.

        Returns the recorded global batch (embeddings (N, D), labels (N,)), rank order."""
        with autograd.pause():
            self.flush_state()
            x = embeddings.detach().astype("float32").copy()
            y = labels.detach().reshape((-1,)).astype("float32").copy()
            x = distributed.allgather(x, name=self.name + "_x")
            y = distributed.allgather(y, name=self.name + "_y")
            self._pending = (x, y)
        return x, y

    def flush_state(self):
        """Apply the pending centre update now (call before saving a checkpoint)."""
        if self._pending is None:
            return
        x, y = self._pending
        self._pending = None
        labels = y.asnumpy().astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError("center loss: labels must lie in [0, %d), got min %d max %d"
                             % (self.num_classes, labels.min(), labels.max()))
        # Group the batch by class on the host (B labels, cheap) so the update touches only the
        # classes present: O(B D) work instead of a dense (C, D) scatter.
        classes, group = np.unique(labels, return_inverse=True)
        with autograd.pause():
            for centers in self.centers.list_data():
                ctx = centers.context
                member = mx.nd.one_hot(mx.nd.array(group, ctx=ctx), len(classes))  # (N, U)
                sums = mx.nd.dot(member, x.as_in_context(ctx), transpose_a=True)    # (U, D)
                counts = member.sum(axis=0).reshape((-1, 1))                        # (U, 1)
                index = mx.nd.array(classes, ctx=ctx, dtype="int64")
                c = mx.nd.take(centers, index)
                delta = (counts * c - sums) / (1.0 + counts)
                centers[index] = c - self.alpha * delta


class WithCenterLoss(HybridBlock):
    """``head`` + a centre term (a :class:`CenterLoss` or subclass): per-sample sum of both.

    ``update_state`` / ``flush_state`` drive both parts (the wrapped head's first, when it has
    them). ``centers`` is the centre term's Parameter; every other attribute the wrapper lacks
    (``weight``, ``predict``, ``scale``, ...) is the wrapped head's.
    """

    def __init__(self, head, center, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self.head = head
        self.center = center

    def __getattr__(self, name):
        # Only reached when normal lookup fails (e.g. weight, predict, scale); private names never delegate.
        head = self.__dict__.get("head")
        if head is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(head, name)

    @property
    def centers(self):
        return self.center.centers

    def hybrid_forward(self, F, x, label):
        return self.head(x, label) + self.center(x, label)

    def update_state(self, embeddings, labels):
        if hasattr(self.head, "update_state"):
            self.head.update_state(embeddings, labels)
        self.center.update_state(embeddings, labels)

    def flush_state(self):
        if hasattr(self.head, "flush_state"):
            self.head.flush_state()
        self.center.flush_state()
