"""Losses as forward/backward pairs, reduced by the mean as PyTorch's defaults.

Legend: ``N`` batch, ``K`` classes, ``...`` any further axes (``T`` time steps, say).

``*_forward(out, target) -> (loss, cache)`` returns a 0-d value (complex under the complex
step); ``*_backward(dloss, cache) -> dout`` takes the upstream scalar ``dloss`` (1 for a
plain loss; any number in a property test, which checks linearity in it).

Second order (the targets are data: they have no tangent):
``*_jvp(out_dot, cache) -> (loss_dot, tangent_cache)`` is the directional derivative
``loss_dot = <dL/dout, out_dot>``, and ``*_backward_jvp(dloss, dloss_dot, cache,
tangent_cache) -> dout_dot`` the directional derivative of the backward pass
``dout = dloss g(out)``: ``dout_dot = dloss_dot g + dloss (d^2 L / dout^2) out_dot``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._validate import (
    as_float_array,
    as_label_array,
    as_rectangular,
    check_array,
    check_cache,
    check_nonempty,
    check_same_shape,
    check_scalar,
    check_shape,
)
from .base import InputTangentCache

__all__ = [
    "Loss", "SoftmaxCrossEntropy", "MSE",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "mse_forward", "mse_backward", "LOSS_TYPES", "cross_entropy_rows", "squared_errors",
    "softmax_cross_entropy_jvp", "softmax_cross_entropy_backward_jvp", "mse_jvp",
    "mse_backward_jvp",
]

LOSS_TYPES: dict[str, type] = {}


class CrossEntropyCache(NamedTuple):
    probabilities: np.ndarray  # (N, ..., K) softmax of the logits
    labels: np.ndarray         # (N, ...) int64


class MSECache(NamedTuple):
    difference: np.ndarray  # out - target, any shape


def softmax_cross_entropy_forward(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, CrossEntropyCache]:
    """Mean over every label position of ``-log softmax(logits)[label]``.

    Logits ``(N, ..., K)`` with labels ``(N, ...)``: every position is one example, and the
    mean is over all ``P = N * ...`` of them (PyTorch's ``cross_entropy`` on the logits
    flattened to ``(P, K)``; sequence labelling is ``(N, T, K)`` with labels ``(N, T)``).

    Stable through log-sum-exp: each row's largest logit (largest real part; the index is
    chosen on Re only) is subtracted first, hence logits of +-1e4 give finite results. The
    shift is the logit itself, complex under the complex step: log-softmax is invariant under
    any per-row shift, and the top entry becomes exactly 0, so ``log(total)`` is
    ``log1p(sum of the other terms)`` without rounding 1 + tiny. That keeps a confident right
    prediction (loss ~ e^-margin) accurate *relatively*, in value and in complex-step
    derivative (``Im log(total) - h`` would cancel).

    ``TypeError`` / ``ValueError`` naming the argument for an empty or misshapen ``logits``,
    labels that are not integers of shape ``logits.shape[:-1]``, or labels outside [0, K).

    Parameters
    ----------
    logits : ndarray, shape (N, K) or (N, ..., K)
    labels : ndarray of int, shape (N,) or (N, ...)
        Class indices in ``[0, K)``.

    Returns
    -------
    loss : ndarray, 0-d
    cache : CrossEntropyCache
    """
    # rank >= 3 (N, ..., K) positions; anything else is held to (N, K) and its message
    logits = check_array(logits, "softmax_cross_entropy_forward: logits",
                         ("N", "T", ...) if np.ndim(logits) > 2 else ("N", "K"))
    check_nonempty(logits, "softmax_cross_entropy_forward: logits")
    labels = _label_positions(labels, "softmax_cross_entropy_forward: labels",
                              logits.shape[:-1], logits.shape[-1])
    return _softmax_cross_entropy_forward(logits, labels)


def _label_positions(value: Any, name: str, positions: tuple[int, ...], classes: int
                     ) -> np.ndarray:
    """Integer labels of shape ``positions`` exactly, in ``[0, classes)``, as int64.

    A label array of another shape is an error even when it has as many entries (labels
    flattened to ``(N * T,)`` for logits ``(N, T, K)`` would otherwise be paired with the
    wrong positions without a word)."""
    array = as_rectangular(value, name)
    if array.shape == tuple(positions):
        flat = as_label_array(array.reshape(-1), name, array.size, classes)
        return flat.reshape(array.shape)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class labels, got dtype {array.dtype}")
    raise ValueError(f"{name}: expected shape {tuple(positions)}, got {array.shape}")


def cross_entropy_rows(logits: np.ndarray, labels: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The cross-entropy of every row and the softmax probabilities, without checks.

    The one place the stable log-sum-exp is written: :func:`softmax_cross_entropy_forward`
    takes the mean of the rows' values, and a gradient check that evaluates many perturbed
    copies at once (:mod:`refimpl.gradcheck.copies`) stacks the copies' rows.

    Parameters
    ----------
    logits : ndarray, shape (P, K)
        One row per label position; complex under the complex step.
    labels : ndarray of int, shape (P,)

    Returns
    -------
    losses : ndarray, shape (P,)
        ``-log softmax(logits[p])[labels[p]]``.
    probabilities : ndarray, shape (P, K)
    """
    rows = np.arange(logits.shape[0])
    top = logits.real.argmax(axis=1)                         # (P,), index on Re only
    shifted = logits - logits[rows, top][:, None]            # (P, K), Re <= 0, 0 at top
    exponentials = np.exp(shifted)                           # (P, K), no overflow, 1 at top
    is_top = np.zeros(logits.shape, dtype=bool)
    is_top[rows, top] = True
    rest = np.where(is_top, 0, exponentials).sum(axis=1, keepdims=True)  # (P, 1) = total - 1
    log_probabilities = shifted - np.log1p(rest)             # (P, K)
    return -log_probabilities[rows, labels], exponentials / (1 + rest)


