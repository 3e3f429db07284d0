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

with the defaults of :data:`TOLERANCES` (each pinned by a test from both sides)::

    method       rtol    atol
    complex      1e-12   1e-14
    central      1e-6    1e-9
    richardson   1e-9    1e-11

and the reported relative error is ``max_i |g_i - n_i| / scale``. Scaling by the parameter's
largest gradient, not by ``|g_i|``, keeps the relative error from blowing up where a single
gradient entry is ~0 (a quantity computed to absolute accuracy ~eps * scale). In directional
mode each direction ``v`` is one row with ``scale = sum_i |g_i v_i|`` (the size of the terms
before they cancel in the inner product).

Kinks and non-finite values
---------------------------
A coordinate that disagrees is examined with real differences: if the one-sided,
extrapolated derivatives from the left and from the right differ, or the central
derivative jumps between steps ``h`` and ``h/2`` (by more than rounding can explain), and
that slope jump is large enough to explain the disagreement, the point is within one step of
a kink and is reported as ``"non-differentiable"``, not as a mismatch. A wrong gradient at a
smooth point stays a mismatch however small the parameter's gradients are. A non-finite
loss or gradient (at ``p`` or at a perturbed point) is reported as ``"non-finite"``. ``ok``
is True only when every checked coordinate agreed.

Bad arguments are errors, never a verdict
-----------------------------------------
Everything is checked before ``f`` is first called: a tolerance must be a finite,
non-negative number (with a NaN limit every test ``error > limit`` is False, so nothing
could fail; ``inf`` accepts anything), ``seed`` a non-negative int, ``directions`` a
positive int (NumPy integers accepted, ``bool`` and ``float`` refused), every parameter a
finite real array with at least one entry. Then ``f(params)`` must return a pair
``(loss, grads)`` with a scalar loss (shape ``()``; an array of shape ``(1,)`` or ``(N,)``
is refused, not reduced) and grads with exactly the keys and shapes of ``params``, and every
loss evaluated at a perturbed point must be a scalar too. Each violation is a ``TypeError``
or ``ValueError`` naming the argument (``f``, ``loss_fn``, ``forward``, ``backward``,
``rtol``, ...) and saying what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._table import format_table
from ._validate import as_float_array, check_int, check_seed, check_tolerance

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

#: A kink at distance d < h from the point, whose slope jumps by J, moves the central
#: derivative by J (h - d) / (2h) and shows in the probes of :func:`_near_kink` (built on the
#: same step h) as max(|right - left|, |jump|) >= J (h - d) / (2.5 h): a kink explains at
#: most 2.5x what the probes see. A disagreement more than this many times larger is not a
#: kink's doing and stays a mismatch. (Richardson's longer step reaches kinks the probes
#: cannot see; those disagreements are mismatches too: a fail, never a pass.)
KINK_EXPLAINS = 10

#: Rounding floor of the kink probes, in units of eps * max|f| / h: each loss value carries
#: a rounding error of a few eps * |f|, and the probes combine five of them with weights
#: summing to 16 / h (right - left). Below this floor a "jump" is rounding noise, however
#: small the parameter's own gradient scale is.
KINK_ROUNDING = 64

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


def _scalar_loss(value: Any, who: str) -> np.ndarray:
    """The loss returned by ``who`` as a 0-d numeric array, or a clear error.

    A loss of shape (1,) or (N,) is refused rather than reduced: summing or taking the first
    entry would check a different function from the one the caller meant.
    """
    array = np.asarray(value)
    if array.dtype.kind not in "fiuc":
        raise TypeError(f"{who}: expected the loss to be a real (or complex) scalar, got "
                        f"{type(value).__name__} {value!r:.80}")
    if array.shape != ():
        raise ValueError(f"{who}: expected the loss to be a scalar (shape ()), got an array "
                         f"of shape {array.shape}")
    return array


def _real_loss(value: Any, who: str) -> float:
    return float(_scalar_loss(value, who).real)


def _imag_loss(value: Any, who: str) -> float:
    return float(_complex_loss(value, who).imag)


def _complex_loss(value: Any, who: str) -> np.ndarray:
    """The loss at a complex point, which must itself be complex.

    A real loss there means ``who`` dropped the imaginary part (``float()``, ``np.real``,
    ``abs``): the complex step would then read a derivative of exactly 0 and pass an analytic
    gradient that is wrongly 0. That is refused, never judged.
    """
    array = _scalar_loss(value, who)
    if array.dtype.kind != "c":
        raise TypeError(f"{who}: returned a real loss (dtype {array.dtype}) at complex "
                        f"parameters, so the complex step cannot see its derivative (an "
                        f"imaginary part was dropped: float(), np.real, abs, ...); make the "
                        f"forward pass complex-safe or use method='central'")
    return array


