"""Step sizes: why the checker trusts the complex step, as error curves against the step h.

For one direction ``v`` of a function ``f`` of a parameter dict (a coordinate, or a random unit
direction), the derivative ``f'(p; v) = <grad f(p), v>`` is estimated by four formulas at each
step ``h`` and compared with the analytic value::

    forward      (f(p + h v) - f(p)) / h                      truncation O(h),   rounding eps/h
    central      (f(p + h v) - f(p - h v)) / (2 h)            truncation O(h^2), rounding eps/h
    Richardson   (4 C(h/2) - C(h)) / 3,  C = central          truncation O(h^4), rounding eps/h
    complex      Im f(p + i h v) / h                          truncation O(h^2), no cancellation

Balancing truncation against rounding puts the best step of the first three near
``eps^(1/2)``, ``eps^(1/3)`` and ``eps^(1/5)`` (times a ratio of derivatives of ``f``, of order
one for a well-scaled function): the V-shaped curves. The complex step subtracts nothing, so
its error falls to machine precision and stays there down to the smallest steps (1e-300).

Below the spacing of the floating-point numbers around ``p`` (``h |v_i| < eps |p_i| / 2``,
from about 1e-16 for entries of order one) the perturbed point *is* the point: the difference
of the first three formulas is exactly 0, their estimate is 0 and their error is ``|f'|``
(relative error 1). The formulas are applied as written, with ``h`` as given; the curves show
the step vanishing rather than hiding it (a checker would use the representable step
``(p + h v) - p``). Where every perturbed point equals ``p`` bit for bit, ``f`` is not
evaluated for the differences: they are exactly 0, which evaluating ``f`` would only confirm
(a study down to 1e-300 then costs about one evaluation per step, the complex step's).

These difference formulas are the object of study here; the checker's own choice of steps is
:mod:`refimpl.gradcheck`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_int, check_seed

__all__ = ["METHODS", "EXPONENTS", "EPS", "default_steps", "coordinate_direction",
           "random_direction", "StepStudy", "study_steps", "best_step", "converges",
           "CONVERGED_BELOW", "BOTTOM_FACTOR", "FLAT_DECADES"]

Params = dict[str, np.ndarray]

#: The four formulas, in table order.
METHODS = ("forward", "central", "richardson", "complex")

#: Machine epsilon of float64.
EPS = float(np.finfo(np.float64).eps)

#: The power of eps near which each difference formula's error is smallest (1 / (order + 1)).
EXPONENTS = {"forward": 1 / 2, "central": 1 / 3, "richardson": 1 / 5}


def default_steps(per_decade: int = 4, smallest_exponent: int = 300) -> np.ndarray:
    """Log-spaced steps from 1e-1 down to ``10**-smallest_exponent``.

    Parameters
    ----------
    per_decade : int
        Steps per factor of 10 (>= 1).
    smallest_exponent : int
        The last step is ``10**-smallest_exponent`` (1 to 300).

    Returns
    -------
    ndarray, shape (S,)
        Decreasing, ``S = per_decade * (smallest_exponent - 1) + 1``.
    """
    per_decade = check_int(per_decade, "per_decade", 1)
    smallest_exponent = check_int(smallest_exponent, "smallest_exponent", 1)
    if smallest_exponent > 300:
        raise ValueError(f"smallest_exponent: expected at most 300 (steps stay normal "
                         f"float64 numbers), got {smallest_exponent}")
    count = per_decade * (smallest_exponent - 1) + 1
    return 10.0 ** -np.linspace(1, smallest_exponent, count)


def coordinate_direction(params: Mapping[str, np.ndarray], name: str, index: int) -> Params:
    """The unit direction along entry ``index`` (flat, C order) of ``params[name]``.

    Raises
    ------
    ValueError
        Naming ``name`` (unknown parameter) or ``index`` (out of range).
    """
    if name not in params:
        raise ValueError(f"name: unknown parameter {name!r}; parameters are {sorted(params)}")
    size = np.size(params[name])
    index = check_int(index, "index", 0)
    if index >= size:
        raise ValueError(f"index: expected 0 <= index < {size} (the size of {name!r}), got "
                         f"{index}")
    direction = {key: np.zeros(np.shape(value)) for key, value in params.items()}
    direction[name].flat[index] = 1.0
    return direction


def random_direction(params: Mapping[str, np.ndarray], seed: int) -> Params:
    """A standard-normal direction over every parameter, scaled to unit norm, from ``seed``."""
    rng = np.random.default_rng(check_seed(seed))
    direction = {key: rng.standard_normal(np.shape(value)) for key, value in params.items()}
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in direction.values()))
    return {key: d / norm for key, d in direction.items()}


class StepStudy(NamedTuple):
    """Errors of the four formulas at every step.

    Attributes
    ----------
    steps : ndarray, shape (S,)
    analytic : float
        ``<grad f(p), v>``, from the analytic gradient.
    estimates : dict of str to ndarray, shape (S,)
        Each method's estimate at every step.
    errors : dict of str to ndarray, shape (S,)
        ``|estimate - analytic| / |analytic|`` (the absolute error when ``analytic == 0``).
    """

    steps: np.ndarray
    analytic: float
    estimates: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]


def _shifted(params: Params, direction: Params, step: complex) -> Params:
    return {key: params[key] + step * direction[key] for key in params}


def _value(loss: Callable[[Params], Any], params: Params) -> complex:
    value = loss(params)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, complex,
                                                                    np.number)):
        hint = (" (a (loss, grads) pair? pass lambda p: f(p)[0])"
                if isinstance(value, tuple) and len(value) == 2 else "")
        shape = f" of shape {value.shape}" if isinstance(value, np.ndarray) else ""
        raise TypeError(f"loss: expected loss(params) to return a scalar (a real or complex "
                        f"number), got {type(value).__name__}{shape}{hint}")
    return complex(value)


def study_steps(loss: Callable[[Params], Any], params: Mapping[str, Any],
                gradient: Mapping[str, Any], direction: Mapping[str, Any],
                steps: np.ndarray | None = None) -> StepStudy:
    """Errors of forward, central, Richardson and complex-step derivatives against ``gradient``.

    Parameters
    ----------
    loss : callable
        ``loss(params) -> scalar``; must accept complex parameters (complex-step safe).
    params : dict of str to ndarray
        The point ``p`` (real).
    gradient : dict of str to ndarray
        The analytic gradient at ``p``, keyed like ``params``.
    direction : dict of str to ndarray
        ``v``, keyed like ``params`` (:func:`coordinate_direction`, :func:`random_direction`).
    steps : ndarray, optional
        Positive steps (default :func:`default_steps`).

    Returns
    -------
    StepStudy

    Raises
    ------
    ValueError
        For keys or shapes that do not match, or a step that is not finite and > 0.
    TypeError
        For a ``loss`` that returns something other than a scalar (a ``(loss, grads)`` pair,
        an array).
    """
    params = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    for what, other in (("gradient", gradient), ("direction", direction)):
        if set(other) != set(params):
            raise ValueError(f"{what}: expected the keys of params {sorted(params)}, got "
                             f"{sorted(other)}")
        for key in params:
            if np.shape(other[key]) != params[key].shape:
                raise ValueError(f"{what}[{key!r}]: expected shape {params[key].shape}, got "
                                 f"{np.shape(other[key])}")
    steps = default_steps() if steps is None else np.asarray(steps, dtype=np.float64)
    if steps.ndim != 1 or not steps.size or not np.all(np.isfinite(steps) & (steps > 0)):
        raise ValueError(f"steps: expected a non-empty 1-D array of finite numbers > 0, got "
                         f"shape {steps.shape}")
    analytic = float(sum(np.sum(np.asarray(gradient[k]) * direction[k]) for k in params))
    base = _value(loss, params).real
    estimates = {method: np.empty(steps.size) for method in METHODS}
    for position, h in enumerate(steps):
        estimates["complex"][position] = _value(loss, _shifted(params, direction, 1j * h)).imag / h
        differences = _differences(loss, params, direction, h, base)
        for method, value in zip(("forward", "central", "richardson"), differences, strict=True):
            estimates[method][position] = value
    scale = abs(analytic) if analytic != 0 else 1.0
    errors = {method: np.abs(values - analytic) / scale for method, values in estimates.items()}
    return StepStudy(steps, analytic, estimates, errors)


def _vanishes(params: Params, direction: Params, step: float) -> bool:
    """Whether every entry of ``p +- step v`` (and ``+- step v / 2``) rounds back to ``p``."""
    return all(np.array_equal(params[key] + step * direction[key], params[key])
               and np.array_equal(params[key] - step * direction[key], params[key])
               for key in params)


def _differences(loss: Callable[[Params], Any], params: Params, direction: Params, h: float,
                 base: float) -> tuple[float, float, float]:
    """Forward, central and Richardson estimates at step ``h`` (``base = f(p)``)."""
    if _vanishes(params, direction, h / 2) and _vanishes(params, direction, h):
        # Every perturbed point is p itself, bit for bit, and f is deterministic: every
        # difference of values is exactly 0, which evaluating f would only confirm.
        return 0.0, 0.0, 0.0
    plus = _value(loss, _shifted(params, direction, h)).real
    minus = _value(loss, _shifted(params, direction, -h)).real
    half = (_value(loss, _shifted(params, direction, h / 2)).real
            - _value(loss, _shifted(params, direction, -h / 2)).real) / h
    central = (plus - minus) / (2 * h)
    return (plus - base) / h, central, (4 * half - central) / 3


def _median_log_errors(study: StepStudy, method: str, window: int) -> np.ndarray:
    """``log10`` of ``method``'s errors after a running median over ``window`` steps."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    window = check_int(window, "window", 1)
    if window % 2 == 0:
        raise ValueError(f"window: expected an odd number, got {window}")
    logs = np.log10(np.maximum(study.errors[method], 1e-300))
    half = window // 2
    padded = np.concatenate([np.full(half, np.inf), logs, np.full(half, np.inf)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    # inf padding: a window at an end holds fewer steps; its median ignores the padding.
    return np.array([np.median(w[np.isfinite(w)]) for w in windows])


def best_step(study: StepStudy, method: str, window: int = 5) -> float:
    """The step at which ``method``'s error is smallest, after a running median.

    In the rounding branch of a V-curve the error is noise around ``eps / h``; at one step it
    can be far smaller by a lucky cancellation. The median of ``window`` neighbouring steps
    (on the log scale) follows the curve instead of such a point.

    Parameters
    ----------
    study : StepStudy
    method : str
        One of :data:`METHODS`.
    window : int
        An odd number of neighbouring steps (1: the raw minimum).

    Returns
    -------
    float
        The step ``h`` of the smallest median error.
    """
    medians = _median_log_errors(study, method, window)
    return float(study.steps[int(np.argmin(medians))])


#: A method whose (median) relative error reaches this is said to converge whatever the
#: shape of its curve: far below the O(1) error of a kink, and above the best error any
#: difference formula reaches on a badly scaled function.
CONVERGED_BELOW = 1e-6
#: The bottom of a V-curve is narrow: within a factor :data:`BOTTOM_FACTOR` of its smallest
#: error lie about two decades of steps (one where truncation ``O(h^k)`` grows, one where
#: rounding ``O(1/h)`` grows; the noise of the rounding branch widens it a little). A kink's
#: plateau of relative error ``P`` is flat from where curvature stops mattering (``h ~ P |f'|
#: / |f''|``) down to where rounding exceeds ``P`` (``h ~ eps |f| / (P |f'|)``): about
#: ``2 log10(P) + 15`` decades for a well-scaled loss, more than :data:`FLAT_DECADES` for any
#: ``P`` above 1e-5.
BOTTOM_FACTOR = 10.0
FLAT_DECADES = 4.0


def converges(study: StepStudy, method: str, window: int = 5) -> bool:
    """Whether ``method``'s estimate converges to the analytic derivative as ``h`` shrinks.

    A difference formula converges when its error falls with ``h`` (its truncation ``O(h^k)``)
    until rounding takes over: a V-curve. At a kink of ``f`` along the direction (a ReLU at 0,
    a max with a tie), the one-sided slopes differ and the difference quotients tend to one of
    them or to their mean, not to the derivative refimpl's convention picks: the error stays on
    a plateau, never falling, down to the steps where rounding takes over. There no step is
    "best", and :func:`best_step` would name an arbitrary point of the plateau.

    The rule, on the errors after the running median of :func:`best_step`: the method
    converges if its smallest error is at most :data:`CONVERGED_BELOW` (an estimate exact up to
    rounding at every step, a polynomial along the direction, converges too), or if the
    smallest error is the bottom of a V: the run of steps around it whose error is within
    :data:`BOTTOM_FACTOR` of the smallest spans at most :data:`FLAT_DECADES` decades and does
    not begin at the largest step (the error fell before it). A plateau, even one reached by
    a falling error, is no convergence.

    Parameters
    ----------
    study : StepStudy
    method : str
        One of :data:`METHODS`.
    window : int
        An odd number of neighbouring steps for the running median (as :func:`best_step`).

    Returns
    -------
    bool
    """
    medians = _median_log_errors(study, method, window)
    best = int(np.argmin(medians))
    if medians[best] <= np.log10(CONVERGED_BELOW):
        return True
    near = medians <= medians[best] + np.log10(BOTTOM_FACTOR)
    first = last = best
    while first > 0 and near[first - 1]:
        first -= 1
    while last + 1 < near.size and near[last + 1]:
        last += 1
    width = np.log10(study.steps[first]) - np.log10(study.steps[last])
    return bool(first > 0 and width <= FLAT_DECADES)
