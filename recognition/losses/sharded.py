"""Model-parallel classifier heads for millions of identities, and Partial FC.

A classifier over C classes holds a (C, D) weight; with millions of identities it no longer fits
(or no longer trains fast) on one worker. Here every rank holds a contiguous block of classes,
``shard_range(C, rank, size)``: C // size rows each, the last rank also the remainder. The softmax
is still computed over *all* C classes for every sample of the *global* batch:

1. every rank gathers the embeddings X (B, D) and labels (B,) of all ranks (allgather);
2. it computes the logits of the global batch against its own block, z (B, C_r). The head's target
   transform (ArcFace/CosFace/combined margin) is applied on the rank that owns the target class;
3. per sample, its block's log-sum-exp lse_r = log sum_{j in block} exp(z_j) (from MXNet's fused,
   stable log_softmax) and, on the owning rank, the target logit z_y (0 elsewhere); one allgather
   of these (size, 2, B) rows gives every rank lse = log sum_r exp(lse_r) (shifted by the max over
   r, so nothing overflows) and z_y = sum_r of the target parts;
4. log p = z_y - lse for every sample; the head's loss phi(log p) (-log p for the softmax
   family, the Knot Magnify weighting for ``km``); each rank returns the rows of its own samples,
   so the head keeps the contract ``head(embeddings, labels) -> (b,)`` of the unsharded heads.

Autograd design. The collectives on the gradient path are a custom ``mx.autograd.Function``;
everything local (normalisation, margins, scale, exp, log, the loss) is ordinary recorded MXNet,
so the formulas are differentiated by MXNet exactly as in the unsharded heads. The global objective
is sum over ranks of each rank's own samples' losses, i.e. every sample counted once:

* ``_AllGather`` (rows of each rank -> all rows, replicated), used twice: for the embeddings
  (x_r -> X) and for the (lse_r, target part) rows. Its backward is allreduce_sum of every rank's
  gradient w.r.t. the gathered rows, then this rank's rows. Rank q's dL/dX holds the part of every
  sample's gradient that flows through q's class block (and q's gradient w.r.t. the gathered
  (lse, target) rows is non-zero only for q's own samples), so the sum over ranks is the full
  gradient of each sample's loss.
* the shifts (row maximum, max over ranks of lse_r) are detached: the log-sum-exp does not depend
  on them.

The weight block is an ordinary Parameter used only here, so its gradient is the gradient of the
*global* batch's loss w.r.t. those rows, computed on its rank alone.

Gradient scaling under Horovod. ``local_params()`` (weight block, bias block) must be stepped by a
plain ``gluon.Trainer`` with ``update(b * size)``, b the local batch size (the trainer passes the
global batch size) and the same learning rate as the DistributedTrainer: DistributedTrainer turns
each rank's sum over its b samples into sum_ranks / (size * b), the global-batch mean, and the
block's gradient already is the global-batch sum. Everything else (the backbone, l2softmax's
trainable alpha, the AdaCos scale with grad_req='null') stays with the DistributedTrainer and
update(b): the alpha gradient of each rank is the part through its block, so the DistributedTrainer's
average of them (sum / size) is exactly what the unsharded head gives (sum of the ranks' local
sums / size). The local parameters must be neither broadcast nor allreduced (each rank holds
different rows); initialise them on every rank from one full matrix (``set_full_weight``) or from
per-rank seeds.

Partial FC (An et al., insightface): with ``sample_ratio`` r < 1 each rank, each training step,
keeps the classes of its block that are targets of the global batch (positives) plus random other
classes of its block up to ceil(r * C_r) (all positives even when there are more), sorted, and
computes the logits against those rows only (``take``: only they get gradients). The softmax is
then over the union of the ranks' sampled classes. The sample depends only on (seed, rank, step);
``set_step`` sets the step counter on resume. Sampling happens only in training mode
(``autograd.is_training()``); the loss outside training uses all classes. The unsampled rows get a
zero gradient; an optimizer with momentum or weight decay still moves them, as in arcface_torch's
PartialFC_V2 (the memory saving is in the logits, B x r C_r instead of B x C_r).

Supported heads: softmax (with optional bias), margin / arcface / cosface, l2softmax (fixed or
trainable alpha), adacos (fixed or dynamic; the dynamic scale is estimated on the global batch over
all classes of all blocks) and km. The head's parameters are validated, and its formulas taken, from
an *uninitialised* instance of the ordinary head built by ``get_loss`` (no memory is allocated for
its (C, D) weight): the margin target transform is ``MarginLoss.target_logit``, the scores use
``softmax.cosine_scores``/``l2_normalize``, the AdaCos start scale is ``adacos.fixed_scale``.
The Knot Magnify weighting, written by ``KnotMagnifyLoss`` on the full logits, and the AdaCos
scale re-estimation, written on full rows, are re-expressed here on the reduced per-sample
quantities (log p; global non-target log-sum-exp and target angle).

Labels travel as float32, exact up to 2**24 classes.
"""
import math

