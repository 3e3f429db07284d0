"""The numerical oracle: check any ``f(params) -> (loss, grads)`` against numerical derivatives.

Methods (``method=``)
---------------------
``"complex"``
    Complex step, ``d_i = Im f(p + i h e_i) / h`` with ``h = 1e-20``. There is no subtraction,
    hence no cancellation: the result is exact to rounding (~1e-15 relative). Needs ``f`` to
    accept complex128 parameters (every refimpl forward pass does).
``"central"``
    ``d_i = (f(p + h_i e_i) - f(p - h_i e_i)) / (2 h_i)`` with ``h_i = eps^(1/3) max(1, |p_i|)``,
    the step balancing truncation (h^2) against rounding (eps / h): ~1e-10 absolute.
``"richardson"``
    Central differences at ``h`` and ``h/2`` extrapolated, ``(4 D(h/2) - D(h)) / 3``, which
    cancels the h^2 term: error O(h^4), with ``h_i = eps^(1/5) max(1, |p_i|)``.

Modes (``mode=``)
-----------------
``"full"``: every coordinate of every parameter (or of the parameters named in ``names``).
``"directional"``: ``directions`` seeded Gaussian directions ``v`` across *all* parameters;
compares ``<g, v>`` with the numerical directional derivative — O(k) evaluations whatever
the parameter count (the idea of HIPS autograd's ``check_grads``).

The comparison rule (all tolerances live in :data:`TOLERANCES`)
----------------------------------------------------------------
For one parameter with analytic gradient ``g`` and numerical gradient ``n`` (arrays)::

    scale = max(max_i |g_i|, max_i |n_i|)            # the parameter's largest gradient
    pass  iff  max_i |g_i - n_i|  <=  atol + rtol * scale

and the reported relative error is ``max_i |g_i - n_i| / scale``. Scaling by the parameter's
largest gradient, not by ``|g_i|``, keeps the relative error from blowing up where a single
gradient entry is ~0 (a quantity computed to absolute accuracy ~eps * scale). In directional
mode each direction ``v`` is one row with ``scale = sum_i |g_i v_i|`` (the size of the terms
before they cancel in the inner product).

Kinks and non-finite values
---------------------------
A coordinate that disagrees is examined with real differences: if the one-sided,
extrapolated derivatives from the left and from the right differ, or the central
derivative jumps between steps ``h`` and ``h/2``, the point is within one step of a kink and
is reported as ``"non-differentiable"``, not as a mismatch. A non-finite loss or gradient
(at ``p`` or at a perturbed point) is reported as ``"non-finite"``. ``ok`` is True only when
every checked coordinate agreed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._table import format_table
from ._validate import as_float_array

__all__ = ["check_gradients", "check_vjp", "assert_close", "GradcheckReport", "ParameterRow",
           "Tolerance", "TOLERANCES",
           "METHODS", "MODES"]

EPS = np.finfo(np.float64).eps


class Tolerance(NamedTuple):
    """``pass iff max|g - n| <= atol + rtol * scale`` (see the module docstring)."""

    rtol: float
    atol: float


#: Default tolerances per method: the one place they are set. Complex step: rounding only
#: (observed ~1e-15; 1e-12 leaves room for accumulation over large sums). Central: error
#: ~1e-10 absolute for O(1) losses; Richardson ~1e-12.
TOLERANCES: dict[str, Tolerance] = {
    "complex": Tolerance(rtol=1e-12, atol=1e-14),
    "central": Tolerance(rtol=1e-6, atol=1e-9),
    "richardson": Tolerance(rtol=1e-9, atol=1e-11),
}

#: Step per method, relative to max(1, |p_i|) for the real differences (absolute for complex).
STEPS: dict[str, float] = {
    "complex": 1e-20,
    "central": EPS ** (1 / 3),
    "richardson": EPS ** (1 / 5),
}

#: A disagreeing coordinate is called a kink when the left and right derivatives (or the
#: central ones at h and h/2) differ by more than this times the parameter's scale: smooth
#: functions give ~1e-10 there, a kink gives the jump in slope.
KINK_RTOL = 1e-6

METHODS = tuple(TOLERANCES)
MODES = ("full", "directional")

Params = dict[str, np.ndarray]
GradFunction = Callable[[Params], tuple[Any, Mapping[str, np.ndarray]]]


@dataclass(frozen=True)
class ParameterRow:
    """One parameter (full mode) or one direction (directional mode) of a report."""

    name: str
    shape: tuple[int, ...]
    checked: int                 # coordinates (or 1 direction) compared
    max_abs_error: float
    max_rel_error: float         # max_abs_error / scale
    scale: float
    worst_index: tuple[int, ...]
    analytic: float              # at the worst index
    numerical: float             # at the worst index
    status: str                  # "ok" | "mismatch" | "non-differentiable" | "non-finite"
    nondifferentiable: int = 0   # coordinates found within one step of a kink

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "checked": self.checked,
            "max_abs_error": _json_float(self.max_abs_error),
            "max_rel_error": _json_float(self.max_rel_error),
            "scale": _json_float(self.scale), "worst_index": list(self.worst_index),
            "analytic": _json_float(self.analytic), "numerical": _json_float(self.numerical),
            "status": self.status, "nondifferentiable": self.nondifferentiable,
        }


@dataclass(frozen=True)
class GradcheckReport:
    """Result of :func:`check_gradients`. ``ok`` is True only if every row's status is "ok"."""

    ok: bool
    method: str
    mode: str
    step: float
    tolerance: Tolerance
    loss: float
    rows: tuple[ParameterRow, ...]
    problems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite floats become strings "nan", "inf", "-inf")."""
        return {
            "ok": self.ok, "method": self.method, "mode": self.mode, "step": self.step,
            "rtol": self.tolerance.rtol, "atol": self.tolerance.atol,
            "loss": _json_float(self.loss), "problems": list(self.problems),
            "rows": [row.to_dict() for row in self.rows],
        }

    def __str__(self) -> str:
        header = (f"gradient check: {'OK' if self.ok else 'FAILED'} (method={self.method}, "
                  f"mode={self.mode}, step={self.step:.3g}, rtol={self.tolerance.rtol:g}, "
                  f"atol={self.tolerance.atol:g}, loss={self.loss:.17g})")
        table = format_table(("parameter", "shape", "max abs err", "max rel err", "worst index",
                              "analytic", "numerical", "status"), [(
            row.name, "x".join(map(str, row.shape)) or "()", f"{row.max_abs_error:.3e}",
            f"{row.max_rel_error:.3e}", str(row.worst_index), f"{row.analytic:.17g}",
            f"{row.numerical:.17g}",
            row.status + (f" ({row.nondifferentiable} kinks)" if row.nondifferentiable else ""),
        ) for row in self.rows])
        lines = [header, table] + [f"problem: {problem}" for problem in self.problems]
        return "\n".join(lines)


def _json_float(value: float) -> float | str:
    value = float(value)
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _real_loss(value: Any) -> float:
    return float(np.asarray(value).real)


def _imag_loss(value: Any) -> float:
    return float(np.asarray(value).imag)


def _check_params(params: Mapping[str, Any]) -> Params:
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params: expected a non-empty dict of arrays")
    return {name: np.array(as_float_array(value, f"params[{name!r}]", allow_complex=False))
            for name, value in params.items()}


def _check_grads(grads: Any, params: Params) -> Params:
    if not isinstance(grads, Mapping):
        raise TypeError(f"f: expected f(params) to return (loss, grads dict), got grads of type "
                        f"{type(grads).__name__}")
    if set(grads) != set(params):
        raise ValueError(f"f: grads keys {sorted(grads)} differ from params keys {sorted(params)}")
    checked = {}
    for name, value in params.items():
        grad = np.asarray(grads[name])
        if grad.shape != value.shape:
            raise ValueError(f"f: grads[{name!r}] has shape {grad.shape}, params[{name!r}] "
                             f"has {value.shape}")
        if grad.dtype.kind not in "fiuc":
            raise TypeError(f"f: grads[{name!r}] has non-numeric dtype {grad.dtype}")
        checked[name] = np.asarray(grad.real if grad.dtype.kind == "c" else grad, np.float64)
    return checked


class _Evaluator:
    """Evaluates the loss at perturbed parameters, one coordinate or one direction at a time.

    Keeps one working copy of the parameters and restores each perturbed entry after use,
    so a full check allocates nothing per coordinate.
    """

    def __init__(self, loss_fn: Callable[[Params], Any], params: Params):
        self.loss_fn = loss_fn
        self.params = params

    def complex_coordinate(self, work: Params, name: str, index: int, h: float) -> float:
        flat = work[name].reshape(-1)
        original = flat[index]
        flat[index] = original + 1j * h
        try:
            return _imag_loss(self.loss_fn(work)) / h
        finally:
            flat[index] = original

    def real_coordinate(self, work: Params, name: str, index: int, delta: float) -> float:
        flat = work[name].reshape(-1)
        original = flat[index]
        flat[index] = original + delta
        try:
            return _real_loss(self.loss_fn(work))
        finally:
            flat[index] = original

    def along(self, direction: Params, t: complex) -> Any:
        shifted = {name: value + t * direction[name] for name, value in self.params.items()}
        return self.loss_fn(shifted)


def _central(f_plus: float, f_minus: float, h: float) -> float:
    return (f_plus - f_minus) / (2 * h)


def _numerical_coordinate(method: str, evaluator: _Evaluator, work: Params, name: str,
                          index: int, value: float) -> float:
    if method == "complex":
        return evaluator.complex_coordinate(work, name, index, STEPS["complex"])
    h = STEPS[method] * max(1.0, abs(value))
    d_h = _central(evaluator.real_coordinate(work, name, index, h),
                   evaluator.real_coordinate(work, name, index, -h), h)
    if method == "central":
        return d_h
    d_half = _central(evaluator.real_coordinate(work, name, index, h / 2),
                      evaluator.real_coordinate(work, name, index, -h / 2), h / 2)
    return (4 * d_half - d_h) / 3


def _near_kink(evaluator: _Evaluator, work: Params, name: str, index: int, value: float,
               scale: float, atol: float) -> bool:
    """True when the loss is not smooth within one central step of the point."""
    h = STEPS["central"] * max(1.0, abs(value))
    f0 = evaluator.real_coordinate(work, name, index, 0.0)
    f_p, f_m = (evaluator.real_coordinate(work, name, index, s * h) for s in (1, -1))
    f_p2, f_m2 = (evaluator.real_coordinate(work, name, index, s * h / 2) for s in (1, -1))
    # One-sided differences extrapolated to O(h^2): from the right and from the left. They
    # agree (to ~1e-10) where f is smooth and differ by the jump in slope at a kink.
    right = 2 * (f_p2 - f0) / (h / 2) - (f_p - f0) / h
    left = 2 * (f0 - f_m2) / (h / 2) - (f0 - f_m) / h
    # Central differences at h and h/2: they jump when a kink lies between h/2 and h.
    jump = _central(f_p, f_m, h) - _central(f_p2, f_m2, h / 2)
    threshold = KINK_RTOL * scale + atol
    values = (f0, f_p, f_m, f_p2, f_m2)
    if not all(np.isfinite(values)):
        return False
    return abs(right - left) > threshold or abs(jump) > threshold


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

    - f: ``f(params) -> (loss, grads)`` with ``grads`` keyed like ``params``; for
      ``method="complex"`` it must accept complex128 parameters.
    - params: the point, a dict of real arrays (converted to float64; not modified).
    - method: "complex", "central" or "richardson"; mode: "full" or "directional".
    - names: in full mode, check only these parameters (default: all).
    - directions, seed: in directional mode, how many seeded Gaussian directions.
    - rtol, atol: override :data:`TOLERANCES` ``[method]``.
    - loss_fn: optional cheaper ``loss_fn(params) -> loss`` for the numerical evaluations
      (default: ``f(params)[0]``).
    """
    if method not in TOLERANCES:
        raise ValueError(f"method: unknown method {method!r}; expected one of {list(METHODS)}")
    if mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; expected one of {list(MODES)}")
    if not callable(f):
        raise TypeError(f"f: expected a callable f(params) -> (loss, grads), got {f!r}")
    params = _check_params(params)
    default = TOLERANCES[method]
    tolerance = Tolerance(default.rtol if rtol is None else float(rtol),
                          default.atol if atol is None else float(atol))
    if tolerance.rtol < 0 or tolerance.atol < 0:
        raise ValueError(f"rtol, atol: expected non-negative tolerances, got {tolerance}")
    if names is not None:
        if mode != "full":
            raise ValueError("names: only meaningful with mode='full'")
        names = list(names)
        unknown = [name for name in names if name not in params]
        if unknown:
            raise ValueError(f"names: unknown parameters {unknown}; params has {list(params)}")
    else:
        names = list(params)
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions: expected a positive int, got {directions!r}")

    loss, grads = f({name: value.copy() for name, value in params.items()})
    grads = _check_grads(grads, params)
    loss_value = _real_loss(loss)
    if loss_fn is None:
        def loss_fn(p: Params) -> Any:
            return f(p)[0]
    evaluator = _Evaluator(loss_fn, params)

    problems = []
    if not np.isfinite(loss_value):
        problems.append(f"the loss at the point is not finite ({loss_value})")
    bad = [name for name, grad in grads.items() if not np.isfinite(grad).all()]
    if bad:
        problems.append(f"non-finite analytic gradient in {bad}")
    if problems:
        rows = tuple(_non_finite_row(name, params[name].shape) for name in names)
        return GradcheckReport(False, method, mode, STEPS[method], tolerance, loss_value, rows,
                               tuple(problems))

    if mode == "full":
        rows = tuple(_full_row(method, evaluator, params, grads, name, tolerance)
                     for name in names)
    else:
        rows = _directional_rows(method, evaluator, params, grads, directions, seed, tolerance)
    ok = all(row.status == "ok" for row in rows)
    return GradcheckReport(ok, method, mode, STEPS[method], tolerance, loss_value, rows, ())


