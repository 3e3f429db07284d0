"""Tests of refimpl/gradcheck.py: the checker passes right gradients and fails wrong ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl as ri
from refimpl.gradcheck import METHODS, TOLERANCES, assert_close, check_vjp
from refimpl.nn.dense import dense_backward, dense_forward


def square_mlp(activation="tanh", seed=0):
    """An MLP whose first weight is square (4x4), so a transposed gradient has the right
    shape and only its values are wrong."""
    model = ri.MLP([4, 4, 3], activation=activation)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, size=6)
    return model, model.init(seed), x, y


def corrupted(model, x, y, corrupt):
    def f(params):
        loss, grads = model.loss_and_grads(params, x, y)
        return loss, corrupt(dict(grads))
    return f


MUTATIONS = {
    "flipped sign": lambda g: {**g, "fc2.bias": -g["fc2.bias"]},
    "factor 1.001": lambda g: {**g, "fc1.weight": 1.001 * g["fc1.weight"]},
    "transposed weight gradient": lambda g: {**g, "fc1.weight": g["fc1.weight"].T.copy()},
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["full", "directional"])
def test_checker_passes_right_gradients(method, mode):
    model, params, x, y = square_mlp()
    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params,
                                method=method, mode=mode)
    assert report.ok, report
    assert all(row.status == "ok" for row in report.rows)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_checker_fails_wrong_gradients(method, mode, mutation):
    model, params, x, y = square_mlp()
    report = ri.check_gradients(corrupted(model, x, y, MUTATIONS[mutation]), params,
                                method=method, mode=mode)
    assert not report.ok, report
    assert "mismatch" in {row.status for row in report.rows}
    assert "non-differentiable" not in {row.status for row in report.rows}
    if mode == "full":
        wrong = {"flipped sign": "fc2.bias", "factor 1.001": "fc1.weight",
                 "transposed weight gradient": "fc1.weight"}[mutation]
        assert {row.name for row in report.rows if row.status != "ok"} == {wrong}


def test_report_names_the_worst_index_with_both_values():
    model, params, x, y = square_mlp()
    _, grads = model.loss_and_grads(params, x, y)

    def f(p):
        loss, g = model.loss_and_grads(p, x, y)
        g = dict(g)
        g["fc1.weight"] = g["fc1.weight"].copy()
        g["fc1.weight"][2, 3] += 0.5
        return loss, g

    report = ri.check_gradients(f, params)
    row = next(row for row in report.rows if row.name == "fc1.weight")
    assert row.status == "mismatch" and row.worst_index == (2, 3)
    assert row.analytic == grads["fc1.weight"][2, 3] + 0.5
    assert abs(row.numerical - grads["fc1.weight"][2, 3]) < 1e-14
    assert row.max_abs_error == pytest.approx(0.5, rel=1e-12)
    text = str(report)
    assert "FAILED" in text and "fc1.weight" in text and "(2, 3)" in text and "mismatch" in text


@given(st.integers(0, 2**16), st.sampled_from(["tanh", "sigmoid", "softplus"]))
def test_complex_step_agrees_to_rounding(seed, activation):
    model, params, x, y = square_mlp(activation, seed)
    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params)
    assert max(row.max_rel_error for row in report.rows) <= TOLERANCES["complex"].rtol


def test_richardson_is_more_accurate_than_central():
    def f(p):
        x = p["x"]
        return np.sum(np.exp(x) * np.sin(3 * x)), {"x": np.exp(x) * (np.sin(3 * x)
                                                                 + 3 * np.cos(3 * x))}

    point = {"x": np.linspace(-1.5, 1.5, 25)}
    central = ri.check_gradients(f, point, method="central")
    richardson = ri.check_gradients(f, point, method="richardson")
    assert central.ok and richardson.ok
    assert richardson.rows[0].max_abs_error < central.rows[0].max_abs_error / 10


def test_relative_error_is_scaled_by_the_largest_gradient_not_each_entry():
    # An exactly-zero gradient entry next to O(1) ones: the numerical value there is ~1e-17,
    # which is a relative error of 1 entry-wise but ~1e-17 of the parameter's scale.
    def f(p):
        x = p["x"]
        value = x[0] ** 2 + np.sin(x[1]) * 0 + x[2] * 3
        return value, {"x": np.array([2 * x[0], 0.0, 3.0])}

    report = ri.check_gradients(f, {"x": np.array([0.7, 0.3, -1.0])}, method="central")
    assert report.ok, report
    assert report.rows[0].scale == pytest.approx(3.0)


def test_directional_mode_costs_k_evaluations_whatever_the_parameter_count():
    model = ri.MLP([30, 20, 5])
    params = model.init(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 30)), rng.integers(0, 5, size=4)
    calls = []

    def loss_fn(p):
        calls.append(1)
        return model.loss(p, x, y)

    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params,
                                mode="directional", directions=5, loss_fn=loss_fn)
    assert report.ok, report
    assert len(calls) == 5 and len(report.rows) == 5
    calls.clear()
    ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params, names=["fc2.bias"],
                       loss_fn=loss_fn)
    assert len(calls) == 5  # full mode on a named subset: one evaluation per coordinate


def test_directional_mode_is_deterministic_for_a_seed():
    model, params, x, y = square_mlp()
    reports = [ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params,
                                  mode="directional", seed=seed) for seed in (3, 3, 4)]
    assert reports[0].to_dict() == reports[1].to_dict()
    assert reports[0].rows[0].analytic != reports[2].rows[0].analytic


# --- kinks and non-finite values --------------------------------------------------------

def relu_sum(p):
    x = p["x"]
    return np.where(x.real > 0, x, 0).sum(), {"x": (x > 0).astype(float)}


@pytest.mark.parametrize("method", ["central", "richardson"])
@pytest.mark.parametrize("kink_offset", [0.0, 2e-6, -3e-6])
def test_a_point_within_one_step_of_a_kink_is_non_differentiable_not_a_mismatch(method,
                                                                             kink_offset):
    point = {"x": np.array([kink_offset, 1.0, -2.0])}
    report = ri.check_gradients(relu_sum, point, method=method)
    row = report.rows[0]
    assert row.status == "non-differentiable", report
    assert row.nondifferentiable == 1
    assert not report.ok


def test_a_wrong_gradient_at_a_smooth_point_next_to_a_kink_is_still_a_mismatch():
    def f(p):
        loss, grads = relu_sum(p)
        return loss, {"x": grads["x"] * np.array([1.0, 1.5, 1.0])}  # wrong at x[1] = 1

    report = ri.check_gradients(f, {"x": np.array([0.0, 1.0, -2.0])}, method="central")
    assert report.rows[0].status == "mismatch"


def test_complex_step_follows_the_branch_at_the_kink():
    # relu'(0) = 0 by convention, and Im relu(0 + ih)/h = 0 (branch on the real part).
    report = ri.check_gradients(relu_sum, {"x": np.array([0.0, 1.0, -2.0])}, method="complex")
    assert report.ok, report


def test_non_finite_loss_or_gradient_is_reported():
    def nan_loss(p):
        return float("nan"), {"x": np.ones(2)}

    def inf_grad(p):
        return float(p["x"].sum().real), {"x": np.array([1.0, np.inf])}

    for f, problem in ((nan_loss, "loss"), (inf_grad, "gradient")):
        report = ri.check_gradients(f, {"x": np.zeros(2)})
        assert not report.ok and report.rows[0].status == "non-finite"
        assert problem in report.problems[0]
        json.dumps(report.to_dict(), allow_nan=False)   # still valid JSON
        assert "non-finite" in str(report)


def test_non_finite_numerical_derivative_is_reported():
    def f(p):   # log blows up just left of 0; the central step at 1e-7 crosses it
        x = p["x"]
        return np.log(x).sum(), {"x": 1 / x}

    with np.errstate(invalid="ignore"):
        report = ri.check_gradients(f, {"x": np.array([1e-7, 1.0])}, method="central")
    assert report.rows[0].status == "non-finite" and not report.ok


def test_report_to_dict_is_json():
    model, params, x, y = square_mlp()
    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is True and data["method"] == "complex"
    assert [row["name"] for row in data["rows"]] == list(params)
    assert data["rtol"] == TOLERANCES["complex"].rtol


def test_checker_does_not_mutate_params():
    model, params, x, y = square_mlp()
    copies = {k: v.copy() for k, v in params.items()}
    for value in params.values():
        value.flags.writeable = False
    for method in METHODS:
        ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params, method=method)
    for name in params:
        assert np.array_equal(params[name], copies[name])


# --- bad input --------------------------------------------------------------------------

def test_bad_arguments_get_clear_errors():
    model, params, x, y = square_mlp()
    f = lambda p: model.loss_and_grads(p, x, y)  # noqa: E731
    with pytest.raises(ValueError, match="method: unknown method 'forward'"):
        ri.check_gradients(f, params, method="forward")
    with pytest.raises(ValueError, match="mode: unknown mode"):
        ri.check_gradients(f, params, mode="random")
    with pytest.raises(ValueError, match=r"names: unknown parameters \['fc9.weight'\]"):
        ri.check_gradients(f, params, names=["fc9.weight"])
    with pytest.raises(ValueError, match="directions"):
        ri.check_gradients(f, params, mode="directional", directions=0)
    with pytest.raises(TypeError, match="f: expected a callable"):
        ri.check_gradients("f", params)
    with pytest.raises(ValueError, match=r"params\['fc1.bias'\]: contains 1 NaN"):
        ri.check_gradients(f, {**params, "fc1.bias": np.array([np.nan, 0, 0, 0])})
    with pytest.raises(ValueError, match="rtol, atol"):
        ri.check_gradients(f, params, rtol=-1)
    with pytest.raises(ValueError, match="f: grads keys"):
        ri.check_gradients(lambda p: (f(p)[0], {"fc1.weight": f(p)[1]["fc1.weight"]}), params)
    with pytest.raises(ValueError, match=r"f: grads\['fc1.bias'\] has shape \(1, 4\)"):
        ri.check_gradients(lambda p: (f(p)[0], {**f(p)[1], "fc1.bias": np.zeros((1, 4))}),
                           params)


# --- check_vjp and assert_close -----------------------------------------------------------

def test_check_vjp_passes_dense_and_fails_a_transposed_weight_gradient():
    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((3, 4)), "weight": rng.standard_normal((4, 4)),
              "bias": rng.standard_normal(4)}
    assert check_vjp(dense_forward, dense_backward, inputs).ok

    def transposed(dout, cache):
        dx, dweight, dbias = dense_backward(dout, cache)
        return dx, dweight.T, dbias

    report = check_vjp(dense_forward, transposed, inputs)
    assert [row.status for row in report.rows] == ["ok", "mismatch", "ok"]


def test_check_vjp_rejects_a_misshapen_upstream_gradient():
    inputs = {"x": np.ones((2, 3)), "weight": np.ones((4, 3)), "bias": np.ones(4)}
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 4\)"):
        check_vjp(dense_forward, dense_backward, inputs, dout=np.ones((4, 2)))


def test_assert_close_uses_the_scaled_rule():
    assert_close(np.array([1.0, 1e-20]), np.array([1.0 + 1e-13, 0.0]))
    with pytest.raises(AssertionError, match=r"at \(1,\).*actual 2.0, expected 1.0"):
        assert_close(np.array([0.0, 2.0]), np.array([0.0, 1.0]))
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(2), np.zeros((2, 1)))
