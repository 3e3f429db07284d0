"""What every verdict of the checker rests on, checked at the point itself.

Determinism
-----------
The loss must be a function of the parameters. Before anything is compared, it is evaluated
twice at the point; two values that differ by more than rounding
(:func:`~refimpl.gradcheck.numerical._differ`) make every row ``"non-deterministic"`` (and
the kink probes of a disagreeing coordinate evaluate the point twice more). Noise read as
slope would otherwise show as kinks (``"non-differentiable"``) or mismatches.

Complex safety
--------------
The complex step reads ``Im f(p + i h v) / h``. A loss that drops an imaginary part on the way
(``np.abs`` or ``np.linalg.norm`` of a complex number is real; so is ``np.real``, ``float``)
loses that term's derivative, and a gradient that forgot the same term would agree with it.
So every complex-step check also takes real differences along :data:`SAFETY_DIRECTIONS`
seeded Gaussian directions ``v`` over the checked parameters and compares them with the
complex step's derivative ``c`` along ``v``: at the point itself, the one the verdict used (in
full mode ``c = sum_i n_i v_i`` of the numerical derivatives ``n`` compared; in directional
mode ``Im f(p + i h v) / h``).

With ``D(s) = (f(q + s v) - f(q - s v)) / 2s`` at a point ``q`` on the line ``p + t v``, three
real estimates of the derivative at ``q`` from five loss values::

    two-sided  R     = (4 D(s/2) - D(s)) / 3                      truncation O(s^4)
    right      right = (4 f(q + s/2 v) - 3 f(q) - f(q + s v)) / s    truncation f3 s^2 / 12
    left       left  = (3 f(q) - 4 f(q - s/2 v) + f(q - s v)) / s    likewise

(``f3`` the third derivative along ``v``), and the complex step's derivative ``c`` at ``q``
agrees with them iff::

    min(|c - R|, |c - right|, |c - left|)
        <= atol_central + rtol_central * scale           (truncation, as the central check)
         + KINK_ROUNDING * eps * max|f| / s              (rounding of the five losses)
         + atol_complex + rtol_complex * scale           (rounding of c)

with ``scale = max(sum_i |g_i v_i|, sum_i |n_i v_i|, |c|)`` and the tolerances the defaults of
:data:`~refimpl.gradcheck.TOLERANCES`. Complex safety is a property of the code, not of the
point, so the probes of :data:`SAFETY_PROBES` may look next to the point too; a direction
agrees when one of them agrees, tried in order:

* ``q = p``, ``s = h`` (``h`` the central step along ``v``; 4 new evaluations): what agrees at
  an ordinary point. The estimates weigh the five losses with weights summing to at most
  ``8 / s``, each loss carrying a rounding error of a few ``eps |f|``: the kink probes' floor
  (:data:`~refimpl.gradcheck.KINK_ROUNDING`). The one-sided estimates stand in for the
  two-sided one where a kink lies within the step: the complex step follows the branch of the
  real part at the point, and the side that does not cross the kink agrees with it.
* ``q = p``, ``s = 4h, 16h``: for losses whose rounding noise exceeds that floor (a loss
  computed as ``(1e6 + q) - 1e6``): the noise over the step shrinks as the step grows.
* ``q = p + 4h v`` and ``q = p - 4h v``, ``s = h``, with a fresh ``c = Im f(q + i h v) / h``:
  for a point where several kinks meet (ReLU units exactly at 0, which a direction switches
  on at both sides), where neither side of ``p`` is smooth; these probes stay 3h clear of it.

A direction that no probe confirms is repeated on each parameter alone (``v`` restricted to
it), which names the parameters whose rows become ``"not complex-safe"`` (every row of the
direction when no single parameter disagrees, and every row in directional mode): the report
is never ok. What the cross-check cannot see is a dropped term whose derivative along ``v`` is
below the central tolerance (``rtol_central * scale``): real differences cannot resolve it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from .arguments import Params
from .numerical import EPS, KINK_ROUNDING, STEPS, _differ, _Evaluator
from .report import TOLERANCES

__all__ = ["SAFETY_DIRECTIONS", "SAFETY_PROBES", "NOT_COMPLEX_SAFE", "NON_DETERMINISTIC",
           "check_determinism", "complex_safety", "safety_directions", "full_mode_derivative",
           "directional_derivative"]

#: Seeded directions along which every complex-step check also takes real differences.
SAFETY_DIRECTIONS = 2

#: The probes of the cross-check, ``(offset, step)`` in units of the central step ``h`` along
#: the direction: real differences with that step around ``p + offset * h * v``.
SAFETY_PROBES = ((0, 1), (0, 4), (0, 16), (4, 1), (-4, 1))

#: The row status of a parameter whose complex-step derivative real differences contradict.
NOT_COMPLEX_SAFE = "not complex-safe"

#: The row status of every row when two evaluations of the loss at one point differ.
NON_DETERMINISTIC = "non-deterministic"

#: ``derivative(direction) -> (c, scale)``: the complex step's derivative along a direction
#: (over some of the parameters) and the scale of the comparison.
Derivative = Callable[[Params], "tuple[float, float]"]


def check_determinism(evaluator: _Evaluator) -> tuple[float, str | None]:
    """The loss at the point, evaluated twice: ``(first value, None)`` when both agree to
    rounding, else ``(first value, a note naming both values)``."""
    first, second = evaluator.at_point(), evaluator.at_point()
    if not _differ(first, second):
        return first, None
    return first, (f"{NON_DETERMINISTIC}: two evaluations of the loss at the same point gave "
                   f"{first!r} and {second!r}; a gradient check needs a function of the "
                   f"parameters (fix the seed of any randomness, such as dropout, inside it)")


def safety_directions(params: Params, names: Sequence[str], seed: int) -> list[Params]:
    """:data:`SAFETY_DIRECTIONS` seeded standard-normal directions over ``names``: the first
    directions of directional mode for the same seed (same generator, same order) when
    ``names`` are all the parameters."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(params[name].shape) for name in names}
            for _ in range(SAFETY_DIRECTIONS)]


