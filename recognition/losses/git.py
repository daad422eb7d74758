"""Git loss (Calefati, Janjua, Nawaz, Gallo; BMVC 2018): ``git``.

Eq. 1 of the paper: L = L_S + lambda_C L_C + lambda_G L_G with
    L_S softmax cross-entropy, L_C = 1/2 sum_i ||x_i - c_{y_i}||^2 (center loss, "pull"),
    L_G = sum_{i != j} 1 / (1 + ||x_i - c_{y_j}||^2)                 ("push").

Per-sample form returned here (the trainer averages over the batch):
    loss_i = CE_i + (lambda_c / 2) ||x_i - c_{y_i}||^2 + lambda_g * push_i,
    push_i = mean over j in P_i of 1 / (1 + ||x_i - c_{y_j}||^2),
with P_i = {j != i} (the paper's pairs) or, with ``exclude_same_label: true``, {j : y_j != y_i}
(a pair i, j with equal labels would push x_i away from its *own* centre, against the pull term).

Normalisation: the paper's double sum is divided by |P_i| per sample; with the paper's pairs
|P_i| = N - 1 for every i, so the batch mean is exactly the mean over all ordered pairs. push_i = 0
when P_i is empty.

Which batch the pairs j run over: the push of x_i needs only the *labels* y_j of the other samples
(the centres are identical on every rank), so under Horovod j runs over the global batch of all
workers, using the labels ``update_state`` allgathers for the centre update anyway. A loss call
uses them when its ``labels`` are the very NDArray given to the last ``update_state`` (the trainer's
order); any other call (no update_state, other labels) pairs within its own batch. Single-process
both are the same, and the distributed result equals the single-process one on the concatenated
batch.

Centres are constants in the gradient and follow the centre-loss update rule
(:mod:`recognition.losses.center`, reused, not copied). Squared distances use
||x||^2 + ||c||^2 - 2 x.c (a (B, N) matrix, no (B, N, D) tensor), clipped at 0 against round-off.
"""
import mxnet as mx

from .. import distributed
from .center import CenterLoss, WithCenterLoss
from .softmax import SoftmaxLoss


class PullPushTerm(CenterLoss):
    """Center loss ("pull") plus lambda_g times the Git "push" term, sharing the same centres.

    Called as ``term(x, label, pair_labels, offset)``: the pairs j run over ``pair_labels`` (N,),
    and local sample i is number ``offset + i`` among them (for the i != j exclusion).
    """

    def __init__(self, num_classes, embedding_size, lambda_c, lambda_g, alpha, exclude_same_label,
                 prefix=None, params=None):
        super().__init__(num_classes, embedding_size, lambda_c=lambda_c, alpha=alpha, prefix=prefix, params=params)
        self.lambda_g = float(lambda_g)
        if self.lambda_g < 0:
            raise ValueError("git loss needs lambda_g >= 0, got %g" % self.lambda_g)
        self.exclude_same_label = bool(exclude_same_label)

    def hybrid_forward(self, F, x, label, pair_labels, offset, centers):
        pull = super().hybrid_forward(F, x, label, centers)
        c = F.take(centers, pair_labels)
        sq_dist = F.relu(F.broadcast_add(F.sum(F.square(x), axis=1, keepdims=True),
                                         F.expand_dims(F.sum(F.square(c), axis=1), axis=0))
                         - 2.0 * F.dot(x, c, transpose_b=True))                      # (B, N): x_i vs c_{y_j}
        own = F.broadcast_add(F.contrib.arange_like(label, axis=0), offset)   # global index of x_i
        excluded = F.broadcast_equal(F.expand_dims(own, 1),                   # j == i
                                     F.expand_dims(F.contrib.arange_like(pair_labels, axis=0), 0))
        if self.exclude_same_label:                                           # y_j == y_i (includes j == i)
            excluded = F.maximum(excluded, F.broadcast_equal(F.expand_dims(label, 1),
                                                             F.expand_dims(pair_labels, 0)))
        pairs = 1.0 - excluded
        push = F.sum(pairs / (1.0 + sq_dist), axis=1) / F.maximum(F.sum(pairs, axis=1), 1.0)
        return pull + self.lambda_g * push


class GitLoss(WithCenterLoss):
    """``git``: parameters ``lambda_c`` (default 0.01), ``lambda_g`` (default 0.1) -- the values of the
    authors' MNIST example -- ``alpha`` (centre rate, 0.5), ``exclude_same_label`` (default false:
    the paper's i != j pairs), ``bias`` of the softmax layer (default false).
    ``head.weight`` is the softmax weight, ``head.centers`` the centres."""

    def __init__(self, num_classes, embedding_size, lambda_c=0.01, lambda_g=0.1, alpha=0.5,
                 exclude_same_label=False, bias=False, prefix=None, params=None):
        super().__init__(SoftmaxLoss(num_classes, embedding_size, bias=bias),
                         PullPushTerm(num_classes, embedding_size, lambda_c, lambda_g, alpha, exclude_same_label),
                         prefix=prefix, params=params)
        self._pairs = None  # (labels given to update_state, global labels, offset of this rank)

    def update_state(self, embeddings, labels):
        _, global_labels = self.center.update_state(embeddings, labels)
        with mx.autograd.pause():
            sizes = distributed.allgather(mx.nd.array([labels.shape[0]], ctx=labels.context),
                                          name=self.name + "_sizes")
            offset = sizes[:distributed.rank()].sum() if distributed.rank() else mx.nd.zeros((1,), ctx=labels.context)
        self._pairs = (labels, global_labels, offset.reshape((1,)))

    def forward(self, x, label):
        if self._pairs is not None and self._pairs[0] is label:
            pair_labels, offset = self._pairs[1], self._pairs[2]
        else:
            pair_labels, offset = label, mx.nd.zeros((1,), ctx=label.context)
        return super().forward(x, label, pair_labels, offset)

    def hybrid_forward(self, F, x, label, pair_labels, offset):
        return self.head(x, label) + self.center(x, label, pair_labels, offset)
