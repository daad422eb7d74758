"""Loss heads and the ``get_loss`` registry.

Every head is a ``HybridBlock`` called as ``head(embeddings, labels)`` -> per-sample loss (B,), with
embeddings (B, D) float32 *not* normalised and labels (B,) float32 class ids. Contract with the
trainer:

* ``head.weight`` (C, D): the classifier weight of heads that have one; ``head.predict(emb)`` -> (B, C)
  class scores for the train-accuracy metric.
* ``head.centers`` (C, D): class centres of centre-based heads (grad_req='null').
* ``head.update_state(embeddings, labels)`` (when present): call once per step with the step's
  embeddings, after computing them and before the loss. It pauses autograd itself and, under
  Horovod, reduces over all workers so every rank ends with the same state.
* ``head.flush_state()`` (when present): call before saving a checkpoint; applies the centre update
  still pending from the last step (see :mod:`recognition.losses.center`).
* All non-gradient state (AdaCos scale, centres, fixed alpha) is a Parameter with grad_req='null', so
  ``save_parameters`` keeps it and Horovod's DistributedTrainer skips it.

Any head with a classifier accepts a ``center: {lambda_c: ..., alpha: ...}`` entry in its params,
which adds the centre-loss term (e.g. ``km`` + center, the Knot Magnify poster's best row).

``label_smoothing`` eps (``get_loss`` keyword, the config's ``loss.label_smoothing``) smooths the
target of the heads whose loss is the cross-entropy of their logits (softmax, margin, arcface,
cosface, l2softmax, adacos, and git's softmax term): (1 - eps) on the label, eps / C everywhere.
"""
import importlib
import inspect

# name -> (module, class, default params). Modules are imported only when asked for.
_REGISTRY = {
    "softmax": ("recognition.losses.softmax", "SoftmaxLoss", {}),
    "margin": ("recognition.losses.margin", "MarginLoss", {}),
    "arcface": ("recognition.losses.margin", "MarginLoss", {"m1": 1.0, "m2": 0.5, "m3": 0.0}),
    "cosface": ("recognition.losses.margin", "MarginLoss", {"m1": 1.0, "m2": 0.0, "m3": 0.35}),
    "l2softmax": ("recognition.losses.l2softmax", "L2SoftmaxLoss", {}),
    "adacos": ("recognition.losses.adacos", "AdaCosLoss", {}),
    "km": ("recognition.losses.km", "KnotMagnifyLoss", {}),
    "center": ("recognition.losses.center", "CenterLoss", {}),
    "git": ("recognition.losses.git", "GitLoss", {}),
    "triplet": ("recognition.losses.triplet", "TripletLoss", {}),
}
# Heads that already hold centres cannot take a second centre term; triplet has no classifier
# (and is not a HybridBlock, which the combinator needs for its children).
_NO_CENTER_TERM = ("center", "git", "triplet")
# Heads whose loss is not the cross-entropy of logits, so a smoothed target has no meaning for them.
_NO_SMOOTHING = {"km": "it weights -log p_y by 1 / (gamma p_y + 1)^2", "center": "it has no classifier",
                 "triplet": "it has no classifier"}
_SIZE_ARGS = ("num_classes", "embedding_size")
_BLOCK_ARGS = ("self", "prefix", "params")


def available_losses():
    return sorted(_REGISTRY)


def _accepted(cls):
    """(names of the head's own params, whether it takes **kwargs, whether it takes sizes)."""
    sig = inspect.signature(cls.__init__)
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind != p.VAR_POSITIONAL and p.name not in _BLOCK_ARGS:
            names.append(p.name)
    sizes = {n for n in _SIZE_ARGS if n in names or var_kw}
    return [n for n in names if n not in _SIZE_ARGS], var_kw, sizes


def _resolve(name):
    module, cls_name, defaults = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls_name), dict(defaults)


def get_loss(name, num_classes=None, embedding_size=None, *, label_smoothing=0.0, **params):
    """The loss head ``name`` (see ``available_losses()``) built with ``params``, its
    cross-entropy's target smoothed by ``label_smoothing``.

    Raises ValueError for an unknown name or parameter, listing what is accepted.
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError("unknown loss %r; accepted: %s" % (name, ", ".join(available_losses())))
    cls, kwargs = _resolve(key)
    own, var_kw, sizes = _accepted(cls)
    center = params.pop("center", None)
    allowed = own + ([] if key in _NO_CENTER_TERM else ["center"])
    unknown = sorted(k for k in params if k not in own)
    if unknown and not var_kw:
        raise ValueError("loss %r: unknown parameter(s) %s; accepted: %s"
                         % (key, ", ".join(unknown), ", ".join(allowed) or "(none)"))
    if center is not None and key in _NO_CENTER_TERM:
        raise ValueError("loss %r does not accept a 'center' entry (%s); heads that do: %s"
                         % (key, "it has its own lambda_c / alpha" if key != "triplet" else "no classifier",
                            ", ".join(k for k in available_losses() if k not in _NO_CENTER_TERM)))
    kwargs.update(params)
    size_kwargs = {"num_classes": num_classes, "embedding_size": embedding_size}
    kwargs.update({k: v for k, v in size_kwargs.items() if k in sizes})
    head = cls(**kwargs)
    if label_smoothing:
        _smooth_labels(key, head, label_smoothing)
    if center is None:
        return head
    return _with_center(key, head, center, num_classes, embedding_size)


def _smooth_labels(key, head, eps):
    from .softmax import ClassifierHead
    if key in _NO_SMOOTHING:
        raise ValueError("loss %r does not take label_smoothing: %s" % (key, _NO_SMOOTHING[key]))
    if not 0 <= eps < 1:
        raise ValueError("label_smoothing must be in [0, 1), got %r" % (eps,))
    # git: the smoothed cross-entropy is its softmax term's (head.head)
    (head if isinstance(head, ClassifierHead) else head.head).label_smoothing = float(eps)


def _with_center(key, head, center, num_classes, embedding_size):
    from .center import CenterLoss, WithCenterLoss
    if center is True:
        center = {}
    if not isinstance(center, dict):
        raise ValueError("loss %r: 'center' must be a mapping like {lambda_c: 0.003, alpha: 0.5}, got %r"
                         % (key, center))
    own, _, _ = _accepted(CenterLoss)
    unknown = sorted(k for k in center if k not in own)
    if unknown:
        raise ValueError("loss %r: unknown parameter(s) in 'center': %s; accepted: %s"
                         % (key, ", ".join(unknown), ", ".join(own)))
    return WithCenterLoss(head, CenterLoss(num_classes, embedding_size, **center))
