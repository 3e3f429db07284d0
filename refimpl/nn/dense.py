"""Dense (affine) layer: ``y = x @ W.T + b``, PyTorch's ``nn.Linear`` layout.

Legend: ``N`` batch, ``D`` input features, ``F`` output features, ``...`` any further axes
between the batch and the features (``T`` time steps of a sequence, say). As ``nn.Linear``,
the layer acts on the last axis: every position of ``(N, ..., D)`` is one row of the affine
map, and the weight and bias are shared by all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._validate import check_array, check_cache, positive_int
from .base import Layer, check_name, register, weight_and_bias

__all__ = ["Dense", "DenseCache", "DenseTangentCache", "dense_forward", "dense_backward",
           "dense_jvp", "dense_backward_jvp"]


class DenseCache(NamedTuple):
    x: np.ndarray       # (N, ..., D)
    weight: np.ndarray  # (F, D)
    has_bias: bool


class DenseTangentCache(NamedTuple):
    """What :func:`dense_backward_jvp` needs of :func:`dense_jvp`: the tangents (None: 0)."""

    x_dot: np.ndarray | None       # (N, ..., D)
    weight_dot: np.ndarray | None  # (F, D)


def dense_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, DenseCache]:
    """Affine map ``out = x @ weight.T + bias`` on the last axis of ``x``.

    Parameters
    ----------
    x : ndarray, shape (N, D) or (N, ..., D)
    weight : ndarray, shape (F, D)
    bias : ndarray, shape (F,), or None

    Returns
    -------
    out : ndarray, shape (N, F) or (N, ..., F)
    cache : DenseCache
        For :func:`dense_backward`.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for a non-array, a non-numeric dtype or a shape that does not fit
        (nothing is broadcast).
    """
    # rank >= 3 (N, ..., D) as nn.Linear; anything else is held to (N, D) and its message
    x = check_array(x, "dense_forward: x", ("N", "T", ...) if np.ndim(x) > 2 else ("N", "D"))
    weight = check_array(weight, "dense_forward: weight", ("F", x.shape[-1]))
    if bias is not None:
        bias = check_array(bias, "dense_forward: bias", (weight.shape[0],))
    return _dense_forward(x, weight, bias)


def _dense_forward(x, weight, bias):
    """:func:`dense_forward` without the argument checks, for :class:`Dense` (whose model
    checked the shapes and dtypes once, on entry)."""
    # One matrix product over all rows R = N * (middle axes): NumPy's matmul of a stack
    # (N, T, D) @ (D, F) runs one small product per n instead of one BLAS call
    # (benchmarks/bench_tied_lm.py).
    out = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        out = out + bias  # (N, ..., F) + (F,): the one intended broadcast, over the rows
    return out, DenseCache(x, weight, bias is not None)


def dense_backward(
    dout: np.ndarray, cache: DenseCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of ``out = x @ W.T + b``.

    Every output row uses the same ``W`` and ``b``: their gradients are the *sums* over the
    batch (the batch is the first instance of parameter sharing), and over every further
    position of ``(N, ..., D)`` (each time step of a sequence is one more use).

    Parameters
    ----------
    dout : ndarray, shape (N, F) or (N, ..., F)
        The upstream gradient dL/dout, of the output's shape.
    cache : DenseCache
        From :func:`dense_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D) or (N, ..., D)
        ``dout @ W``.
    dweight : ndarray, shape (F, D)
        ``dout.T @ x`` over the rows (every position flattened into one axis of rows).
    dbias : ndarray, shape (F,), or None
        The sum of ``dout`` over every row; None without a bias.
    """
    check_cache(cache, DenseCache, "dense_backward: cache")
    dout = check_array(dout, "dense_backward: dout",
                       (*cache.x.shape[:-1], cache.weight.shape[0]))
    return _dense_backward(dout, cache)


