"""Loss heads against independent float64 NumPy transcriptions of the papers' formulas.

Gradients are checked against central finite differences of the NumPy formula (so the reference
shares no code and no hand-derived derivative with the heads).
"""
import math
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from recognition.losses import available_losses, get_loss
from recognition.losses.adacos import fixed_scale
from recognition.losses.km import critical_point
from recognition.losses.l2softmax import alpha_lower_bound

B, C, D = 7, 5, 6


# ---------------------------------------------------------------- NumPy references (float64)
def np_ce(logits, y, eps=0.0):
    """Cross-entropy against the target (1 - eps) one-hot + eps / C (eps = 0: -log p_y)."""
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    log_p = logits - lse[:, None]
    target = np.full(logits.shape, eps / logits.shape[1])
    target[np.arange(len(y)), y] += 1.0 - eps
    return -(target * log_p).sum(axis=1)


def np_unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_cos(x, w):
    return np_unit(x) @ np_unit(w).T


def ref_softmax(x, y, w, b=None, eps=0.0, **_):
    logits = x @ w.T + (0 if b is None else b)
    return np_ce(logits, y, eps)


def ref_margin(x, y, w, s, m1, m2, m3, eps=0.0, **_):
    """Target logit cos(m1 theta + m2) - m3; past pi (m1 theta + m2 > pi) the documented
    insightface fallback cos(theta) - m3 - ((m1 - 1) theta_t + m2) sin(theta_t)."""
    cos = np_cos(x, w)
    logits = cos.copy()
    theta_t = (math.pi - m2) / m1
    for i, label in enumerate(y):
        theta = math.acos(cos[i, label])
        if m1 * theta + m2 > math.pi:
            logits[i, label] = cos[i, label] - m3 - ((m1 - 1) * theta_t + m2) * math.sin(theta_t)
        else:
            logits[i, label] = math.cos(m1 * theta + m2) - m3
    return np_ce(s * logits, y, eps)


def ref_l2softmax(x, y, w, alpha, b=None, eps=0.0, **_):
    return ref_softmax(alpha * np_unit(x), y, w, b, eps)


def ref_adacos(x, y, w, scale, eps=0.0, **_):
    return np_ce(scale * np_cos(x, w), y, eps)


def ref_km(x, y, w, gamma, frozen_p=None, **_):
    """-(1 / (gamma p + 1)^2) log p; with ``frozen_p`` the factor uses those p (held constant)."""
    logits = x @ w.T
    p = np.exp(-np_ce(logits, y))
    factor_p = p if frozen_p is None else frozen_p
    return -np.log(p) / (gamma * factor_p + 1) ** 2


def ref_center(x, y, centers, lambda_c, **_):
    return 0.5 * lambda_c * ((x - centers[y]) ** 2).sum(axis=1)


def ref_git(x, y, w, centers, lambda_c, lambda_g, exclude_same_label, eps=0.0, **_):
    """Eq. 1 per sample; push_i averaged over its pairs j != i (or y_j != y_i)."""
    push = np.zeros(len(y))
    for i in range(len(y)):
        terms = [1.0 / (1.0 + ((x[i] - centers[y[j]]) ** 2).sum()) for j in range(len(y))
                 if j != i and not (exclude_same_label and y[j] == y[i])]
        push[i] = np.mean(terms) if terms else 0.0
    return ref_softmax(x, y, w, eps=eps) + ref_center(x, y, centers, lambda_c) + lambda_g * push


def numeric_grad(f, a, h=1e-6):
    grad = np.zeros_like(a)
    flat, g = a.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        up = f()
        flat[k] = old - h
        down = f()
        flat[k] = old
        g[k] = (up - down) / (2 * h)
    return grad


# ---------------------------------------------------------------- helpers
def inputs(seed=0, batch=B, classes=C, dim=D):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(batch, dim))
    y = rng.randint(0, classes, size=batch)
    y[:3] = [1, 1, 2]  # repeated labels always present
    w = rng.normal(size=(classes, dim))
    centers = rng.normal(size=(classes, dim)) * 0.5
    return x, y, w, centers


