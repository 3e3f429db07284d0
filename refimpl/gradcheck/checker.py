"""check_gradients: any ``f(params) -> (loss, grads)`` against numerical derivatives, in full
(every coordinate) or directional (seeded random directions) mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .arguments import (
    GradFunction,
    Params,
    _check_grads,
    _check_options,
    _check_params,
    _complex_loss,
    _pair,
    _real_loss,
)
from .numerical import (
    KINK,
    STEPS,
    _central,
    _Evaluator,
    _nan_on_overflow,
    _near_kink,
    _numerical_coordinate,
)
from .report import GradcheckReport, ParameterRow, Tolerance, _non_finite_row, _unravel
from .safety import (
    NON_DETERMINISTIC,
    NOT_COMPLEX_SAFE,
    check_determinism,
    complex_safety,
    directional_derivative,
    full_mode_derivative,
    safety_directions,
)

__all__ = ["check_gradients"]


def check_gradients(
    f: GradFunction,
    params: Mapping[str, Any],
    *,
    method: str = "complex",
    mode: str = "full",
    names: Iterable[str] | None = None,
    directions: int = 8,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    loss_fn: Callable[[Params], Any] | None = None,
) -> GradcheckReport:
    """Compare the analytic gradients of ``f`` with numerical derivatives.

    The methods, the modes and the comparison rule are described in :mod:`refimpl.gradcheck`.

    Parameters
    ----------
    f : callable
        ``f(params) -> (loss, grads)``: a scalar loss and ``grads`` keyed and shaped like
        ``params``. For ``method="complex"`` it must accept complex128 parameters.
    params : dict of str to array_like
        The point, real arrays with at least one entry each (converted to float64; not
        modified).
    method : {"complex", "central", "richardson"}
        The numerical derivative.
    mode : {"full", "directional"}
        Every coordinate, or ``directions`` seeded Gaussian directions across all parameters.
    names : iterable of str, optional
        In full mode, check only these parameters (default: all).
    directions : int
        In directional mode, how many directions (a positive int; validated in every mode).
    seed : int
        The seed of the directions (a non-negative int): directional mode's, and those along
        which the complex step is cross-checked by real differences in either mode
        (:mod:`refimpl.gradcheck.safety`).
    rtol, atol : float, optional
        Override ``TOLERANCES[method]``; finite, non-negative numbers.
    loss_fn : callable, optional
        A cheaper ``loss_fn(params) -> loss`` for the numerical evaluations (default:
        ``f(params)[0]``).

    Returns
    -------
    refimpl.gradcheck.GradcheckReport
        One row per checked parameter (full mode) or per direction (directional mode);
        ``report.ok`` is True only when every row's status is ``"ok"``. Before anything is
        compared the loss is evaluated twice at the point (a loss that differs makes every
        row ``"non-deterministic"``); with the complex step, rows whose parameter real
        differences contradict are ``"not complex-safe"``
        (:mod:`refimpl.gradcheck.safety`).

    Raises
    ------
    TypeError, ValueError
        Naming the argument, before ``f`` is called, for a bad option or parameter; and as
        soon as ``f`` or ``loss_fn`` returns something other than a pair ``(scalar loss,
        grads keyed and shaped like params)`` / a scalar loss.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl.gradcheck import check_gradients
    >>> def f(p):
    ...     return (p["w"] ** 3).sum(), {"w": 3 * p["w"] ** 2}
    >>> check_gradients(f, {"w": np.array([0.5, -2.0])}).ok
    True
    """
    return _check(f, params, method=method, mode=mode, names=names, directions=directions,
                  seed=seed, rtol=rtol, atol=atol, loss_fn=loss_fn)


#: ``numerical(name, evaluator, grads, tolerance) -> array`` : the numerical derivatives of
#: every coordinate of one parameter (flat), computed some faster way than the coordinate
#: loop, or None to take the loop.
FullNumerical = Callable[[str, _Evaluator, Params, Tolerance], "np.ndarray | None"]


def _check(f: GradFunction, params: Mapping[str, Any], *, method: str, mode: str,
           names: Iterable[str] | None, directions: int, seed: int, rtol: float | None,
           atol: float | None, loss_fn: Callable[[Params], Any] | None,
           numerical: Callable[..., Any] | None = None) -> GradcheckReport:
    """:func:`check_gradients`; ``numerical`` (a :data:`FullNumerical`) replaces the coordinate
    loop's derivatives of a parameter in full mode (the comparison and the kink probes stay
    those of the loop, through ``loss_fn``)."""
    if not callable(f):
        raise TypeError(f"f: expected a callable f(params) -> (loss, grads), got {f!r:.80}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(params) -> loss or None, got "
                        f"{loss_fn!r:.80}")
    params = _check_params(params)
    names, directions, seed, tolerance = _check_options(method, mode, names, directions, seed,
                                                        rtol, atol, params)

    def failed(loss: float, problems: tuple[str, ...]) -> GradcheckReport:
        rows = tuple(_non_finite_row(name, params[name].shape) for name in names)
        return GradcheckReport(False, method, mode, STEPS[method], tolerance, loss, rows,
                               problems)

    try:
        result = f({name: value.copy() for name, value in params.items()})
    except FloatingPointError as error:
        # A model that refuses to return a non-finite value (refimpl's raise, naming the
        # layer) is at a non-finite point: reported as such, like a NaN loss.
        return failed(float("nan"), (f"the loss at the point is not finite: {error}",))
    loss, grads = _pair(result, "f", "f(params)", "(loss, grads)")
    loss_value = _real_loss(loss, "f")
    grads = _check_grads(grads, params)
    problems = _non_finite_problems(loss_value, grads)
    if problems:
        return failed(loss_value, problems)
    evaluator = _evaluator(f, loss_fn, params)
    f0, noise = check_determinism(evaluator)
    if noise is not None:
        rows = tuple(_unjudged_row(name, params[name].shape, NON_DETERMINISTIC)
                     for name in names) if mode == "full" else tuple(
            _unjudged_row(f"direction {k}", (sum(v.size for v in params.values()),),
                          NON_DETERMINISTIC) for k in range(directions))
        return GradcheckReport(False, method, mode, STEPS[method], tolerance, loss_value,
                               rows, (), (noise,))
    if mode == "full":
        derivatives = {name: _full_numerical(method, evaluator, params, grads, name, tolerance,
                                             numerical) for name in names}
        rows = [_full_row(evaluator, params, grads, name, tolerance, derivatives[name])
                for name in names]
        safety_support = [row.name for row in rows if row.status != "non-finite"]
        derivative = full_mode_derivative(derivatives, grads)
    else:
        rows = list(_directional_rows(method, evaluator, params, grads, directions, seed,
                                      tolerance))
        safety_support = list(params)
        derivative = directional_derivative(evaluator, grads)
    notes = []
    noisy = [row.name for row in rows if row.status == NON_DETERMINISTIC]
    if noisy:
        notes.append(f"{NON_DETERMINISTIC} on {', '.join(map(repr, noisy))}: two evaluations "
                     f"of the loss at the same point differed while a disagreeing coordinate "
                     f"was probed for a kink; a gradient check needs a function of the "
                     f"parameters")
    if method == "complex" and safety_support:
        flagged, safety_notes = complex_safety(
            evaluator, f0, safety_directions(params, safety_support, seed), derivative)
        notes += safety_notes
        rows = [_flag(row, flagged, mode) for row in rows]
    ok = all(row.status == "ok" for row in rows)
    return GradcheckReport(ok, method, mode, STEPS[method], tolerance, loss_value, tuple(rows),
                           (), tuple(notes))


def _unjudged_row(name: str, shape: tuple[int, ...], status: str) -> ParameterRow:
    """The row of a parameter (or direction) that was not compared, with its ``status``."""
    return dataclasses.replace(_non_finite_row(name, shape), status=status)


def _flag(row: ParameterRow, flagged: list[str], mode: str) -> ParameterRow:
    """``row`` marked not complex-safe when the cross-check flagged its parameter (in
    directional mode any flag: every direction moved every parameter)."""
    if row.status == "non-finite" or not flagged or (mode == "full" and row.name not in flagged):
        return row
    return dataclasses.replace(row, status=NOT_COMPLEX_SAFE)


def _non_finite_problems(loss: float, grads: Params) -> tuple[str, ...]:
    """What is not finite at the point itself: the loss, the analytic gradients."""
    problems = []
    if not np.isfinite(loss):
        problems.append(f"the loss at the point is not finite ({loss})")
    bad = [name for name, grad in grads.items() if not np.isfinite(grad).all()]
    if bad:
        problems.append(f"non-finite analytic gradient in {bad}")
    return tuple(problems)


def _evaluator(f: GradFunction, loss_fn: Callable[[Params], Any] | None,
               params: Params) -> _Evaluator:
    """The evaluator of the loss at perturbed points: ``loss_fn`` if given, else ``f``'s loss."""
    if loss_fn is None:
        return _Evaluator(_nan_on_overflow(
            lambda p: _pair(f(p), "f", "f(params)", "(loss, grads)")[0]), params, "f")
    return _Evaluator(_nan_on_overflow(loss_fn), params, "loss_fn")


