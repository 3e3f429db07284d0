"""Tests of refimpl/tying/: the penalties, TiedPair (soft and hard) and AnchoredModel.

Exact properties first (no finite differences: the penalty's gradients are ``+-2 lam (a - b)``,
opposite, zero at ``a == b``, shift invariant; ``lam = 0`` decouples; hard equals soft at
``wA == wB``), then the numerical ones (complex step on drawn MLP and CNN pairs, the Hessian by
finite differences of the gradient), then training (the distance shrinks as lam grows), then
every bad input.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close, check_vjp
from refimpl.nn import CNN
from refimpl.optim import SGD, train
from refimpl.tying import (
    PENALTIES,
    AnchoredModel,
    TiedPair,
    anchored_penalty_backward,
    anchored_penalty_forward,
    l1_penalty_backward,
    l1_penalty_forward,
    l2_penalty_backward,
    l2_penalty_forward,
)

COMPLEX = TOLERANCES["complex"]
CENTRAL = TOLERANCES["central"]
ACTIVATIONS = ("tanh", "sigmoid", "softplus", "identity", "relu", "leaky_relu")
#: Paired entries that must stay off the L1 kink differ by at least this much.
MARGIN = 0.1


# --- strategies -------------------------------------------------------------------------------

def values(shape):
    return hnp.arrays(np.float64, shape, elements=st.floats(-10, 10, allow_subnormal=False))


@st.composite
def matched_arrays(draw, distinct=False):
    """(a, b): two arrays of one drawn shape; ``distinct``: every entry of b differs from a's
    by at least MARGIN (off the L1 kink, by construction)."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    a = draw(values(shape))
    if distinct:
        sizes = draw(hnp.arrays(np.float64, shape, elements=st.floats(MARGIN, 3)))
        signs = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from((-1.0, 1.0))))
        return a, a + signs * sizes
    return a, draw(values(shape))


lams = st.floats(0, 5, allow_subnormal=False)


def candidates(model_a, model_b):
    """Every (name_a, name_b, transpose) whose shapes match."""
    found = []
    for name_a, shape_a in model_a.parameter_shapes().items():
        for name_b, shape_b in model_b.parameter_shapes().items():
            if shape_a == shape_b:
                found.append((name_a, name_b, False))
            if len(shape_b) == 2 and shape_b[::-1] == shape_a:
                found.append((name_a, name_b, True))
    return found


@st.composite
def matchings(draw, model_a, model_b):
    """A random non-empty matching: each parameter of A and of B in at most one pair."""
    options = candidates(model_a, model_b)
    order = draw(st.permutations(options))
    pairs, used_a, used_b = {}, set(), set()
    for name_a, name_b, transpose in order:
        if name_a in used_a or name_b in used_b or (pairs and not draw(st.booleans())):
            continue
        pairs[name_a] = ri.transposed(name_b) if transpose else name_b
        used_a.add(name_a)
        used_b.add(name_b)
    return pairs


def random_batch(model, input_shape, batch, rng):
    x = rng.standard_normal((batch, *input_shape))
    out_shape = model.output_shape(x.shape)
    if isinstance(model.loss_spec, nn.SoftmaxCrossEntropy):
        return x, rng.integers(0, out_shape[1], size=batch)
    return x, rng.standard_normal(out_shape)


def move_off_kink(pair, params_a, params_b, rng):
    """B's paired entries at A's plus offsets of size in [MARGIN, 0.5] and random sign."""
    params_b = dict(params_b)
    for p in pair.pairs:
        a = params_a[p.name_a]
        a = a.T if p.transpose else a
        offset = rng.uniform(MARGIN, 0.5, a.shape) * np.where(rng.random(a.shape) < 0.5, -1, 1)
        params_b[p.name_b] = a + offset
    return params_b


def make_problem(model_a, model_b, pairs, input_a, input_b, mode, penalty, lam, seed,
                 batch_a=3, batch_b=2):
    pair = (TiedPair(model_a, model_b, pairs, mode="hard") if mode == "hard" else
            TiedPair(model_a, model_b, pairs, lam=lam, penalty=penalty))
    rng = np.random.default_rng(seed)
    params_a, params_b = pair.init(seed)
    if mode == "soft" and penalty == "l1":
        params_b = move_off_kink(pair, params_a, params_b, rng)
    batch_a = random_batch(model_a, input_a, batch_a, rng)
    batch_b = random_batch(model_b, input_b, batch_b, rng)
    return pair, params_a, params_b, batch_a, batch_b


@st.composite
def mlp_pair_problems(draw, modes=("soft", "hard"), penalties=("l2", "l1")):
    """(pair, params_a, params_b, batch_a, batch_b): two MLPs of one input size and widths
    in 1-4 (a classifier and a classifier or an MSE model), a random matching of their
    parameters, soft (L2 or L1, one lam or one per pair) or hard."""
    features = draw(st.integers(1, 4))
    sizes_a = [features] + draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    sizes_a.append(draw(st.integers(2, 4)))
    # B's first layer has A's width, so at least fc1 always has a partner.
    sizes_b = sizes_a[:2] + draw(st.lists(st.integers(1, 4), max_size=1))
    loss_b = draw(st.sampled_from(("cross_entropy", "mse")))
    sizes_b.append(draw(st.integers(2, 4)) if loss_b == "cross_entropy" else
                   draw(st.integers(1, 4)))
    model_a = ri.MLP(sizes_a, activation=draw(st.sampled_from(ACTIVATIONS)))
    model_b = ri.MLP(sizes_b, activation=draw(st.sampled_from(ACTIVATIONS)), loss=loss_b)
    pairs = draw(matchings(model_a, model_b))
    mode = draw(st.sampled_from(modes))
    penalty = draw(st.sampled_from(penalties))
    lam = draw(st.one_of(lams, st.fixed_dictionaries({name: lams for name in pairs})))
    return make_problem(model_a, model_b, pairs, (features,), (features,), mode, penalty, lam,
                        draw(st.integers(0, 2**16)), draw(st.integers(1, 4)),
                        draw(st.integers(1, 4)))