import numpy as np

import mxnet as mx
from mxnet import autograd
from mxnet.gluon import Block

from .. import distributed
from .adacos import AdaCosLoss
from .km import KnotMagnifyLoss
from .l2softmax import L2SoftmaxLoss
from .margin import MarginLoss
from .softmax import SoftmaxLoss, cosine_scores, l2_normalize

# exact classes of the ordinary heads this module can shard (subclasses such as center/git are not
# accepted: their centres are another (C, D) matrix this module does not shard)
_KINDS = {SoftmaxLoss: "plain", KnotMagnifyLoss: "plain", L2SoftmaxLoss: "l2", MarginLoss: "margin",
          AdaCosLoss: "adacos"}


def shard_range(num_classes, rank, size):
    """[start, end) of the classes held by ``rank`` of ``size``: C // size each, the last rank the rest."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError("shard_range needs 0 <= rank < size, got rank=%r size=%r" % (rank, size))
    if num_classes < size:
        raise ValueError("cannot shard %d classes over %d workers" % (num_classes, size))
    per = num_classes // size
    return rank * per, (num_classes if rank == size - 1 else (rank + 1) * per)


def num_sampled(shard_size, sample_ratio):
    """Partial FC's rows per block: ceil(r * C_r), at least one."""
    return max(1, int(math.ceil(sample_ratio * shard_size - 1e-9)))


def sample_classes(positives, shard_size, num_sample, rng):
    """Sorted local class ids: every positive, then random others up to ``num_sample``.

    As insightface's Partial FC: uniform random keys, positives forced to the top, the top
    ``num_sample`` kept (all positives when there are more of them).
    """
    positives = np.unique(np.asarray(positives, dtype=np.int64))
    if len(positives) >= num_sample:
        return positives
    keys = rng.random(shard_size)
    keys[positives] = 2.0
    return np.sort(np.argpartition(-keys, num_sample - 1)[:num_sample])


class _AllGather(autograd.Function):
    """X = rows of every rank in rank order; dx_r = (sum over ranks of dX)[rows of r]."""

    def __init__(self, offset, name):
        super().__init__()
        self.offset, self.name = offset, name

    def forward(self, x):
        self.rows = x.shape[0]
        out = distributed.allgather(x, name=self.name)
        return out.copy() if out is x else out

    def backward(self, dy):
        total = distributed.allreduce_sum(dy, name=self.name + ".grad")
        return total[self.offset:self.offset + self.rows]


