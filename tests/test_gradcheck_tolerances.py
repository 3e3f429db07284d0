"""The default tolerances of refimpl.gradcheck (gradcheck/report.py), pinned from both sides.

For every method and both modes, an analytic gradient wrong by ten times the documented
tolerance is rejected and one wrong by a tenth of it is accepted. The planted errors are
written here as literals, never read from ``TOLERANCES``: loosening a default (complex rtol
1e-12 -> 1e-6, central 1e-6 -> 1e-4, ...) or the directional scale must turn a test red.

The documented defaults being pinned (the package docstring of refimpl.gradcheck):

    method       rtol    atol
    complex      1e-12   1e-14
    central      1e-6    1e-9
    richardson   1e-9    1e-11

    pass iff max_i |g_i - n_i| <= atol + rtol * scale, with scale = max(max|g|, max|n|) per
    parameter (full mode) and scale = sum_i |g_i v_i| per direction v (directional mode).

The test function is smooth with an exactly known O(1) gradient, so the numerical
derivative is accurate far below each tolerance (``test_the_numerical_derivative_is_far_
more_accurate_than_the_planted_errors`` checks that), and the planted error is what decides.
``pytest.approx`` is given ``abs=0`` throughout: its default absolute tolerance, 1e-12, would
swallow the differences pinned here.
"""

from __future__ import annotations

import numpy as np
import pytest

import refimpl as ri

X = np.array([[0.3, -1.2, 2.0], [0.9, -0.4, 1.4]])   # |cos x| in [0.36, 0.96]
Z = np.array([0.5, -0.7, 1.1, 0.2])                   # exp(z/2)/2 in [0.35, 0.87]
POINT = {"x": X, "z": Z}


def smooth(p):
    """``sum sin(x) + sum exp(z/2)`` and its exact gradient (complex-step safe)."""
    x, z = p["x"], p["z"]
    return np.sum(np.sin(x)) + np.sum(np.exp(z / 2)), {"x": np.cos(x), "z": np.exp(z / 2) / 2}


def square_of_w(p):
    """``sum w^2`` at w = 0: the gradient is exactly zero and so is every numerical
    derivative (complex: Im (i h)^2 = 0; differences: (+h)^2 and (-h)^2 are the same float),
    so an analytic value ``a`` there is judged by atol alone."""
    return np.sum(p["w"] ** 2), {"w": 2 * p["w"]}


# Relative errors planted in the analytic gradient: (rejected = 10 x rtol, accepted = rtol / 10).
RELATIVE = {
    "complex": (1e-11, 1e-13),      # rtol 1e-12
    "central": (1e-5, 1e-7),        # rtol 1e-6
    "richardson": (1e-8, 1e-10),    # rtol 1e-9
}
# Absolute errors planted where the gradient is exactly zero: (10 x atol, atol / 10).
ABSOLUTE = {
    "complex": (1e-13, 1e-15),      # atol 1e-14
    "central": (1e-8, 1e-10),       # atol 1e-9
    "richardson": (1e-10, 1e-12),   # atol 1e-11
}
# Three times rtol: rejected by the documented directional scale sum_i |g_i v_i|, accepted by
# any scale 10x looser (3 < 10), so it separates the two.
THREE_RTOL = {"complex": 3e-12, "central": 3e-6, "richardson": 3e-9}

METHODS = ["complex", "central", "richardson"]


def scaled(grads, factor):
    return {name: factor * value for name, value in grads.items()}


# --- the numerical derivative is not what decides ----------------------------------------

@pytest.mark.parametrize("mode", ["full", "directional"])
@pytest.mark.parametrize("method, bound", [("complex", 1e-14), ("central", 1e-9),
                                           ("richardson", 1e-11)])
def test_the_numerical_derivative_is_far_more_accurate_than_the_planted_errors(method, bound,
                                                                                mode):
    # Each bound is >= 10x below the smallest relative error planted for that method (the
    # accepted one, itself rtol / 10), and >= 5x above what was measured on this function
    # (max relative error 1.2e-16 complex, 5.8e-11 central, 1.7e-12 Richardson).
    report = ri.check_gradients(smooth, POINT, method=method, mode=mode)
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= bound, report
    zero = ri.check_gradients(square_of_w, {"w": np.zeros(10)}, method=method, mode=mode)
    assert zero.ok and all(row.numerical == 0.0 and row.max_abs_error == 0.0
                           for row in zero.rows), zero


# --- full mode -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_full_mode_rejects_ten_times_rtol_and_accepts_a_tenth(method):
    rejected, accepted = RELATIVE[method]

    def planted(factor):
        def f(p):
            loss, grads = smooth(p)
            return loss, scaled(grads, factor)
        return f

    report = ri.check_gradients(planted(1 + rejected), POINT, method=method)
    assert [row.status for row in report.rows] == ["mismatch", "mismatch"], report
    # error / scale = rejected / (1 + rejected): the reported figure is the planted one.
    for row in report.rows:
        assert row.max_rel_error == pytest.approx(rejected, rel=1e-2, abs=0)
    report = ri.check_gradients(planted(1 + accepted), POINT, method=method)
    assert report.ok, report


@pytest.mark.parametrize("method", METHODS)
def test_full_mode_rejects_ten_times_atol_and_accepts_a_tenth_where_the_gradient_is_zero(
        method):
    rejected, accepted = ABSOLUTE[method]

    def planted(a):
        def f(p):
            loss, grads = smooth(p)
            w_loss, w_grads = square_of_w(p)
            w_grad = w_grads["w"].real.copy()
            w_grad[1] += a
            return loss + w_loss, {**grads, "w": w_grad}
        return f

    point = {**POINT, "w": np.zeros(3)}
    report = ri.check_gradients(planted(rejected), point, method=method)
    assert [row.status for row in report.rows] == ["ok", "ok", "mismatch"], report
    assert report.rows[2].max_abs_error == rejected and report.rows[2].worst_index == (1,)
    report = ri.check_gradients(planted(accepted), point, method=method)
    assert report.ok, report