def _softmax_cross_entropy_forward(logits, labels):
    """:func:`softmax_cross_entropy_forward` without the argument checks (the model checked
    them once)."""
    shape = logits.shape
    losses, probabilities = cross_entropy_rows(logits.reshape(-1, shape[-1]),  # (P, K)
                                               labels.reshape(-1))             # (P,)
    loss = losses.sum() / losses.shape[0]
    return loss, CrossEntropyCache(probabilities.reshape(shape), labels.reshape(shape[:-1]))


def softmax_cross_entropy_backward(dloss: Any, cache: CrossEntropyCache) -> np.ndarray:
    """dL/dlogits = dloss * (softmax - onehot(labels)) / P, shape (N, ..., K), with ``P``
    the number of label positions (``N`` for logits (N, K)).

    The label entry p_y - 1 is computed as -(sum of the other probabilities), equal since the
    probabilities sum to 1: ``p_y - 1`` cancels when p_y ~ 1 (a confident right prediction)
    and is then right only to eps absolutely; the sum of positive terms is right relatively.
    """
    dloss = check_scalar(dloss, "softmax_cross_entropy_backward: dloss")
    check_cache(cache, CrossEntropyCache, "softmax_cross_entropy_backward: cache")
    return _softmax_cross_entropy_backward(dloss, cache)


def _softmax_cross_entropy_backward(dloss, cache):
    """:func:`softmax_cross_entropy_backward` without the argument checks."""
    shape = cache.probabilities.shape
    probabilities = cache.probabilities.reshape(-1, shape[-1])   # (P, K)
    labels = cache.labels.reshape(-1)                            # (P,)
    batch = probabilities.shape[0]
    rows = np.arange(batch)
    dlogits = probabilities.copy()
    dlogits[rows, labels] = 0
    dlogits[rows, labels] = -dlogits.sum(axis=1)
    return (dlogits * (dloss / batch)).reshape(shape)


def softmax_cross_entropy_jvp(logits_dot: np.ndarray, cache: CrossEntropyCache
                              ) -> tuple[np.ndarray, InputTangentCache]:
    """``loss_dot = sum over positions and classes of (softmax - onehot) logits_dot / P``.

    Parameters
    ----------
    logits_dot : ndarray, shape (N, K) or (N, ..., K)
        The logits' tangent.
    cache : CrossEntropyCache

    Returns
    -------
    loss_dot : ndarray, 0-d
    tangent_cache : InputTangentCache
    """
    check_cache(cache, CrossEntropyCache, "softmax_cross_entropy_jvp: cache")
    logits_dot = check_array(logits_dot, "softmax_cross_entropy_jvp: logits_dot",
                             cache.probabilities.shape)
    return _softmax_cross_entropy_jvp(logits_dot, cache)


def _softmax_cross_entropy_jvp(logits_dot, cache):
    gradient = _softmax_cross_entropy_backward(1.0, cache)             # (N, ..., K)
    return (gradient * logits_dot).sum(), InputTangentCache(logits_dot)


