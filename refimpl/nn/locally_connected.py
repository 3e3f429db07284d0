"""The locally connected layer: the convolution's geometry with an unshared kernel per output
position, as a forward/backward pair through im2col.

Legend and geometry: :mod:`refimpl.nn.conv_geometry` (``P = Ho * Wo`` output positions).

Layouts: input ``x`` (N, C, H, W); output (N, F, Ho, Wo); weight (Ho, Wo, F, Cg, kH, kW),
where ``weight[i, j]`` is the conv-layout kernel used at output position ``(i, j)`` only; bias
(F, Ho, Wo), one per output value. Where :class:`~refimpl.nn.conv.Conv2D` sums the gradients
of one kernel over all positions (sharing), this layer keeps them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_array, check_cache
from .base import Layer, register
from .conv_geometry import (
    ConvGeometry,
    ConvLayerGeometry,
    Pair,
    as_pair,
    check_dout,
    check_forward_arguments,
    col2im,
    conv2d_output_shape,
    im2col,
)

__all__ = ["LocallyConnected2D", "LocallyConnected2DCache", "locally_connected2d_forward",
           "locally_connected2d_backward", "LocallyConnected2DTangentCache",
           "locally_connected2d_jvp", "locally_connected2d_backward_jvp"]


class LocallyConnected2DCache(NamedTuple):
    """What :func:`locally_connected2d_backward` needs of the forward call."""

    cols: np.ndarray     # (P, G, Kg, N): the im2col columns regrouped by output position
    weight: np.ndarray   # (Ho, Wo, F, Cg, kH, kW)
    geometry: ConvGeometry
    has_bias: bool


def locally_connected2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1,
) -> tuple[np.ndarray, LocallyConnected2DCache]:
    """The convolution geometry with a separate kernel at every output position.

    ``out[n, f, ho, wo] = b[f, ho, wo] + sum_{c, i, j} w[ho, wo, f, c, i, j]
    xpad[n, g Cg + c, ho sH + i dH, wo sW + j dW]``: one batched product, for each position
    p and group g ``(Fg, Kg) @ (Kg, N)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (Ho, Wo, F, C/G, kH, kW)
        ``(Ho, Wo)`` follow from x and the geometry and must match its first two axes.
    bias : ndarray, shape (F, Ho, Wo), or None
    stride, padding, dilation : int or (int, int)
    groups : int

    Returns
    -------
    out : ndarray, shape (N, F, Ho, Wo)
    cache : LocallyConnected2DCache
    """
    who = "locally_connected2d_forward"
    x, weight, bias, geometry = check_forward_arguments(
        x, weight, bias, stride, padding, dilation, groups, ("Ho", "Wo", "F", "Cg", "kH", "kW"),
        who)
    filters, groups = weight.shape[2], geometry.groups
    batch, _, out_h, out_w = conv2d_output_shape(x.shape, x.shape[1], filters, *geometry[1:5],
                                                 who=who)
    if weight.shape[:2] != (out_h, out_w):
        raise ValueError(f"{who}: weight shape {weight.shape} does not start with the output "
                         f"size ({out_h}, {out_w}) of input shape {x.shape}")
    if bias is not None and bias.shape != (filters, out_h, out_w):
        raise ValueError(f"{who}: bias: expected shape {(filters, out_h, out_w)}, got "
                         f"{bias.shape}")
    positions = out_h * out_w
    cols = im2col(x, *geometry[1:5])                                   # (C*kH*kW, N*P)
    cols = cols.reshape(groups, -1, batch, positions).transpose(3, 0, 1, 2)  # (P, G, Kg, N)
    weight_p = weight.reshape(positions, groups, filters // groups, -1)  # (P, G, Fg, Kg)
    out = weight_p @ cols                                              # (P, G, Fg, N)
    out = out.reshape(out_h, out_w, filters, batch).transpose(3, 2, 0, 1)  # (N, F, Ho, Wo)
    if bias is not None:
        out = out + bias  # (N, F, Ho, Wo) + (F, Ho, Wo): the intended broadcast over the batch
    return np.ascontiguousarray(out), LocallyConnected2DCache(cols, weight, geometry,
                                                               bias is not None)


def locally_connected2d_backward(
    dout: np.ndarray, cache: LocallyConnected2DCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`locally_connected2d_forward`.

    Per position p and group g (``D`` = dout at p as (Fg, N), ``X`` = the columns at p):

    * term 1, ``dweight[p] = D @ X.T``: a sum over the batch only; each kernel is used at one
      position, so nothing is accumulated across positions (contrast ``conv2d_backward``);
    * term 2, ``dcols[p] = W[p].T @ D``, then col2im as for the convolution;
    * term 3, ``dbias[f, ho, wo]`` = sum over n of ``dout[n, f, ho, wo]``.

    Parameters
    ----------
    dout : ndarray, shape (N, F, Ho, Wo)
        The upstream gradient.
    cache : LocallyConnected2DCache

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dweight : ndarray, shape (Ho, Wo, F, Cg, kH, kW)
    dbias : ndarray, shape (F, Ho, Wo), or None
    """
    dout = check_dout(dout, cache, LocallyConnected2DCache,
                      lambda c: (c.geometry.x_shape[0], c.weight.shape[2], *c.weight.shape[:2]),
                      "locally_connected2d_backward")
    weight, groups, cols = cache.weight, cache.geometry.groups, cache.cols
    filters = weight.shape[2]
    positions, _, group_rows, batch = cols.shape
    dout_p = dout.transpose(2, 3, 1, 0).reshape(positions, groups, filters // groups, batch)
    weight_p = weight.reshape(positions, groups, filters // groups, -1)        # (P, G, Fg, Kg)
    dweight = (dout_p @ cols.transpose(0, 1, 3, 2)).reshape(weight.shape)     # term 1
    dcols = weight_p.transpose(0, 1, 3, 2) @ dout_p                             # (P, G, Kg, N)
    dcols = dcols.transpose(1, 2, 3, 0).reshape(groups * group_rows, batch * positions)
    dx = col2im(dcols, *cache.geometry[:5])                                     # term 2
    dbias = dout.sum(axis=0) if cache.has_bias else None                        # term 3
    return dx, dweight, dbias


class LocallyConnected2DTangentCache(NamedTuple):
    """What :func:`locally_connected2d_backward_jvp` needs of :func:`locally_connected2d_jvp`:
    the tangents as the forward cache holds the point (zeros for a zero tangent)."""

    cols_dot: np.ndarray     # (P, G, Kg, N): the columns of the input's tangent
    weight_dot: np.ndarray   # (Ho, Wo, F, Cg, kH, kW)


def _regrouped_columns(x: np.ndarray, geometry: ConvGeometry, positions: int) -> np.ndarray:
    """im2col of ``x`` regrouped by output position, (P, G, Kg, N), as the forward does."""
    cols = im2col(x, *geometry[1:5])                                   # (C*kH*kW, N*P)
    return cols.reshape(geometry.groups, -1, x.shape[0], positions).transpose(3, 0, 1, 2)


def _positions_product(weight: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The forward product without the bias, ``W[p] @ X[p]`` per position and group, as
    (N, F, Ho, Wo)."""
    out_h, out_w, filters = weight.shape[:3]
    positions, groups, _, batch = cols.shape
    out = weight.reshape(positions, groups, filters // groups, -1) @ cols   # (P, G, Fg, N)
    return out.reshape(out_h, out_w, filters, batch).transpose(3, 2, 0, 1)


def locally_connected2d_jvp(
    x_dot: np.ndarray | None, weight_dot: np.ndarray | None, bias_dot: np.ndarray | None,
    cache: LocallyConnected2DCache,
) -> tuple[np.ndarray, LocallyConnected2DTangentCache]:
    """Forward-mode derivative of :func:`locally_connected2d_forward` (bilinear in x and w)::

        out_dot = lc(x_dot, w) + lc(x, w_dot) + b_dot

    Parameters
    ----------
    x_dot : ndarray, shape (N, C, H, W), or None
        None for a zero tangent (the data of a model).
    weight_dot : ndarray, shape (Ho, Wo, F, Cg, kH, kW), or None
    bias_dot : ndarray, shape (F, Ho, Wo), or None
    cache : LocallyConnected2DCache

    Returns
    -------
    out_dot : ndarray, shape (N, F, Ho, Wo)
    tangent_cache : LocallyConnected2DTangentCache
    """
    who = "locally_connected2d_jvp"
    check_cache(cache, LocallyConnected2DCache, f"{who}: cache")
    weight = cache.weight
    if x_dot is not None:
        x_dot = check_array(x_dot, f"{who}: x_dot", cache.geometry.x_shape)
    if weight_dot is not None:
        weight_dot = check_array(weight_dot, f"{who}: weight_dot", weight.shape)
    if bias_dot is not None:
        bias_dot = check_array(bias_dot, f"{who}: bias_dot",
                               (weight.shape[2], *weight.shape[:2]))
    return _locally_connected2d_jvp(x_dot, weight_dot, bias_dot, cache)


def _locally_connected2d_jvp(x_dot, weight_dot, bias_dot, cache):
    """:func:`locally_connected2d_jvp` without the argument checks."""
    weight, cols = cache.weight, cache.cols
    dtype = np.result_type(cols, weight, *[t for t in (x_dot, weight_dot, bias_dot)
                                           if t is not None])
    cols_dot = (np.zeros(cols.shape, dtype=dtype) if x_dot is None
                else _regrouped_columns(x_dot, cache.geometry, cols.shape[0]))
    weight_dot = np.zeros(weight.shape, dtype=dtype) if weight_dot is None else weight_dot
    out_dot = _positions_product(weight, cols_dot) + _positions_product(weight_dot, cols)
    if bias_dot is not None:
        out_dot = out_dot + bias_dot      # (N, F, Ho, Wo) + (F, Ho, Wo): over the batch
    return (np.ascontiguousarray(out_dot),
            LocallyConnected2DTangentCache(cols_dot, weight_dot))


def locally_connected2d_backward_jvp(
    dout: np.ndarray, dout_dot: np.ndarray, cache: LocallyConnected2DCache,
    tangent_cache: LocallyConnected2DTangentCache,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Directional derivative of :func:`locally_connected2d_backward`.

    The backward pass is bilinear (``dx`` in ``(dout, W)``, ``dW`` in ``(dout, X)``), so:

    * term 1, the backward pass of ``dout_dot`` at the point;
    * term 2, the backward pass of ``dout`` with the tangents in place of the point's kernel
      and columns: ``dout`` through ``W_dot[p]`` into ``dx_dot`` and against the tangent
      columns at ``p`` into ``dW_dot[p]`` (no bias term: ``db`` does not depend on the point).

    Parameters
    ----------
    dout, dout_dot : ndarray, shape (N, F, Ho, Wo)
    cache : LocallyConnected2DCache
    tangent_cache : LocallyConnected2DTangentCache

    Returns
    -------
    dx_dot : ndarray, shape (N, C, H, W)
    dweight_dot : ndarray, shape (Ho, Wo, F, Cg, kH, kW)
    dbias_dot : ndarray, shape (F, Ho, Wo), or None
    """
    who = "locally_connected2d_backward_jvp"
    check_cache(tangent_cache, LocallyConnected2DTangentCache, f"{who}: tangent_cache")
    dout = check_dout(dout, cache, LocallyConnected2DCache,
                      lambda c: (c.geometry.x_shape[0], c.weight.shape[2], *c.weight.shape[:2]),
                      who)
    dout_dot = check_array(dout_dot, f"{who}: dout_dot", dout.shape)
    return _locally_connected2d_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _locally_connected2d_backward_jvp(dout, dout_dot, cache, tangent_cache):
    """:func:`locally_connected2d_backward_jvp` without the argument checks."""
    dx_dot, dweight_dot, dbias_dot = locally_connected2d_backward(dout_dot, cache)   # term 1
    through_tangents = cache._replace(cols=tangent_cache.cols_dot,
                                      weight=tangent_cache.weight_dot, has_bias=False)
    dx_2, dweight_2, _ = locally_connected2d_backward(dout, through_tangents)         # term 2
    return dx_dot + dx_2, dweight_dot + dweight_2, dbias_dot


@register
@dataclass(frozen=True)
class LocallyConnected2D(ConvLayerGeometry, Layer):
    """Locally connected layer spec: ``Conv2D``'s geometry, an *unshared* kernel per output
    position.

    Parameters ``weight`` (Ho, Wo, out_channels, in_channels / groups, kH, kW), where
    ``weight[i, j]`` is the conv-layout kernel used at output position (i, j), and ``bias``
    (out_channels, Ho, Wo). ``input_size`` (H, W) (an int or a pair) fixes (Ho, Wo), hence
    the parameter shapes; an input of another spatial size is a ``ValueError``.
    Initialisation as ``Conv2D`` (same fan-in), independently at every position.
    """

    functions = (locally_connected2d_forward, locally_connected2d_backward)
    tangent_functions = (_locally_connected2d_jvp, _locally_connected2d_backward_jvp)

    input_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "input_size", as_pair(self.input_size, "input_size", 1))
        # Fails early (ValueError) when the kernel does not fit the input.
        self._output_shape((1, self.in_channels, *self.input_size))

    @property
    def output_size(self) -> Pair:
        """(Ho, Wo) for the configured input size."""
        return self._output_shape((1, self.in_channels, *self.input_size))[2:]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        out_h, out_w = self.output_size
        shapes = {"weight": (out_h, out_w, self.out_channels, self.in_channels // self.groups,
                             *self.kernel_size)}
        if self.bias:
            shapes["bias"] = (self.out_channels, out_h, out_w)
        return shapes

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = self._output_shape(input_shape)
        if tuple(input_shape[2:]) != self.input_size:
            raise ValueError(f"{self.name}: expected input of spatial size {self.input_size} "
                             f"(N, {self.in_channels}, {self.input_size[0]}, "
                             f"{self.input_size[1]}), got shape {tuple(input_shape)}")
        return shape