def full_mode_derivative(numerical: Params, grads: Params) -> Derivative:
    """The complex step's derivative along a direction in full mode: ``sum_i n_i v_i`` of the
    numerical derivatives the verdict compared (flat arrays keyed by parameter)."""
    def derivative(direction: Params) -> tuple[float, float]:
        terms = {name: numerical[name] * direction[name].reshape(-1) for name in direction}
        c = sum(float(np.sum(term)) for term in terms.values())
        scale = max(sum(float(np.sum(np.abs(term))) for term in terms.values()),
                    sum(float(np.sum(np.abs(grads[name] * direction[name])))
                        for name in direction))
        return c, scale
    return derivative


def directional_derivative(evaluator: _Evaluator, grads: Params) -> Derivative:
    """The complex step's derivative along a direction, ``Im f(p + i h v) / h`` (one
    evaluation), for directional mode.

    A real loss reads as an imaginary part of 0 here: the checker refused it along the full
    direction already, so a real loss along a direction over some parameters means that
    their imaginary parts were all dropped.
    """
    def derivative(direction: Params) -> tuple[float, float]:
        c = _complex_step_along(evaluator, direction, 0.0)
        scale = sum(float(np.sum(np.abs(grads[name] * direction[name]))) for name in direction)
        return c, scale
    return derivative


def _complex_step_along(evaluator: _Evaluator, direction: Params, shift: float) -> float:
    """``Im f(p + (shift + i h) v) / h``, the complex step's derivative at ``p + shift v``."""
    h = STEPS["complex"]
    return float(np.asarray(evaluator.along(direction, shift + 1j * h)).imag) / h


class _Disagreement(NamedTuple):
    """What the complex step and the closest real estimate said along one direction."""

    complex_step: float
    real: float
    limit: float