def softmax_cross_entropy_backward_jvp(dloss: Any, dloss_dot: Any, cache: CrossEntropyCache,
                                       tangent_cache: InputTangentCache) -> np.ndarray:
    """Directional derivative of :func:`softmax_cross_entropy_backward`, (N, ..., K).

    Per position, with ``p = softmax(z)`` and ``z_dot`` the logits' tangent, the Hessian of
    ``-log softmax(z)[y]`` is ``diag(p) - p p^T`` (the label drops out), so::

        dlogits_dot = dloss_dot (p - onehot) / P  +  dloss (p * z_dot - p (p . z_dot)) / P

    (term 1: the backward pass of ``dloss_dot``; term 2: ``d(softmax)`` along ``z_dot``).
    """
    who = "softmax_cross_entropy_backward_jvp"
    dloss = check_scalar(dloss, f"{who}: dloss")
    dloss_dot = check_scalar(dloss_dot, f"{who}: dloss_dot")
    check_cache(cache, CrossEntropyCache, f"{who}: cache")
    check_cache(tangent_cache, InputTangentCache, f"{who}: tangent_cache")
    check_array(tangent_cache.x_dot, f"{who}: tangent_cache.x_dot", cache.probabilities.shape)
    return _softmax_cross_entropy_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


def _softmax_cross_entropy_backward_jvp(dloss, dloss_dot, cache, tangent_cache):
    shape = cache.probabilities.shape
    p = cache.probabilities.reshape(-1, shape[-1])                      # (P, K)
    z_dot = tangent_cache.x_dot.reshape(p.shape)                        # (P, K)
    rows = np.arange(p.shape[0])
    # term 2: (diag(p) - p p^T) z_dot = p * (z_dot - p . z_dot), per position. The tangent is
    # taken relative to the most probable class's: z_dot - p . z_dot is invariant under a
    # shift of z_dot, and its entry at that class, -(sum of p_j (z_dot_j - z_dot_top)), is then
    # a sum of small terms, right relatively when p_top ~ 1 (1 - p . z_dot / z_dot_top would
    # cancel), as the backward pass computes p_y - 1.
    top = p.real.argmax(axis=1)                                         # (P,)
    centred = z_dot - z_dot[rows, top][:, None]                         # 0 at the top class
    softmax_dot = p * (centred - (p * centred).sum(axis=1, keepdims=True))
    positions = p.shape[0]
    return (_softmax_cross_entropy_backward(dloss_dot, cache)          # term 1
            + (softmax_dot * (dloss / positions)).reshape(shape))


def mse_forward(out: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, MSECache]:
    """Mean over *all* elements of ``(out - target)^2`` (PyTorch's ``reduction='mean'``).

    Parameters
    ----------
    out, target : ndarray
        One shape exactly (nothing is broadcast), at least one element.

    Returns
    -------
    loss : ndarray, 0-d
    cache : MSECache
    """
    out = check_array(out, "mse_forward: out")
    target = check_array(target, "mse_forward: target")
    check_same_shape(out, target, ("out", "mse_forward: target"))
    check_nonempty(out, "mse_forward: out")
    return _mse_forward(out, target)


