"""Penalties between two matched arrays, as forward/backward pairs of free functions.

Goodfellow, Bengio & Courville, *Deep Learning*, section 7.9. Each penalty acts on one matched
pair of arrays ``a``, ``b`` of one shape ``S`` (exact shapes, nothing broadcast):

``"l2"`` (squared L2, the default)
    ``lam * sum (a - b)^2``; gradients ``+2 lam (a - b)`` for ``a`` and ``-2 lam (a - b)``
    for ``b``.
``"l1"``
    ``lam * sum |a - b|``; subgradients ``+lam sign(a - b)`` and ``-lam sign(a - b)`` with
    ``sign(0) = 0`` (PyTorch's ``torch.sign``). ``|d|`` is written ``sign(Re d) * d``: the sign is
    a constant mask, so the complex step differentiates it exactly away from ``a == b``.

An *anchored* penalty pulls one array towards a fixed reference ``w0`` (no gradient flows
into ``w0``): weight decay is ``w0 = 0``, transfer learning's L2-SP is ``w0`` = pretrained
weights. Squared L2 weight decay ``lam ||w||^2`` has gradient ``2 lam w``: PyTorch's
``weight_decay = 2 lam``.

Second order: beside each pair, ``*_jvp(a_dot, b_dot, cache) -> (value_dot, tangent_cache)``
and ``*_backward_jvp(dvalue, dvalue_dot, cache, tangent_cache) -> (grad_a_dot, grad_b_dot)``.
The squared L2 penalty's Hessian is the constant ``2 lam [[I, -I], [-I, I]]``: along the
tangents ``(a_dot, b_dot)`` the gradient of ``a`` moves by ``2 lam (a_dot - b_dot)`` and that of
``b`` by ``-2 lam (a_dot - b_dot)``. The L1 penalty's Hessian is 0 away from ``a == b`` (its
subgradient ``sign`` is locally constant); at ``a == b`` it is taken 0 too, with the backward
pass's ``sign(0) = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_array, check_cache, check_real, check_same_shape, check_scalar

__all__ = [
    "l2_penalty_forward", "l2_penalty_backward", "l1_penalty_forward", "l1_penalty_backward",
    "anchored_penalty_forward", "anchored_penalty_backward", "Penalty", "PENALTIES",
    "penalty_by_name", "check_lam", "L2PenaltyCache", "L1PenaltyCache",
    "PenaltyTangentCache", "l2_penalty_jvp", "l2_penalty_backward_jvp", "l1_penalty_jvp",
    "l1_penalty_backward_jvp", "anchored_penalty_jvp", "anchored_penalty_backward_jvp",
]

class L2PenaltyCache(NamedTuple):
    difference: np.ndarray  # (S) a - b
    lam: float


class L1PenaltyCache(NamedTuple):
    sign: np.ndarray  # (S) sign(Re(a - b)) in {-1, 0, 1}: the subgradient of |a - b|
    lam: float


class PenaltyTangentCache(NamedTuple):
    difference_dot: np.ndarray  # (S) a_dot - b_dot


def _check_penalty_arguments(a: Any, b: Any, lam: Any, who: str,
                             names: tuple[str, str] = ("a", "b")) -> tuple[Any, Any, float]:
    """Two numeric arrays of one shape exactly (nothing broadcast) and ``lam`` >= 0, finite;
    ``TypeError`` / ``ValueError`` naming the argument."""
    a = check_array(a, f"{who}: {names[0]}")
    b = check_array(b, f"{who}: {names[1]}")
    check_same_shape(a, b, (names[0], f"{who}: {names[1]}"))
    return a, b, check_lam(lam, f"{who}: lam")


def _check_penalty_backward(dvalue: Any, cache: Any, cache_types: tuple[type, ...],
                            who: str) -> None:
    check_scalar(dvalue, f"{who}: dvalue")
    if not isinstance(cache, cache_types):
        check_cache(cache, cache_types[0], f"{who}: cache")


def l2_penalty_forward(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L2PenaltyCache]:
    """Squared L2 distance ``lam * sum (a - b)^2``.

    Parameters
    ----------
    a, b : ndarray, shape (S)
        One shape exactly (nothing is broadcast).
    lam : float
        The strength, >= 0.

    Returns
    -------
    value : ndarray, 0-d
        Complex under the complex step.
    cache : L2PenaltyCache
    """
    return _l2_penalty(*_check_penalty_arguments(a, b, lam, "l2_penalty_forward"))


def _l2_penalty(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L2PenaltyCache]:
    difference = a - b                                  # (S)
    return lam * (difference * difference).sum(), L2PenaltyCache(difference, lam)


def l2_penalty_backward(dvalue: Any, cache: L2PenaltyCache) -> tuple[np.ndarray, np.ndarray]:
    """``(dvalue * 2 lam (a - b), -dvalue * 2 lam (a - b))``, each (S).

    d/da (a - b)^2 = 2 (a - b), and b enters with the opposite sign: the two gradients are
    exact negatives, so the penalty never moves the pair's mean ((a + b) / 2).
    """
    _check_penalty_backward(dvalue, cache, (L2PenaltyCache,), "l2_penalty_backward")
    grad_a = cache.difference * (2 * cache.lam * dvalue)
    return grad_a, -grad_a


def l1_penalty_forward(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L1PenaltyCache]:
    """L1 distance ``lam * sum |a - b|``, written ``lam * sum sign(Re(a - b)) * (a - b)``.

    The sign is taken of the real part and used as a constant mask (never ``abs`` on a
    complex value), so the complex step sees the exact derivative where ``a != b``.
    Arguments and results as :func:`l2_penalty_forward`, with an :class:`L1PenaltyCache`.
    """
    return _l1_penalty(*_check_penalty_arguments(a, b, lam, "l1_penalty_forward"))


def _l1_penalty(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L1PenaltyCache]:
    difference = a - b                                  # (S)
    sign = np.sign(difference.real)                     # (S), constant: -1, 0 or +1
    return lam * (sign * difference).sum(), L1PenaltyCache(sign, lam)


def l1_penalty_backward(dvalue: Any, cache: L1PenaltyCache) -> tuple[np.ndarray, np.ndarray]:
    """``(dvalue * lam sign(a - b), -dvalue * lam sign(a - b))`` with ``sign(0) = 0``.

    At ``a == b`` the L1 norm has a kink; 0 is the subgradient PyTorch's ``sign`` gives.
    """
    _check_penalty_backward(dvalue, cache, (L1PenaltyCache,), "l1_penalty_backward")
    grad_a = cache.sign * (cache.lam * dvalue)
    return grad_a, -grad_a


def _check_penalty_tangents(a_dot: Any, b_dot: Any, cache: Any, who: str,
                            names: tuple[str, str] = ("a_dot", "b_dot")) -> np.ndarray:
    """``a_dot - b_dot`` of two tangents of the cached difference's shape (``b_dot`` None: a
    fixed reference)."""
    if not isinstance(cache, (L2PenaltyCache, L1PenaltyCache)):
        check_cache(cache, L2PenaltyCache, f"{who}: cache")
    shape = (cache.difference if isinstance(cache, L2PenaltyCache) else cache.sign).shape
    a_dot = check_array(a_dot, f"{who}: {names[0]}", shape)
    if b_dot is None:
        return a_dot
    return a_dot - check_array(b_dot, f"{who}: {names[1]}", shape)


def _check_penalty_backward_tangents(dvalue: Any, dvalue_dot: Any, cache: Any,
                                     tangent_cache: Any, cache_types: tuple[type, ...],
                                     who: str) -> None:
    _check_penalty_backward(dvalue, cache, cache_types, who)
    check_scalar(dvalue_dot, f"{who}: dvalue_dot")
    check_cache(tangent_cache, PenaltyTangentCache, f"{who}: tangent_cache")


def l2_penalty_jvp(a_dot: np.ndarray, b_dot: np.ndarray, cache: L2PenaltyCache
                   ) -> tuple[Any, PenaltyTangentCache]:
    """``value_dot = 2 lam sum (a - b)(a_dot - b_dot)``; ``a_dot``, ``b_dot``: (S).

    Returns the 0-d ``value_dot`` and the tangent cache.
    """
    check_cache(cache, L2PenaltyCache, "l2_penalty_jvp: cache")
    return _l2_penalty_jvp(_check_penalty_tangents(a_dot, b_dot, cache, "l2_penalty_jvp"),
                           cache)


def _l2_penalty_jvp(difference_dot, cache):
    return (2 * cache.lam * (cache.difference * difference_dot).sum(),
            PenaltyTangentCache(difference_dot))


def l2_penalty_backward_jvp(dvalue: Any, dvalue_dot: Any, cache: L2PenaltyCache,
                            tangent_cache: PenaltyTangentCache
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Directional derivative of :func:`l2_penalty_backward`, each (S)::

        grad_a_dot = 2 lam (dvalue_dot (a - b) + dvalue (a_dot - b_dot)) = -grad_b_dot

    With ``dvalue = 1``, ``dvalue_dot = 0`` it is the Hessian ``2 lam [[I, -I], [-I, I]]``
    applied to ``(a_dot, b_dot)``.
    """
    _check_penalty_backward_tangents(dvalue, dvalue_dot, cache, tangent_cache,
                                     (L2PenaltyCache,), "l2_penalty_backward_jvp")
    return _l2_penalty_backward_jvp(dvalue, dvalue_dot, cache, tangent_cache)