def _non_finite_row(name: str, shape: tuple[int, ...]) -> ParameterRow:
    nan = float("nan")
    return ParameterRow(name, shape, 0, nan, nan, nan, (), nan, nan, "non-finite")


def _full_row(method: str, evaluator: _Evaluator, params: Params, grads: Params, name: str,
              tolerance: Tolerance) -> ParameterRow:
    dtype = np.complex128 if method == "complex" else np.float64
    work = {key: value.astype(dtype) for key, value in params.items()}
    point = params[name].reshape(-1)
    analytic = grads[name].reshape(-1)
    numerical = np.array([
        _numerical_coordinate(method, evaluator, work, name, index, point[index])
        for index in range(point.size)
    ])
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
    if failing.size:
        real_work = {key: value.copy() for key, value in params.items()}
        for index in failing:
            kinks[index] = _near_kink(evaluator, real_work, name, int(index), point[index],
                                      scale, tolerance.atol)
    mismatched = failing[~kinks[failing]]
    # The statistics describe the coordinates that could be compared (kinks excluded).
    compared = np.where(kinks, 0.0, error)
    worst = int(np.argmax(compared)) if point.size else 0
    if mismatched.size:
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


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(flat_index, shape))


def _directional_rows(method: str, evaluator: _Evaluator, params: Params, grads: Params,
                      directions: int, seed: int, tolerance: Tolerance) -> tuple[ParameterRow, ...]:
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
            numerical = _imag_loss(evaluator.along(direction, 1j * h)) / h
        else:
            # The step is relative to the parameter scale, divided by the largest direction
            # entry so that no coordinate moves by more than the per-coordinate step.
            h = STEPS[method] * max(1.0, largest) / max(v_max, 1e-300)
            def d(step: float, v: Params = direction) -> float:
                return _central(_real_loss(evaluator.along(v, step)),
                                _real_loss(evaluator.along(v, -step)), step)
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