def squared_errors(out: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(out - target)^2`` entry by entry (same shapes, no checks): the terms whose mean is
    :func:`mse_forward`'s loss, for a check that evaluates many perturbed copies at once."""
    return _squares(out - target)


def _squares(difference):
    """The one place the squared error is written (no ``abs``: complex-step safe)."""
    return difference * difference


def _mse_forward(out, target):
    """:func:`mse_forward` without the argument checks (the model checked them once)."""
    difference = out - target
    return _squares(difference).sum() / difference.size, MSECache(difference)


def mse_backward(dloss: Any, cache: MSECache) -> np.ndarray:
    """dL/dout = dloss * 2 (out - target) / size."""
    dloss = check_scalar(dloss, "mse_backward: dloss")
    check_cache(cache, MSECache, "mse_backward: cache")
    return _mse_backward(dloss, cache)


def _mse_backward(dloss, cache):
    """:func:`mse_backward` without the argument checks."""
    return cache.difference * (2 * dloss / cache.difference.size)


def mse_jvp(out_dot: np.ndarray, cache: MSECache) -> tuple[np.ndarray, InputTangentCache]:
    """``loss_dot = sum 2 (out - target) out_dot / size``; ``out_dot`` of out's shape;
    returns the 0-d ``loss_dot`` and the tangent cache."""
    check_cache(cache, MSECache, "mse_jvp: cache")
    out_dot = check_array(out_dot, "mse_jvp: out_dot", cache.difference.shape)
    return _mse_jvp(out_dot, cache)


def _mse_jvp(out_dot, cache):
    return (_mse_backward(1.0, cache) * out_dot).sum(), InputTangentCache(out_dot)


def mse_backward_jvp(dloss: Any, dloss_dot: Any, cache: MSECache,
                     tangent_cache: InputTangentCache) -> np.ndarray:
    """``dout_dot = dloss_dot 2 (out - target) / size + dloss 2 out_dot / size``: the
    Hessian of the mean squared error is ``2 I / size``."""
    dloss = check_scalar(dloss, "mse_backward_jvp: dloss")
    dloss_dot = check_scalar(dloss_dot, "mse_backward_jvp: dloss_dot")
    check_cache(cache, MSECache, "mse_backward_jvp: cache")
    check_cache(tangent_cache, InputTangentCache, "mse_backward_jvp: tangent_cache")
    check_array(tangent_cache.x_dot, "mse_backward_jvp: tangent_cache.x_dot",
                cache.difference.shape)
    return _mse_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


def _mse_backward_jvp(dloss, dloss_dot, cache, tangent_cache):
    size = cache.difference.size
    return _mse_backward(dloss_dot, cache) + tangent_cache.x_dot * (2 * dloss / size)


class Loss:
    """Base of loss specs: validate the target, then forward/backward (and, for second order,
    ``jvp(out_dot, cache) -> (loss_dot, tangent_cache)`` and ``backward_jvp(dloss, dloss_dot,
    cache, tangent_cache) -> dout_dot``)."""

    def check_target(self, target: Any, output_shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def forward(self, out: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(self, dloss: Any, cache: Any) -> np.ndarray:
        raise NotImplementedError

    def jvp(self, out_dot: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward_jvp(self, dloss: Any, dloss_dot: Any, cache: Any,
                     tangent_cache: Any) -> np.ndarray:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__}


def _register_loss(cls: type) -> type:
    LOSS_TYPES[cls.__name__] = cls
    return cls


@_register_loss
@dataclass(frozen=True)
class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy with integer labels, mean over every label position
    (``torch.nn.CrossEntropyLoss()`` on the positions flattened). Model output ``(N, K)``
    with labels ``(N,)``, or ``(N, ..., K)`` with labels ``(N, ...)`` (sequence labelling:
    ``(N, T, K)`` and ``(N, T)``)."""

    def check_target(self, target, output_shape):
        output_shape = tuple(output_shape)
        if len(output_shape) < 2 or math.prod(output_shape) == 0:
            raise ValueError(
                f"y: SoftmaxCrossEntropy needs model output (N, K) or (N, ..., K) with at "
                f"least one position and class, got {output_shape}")
        if len(output_shape) == 2:
            return as_label_array(target, "y", output_shape[0], output_shape[1])
        return _label_positions(target, "y", output_shape[:-1], output_shape[-1])

    def forward(self, out, target):
        return _softmax_cross_entropy_forward(out, target)

    def backward(self, dloss, cache):
        return _softmax_cross_entropy_backward(dloss, cache)

    def jvp(self, out_dot, cache):
        return _softmax_cross_entropy_jvp(out_dot, cache)

    def backward_jvp(self, dloss, dloss_dot, cache, tangent_cache):
        return _softmax_cross_entropy_backward_jvp(dloss, dloss_dot, cache, tangent_cache)


@_register_loss
@dataclass(frozen=True)
class MSE(Loss):
    """Mean squared error over all elements (``torch.nn.MSELoss()``); target has the
    model output's shape exactly (no broadcasting)."""

    def check_target(self, target, output_shape):
        array = as_float_array(target, "y", allow_complex=False)
        check_shape(array, tuple(output_shape), "y")
        return array

    def forward(self, out, target):
        return _mse_forward(out, target)

    def backward(self, dloss, cache):
        return _mse_backward(dloss, cache)

    def jvp(self, out_dot, cache):
        return _mse_jvp(out_dot, cache)

    def backward_jvp(self, dloss, dloss_dot, cache, tangent_cache):
        return _mse_backward_jvp(dloss, dloss_dot, cache, tangent_cache)