@st.composite
def cnn_pair_problems(draw, modes=("soft", "hard"), penalties=("l2", "l1")):
    """Two small CNNs on one image size with smooth activations (their convolutions match),
    a random matching of their parameters, soft or hard."""
    channels = draw(st.integers(1, 2))
    filters = draw(st.integers(1, 3))
    size = draw(st.integers(3, 5))
    shape = (channels, size, size)
    model_a = CNN(shape, [filters], [draw(st.integers(2, 4))],
                  activation=draw(st.sampled_from(("tanh", "softplus"))), pool=None)
    model_b = CNN(shape, [filters], [draw(st.integers(2, 4))],
                  activation=draw(st.sampled_from(("tanh", "sigmoid"))), pool=None)
    pairs = draw(matchings(model_a, model_b))
    return make_problem(model_a, model_b, pairs, shape, shape, draw(st.sampled_from(modes)),
                        draw(st.sampled_from(penalties)), draw(lams), draw(st.integers(0, 2**16)),
                        draw(st.integers(1, 3)), draw(st.integers(1, 3)))


def lasserre_problem(mode="soft", penalty="l2", lam=0.3, seed=0, transposed=False):
    """A classifier 4-6-3 tied to an autoencoder 4-6-4 (fc1 <-> enc, or fc1 <-> dec^T)."""
    classifier = ri.MLP([4, 6, 3])
    autoencoder = ri.Sequential([nn.Dense("enc", 4, 6), nn.Tanh(), nn.Dense("dec", 6, 4)],
                                loss=nn.MSE())
    pairs = ({"fc1.weight": ri.transposed("dec.weight")} if transposed else
             {"fc1.weight": "enc.weight", "fc1.bias": "enc.bias"})
    return make_problem(classifier, autoencoder, pairs, (4,), (4,), mode, penalty, lam, seed,
                        5, 4)


def joined_check(problem, method="complex", fast=True):
    """The full check of a pair: the fast path (check_model_gradients), or the coordinate loop
    of check_gradients on the joined function."""
    pair, params_a, params_b, batch_a, batch_b = problem
    if fast:
        return ri.check_model_gradients(pair, pair.join(params_a, params_b),
                                        (batch_a, batch_b), method=method)
    return ri.check_gradients(lambda q: pair.joined_loss_and_grads(q, batch_a, batch_b),
                              pair.join(params_a, params_b), method=method)


# --- the penalties: exact properties ----------------------------------------------------------

@given(matched_arrays(), lams, st.floats(-3, 3))
def test_l2_penalty_gradients_are_plus_and_minus_two_lam_times_the_difference(ab, lam, dvalue):
    a, b = ab
    value, cache = l2_penalty_forward(a, b, lam)
    grad_a, grad_b = l2_penalty_backward(dvalue, cache)
    assert_close(value, lam * ((a - b) ** 2).sum(), name="value")
    assert_close(grad_a, dvalue * 2 * lam * (a - b), name="grad_a")
    assert_close(grad_b, -dvalue * 2 * lam * (a - b), name="grad_b")
    np.testing.assert_array_equal(grad_a, -grad_b)


@given(matched_arrays(), lams, st.floats(-3, 3))
def test_l1_penalty_subgradients_are_plus_and_minus_lam_sign(ab, lam, dvalue):
    a, b = ab
    value, cache = l1_penalty_forward(a, b, lam)
    grad_a, grad_b = l1_penalty_backward(dvalue, cache)
    assert_close(value, lam * np.abs(a - b).sum(), name="value")
    assert_close(grad_a, dvalue * lam * np.sign(a - b), name="grad_a")
    np.testing.assert_array_equal(grad_a, -grad_b)


@pytest.mark.parametrize("name", sorted(PENALTIES))
@given(a=values(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)), lam=lams)
def test_penalty_and_its_gradients_are_zero_where_a_equals_b(name, a, lam):
    penalty = PENALTIES[name]
    value, cache = penalty.forward(a, a.copy(), lam)
    grad_a, grad_b = penalty.backward(1.0, cache)
    assert value == 0
    assert not grad_a.any() and not grad_b.any()  # L1: sign(0) = 0, the subgradient 0


def test_l1_sign_of_zero_is_zero_entry_by_entry():
    a, b = np.array([1.0, 2.0, -3.0]), np.array([1.0, 0.5, -1.0])
    value, cache = l1_penalty_forward(a, b, 2.0)
    grad_a, grad_b = l1_penalty_backward(1.0, cache)
    assert value == 2.0 * (0 + 1.5 + 2.0)
    np.testing.assert_array_equal(grad_a, [0.0, 2.0, -2.0])
    np.testing.assert_array_equal(grad_b, [0.0, -2.0, 2.0])


@pytest.mark.parametrize("name", sorted(PENALTIES))
@given(ab=matched_arrays(distinct=True), shift=st.floats(-10, 10), lam=lams)
def test_penalty_is_unchanged_when_both_sides_shift_by_the_same_vector(name, ab, shift, lam):
    a, b = ab
    c = shift * np.linspace(-1, 1, a.size).reshape(a.shape)
    penalty = PENALTIES[name]
    value, cache = penalty.forward(a, b, lam)
    shifted, shifted_cache = penalty.forward(a + c, b + c, lam)
    # (a + c) - (b + c) equals a - b up to the rounding of the two additions.
    scale = float(np.max(np.abs(np.stack([a, b, a + c, b + c])), initial=1.0))
    tolerance = ri.gradcheck.Tolerance(COMPLEX.rtol, COMPLEX.atol * scale)
    assert_close(shifted, value, tolerance, name="value")
    for got, expected in zip(penalty.backward(1.0, shifted_cache), penalty.backward(1.0, cache),
                             strict=True):
        assert_close(got, expected, tolerance, name="gradient")


@pytest.mark.parametrize("name", sorted(PENALTIES))
@given(ab=matched_arrays(distinct=True), lam=lams, seed=st.integers(0, 2**16))
def test_penalty_backward_matches_complex_step_with_random_upstream_gradient(name, ab, lam,
                                                                             seed):
    a, b = ab
    penalty = PENALTIES[name]
    report = check_vjp(penalty.forward, penalty.backward, {"a": a, "b": b}, static={"lam": lam},
                       seed=seed)
    assert report.ok, report


