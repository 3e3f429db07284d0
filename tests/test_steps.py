"""Tests of refimpl/study/steps.py: the error curves of four numerical derivatives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl.study import (
    EPS,
    EXPONENTS,
    METHODS,
    StepStudy,
    best_step,
    converges,
    coordinate_direction,
    default_steps,
    random_direction,
    study_steps,
)
from refimpl.testing import strategies as rs
from refimpl.testing.cases import get_case

#: The best step of a formula of order k balances truncation ``|f^(k+1)| h^k / c_k`` against
#: rounding ``~ eps |f| / h``: ``h* = (c eps |f| / |f^(k+1)|)^(1/(k+1))``. For forward
#: differences the test predicts it from the loss's own curvature along the direction,
#: ``h* = 2 sqrt(eps |f| / |f''|)`` (f'' by the complex step of the analytic gradient): a
#: square root passes a small curvature straight into h (a factor 1e4 in |f / f''| is a factor
#: 100 in h). For central and Richardson differences it is checked against eps^(1/3) and
#: eps^(1/5) themselves: the cube and fifth roots damp the derivative ratio (a factor 100 in h
#: is a factor 1e6 and 1e10 in it). The noise of the rounding branch moves a minimum by a
#: factor of a few (less after the running median of :func:`best_step`), well inside 100.
FACTOR_IN_H = 100.0
#: The complex step subtracts nothing: its error is the rounding of the imaginary part through
#: the forward pass and of the analytic gradient, a few eps each per layer, relative to the
#: size of the summands of ``<g, v>`` (``sum |g_i v_i|``), not to the sum, which can cancel.
#: 64 eps bounds it for the networks here (at most three layers) at every step from 1e-10 to
#: 1e-300.
COMPLEX_FLAT = 64 * EPS
#: Steps for the property tests: 4 per decade down to 1e-20 (the V-curves), then every tenth
#: decade down to 1e-300 (the flat line).
STEPS = np.concatenate([default_steps(4, 20), 10.0 ** -np.arange(30.0, 301.0, 10.0)])


def _summands(gradient, direction) -> float:
    return float(sum(np.sum(np.abs(gradient[key] * direction[key])) for key in gradient))


def _study_and_check(loss_and_grads, params, direction):
    """Study ``loss_and_grads`` at ``params`` along ``direction`` and check the curves."""
    value, gradient = loss_and_grads(params)
    study = study_steps(lambda p: loss_and_grads(p)[0], params, gradient, direction, STEPS)
    shifted = {key: params[key] + 1e-30j * direction[key] for key in params}
    curvature = sum(np.sum(g.imag * direction[key]) / 1e-30
                    for key, g in loss_and_grads(shifted)[1].items())        # f'' along v
    expected = {"forward": 2 * np.sqrt(EPS * abs(value) / abs(curvature)),
                "central": EPS ** EXPONENTS["central"],
                "richardson": EPS ** EXPONENTS["richardson"]}
    for method in EXPONENTS:
        ratio = best_step(study, method) / expected[method]
        assert 1 / FACTOR_IN_H <= ratio <= FACTOR_IN_H, (method, ratio)
    assert all(converges(study, method) for method in METHODS)   # a smooth loss: V-curves
    summands = _summands(gradient, direction)
    flat = study.errors["complex"][study.steps <= 1e-10] * abs(study.analytic) / summands
    assert flat.max() <= COMPLEX_FLAT, flat.max() / EPS
    # Below the spacing of the numbers around the point the step vanishes: estimate 0,
    # relative error exactly 1 (the documented behaviour).
    tiny = study.steps <= 1e-30
    for method in ("forward", "central", "richardson"):
        assert np.all(study.estimates[method][tiny] == 0)
        assert np.all(study.errors[method][tiny] == 1)


@settings(max_examples=20)
@given(rs.mlps(min_hidden=1, min_width=2, bias=True, activations=["tanh", "sigmoid", "softplus"],
               losses=["cross_entropy"]).flatmap(lambda model: rs.points(model, max_batch=3)
                                                 .map(lambda point: (model, point))),
       st.integers(0, 2**32 - 1))
def test_minima_near_eps_powers_and_a_flat_complex_step_on_drawn_networks(drawn, seed):
    # Smooth, non-polynomial, well-scaled losses (cross-entropy after a smooth hidden layer,
    # at least 2 units a layer, biases): a loss nearly polynomial along the direction (one
    # unit, no bias, an input of 0.1: its fifth derivative ~1e-10 of its first) has no
    # truncation to balance within h <= 0.1, and its Richardson minimum sits at h = 0.1.
    model, point = drawn
    x, y = point.inputs["x"], point.inputs["y"]
    _study_and_check(lambda p: model.loss_and_grads(p, x, y), point.params,
                     random_direction(point.params, seed))


@pytest.mark.parametrize("name", ["mlp-tanh-ce", "shared-tied-autoencoder", "tied-soft-l2",
                                  "cnn-batch1-one-channel"])
def test_minima_near_eps_powers_on_built_in_cases(name):
    case = get_case(name)
    _study_and_check(case.loss_and_grads, case.params, random_direction(case.params, 0))


def test_truncation_errors_of_each_formula_on_the_exponential():
    # f(w) = exp(w) at w = 0.5, h = 0.1: Taylor gives the relative errors, rounding (~eps/h)
    # is far below them: forward h/2 + h^2/6 + ..., central h^2/6 + h^4/120,
    # Richardson (4 C(h/2) - C(h)) / 3 - f' = -h^4/480 f' (+ O(h^6)), complex -h^2/6 f'.
    h = 0.1
    study = study_steps(lambda p: np.exp(p["w"][0]), {"w": np.array([0.5])},
                        {"w": np.array([np.exp(0.5)])}, {"w": np.array([1.0])}, np.array([h]))
    expected = {"forward": h / 2 + h**2 / 6 + h**3 / 24, "central": h**2 / 6 + h**4 / 120,
                "richardson": h**4 / 480, "complex": h**2 / 6 - h**4 / 120}
    for method in METHODS:
        assert study.errors[method][0] == pytest.approx(expected[method], rel=2e-3), method
    assert study.estimates["richardson"][0] < np.exp(0.5) < study.estimates["central"][0]


def _scalar_study(loss, w):
    """The study of ``loss(w)`` (a scalar w) along +1, its derivative by the complex step."""
    point = {"w": np.array([w])}
    slope = complex(loss(np.complex128(w + 1e-30j))).imag / 1e-30
    return study_steps(lambda p: loss(p["w"][0]), point, {"w": np.array([slope])},
                       {"w": np.array([1.0])}, default_steps(4, 20))


def test_a_kink_does_not_converge_and_smooth_or_exact_losses_do():
    # relu(w) + 2 w at the kink w = 0 (relu'(0) = 0, branching on the real part as every
    # forward pass does): the forward difference sees the right slope 3, the central and
    # Richardson ones the mean 2.5, against the convention's 2 at every step: a plateau.
    kinked = _scalar_study(lambda w: np.where(w.real > 0, w, 0) + 2 * w, 0.0)
    assert kinked.analytic == 2.0
    assert [converges(kinked, m) for m in METHODS] == [False, False, False, True]
    assert kinked.errors["central"][8] == pytest.approx(0.25)
    smooth = _scalar_study(lambda w: np.exp(w) + 2 * w, 0.3)
    assert all(converges(smooth, m) for m in METHODS)
    # w^2 + 3 w: central and Richardson differences are exact (no truncation): their error
    # is rounding alone and only grows as h shrinks, from ~eps; that is convergence too.
    exact = _scalar_study(lambda w: w * w + 3 * w, 0.7)
    assert exact.errors["central"][0] < 1e-14
    assert all(converges(exact, m) for m in METHODS)


def test_a_plateau_below_a_larger_first_error_is_no_convergence():
    # The error first falls by two decades (curvature at large steps) onto a plateau: no V.
    steps = 10.0 ** -np.arange(1.0, 16.0, 0.25)
    errors = np.maximum(1e-2, 100.0 * steps ** 2)    # 1 at h = 0.1, 1e-2 from h = 1e-2
    errors[steps < 1e-13] = 1.0
    study = StepStudy(steps, 1.0, {m: errors for m in METHODS}, {m: errors for m in METHODS})
    assert not converges(study, "central")
    v_curve = steps + 1e-8 / steps                   # forward-like: bottom 2e-4 at 1e-4
    study = StepStudy(steps, 1.0, {m: v_curve for m in METHODS}, {m: v_curve for m in METHODS})
    assert converges(study, "central")


def test_best_step_follows_the_curve_not_a_lucky_point():
    steps = 10.0 ** -np.arange(1.0, 16.0)
    below = np.arange(15.0) - 7.0                    # h = 1e-8 at 0
    errors = np.where(below < 0, -3 * below, below) + 1.0   # a V with its bottom at h = 1e-8
    errors[12] = 1e-9                                 # a lucky cancellation at h = 1e-13
    study = StepStudy(steps, 1.0, {m: errors for m in METHODS}, {m: errors for m in METHODS})
    assert best_step(study, "central") == pytest.approx(1e-8)
    assert best_step(study, "central", window=1) == pytest.approx(1e-13)


def test_default_steps_span_1e_1_to_1e_300():
    steps = default_steps()
    assert steps[0] == pytest.approx(0.1) and steps[-1] == pytest.approx(1e-300)
    assert steps.size == 4 * 299 + 1 and np.all(np.diff(steps) < 0)


def test_directions():
    params = {"a": np.zeros((2, 3)), "b": np.zeros(4)}
    direction = coordinate_direction(params, "a", 4)
    assert direction["a"][1, 1] == 1 and sum(d.sum() for d in direction.values()) == 1
    random = random_direction(params, 3)
    assert sum(float(np.sum(d * d)) for d in random.values()) == pytest.approx(1, rel=1e-15)
    assert not np.array_equal(random["a"], random_direction(params, 4)["a"])


def test_bad_arguments_are_clear_errors():
    params = {"a": np.zeros(2)}
    with pytest.raises(ValueError, match="name: unknown parameter 'c'"):
        coordinate_direction(params, "c", 0)
    with pytest.raises(ValueError, match=r"index: expected 0 <= index < 2 .* got 2"):
        coordinate_direction(params, "a", 2)
    with pytest.raises(ValueError, match="smallest_exponent: expected at most 300"):
        default_steps(smallest_exponent=320)
    with pytest.raises(ValueError, match=r"gradient: expected the keys of params"):
        study_steps(lambda p: 0.0, params, {}, params)
    with pytest.raises(ValueError, match=r"direction\['a'\]: expected shape \(2,\), got \(3,\)"):
        study_steps(lambda p: 0.0, params, params, {"a": np.zeros(3)})
    with pytest.raises(ValueError, match="steps: expected a non-empty 1-D array"):
        study_steps(lambda p: 0.0, params, params, params, np.array([1e-3, -1.0]))
    with pytest.raises(ValueError, match="window: expected an odd number"):
        best_step(StepStudy(np.ones(1), 1.0, {}, {"central": np.ones(1)}), "central", 2)


@pytest.mark.parametrize("returned, expected", [
    ((1.0, {"a": np.zeros(2)}),
     r"got tuple \(a \(loss, grads\) pair\? pass lambda p: f\(p\)\[0\]\)"),
    (np.ones(3), r"got ndarray of shape \(3,\)$"),
    (None, r"got NoneType$"),
    (True, r"got bool$"),
])
def test_a_loss_that_returns_no_scalar_is_named(returned, expected):
    params = {"a": np.zeros(2)}
    with pytest.raises(TypeError, match=r"^loss: expected loss\(params\) to return a scalar \(a "
                                        r"real or complex number\), " + expected):
        study_steps(lambda p: returned, params, params, params)
    # a 0-d array is a scalar
    study = study_steps(lambda p: np.array(1.0), params, params, params, np.array([0.1]))
    assert study.estimates["central"][0] == 0


def test_estimates_are_the_formulas_as_written_where_the_step_vanishes():
    # Steps around the spacing of the numbers near p, where some entries move and some do
    # not: the estimates are the four formulas evaluated as written, zeros included.
    case = get_case("mlp-tanh-ce")
    params, direction = case.params, random_direction(case.params, 1)
    _, gradient = case.loss_and_grads(params)
    steps = 10.0 ** -np.arange(13.0, 24.0, 0.25)
    study = study_steps(lambda p: case.loss_and_grads(p)[0], params, gradient, direction, steps)

    def f(step):
        shifted = {key: params[key] + step * direction[key] for key in params}
        return case.loss_and_grads(shifted)[0]

    for position, h in enumerate(steps):
        central = (f(h) - f(-h)) / (2 * h)
        expected = {"forward": (f(h) - f(0.0)) / h, "central": central,
                    "richardson": (4 * (f(h / 2) - f(-h / 2)) / h - central) / 3,
                    "complex": f(1j * h).imag / h}
        for method in METHODS:
            assert study.estimates[method][position] == expected[method], (method, h)
    assert np.any(study.estimates["forward"] == 0) and np.any(study.estimates["forward"] != 0)


def test_no_difference_is_skipped_while_some_entry_still_moves():
    # Two entries of very different sizes: from h ~ 1e-10 the big one no longer moves, the
    # small one moves down to h ~ 1e-16, and at some steps p + h v moves while p + h v / 2
    # does not. Each estimate is the formula evaluated as written.
    # small = 1.5: the numbers near it are 2.2e-16 apart on both sides, so p +- h v / 2 == p
    # while p +- h v != p for 1.4e-16 < h < 2.8e-16; sin keeps the big entry's term O(1), so
    # f resolves a one-ulp move of the small one.
    params, direction = {"big": np.array([1e6]), "small": np.array([1.5])}, \
        {"big": np.array([0.6]), "small": np.array([0.8])}
    loss = lambda p: np.exp(p["small"][0]) + np.sin(p["big"][0])        # noqa: E731
    gradient = {"big": np.array([np.cos(1e6)]), "small": np.array([np.exp(1.5)])}
    steps = 10.0 ** -np.arange(9.0, 18.0, 0.05)
    study = study_steps(loss, params, gradient, direction, steps)

    def f(step):
        return loss({key: params[key] + step * direction[key] for key in params})

    for position, h in enumerate(steps):
        central = (f(h) - f(-h)) / (2 * h)
        assert study.estimates["forward"][position] == (f(h) - f(0.0)) / h, h
        assert study.estimates["central"][position] == central, h
        assert study.estimates["richardson"][position] == \
            (4 * (f(h / 2) - f(-h / 2)) / h - central) / 3, h
