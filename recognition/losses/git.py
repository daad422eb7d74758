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
|P_i| = B - 1 for every i, so the batch mean is exactly the mean over all ordered pairs. push_i = 0
when P_i is empty. Centres are constants in the gradient and follow the centre-loss update rule
(:mod:`recognition.losses.center`, reused, not copied). Squared distances use
||x||^2 + ||c||^2 - 2 x.c (a (B, B) matrix, no (B, B, D) tensor), clipped at 0 against round-off.
"""
from .center import CenterLoss, WithCenterLoss
from .softmax import SoftmaxLoss


class PullPushTerm(CenterLoss):
    """Center loss ("pull") plus lambda_g times the Git "push" term, sharing the same centres."""

    def __init__(self, num_classes, embedding_size, lambda_c, lambda_g, alpha, exclude_same_label,
                 prefix=None, params=None):
        super().__init__(num_classes, embedding_size, lambda_c=lambda_c, alpha=alpha, prefix=prefix, params=params)
        self.lambda_g = float(lambda_g)
        if self.lambda_g < 0:
            raise ValueError("git loss needs lambda_g >= 0, got %g" % self.lambda_g)
        self.exclude_same_label = bool(exclude_same_label)

    def hybrid_forward(self, F, x, label, centers):
        pull = super().hybrid_forward(F, x, label, centers)
        c = F.take(centers, label)
        sq_dist = F.relu(F.broadcast_add(F.sum(F.square(x), axis=1, keepdims=True),
                                         F.expand_dims(F.sum(F.square(c), axis=1), axis=0))
                         - 2.0 * F.dot(x, c, transpose_b=True))                      # (B, B): x_i vs c_{y_j}
        if self.exclude_same_label:
            excluded = F.broadcast_equal(F.expand_dims(label, 1), F.expand_dims(label, 0))
        else:
            index = F.contrib.arange_like(label, axis=0)
            excluded = F.broadcast_equal(F.expand_dims(index, 1), F.expand_dims(index, 0))
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
