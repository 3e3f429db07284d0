"""Checking a Hessian-vector product against numerical derivatives of the explicit gradient.

The comparison rule and the tolerances are written down once, in the docstring of
:mod:`refimpl.hessian`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._table import format_table
from .._validate import as_float_array, check_int, check_keys, check_seed, check_tolerance
from ..gradcheck import EPS, Tolerance
from .products import _check_direction, gradient_function, hvp, random_directions

__all__ = ["HVP_TOLERANCES", "HVP_METHODS", "HVP_STEPS", "HVPRow", "HVPReport", "check_hvp",
           "check_hvp_function"]

Params = dict[str, np.ndarray]

#: Default tolerances per method, the one place they are set: a row passes iff
#: ``max|Hv - n| <= atol + rtol * scale`` (the rule of :mod:`refimpl.hessian`). The complex
#: step of the gradient is exact to rounding, as the explicit ``H v`` is: rtol leaves room for
#: the rounding of two different summation orders over a model's sums; central differences of
#: the gradient carry a truncation error ~h^2 and a rounding error ~eps |g| / h.
HVP_TOLERANCES: dict[str, Tolerance] = {
    "complex": Tolerance(rtol=1e-11, atol=1e-13),
    "central": Tolerance(rtol=1e-6, atol=1e-8),
}

HVP_METHODS = tuple(HVP_TOLERANCES)

#: The steps: the complex step ``h`` (no subtraction: any tiny step), and the central step
#: relative to ``max(1, max |p|) / max |v|`` (balancing truncation ~h^2 against rounding
#: ~eps / h), halved once to tell a kink (the estimate moves with the step) from a mismatch.
HVP_STEPS: dict[str, float] = {"complex": 1e-20, "central": EPS ** (1 / 3)}

#: The statuses of a row.
STATUSES = ("ok", "mismatch", "inconclusive", "non-finite")


@dataclass(frozen=True)
class HVPRow:
    """One direction and one parameter of an :class:`HVPReport`.

    Its fields: ``direction`` (the direction's number, 0, 1, ...), ``name`` and ``shape`` (the
    parameter's), ``max_abs_error`` (``max_i |Hv_i - n_i|`` over the parameter's entries),
    ``max_rel_error`` (``max_abs_error / scale``), ``scale`` (``max(max_i |Hv_i|, max_i
    |n_i|)``), ``worst_index`` (where the error is largest), ``explicit`` and ``numerical``
    (``Hv`` and the numerical estimate there) and ``status``: ``"ok"``, ``"mismatch"``,
    ``"inconclusive"`` (central differences whose estimate moves with the step by more than
    the tolerance: a kink within the step, the numerical side cannot judge) or
    ``"non-finite"``.
    """

    direction: int
    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    scale: float
    worst_index: tuple[int, ...]
    explicit: float
    numerical: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite floats become strings "nan", "inf", "-inf")."""
        return {"direction": self.direction, "name": self.name, "shape": list(self.shape),
                "max_abs_error": _json(self.max_abs_error),
                "max_rel_error": _json(self.max_rel_error), "scale": _json(self.scale),
                "worst_index": list(self.worst_index), "explicit": _json(self.explicit),
                "numerical": _json(self.numerical), "status": self.status}


@dataclass(frozen=True)
class HVPReport:
    """The result of :func:`check_hvp` / :func:`check_hvp_function`.

    ``str(report)`` is a table, one line per direction and parameter, under a header with the
    verdict.

    Attributes
    ----------
    ok : bool
        True only if every row's status is ``"ok"``.
    method : str
        ``"complex"`` or ``"central"``.
    step : float
        The method's step (the central one before its scaling).
    tolerance : refimpl.gradcheck.Tolerance
    directions : int
        How many directions were checked.
    seed : int or None
        The seed of the drawn directions (None when they were given).
    rows : tuple of HVPRow
    problems : tuple of str
        What could not be evaluated (a non-finite or overflowing gradient).
    """

    ok: bool
    method: str
    step: float
    tolerance: Tolerance
    directions: int
    seed: int | None
    rows: tuple[HVPRow, ...]
    problems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {"ok": self.ok, "method": self.method, "step": self.step,
                "rtol": self.tolerance.rtol, "atol": self.tolerance.atol,
                "directions": self.directions, "seed": self.seed,
                "problems": list(self.problems), "rows": [row.to_dict() for row in self.rows]}

    def __str__(self) -> str:
        header = (f"Hessian-vector product check: {'OK' if self.ok else 'FAILED'} "
                  f"(method={self.method}, step={self.step:.3g}, rtol={self.tolerance.rtol:g}, "
                  f"atol={self.tolerance.atol:g}, directions={self.directions}, "
                  f"seed={self.seed})")
        table = format_table(
            ("direction", "parameter", "shape", "max abs err", "max rel err", "worst index",
             "explicit", "numerical", "status"),
            [(str(row.direction), row.name, "x".join(map(str, row.shape)) or "()",
              f"{row.max_abs_error:.3e}", f"{row.max_rel_error:.3e}", str(row.worst_index),
              f"{row.explicit:.17g}", f"{row.numerical:.17g}", row.status)
             for row in self.rows])
        return "\n".join([header, table] + [f"problem: {problem}" for problem in self.problems])