def _l2_penalty_backward_jvp(dvalue, dvalue_dot, cache, tangent_cache):
    grad_a_dot = 2 * cache.lam * (cache.difference * dvalue_dot
                                  + tangent_cache.difference_dot * dvalue)
    return grad_a_dot, -grad_a_dot


def l1_penalty_jvp(a_dot: np.ndarray, b_dot: np.ndarray, cache: L1PenaltyCache
                   ) -> tuple[Any, PenaltyTangentCache]:
    """``value_dot = lam sum sign(a - b) (a_dot - b_dot)`` (``sign(0) = 0``, the backward
    pass's subgradient); ``a_dot``, ``b_dot``: (S)."""
    check_cache(cache, L1PenaltyCache, "l1_penalty_jvp: cache")
    return _l1_penalty_jvp(_check_penalty_tangents(a_dot, b_dot, cache, "l1_penalty_jvp"),
                           cache)


def _l1_penalty_jvp(difference_dot, cache):
    return (cache.lam * (cache.sign * difference_dot).sum(),
            PenaltyTangentCache(difference_dot))


def l1_penalty_backward_jvp(dvalue: Any, dvalue_dot: Any, cache: L1PenaltyCache,
                            tangent_cache: PenaltyTangentCache
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``grad_a_dot = dvalue_dot lam sign(a - b) = -grad_b_dot``: the subgradient is locally
    constant, so the L1 penalty's Hessian is 0 (taken 0 at ``a == b`` too)."""
    _check_penalty_backward_tangents(dvalue, dvalue_dot, cache, tangent_cache,
                                     (L1PenaltyCache,), "l1_penalty_backward_jvp")
    return _l1_penalty_backward_jvp(dvalue, dvalue_dot, cache, tangent_cache)


def _l1_penalty_backward_jvp(dvalue, dvalue_dot, cache, tangent_cache):
    grad_a_dot = cache.sign * (cache.lam * dvalue_dot)
    return grad_a_dot, -grad_a_dot


class Penalty(NamedTuple):
    """A penalty by name: ``forward(a, b, lam) -> (value, cache)`` and
    ``backward(dvalue, cache) -> (grad_a, grad_b)``; for second order ``jvp(a_dot, b_dot,
    cache) -> (value_dot, tangent_cache)`` and ``backward_jvp(dvalue, dvalue_dot, cache,
    tangent_cache) -> (grad_a_dot, grad_b_dot)``."""

    name: str
    forward: Callable[[np.ndarray, np.ndarray, float], tuple[Any, Any]]
    backward: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]
    jvp: Callable[[np.ndarray, np.ndarray, Any], tuple[Any, Any]] | None = None
    backward_jvp: Callable[[Any, Any, Any, Any], tuple[np.ndarray, np.ndarray]] | None = None