def _dense_backward(dout, cache):
    """:func:`dense_backward` without the argument checks."""
    # Rows R = N * (product of the middle axes); a view for contiguous arrays (rank 2: as is).
    rows_dout = dout.reshape(-1, dout.shape[-1])          # (R, F)
    rows_x = cache.x.reshape(-1, cache.x.shape[-1])       # (R, D)
    dx = (rows_dout @ cache.weight).reshape(cache.x.shape)   # (R, F) @ (F, D) -> (N, ..., D)
    dweight = rows_dout.T @ rows_x  # (F, R) @ (R, D) -> (F, D): the sum over all rows
    dbias = rows_dout.sum(axis=0) if cache.has_bias else None  # (F,)
    return dx, dweight, dbias


def dense_jvp(
    x_dot: np.ndarray | None, weight_dot: np.ndarray | None, bias_dot: np.ndarray | None,
    cache: DenseCache,
) -> tuple[np.ndarray, DenseTangentCache]:
    """Forward-mode derivative of ``out = x @ W.T + b`` along the tangents (product rule)::

        out_dot = x_dot @ W.T + x @ W_dot.T + b_dot

    Parameters
    ----------
    x_dot : ndarray, shape (N, D) or (N, ..., D), or None
        The input's tangent; None for a zero tangent (the data of a model).
    weight_dot : ndarray, shape (F, D), or None
    bias_dot : ndarray, shape (F,), or None
        None for a zero tangent (or a layer without bias).
    cache : DenseCache
        From :func:`dense_forward`.

    Returns
    -------
    out_dot : ndarray, shape (N, F) or (N, ..., F)
    tangent_cache : DenseTangentCache
        For :func:`dense_backward_jvp`.
    """
    check_cache(cache, DenseCache, "dense_jvp: cache")
    if x_dot is not None:
        x_dot = check_array(x_dot, "dense_jvp: x_dot", cache.x.shape)
    if weight_dot is not None:
        weight_dot = check_array(weight_dot, "dense_jvp: weight_dot", cache.weight.shape)
    if bias_dot is not None:
        bias_dot = check_array(bias_dot, "dense_jvp: bias_dot", (cache.weight.shape[0],))
    return _dense_jvp(x_dot, weight_dot, bias_dot, cache)


def _dense_jvp(x_dot, weight_dot, bias_dot, cache):
    """:func:`dense_jvp` without the argument checks."""
    x, weight = cache.x, cache.weight
    out_dot = np.zeros((*x.shape[:-1], weight.shape[0]),
                       dtype=np.result_type(x, weight, *[t for t in (x_dot, weight_dot, bias_dot)
                                                         if t is not None]))
    if x_dot is not None:
        out_dot = out_dot + _dense_forward(x_dot, weight, None)[0]      # term 1: x_dot W^T
    if weight_dot is not None:
        out_dot = out_dot + _dense_forward(x, weight_dot, None)[0]      # term 2: x W_dot^T
    if bias_dot is not None:
        out_dot = out_dot + bias_dot                                    # term 3: (F,) per row
    return out_dot, DenseTangentCache(x_dot, weight_dot)