def _json(value: float) -> float | str:
    value = float(value)
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


# --- the numerical side ------------------------------------------------------------------------

def _gradient(f: Callable[[Params], Any], point: Params, params: Params) -> Params | str:
    """The gradient ``f`` returns at ``point``, keyed like ``params``; a string saying what
    went wrong when it overflows or is not finite (never a verdict on the formula)."""
    try:
        result = f(point)
    except FloatingPointError as error:
        return f"the gradient overflowed at a perturbed point: {error}"
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"f: expected f(params) -> (loss, grads), got {type(result).__name__}")
    grads = result[1]
    check_keys(grads, list(params), what="f: grads (the keys of params)")
    checked = {}
    for key in params:
        value = np.asarray(grads[key])
        if value.shape != params[key].shape:
            raise ValueError(f"f: grads[{key!r}]: expected shape {params[key].shape}, got "
                             f"{value.shape}")
        if not np.isfinite(value).all():
            return f"the gradient of {key!r} is not finite at a perturbed point"
        checked[key] = value
    return checked


def _complex_step(f, params, v, step):
    grads = _gradient(f, {key: params[key] + 1j * step * v[key] for key in params}, params)
    if isinstance(grads, str):
        return grads
    return {key: grads[key].imag / step for key in params}


def _central(f, params, v, step):
    plus = _gradient(f, {key: params[key] + step * v[key] for key in params}, params)
    minus = _gradient(f, {key: params[key] - step * v[key] for key in params}, params)
    for side in (plus, minus):
        if isinstance(side, str):
            return side
    return {key: (np.real(plus[key]) - np.real(minus[key])) / (2 * step) for key in params}


def _central_step(params: Params, v: Params) -> float:
    """``eps^(1/3) max(1, max |p|) / max |v|``: every coordinate moves by at most the
    classic central step of its own scale."""
    largest_p = max([1.0] + [float(np.max(np.abs(value))) for value in params.values()
                             if value.size])
    largest_v = max([0.0] + [float(np.max(np.abs(value))) for value in v.values()
                             if value.size])
    return HVP_STEPS["central"] * largest_p / (largest_v or 1.0)


def _row(direction: int, name: str, explicit: np.ndarray, numerical: np.ndarray,
         tolerance: Tolerance, status_if_bad: str = "mismatch") -> HVPRow:
    """The comparison rule for one parameter of one direction."""
    shape = tuple(explicit.shape)
    if explicit.size == 0:
        return HVPRow(direction, name, shape, 0.0, 0.0, 0.0, (), 0.0, 0.0, "ok")
    error = np.abs(explicit - numerical)
    scale = float(max(np.max(np.abs(explicit)), np.max(np.abs(numerical))))
    worst = int(np.argmax(error))
    largest = float(error.flat[worst])
    limit = tolerance.atol + tolerance.rtol * scale
    index = tuple(int(i) for i in np.unravel_index(worst, shape)) if shape else ()
    return HVPRow(direction, name, shape, largest, largest / scale if scale else 0.0, scale,
                  index, float(explicit.flat[worst]), float(numerical.flat[worst]),
                  "ok" if largest <= limit else status_if_bad)


def _non_finite_rows(direction: int, params: Params) -> list[HVPRow]:
    nan = float("nan")
    return [HVPRow(direction, key, tuple(value.shape), nan, nan, nan, (), nan, nan,
                   "non-finite") for key, value in params.items()]


# --- the checkers --------------------------------------------------------------------------

def _check_options(method: Any, rtol: Any, atol: Any) -> Tolerance:
    if not isinstance(method, str) or method not in HVP_METHODS:
        raise ValueError(f"method: expected one of {list(HVP_METHODS)}, got {method!r}")
    default = HVP_TOLERANCES[method]
    return Tolerance(default.rtol if rtol is None else check_tolerance(rtol, "rtol"),
                     default.atol if atol is None else check_tolerance(atol, "atol"))


def _directions(params: Params, directions: Any, seed: Any, v: Any) -> list[Params]:
    """The given directions ``v`` (one dict or a list of dicts), or ``directions`` seeded
    standard-normal ones over every parameter."""
    if v is not None:
        given = [v] if isinstance(v, Mapping) else v
        if not isinstance(given, Sequence) or isinstance(given, str) or not given:
            raise TypeError(f"v: expected a direction (a dict of arrays) or a non-empty list of "
                            f"them, got {type(v).__name__}")
        return [_check_direction(one, params) for one in given]
    return random_directions(params, directions, seed)