def check_vjp(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[Any, Any], Any],
    inputs: Mapping[str, Any],
    *,
    static: Mapping[str, Any] | None = None,
    dout: Any = None,
    seed: int = 0,
    method: str = "complex",
    **options: Any,
) -> GradcheckReport:
    """Check one operation's backward pass (a vector-Jacobian product) numerically.

    - forward: ``forward(**inputs, **static) -> (out, cache)``
    - backward: ``backward(dout, cache) ->`` the gradients of the inputs, in the order of
      ``inputs`` (a tuple; a single array when there is one input)
    - inputs: the differentiable arguments by name (real arrays)
    - static: non-differentiable keyword arguments (labels, strides, ...)
    - dout: the upstream gradient; default a seeded standard-normal array of ``out``'s
      shape — never all-ones, which hides transposes and mixed-up rows.

    The scalar checked is ``<forward(inputs), dout>``, whose gradient is exactly what
    ``backward(dout, ...)`` returns. ``options`` go to :func:`check_gradients`.
    """
    static = dict(static or {})
    inputs = _check_params(inputs)
    out, cache = forward(**inputs, **static)
    out = np.asarray(out)
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(out.shape)
    dout = as_float_array(dout, "dout", allow_complex=False)
    if dout.shape != out.shape:
        raise ValueError(f"dout: expected shape {out.shape}, got {dout.shape}")
    analytic = backward(dout, cache)
    if len(inputs) == 1 and not isinstance(analytic, tuple):
        analytic = (analytic,)
    if not isinstance(analytic, tuple) or len(analytic) < len(inputs):
        raise ValueError(f"backward: expected {len(inputs)} gradients, got {analytic!r:.200}")
    grads = dict(zip(inputs, analytic, strict=False))  # extra None (no bias) ignored

    def scalar(p: Params) -> Any:
        return (np.asarray(forward(**p, **static)[0]) * dout).sum()

    return check_gradients(lambda p: (scalar(p), grads), inputs, method=method, loss_fn=scalar,
                           **options)


def assert_close(actual: Any, expected: Any, tolerance: Tolerance = TOLERANCES["complex"],
                 name: str = "array") -> None:
    """Assert two arrays agree by this module's comparison rule, for results that should be
    equal up to rounding (a different summation order, complex vs real BLAS kernels):

        max_i |actual_i - expected_i|  <=  atol + rtol * max(max|actual|, max|expected|)

    with the complex-step tolerances by default (rounding-level agreement). Shapes must be
    equal exactly. Raises ``AssertionError`` naming the worst index and both values.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if actual.size == 0:
        return
    error = np.abs(actual - expected)
    scale = float(max(np.max(np.abs(actual)), np.max(np.abs(expected))))
    limit = tolerance.atol + tolerance.rtol * scale
    worst = int(np.argmax(error))
    if not error.flat[worst] <= limit:
        index = _unravel(worst, actual.shape)
        raise AssertionError(
            f"{name}: max |error| {error.flat[worst]:.3e} at {index} exceeds "
            f"{tolerance.atol:g} + {tolerance.rtol:g} * {scale:.3e}: "
            f"actual {actual.flat[worst].item()!r}, expected {expected.flat[worst].item()!r}")