@given(ab=matched_arrays(), lam=lams)
def test_l2_hessian_by_finite_differences_of_the_gradient(ab, lam):
    a, b = ab
    size = a.size

    def gradient(z):
        _, cache = l2_penalty_forward(z[:size].reshape(a.shape), z[size:].reshape(a.shape), lam)
        grad_a, grad_b = l2_penalty_backward(1.0, cache)
        return np.concatenate([grad_a.ravel(), grad_b.ravel()])

    z = np.concatenate([a.ravel(), b.ravel()])
    hessian = np.empty((2 * size, 2 * size))
    for k in range(2 * size):
        h = 1e-4 * max(1.0, abs(z[k]))
        step = np.zeros(2 * size)
        step[k] = h
        hessian[:, k] = (gradient(z + step) - gradient(z - step)) / (2 * h)
    identity = np.eye(size)
    expected = 2 * lam * np.block([[identity, -identity], [-identity, identity]])
    assert_close(hessian, expected, CENTRAL, name="hessian")


def test_l1_forward_is_complex_step_safe():
    a = np.array([1.0, -2.0, 0.5]) + 1e-20j * np.array([1.0, 1.0, -1.0])
    b = np.array([0.0, -1.0, 2.0])
    value, _ = l1_penalty_forward(a, b, 3.0)
    # d/dt of 3 |a + t v - b| at t = 0 is 3 sign(a - b) . v = 3 (1 - 1 + 1)
    assert value.imag / 1e-20 == pytest.approx(3.0, rel=COMPLEX.rtol)
    assert value.real == pytest.approx(3.0 * (1 + 1 + 1.5), rel=COMPLEX.rtol)


@given(ab=matched_arrays(), lam=lams, dvalue=st.floats(-3, 3))
def test_anchored_penalty_pulls_only_towards_a_fixed_reference(ab, lam, dvalue):
    w, reference = ab
    kept = reference.copy()
    value, cache = anchored_penalty_forward(w, reference, lam)
    grad = anchored_penalty_backward(dvalue, cache)
    assert_close(value, lam * ((w - reference) ** 2).sum())
    assert_close(grad, dvalue * 2 * lam * (w - reference))
    np.testing.assert_array_equal(reference, kept)
    # weight decay: reference 0, gradient 2 lam w
    _, cache = anchored_penalty_forward(w, np.zeros_like(w), lam)
    assert_close(anchored_penalty_backward(1.0, cache), 2 * lam * w)
    _, cache = anchored_penalty_forward(w, reference, lam, "l1")
    assert_close(anchored_penalty_backward(1.0, cache), lam * np.sign(w - reference))


# --- TiedPair: exact properties ---------------------------------------------------------------

@given(mlp_pair_problems(modes=("soft",), penalties=("l2",)))
@example(lasserre_problem())
@example(lasserre_problem(transposed=True))
def test_pair_penalty_gradients_are_opposite_and_two_lam_times_the_difference(problem):
    pair, params_a, params_b, _, _ = problem
    value, grads_a, grads_b = pair.penalty(params_a, params_b)
    expected_value = 0.0
    for p in pair.pairs:
        b = params_b[p.name_b].T if p.transpose else params_b[p.name_b]
        difference = params_a[p.name_a] - b
        expected_value += p.lam * (difference ** 2).sum()
        assert_close(grads_a[p.name_a], 2 * p.lam * difference)
        grad_b = grads_b[p.name_b].T if p.transpose else grads_b[p.name_b]
        np.testing.assert_array_equal(grad_b, -grads_a[p.name_a])
    assert_close(value, expected_value)