def build(name, params, w=None, centers=None, bias=None):
    head = get_loss(name, num_classes=C, embedding_size=D, **params)
    head.initialize()
    if w is not None and hasattr(head, "weight"):
        head.weight.set_data(mx.nd.array(w))
    if centers is not None and hasattr(head, "centers"):
        head.centers.set_data(mx.nd.array(centers))
    if bias is not None:
        head.collect_params()[[k for k in head.collect_params() if k.endswith("bias")][0]].set_data(
            mx.nd.array(bias))
    return head


def run(head, x, y):
    """Per-sample loss and gradients of sum(loss) w.r.t. embeddings and every trainable Parameter."""
    emb = mx.nd.array(x)
    emb.attach_grad()
    with autograd.record():
        loss = head(emb, y if isinstance(y, mx.nd.NDArray) else mx.nd.array(y))
    loss.backward()
    grads = {name: p.grad().asnumpy() for name, p in head.collect_params().items() if p.grad_req != "null"}
    return loss.asnumpy(), emb.grad.asnumpy(), grads


def weight_grad(head, grads):
    return grads[head.weight.name]


# name, params, reference, extra reference kwargs
CASES = [
    ("softmax", {}, ref_softmax, {}),
    ("softmax_bias", {"bias": True}, ref_softmax, {}),
    ("margin", {"s": 16.0, "m1": 1.2, "m2": 0.3, "m3": 0.1}, ref_margin, {"s": 16.0, "m1": 1.2, "m2": 0.3, "m3": 0.1}),
    ("arcface", {}, ref_margin, {"s": 64.0, "m1": 1.0, "m2": 0.5, "m3": 0.0}),
    ("cosface", {"s": 30.0}, ref_margin, {"s": 30.0, "m1": 1.0, "m2": 0.0, "m3": 0.35}),
    ("l2softmax", {"alpha": 4.0}, ref_l2softmax, {"alpha": 4.0}),
    ("adacos", {}, ref_adacos, {"scale": math.sqrt(2) * math.log(C - 1)}),
    ("adacos_fixed", {"dynamic": False}, ref_adacos, {"scale": math.sqrt(2) * math.log(C - 1)}),
    ("km", {"gamma": 2.0}, ref_km, {"gamma": 2.0}),
    ("center", {"lambda_c": 0.7}, ref_center, {"lambda_c": 0.7}),
    ("git", {"lambda_c": 0.3, "lambda_g": 0.8}, ref_git,
     {"lambda_c": 0.3, "lambda_g": 0.8, "exclude_same_label": False}),
    ("git_exclude", {"lambda_c": 0.3, "lambda_g": 0.8, "exclude_same_label": True}, ref_git,
     {"lambda_c": 0.3, "lambda_g": 0.8, "exclude_same_label": True}),
]