def check_hvp_function(
    f: Callable[[Params], tuple[Any, Params]], hvp_function: Callable[[Params], Mapping[str, Any]],
    params: Mapping[str, Any], *, method: str = "complex", directions: int = 3, seed: int = 0,
    v: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    rtol: float | None = None, atol: float | None = None,
) -> HVPReport:
    """Check any Hessian-vector product against numerical derivatives of a gradient.

    For each direction ``v``, ``hvp_function(v)`` (the ``H v`` under test, at ``params``) is
    compared, parameter by parameter, with

    * ``method="complex"``: ``Im g(p + i h v) / h`` (``h = 1e-20``), where ``g`` is the
      gradient ``f`` returns: exact to rounding wherever ``f``'s backward pass is complex-step
      safe (every refimpl model's is);
    * ``method="central"``: ``(g(p + h v) - g(p - h v)) / (2 h)``, a second opinion that needs
      only real arithmetic; a row that disagrees is re-estimated at ``h / 2`` and is
      ``"inconclusive"`` when the two estimates differ by more than the tolerance (a kink
      within the step), ``"mismatch"`` otherwise.

    Parameters
    ----------
    f : callable
        ``f(params) -> (loss, grads)``, the gradient, keyed like ``params``; for
        ``"complex"`` it must accept complex parameters.
    hvp_function : callable
        ``hvp_function(v) -> H v`` at ``params``, keyed like ``params``.
    params : dict of str to array_like
        The point: finite real arrays.
    method : {"complex", "central"}
    directions : int
        How many seeded standard-normal directions over every parameter (>= 1).
    seed : int
        Their seed (>= 0).
    v : dict or list of dict, optional
        Directions to check instead of drawn ones.
    rtol, atol : float, optional
        Override :data:`HVP_TOLERANCES` (finite, >= 0).

    Returns
    -------
    HVPReport
        One row per direction and parameter; ``ok`` only if every row is ``"ok"``.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, before anything is evaluated; and when ``f`` or
        ``hvp_function`` returns something other than what is described above.
    """
    if not callable(f):
        raise TypeError(f"f: expected a callable f(params) -> (loss, grads), got {f!r:.80}")
    if not callable(hvp_function):
        raise TypeError(f"hvp_function: expected a callable hvp_function(v) -> H v, got "
                        f"{hvp_function!r:.80}")
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"params: expected a non-empty dict of arrays, got {params!r:.80}")
    params = {key: as_float_array(value, f"params[{key!r}]", allow_complex=False)
              for key, value in params.items()}
    tolerance = _check_options(method, rtol, atol)
    directions = check_int(directions, "directions", 1)
    seed = check_seed(seed)
    drawn = _directions(params, directions, seed, v)
    rows: list[HVPRow] = []
    problems: list[str] = []
    step = HVP_STEPS[method]
    for number, direction in enumerate(drawn):
        explicit = hvp_function(direction)
        check_keys(explicit, list(params), what="hvp_function(v) (the keys of params)")
        explicit = {key: np.asarray(explicit[key]) for key in params}
        for key in params:
            if explicit[key].shape != params[key].shape:
                raise ValueError(f"hvp_function(v)[{key!r}]: expected shape "
                                 f"{params[key].shape}, got {explicit[key].shape}")
        if method == "complex":
            numerical = _complex_step(f, params, direction, step)
        else:
            central_step = _central_step(params, direction)
            numerical = _central(f, params, direction, central_step)
        if isinstance(numerical, str) or not all(np.isfinite(explicit[key]).all()
                                                 for key in params):
            problems.append(f"direction {number}: " + (
                numerical if isinstance(numerical, str) else "the explicit H v is not finite"))
            rows.extend(_non_finite_rows(number, params))
            continue
        halved = None
        for key in params:
            row = _row(number, key, explicit[key], numerical[key], tolerance)
            if row.status == "mismatch" and method == "central":
                if halved is None:
                    halved = _central(f, params, direction, central_step / 2)
                if isinstance(halved, str) or _row(number, key, halved[key], numerical[key],
                                                   tolerance).status != "ok":
                    row = _row(number, key, explicit[key], numerical[key], tolerance,
                               "inconclusive")
            rows.append(row)
    return HVPReport(all(row.status == "ok" for row in rows), method, step, tolerance,
                     len(drawn), None if v is not None else seed, tuple(rows), tuple(problems))


def check_hvp(
    model: Any, params: Mapping[str, Any], data: Any, *, method: str = "complex",
    directions: int = 3, seed: int = 0,
    v: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    splits: Any = None, splits_b: Any = None, rtol: float | None = None,
    atol: float | None = None,
) -> HVPReport:
    """Check refimpl's explicit ``H v`` of a model against numerical derivatives of its
    explicit gradient (:func:`check_hvp_function` with :func:`refimpl.hessian.hvp` and the
    model's ``loss_and_grads``).

    Parameters
    ----------
    model, params, data, splits, splits_b
        As :func:`refimpl.hessian.hvp`.
    method, directions, seed, v, rtol, atol
        As :func:`check_hvp_function`.

    Returns
    -------
    HVPReport

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> model = ri.MLP([3, 4, 2], activation="tanh")
    >>> params = model.init(seed=0)
    >>> x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> ri.check_hvp(model, params, (x, y)).ok
    True
    """
    f = gradient_function(model, data, splits=splits, splits_b=splits_b)
    return check_hvp_function(
        f, lambda direction: hvp(model, params, data, direction, splits=splits,
                                 splits_b=splits_b),
        params, method=method, directions=directions, seed=seed, v=v, rtol=rtol, atol=atol)