def _full_numerical(method: str, evaluator: _Evaluator, params: Params, grads: Params,
                    name: str, tolerance: Tolerance,
                    fast: Callable[..., Any] | None = None) -> np.ndarray:
    """The numerical derivatives of every coordinate of one parameter (flat): from ``fast``
    (a :data:`FullNumerical`) if it supplies them, else from the coordinate loop."""
    numerical = None if fast is None else fast(name, evaluator, grads, tolerance)
    if numerical is None:
        numerical = _loop_numerical(method, evaluator, params, name)
    return numerical


def _full_row(evaluator: _Evaluator, params: Params, grads: Params, name: str,
              tolerance: Tolerance, numerical: np.ndarray) -> ParameterRow:
    """Compare every coordinate of one parameter with its ``numerical`` derivatives (flat);
    disagreements are probed for kinks (and for a loss that is not deterministic)."""
    point = params[name].reshape(-1)
    analytic = grads[name].reshape(-1)
    shape = params[name].shape
    if not np.isfinite(numerical).all():
        worst = int(np.flatnonzero(~np.isfinite(numerical))[0])
        return ParameterRow(name, shape, point.size, float("inf"), float("inf"), float("nan"),
                            _unravel(worst, shape), float(analytic[worst]),
                            float(numerical[worst]), "non-finite")
    error = np.abs(analytic - numerical)
    scale = float(max(np.max(np.abs(analytic), initial=0.0),
                      np.max(np.abs(numerical), initial=0.0)))
    limit = tolerance.atol + tolerance.rtol * scale
    failing = np.flatnonzero(error > limit)
    kinks = np.zeros(point.size, dtype=bool)
    noisy = False
    if failing.size:
        real_work = {key: value.copy() for key, value in params.items()}
        for index in failing:
            found = _near_kink(evaluator, real_work, name, int(index), point[index],
                               scale, tolerance.atol, float(error[index]))
            kinks[index] = found == KINK
            noisy = noisy or found == NON_DETERMINISTIC
    mismatched = failing[~kinks[failing]]
    # The statistics describe the coordinates that could be compared (kinks excluded).
    compared = np.where(kinks, 0.0, error)
    worst = int(np.argmax(compared)) if point.size else 0
    if noisy:
        status = NON_DETERMINISTIC
    elif mismatched.size:
        status = "mismatch"
    elif kinks.any():
        status = "non-differentiable"
    else:
        status = "ok"
    max_error = float(compared[worst]) if point.size else 0.0
    return ParameterRow(
        name, shape, point.size, max_error, max_error / scale if scale > 0 else
        (0.0 if max_error == 0 else float("inf")), scale, _unravel(worst, shape),
        float(analytic[worst]) if point.size else 0.0,
        float(numerical[worst]) if point.size else 0.0, status, int(kinks.sum()))