class ShardedClassifier(Block):
    """Classifier head of kind ``head_kind`` (a ``get_loss`` name) with its classes sharded over
    the Horovod workers; ``sample_ratio`` < 1 turns on Partial FC. ``head_params`` are the head's
    own parameters (``s``, ``m1``.., ``alpha``, ``dynamic``, ``gamma``, ``bias``...), checked by
    ``get_loss``. Call it as ``head(embeddings, labels)`` -> per-sample loss (b,) of the local
    samples; under Horovod every rank must call it in the same step (it is collective)."""

    def __init__(self, head_kind, num_classes, embedding_size, sample_ratio=1.0, seed=0, prefix=None,
                 params=None, **head_params):
        super().__init__(prefix=prefix, params=params)
        from . import get_loss
        if "center" in head_params:
            raise ValueError("sharded loss %r: a 'center' term is not supported (its (C, D) centres "
                             "would need sharding too)" % (head_kind,))
        # The ordinary head, never initialised: validates the parameters and holds the formulas.
        # object.__setattr__ keeps it out of this Block's children and parameters.
        reference = get_loss(head_kind, num_classes=num_classes, embedding_size=embedding_size,
                             **head_params)
        kind = _KINDS.get(type(reference))
        if kind is None:
            raise ValueError("loss %r has no shardable classifier; shardable: softmax, margin, arcface, "
                             "cosface, l2softmax, adacos, km" % (head_kind,))
        object.__setattr__(self, "_reference", reference)
        self.kind = kind
        self.num_classes, self.embedding_size = reference.num_classes, reference.embedding_size
        self.sample_ratio = float(sample_ratio)
        if not 0.0 < self.sample_ratio <= 1.0:
            raise ValueError("sample_ratio must be in (0, 1], got %r" % (sample_ratio,))
        self.seed = int(seed)
        self.rank, self.size = distributed.rank(), distributed.size()
        self.start, self.end = shard_range(self.num_classes, self.rank, self.size)
        self.shard_size = self.end - self.start
        self.num_sample = num_sampled(self.shard_size, self.sample_ratio)
        self.step = 0  # Partial FC sampling counter (one per training forward)
        self.last_sampled = None  # global class ids this rank used in the last forward
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(self.shard_size, self.embedding_size),
                                          init=mx.init.Normal(0.01))
            has_bias = getattr(reference, "bias", None) is not None
            self.bias = (self.params.get("bias", shape=(self.shard_size,), init=mx.init.Zero())
                         if has_bias else None)
            if kind == "l2":
                self.alpha = self.params.get("alpha", shape=(1,), init=mx.init.Constant(reference.initial_alpha),
                                             grad_req=reference.alpha.grad_req)
            if kind == "adacos":
                self.s = self.params.get("s", shape=(1,), init=reference.s.init, grad_req="null")

    # ------------------------------------------------------------------ trainer contract
    def local_params(self):
        """This rank's own parameters (weight block, bias block): never broadcast nor allreduced;
        step them with a plain gluon.Trainer and ``update(global batch size)``."""
        params = mx.gluon.ParameterDict()
        params._params[self.weight.name] = self.weight
        if self.bias is not None:
            params._params[self.bias.name] = self.bias
        return params

    def shared_params(self):
        """The parameters equal on every rank (l2softmax alpha, AdaCos scale): DistributedTrainer."""
        local = set(self.local_params().keys())
        params = mx.gluon.ParameterDict()
        for name, param in self.collect_params().items():
            if name not in local:
                params._params[name] = param
        return params

    def set_step(self, step):
        """Partial FC's step counter (set it to the resumed step on resume)."""
        self.step = int(step)

    @property
    def scale(self):
        if self.kind != "adacos":
            raise AttributeError("only the adacos head has an adaptive scale")
        return float(self.s.list_data()[0].asscalar())

    def set_full_weight(self, weight, bias=None):
        """Set this rank's block from a full (C, D) weight (and (C,) bias), NumPy or NDArray."""
        weight = weight.asnumpy() if isinstance(weight, mx.nd.NDArray) else np.asarray(weight)
        if weight.shape != (self.num_classes, self.embedding_size):
            raise ValueError("full weight must be %s, got %s" % ((self.num_classes, self.embedding_size),
                                                                 weight.shape))
        self.weight.set_data(mx.nd.array(weight[self.start:self.end]))
        if bias is not None and self.bias is not None:
            bias = bias.asnumpy() if isinstance(bias, mx.nd.NDArray) else np.asarray(bias)
            self.bias.set_data(mx.nd.array(bias[self.start:self.end]))

    def full_weight(self):
        """The full (C, D) weight on every rank (collective; for export and checkpoints)."""
        with autograd.pause():
            return distributed.allgather(self.weight.data().copy(), name=self.name + ".full_weight")

    # ------------------------------------------------------------------ the per-head pieces
    def _scores(self, X, W, bias):
        """Unscaled scores of the global batch against rows W: logits or cosines (B, n)."""
        nd = mx.nd
        if self.kind == "plain":
            return nd.FullyConnected(X, W, bias, num_hidden=W.shape[0], no_bias=bias is None)
        if self.kind == "l2":
            scaled = nd.broadcast_mul(l2_normalize(nd, X), self.alpha.data().reshape((1, 1)))
            return nd.FullyConnected(scaled, W, bias, num_hidden=W.shape[0], no_bias=bias is None)
        return cosine_scores(nd, X, W, W.shape[0])

    def _logits(self, scores, local_label, owned):
        """Final logits: the margin on the owned target column, then the head's scale."""
        nd = mx.nd
        if self.kind == "margin":
            ref = self._reference
            cos_t = nd.pick(scores, local_label, axis=1)
            change = (ref.target_logit(nd, cos_t) - cos_t) * owned
            target = nd.one_hot(local_label, scores.shape[1])
            return ref.s * nd.broadcast_add(scores, nd.broadcast_mul(target, change.expand_dims(1)))
        if self.kind == "adacos":
            return nd.broadcast_mul(scores, self.s.data().reshape((1, 1)))
        return scores

    def _loss_of_log_p(self, log_p):
        """phi(log p): cross-entropy -log p, or Knot Magnify's -(1 / (gamma p + 1)^2) log p."""
        if isinstance(self._reference, KnotMagnifyLoss):
            factor = 1.0 / mx.nd.square(self._reference.gamma * mx.nd.exp(log_p) + 1.0)
            if self._reference.detach_weight:
                factor = factor.detach()
            return -factor * log_p
        return -log_p

    # ------------------------------------------------------------------ collective pieces
    def _gather(self, embeddings, labels):
        """(X with gradient routing, labels (B,), offset of this rank's rows)."""
        nd = mx.nd
        b = embeddings.shape[0]
        with autograd.pause():
            sizes = distributed.allgather(nd.array([b], dtype="int32"), name=self.name + ".sizes").asnumpy()
            Y = distributed.allgather(labels.detach().reshape((-1,)).astype("float32"), name=self.name + ".labels")
        offset = int(sizes[:self.rank].sum())
        X = _AllGather(offset, self.name + ".x")(embeddings)
        return X, Y, offset

    def _global_max(self, z, tag):
        """Per-sample max over every rank's block (B,), no gradient."""
        with autograd.pause():
            local = z.detach().max(axis=1).expand_dims(0)
            return distributed.allgather(local, name=self.name + tag).max(axis=0)

    def _targets(self, Y, sampled):
        """(local column of each sample's target (0 where not owned), owned mask) as float32 (B,)."""
        nd = mx.nd
        if sampled is None:
            owned = (Y >= self.start) * (Y < self.end)
            return (Y - self.start) * owned, owned
        y = Y.asnumpy().astype(np.int64) - self.start
        owned = (y >= 0) & (y < self.shard_size)
        column = np.where(owned, np.searchsorted(sampled, np.clip(y, 0, None)), 0)
        return nd.array(column, ctx=Y.context), nd.array(owned, ctx=Y.context)

    def _sample(self, Y):
        y = Y.asnumpy().astype(np.int64) - self.start
        positives = y[(y >= 0) & (y < self.shard_size)]
        rng = np.random.default_rng([self.seed, self.rank, self.step])
        self.step += 1
        return sample_classes(positives, self.shard_size, self.num_sample, rng)

    # ------------------------------------------------------------------ forward
    def forward(self, embeddings, labels):
        nd = mx.nd
        X, Y, offset = self._gather(embeddings, labels)
        W, bias = self.weight.data(), (self.bias.data() if self.bias is not None else None)
        sampled = None
        if self.sample_ratio < 1.0 and autograd.is_training():
            sampled = self._sample(Y)
            index = nd.array(sampled, ctx=W.context)
            W = nd.take(W, index)
            bias = nd.take(bias, index) if bias is not None else None
        self.last_sampled = None if sampled is None else sampled + self.start
        local_label, owned = self._targets(Y, sampled)
        z = self._logits(self._scores(X, W, bias), local_label, owned)
        # This block's log-sum-exp per sample from the fused, stable log_softmax, read at the row's
        # maximum (where log_softmax is in [-log n, 0], so z - log_softmax loses no precision).
        log_sm = nd.log_softmax(z, axis=1)
        with autograd.pause():
            top = z.detach().argmax(axis=1)
        lse_block = nd.pick(z, top, axis=1) - nd.pick(log_sm, top, axis=1)
        target = nd.pick(z, local_label, axis=1) * owned
        # one collective: every rank's (log-sum-exp, owned target logit) rows, (size, 2, B)
        parts = _AllGather(self.rank, self.name + ".parts")(nd.stack(lse_block, target).expand_dims(0))
        lse_parts = parts[:, 0, :]
        with autograd.pause():
            top_lse = lse_parts.max(axis=0)  # shift only: the result does not depend on it
        lse = top_lse + nd.log(nd.exp(nd.broadcast_sub(lse_parts, top_lse.expand_dims(0))).sum(axis=0))
        log_p = parts[:, 1, :].sum(axis=0) - lse
        return self._loss_of_log_p(log_p)[offset:offset + embeddings.shape[0]]

    # ------------------------------------------------------------------ state and prediction
    def update_state(self, embeddings, labels):
        """Dynamic AdaCos: s <- ln(B_avg) / cos(min(pi/4, theta_med)) over the global batch and all
        classes (see recognition.losses.adacos); a no-op for the other heads."""
        if self.kind != "adacos" or not self._reference.dynamic:
            return
        nd = mx.nd
        with autograd.pause():
            X = distributed.allgather(embeddings.detach(), name=self.name + ".state_x")
            Y = distributed.allgather(labels.detach().reshape((-1,)).astype("float32"),
                                      name=self.name + ".state_labels")
            local_label, owned = self._targets(Y, None)
            s_old = self.s.data()
            cos = cosine_scores(nd, X, self.weight.data(), self.shard_size)
            # log sum_{k != y} exp(s cos_k): the target column pushed to -1e30 vanishes
            z = nd.broadcast_mul(cos, s_old.reshape((1, 1))) - 1e30 * nd.broadcast_mul(
                nd.one_hot(local_label, self.shard_size), owned.expand_dims(1))
            m = self._global_max(z, ".state_max")
            sum_exp = nd.exp(nd.broadcast_sub(z, m.expand_dims(1))).sum(axis=1)
            cos_t = nd.pick(cos, local_label, axis=1) * owned
            totals = distributed.allreduce_sum(nd.stack(sum_exp, cos_t), name=self.name + ".state_sums")
            log_sums = nd.log(totals[0]) + m
            theta = nd.arccos(nd.clip(totals[1], -1.0, 1.0))
            n = theta.shape[0]
            top = log_sums.max()
            log_b_avg = nd.log(nd.exp(log_sums - top).sum()) + top - math.log(n)
            ordered = nd.sort(theta)
            theta_med = 0.5 * (ordered[(n - 1) // 2:(n - 1) // 2 + 1] + ordered[n // 2:n // 2 + 1])
            self.s.set_data(log_b_avg.reshape((1,)) / nd.cos(nd.minimum(theta_med, math.pi / 4)))

    def predict_class(self, embeddings):
        """Predicted global class id (b,) of each local embedding: the argmax of the head's scores
        (logits, or cosines for margin/adacos) over all classes of all ranks (collective)."""
        nd = mx.nd
        with autograd.pause():
            X = distributed.allgather(embeddings.detach(), name=self.name + ".pred_x")
            sizes = distributed.allgather(nd.array([embeddings.shape[0]], dtype="int32"),
                                          name=self.name + ".pred_sizes").asnumpy()
            scores = self._scores(X, self.weight.data(), self.bias.data() if self.bias is not None else None)
            best = nd.stack(scores.max(axis=1), scores.argmax(axis=1) + self.start)  # (2, B)
            every = distributed.allgather(best.expand_dims(0), name=self.name + ".pred_best").asnumpy()
        winner = every[:, 0, :].argmax(axis=0)  # the first rank wins ties, as a global argmax would
        classes = every[winner, 1, np.arange(every.shape[2])]
        offset = int(sizes[:self.rank].sum())
        return nd.array(classes[offset:offset + embeddings.shape[0]], ctx=embeddings.context)


def get_sharded_loss(name, num_classes, embedding_size, **params):
    """The head ``name`` (a get_loss name with a classifier) sharded over the Horovod workers.

    ``params``: the head's own parameters plus ``sample_ratio`` (Partial FC, default 1.0) and
    ``seed`` (Partial FC sampling, default 0). Raises ValueError naming what is wrong.
    """
    return ShardedClassifier(name, num_classes, embedding_size, **params)