def test_per_pair_lambda_weights_each_pair():
    pair, params_a, params_b, _, _ = make_problem(
        ri.MLP([3, 4, 2]), ri.MLP([3, 4, 5]), {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"},
        (3,), (3,), "soft", "l2", {"fc1.weight": 0.5, "fc1.bias": 3.0}, seed=4)
    value, grads_a, _ = pair.penalty(params_a, params_b)
    dw = params_a["fc1.weight"] - params_b["fc1.weight"]
    db = params_a["fc1.bias"] - params_b["fc1.bias"]
    assert_close(value, 0.5 * (dw ** 2).sum() + 3.0 * (db ** 2).sum())
    assert_close(grads_a["fc1.bias"], 6.0 * db)


@given(mlp_pair_problems(modes=("soft",)))
def test_lambda_zero_decouples_the_two_models(problem):
    pair, params_a, params_b, batch_a, batch_b = problem
    free = TiedPair(pair.model_a, pair.model_b, {p.name_a: p.name_b if not p.transpose else
                                                 ri.transposed(p.name_b) for p in pair.pairs},
                    lam=0.0, penalty=pair.penalty_name)
    total, grads_a, grads_b = free.loss_and_grads(params_a, params_b, batch_a, batch_b)
    loss_a, own_a = pair.model_a.loss_and_grads(params_a, *batch_a)
    loss_b, own_b = pair.model_b.loss_and_grads(params_b, *batch_b)
    assert total == loss_a + loss_b
    assert list(grads_a) == list(own_a) and list(grads_b) == list(own_b)
    for name in own_a:
        np.testing.assert_array_equal(grads_a[name], own_a[name])
    for name in own_b:
        np.testing.assert_array_equal(grads_b[name], own_b[name])


@given(mlp_pair_problems(modes=("soft",)), lams)
@example(lasserre_problem(transposed=True), 0.7)
def test_soft_total_is_both_losses_plus_the_penalty(problem, lam):
    pair, params_a, params_b, batch_a, batch_b = problem
    result = pair.evaluate(params_a, params_b, batch_a, batch_b)
    loss_a = pair.model_a.loss(params_a, *batch_a)
    loss_b = pair.model_b.loss(params_b, *batch_b)
    penalty = pair.penalty(params_a, params_b)[0]
    assert result.loss_a == loss_a and result.loss_b == loss_b and result.penalty == penalty
    assert result.total == loss_a + loss_b + penalty


def soft_and_hard_at_equal_parameters(problem):
    """From a soft problem: the hard pair, and params_b with B's paired parameters set equal
    to A's (transposed where paired transposed)."""
    pair, params_a, params_b, batch_a, batch_b = problem
    pairs = {p.name_a: ri.transposed(p.name_b) if p.transpose else p.name_b for p in pair.pairs}
    hard = TiedPair(pair.model_a, pair.model_b, pairs, mode="hard")
    equal_b = dict(params_b)
    for p in pair.pairs:
        a = params_a[p.name_a]
        equal_b[p.name_b] = a.T.copy() if p.transpose else a.copy()
    hard_b = {key: value for key, value in equal_b.items()
              if key not in {p.name_b for p in pair.pairs}}
    return pair, hard, params_a, equal_b, hard_b, batch_a, batch_b


@given(mlp_pair_problems(modes=("soft",), penalties=("l2",)))
@example(lasserre_problem(transposed=True))
def test_hard_equals_soft_where_the_paired_parameters_are_equal(problem):
    soft, hard, params_a, equal_b, hard_b, batch_a, batch_b = \
        soft_and_hard_at_equal_parameters(problem)
    soft_total, soft_a, soft_b = soft.loss_and_grads(params_a, equal_b, batch_a, batch_b)
    hard_total, hard_a, hard_b_grads = hard.loss_and_grads(params_a, hard_b, batch_a, batch_b)
    assert soft.penalty(params_a, equal_b)[0] == 0
    assert_close(hard_total, soft_total, name="total")
    assert list(hard_b_grads) == list(hard_b)
    shared = {p.name_a: p for p in soft.pairs}
    for name, grad in hard_a.items():
        expected = soft_a[name]
        if name in shared:
            p = shared[name]
            expected = expected + (soft_b[p.name_b].T if p.transpose else soft_b[p.name_b])
        assert_close(grad, expected, name=f"grads_a[{name!r}]")
    for name, grad in hard_b_grads.items():
        assert_close(grad, soft_b[name], name=f"grads_b[{name!r}]")


@given(mlp_pair_problems(modes=("hard",)))
def test_hard_gradient_of_a_shared_parameter_is_the_sum_of_both_models(problem):
    pair, params_a, params_b, batch_a, batch_b = problem
    _, grads_a, grads_b = pair.loss_and_grads(params_a, params_b, batch_a, batch_b)
    full_b = dict(params_b)
    for p in pair.pairs:
        full_b[p.name_b] = params_a[p.name_a].T if p.transpose else params_a[p.name_a]
    own_a = pair.model_a.loss_and_grads(params_a, *batch_a)[1]
    own_b = pair.model_b.loss_and_grads(full_b, *batch_b)[1]
    shared_b = {p.name_b for p in pair.pairs}
    assert set(grads_b) == set(own_b) - shared_b
    for p in pair.pairs:
        from_b = own_b[p.name_b].T if p.transpose else own_b[p.name_b]
        assert_close(grads_a[p.name_a], own_a[p.name_a] + from_b)


@given(mlp_pair_problems())
def test_loss_and_grads_never_mutates_its_inputs(problem):
    pair, params_a, params_b, batch_a, batch_b = problem
    copies = [{k: v.copy() for k, v in d.items()} for d in (params_a, params_b)]
    batch_copies = [tuple(np.copy(v) for v in batch) for batch in (batch_a, batch_b)]
    pair.loss_and_grads(params_a, params_b, batch_a, batch_b)
    for original, copy in zip((params_a, params_b), copies, strict=True):
        assert list(original) == list(copy)
        for key in copy:
            np.testing.assert_array_equal(original[key], copy[key])
    for batch, copy in zip((batch_a, batch_b), batch_copies, strict=True):
        for value, kept in zip(batch, copy, strict=True):
            np.testing.assert_array_equal(value, kept)


# --- TiedPair against numerical differentiation -----------------------------------------------

@given(mlp_pair_problems())
@example(lasserre_problem())
@example(lasserre_problem(mode="hard", transposed=True))
@example(lasserre_problem(penalty="l1", transposed=True))
def test_tied_mlp_pair_matches_complex_step(problem):
    report = joined_check(problem)
    assert report.ok, report
    # The relative bound wherever it means something. A row whose every entry is below atol
    # is judged by atol alone, as the report does: e.g. a dead ReLU unit whose only gradient
    # is the penalty of a tiny lam (Hypothesis found lam = 9.45e-306: 2 lam (a - b) ~ 1e-305,
    # below the complex step's range, which underflows to 0 there; relative error 1).
    assert max((row.max_rel_error for row in report.rows if row.scale > COMPLEX.atol),
               default=0.0) <= COMPLEX.rtol, report


@given(cnn_pair_problems())
def test_tied_cnn_pair_matches_complex_step(problem):
    report = joined_check(problem)
    assert report.ok, report


@given(mlp_pair_problems(penalties=("l2",)))
def test_tied_mlp_pair_matches_central_differences(problem):
    pair, *_ = problem
    report = joined_check(problem, method="central", fast=False)
    # relu-type activations may put a kink within one step: then the checker says so. A
    # smooth pair has no kink, so there every row must agree.
    kinked = any(isinstance(layer, (nn.ReLU, nn.LeakyReLU))
                 for model in (pair.model_a, pair.model_b) for layer in model.layers)
    allowed = ("ok", "non-differentiable") if kinked else ("ok",)
    assert all(row.status in allowed for row in report.rows), report


# --- training: soft tying approaches hard sharing ---------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distance_after_training_decreases_as_lambda_grows(seed):
    rng = np.random.default_rng(seed)
    model = ri.MLP([3, 4, 2])
    xa, ya = rng.standard_normal((12, 3)), rng.integers(0, 2, 12)
    xb = rng.standard_normal((6, 3)) @ np.diag([1.0, -1.0, 0.5])
    yb = rng.integers(0, 2, 6)
    names = {name: name for name in model.parameter_shapes()}
    distances = []
    for lam in (0.0, 0.01, 0.1, 1.0, 10.0):
        pair = TiedPair(model, model, names, lam=lam)
        params_a, params_b = pair.init(seed)
        result = train(lambda q, step, pair=pair: pair.joined_loss_and_grads(q, (xa, ya),
                                                                            (xb, yb)),
                       pair.join(params_a, params_b), SGD(0.02), 200)
        distances.append(pair.distance(*pair.split(result.params)))
    hard = TiedPair(model, model, names, mode="hard")
    assert hard.distance(*hard.init(seed)) == 0.0
    assert all(later < earlier for earlier, later in itertools.pairwise(distances))
    assert distances[-1] < 0.05 * distances[0]


# --- memory, configuration, flat dicts --------------------------------------------------------

def test_parameter_count_of_soft_and_hard_pairs():
    model_a, model_b = ri.MLP([4, 6, 3]), ri.MLP([4, 6, 5])
    first = {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"}
    # by hand: A = 4*6+6 + 6*3+3 = 51, B = 30 + 6*5+5 = 65; fc1 = 30 scalars
    soft = TiedPair(model_a, model_b, first, lam=1.0).parameter_count()
    hard = TiedPair(model_a, model_b, first, mode="hard").parameter_count()
    assert soft == ri.ParameterCount(116, 116, 928)
    assert hard == ri.ParameterCount(86, 116, 688)
    separate = model_a.parameter_count().unique + model_b.parameter_count().unique
    assert soft.unique == separate


def test_hard_pair_params_b_omit_the_shared_parameters():
    pair, params_a, params_b, *_ = lasserre_problem(mode="hard")
    assert list(params_b) == ["dec.weight", "dec.bias"]
    assert pair.parameter_shapes()[1] == {"dec.weight": (4, 6), "dec.bias": (4,)}
    assert pair.shared_b() == {"enc.weight": ("fc1.weight", False),
                               "enc.bias": ("fc1.bias", False)}


def test_join_and_split_round_trip_and_refuse_unprefixed_keys():
    pair = lasserre_problem()[0]
    params_a, params_b = {"w": np.ones(2)}, {"w": np.zeros(2), "v": np.ones(1)}
    joined = pair.join(params_a, params_b)
    assert list(joined) == ["A:w", "B:w", "B:v"]
    again_a, again_b = pair.split(joined)
    assert again_a.keys() == params_a.keys() and again_b.keys() == params_b.keys()
    with pytest.raises(ValueError, match=r"key 'w' has neither the prefix 'A:' nor 'B:'"):
        pair.split({"w": np.ones(1)})
    with pytest.raises(TypeError, match="params: expected a dict"):
        pair.split([("A:w", 1.0)])


@pytest.mark.parametrize("mode, lam", [("soft", {"fc1.weight": 0.25}), ("hard", None)])
def test_config_round_trips_through_json(mode, lam):
    autoencoder = ri.Sequential([nn.Dense("enc", 4, 6), nn.Tanh(), nn.Dense("dec", 6, 4)],
                                loss=nn.MSE())
    pair = TiedPair(ri.MLP([4, 6, 3]), autoencoder, {"fc1.weight": ri.transposed("dec.weight")},
                    lam=lam, mode=mode, penalty="l1")
    rebuilt = TiedPair.from_config(json.loads(json.dumps(pair.config())))
    assert rebuilt.config() == pair.config()
    assert rebuilt.pairs == pair.pairs
    assert "transposed('dec.weight')" in repr(pair)


# --- AnchoredModel ----------------------------------------------------------------------------

def anchored_problem(penalty="l2", reference=True, seed=0):
    model = ri.MLP([3, 4, 2])
    rng = np.random.default_rng(seed)
    w0 = model.init(seed + 50) if reference else None
    anchored = AnchoredModel(model, lam={"fc1.weight": 0.3, "fc2.weight": 1.5},
                             reference=None if w0 is None else
                             {k: w0[k] for k in ("fc1.weight", "fc2.weight")},
                             names=None if w0 is not None else ["fc1.weight", "fc2.weight"],
                             penalty=penalty)
    params = model.init(seed)
    for name in anchored.names:  # off the L1 kink at w == w0 by construction
        center = anchored.reference[name]
        params[name] = center + rng.uniform(MARGIN, 0.5, center.shape) * np.where(
            rng.random(center.shape) < 0.5, -1, 1)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    return anchored, params, x, y


@pytest.mark.parametrize("penalty", ["l2", "l1"])
@pytest.mark.parametrize("reference", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_anchored_model_matches_complex_step_and_adds_its_penalty(penalty, reference, seed):
    anchored, params, x, y = anchored_problem(penalty, reference, seed)
    report = ri.check_gradients(lambda p: anchored.loss_and_grads(p, x, y), params)
    assert report.ok, report
    loss, grads = anchored.model.loss_and_grads(params, x, y)
    total, anchored_grads = anchored.loss_and_grads(params, x, y)
    value, penalty_grads = anchored.penalty(params)
    assert total == loss + value
    assert list(anchored_grads) == list(grads)
    np.testing.assert_array_equal(anchored_grads["fc1.bias"], grads["fc1.bias"])
    for name in anchored.names:
        difference = params[name] - anchored.reference[name]
        expected = (2 * anchored.lams[name] * difference if penalty == "l2"
                    else anchored.lams[name] * np.sign(difference))
        assert_close(penalty_grads[name], expected)


def test_weight_decay_is_the_anchor_at_zero_for_every_parameter():
    model = ri.MLP([2, 3, 2])
    decay = AnchoredModel(model, lam=0.1)
    params = model.init(0)
    assert decay.names == tuple(model.parameter_shapes())
    value, grads = decay.penalty(params)
    assert_close(value, 0.1 * sum((v ** 2).sum() for v in params.values()))
    for name, value in params.items():
        assert_close(grads[name], 0.2 * value)


def test_anchored_reference_is_copied_and_read_only():
    model = ri.MLP([2, 3, 2])
    w0 = model.init(1)
    anchored = AnchoredModel(model, 1.0, reference=w0)
    w0["fc1.weight"][:] = 99.0
    assert not (anchored.reference["fc1.weight"] == 99.0).any()
    with pytest.raises(ValueError):
        anchored.reference["fc1.weight"][0, 0] = 1.0


# --- bad input --------------------------------------------------------------------------------

def models():
    classifier = ri.MLP([4, 6, 3])
    autoencoder = ri.Sequential([nn.Dense("enc", 4, 6), nn.Tanh(), nn.Dense("dec", 6, 4)],
                                loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    return classifier, autoencoder


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pairs={"fc1.weight": "enc.bias"}, lam=1.0), ValueError,
     r"shape \(6, 4\) of model_a's 'fc1.weight' does not match the shape \(6,\) of model_b's "
     r"'enc.bias'"),
    (dict(pairs={"fc1.weight": ri.transposed("enc.weight")}, lam=1.0), ValueError,
     r"does not match the transposed shape \(4, 6\)"),
    (dict(pairs={"fc1.bias": ri.transposed("enc.bias")}, lam=1.0), ValueError,
     r"only 2-D parameters can be paired transposed"),
    (dict(pairs={"fc9.weight": "enc.weight"}, lam=1.0), ValueError,
     r"unknown parameter 'fc9.weight' of model_a"),
    (dict(pairs={"fc1.weight": "encoder.weight"}, lam=1.0), ValueError,
     r"unknown parameter 'encoder.weight' of model_b"),
    (dict(pairs={"fc2.weight": "dec.weight"}, lam=1.0), ValueError,
     r"'dec.weight' is a shared slot of model_b \(it reads transposed 'enc.weight'\)"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam=-0.1), ValueError,
     r"lam: expected a finite real number >= 0, got -0.1"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam=float("nan")), ValueError,
     r"lam: expected a finite real number"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam=float("inf")), ValueError,
     r"lam: expected a finite real number"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam=True), TypeError, r"lam: expected a finite real"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam="0.1"), TypeError,
     r"lam: expected a finite real"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam={"fc1.weight": -1.0}), ValueError,
     r"lam\['fc1.weight'\]: expected a finite real number >= 0"),
    (dict(pairs={"fc1.weight": "enc.weight", "fc1.bias": "enc.bias"},
          lam={"fc1.weight": 1.0}), ValueError, r"missing \['fc1.bias'\]"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam={"fc1.weight": 1.0, "fc2.bias": 1.0}),
     ValueError, r"unexpected \['fc2.bias'\]"),
    (dict(pairs=[("fc1.weight", "enc.weight"), ("fc1.weight", "enc.weight")], lam=1.0),
     ValueError, r"model_a's parameter 'fc1.weight' is paired twice"),
    (dict(pairs={"fc1.weight": "enc.weight"}, mode="hard", lam=1.0), ValueError,
     r"lam: hard sharing has no strength"),
    (dict(pairs={"fc1.weight": "enc.weight"}), ValueError, r"lam: soft tying needs a strength"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam=1.0, mode="firm"), ValueError,
     r"mode: expected one of \['soft', 'hard'\]"),
    (dict(pairs={"fc1.weight": "enc.weight"}, lam=1.0, penalty="l3"), ValueError,
     r"penalty: unknown penalty 'l3'"),
    (dict(pairs={}, lam=1.0), ValueError, r"pairs: expected at least one pair"),
    (dict(pairs="fc1.weight", lam=1.0), TypeError, r"pairs: expected"),
    (dict(pairs=[("fc1.weight",)], lam=1.0), TypeError, r"pairs\[0\]: expected a pair"),
    (dict(pairs={"fc1.weight": 7}, lam=1.0), TypeError, r"pairs\['fc1.weight'\]: expected"),
])
def test_bad_pairs_are_refused_at_construction(kwargs, error, match):
    classifier, autoencoder = models()
    with pytest.raises(error, match=match):
        TiedPair(classifier, autoencoder, **kwargs)