def complex_safety(evaluator: _Evaluator, f0: float, directions: list[Params],
                   derivative: Derivative) -> tuple[list[str], list[str]]:
    """Cross-check the complex step along each direction by real differences.

    Parameters
    ----------
    evaluator : _Evaluator
        The loss at real points.
    f0 : float
        The loss at the point.
    directions : list of dict
        Seeded directions, each over the parameters it names.
    derivative : callable
        The complex step's derivative along a direction, and its scale (a
        :data:`Derivative`).

    Returns
    -------
    (flagged, notes) : (list of str, list of str)
        The parameters whose rows are not complex-safe, and one note per direction that
        disagreed.
    """
    flagged: list[str] = []
    notes: list[str] = []
    for direction in directions:
        seen = _disagreement(evaluator, f0, direction, derivative)
        if seen is None:
            continue
        named = [name for name in direction
                 if _disagreement(evaluator, f0, {name: direction[name]}, derivative)
                 is not None]
        flagged += [name for name in named or direction if name not in flagged]
        where = (f"on {', '.join(map(repr, named))}" if named else
                 f"along a direction over {', '.join(map(repr, direction))} (no single "
                 f"parameter disagrees alone)")
        if np.isnan(seen.real):
            reach = max(abs(offset) + factor for offset, factor in SAFETY_PROBES)
            notes.append(f"{NOT_COMPLEX_SAFE} {where} (unverified): the loss is not finite "
                         f"within {reach} central steps of the point along a seeded random "
                         f"direction, so real differences cannot confirm the complex step; "
                         f"check with method='central'")
            continue
        notes.append(
            f"{NOT_COMPLEX_SAFE} {where}: along a seeded random direction the complex step "
            f"gives the derivative {seen.complex_step:.17g}, real differences "
            f"{seen.real:.17g} (allowed difference {seen.limit:.3g}): the loss drops an "
            f"imaginary part on the way (abs, a norm, np.real, float(), ...), so the complex "
            f"step cannot see all of it; make the forward pass complex-safe or check with "
            f"method='central'")
    return flagged, notes


def _disagreement(evaluator: _Evaluator, f0: float, direction: Params,
                  derivative: Derivative) -> _Disagreement | None:
    """None when real differences agree with the complex step at one of the
    :data:`SAFETY_PROBES` (or ``c`` at the point is not finite: that row is reported as
    such), else the disagreement of the first probe whose losses are finite (NaN if none)."""
    c, scale = derivative(direction)
    largest = max(float(np.max(np.abs(value), initial=0.0)) for value in direction.values())
    if not np.isfinite(c) or largest == 0:
        return None
    central, complex_step = TOLERANCES["central"], TOLERANCES["complex"]
    scale = max(scale, abs(c))
    fixed = central.atol + central.rtol * scale + complex_step.atol + complex_step.rtol * scale
    point = max(float(np.max(np.abs(evaluator.params[name]))) for name in direction)
    h = STEPS["central"] * max(1.0, point) / largest
    first = None
    for offset, factor in SAFETY_PROBES:
        shift, step = offset * h, factor * h
        if offset:
            here = _complex_step_along(evaluator, direction, shift)
            f_here = evaluator.real_along(direction, shift)
        else:
            here, f_here = c, f0
        losses = [evaluator.real_along(direction, shift + t)
                  for t in (step, -step, step / 2, -step / 2)]
        if not np.all(np.isfinite([here, f_here, *losses])):
            continue
        f_p, f_m, f_p2, f_m2 = losses
        two_sided = (4 * (f_p2 - f_m2) / step - (f_p - f_m) / (2 * step)) / 3
        right = (4 * f_p2 - 3 * f_here - f_p) / step
        left = (3 * f_here - 4 * f_m2 + f_m) / step
        limit = fixed + KINK_ROUNDING * EPS * max(abs(f_here), *map(abs, losses)) / step
        closest = min((two_sided, right, left), key=lambda estimate: abs(here - estimate))
        if abs(here - closest) <= limit:
            return None
        if first is None:
            first = _Disagreement(here, closest, limit)
    return first if first is not None else _Disagreement(c, float("nan"), float("nan"))
