"""Metric-learning losses on embeddings, as forward/backward pairs (PyTorch's conventions).

Legend: ``N`` batch (pairs or triplets), ``D`` embedding features.

The distance (``torch.nn.functional.pairwise_distance`` with ``p = 2``)::

    d(x1, x2) = ||x1 - x2 + eps||_2 = sqrt(sum_j (x1_j - x2_j + eps)^2)      per row

``eps`` is *added to every entry of the difference* (not to the norm, not under the square
root), as PyTorch does: two identical rows are ``eps sqrt(D)`` apart, not 0.

``TripletMarginLoss(margin=1.0, p=2, eps=1e-6)`` (``torch.nn.TripletMarginLoss``, ``swap=False``,
``reduction='mean'``)::

    L = (1/N) sum_n max(0, margin + d(a_n, p_n) - d(a_n, n_n))

``ContrastiveLoss(margin=1.0, eps=1e-6)`` (Hadsell, Chopra & LeCun 2006, *Dimensionality
Reduction by Learning an Invariant Mapping*; ``y = 1`` for a similar pair, ``0`` for a
dissimilar one)::

    L = (1/N) sum_n [ y_n d_n^2 + (1 - y_n) max(0, margin - d_n)^2 ],   d_n = d(x1_n, x2_n)

Mean over the pairs, and *no* factor 1/2: Hadsell et al. write ``(1/2) d^2`` and
``(1/2) max(0, m - d)^2`` (and label a similar pair ``Y = 0``); their loss is half of this one.

Non-differentiable points, and the derivative refimpl takes there
------------------------------------------------------------------
* ``d = 0`` (only where ``x1 - x2 = -eps`` in every entry): the norm has a cone point. refimpl
  takes 0 as the gradient of ``d`` there, as PyTorch's norm backward does (it masks a zero
  norm). The contrastive similar term uses ``d^2 = sum (x1 - x2 + eps)^2`` directly (no square
  root), which is smooth everywhere, gradient ``2 (x1 - x2 + eps)``.
* The triplet hinge ``z = margin + d(a, p) - d(a, n) = 0``: refimpl takes the derivative of the
  *active* side, 1 (the loss is counted as if ``z > 0``), because PyTorch's ``clamp_min``
  backward passes the gradient where ``z >= 0``; so at ``z = 0`` the loss is 0 and its
  gradient is not. (refimpl's ReLU takes ``relu'(0) = 0``, as PyTorch's ReLU does: the two
  PyTorch operations differ at 0, and refimpl follows each.)
* The contrastive margin ``d = margin``: ``max(0, margin - d)^2`` is continuously
  differentiable there (both one-sided derivatives are 0), so it is not a kink.

Second order
------------
Beside each pair, ``*_jvp`` (the forward-mode derivative) and ``*_backward_jvp`` (the
directional derivative of the backward pass). With ``u = diff / d`` (the distance's gradient)
and ``diff_dot = x1_dot - x2_dot`` (``eps`` is a constant)::

    d_dot = u . diff_dot,        u_dot = (diff_dot - u (u . diff_dot)) / d

(the Hessian of the norm is ``(I - u u^T) / d``). The hinges' masks are locally constant, so
the kink rules above carry over: at ``d = 0`` the norm's gradient is taken 0, hence ``d_dot``
and ``u_dot`` are 0 there; at the triplet hinge ``z = 0`` the active side's derivatives are
taken (``loss_dot = z_dot``, and the second derivative of ``z`` itself); at the contrastive
margin ``d = margin``, where the one-sided second derivatives of ``max(0, m - d)^2`` along a
tangent are 0 (outside) and ``2 d_dot^2`` (inside), the outside one, 0, as the forward pass's
mask takes it there.

Complex-step safety: the norm is ``sqrt(sum(diff * diff))`` (no ``abs``, no ``conj``), the
hinges branch on real parts and are used as constant masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._validate import (
    as_float_array,
    check_array,
    check_cache,
    check_nonempty,
    check_real,
    check_same_shape,
    check_scalar,
    check_shape,
)

__all__ = [
    "MetricLoss", "TripletMarginLoss", "ContrastiveLoss", "METRIC_LOSS_TYPES",
    "pairwise_distance_forward", "pairwise_distance_backward",
    "triplet_margin_loss_forward", "triplet_margin_loss_backward",
    "contrastive_loss_forward", "contrastive_loss_backward", "check_similarity_labels",
    "DistanceTangentCache", "TripletTangentCache", "pairwise_distance_jvp",
    "pairwise_distance_backward_jvp", "triplet_margin_loss_jvp",
    "triplet_margin_loss_backward_jvp", "contrastive_loss_jvp", "contrastive_loss_backward_jvp",
]

METRIC_LOSS_TYPES: dict[str, type] = {}

#: PyTorch's default ``eps`` of ``pairwise_distance`` and ``TripletMarginLoss``.
DEFAULT_EPS = 1e-6


class DistanceCache(NamedTuple):
    difference: np.ndarray  # (N, D) x1 - x2 + eps
    distance: np.ndarray    # (N,) sqrt(sum difference^2)


class TripletCache(NamedTuple):
    positive: DistanceCache  # d(anchor, positive)
    negative: DistanceCache  # d(anchor, negative)
    active: np.ndarray       # (N,) bool: Re z >= 0, z = margin + d_ap - d_an


class ContrastiveCache(NamedTuple):
    distance: DistanceCache
    similar: np.ndarray      # (N,) float64 y in {0, 1}
    slack: np.ndarray        # (N,) margin - d where Re(margin - d) > 0, else 0


class DistanceTangentCache(NamedTuple):
    """The tangent of the distance's input, what its backward's derivative needs."""

    difference_dot: np.ndarray   # (N, D) x1_dot - x2_dot


class TripletTangentCache(NamedTuple):
    positive: DistanceTangentCache   # of d(anchor, positive)
    negative: DistanceTangentCache   # of d(anchor, negative)


# --- the distance --------------------------------------------------------------------------

def pairwise_distance_forward(x1: np.ndarray, x2: np.ndarray, eps: float = DEFAULT_EPS
                              ) -> tuple[np.ndarray, DistanceCache]:
    """Row-wise ``d = ||x1 - x2 + eps||_2`` (``torch.nn.functional.pairwise_distance``, p=2).

    Parameters
    ----------
    x1, x2 : ndarray, shape (N, D)
        One shape exactly (nothing is broadcast).
    eps : float
        Added to every entry of ``x1 - x2``; finite, >= 0.

    Returns
    -------
    distance : ndarray, shape (N,)
    cache : DistanceCache

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for a non-array, a shape that is not (N, D), two shapes that
        differ, or a bad ``eps``.

    Examples
    --------
    >>> import numpy as np
    >>> d, _ = pairwise_distance_forward(np.array([[3.0, 0.0]]), np.array([[0.0, 4.0]]), 0.0)
    >>> float(d[0])
    5.0
    """
    x1 = check_array(x1, "pairwise_distance_forward: x1", ("N", "D"))
    x2 = check_array(x2, "pairwise_distance_forward: x2", ("N", "D"))
    check_same_shape(x1, x2, ("x1", "pairwise_distance_forward: x2"))
    eps = check_real(eps, "pairwise_distance_forward: eps", minimum=0)
    return _distance(x1, x2, eps)


def _distance(x1: np.ndarray, x2: np.ndarray, eps: float) -> tuple[np.ndarray, DistanceCache]:
    difference = x1 - x2 + eps                                   # (N, D)
    distance = np.sqrt((difference * difference).sum(axis=1))    # (N,), no abs: complex-safe
    return distance, DistanceCache(difference, distance)


def pairwise_distance_backward(ddistance: np.ndarray, cache: DistanceCache
                               ) -> tuple[np.ndarray, np.ndarray]:
    """``(dx1, dx2)``, each (N, D): ``dd/dx1 = (x1 - x2 + eps) / d = -dd/dx2``, times ``ddistance``
    (N,); 0 for a row with ``d = 0`` (PyTorch's subgradient of the norm at 0)."""
    check_cache(cache, DistanceCache, "pairwise_distance_backward: cache")
    ddistance = check_array(ddistance, "pairwise_distance_backward: ddistance",
                            cache.distance.shape)
    dx1 = _distance_gradient(cache) * ddistance[:, None]
    return dx1, -dx1


def _distance_gradient(cache: DistanceCache) -> np.ndarray:
    """``(x1 - x2 + eps) / d`` per row, (N, D); a zero row where ``d = 0`` (on Re)."""
    distance = cache.distance
    nonzero = distance.real > 0                                   # (N,) a constant mask
    safe = np.where(nonzero, distance, 1.0)                       # no 0/0 in the masked rows
    return np.where(nonzero[:, None], cache.difference / safe[:, None], 0.0)


def _distance_gradient_dot(cache: DistanceCache, difference_dot: np.ndarray) -> np.ndarray:
    """``u_dot = (diff_dot - u (u . diff_dot)) / d`` per row, (N, D): the tangent of the
    distance's gradient ``u = diff / d``; a zero row where ``d = 0`` (the gradient is taken 0
    there, a constant)."""
    distance = cache.distance
    nonzero = distance.real > 0                                   # (N,) a constant mask
    safe = np.where(nonzero, distance, 1.0)
    u = _distance_gradient(cache)                                 # (N, D)
    along = (u * difference_dot).sum(axis=1, keepdims=True)       # (N, 1) u . diff_dot
    return np.where(nonzero[:, None], (difference_dot - u * along) / safe[:, None], 0.0)


def _distance_dot(cache: DistanceCache, difference_dot: np.ndarray) -> np.ndarray:
    """``d_dot = u . diff_dot`` per row, (N,)."""
    return (_distance_gradient(cache) * difference_dot).sum(axis=1)


def pairwise_distance_jvp(x1_dot: np.ndarray, x2_dot: np.ndarray, cache: DistanceCache
                          ) -> tuple[np.ndarray, DistanceTangentCache]:
    """``d_dot = u . (x1_dot - x2_dot)`` per row with ``u = (x1 - x2 + eps) / d`` (0 where
    ``d = 0``).

    Parameters
    ----------
    x1_dot, x2_dot : ndarray, shape (N, D)
    cache : DistanceCache

    Returns
    -------
    distance_dot : ndarray, shape (N,)
    tangent_cache : DistanceTangentCache
    """
    check_cache(cache, DistanceCache, "pairwise_distance_jvp: cache")
    shape = cache.difference.shape
    x1_dot = check_array(x1_dot, "pairwise_distance_jvp: x1_dot", shape)
    x2_dot = check_array(x2_dot, "pairwise_distance_jvp: x2_dot", shape)
    difference_dot = x1_dot - x2_dot
    return _distance_dot(cache, difference_dot), DistanceTangentCache(difference_dot)


def pairwise_distance_backward_jvp(ddistance: np.ndarray, ddistance_dot: np.ndarray,
                                   cache: DistanceCache, tangent_cache: DistanceTangentCache
                                   ) -> tuple[np.ndarray, np.ndarray]:
    """Directional derivative of :func:`pairwise_distance_backward`: ``(dx1_dot, dx2_dot)``,
    each (N, D), ``dx1_dot = u ddistance_dot + u_dot ddistance = -dx2_dot`` (module
    docstring)."""
    who = "pairwise_distance_backward_jvp"
    check_cache(cache, DistanceCache, f"{who}: cache")
    check_cache(tangent_cache, DistanceTangentCache, f"{who}: tangent_cache")
    ddistance = check_array(ddistance, f"{who}: ddistance", cache.distance.shape)
    ddistance_dot = check_array(ddistance_dot, f"{who}: ddistance_dot", cache.distance.shape)
    check_array(tangent_cache.difference_dot, f"{who}: tangent_cache.difference_dot",
                cache.difference.shape)
    dx1_dot = (_distance_gradient(cache) * ddistance_dot[:, None]
               + _distance_gradient_dot(cache, tangent_cache.difference_dot)
               * ddistance[:, None])
    return dx1_dot, -dx1_dot


# --- triplet margin loss -------------------------------------------------------------------

def _check_margin(margin: Any, who: str) -> float:
    """A margin > 0, finite (PyTorch refuses ``margin <= 0`` for the triplet loss)."""
    value = check_real(margin, f"{who}: margin", minimum=0)
    if value == 0:
        raise ValueError(f"{who}: margin: expected a finite real number > 0, got {margin!r}")
    return value


def triplet_margin_loss_forward(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                                margin: float = 1.0, eps: float = DEFAULT_EPS
                                ) -> tuple[np.ndarray, TripletCache]:
    """``mean_n max(0, margin + d(a_n, p_n) - d(a_n, n_n))`` (``torch.nn.TripletMarginLoss``).

    Parameters
    ----------
    anchor, positive, negative : ndarray, shape (N, D)
        One shape exactly.
    margin : float
        > 0.
    eps : float
        The distance's ``eps`` (module docstring), >= 0.

    Returns
    -------
    loss : ndarray, 0-d
    cache : TripletCache

    Raises
    ------
    TypeError, ValueError
        Naming the argument, before any arithmetic.

    Examples
    --------
    >>> import numpy as np
    >>> a, p, n = np.zeros((1, 2)), np.array([[1.0, 0.0]]), np.array([[3.0, 0.0]])
    >>> float(triplet_margin_loss_forward(a, p, n, margin=2.5, eps=0.0)[0])   # 2.5 + 1 - 3
    0.5
    """
    who = "triplet_margin_loss_forward"
    anchor = check_array(anchor, f"{who}: anchor", ("N", "D"))
    check_nonempty(anchor, f"{who}: anchor")
    positive = check_array(positive, f"{who}: positive", ("N", "D"))
    negative = check_array(negative, f"{who}: negative", ("N", "D"))
    check_same_shape(anchor, positive, ("anchor", f"{who}: positive"))
    check_same_shape(anchor, negative, ("anchor", f"{who}: negative"))
    margin = _check_margin(margin, who)
    eps = check_real(eps, f"{who}: eps", minimum=0)
    return _triplet_forward(anchor, positive, negative, margin, eps)


def _triplet_forward(anchor, positive, negative, margin, eps):
    """:func:`triplet_margin_loss_forward` without the argument checks."""
    d_positive, positive_cache = _distance(anchor, positive, eps)     # (N,)
    d_negative, negative_cache = _distance(anchor, negative, eps)     # (N,)
    z = margin + d_positive - d_negative                              # (N,)
    active = z.real >= 0          # PyTorch's clamp_min passes the gradient where z >= 0
    loss = np.where(active, z, 0.0).sum() / z.shape[0]
    return loss, TripletCache(positive_cache, negative_cache, active)


def triplet_margin_loss_backward(dloss: Any, cache: TripletCache
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(danchor, dpositive, dnegative)``, each (N, D).

    With ``u = (a - p + eps) / d(a, p)`` and ``v = (a - n + eps) / d(a, n)`` (0 where the
    distance is 0), on an active row (``z >= 0``), times ``dloss / N``::

        dL/da = u - v,   dL/dp = -u,   dL/dn = +v

    and 0 on an inactive row. The three sum to 0 (the loss is invariant under a common
    translation of the three embeddings).
    """
    dloss = check_scalar(dloss, "triplet_margin_loss_backward: dloss")
    check_cache(cache, TripletCache, "triplet_margin_loss_backward: cache")
    return _triplet_backward(dloss, cache)


def _triplet_backward(dloss, cache):
    weight = cache.active * (dloss / cache.active.shape[0])              # (N,)
    toward_positive = _distance_gradient(cache.positive) * weight[:, None]  # (N, D)
    toward_negative = _distance_gradient(cache.negative) * weight[:, None]  # (N, D)
    return toward_positive - toward_negative, -toward_positive, toward_negative


def triplet_margin_loss_jvp(anchor_dot: np.ndarray, positive_dot: np.ndarray,
                            negative_dot: np.ndarray, cache: TripletCache
                            ) -> tuple[np.ndarray, TripletTangentCache]:
    """``loss_dot = (1/N) sum over active rows of (d_ap_dot - d_an_dot)``.

    Parameters
    ----------
    anchor_dot, positive_dot, negative_dot : ndarray, shape (N, D)
    cache : TripletCache

    Returns
    -------
    loss_dot : ndarray, 0-d
    tangent_cache : TripletTangentCache
    """
    who = "triplet_margin_loss_jvp"
    check_cache(cache, TripletCache, f"{who}: cache")
    shape = cache.positive.difference.shape
    tangents = [check_array(value, f"{who}: {name}", shape) for name, value in (
        ("anchor_dot", anchor_dot), ("positive_dot", positive_dot),
        ("negative_dot", negative_dot))]
    return _triplet_jvp(tangents, cache)


def _triplet_jvp(tangents, cache):
    anchor_dot, positive_dot, negative_dot = tangents
    tangent_cache = TripletTangentCache(DistanceTangentCache(anchor_dot - positive_dot),
                                        DistanceTangentCache(anchor_dot - negative_dot))
    z_dot = (_distance_dot(cache.positive, tangent_cache.positive.difference_dot)
             - _distance_dot(cache.negative, tangent_cache.negative.difference_dot))   # (N,)
    return (cache.active * z_dot).sum() / z_dot.shape[0], tangent_cache


def triplet_margin_loss_backward_jvp(dloss: Any, dloss_dot: Any, cache: TripletCache,
                                     tangent_cache: TripletTangentCache
                                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directional derivative of :func:`triplet_margin_loss_backward`:
    ``(danchor_dot, dpositive_dot, dnegative_dot)``, each (N, D).

    With ``w = active dloss / N`` and its tangent ``w_dot = active dloss_dot / N`` (the hinge's
    mask is locally constant), ``toward_positive = u w`` has the tangent ``u_dot w + u w_dot``
    (and likewise ``v`` for the negative), and the three outputs combine them as the backward
    pass does: ``(tp - tn, -tp, tn)``.
    """
    who = "triplet_margin_loss_backward_jvp"
    dloss = check_scalar(dloss, f"{who}: dloss")
    dloss_dot = check_scalar(dloss_dot, f"{who}: dloss_dot")
    check_cache(cache, TripletCache, f"{who}: cache")
    check_cache(tangent_cache, TripletTangentCache, f"{who}: tangent_cache")
    return _triplet_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


def _triplet_backward_jvp(dloss, dloss_dot, cache, tangent_cache):
    count = cache.active.shape[0]
    weight = (cache.active * (dloss / count))[:, None]                  # (N, 1)
    weight_dot = (cache.active * (dloss_dot / count))[:, None]          # (N, 1)
    towards = []
    for distance, tangent in ((cache.positive, tangent_cache.positive),
                              (cache.negative, tangent_cache.negative)):
        towards.append(_distance_gradient_dot(distance, tangent.difference_dot) * weight
                       + _distance_gradient(distance) * weight_dot)     # (N, D)
    toward_positive, toward_negative = towards
    return toward_positive - toward_negative, -toward_positive, toward_negative


# --- contrastive loss ----------------------------------------------------------------------

def check_similarity_labels(y: Any, batch: int, name: str) -> np.ndarray:
    """Pair labels ``y`` of shape ``(batch,)``, every value 0 (dissimilar) or 1 (similar), of
    an integer or real dtype; returned as float64. ``TypeError`` / ``ValueError`` naming
    ``name`` otherwise."""
    array = as_float_array(y, name, allow_complex=False)
    check_shape(array, (batch,), name)
    bad = (array != 0) & (array != 1)
    if bad.any():
        raise ValueError(f"{name}: expected labels 0 (dissimilar) or 1 (similar), got "
                         f"{float(array[bad][0])!r} at index {int(np.flatnonzero(bad)[0])}")
    return array


def contrastive_loss_forward(x1: np.ndarray, x2: np.ndarray, y: Any, margin: float = 1.0,
                             eps: float = DEFAULT_EPS) -> tuple[np.ndarray, ContrastiveCache]:
    """``mean_n [y_n d_n^2 + (1 - y_n) max(0, margin - d_n)^2]`` (module docstring).

    Parameters
    ----------
    x1, x2 : ndarray, shape (N, D)
        One shape exactly.
    y : array_like, shape (N,)
        1 for a similar pair, 0 for a dissimilar one.
    margin : float
        > 0.
    eps : float
        The distance's ``eps``, >= 0.

    Returns
    -------
    loss : ndarray, 0-d
    cache : ContrastiveCache

    Raises
    ------
    TypeError, ValueError
        Naming the argument, before any arithmetic.

    Examples
    --------
    >>> import numpy as np
    >>> x1, x2 = np.zeros((2, 1)), np.array([[0.5], [0.5]])
    >>> float(contrastive_loss_forward(x1, x2, np.array([1, 0]), margin=2.0, eps=0.0)[0])
    1.25
    """
    who = "contrastive_loss_forward"
    x1 = check_array(x1, f"{who}: x1", ("N", "D"))
    check_nonempty(x1, f"{who}: x1")
    x2 = check_array(x2, f"{who}: x2", ("N", "D"))
    check_same_shape(x1, x2, ("x1", f"{who}: x2"))
    y = check_similarity_labels(y, x1.shape[0], f"{who}: y")
    margin = _check_margin(margin, who)
    eps = check_real(eps, f"{who}: eps", minimum=0)
    return _contrastive_forward(x1, x2, y, margin, eps)


def _contrastive_forward(x1, x2, y, margin, eps):
    """:func:`contrastive_loss_forward` without the argument checks."""
    distance, cache = _distance(x1, x2, eps)                          # (N,)
    squared = (cache.difference * cache.difference).sum(axis=1)       # (N,) d^2, no sqrt
    slack = margin - distance                                         # (N,)
    slack = np.where(slack.real > 0, slack, 0.0)                      # max(0, m - d) on Re
    per_pair = y * squared + (1 - y) * (slack * slack)                # (N,)
    return per_pair.sum() / y.shape[0], ContrastiveCache(cache, y, slack)


def contrastive_loss_backward(dloss: Any, cache: ContrastiveCache
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``(dx1, dx2)``, each (N, D), ``dx2 = -dx1``; with ``diff = x1 - x2 + eps``, times
    ``dloss / N``::

        similar pair:     d(d^2)/dx1 = 2 diff
        dissimilar pair:  d(max(0, m - d)^2)/dx1 = -2 max(0, m - d) diff / d   (0 if d = 0)
    """
    dloss = check_scalar(dloss, "contrastive_loss_backward: dloss")
    check_cache(cache, ContrastiveCache, "contrastive_loss_backward: cache")
    return _contrastive_backward(dloss, cache)


def _contrastive_backward(dloss, cache):
    y, slack = cache.similar, cache.slack
    scale = dloss / y.shape[0]
    # term 1: y d^2, smooth: 2 diff.   term 2: (1 - y) s^2 with s = m - d: 2 s (-dd/dx1).
    similar = (2 * y * scale)[:, None] * cache.distance.difference            # (N, D)
    dissimilar = (-2 * (1 - y) * slack * scale)[:, None] * _distance_gradient(cache.distance)
    dx1 = similar + dissimilar
    return dx1, -dx1


def contrastive_loss_jvp(x1_dot: np.ndarray, x2_dot: np.ndarray, cache: ContrastiveCache
                         ) -> tuple[np.ndarray, DistanceTangentCache]:
    """``loss_dot = (1/N) sum [y 2 diff . diff_dot - (1 - y) 2 max(0, m - d) d_dot]`` with
    ``diff_dot = x1_dot - x2_dot`` and ``d_dot = u . diff_dot``.

    Parameters
    ----------
    x1_dot, x2_dot : ndarray, shape (N, D)
    cache : ContrastiveCache

    Returns
    -------
    loss_dot : ndarray, 0-d
    tangent_cache : DistanceTangentCache
    """
    check_cache(cache, ContrastiveCache, "contrastive_loss_jvp: cache")
    shape = cache.distance.difference.shape
    x1_dot = check_array(x1_dot, "contrastive_loss_jvp: x1_dot", shape)
    x2_dot = check_array(x2_dot, "contrastive_loss_jvp: x2_dot", shape)
    return _contrastive_jvp((x1_dot, x2_dot), cache)


def _contrastive_jvp(tangents, cache):
    x1_dot, x2_dot = tangents
    difference_dot = x1_dot - x2_dot                                         # (N, D)
    y, slack = cache.similar, cache.slack
    squared_dot = 2 * (cache.distance.difference * difference_dot).sum(axis=1)   # (d^2)_dot
    slack_dot = -_distance_dot(cache.distance, difference_dot)               # (m - d)_dot
    per_pair = y * squared_dot + (1 - y) * (2 * slack * slack_dot)           # (N,)
    return per_pair.sum() / y.shape[0], DistanceTangentCache(difference_dot)


def contrastive_loss_backward_jvp(dloss: Any, dloss_dot: Any, cache: ContrastiveCache,
                                  tangent_cache: DistanceTangentCache
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """Directional derivative of :func:`contrastive_loss_backward`: ``(dx1_dot, dx2_dot)``,
    each (N, D), ``dx2_dot = -dx1_dot``; with ``scale = dloss / N``::

        term 1 (similar):     2 y (scale_dot diff + scale diff_dot)
        term 2 (dissimilar):  -2 (1 - y) (s_dot scale u + s scale_dot u + s scale u_dot)

    where ``s = max(0, m - d)`` and ``s_dot = -d_dot`` on the rows inside the margin (0
    outside, and at ``d = m``).
    """
    who = "contrastive_loss_backward_jvp"
    dloss = check_scalar(dloss, f"{who}: dloss")
    dloss_dot = check_scalar(dloss_dot, f"{who}: dloss_dot")
    check_cache(cache, ContrastiveCache, f"{who}: cache")
    check_cache(tangent_cache, DistanceTangentCache, f"{who}: tangent_cache")
    check_array(tangent_cache.difference_dot, f"{who}: tangent_cache.difference_dot",
                cache.distance.difference.shape)
    return _contrastive_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


def _contrastive_backward_jvp(dloss, dloss_dot, cache, tangent_cache):
    y, slack, distance = cache.similar, cache.slack, cache.distance
    count = y.shape[0]
    scale, scale_dot = dloss / count, dloss_dot / count
    difference_dot = tangent_cache.difference_dot
    inside = slack.real > 0                                                  # (N,) constant
    slack_dot = np.where(inside, -_distance_dot(distance, difference_dot), 0.0)   # (N,)
    similar = (2 * y)[:, None] * (scale_dot * distance.difference + scale * difference_dot)
    u = _distance_gradient(distance)
    dissimilar = (-2 * (1 - y))[:, None] * (
        (slack_dot * scale + slack * scale_dot)[:, None] * u
        + (slack * scale)[:, None] * _distance_gradient_dot(distance, difference_dot))
    dx1_dot = similar + dissimilar
    return dx1_dot, -dx1_dot


# --- specs ---------------------------------------------------------------------------------

class MetricLoss:
    """Base of the metric-loss specs that :class:`refimpl.nn.Siamese` takes.

    ``branches`` embeddings (N, D) in, one scalar out; ``needs_target``: whether pair labels
    ``y`` are given.
    """

    branches: ClassVar[int] = 2
    needs_target: ClassVar[bool] = False

    def check_target(self, y: Any, batch: int) -> np.ndarray | None:
        raise NotImplementedError

    def forward(self, outputs: tuple[np.ndarray, ...], y: np.ndarray | None
                ) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(self, dloss: Any, cache: Any) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def jvp(self, outputs_dot: tuple[np.ndarray, ...], cache: Any) -> tuple[np.ndarray, Any]:
        """``(loss_dot, tangent_cache)`` along the embeddings' tangents (second order)."""
        raise NotImplementedError

    def backward_jvp(self, dloss: Any, dloss_dot: Any, cache: Any,
                     tangent_cache: Any) -> tuple[np.ndarray, ...]:
        """The tangents of :meth:`backward`'s embedding gradients (second order)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__,
                **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)}}


def _register(cls: type) -> type:
    METRIC_LOSS_TYPES[cls.__name__] = cls
    return cls


@_register
@dataclass(frozen=True)
class TripletMarginLoss(MetricLoss):
    """``mean max(0, margin + ||a - p + eps|| - ||a - n + eps||)``
    (``torch.nn.TripletMarginLoss(margin, p=2, eps)``, swap=False); three branches."""

    margin: float = 1.0
    p: int = 2
    eps: float = DEFAULT_EPS
    branches: ClassVar[int] = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "margin", _check_margin(self.margin, "TripletMarginLoss"))
        if isinstance(self.p, bool) or self.p != 2:
            raise ValueError(f"TripletMarginLoss: p: only the Euclidean distance p=2 is "
                             f"implemented, got {self.p!r}")
        object.__setattr__(self, "p", 2)
        object.__setattr__(self, "eps", check_real(self.eps, "TripletMarginLoss: eps",
                                                   minimum=0))

    def check_target(self, y, batch):
        if y is not None:
            raise ValueError("y: the triplet loss takes no labels (anchor, positive, negative "
                             "say which pairs are similar); got y")
        return None

    def forward(self, outputs, y):
        return _triplet_forward(*outputs, self.margin, self.eps)

    def backward(self, dloss, cache):
        return _triplet_backward(dloss, cache)

    def jvp(self, outputs_dot, cache):
        return _triplet_jvp(outputs_dot, cache)

    def backward_jvp(self, dloss, dloss_dot, cache, tangent_cache):
        return _triplet_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


@_register
@dataclass(frozen=True)
class ContrastiveLoss(MetricLoss):
    """``mean [y d^2 + (1 - y) max(0, margin - d)^2]``, ``d = ||x1 - x2 + eps||``, y = 1 for a
    similar pair (Hadsell et al. 2006, without their factor 1/2); two branches."""

    margin: float = 1.0
    eps: float = DEFAULT_EPS
    branches: ClassVar[int] = 2
    needs_target: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "margin", _check_margin(self.margin, "ContrastiveLoss"))
        object.__setattr__(self, "eps", check_real(self.eps, "ContrastiveLoss: eps",
                                                   minimum=0))

    def check_target(self, y, batch):
        if y is None:
            raise ValueError("y: the contrastive loss needs pair labels y (N,): 1 similar, "
                             "0 dissimilar")
        return check_similarity_labels(y, batch, "y")

    def forward(self, outputs, y):
        return _contrastive_forward(*outputs, y, self.margin, self.eps)

    def backward(self, dloss, cache):
        return _contrastive_backward(dloss, cache)

    def jvp(self, outputs_dot, cache):
        return _contrastive_jvp(outputs_dot, cache)

    def backward_jvp(self, dloss, dloss_dot, cache, tangent_cache):
        return _contrastive_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


def metric_loss_from_config(config: Any, what: str = "loss") -> MetricLoss:
    """Inverse of :meth:`MetricLoss.config`: ``{"type": "TripletMarginLoss", "margin": ...}``.

    ``TypeError`` / ``ValueError`` naming ``what`` for a non-dict or an unknown type; the
    fields are then checked by the spec.
    """
    if not isinstance(config, dict) or config.get("type") not in METRIC_LOSS_TYPES:
        raise ValueError(f"{what}: expected {{'type': one of {sorted(METRIC_LOSS_TYPES)}, ...}}, "
                         f"got {config!r:.80}")
    cls = METRIC_LOSS_TYPES[config["type"]]
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields - {"type"})
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown} of {config['type']}; expected "
                         f"some of {sorted(fields)}")
    return cls(**{key: value for key, value in config.items() if key != "type"})
