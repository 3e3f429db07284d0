"""Numerical derivatives: the complex step, central differences, Richardson extrapolation,
the evaluator that perturbs one coordinate or one direction at a time, and kink detection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .arguments import Params, _imag_loss, _real_loss, _scalar_loss

#: The float64 machine epsilon, the unit of every rounding estimate below.
EPS = np.finfo(np.float64).eps

#: Step per method, relative to ``max(1, |p_i|)`` for the real differences (absolute for
#: complex).
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
#: same step h) as ``max(|right - left|, |jump|) >= J (h - d) / (2.5 h)``: a kink explains at
#: most 2.5x what the probes see. A disagreement more than this many times larger is not a
#: kink's doing and stays a mismatch. (Richardson's longer step reaches kinks the probes
#: cannot see; those disagreements are mismatches too: a fail, never a pass.)
KINK_EXPLAINS = 10

#: Rounding floor of the kink probes, in units of ``eps * max|f| / h``: each loss value
#: carries a rounding error of a few ``eps * |f|``, and the probes combine five of them with weights
#: summing to 16 / h (right - left). Below this floor a "jump" is rounding noise, however
#: small the parameter's own gradient scale is.
KINK_ROUNDING = 64


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
        """The complex-step derivative ``Im f(p + i h e_index) / h`` of one coordinate."""
        flat = work[name].reshape(-1)
        original = flat[index]
        flat[index] = original + 1j * h
        try:
            return _imag_loss(self.loss_fn(work), self.who) / h
        finally:
            flat[index] = original

    def real_coordinate(self, work: Params, name: str, index: int, delta: float) -> float:
        """The loss with one coordinate moved by ``delta``."""
        flat = work[name].reshape(-1)
        original = flat[index]
        flat[index] = original + delta
        try:
            return _real_loss(self.loss_fn(work), self.who)
        finally:
            flat[index] = original

    def along(self, direction: Params, t: complex) -> np.ndarray:
        """The loss at ``params + t * direction`` (``t`` real or imaginary); ``direction``
        may leave out parameters, which then stay at the point."""
        shifted = {name: (value + t * direction[name] if name in direction else value.copy())
                   for name, value in self.params.items()}
        return _scalar_loss(self.loss_fn(shifted), self.who)

    def real_along(self, direction: Params, t: float) -> float:
        """The (real) loss at ``params + t * direction`` for a real ``t``."""
        return float(self.along(direction, t).real)

    def at_point(self) -> float:
        """The (real) loss at the point itself, on fresh copies of the parameters."""
        return self.real_along({}, 0.0)


def _central(f_plus: float, f_minus: float, h: float) -> float:
    """The central difference ``(f(p + h) - f(p - h)) / (2 h)``."""
    return (f_plus - f_minus) / (2 * h)


def _deltas(method: str, value: Any) -> list[Any]:
    """The perturbations of a coordinate whose value is ``value`` (a float or an array of
    them), in the order :func:`_combine` reads the losses: complex ``[i h]``; central
    ``[h, -h]``; Richardson ``[h, -h, h/2, -h/2]``, with ``h = STEPS[method] max(1, |value|)``.
    """
    if method == "complex":
        return [1j * STEPS["complex"]]
    h = STEPS[method] * np.maximum(1.0, np.abs(value))
    if method == "central":
        return [h, -h]
    return [h, -h, h / 2, -h / 2]


def _combine(method: str, losses: list[Any], value: Any) -> Any:
    """The numerical derivative from the losses at the :func:`_deltas` perturbations (the
    imaginary parts for the complex step, the real losses otherwise); elementwise on arrays."""
    if method == "complex":
        return losses[0] / STEPS["complex"]
    h = STEPS[method] * np.maximum(1.0, np.abs(value))
    d_h = _central(losses[0], losses[1], h)
    if method == "central":
        return d_h
    d_half = _central(losses[2], losses[3], h / 2)
    return (4 * d_half - d_h) / 3


def _numerical_coordinate(method: str, evaluator: _Evaluator, work: Params, name: str,
                          index: int, value: float) -> float:
    """One coordinate's numerical derivative, one loss evaluation per perturbation."""
    if method == "complex":   # Im f / h, as _combine divides
        return evaluator.complex_coordinate(work, name, index, STEPS["complex"])
    losses = [evaluator.real_coordinate(work, name, index, delta)
              for delta in _deltas(method, value)]
    return float(_combine(method, losses, value))


#: What :func:`_near_kink` finds at a disagreeing coordinate.
KINK, SMOOTH, NON_DETERMINISTIC = "kink", "smooth", "non-deterministic"


def _differ(first: float, second: float) -> bool:
    """Whether two evaluations of the loss at one point differ by more than rounding.

    A deterministic loss gives the same number twice (bit for bit, as a rule); the floor
    ``KINK_ROUNDING * eps * |f|`` leaves room for an implementation whose reductions run in a
    varying order, and is the rounding every probe here assumes anyway. One finite and one
    non-finite value differ; two non-finite values do not (a non-finite loss is reported as
    such).
    """
    finite = np.isfinite(first), np.isfinite(second)
    if not all(finite):
        return finite[0] != finite[1]
    return abs(first - second) > KINK_ROUNDING * EPS * max(abs(first), abs(second))


def _near_kink(evaluator: _Evaluator, work: Params, name: str, index: int, value: float,
               scale: float, atol: float, error: float) -> str:
    """What explains the disagreement ``error = |analytic - numerical|`` at a coordinate.

    :data:`KINK` when the loss is not smooth within one central step of the point and that
    explains the error; :data:`NON_DETERMINISTIC` when two evaluations at the point itself
    differ (the probes below would read the noise as kinks); :data:`SMOOTH` otherwise (the
    disagreement is a mismatch).
    """
    h = STEPS["central"] * max(1.0, abs(value))
    f0 = evaluator.real_coordinate(work, name, index, 0.0)
    if _differ(f0, evaluator.real_coordinate(work, name, index, 0.0)):
        return NON_DETERMINISTIC
    f_p, f_m = (evaluator.real_coordinate(work, name, index, s * h) for s in (1, -1))
    f_p2, f_m2 = (evaluator.real_coordinate(work, name, index, s * h / 2) for s in (1, -1))
    values = (f0, f_p, f_m, f_p2, f_m2)
    if not all(np.isfinite(values)):
        return SMOOTH
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
    return KINK if seen > threshold and error <= KINK_EXPLAINS * seen else SMOOTH


def _nan_on_overflow(loss_fn: Callable[[Params], Any]) -> Callable[[Params], Any]:
    """``loss_fn`` with a ``FloatingPointError`` read as a NaN loss.

    refimpl's models raise one instead of returning inf/NaN; read as NaN, a perturbed point
    past an overflow is reported as ``"non-finite"`` like any other non-finite evaluation.
    """
    def evaluate(params: Params) -> Any:
        try:
            return loss_fn(params)
        except FloatingPointError:
            return complex(float("nan"), float("nan"))
    return evaluate