def _pair(result: Any, who: str, call: str, names: str) -> tuple[Any, Any]:
    """Unpack the 2-tuple ``result`` of ``call``, or raise naming ``who``."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        described = (f"a {type(result).__name__} of length {len(result)}"
                     if isinstance(result, (tuple, list)) else
                     f"{type(result).__name__} {result!r:.80}")
        raise TypeError(f"{who}: expected {call} to return a pair {names}, got {described}")
    return result[0], result[1]


def _loss_of_f(f: GradFunction, params: Params) -> Any:
    return _pair(f(params), "f", "f(params)", "(loss, grads)")[0]


def _check_params(params: Mapping[str, Any], argument: str = "params") -> Params:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"{argument}: expected a non-empty dict of arrays, got "
                        f"{type(params).__name__} {params!r:.80}")
    checked = {}
    for name, value in params.items():
        label = f"{argument}[{name!r}]"
        array = np.array(as_float_array(value, label, allow_complex=False))
        if array.size == 0:
            raise ValueError(f"{label}: expected an array with at least one entry, got shape "
                             f"{array.shape}; a parameter without entries has no gradient "
                             f"to check")
        checked[name] = array
    return checked


def _check_grads(grads: Any, params: Params, who: str = "f") -> Params:
    if not isinstance(grads, Mapping):
        raise TypeError(f"{who}: expected a dict of gradients keyed like the parameters, got "
                        f"{type(grads).__name__} {grads!r:.80}")
    missing = [name for name in params if name not in grads]
    extra = [name for name in grads if name not in params]
    if missing or extra:
        raise ValueError(f"{who}: grads must have exactly the keys of params {list(params)}; "
                         f"missing {missing}, extra {extra}")
    checked = {}
    for name, value in params.items():
        grad = np.asarray(grads[name])
        if grad.dtype.kind not in "fiuc":
            raise TypeError(f"{who}: grads[{name!r}] is not a numeric array (got "
                            f"{type(grads[name]).__name__} of dtype {grad.dtype}); expected "
                            f"shape {value.shape}")
        if grad.shape != value.shape:
            raise ValueError(f"{who}: grads[{name!r}] has shape {grad.shape}, params[{name!r}] "
                             f"has {value.shape}")
        checked[name] = np.asarray(grad.real if grad.dtype.kind == "c" else grad, np.float64)
    return checked


def _check_options(method: Any, mode: Any, names: Any, directions: Any, seed: Any,
                   rtol: Any, atol: Any, params: Params) -> tuple[list[str], int, int, Tolerance]:
    """Validate the options shared by :func:`check_gradients` and :func:`check_vjp`."""
    if not isinstance(method, str) or method not in TOLERANCES:
        raise ValueError(f"method: unknown method {method!r}; expected one of {list(METHODS)}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; expected one of {list(MODES)}")
    default = TOLERANCES[method]
    tolerance = Tolerance(default.rtol if rtol is None else check_tolerance(rtol, "rtol"),
                          default.atol if atol is None else check_tolerance(atol, "atol"))
    seed = check_seed(seed, "seed")
    directions = check_int(directions, "directions", minimum=1)
    if names is None:
        return list(params), directions, seed, tolerance
    if mode != "full":
        raise ValueError("names: only meaningful with mode='full'")
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"names: expected an iterable of parameter names, got "
                        f"{type(names).__name__} {names!r}")
    names = list(names)
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(f"names: unknown parameters {unknown}; params has {list(params)}")
    return names, directions, seed, tolerance


class _Evaluator:
    """Evaluates the loss at perturbed parameters, one coordinate or one direction at a time.

    Keeps one working copy of the parameters and restores each perturbed entry after use,
    so a full check allocates nothing per coordinate.
    """

    def __init__(self, loss_fn: Callable[[Params], Any], params: Params, who: str):
        self.loss_fn = loss_fn
        self.params = params
        self.who = who  # the argument named in errors: "f" or "loss_fn"

    def complex_coordinate(self, work: Params, name: str, index: int, h: float) -> float:
        flat = work[name].reshape(-1)
        original = flat[index]
        flat[index] = original + 1j * h
        try:
            return _imag_loss(self.loss_fn(work), self.who) / h
        finally:
            flat[index] = original

    def real_coordinate(self, work: Params, name: str, index: int, delta: float) -> float:
        flat = work[name].reshape(-1)
        original = flat[index]
        flat[index] = original + delta
        try:
            return _real_loss(self.loss_fn(work), self.who)
        finally:
            flat[index] = original

    def along(self, direction: Params, t: complex) -> np.ndarray:
        shifted = {name: value + t * direction[name] for name, value in self.params.items()}
        return _scalar_loss(self.loss_fn(shifted), self.who)


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
               scale: float, atol: float, error: float) -> bool:
    """True when the loss is not smooth within one central step of the point and that
    explains the disagreement ``error`` = |analytic - numerical| at the coordinate."""
    h = STEPS["central"] * max(1.0, abs(value))
    f0 = evaluator.real_coordinate(work, name, index, 0.0)
    f_p, f_m = (evaluator.real_coordinate(work, name, index, s * h) for s in (1, -1))
    f_p2, f_m2 = (evaluator.real_coordinate(work, name, index, s * h / 2) for s in (1, -1))
    values = (f0, f_p, f_m, f_p2, f_m2)
    if not all(np.isfinite(values)):
        return False
    # One-sided differences extrapolated to O(h^2): from the right and from the left. They
    # agree (to rounding) where f is smooth and differ by the jump in slope at a kink.
    right = 2 * (f_p2 - f0) / (h / 2) - (f_p - f0) / h
    left = 2 * (f0 - f_m2) / (h / 2) - (f0 - f_m) / h
    # Central differences at h and h/2: they jump when a kink lies between h/2 and h.
    jump = _central(f_p, f_m, h) - _central(f_p2, f_m2, h / 2)
    # The rounding floor matters where the parameter's gradients are small next to the loss:
    # there KINK_RTOL * scale + atol alone would call rounding noise a kink.
    rounding = KINK_ROUNDING * EPS * max(abs(v) for v in values) / h
    threshold = KINK_RTOL * scale + atol + rounding
    seen = max(abs(right - left), abs(jump))
    return seen > threshold and error <= KINK_EXPLAINS * seen


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
    - directions, seed: in directional mode, how many seeded Gaussian directions (a
      positive int) and their seed (a non-negative int); both are validated in every mode.
    - rtol, atol: override :data:`TOLERANCES` ``[method]``; finite, non-negative numbers.
    - loss_fn: optional cheaper ``loss_fn(params) -> loss`` for the numerical evaluations
      (default: ``f(params)[0]``).

    Raises ``TypeError`` / ``ValueError`` naming the argument, before ``f`` is called, for a
    bad option or parameter (see the module docstring), and as soon as ``f`` or ``loss_fn``
    returns something other than a pair ``(scalar loss, grads keyed and shaped like
    params)`` / a scalar loss.
    """
    if not callable(f):
        raise TypeError(f"f: expected a callable f(params) -> (loss, grads), got {f!r:.80}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(params) -> loss or None, got "
                        f"{loss_fn!r:.80}")
    params = _check_params(params)
    names, directions, seed, tolerance = _check_options(method, mode, names, directions, seed,
                                                        rtol, atol, params)

    try:
        result = f({name: value.copy() for name, value in params.items()})
    except FloatingPointError as error:
        # A model that refuses to return a non-finite value (refimpl's raise, naming the
        # layer) is at a non-finite point: reported as such, like a NaN loss.
        rows = tuple(_non_finite_row(name, params[name].shape) for name in names)
        return GradcheckReport(False, method, mode, STEPS[method], tolerance, float("nan"),
                               rows, (f"the loss at the point is not finite: {error}",))
    loss, grads = _pair(result, "f", "f(params)", "(loss, grads)")
    loss_value = _real_loss(loss, "f")
    grads = _check_grads(grads, params)
    if loss_fn is None:
        evaluator = _Evaluator(_nan_on_overflow(lambda p: _loss_of_f(f, p)), params, "f")
    else:
        evaluator = _Evaluator(_nan_on_overflow(loss_fn), params, "loss_fn")

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