#: The penalties by their ``penalty=`` name.
PENALTIES: dict[str, Penalty] = {
    "l2": Penalty("l2", l2_penalty_forward, l2_penalty_backward, l2_penalty_jvp,
                  l2_penalty_backward_jvp),
    "l1": Penalty("l1", l1_penalty_forward, l1_penalty_backward, l1_penalty_jvp,
                  l1_penalty_backward_jvp),
}


def anchored_penalty_forward(
    w: np.ndarray, reference: np.ndarray, lam: float, penalty: str = "l2"
) -> tuple[Any, Any]:
    """One-sided penalty towards a fixed ``reference``: ``lam * ||w - reference||`` (the
    norm of ``penalty``). ``w``, ``reference``: (S). Returns the value and the cache."""
    core = _l1_penalty if penalty_by_name(penalty).name == "l1" else _l2_penalty
    return core(*_check_penalty_arguments(w, reference, lam, "anchored_penalty_forward",
                                          ("w", "reference")))


def anchored_penalty_backward(dvalue: Any, cache: Any) -> np.ndarray:
    """Gradient with respect to ``w`` only (the reference is a constant): (S).

    Either cache type of :data:`PENALTIES` works; the reference's gradient is dropped.
    """
    _check_penalty_backward(dvalue, cache, (L2PenaltyCache, L1PenaltyCache),
                            "anchored_penalty_backward")
    backward = l1_penalty_backward if isinstance(cache, L1PenaltyCache) else l2_penalty_backward
    return backward(dvalue, cache)[0]