def dense_backward_jvp(
    dout: np.ndarray, dout_dot: np.ndarray, cache: DenseCache, tangent_cache: DenseTangentCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Directional derivative of :func:`dense_backward` (the R-operator of the layer).

    The backward pass is bilinear, ``dx = dout W``, ``dW = dout^T x``, ``db = sum dout``, so
    along ``(dout_dot, x_dot, W_dot)``:

    * term 1, the backward pass of ``dout_dot`` at the point: ``dout_dot W``,
      ``dout_dot^T x``, ``sum dout_dot``;
    * term 2, the backward pass of ``dout`` through the tangents: ``dout W_dot`` into
      ``dx_dot`` and ``dout^T x_dot`` into ``dW_dot`` (the bias gradient does not depend on
      the point).

    Parameters
    ----------
    dout, dout_dot : ndarray, shape (N, F) or (N, ..., F)
        The upstream gradient and its tangent.
    cache : DenseCache
    tangent_cache : DenseTangentCache
        From :func:`dense_jvp`.

    Returns
    -------
    dx_dot : ndarray, shape (N, D) or (N, ..., D)
    dweight_dot : ndarray, shape (F, D)
    dbias_dot : ndarray, shape (F,), or None
        None without a bias.
    """
    check_cache(cache, DenseCache, "dense_backward_jvp: cache")
    check_cache(tangent_cache, DenseTangentCache, "dense_backward_jvp: tangent_cache")
    shape = (*cache.x.shape[:-1], cache.weight.shape[0])
    dout = check_array(dout, "dense_backward_jvp: dout", shape)
    dout_dot = check_array(dout_dot, "dense_backward_jvp: dout_dot", shape)
    return _dense_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _dense_backward_jvp(dout, dout_dot, cache, tangent_cache):
    """:func:`dense_backward_jvp` without the argument checks."""
    dx_dot, dweight_dot, dbias_dot = _dense_backward(dout_dot, cache)        # term 1
    rows_dout = dout.reshape(-1, dout.shape[-1])                              # (R, F)
    if tangent_cache.weight_dot is not None:                                  # term 2
        dx_dot = dx_dot + (rows_dout @ tangent_cache.weight_dot).reshape(dx_dot.shape)
    if tangent_cache.x_dot is not None:
        dweight_dot = dweight_dot + rows_dout.T @ tangent_cache.x_dot.reshape(
            -1, tangent_cache.x_dot.shape[-1])
    return dx_dot, dweight_dot, dbias_dot


@register
@dataclass(frozen=True)
class Dense(Layer):
    """Dense layer spec: parameters ``weight`` (out, in) and ``bias`` (out,).

    Input ``(N, in)`` or ``(N, ..., in)``, output ``(N, out)`` or ``(N, ..., out)``: the map
    acts on the last axis, as ``torch.nn.Linear`` (sequence labelling: ``(N, T, H) -> (N, T,
    K)``).

    Initialisation (:meth:`init_parameters`): both drawn from U(-1/sqrt(in), 1/sqrt(in)),
    PyTorch's ``nn.Linear`` default distribution (fan-in scaling).
    """

    name: str
    in_features: int
    out_features: int
    bias: bool = True

    has_parameters = True

    def __post_init__(self) -> None:
        check_name(self.name)
        # Stored as plain ints (a NumPy integer would not survive json.dumps of the config).
        object.__setattr__(self, "in_features", positive_int(self.in_features, "in_features"))
        object.__setattr__(self, "out_features",
                           positive_int(self.out_features, "out_features"))
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias: expected a bool, got {self.bias!r}")

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 2 or input_shape[-1] != self.in_features:
            raise ValueError(
                f"{self.name}: expected input of shape (N, {self.in_features}), "
                f"got {tuple(input_shape)} (or (N, ..., {self.in_features}): Dense acts on "
                f"the last axis)"
            )
        return (*input_shape[:-1], self.out_features)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(self.in_features)
        return {
            local: rng.uniform(-bound, bound, size=shape)
            for local, shape in self.parameter_shapes().items()
        }

    def forward(self, x, params):
        return _dense_forward(x, params["weight"], params.get("bias"))

    def backward(self, dout, cache):
        dx, dweight, dbias = _dense_backward(dout, cache)
        return dx, weight_and_bias(dweight, dbias)

    def jvp(self, x_dot, params_dot, cache):
        return _dense_jvp(x_dot, params_dot["weight"], params_dot.get("bias"), cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        dx_dot, dweight_dot, dbias_dot = _dense_backward_jvp(dout, dout_dot, cache,
                                                             tangent_cache)
        return dx_dot, weight_and_bias(dweight_dot, dbias_dot)