def _loop_numerical(method: str, evaluator: _Evaluator, params: Params,
                    name: str) -> np.ndarray:
    """The coordinate loop: every coordinate of ``params[name]`` perturbed in turn."""
    dtype = np.complex128 if method == "complex" else np.float64
    work = {key: value.astype(dtype) for key, value in params.items()}
    point = params[name].reshape(-1)
    return np.array([
        _numerical_coordinate(method, evaluator, work, name, index, point[index])
        for index in range(point.size)
    ])


def _directional_rows(method: str, evaluator: _Evaluator, params: Params, grads: Params,
                      directions: int, seed: int, tolerance: Tolerance) -> tuple[ParameterRow, ...]:
    """Compare ``<g, v>`` with the numerical directional derivative along seeded ``v``."""
    rng = np.random.default_rng(seed)
    total = sum(value.size for value in params.values())
    largest = max(float(np.max(np.abs(value), initial=0.0)) for value in params.values())
    rows = []
    for k in range(directions):
        direction = {name: rng.standard_normal(value.shape) for name, value in params.items()}
        analytic = float(sum(np.sum(grads[name] * direction[name]) for name in params))
        scale = float(sum(np.sum(np.abs(grads[name] * direction[name])) for name in params))
        v_max = max(float(np.max(np.abs(v), initial=0.0)) for v in direction.values())
        if method == "complex":
            h = STEPS["complex"]
            numerical = float(_complex_loss(evaluator.along(direction, 1j * h),
                                            evaluator.who).imag) / h
        else:
            # The step is relative to the parameter scale, divided by the largest direction
            # entry so that no coordinate moves by more than the per-coordinate step.
            h = STEPS[method] * max(1.0, largest) / max(v_max, 1e-300)
            def d(step: float, v: Params = direction) -> float:
                return _central(float(evaluator.along(v, step).real),
                                float(evaluator.along(v, -step).real), step)
            numerical = d(h) if method == "central" else (4 * d(h / 2) - d(h)) / 3
        error = abs(analytic - numerical)
        if not np.isfinite(numerical):
            status = "non-finite"
        elif error <= tolerance.atol + tolerance.rtol * scale:
            status = "ok"
        else:
            status = "mismatch"
        rel = error / scale if scale > 0 else (0.0 if error == 0 else float("inf"))
        rows.append(ParameterRow(f"direction {k}", (total,), 1, error, rel, scale, (k,),
                                 analytic, numerical, status))
    return tuple(rows)