def test_a_parameter_of_b_paired_twice_is_refused():
    _, autoencoder = models()
    deeper = ri.MLP([4, 6, 6, 3])  # fc1.bias and fc2.bias both (6,), like enc.bias
    for mode, lam in (("soft", 1.0), ("hard", None)):
        with pytest.raises(ValueError, match=r"model_b's parameter 'enc.bias' is paired twice"):
            TiedPair(deeper, autoencoder, {"fc1.bias": "enc.bias", "fc2.bias": "enc.bias"},
                     lam=lam, mode=mode)


def test_models_must_be_sequential_with_a_loss():
    classifier, _ = models()
    with pytest.raises(TypeError, match="model_a: expected a refimpl Sequential"):
        TiedPair("mlp", classifier, {"fc1.weight": "fc1.weight"}, lam=1.0)
    with pytest.raises(ValueError, match="model_b: the model needs a loss"):
        TiedPair(classifier, ri.MLP([4, 6, 3], loss=None), {"fc1.weight": "fc1.weight"}, lam=1.0)


def test_hard_pair_whose_params_b_still_holds_the_shared_keys_is_refused():
    pair, params_a, params_b, batch_a, batch_b = lasserre_problem(mode="hard")
    stale = {**params_b, "enc.weight": params_a["fc1.weight"].copy()}
    with pytest.raises(ValueError, match=r"params_b: holds \['enc.weight'\], which hard sharing "
                                         r"reads from params_a \('enc.weight' <- "
                                         r"params_a\['fc1.weight'\]\)"):
        pair.loss_and_grads(params_a, stale, batch_a, batch_b)
    with pytest.raises(ValueError, match=r"params_b: holds"):
        pair.forward(params_a, stale, batch_a[0], batch_b[0])


