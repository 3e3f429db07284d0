"""Tests of refimpl.gradcheck: the checker passes right gradients and fails wrong ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl as ri
from refimpl.gradcheck import METHODS, TOLERANCES, Tolerance, assert_close, check_vjp, safety
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

    # Besides: the point twice (determinism), and per cross-check direction of the complex
    # step 4 real differences (and in directional mode its complex step, 1 evaluation).
    fixed = 2 + safety.SAFETY_DIRECTIONS * 4
    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params,
                                mode="directional", directions=5, loss_fn=loss_fn)
    assert report.ok, report
    assert len(calls) == 5 + fixed + safety.SAFETY_DIRECTIONS and len(report.rows) == 5
    calls.clear()
    ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params, names=["fc2.bias"],
                       loss_fn=loss_fn)
    assert len(calls) == 5 + fixed  # full mode on a named subset: one per coordinate
    calls.clear()
    ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params, names=["fc2.bias"],
                       loss_fn=loss_fn, method="central")
    assert len(calls) == 2 * 5 + 2  # no cross-check for real differences


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
    with pytest.raises(ValueError, match=r"f: grads must have exactly the keys of params .*"
                                         r"missing \['fc1.bias', 'fc2.weight', 'fc2.bias'\]"):
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


# --- bad tolerances, seeds and counts are errors, never a verdict ---------------------------

def sine(p):
    return np.sum(np.sin(p["x"])), {"x": np.cos(p["x"])}


def sine_with_a_flipped_sign(p):
    loss, grads = sine(p)
    return loss, {"x": -grads["x"]}


SINE_POINT = {"x": np.array([0.3, -1.1, 2.0])}
DENSE_INPUTS = {"x": np.arange(6.0).reshape(2, 3) / 7, "weight": np.ones((4, 3)) / 3,
                "bias": np.zeros(4)}


def test_a_nan_tolerance_no_longer_passes_a_wrong_gradient():
    # The demonstration: this wrong gradient is rejected by the defaults, and rtol=nan made
    # every comparison vacuous (NaN > limit is False), so it used to pass.
    assert not ri.check_gradients(sine_with_a_flipped_sign, SINE_POINT).ok
    with pytest.raises(ValueError, match="rtol: expected a finite non-negative number, got nan"):
        ri.check_gradients(sine_with_a_flipped_sign, SINE_POINT, rtol=float("nan"))


# (value, exception, message): every way a tolerance can be wrong.
BAD_TOLERANCES = [
    (float("nan"), ValueError, "finite non-negative number, got nan"),
    (float("inf"), ValueError, "finite non-negative number, got inf"),
    (-1e-3, ValueError, "finite non-negative number, got -0.001"),
    ("x", TypeError, "finite non-negative number, got str 'x'"),
    (True, TypeError, "finite non-negative number, got bool True"),
    ([1e-6], TypeError, "finite non-negative number, got list"),
]
BAD_SEEDS = [(-1, ValueError, "non-negative int, got -1"),
             (1.0, TypeError, "non-negative int, got float 1.0"),
             (True, TypeError, "non-negative int, got bool True")]
BAD_DIRECTIONS = [(0, ValueError, "positive int, got 0"), (-3, ValueError, "positive int, got -3"),
                  (2.0, TypeError, "positive int, got float 2.0"),
                  (True, TypeError, "positive int, got bool True"),
                  ("4", TypeError, "positive int, got str '4'")]
BAD_ARGUMENTS = ([("rtol", *bad) for bad in BAD_TOLERANCES]
                 + [("atol", *bad) for bad in BAD_TOLERANCES]
                 + [("seed", *bad) for bad in BAD_SEEDS]
                 + [("directions", *bad) for bad in BAD_DIRECTIONS])


@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("argument, value, error, message", BAD_ARGUMENTS)
def test_check_gradients_refuses_bad_tolerances_seeds_and_directions(argument, value, error,
                                                                     message, mode):
    calls = []

    def f(p):
        calls.append(1)
        return sine_with_a_flipped_sign(p)

    with pytest.raises(error, match=f"^{argument}: expected a {message}"):
        ri.check_gradients(f, SINE_POINT, mode=mode, **{argument: value})
    assert not calls  # refused before f is evaluated


@pytest.mark.parametrize("argument, value, error, message", BAD_ARGUMENTS)
def test_check_vjp_refuses_bad_tolerances_seeds_and_directions(argument, value, error,
                                                               message):
    calls = []

    def forward(**inputs):
        calls.append(1)
        return dense_forward(**inputs)

    with pytest.raises(error, match=f"^{argument}: expected a {message}"):
        check_vjp(forward, dense_backward, DENSE_INPUTS, **{argument: value})
    assert not calls


@pytest.mark.parametrize("field", ["rtol", "atol"])
@pytest.mark.parametrize("value, error, message", BAD_TOLERANCES)
def test_assert_close_refuses_bad_tolerances(field, value, error, message):
    tolerance = Tolerance(**{"rtol": 1e-12, "atol": 1e-14, field: value})
    # Would pass with rtol = nan or inf if the tolerance were used unchecked.
    with pytest.raises(error, match=f"^tolerance.{field}: expected a {message}"):
        assert_close(np.array([1.0, 2.0]), np.array([1.0, -2.0]), tolerance)


def test_assert_close_refuses_a_tolerance_that_is_not_a_pair():
    with pytest.raises(TypeError,
                       match=r"tolerance: expected a Tolerance\(rtol, atol\), got 1e-06"):
        assert_close(np.ones(2), np.ones(2), 1e-6)


def test_numpy_integers_and_floats_are_accepted():
    for mode in ("full", "directional"):
        report = ri.check_gradients(sine, SINE_POINT, mode=mode, directions=np.int64(3),
                                    seed=np.uint8(5), rtol=np.float64(1e-12), atol=0)
        assert report.ok and report.tolerance == (1e-12, 0.0), report
    assert len(ri.check_gradients(sine, SINE_POINT, mode="directional",
                                  directions=np.int32(3)).rows) == 3
    assert check_vjp(dense_forward, dense_backward, DENSE_INPUTS, seed=np.int64(2),
                     mode="directional", directions=np.int16(2)).ok
    assert_close(np.ones(2), np.ones(2), Tolerance(np.float32(1e-6), 0))


# --- what f returns is checked, with errors that say what was expected -----------------------

def shape_2_loss(p):
    return np.sin(p["x"][:2]), {"x": np.cos(p["x"])}


@pytest.mark.parametrize("f, error, message", [
    (lambda p: 1.0, TypeError,
     r"^f: expected f\(params\) to return a pair \(loss, grads\), got float 1.0$"),
    (lambda p: None, TypeError,
     r"^f: expected f\(params\) to return a pair \(loss, grads\), got NoneType None$"),
    (lambda p: (1.0, {"x": 0}, 2), TypeError,
     r"^f: expected f\(params\) to return a pair \(loss, grads\), got a tuple of length 3$"),
    (shape_2_loss, ValueError,
     r"^f: expected the loss to be a scalar \(shape \(\)\), got an array of shape \(2,\)$"),
    (lambda p: (None, sine(p)[1]), TypeError,
     r"^f: expected the loss to be a real \(or complex\) scalar, got NoneType None$"),
    (lambda p: ("x", sine(p)[1]), TypeError,
     r"^f: expected the loss to be a real \(or complex\) scalar, got str 'x'$"),
    (lambda p: (sine(p)[0], None), TypeError,
     r"^f: expected a dict of gradients keyed like the parameters, got NoneType None$"),
    (lambda p: (sine(p)[0], {"x": None}), TypeError,
     r"^f: grads\['x'\] is not a numeric array \(got NoneType of dtype object\); "
     r"expected shape \(3,\)$"),
    (lambda p: (sine(p)[0], {}), ValueError,
     r"^f: grads must have exactly the keys of params \['x'\]; missing \['x'\], extra \[\]$"),
    (lambda p: (sine(p)[0], {**sine(p)[1], "b": 0.0}), ValueError,
     r"^f: grads must have exactly the keys of params \['x'\]; missing \[\], extra \['b'\]$"),
    (lambda p: (sine(p)[0], {"x": np.cos(p["x"])[:, None]}), ValueError,
     r"^f: grads\['x'\] has shape \(3, 1\), params\['x'\] has \(3,\)$"),
])
def test_a_bad_return_value_of_f_is_a_clear_error(f, error, message):
    with pytest.raises(error, match=message):
        ri.check_gradients(f, SINE_POINT)


@pytest.mark.parametrize("loss_fn, error, message", [
    (lambda p: None, TypeError,
     r"^loss_fn: expected the loss to be a real \(or complex\) scalar, got NoneType None$"),
    (lambda p: np.sin(p["x"]), ValueError,
     r"^loss_fn: expected the loss to be a scalar \(shape \(\)\), got an array of shape \(3,\)$"),
    (lambda p: np.sum(np.sin(p["x"]), keepdims=True), ValueError,
     r"^loss_fn: expected the loss to be a scalar \(shape \(\)\), got an array of shape \(1,\)$"),
])
@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_bad_return_value_of_loss_fn_is_a_clear_error(loss_fn, error, message, mode):
    with pytest.raises(error, match=message):
        ri.check_gradients(sine, SINE_POINT, loss_fn=loss_fn, mode=mode)


def test_f_is_checked_at_the_perturbed_points_too():
    def f(p):   # right at the point, None once perturbed (e.g. a branch on the dtype)
        return sine(p) if p["x"].dtype == np.float64 else None

    with pytest.raises(TypeError, match=r"^f: expected f\(params\) to return a pair"):
        ri.check_gradients(f, SINE_POINT)


@pytest.mark.parametrize("argument, call", [
    ("params", lambda: ri.check_gradients(sine, {"x": np.zeros(0)})),
    ("params", lambda: ri.check_gradients(sine, {"x": np.zeros((2, 0))})),
    ("inputs", lambda: check_vjp(dense_forward, dense_backward,
                                 {**DENSE_INPUTS, "x": np.zeros((0, 3))})),
])
def test_a_parameter_without_entries_is_a_clear_error(argument, call):
    with pytest.raises(ValueError, match=rf"^{argument}\['x'\]: expected an array with at "
                                         r"least one entry, got shape \("):
        call()


def test_other_bad_arguments_of_check_gradients():
    with pytest.raises(TypeError, match="^loss_fn: expected a callable"):
        ri.check_gradients(sine, SINE_POINT, loss_fn="sum")
    with pytest.raises(TypeError, match="^names: expected an iterable of parameter names, got "
                                        "str 'x'"):
        ri.check_gradients(sine, SINE_POINT, names="x")
    with pytest.raises(TypeError, match="^params: expected a non-empty dict of arrays"):
        ri.check_gradients(sine, {})
    with pytest.raises(TypeError, match=r"^params\['x'\]: expected a real array"):
        ri.check_gradients(sine, {"x": np.ones(2, complex)})


@pytest.mark.parametrize("forward, backward, error, message", [
    (lambda x: None, lambda dout, cache: dout, TypeError,
     r"^forward: expected forward\(\*\*inputs, \*\*static\) to return a pair "
     r"\(out, cache\), got NoneType None$"),
    (lambda x: x, lambda dout, cache: dout, TypeError,
     r"^forward: expected forward\(\*\*inputs, \*\*static\) to return a pair "
     r"\(out, cache\), got ndarray"),
    (lambda x: ("out", None), lambda dout, cache: dout, TypeError,
     r"^forward: expected out to be a numeric array, got dtype <U3$"),
    (lambda x: (2 * x, None), lambda dout, cache: None, TypeError,
     r"^backward: grads\['x'\] is not a numeric array \(got NoneType of dtype object\)"),
    (lambda x: (2 * x, None), lambda dout, cache: 2 * dout[:1], ValueError,
     r"^backward: grads\['x'\] has shape \(1,\), params\['x'\] has \(2,\)$"),
    ("forward", lambda dout, cache: dout, TypeError, "^forward: expected a callable"),
    (lambda x: (2 * x, None), None, TypeError, "^backward: expected a callable"),
])
def test_check_vjp_gives_clear_errors_for_a_bad_forward_or_backward(forward, backward, error,
                                                                    message):
    with pytest.raises(error, match=message):
        check_vjp(forward, backward, {"x": np.array([0.5, -1.0])})


def test_check_vjp_names_backward_when_it_returns_too_few_gradients():
    with pytest.raises(TypeError, match=r"^backward: expected a tuple of 3 gradients \(one per "
                                        r"input \['x', 'weight', 'bias'\]\), got None"):
        check_vjp(dense_forward, lambda dout, cache: None, DENSE_INPUTS)


def test_check_vjp_names_backward_when_its_tuple_is_too_short():
    def two_of_three(dout, cache):
        return dense_backward(dout, cache)[:2]

    with pytest.raises(TypeError, match=r"^backward: expected a tuple of 3 gradients"):
        check_vjp(dense_forward, two_of_three, DENSE_INPUTS)


def test_check_vjp_refuses_a_forward_whose_output_shape_changes_off_the_point():
    point = np.array([0.5, -1.0])

    def forward(x):
        # The output grows by one entry once x leaves the point (as a shape bug would).
        grown = np.any(x.imag != 0) if np.iscomplexobj(x) else not np.all(x == point)
        return (np.concatenate([2 * x, x[:1]]) if grown else 2 * x), None

    with pytest.raises(ValueError, match=r"^forward: out has shape \(3,\) at a perturbed "
                                         r"point, \(2,\) at the point itself$"):
        check_vjp(forward, lambda dout, cache: 2 * dout, {"x": point})


# --- check_vjp's upstream gradient --------------------------------------------------------

def dense_backward_spy(seen):
    def backward(dout, cache):
        seen.append(dout.copy())
        return dense_backward(dout, cache)
    return backward


@pytest.mark.parametrize("seed", [0, 7])
def test_the_default_upstream_gradient_is_the_seeded_standard_normal_never_constant(seed):
    seen = []
    assert check_vjp(dense_forward, dense_backward_spy(seen), DENSE_INPUTS, seed=seed).ok
    (dout,) = seen
    out, _ = dense_forward(**DENSE_INPUTS)
    # As documented: np.random.default_rng(seed).standard_normal(out.shape).
    assert dout.shape == out.shape == (2, 4)
    assert np.array_equal(dout, np.random.default_rng(seed).standard_normal((2, 4)))
    assert np.unique(dout).size == dout.size           # no two entries alike, let alone all
    assert not np.array_equal(dout[0], dout[1])        # rows differ: row mix-ups are visible


def reversed_rows_backward(dout, cache):
    dx, _, dbias = dense_backward(dout, cache)
    return dx, dout[::-1].T @ cache.x, dbias          # batch rows of dout in the wrong order


def first_row_times_n_backward(dout, cache):
    dx, dweight, _ = dense_backward(dout, cache)
    return dx, dweight, len(dout) * dout[0]           # N * dout[0] instead of sum over N


BATCH_INPUTS = {"x": np.random.default_rng(3).standard_normal((5, 3)),
                "weight": np.random.default_rng(4).standard_normal((4, 3)),
                "bias": np.random.default_rng(5).standard_normal(4)}


@pytest.mark.parametrize("backward, wrong", [(reversed_rows_backward, "weight"),
                                             (first_row_times_n_backward, "bias")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_check_vjp_rejects_batch_rows_mixed_up_or_replaced(backward, wrong, seed):
    report = check_vjp(dense_forward, backward, BATCH_INPUTS, seed=seed)
    assert not report.ok
    assert {row.name: row.status for row in report.rows} == {
        "x": "ok", "weight": "ok", "bias": "ok", wrong: "mismatch"}, report


@pytest.mark.parametrize("backward", [reversed_rows_backward, first_row_times_n_backward])
def test_an_all_ones_upstream_gradient_would_hide_those_bugs(backward):
    # Why the default is random: with dout = ones, dout[::-1] == dout and N * dout[0] ==
    # sum over N of dout, so both bugs give exactly the right gradients.
    out, _ = dense_forward(**BATCH_INPUTS)
    assert check_vjp(dense_forward, backward, BATCH_INPUTS, dout=np.ones(out.shape)).ok


# --- a wrong gradient at a smooth point is a mismatch, not a kink ---------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("weight", [1e-5, 1e-7, 1e-9])
def test_a_wrong_small_gradient_is_a_mismatch_not_a_kink(method, weight):
    # w enters the O(1) loss with a small weight: its gradients are small next to the loss,
    # whose rounding noise (~eps |f| / h in the kink probes) exceeds KINK_RTOL * their scale.
    # A factor-2 error there is a mismatch: the function is a polynomial in w, kink-free.
    def f(p):
        x, w = p["x"], p["w"]
        return (np.sum(np.sin(x)) + weight * np.sum(w ** 2),
                {"x": np.cos(x), "w": 2 * (2 * weight * w)})

    report = ri.check_gradients(f, {"x": np.array([0.3, 1.0, 2.0]),
                                    "w": np.array([0.4, -0.5, 0.9, 0.1])}, method=method)
    assert [(row.status, row.nondifferentiable) for row in report.rows] == [
        ("ok", 0), ("mismatch", 0)], report


def test_rounding_noise_in_the_loss_does_not_pass_for_a_kink():
    # The loss is computed as (1e6 + q) - 1e6: real differences of it carry rounding noise of
    # ~eps * 1e6 / h ~ 4e-5, far above any fixed floor; the complex step is untouched by it.
    # A gradient wrong by 30% is not explained by what the noisy probes see.
    def f(p):
        w = p["w"]
        return (1e6 + np.sum(np.sin(w))) - 1e6, {"w": 1.3 * np.cos(w)}

    report = ri.check_gradients(f, {"w": np.array([0.4, -0.5, 0.9])}, method="complex")
    assert report.rows[0].status == "mismatch" and report.rows[0].nondifferentiable == 0, report


def test_check_vjp_seeds_the_directions_too():
    # dout fixed, so only the directions can make the two seeds' rows differ.
    out, _ = dense_forward(**BATCH_INPUTS)
    dout = np.random.default_rng(9).standard_normal(out.shape)
    reports = [check_vjp(dense_forward, dense_backward, BATCH_INPUTS, dout=dout, seed=seed,
                         mode="directional", directions=3) for seed in (0, 0, 1)]
    assert all(report.ok for report in reports)
    assert reports[0].to_dict() == reports[1].to_dict()
    assert reports[0].rows[0].analytic != reports[2].rows[0].analytic


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_loss_that_drops_the_imaginary_part_is_refused_not_passed(mode):
    """A real loss at complex points reads as a derivative of 0: a wrongly-0 gradient
    would pass. The complex step refuses such an f instead of judging it."""
    weights = np.array([0.5, -1.5, 2.0])

    def f(params):
        loss = np.sum(np.sin(params["w"]) * weights)
        wrong = {"w": np.zeros(3)}                  # the true gradient is cos(w) * weights
        return float(np.real(loss)), wrong

    params = {"w": np.array([0.1, 0.2, 0.3])}
    with pytest.raises(TypeError, match=r"^f: returned a real loss .* method='central'"):
        ri.check_gradients(f, params, method="complex", mode=mode)
    assert not ri.check_gradients(f, params, method="central", mode=mode).ok


def test_an_overflowing_model_is_reported_non_finite_not_raised():
    """refimpl's models raise FloatingPointError (naming the layer) instead of returning
    inf/NaN; the checker reports such a point as non-finite, as it does a NaN loss."""
    model = ri.MLP([4, 8, 3], activation="tanh", loss="cross_entropy")
    params = model.init(seed=0)
    params["fc1.weight"] = np.full((8, 4), 1e308)      # x @ W.T overflows: 4 terms of 1e308
    x, y = np.ones((2, 4)), np.array([0, 2])
    with pytest.raises(FloatingPointError, match="fc1"):
        model.loss_and_grads(params, x, y)
    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params)
    assert not report.ok
    assert {row.status for row in report.rows} == {"non-finite"}
    assert "fc1" in report.problems[0]


def test_an_overflow_at_a_perturbed_point_is_reported_non_finite():
    """Finite at the point, overflowing one central step away: the coordinate is
    non-finite, not a crash."""
    model = ri.nn.Sequential([ri.nn.Dense("fc", 1, 1)], loss=ri.nn.MSE())
    edge = float(np.sqrt(np.finfo(np.float64).max))
    params = {"fc.weight": np.array([[edge * (1 - 1e-12)]]), "fc.bias": np.zeros(1)}
    x, y = np.ones((1, 1)), np.zeros((1, 1))

    def f(p):
        return model.loss_and_grads(p, x, y)

    try:
        f(params)
    except FloatingPointError:
        pytest.skip("the point itself overflows on this platform")
    report = ri.check_gradients(f, params, method="central")
    assert not report.ok
    assert report.rows[0].status == "non-finite"


def test_assert_close_hides_its_own_frame_from_pytest():
    with pytest.raises(AssertionError, match=r"array: max \|error\| 5.000e-01 at \(1,\)") as caught:
        assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    shown = [str(entry.path) for entry in caught.traceback.filter(caught)]
    assert shown == [__file__]            # pytest shows this line, not the helper's raise
    assert str(caught.traceback[-1].path).endswith("vjp.py")
