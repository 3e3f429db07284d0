"""The verdict of a gradient check: tolerances, one row per parameter, the report.

The comparison rule and the default tolerances are written down once, in the docstring of
:mod:`refimpl.gradcheck`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .._table import format_table

__all__ = ["Tolerance", "TOLERANCES", "METHODS", "MODES", "ParameterRow", "GradcheckReport"]


class Tolerance(NamedTuple):
    """A tolerance pair: a parameter passes iff ``max|g - n| <= atol + rtol * scale``.

    ``rtol`` is relative to the parameter's largest gradient ``scale``, ``atol`` absolute;
    the rule is written down in :mod:`refimpl.gradcheck`.
    """

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

METHODS = tuple(TOLERANCES)
MODES = ("full", "directional")


@dataclass(frozen=True)
class ParameterRow:
    """One parameter (full mode) or one direction (directional mode) of a report.

    Attributes
    ----------
    name : str
        The parameter's name, or ``"direction k"``.
    shape : tuple of int
        The parameter's shape; in directional mode ``(total parameter count,)``.
    checked : int
        Coordinates compared (1 for a direction).
    max_abs_error : float
        ``max_i |g_i - n_i|`` over the coordinates compared (kinks excluded).
    max_rel_error : float
        ``max_abs_error / scale``.
    scale : float
        The parameter's largest gradient ``max(max_i |g_i|, max_i |n_i|)``; for a direction
        ``v``, ``sum_i |g_i v_i|``.
    worst_index : tuple of int
        Where the error is largest (the direction's number in directional mode).
    analytic, numerical : float
        The two derivatives at ``worst_index``.
    status : str
        ``"ok"``, ``"mismatch"``, ``"non-differentiable"``, ``"non-finite"``,
        ``"not complex-safe"`` (real differences contradict the complex step's derivative:
        :mod:`refimpl.gradcheck.safety`) or ``"non-deterministic"`` (two evaluations of the
        loss at one point differ).
    nondifferentiable : int
        Coordinates found within one step of a kink.
    """

    name: str
    shape: tuple[int, ...]
    checked: int
    max_abs_error: float
    max_rel_error: float
    scale: float
    worst_index: tuple[int, ...]
    analytic: float
    numerical: float
    status: str
    nondifferentiable: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite floats become strings "nan", "inf", "-inf")."""
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
    """The result of :func:`~refimpl.gradcheck.check_gradients` (or ``check_vjp``).

    ``str(report)`` is a table, one line per row, under a header with the verdict.

    Attributes
    ----------
    ok : bool
        True only if every row's status is ``"ok"`` (and nothing was non-finite).
    method, mode : str
        As passed to the checker.
    step : float
        The method's step (relative to ``max(1, |p_i|)`` for the real differences).
    tolerance : refimpl.gradcheck.Tolerance
        The tolerances used.
    loss : float
        The loss at the point (real part).
    rows : tuple of ParameterRow
        One per checked parameter, or per direction.
    problems : tuple of str
        What was not finite at the point itself (then every row is ``"non-finite"``).
    notes : tuple of str
        Why rows are ``"not complex-safe"`` or ``"non-deterministic"``: what the checks of
        :mod:`refimpl.gradcheck.safety` saw.
    """

    ok: bool
    method: str
    mode: str
    step: float
    tolerance: Tolerance
    loss: float
    rows: tuple[ParameterRow, ...]
    problems: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite floats become strings "nan", "inf", "-inf")."""
        return {
            "ok": self.ok, "method": self.method, "mode": self.mode, "step": self.step,
            "rtol": self.tolerance.rtol, "atol": self.tolerance.atol,
            "loss": _json_float(self.loss), "problems": list(self.problems),
            "notes": list(self.notes),
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
        lines = ([header, table] + [f"problem: {problem}" for problem in self.problems]
                 + [f"note: {note}" for note in self.notes])
        return "\n".join(lines)


def _json_float(value: float) -> float | str:
    """``value`` as a float, or "nan", "inf", "-inf" (JSON has no non-finite numbers)."""
    value = float(value)
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _non_finite_row(name: str, shape: tuple[int, ...]) -> ParameterRow:
    """The row of a parameter that could not be compared: something was not finite."""
    nan = float("nan")
    return ParameterRow(name, shape, 0, nan, nan, nan, (), nan, nan, "non-finite")


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index tuple of ``flat_index`` in ``shape`` (``()`` for a scalar)."""
    if not shape:
        return ()
    return tuple(int(i) for i in np.unravel_index(flat_index, shape))