def anchored_penalty_jvp(w_dot: np.ndarray, cache: Any) -> tuple[Any, PenaltyTangentCache]:
    """``value_dot`` of the anchored penalty along ``w_dot`` (S) (the reference is a constant:
    no tangent). Either cache type of :data:`PENALTIES` works."""
    difference_dot = _check_penalty_tangents(w_dot, None, cache, "anchored_penalty_jvp",
                                             ("w_dot", ""))
    if isinstance(cache, L1PenaltyCache):
        return _l1_penalty_jvp(difference_dot, cache)
    return _l2_penalty_jvp(difference_dot, cache)


def anchored_penalty_backward_jvp(dvalue: Any, dvalue_dot: Any, cache: Any,
                                  tangent_cache: PenaltyTangentCache) -> np.ndarray:
    """The tangent of :func:`anchored_penalty_backward`'s gradient, (S): ``2 lam (dvalue_dot
    (w - w0) + dvalue w_dot)`` for ``"l2"`` (the Hessian ``2 lam I``), ``dvalue_dot lam
    sign(w - w0)`` for ``"l1"`` (the Hessian 0)."""
    _check_penalty_backward_tangents(dvalue, dvalue_dot, cache, tangent_cache,
                                     (L2PenaltyCache, L1PenaltyCache),
                                     "anchored_penalty_backward_jvp")
    backward_jvp = (_l1_penalty_backward_jvp if isinstance(cache, L1PenaltyCache)
                    else _l2_penalty_backward_jvp)
    return backward_jvp(dvalue, dvalue_dot, cache, tangent_cache)[0]


def penalty_by_name(name: Any) -> Penalty:
    """The :class:`Penalty` called ``name`` (``ValueError`` naming ``penalty`` otherwise)."""
    if not isinstance(name, str) or name not in PENALTIES:
        raise ValueError(f"penalty: unknown penalty {name!r}; expected one of {sorted(PENALTIES)}")
    return PENALTIES[name]



def check_lam(value: Any, name: str = "lam") -> float:
    """A penalty strength: a finite real number >= 0 (``TypeError`` / ``ValueError`` otherwise)."""
    return check_real(value, name, minimum=0)