@pytest.mark.parametrize("change, error, match", [
    (lambda a, b: (a, {k: v for k, v in b.items() if k != "dec.bias"}), ValueError,
     r"params_b: missing \['dec.bias'\]"),
    (lambda a, b: (a, {**b, "extra": np.ones(1)}), ValueError, r"params_b: unexpected"),
    (lambda a, b: ({k: v for k, v in a.items() if k != "fc1.bias"}, b), ValueError,
     r"params_a: missing \['fc1.bias'\]"),
    (lambda a, b: (a, {**b, "dec.bias": np.ones(5)}), ValueError,
     r"params_b\['dec.bias'\]: expected shape \(4,\), got \(5,\)"),
    (lambda a, b: (a, {**b, "dec.bias": np.full(4, np.nan)}), ValueError,
     r"params_b\['dec.bias'\]: contains 4 NaN"),
    (lambda a, b: (a, [1, 2]), TypeError, r"params_b: expected a dict"),
])
def test_bad_parameter_dicts_get_clear_errors(change, error, match):
    pair, params_a, params_b, batch_a, batch_b = lasserre_problem()
    bad_a, bad_b = change(params_a, params_b)
    with pytest.raises(error, match=match):
        pair.loss_and_grads(bad_a, bad_b, batch_a, batch_b)