def _nan_on_overflow(loss_fn: Callable[[Params], Any]) -> Callable[[Params], Any]:
    """``loss_fn`` with a ``FloatingPointError`` (refimpl's models raise one instead of
    returning inf/NaN) read as a NaN loss, so that a perturbed point past an overflow is
    reported as ``"non-finite"`` like any other non-finite evaluation."""
    def evaluate(params: Params) -> Any:
        try:
            return loss_fn(params)
        except FloatingPointError:
            return complex(float("nan"), float("nan"))
    return evaluate


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
                                      scale, tolerance.atol, float(error[index]))
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


def check_vjp(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[Any, Any], Any],
    inputs: Mapping[str, Any],
    *,
    static: Mapping[str, Any] | None = None,
    dout: Any = None,
    seed: int = 0,
    method: str = "complex",
    mode: str = "full",
    names: Iterable[str] | None = None,
    directions: int = 8,
    rtol: float | None = None,
    atol: float | None = None,
) -> GradcheckReport:
    """Check one operation's backward pass (a vector-Jacobian product) numerically.

    - forward: ``forward(**inputs, **static) -> (out, cache)``
    - backward: ``backward(dout, cache) ->`` the gradients of the inputs, in the order of
      ``inputs`` (a tuple; a single array when there is one input)
    - inputs: the differentiable arguments by name (real arrays)
    - static: non-differentiable keyword arguments (labels, strides, ...)
    - dout: the upstream gradient; default ``np.random.default_rng(seed).standard_normal(
      out.shape)`` — never all-ones, which hides mixed-up batch rows (``dout[::-1]``) and
      sums replaced by ``N * dout[0]``.
    - seed: a non-negative int; seeds the default ``dout`` and, in directional mode, the
      directions.
    - method, mode, names, directions, rtol, atol: as in :func:`check_gradients`.

    The scalar checked is ``<forward(inputs), dout>``, whose gradient is exactly what
    ``backward(dout, ...)`` returns. Every argument is validated before ``forward`` is called.
    """
    if not callable(forward):
        raise TypeError(f"forward: expected a callable forward(**inputs, **static) -> "
                        f"(out, cache), got {forward!r:.80}")
    if not callable(backward):
        raise TypeError(f"backward: expected a callable backward(dout, cache), got "
                        f"{backward!r:.80}")
    if static is not None and not isinstance(static, Mapping):
        raise TypeError(f"static: expected a dict of keyword arguments or None, got "
                        f"{type(static).__name__}")
    static = dict(static or {})
    inputs = _check_params(inputs, "inputs")
    _check_options(method, mode, names, directions, seed, rtol, atol, inputs)
    out, cache = _pair(forward(**inputs, **static), "forward", "forward(**inputs, **static)",
                       "(out, cache)")
    out = np.asarray(out)
    if out.dtype.kind not in "fiuc":
        raise TypeError(f"forward: expected out to be a numeric array, got dtype {out.dtype}")
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(out.shape)
    dout = as_float_array(dout, "dout", allow_complex=False)
    if dout.shape != out.shape:
        raise ValueError(f"dout: expected shape {out.shape}, got {dout.shape}")
    analytic = backward(dout, cache)
    if len(inputs) == 1 and not isinstance(analytic, tuple):
        analytic = (analytic,)
    if not isinstance(analytic, tuple) or len(analytic) < len(inputs):
        raise TypeError(f"backward: expected a tuple of {len(inputs)} gradients (one per "
                        f"input {list(inputs)}), got {analytic!r:.200}")
    # Gradients past the inputs (a None bias gradient, or one for an argument passed in
    # ``static``) are not checked.
    grads = _check_grads(dict(zip(inputs, analytic, strict=False)), inputs, "backward")

    def scalar(p: Params) -> Any:
        value, _ = _pair(forward(**p, **static), "forward", "forward(**inputs, **static)",
                         "(out, cache)")
        value = np.asarray(value)
        if value.shape != out.shape:
            raise ValueError(f"forward: out has shape {value.shape} at a perturbed point, "
                             f"{out.shape} at the point itself")
        return (value * dout).sum()

    def f(p: Params) -> tuple[Any, Params]:
        return scalar(p), grads

    return check_gradients(f, inputs, method=method, mode=mode, names=names,
                           directions=directions, seed=seed, rtol=rtol, atol=atol,
                           loss_fn=scalar)


def assert_close(actual: Any, expected: Any, tolerance: Tolerance = TOLERANCES["complex"],
                 name: str = "array") -> None:
    """Assert two arrays agree by this module's comparison rule, for results that should be
    equal up to rounding (a different summation order, complex vs real BLAS kernels):

        max_i |actual_i - expected_i|  <=  atol + rtol * max(max|actual|, max|expected|)

    with the complex-step tolerances by default (rounding-level agreement). Shapes must be
    equal exactly. Raises ``AssertionError`` naming the worst index and both values.
    """
    if not isinstance(tolerance, tuple) or len(tolerance) != 2:
        raise TypeError(f"tolerance: expected a Tolerance(rtol, atol), got {tolerance!r:.80}")
    tolerance = Tolerance(check_tolerance(tolerance[0], "tolerance.rtol"),
                          check_tolerance(tolerance[1], "tolerance.atol"))
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