# --- directional mode ------------------------------------------------------------------------

def flat(tree, names):
    return np.concatenate([np.asarray(tree[name]).ravel() for name in names])


def directions_used(f, point, method):
    """The directions check_gradients evaluates along, in the order it draws them, recorded
    from the points ``point + t v`` it asks ``loss_fn`` for. With the complex step
    ``t = 1e-20 i`` (the documented step), so ``v`` itself is recovered; with real
    differences only its direction is, returned as a unit vector."""
    names = list(point)
    seen = []

    def loss_fn(p):
        shift = flat(p, names) - flat(point, names)
        # The point itself (the determinism check) and, for the complex step, the real
        # differences of its cross-check move nothing the recovered v could show.
        moved = shift.imag if method == "complex" else shift.real
        if not np.any(moved):
            return f(p)[0]
        v = moved / 1e-20 if method == "complex" else moved / np.linalg.norm(moved)
        if not any(np.allclose(v / np.linalg.norm(v), abs_sign * u / np.linalg.norm(u),
                               rtol=0, atol=1e-6) for u in seen for abs_sign in (1, -1)):
            seen.append(v)
        return f(p)[0]

    report = ri.check_gradients(f, point, method=method, mode="directional", loss_fn=loss_fn)
    assert report.ok, report
    assert len(seen) == len(report.rows) == 8
    return np.array(seen)


def plant_along_directions(f, point, method, sizes):
    """An analytic gradient ``g + e`` with ``|<e, v>| = sizes(g, v)`` along every direction
    ``v`` the checker uses (8 directions, 10 coordinates: the linear system has exact
    solutions). The directions are the complex step's (seeded: the same for every method,
    which is checked here), so ``v`` has its true length for the absolute sizes."""
    names = list(point)
    directions = directions_used(f, point, "complex")
    if method != "complex":
        unit = directions_used(f, point, method)
        cosines = np.sum(unit * directions, axis=1) / np.linalg.norm(directions, axis=1)
        assert np.allclose(np.abs(cosines), 1, rtol=0, atol=1e-9)
    _, grads = f(point)
    g = flat(grads, names)
    targets = np.array([sizes(g, v) for v in directions])
    e, *_ = np.linalg.lstsq(directions, targets, rcond=None)
    assert np.allclose(directions @ e, targets, rtol=1e-12, atol=0)
    planted, start = {}, 0
    for name in names:
        size = point[name].size
        planted[name] = grads[name] + e[start:start + size].reshape(point[name].shape)
        start += size

    def f_planted(p):
        return f(p)[0], planted
    return f_planted, directions


def documented_scale(g, v):
    return np.sum(np.abs(g * v))


@pytest.mark.parametrize("method", METHODS)
def test_directional_mode_rejects_ten_times_rtol_and_accepts_a_tenth(method):
    rejected, accepted = RELATIVE[method]
    f_bad, _ = plant_along_directions(smooth, POINT, method,
                                      lambda g, v: rejected * documented_scale(g, v))
    report = ri.check_gradients(f_bad, POINT, method=method, mode="directional")
    assert {row.status for row in report.rows} == {"mismatch"}, report
    f_good, _ = plant_along_directions(smooth, POINT, method,
                                       lambda g, v: accepted * documented_scale(g, v))
    report = ri.check_gradients(f_good, POINT, method=method, mode="directional")
    assert report.ok, report


@pytest.mark.parametrize("method", METHODS)
def test_directional_mode_rejects_ten_times_atol_and_accepts_a_tenth_where_the_gradient_is_zero(
        method):
    rejected, accepted = ABSOLUTE[method]
    point = {"w": np.zeros(10)}
    f_bad, _ = plant_along_directions(square_of_w, point, method, lambda g, v: rejected)
    report = ri.check_gradients(f_bad, point, method=method, mode="directional")
    assert {row.status for row in report.rows} == {"mismatch"}, report
    assert [row.max_abs_error for row in report.rows] == pytest.approx([rejected] * 8,
                                                                        rel=1e-6, abs=0)
    f_good, _ = plant_along_directions(square_of_w, point, method, lambda g, v: accepted)
    report = ri.check_gradients(f_good, point, method=method, mode="directional")
    assert report.ok, report


@pytest.mark.parametrize("method", METHODS)
def test_directional_scale_is_the_sum_of_the_terms_of_the_inner_product(method):
    # An error of 3 rtol * sum_i |g_i v_i| along every direction: the documented scale
    # rejects it (3 > 1); a scale 10x looser (or sum_i |g_i| |v_i|, ||g|| ||v||, ... when
    # they are >= 3x larger) would accept it. The reported scale is the documented one.
    three_rtol = THREE_RTOL[method]
    f_bad, _ = plant_along_directions(smooth, POINT, method,
                                      lambda g, v: three_rtol * documented_scale(g, v))
    report = ri.check_gradients(f_bad, POINT, method=method, mode="directional")
    assert {row.status for row in report.rows} == {"mismatch"}, report
    # error / scale is the planted 3 rtol only if the scale is sum_i |g_i v_i|.
    assert [row.max_rel_error for row in report.rows] == pytest.approx([three_rtol] * 8,
                                                                        rel=1e-2, abs=0)
