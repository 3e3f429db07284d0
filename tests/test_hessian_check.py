"""Tests of refimpl/hessian/check.py: check_hvp and check_hvp_function, their report, the
comparison rule and its tolerances (each pinned from both sides: an error just outside fails,
one well inside passes, so loosening a default fails a test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import refimpl as ri
from refimpl.hessian import HVP_TOLERANCES, HVPReport, check_hvp, check_hvp_function, hvp


def quadratic(p):
    """``sum w^3 / 3 + 0 * z``: gradient ``(w^2, 0)``, Hessian ``diag(2 w)`` and 0."""
    return (p["w"] ** 3).sum() / 3, {"w": p["w"] ** 2, "z": 0 * p["z"]}


def quadratic_hvp(v, w):
    return {"w": 2 * w * v["w"], "z": np.zeros_like(v["z"])}


POINT = {"w": np.array([0.5, -1.5, 2.0]), "z": np.array([[1.0, 2.0]])}


def mlp_case():
    model = ri.MLP([3, 5, 2], activation="tanh")
    params = model.init(seed=0)
    rng = np.random.default_rng(0)
    return model, params, (rng.standard_normal((4, 3)), rng.integers(0, 2, size=4))


def test_a_correct_product_passes_with_one_row_per_direction_and_parameter():
    model, params, data = mlp_case()
    report = check_hvp(model, params, data, directions=2, seed=3)
    assert isinstance(report, HVPReport) and report.ok
    assert [(row.direction, row.name) for row in report.rows] == [
        (d, name) for d in range(2) for name in params]
    assert report.method == "complex" and report.seed == 3 and report.directions == 2
    assert report.tolerance == HVP_TOLERANCES["complex"]
    text = str(report)
    assert text.startswith("Hessian-vector product check: OK (method=complex")
    assert "fc1.weight" in text
    assert json.loads(json.dumps(report.to_dict()))["rows"][0]["status"] == "ok"
    assert check_hvp(model, params, data, method="central").ok


@pytest.mark.parametrize("method, outside, inside", [("complex", 1e-10, 1e-13),
                                                     ("central", 1e-5, 1e-9)])
def test_the_relative_tolerance_is_pinned_from_both_sides(method, outside, inside):
    """A product off by ``outside`` (relative) fails; one off by ``inside`` passes."""
    model, params, data = mlp_case()
    f = ri.hessian.gradient_function(model, data)

    def scaled(factor):
        return lambda v: {key: value * (1 + factor)
                          for key, value in hvp(model, params, data, v).items()}
    bad = check_hvp_function(f, scaled(outside), params, method=method)
    assert not bad.ok and {row.status for row in bad.rows} == {"mismatch"}
    assert check_hvp_function(f, scaled(inside), params, method=method).ok


def test_the_absolute_tolerance_is_pinned_from_both_sides():
    """A parameter whose H v is exactly 0 (scale 0): an error of 1e-12 fails, 1e-15 passes."""
    def off_by(error):
        return lambda v: {**quadratic_hvp(v, POINT["w"]), "z": np.full((1, 2), error)}
    report = check_hvp_function(quadratic, off_by(1e-12), POINT)
    assert [row.status for row in report.rows if row.name == "z"] == ["mismatch"] * 3
    assert check_hvp_function(quadratic, off_by(1e-15), POINT).ok


def test_given_directions_are_checked_instead_of_drawn_ones():
    v = {"w": np.array([1.0, 0.0, 0.0]), "z": np.zeros((1, 2))}
    report = check_hvp_function(quadratic, lambda d: quadratic_hvp(d, POINT["w"]), POINT,
                                v=[v, v])
    assert report.ok and report.directions == 2 and report.seed is None
    # the wrong product only along w[1]: a direction that never moves w[1] cannot see it
    def wrong(d):
        return {"w": 2 * POINT["w"] * d["w"] + np.array([0.0, 1.0, 0.0]) * d["w"][1],
                "z": np.zeros((1, 2))}
    assert check_hvp_function(quadratic, wrong, POINT, v=v).ok
    assert not check_hvp_function(quadratic, wrong, POINT).ok   # drawn directions see it


def relu_squared(p):
    """``sum relu(w)^2``: gradient ``2 relu(w)``, Hessian ``2 [w > 0]``: a kink at 0."""
    return (np.where(p["w"].real > 0, p["w"], 0) ** 2).sum(), {
        "w": 2 * np.where(p["w"].real > 0, p["w"], 0)}


def test_central_differences_across_a_kink_are_inconclusive_not_a_verdict():
    point = {"w": np.array([1e-7, 1.0])}          # w[0] within the central step of its kink

    def explicit(v):
        return {"w": 2 * (point["w"] > 0) * v["w"]}
    report = check_hvp_function(relu_squared, explicit, point, method="central",
                                v={"w": np.array([1.0, 1.0])})
    assert not report.ok and [row.status for row in report.rows] == ["inconclusive"]
    # the complex step does not move the mask: it agrees with the one-sided rule
    assert check_hvp_function(relu_squared, explicit, point,
                              v={"w": np.array([1.0, 1.0])}).ok
    # and a wrong product away from the kink is a mismatch, not inconclusive
    report = check_hvp_function(relu_squared, lambda v: {"w": 3 * v["w"]}, {"w": np.ones(2)},
                                method="central")
    assert {row.status for row in report.rows} == {"mismatch"}


def test_a_gradient_that_overflows_makes_the_rows_non_finite():
    def overflowing(p):
        if np.iscomplexobj(p["w"]):
            raise FloatingPointError("layer 'fc1' (Dense): output contains inf/NaN")
        return quadratic(p)
    report = check_hvp_function(overflowing, lambda v: quadratic_hvp(v, POINT["w"]), POINT,
                                directions=1)
    assert not report.ok and {row.status for row in report.rows} == {"non-finite"}
    assert "overflowed" in report.problems[0]
    nan_product = check_hvp_function(quadratic, lambda v: {"w": v["w"] * np.nan,
                                                           "z": v["z"]}, POINT, directions=1)
    assert not nan_product.ok and "not finite" in nan_product.problems[0]


def test_bad_arguments_are_errors_naming_them():
    good = lambda v: quadratic_hvp(v, POINT["w"])   # noqa: E731
    with pytest.raises(ValueError, match="method: expected one of"):
        check_hvp_function(quadratic, good, POINT, method="richardson")
    with pytest.raises(ValueError, match="directions: expected a positive int"):
        check_hvp_function(quadratic, good, POINT, directions=0)
    with pytest.raises(ValueError, match="seed"):
        check_hvp_function(quadratic, good, POINT, seed=-1)
    with pytest.raises(ValueError, match="rtol"):
        check_hvp_function(quadratic, good, POINT, rtol=float("nan"))
    with pytest.raises(TypeError, match="f: expected a callable"):
        check_hvp_function(None, good, POINT)
    with pytest.raises(TypeError, match="hvp_function: expected a callable"):
        check_hvp_function(quadratic, None, POINT)
    with pytest.raises(ValueError, match=r"v \(a direction: the keys of params\)"):
        check_hvp_function(quadratic, good, POINT, v={"w": np.ones(3)})
    with pytest.raises(ValueError, match=r"hvp_function\(v\) \(the keys of params\)"):
        check_hvp_function(quadratic, lambda v: {"w": v["w"]}, POINT)
    with pytest.raises(ValueError, match=r"hvp_function\(v\)\['z'\]: expected shape \(1, 2\)"):
        check_hvp_function(quadratic, lambda v: {"w": v["w"], "z": np.ones(2)}, POINT)
    with pytest.raises(TypeError, match=r"params\['w'\]: expected a real array"):
        check_hvp_function(quadratic, good, {"w": np.ones(3) * 1j})
