"""Tests of refimpl/gradcheck/safety.py: the complex step is cross-checked by real differences
(a loss that drops an imaginary part through ``abs`` or a norm is *not complex-safe*, never
ok), and a loss that differs between two evaluations at one point is *non-deterministic*.

Each promise of docs/gradient-checking.md ("What the complex step cannot see", "A loss that is
not a function") is kept by the test named there.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import check_vjp, safety
from refimpl.testing import strategies as rs

POINT = {"w": np.array([0.5, -1.5, 2.0]), "u": np.array([[0.3, -0.7], [1.1, 0.4]])}


def forgot_abs(p):
    """``sum sin(w) + 0.3 sum |w| + sum u^2``, whose gradient forgot the ``|w|`` term: the
    complex step reads that term's derivative as 0 (``np.abs`` of a complex number is real)."""
    w, u = p["w"], p["u"]
    loss = np.sum(np.sin(w)) + 0.3 * np.sum(np.abs(w)) + np.sum(u * u)
    return loss, {"w": np.cos(w), "u": 2 * u}


def forgot_norm(p):
    """``sum sin(w) + 0.2 ||u||`` (Frobenius), whose gradient forgot the norm."""
    w, u = p["w"], p["u"]
    loss = np.sum(np.sin(w)) + 0.2 * np.linalg.norm(u)
    return loss, {"w": np.cos(w), "u": np.zeros_like(u)}


def right_abs(p):
    """The same loss as :func:`forgot_abs` with its whole gradient: still not complex-safe
    (the complex step misreads it), so never ok with the complex step, and ok with central
    differences."""
    loss, grads = forgot_abs(p)
    return loss, {**grads, "w": grads["w"] + 0.3 * np.sign(p["w"])}


@pytest.mark.parametrize("f, name", [(forgot_abs, "w"), (forgot_norm, "u")])
def test_a_forgotten_abs_or_norm_term_is_not_complex_safe_in_full_mode(f, name):
    report = ri.check_gradients(f, POINT, method="complex")
    assert not report.ok, report
    statuses = {row.name: row.status for row in report.rows}
    assert statuses[name] == "not complex-safe", report
    assert statuses[({"w", "u"} - {name}).pop()] == "ok", report
    assert any("not complex-safe" in problem and repr(name) in problem
               for problem in report.notes), report.notes
    assert "not complex-safe" in str(report)
    # Real differences see the term: the central check fails the gradient too.
    assert not ri.check_gradients(f, POINT, method="central").ok


@pytest.mark.parametrize("f, name", [(forgot_abs, "w"), (forgot_norm, "u")])
def test_a_forgotten_abs_or_norm_term_is_not_complex_safe_in_directional_mode(f, name):
    report = ri.check_gradients(f, POINT, method="complex", mode="directional", directions=3)
    assert not report.ok, report
    assert "not complex-safe" in {row.status for row in report.rows}, report
    assert any("not complex-safe" in problem and repr(name) in problem
               for problem in report.notes), report.notes


def test_a_loss_that_is_not_complex_safe_is_never_ok_even_with_the_right_gradient():
    # The gradient is right, but what the complex step computed is not the loss's derivative:
    # the verdict cannot rest on it. Central differences judge it (and pass it).
    report = ri.check_gradients(right_abs, POINT, method="complex")
    assert not report.ok
    assert [row.status for row in report.rows] == ["not complex-safe", "ok"], report
    assert any("not complex-safe" in problem for problem in report.notes)
    assert ri.check_gradients(right_abs, POINT, method="central").ok


def test_check_vjp_of_a_backward_that_forgot_an_abs_term_is_not_complex_safe():
    def forward(x):
        return np.sin(x) + 0.5 * np.abs(x), x

    def backward(dout, x):       # forgot d|x|/dx = sign(x)
        return dout * np.cos(x)

    inputs = {"x": np.array([[0.5, -1.2, 2.0], [0.7, -0.3, 1.5]])}
    for mode in ("full", "directional"):
        report = check_vjp(forward, backward, inputs, mode=mode)
        assert not report.ok, report
        assert any("not complex-safe" in problem for problem in report.notes), report


class AbsTanh(nn.Tanh):
    """``tanh(x) + 0.1 |x|`` forward, Tanh's backward: a layer whose backward forgot the
    ``|x|`` term, and whose forward drops that term's imaginary part."""

    def forward(self, x, params):
        out, cache = super().forward(x, params)
        return out + 0.1 * np.abs(x), cache