def test_batches_must_be_pairs():
    pair, params_a, params_b, batch_a, batch_b = lasserre_problem()
    with pytest.raises(TypeError, match=r"batch_b: expected a pair \(x, y\)"):
        pair.loss_and_grads(params_a, params_b, batch_a, batch_b[0])
    with pytest.raises(ValueError, match=r"x: "):
        pair.loss_and_grads(params_a, params_b, (batch_a[0][:, :3], batch_a[1]), batch_b)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lam=-1.0), ValueError, r"lam: expected a finite real number >= 0"),
    (dict(lam=math.nan), ValueError, r"lam: expected a finite real number"),
    (dict(lam=1.0, reference={"fc1.weight": np.ones((3, 4))}), ValueError,
     r"reference\['fc1.weight'\]: expected shape \(4, 3\), got \(3, 4\)"),
    (dict(lam=1.0, reference={"fc1.weight": np.full((4, 3), np.inf)}), ValueError,
     r"reference\['fc1.weight'\]: contains 12 NaN or Inf"),
    (dict(lam=1.0, reference={"fc1.weight": np.ones((4, 3))}, names=["fc2.weight"]),
     ValueError, r"reference: missing \['fc2.weight'\]; unexpected \['fc1.weight'\]; "
                 r"expected exactly \['fc2.weight'\]"),
    (dict(lam=1.0, names=["fc7.weight"]), ValueError,
     r"names: unknown parameter 'fc7.weight' of model"),
    (dict(lam=1.0, names=["fc1.weight", "fc1.weight"]), ValueError, r"anchored twice"),
    (dict(lam=1.0, names=[]), ValueError, r"names: expected at least one"),
    (dict(lam=1.0, names="fc1.weight"), TypeError, r"names: expected a list"),
    (dict(lam=1.0, reference=[1.0]), TypeError, r"reference: expected a dict"),
    (dict(lam={"fc1.weight": 1.0}, names=["fc1.weight", "fc2.weight"]), ValueError,
     r"missing \['fc2.weight'\]"),
    (dict(lam=1.0, penalty="huber"), ValueError, r"penalty: unknown penalty 'huber'"),
])
def test_bad_anchored_models_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        AnchoredModel(ri.MLP([3, 4, 2]), **kwargs)


def test_anchoring_a_shared_slot_is_refused():
    _, autoencoder = models()
    with pytest.raises(ValueError, match=r"names: 'dec.weight' is a shared slot of model \(it "
                                         r"reads transposed 'enc.weight'\)"):
        AnchoredModel(autoencoder, 1.0, names=["dec.weight"])


# --- configuration errors name the key --------------------------------------------------------

def pair_config():
    return TiedPair(*models()[:1], ri.MLP([4, 6, 3]), {"fc1.weight": "fc1.weight"},
                    lam=0.5).config()


@pytest.mark.parametrize("edit, error, match", [
    (lambda c: {}, ValueError,
     r"config: missing \['model_a', 'model_b', 'pairs'\]; expected the keys \['model_a', "
     r"'model_b', 'pairs'\] and optionally \['lam', 'mode', 'penalty'\]"),
    (lambda c: {k: v for k, v in c.items() if k != "pairs"}, ValueError,
     r"config: missing \['pairs'\]"),
    (lambda c: {**c, "weight": 1.0}, ValueError, r"config: unexpected \['weight'\]"),
    (lambda c: "pair", TypeError, r"config: expected a dict"),
    (lambda c: {**c, "pairs": {"fc1.weight": "fc1.weight"}}, TypeError,
     r"config\['pairs'\]: expected a list of \{'a': name, 'b': name, 'transpose': bool\}, "
     r"got dict"),
    (lambda c: {**c, "pairs": [{"a": "fc1.weight"}]}, ValueError,
     r"config\['pairs'\]\[0\]: missing \['b'\]"),
    (lambda c: {**c, "pairs": [["fc1.weight", "fc1.weight"]]}, TypeError,
     r"config\['pairs'\]\[0\]: expected a dict"),
    (lambda c: {**c, "pairs": [{"a": "fc1.weight", "b": "fc1.weight", "transpose": 1}]},
     TypeError, r"config\['pairs'\]\[0\]\['transpose'\]: expected a bool, got 1"),
    (lambda c: {**c, "model_b": {**c["model_b"], "loss": "MSE"}}, TypeError,
     r"config\['model_b'\]\['loss'\] \(None or a loss config\): expected a dict"),
    (lambda c: {**c, "model_a": {}}, ValueError, r"config\['model_a'\]: missing \['layers'\]"),
])
def test_from_config_names_the_missing_or_malformed_key(edit, error, match):
    with pytest.raises(error, match=match):
        TiedPair.from_config(edit(pair_config()))


def test_from_config_keeps_transpose_and_the_options_optional():
    config = pair_config()
    minimal = {"model_a": config["model_a"], "model_b": config["model_b"], "lam": 0.5,
               "pairs": [{"a": "fc1.weight", "b": "fc1.weight"}]}
    rebuilt = TiedPair.from_config(minimal)
    assert rebuilt.config() == config


# --- overflow raises, naming the model and the layer, or the penalty --------------------------

def huge_classifier_params(pair, seed=0):
    params_a, params_b = pair.init(seed)
    params_a["fc1.bias"] = np.full(6, 10.0)           # tanh ~ 1 everywhere
    params_a["fc2.weight"] = np.full((3, 6), 1e308)   # six terms of 1e308: inf
    return params_a, params_b


def test_overflow_in_a_tied_model_names_the_model_and_the_layer():
    problem = lasserre_problem()
    pair, _, _, batch_a, batch_b = problem
    params_a, params_b = huge_classifier_params(pair)
    with pytest.raises(FloatingPointError,
                       match=r"^model_a: layer 'fc2' \(Dense\): output contains inf/NaN"):
        pair.loss_and_grads(params_a, params_b, batch_a, batch_b)
    with pytest.raises(FloatingPointError, match=r"^model_a: layer 'fc2' \(Dense\): output"):
        pair.forward(params_a, params_b, batch_a[0], batch_b[0])
    flipped = TiedPair(pair.model_b, pair.model_a, {"enc.weight": "fc1.weight"}, lam=0.1)
    with pytest.raises(FloatingPointError, match=r"^model_b: layer 'fc2' \(Dense\): output"):
        flipped.loss_and_grads(params_b, params_a, batch_b, batch_a)
    with pytest.raises(FloatingPointError, match=r"^model_b: layer 'fc2' \(Dense\): output"):
        flipped.forward(params_b, params_a, batch_b[0], batch_a[0])