def case_head(case, x, y, w, centers, bias):
    name, params = case[0].replace("_bias", "").replace("_fixed", "").replace("_exclude", ""), case[1]
    return build(name, params, w, centers, bias if params.get("bias") else None)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradient_match_numpy_formula(case):
    _, params, ref, ref_kwargs = case
    x, y, w, centers = inputs()
    bias = np.random.RandomState(1).normal(size=C) if params.get("bias") else None
    head = case_head(case, x, y, w, centers, bias)
    loss, gx, grads = run(head, x, y)
    kwargs = dict(ref_kwargs, w=w, centers=centers, b=bias)
    total = lambda: ref(x, y, **kwargs).sum()  # noqa: E731 (closes over the arrays perturbed in place)
    np.testing.assert_allclose(loss, ref(x, y, **kwargs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(total, x), rtol=1e-3, atol=1e-4)
    if hasattr(head, "weight"):
        np.testing.assert_allclose(weight_grad(head, grads), numeric_grad(total, w), rtol=1e-3, atol=1e-4)
    if bias is not None:
        bias_name = [k for k in grads if k.endswith("bias")][0]
        np.testing.assert_allclose(grads[bias_name], numeric_grad(total, bias), rtol=1e-3, atol=1e-4)
    if hasattr(head, "centers"):
        assert head.centers.grad_req == "null"


SMOOTHED = [c for c in CASES if c[0] not in ("km", "center", "softmax_bias")]


@pytest.mark.parametrize("case", SMOOTHED, ids=[c[0] for c in SMOOTHED])
def test_label_smoothing_matches_the_smoothed_target_cross_entropy(case):
    """The loss against the target (1 - eps) on the label + eps / C everywhere, value and
    gradient, imperative and hybridized."""
    _, params, ref, ref_kwargs = case
    x, y, w, centers = inputs(seed=5)
    name = case[0].replace("_fixed", "").replace("_exclude", "")
    head = get_loss(name, num_classes=C, embedding_size=D, label_smoothing=0.3, **params)
    head.initialize()
    head.weight.set_data(mx.nd.array(w))
    if hasattr(head, "centers"):
        head.centers.set_data(mx.nd.array(centers))
    kwargs = dict(ref_kwargs, w=w, centers=centers, eps=0.3)
    loss, gx, grads = run(head, x, y)
    np.testing.assert_allclose(loss, ref(x, y, **kwargs), rtol=1e-4, atol=1e-5)
    assert not np.allclose(loss, ref(x, y, **dict(kwargs, eps=0.0)), rtol=1e-3)  # the smoothing is in effect
    total = lambda: ref(x, y, **kwargs).sum()  # noqa: E731
    np.testing.assert_allclose(gx, numeric_grad(total, x), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(weight_grad(head, grads), numeric_grad(total, w), rtol=1e-3, atol=1e-4)
    head.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(run(head, x, y)[0], loss, rtol=1e-5, atol=1e-5)


def test_label_smoothing_is_refused_where_it_has_no_meaning():
    for name in ("km", "center", "triplet"):
        with pytest.raises(ValueError, match=f"loss '{name}' does not take label_smoothing"):
            get_loss(name, num_classes=C, embedding_size=D, label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        get_loss("softmax", num_classes=C, embedding_size=D, label_smoothing=1.0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hybridized_equals_imperative(case):
    x, y, w, centers = inputs(seed=3)
    bias = np.random.RandomState(2).normal(size=C) if case[1].get("bias") else None
    head = case_head(case, x, y, w, centers, bias)
    imperative = run(head, x, y)
    head.hybridize(static_alloc=True, static_shape=True)
    hybrid = run(head, x, y)
    np.testing.assert_allclose(hybrid[0], imperative[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hybrid[1], imperative[1], rtol=1e-5, atol=1e-5)
    for name in imperative[2]:
        np.testing.assert_allclose(hybrid[2][name], imperative[2][name], rtol=1e-5, atol=1e-5)


def test_state_updates_reach_hybridized_heads():
    """In-place updates of centres / scale are seen by a static_alloc cached graph."""
    x, y, w, centers = inputs(seed=4)
    for name in ("adacos", "center"):
        head = build(name, {}, w, centers)
        head.hybridize(static_alloc=True, static_shape=True)
        before = run(head, x, y)[0]
        head.update_state(mx.nd.array(x), mx.nd.array(y))
        head.flush_state() if hasattr(head, "flush_state") else None
        after = run(head, x, y)[0]
        fresh = build(name, {}, w, centers)
        for p_new, p_old in zip(fresh.collect_params().values(), head.collect_params().values()):
            p_new.set_data(p_old.data())
        np.testing.assert_allclose(after, run(fresh, x, y)[0], rtol=1e-6)
        assert not np.allclose(before, after)


# ---------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert set(available_losses()) >= {"softmax", "margin", "arcface", "cosface", "l2softmax", "adacos",
                                       "km", "center", "git", "triplet"}
    with pytest.raises(ValueError, match="accepted: .*arcface"):
        get_loss("nope", num_classes=C, embedding_size=D)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) beta; accepted: gamma, detach_weight"):
        get_loss("km", num_classes=C, embedding_size=D, beta=1)
    with pytest.raises(ValueError, match="in 'center'.*accepted: lambda_c, alpha"):
        get_loss("km", num_classes=C, embedding_size=D, center={"lambda": 1})
    with pytest.raises(ValueError, match="does not accept a 'center' entry.*lambda_c"):
        get_loss("git", num_classes=C, embedding_size=D, center={})
    with pytest.raises(ValueError, match="does not accept a 'center' entry.*heads that do: .*km"):
        get_loss("triplet", num_classes=C, embedding_size=D, center={})
    arc = get_loss("arcface", num_classes=C, embedding_size=D)
    cos = get_loss("cosface", num_classes=C, embedding_size=D)
    assert (arc.s, arc.m1, arc.m2, arc.m3) == (64.0, 1.0, 0.5, 0.0)
    assert (cos.s, cos.m1, cos.m2, cos.m3) == (64.0, 1.0, 0.0, 0.35)
    assert get_loss("arcface", num_classes=C, embedding_size=D, m2=0.4).m2 == 0.4
    triplet = get_loss("triplet", num_classes=C, embedding_size=D, margin=0.3)
    assert isinstance(triplet, mx.gluon.Block) and type(triplet).__name__ == "TripletLoss"


def test_weight_shape_eager_and_state_is_non_gradient():
    for name in ("softmax", "margin", "l2softmax", "adacos", "km", "git"):
        head = get_loss(name, num_classes=C, embedding_size=D)
        assert head.weight.shape == (C, D)
        head.initialize()
        head.weight.set_data(mx.nd.ones((C, D)))  # settable before the first call
    adacos = get_loss("adacos", num_classes=C, embedding_size=D)
    assert adacos.s.grad_req == "null"
    assert get_loss("l2softmax", num_classes=C, embedding_size=D, alpha=20).alpha.grad_req == "null"
    trainable = get_loss("l2softmax", num_classes=C, embedding_size=D, alpha=20, trainable_alpha=True)
    assert trainable.alpha.grad_req == "write"
    assert get_loss("center", num_classes=C, embedding_size=D).centers.grad_req == "null"


# ---------------------------------------------------------------- margin safety
@pytest.mark.parametrize("name,params", [("arcface", {}), ("margin", {"m1": 1.35, "m2": 0.2, "m3": 0.1}),
                                         ("margin", {"m1": 2.0, "m2": 0.0, "m3": 0.0})])
def test_margin_is_finite_at_cos_pm1_and_past_pi(name, params):
    rng = np.random.RandomState(5)
    w = rng.normal(size=(C, D))
    y = np.array([0, 1, 2, 3])
    # cos = +1, cos = -1 exactly (parallel / antiparallel), and theta just below pi
    x = np.stack([2.0 * w[0], -3.0 * w[1], -w[2] + 0.05 * w[3], w[3] + 1e-9])
    head = build(name, params, w)
    loss, gx, grads = run(head, x, y)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(gx)) and np.all(np.isfinite(weight_grad(head, grads)))
    m1, m2, m3 = head.m1, head.m2, head.m3
    ref = ref_margin(x, y, w, head.s, m1, m2, m3)
    np.testing.assert_allclose(loss, ref, rtol=1e-3, atol=1e-3)
    # the fallback past pi is monotone: pushing x_1 further from w_1 never lowers the loss
    head_fn = lambda k: run(head, np.stack([x[1] - k * w[1]]), y[1:2])[0][0]  # noqa: E731
    assert head_fn(1.0) >= head_fn(0.0) - 1e-6


def test_arcface_fallback_is_insightface_rule():
    """Past theta = pi - m the ArcFace target logit is cos(theta) - m sin(m) (insightface)."""
    w = np.eye(C, D)
    theta = 2.9  # > pi - 0.5
    x = np.zeros((1, D))
    x[0, 0], x[0, 1] = math.cos(theta), math.sin(theta)
    head = build("arcface", {"s": 10.0}, w)
    logits = 10.0 * np_cos(x, w)
    logits[0, 0] = 10.0 * (math.cos(theta) - 0.5 * math.sin(0.5))
    np.testing.assert_allclose(run(head, x, [0])[0], np_ce(logits, np.array([0])), rtol=1e-5)


# ---------------------------------------------------------------- KM
def test_km_gamma_zero_is_softmax():
    x, y, w, _ = inputs(seed=6)
    km, softmax = build("km", {"gamma": 0.0}, w), build("softmax", {}, w)
    a, b = run(km, x, y), run(softmax, x, y)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(weight_grad(km, a[2]), weight_grad(softmax, b[2]))


def test_km_critical_point_table():
    table = {0.1: 0.244, 1: 0.202, 2: 0.175, 4: 0.145, 6: 0.126, 8: 0.114}
    for gamma, p_c in table.items():
        assert abs(critical_point(gamma) - p_c) < 1e-3, (gamma, critical_point(gamma))
        # definition: R_gamma(p_c) = gamma / (log(1 + gamma) (gamma p_c + 1)^2) = 1
        p = critical_point(gamma)
        assert abs(gamma / (math.log(1 + gamma) * (gamma * p + 1) ** 2) - 1) < 1e-12


def test_km_detach_weight_holds_the_factor_constant():
    x, y, w, _ = inputs(seed=7)
    head = build("km", {"gamma": 3.0, "detach_weight": True}, w)
    loss, gx, grads = run(head, x, y)
    p0 = np.exp(-np_ce(x @ w.T, y))
    total = lambda: ref_km(x, y, w, 3.0, frozen_p=p0).sum()  # noqa: E731
    np.testing.assert_allclose(loss, ref_km(x, y, w, 3.0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gx, numeric_grad(total, x), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(weight_grad(head, grads), numeric_grad(total, w), rtol=1e-3, atol=1e-5)
    full = run(build("km", {"gamma": 3.0}, w), x, y)
    assert not np.allclose(full[1], gx)  # the two gradients really differ


# ---------------------------------------------------------------- L2-softmax
def test_l2softmax_alpha_bound_auto_warning_and_trainable():
    # Ranjan et al.: alpha_low = log(p (C - 2) / (1 - p)); MS-small has 13403 classes
    assert abs(alpha_lower_bound(13403) - math.log(0.9 * 13401 / 0.1)) < 1e-12
    assert abs(alpha_lower_bound(13403) - 11.7003) < 1e-4  # ln(120609)
    assert abs(alpha_lower_bound(10, p=0.99) - math.log(0.99 * 8 / 0.01)) < 1e-12
    with pytest.raises(ValueError):
        alpha_lower_bound(2)
    auto = get_loss("l2softmax", num_classes=1000, embedding_size=D, alpha="auto")
    auto.initialize()
    assert abs(float(auto.alpha.data().asscalar()) - alpha_lower_bound(1000)) < 1e-5
    with pytest.warns(UserWarning, match="below the lower bound"):
        get_loss("l2softmax", num_classes=1000, embedding_size=D, alpha=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_loss("l2softmax", num_classes=1000, embedding_size=D, alpha=16)
    # trainable alpha: gradient of the formula w.r.t. alpha
    x, y, w, _ = inputs(seed=8)
    head = build("l2softmax", {"alpha": 3.0, "trainable_alpha": True}, w)
    _, _, grads = run(head, x, y)
    alpha = np.array([3.0])
    numeric = numeric_grad(lambda: ref_l2softmax(x, y, w, alpha[0]).sum(), alpha)
    np.testing.assert_allclose(grads[head.alpha.name], numeric, rtol=1e-4)


# ---------------------------------------------------------------- AdaCos
def test_adacos_fixed_scale():
    assert fixed_scale(10) == math.sqrt(2) * math.log(9)
    head = build("adacos", {"dynamic": False})
    assert abs(head.scale - math.sqrt(2) * math.log(C - 1)) < 1e-6
    head.update_state(mx.nd.array(np.ones((2, D))), mx.nd.array([0, 1]))
    assert abs(head.scale - math.sqrt(2) * math.log(C - 1)) < 1e-6


def test_adacos_dynamic_update_on_hand_computed_batch():
    # 4 classes on the unit circle at 0, 90, 180, 270 degrees
    w = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    head = get_loss("adacos", num_classes=4, embedding_size=2)
    head.initialize()
    head.weight.set_data(mx.nd.array(w))
    s0 = math.sqrt(2) * math.log(3)
    assert abs(head.scale - s0) < 1e-6

    def at(deg, norm=3.0):
        return [norm * math.cos(math.radians(deg)), norm * math.sin(math.radians(deg))]

    # step 1: class 0 at 0 and 60 degrees, class 2 at 150 degrees (target angle 30): median 30 deg
    x1, y1 = np.array([at(0), at(60, 0.5), at(150, 7.0)]), np.array([0, 0, 2])
    sums = [math.exp(0) + math.exp(-s0) + math.exp(0),                                     # 0 deg
            math.exp(s0 * math.sin(math.pi / 3)) + math.exp(-s0 / 2) + math.exp(-s0 * math.sin(math.pi / 3)),
            math.exp(-s0 * math.sqrt(3) / 2) + math.exp(s0 / 2) + math.exp(-s0 / 2)]          # 150 deg vs 0, 90, 270
    s1 = math.log(np.mean(sums)) / math.cos(math.pi / 6)
    head.update_state(mx.nd.array(x1), mx.nd.array(y1))
    assert abs(head.scale - s1) < 1e-5 * s1
    # the loss of this step uses the new scale
    np.testing.assert_allclose(run(head, x1, y1)[0], ref_adacos(x1, y1, w, s1), rtol=1e-5)

    # step 2: class 0 at 50, 70, 80, 90 degrees: even count, median (70 + 80) / 2 = 75 > 45 -> cos(pi/4)
    degs = [50, 80, 70, 90]
    x2, y2 = np.array([at(d) for d in degs]), np.zeros(4, dtype=int)
    sums = [math.exp(s1 * math.sin(math.radians(d))) + math.exp(-s1 * math.cos(math.radians(d)))
            + math.exp(-s1 * math.sin(math.radians(d))) for d in degs]
    s2 = math.log(np.mean(sums)) / math.cos(math.pi / 4)
    head.update_state(mx.nd.array(x2), mx.nd.array(y2))
    assert abs(head.scale - s2) < 1e-5 * s2

    # step 3: class 0 at 10, 40, 20, 50 degrees: even count below 45, median (20 + 40) / 2 = 30 deg
    degs = [10, 40, 20, 50]
    x3, y3 = np.array([at(d) for d in degs]), np.zeros(4, dtype=int)
    sums = [math.exp(s2 * math.sin(math.radians(d))) + math.exp(-s2 * math.cos(math.radians(d)))
            + math.exp(-s2 * math.sin(math.radians(d))) for d in degs]
    s3 = math.log(np.mean(sums)) / math.cos(math.pi / 6)
    head.update_state(mx.nd.array(x3), mx.nd.array(y3))
    assert abs(head.scale - s3) < 1e-5 * s3


def test_adacos_scale_is_checkpointed(tmp_path):
    x, y, w, _ = inputs(seed=9)
    head = build("adacos", {}, w)
    head.update_state(mx.nd.array(x), mx.nd.array(y))
    head.save_parameters(str(tmp_path / "h.params"))
    fresh = get_loss("adacos", num_classes=C, embedding_size=D)
    fresh.load_parameters(str(tmp_path / "h.params"))
    assert fresh.scale == head.scale != fixed_scale(C)


# ---------------------------------------------------------------- centres
def loop_center_update(centers, x, y, alpha):
    """Wen et al. eq. 4 transcribed with loops: delta_j = sum_i [y_i = j] (c_j - x_i) / (1 + n_j)."""
    new = centers.copy()
    for j in range(len(centers)):
        members = [i for i in range(len(y)) if y[i] == j]
        delta = sum((centers[j] - x[i] for i in members), np.zeros(centers.shape[1])) / (1 + len(members))
        new[j] = centers[j] - alpha * delta
    return new


def test_center_update_with_repeated_labels_hand_computed():
    head = get_loss("center", num_classes=3, embedding_size=2, alpha=0.5)
    head.initialize()
    head.centers.set_data(mx.nd.array([[0, 0], [1, 1], [2, 0]]))
    x = np.array([[1, 0], [3, 1], [0, 2], [5, 5]], dtype=np.float64)
    y = np.array([1, 1, 0, 1])
    head.update_state(mx.nd.array(x), mx.nd.array(y))
    # the loss of this step still uses c^t ...
    np.testing.assert_array_equal(head.centers.data().asnumpy(), [[0, 0], [1, 1], [2, 0]])
    head.flush_state()
    # class 1: n = 3, delta = ((0,1) + (-2,0) + (-4,-4)) / 4; class 0: n = 1, delta = (0,-2) / 2
    np.testing.assert_allclose(head.centers.data().asnumpy(), [[0, 0.5], [1.75, 1.375], [2, 0]], rtol=1e-6)
    head.flush_state()  # nothing pending: no change
    np.testing.assert_allclose(head.centers.data().asnumpy(), [[0, 0.5], [1.75, 1.375], [2, 0]], rtol=1e-6)


def test_center_timing_loss_uses_ct_update_uses_batch_t():
    rng = np.random.RandomState(10)
    centers = rng.normal(size=(C, D))
    head = build("center", {"lambda_c": 1.0, "alpha": 0.3}, centers=centers)
    expected = centers.copy()
    for step in range(3):
        x, y = rng.normal(size=(B, D)), rng.randint(0, C, size=B)
        head.update_state(mx.nd.array(x), mx.nd.array(y))
        np.testing.assert_allclose(run(head, x, y)[0], ref_center(x, y, expected, 1.0), rtol=1e-5)
        expected = loop_center_update(expected, x, y, 0.3)
    head.flush_state()
    np.testing.assert_allclose(head.centers.data().asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_center_combinator_km_plus_center_and_checkpoint(tmp_path):
    x, y, w, centers = inputs(seed=11)
    head = build("km", {"gamma": 2.0, "center": {"lambda_c": 0.5, "alpha": 0.4}}, w, centers)
    assert hasattr(head, "predict") and head.predict(mx.nd.array(x)).shape == (B, C)
    assert not hasattr(head, "scale")
    loss, gx, grads = run(head, x, y)
    total = lambda: (ref_km(x, y, w, 2.0) + ref_center(x, y, centers, 0.5)).sum()  # noqa: E731
    np.testing.assert_allclose(loss, ref_km(x, y, w, 2.0) + ref_center(x, y, centers, 0.5), rtol=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(total, x), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(weight_grad(head, grads), numeric_grad(total, w), rtol=1e-3, atol=1e-4)
    # centre update through the combinator, saved after flush_state (the trainer's order)
    head.update_state(mx.nd.array(x), mx.nd.array(y))
    head.flush_state()
    np.testing.assert_allclose(head.centers.data().asnumpy(), loop_center_update(centers, x, y, 0.4), rtol=1e-5)
    head.save_parameters(str(tmp_path / "h.params"))
    fresh = get_loss("km", num_classes=C, embedding_size=D, gamma=2.0, center={"lambda_c": 0.5, "alpha": 0.4})
    fresh.load_parameters(str(tmp_path / "h.params"))
    np.testing.assert_array_equal(fresh.centers.data().asnumpy(), head.centers.data().asnumpy())
    np.testing.assert_array_equal(fresh.weight.data().asnumpy(), head.weight.data().asnumpy())


def test_adacos_plus_center_updates_both():
    x, y, w, centers = inputs(seed=12)
    head = build("adacos", {"center": {}}, w, centers)
    s_before = head.scale
    head.update_state(mx.nd.array(x), mx.nd.array(y))
    head.flush_state()
    assert head.scale != s_before
    np.testing.assert_allclose(head.centers.data().asnumpy(), loop_center_update(centers, x, y, 0.5), rtol=1e-5)


def test_git_updates_centres_like_center_loss():
    x, y, w, centers = inputs(seed=13)
    head = build("git", {"alpha": 0.2, "lambda_g": 0.9}, w, centers)
    head.hybridize(static_alloc=True, static_shape=True)
    labels = mx.nd.array(y)
    head.update_state(mx.nd.array(x), labels)
    # the step's loss (labels recorded by update_state) still uses c^t; single-process its pairs
    # are the batch's own pairs
    ref = ref_git(x, y, w, centers, 0.01, 0.9, False)
    np.testing.assert_allclose(run(head, x, labels)[0], ref, rtol=1e-5)
    np.testing.assert_allclose(run(head, x, y)[0], ref, rtol=1e-5)
    head.flush_state()
    np.testing.assert_allclose(head.centers.data().asnumpy(), loop_center_update(centers, x, y, 0.2), rtol=1e-5)


def test_center_rejects_labels_out_of_range():
    head = build("center", {})
    head.update_state(mx.nd.zeros((2, D)), mx.nd.array([0, C]))
    with pytest.raises(ValueError, match="labels must lie in"):
        head.flush_state()