def test_the_fast_full_check_of_a_model_that_is_not_complex_safe_is_never_ok():
    model = ri.Sequential([nn.Dense("fc1", 3, 4), AbsTanh(), nn.Dense("fc2", 4, 2)],
                          loss=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    params = model.init(0)
    report = ri.check_model_gradients(model, params, (x, y), method="complex")
    assert not report.ok, report
    flagged = {row.name for row in report.rows if row.status == "not complex-safe"}
    assert flagged == {"fc1.weight", "fc1.bias"}, report
    # Real differences agree: the gradient of fc1 is wrong. (The fast path cannot verify
    # itself through that loss's complex step: the coordinate loop, with a warning.)
    with pytest.warns(RuntimeWarning, match="cannot be verified through the model's own"):
        central = ri.check_model_gradients(model, params, (x, y), method="central")
    assert {row.name for row in central.rows if row.status != "ok"} == {"fc1.weight",
                                                                          "fc1.bias"}


def test_without_the_cross_check_the_forgotten_term_would_pass(monkeypatch):
    """The cross-check is what catches these: with it switched off, the complex step alone
    passes every one of them (the hole the cross-check closes)."""
    monkeypatch.setattr(safety, "SAFETY_DIRECTIONS", 0)
    assert ri.check_gradients(forgot_abs, POINT, method="complex").ok
    assert ri.check_gradients(forgot_norm, POINT, method="complex", mode="directional").ok


def test_the_cross_check_uses_one_or_two_directions():
    assert 1 <= safety.SAFETY_DIRECTIONS <= 2


# --- never a false flag --------------------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(rs.cases(kinds=["mlp", "cnn", "shared", "tied"]), st.sampled_from(["full",
                                                                         "directional"]))
def test_a_complex_safe_model_is_never_flagged_on_drawn_cases(case, mode):
    """Drawn models (every activation, kinks included: ReLU, max-pooling, L1 ties) with their
    right gradients: no row is *not complex-safe*."""
    report = ri.check_gradients(case.loss_and_grads, case.params, method="complex", mode=mode,
                                directions=2)
    assert not any("complex-safe" in problem for problem in report.notes), report
    assert "not complex-safe" not in {row.status for row in report.rows}, report


def test_a_loss_with_rounding_noise_beyond_the_floor_is_not_flagged():
    """(1e6 + q) - 1e6 carries rounding noise ~eps 1e6, far above the floor of a few
    eps |f| that the smallest step assumes; the cross-check's longer steps see through it.
    The function is complex-safe and its gradient right: ok."""
    def f(p):
        w = p["w"]
        return (1e6 + np.sum(np.sin(w))) - 1e6, {"w": np.cos(w)}

    point = {"w": np.array([0.4, -0.5, 0.9])}
    for mode in ("full", "directional"):
        report = ri.check_gradients(f, point, method="complex", mode=mode)
        assert report.ok, report


def relu_sum(p):
    x = p["x"]
    return np.where(x.real > 0, x, 0).sum(), {"x": (x > 0).astype(float)}


def test_kinks_at_the_point_are_not_a_false_flag():
    """The complex step follows the branch of the real part; the real differences along a
    direction cross the kinks. Two kinks at the point, which a direction may switch on at
    both sides: the probes four steps to either side agree."""
    for seed in range(5):
        report = ri.check_gradients(relu_sum, {"x": np.array([0.0, 1.0, -2.0, 0.0])},
                                    method="complex", seed=seed)
        assert report.ok, report


def test_one_kink_at_the_point_costs_what_an_ordinary_point_costs():
    """One kink within the step: the side that does not cross it agrees at the first probe
    (4 real evaluations per direction), as at an ordinary point."""
    calls = []

    def loss_fn(p):
        calls.append(1)
        return relu_sum(p)[0]

    point = {"x": np.array([0.0, 1.0, -2.0])}
    for seed in range(4):
        calls.clear()
        report = ri.check_gradients(relu_sum, point, method="complex", loss_fn=loss_fn,
                                    seed=seed)
        assert report.ok, report
        # 3 coordinates, the point twice (determinism), 4 per cross-check direction
        assert len(calls) == 3 + 2 + 4 * safety.SAFETY_DIRECTIONS, seed


# --- a loss that is not a function of the parameters -----------------------------------------

def noisy(scale):
    rng = np.random.default_rng()

    def f(p):
        w = p["w"]
        return np.sum(w ** 2) + scale * rng.standard_normal(), {"w": 2 * w}
    return f


@pytest.mark.parametrize("method", ["complex", "central", "richardson"])
@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_non_deterministic_loss_is_reported_as_such(method, mode):
    report = ri.check_gradients(noisy(1e-3), {"w": np.array([0.5, -1.5, 2.0])},
                                method=method, mode=mode)
    assert not report.ok
    assert {row.status for row in report.rows} == {"non-deterministic"}, report
    assert any("two evaluations" in problem for problem in report.notes), report.notes


def test_non_determinism_seen_only_while_probing_a_kink_is_reported_as_such():
    # Deterministic at the point (the first evaluations agree), noisy elsewhere: the kink
    # probe of a disagreeing coordinate evaluates the point twice more and sees it.
    rng = np.random.default_rng()
    calls = []

    def f(p):
        calls.append(1)
        w = p["w"]
        noise = 0.0 if len(calls) <= 3 else 1e-3 * rng.standard_normal()
        return np.sum(w ** 2) + noise, {"w": 2 * w}

    report = ri.check_gradients(f, {"w": np.array([0.5, -1.5, 2.0])}, method="central")
    assert not report.ok
    assert report.rows[0].status == "non-deterministic", report


def test_a_deterministic_loss_is_not_called_non_deterministic():
    report = ri.check_gradients(noisy(0.0), {"w": np.array([0.5, -1.5, 2.0])},
                                method="central")
    assert report.ok, report