def test_overflow_of_the_penalty_names_the_pair():
    pair, params_a, params_b, batch_a, batch_b = lasserre_problem(lam=1.0)
    params_a["fc1.weight"] = np.full((6, 4), 1e160)   # (1e160)^2 = inf; the models stay finite
    x_small = batch_a[0] * 1e-170
    pair.model_a.forward(params_a, x_small)
    for call in (lambda: pair.penalty(params_a, params_b),
                 lambda: pair.loss_and_grads(params_a, params_b, (x_small, batch_a[1]),
                                             batch_b)):
        with pytest.raises(FloatingPointError,
                           match=r"penalty 'l2' between model_a's 'fc1.weight' and model_b's "
                                 r"'enc.weight': value contains inf/NaN"):
            call()


def unit_pair(weight_a, weight_b, mode="soft", lam=0.0):
    """Two one-weight MSE models ``out = w x``, x = 1, y = 0: loss = w^2, gradient 2 w."""
    def unit():
        return ri.Sequential([nn.Dense("fc", 1, 1, bias=False)], loss=nn.MSE())
    pair = TiedPair(unit(), unit(), {"fc.weight": "fc.weight"}, mode=mode,
                    lam=lam if mode == "soft" else None)
    params_b = {} if mode == "hard" else {"fc.weight": np.array([[weight_b]])}
    batch = (np.ones((1, 1)), np.zeros((1, 1)))
    return pair, {"fc.weight": np.array([[weight_a]])}, params_b, batch


def test_overflow_of_the_total_raises():
    # each loss (1.2e154)^2 = 1.44e308 is finite, their sum is not
    pair, params_a, params_b, batch = unit_pair(1.2e154, 1.2e154)
    with pytest.raises(FloatingPointError,
                       match=r"total \(loss_a \+ loss_b \+ penalty\) contains inf/NaN"):
        pair.loss_and_grads(params_a, params_b, batch, batch)


def test_overflow_of_a_gradient_sum_raises():
    # w = 0.6, x = 1e154: loss (w x)^2 = 3.6e307 and its gradient 2 w x^2 = 1.2e308 are finite
    batch = (np.full((1, 1), 1e154), np.zeros((1, 1)))
    # soft, lam = 0.6e308: the penalty 0.216e308 and its gradient 2 lam w = 0.72e308 are
    # finite, the sum of the two gradients (1.92e308) is not
    pair, params_a, params_b, _ = unit_pair(0.6, 0.0, lam=0.6e308)
    assert np.isfinite(pair.model_a.loss_and_grads(params_a, *batch)[1]["fc.weight"]).all()
    assert np.isfinite(pair.penalty(params_a, params_b)[1]["fc.weight"]).all()
    with pytest.raises(FloatingPointError,
                       match=r"gradient of model_a's 'fc.weight' \(loss \+ penalty\) contains"):
        pair.loss_and_grads(params_a, params_b, batch, batch)
    # hard: the shared weight's gradient is the sum of both models' 1.2e308
    pair, params_a, params_b, _ = unit_pair(0.6, None, mode="hard")
    with pytest.raises(FloatingPointError, match=r"gradient of model_a's 'fc.weight'"):
        pair.loss_and_grads(params_a, params_b, batch, batch)


def test_overflow_of_an_anchored_total_raises():
    # the loss (1.2e154)^2 = 1.44e308 and the decay 0.5 w^2 = 0.72e308 are finite, their sum not
    model = ri.Sequential([nn.Dense("fc", 1, 1, bias=False)], loss=nn.MSE())
    anchored = AnchoredModel(model, 0.5)
    params, x, y = {"fc.weight": np.array([[1.2e154]])}, np.ones((1, 1)), np.zeros((1, 1))
    assert np.isfinite(anchored.penalty(params)[0]) and np.isfinite(model.loss(params, x, y))
    with pytest.raises(FloatingPointError, match=r"total \(loss \+ penalty\) contains inf/NaN"):
        anchored.loss_and_grads(params, x, y)


def test_overflow_of_an_anchored_penalty_raises():
    anchored, params, x, y = anchored_problem()
    params["fc2.weight"] = np.full((2, 4), 1e200)
    with pytest.raises(FloatingPointError,
                       match=r"penalty 'l2' anchoring 'fc2.weight': value contains inf/NaN"):
        anchored.penalty(params)
    with pytest.raises(FloatingPointError, match=r"^model: layer 'fc2' \(Dense\): output"):
        anchored.loss_and_grads({**params, "fc2.weight": np.full((2, 4), 1e308),
                                 "fc1.bias": np.full(4, 10.0)}, x, y)


# --- gradients come back in the caller's order ------------------------------------------------

@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_tied_gradients_come_back_in_the_order_of_params(mode):
    pair, params_a, params_b, batch_a, batch_b = lasserre_problem(mode=mode)
    reversed_a = {key: params_a[key] for key in reversed(list(params_a))}
    reversed_b = {key: params_b[key] for key in reversed(list(params_b))}
    assert list(reversed_a) != list(params_a) and list(reversed_b) != list(params_b)
    _, grads_a, grads_b = pair.loss_and_grads(reversed_a, reversed_b, batch_a, batch_b)
    assert list(grads_a) == list(reversed_a) and list(grads_b) == list(reversed_b)
    joined = pair.join(params_a, params_b)
    shuffled = {key: joined[key] for key in sorted(joined, key=lambda k: (k[2:], k[:2]))}
    assert list(shuffled) != list(joined)
    _, joined_grads = pair.joined_loss_and_grads(shuffled, batch_a, batch_b)
    assert list(joined_grads) == list(shuffled)
    _, in_order_a, _ = pair.loss_and_grads(params_a, params_b, batch_a, batch_b)
    for key in params_a:
        np.testing.assert_array_equal(grads_a[key], in_order_a[key])


def test_anchored_gradients_come_back_in_the_order_of_params():
    anchored, params, x, y = anchored_problem()
    reordered = {key: params[key] for key in reversed(list(params))}
    _, grads = anchored.loss_and_grads(reordered, x, y)
    assert list(grads) == list(reordered) != list(params)
