"""2-D convolution (stride, padding, dilation, groups) as a forward/backward pair through im2col.

Legend and geometry: :mod:`refimpl.nn.conv_geometry` (``N C H W``, ``F`` filters, ``G``
groups, ``Ho``/``Wo`` output size, ``kH``/``kW`` kernel, ``M = N * Ho * Wo``,
``Cg = C / G``, ``Fg = F / G``, ``Kg = Cg * kH * kW``).

Layouts (PyTorch's ``nn.Conv2d``): input ``x`` (N, C, H, W); output (N, F, Ho, Wo); weight
(F, Cg, kH, kW), bias (F,). Output channel ``f`` belongs to group ``g = f // Fg`` and reads
input channels ``g*Cg .. (g+1)*Cg - 1``; the im2col rows of a group are one contiguous block,
so a grouped convolution is one matrix product per group (in the forward pass a stacked
product over the examples, so that the output is born NCHW).

Parameter sharing: ``Conv2D`` uses one kernel at all ``Ho * Wo`` positions, so its weight
gradient is the *sum* over positions (and over the batch) of the per-position gradients,
which the one matrix product ``cols (C*kH*kW, M) @ dout.T (M, F)`` computes in one step.
Its unshared twin, :class:`~refimpl.nn.locally_connected.LocallyConnected2D`, keeps the
terms apart; ``tests/test_conv.py`` checks that the first is the sum of the second.

Second order: :func:`conv2d_jvp` (the product rule of the bilinear map ``(x, w) -> out``)
and :func:`conv2d_backward_jvp` (the directional derivative of the backward pass) beside the
pair, through the same im2col columns.

The input gradient has two forms (:func:`conv2d_input_gradient`): the clear ``"columns"``
form here (``W.T @ dout``, then col2im) and the tuned ``"positions"`` form of
:mod:`refimpl.nn.conv_positions`, which the backward pass takes where
:func:`~refimpl.nn.conv_positions.positions_first` says so.
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
    as_pair,
    check_arrays,
    check_dout,
    check_forward_arguments,
    check_hyperparameters,
    col2im,
    conv2d_output_shape,
    conv_output_size,
    im2col,
    output_shape_of,
)
from .conv_positions import input_gradient_by_positions, positions_first

__all__ = [
    "Conv2D", "Conv2DCache", "conv2d_forward", "conv2d_backward", "conv2d_input_gradient",
    "Conv2DTangentCache", "conv2d_jvp", "conv2d_backward_jvp",
    "INPUT_GRADIENT_METHODS", "positions_first", "input_gradient_by_positions",
    "conv_output_size", "conv2d_output_shape", "im2col", "col2im", "as_pair",
]


class Conv2DCache(NamedTuple):
    """What :func:`conv2d_backward` needs of the forward call."""

    cols: np.ndarray          # (C*kH*kW, N*Ho*Wo), im2col of the input
    weight: np.ndarray        # (F, Cg, kH, kW)
    geometry: ConvGeometry
    has_bias: bool


class Conv2DTangentCache(NamedTuple):
    """What :func:`conv2d_backward_jvp` needs of :func:`conv2d_jvp` (None: a zero tangent)."""

    cols_dot: np.ndarray | None     # (C*kH*kW, N*Ho*Wo), im2col of the input's tangent
    weight_dot: np.ndarray | None   # (F, Cg, kH, kW)


#: The ``method=`` values of :func:`conv2d_input_gradient`.
INPUT_GRADIENT_METHODS = ("auto", "columns", "positions")


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1,
) -> tuple[np.ndarray, Conv2DCache]:
    """Grouped, strided, padded, dilated 2-D cross-correlation (``torch.nn.functional.conv2d``).

    ``out[n, f, ho, wo] = b[f] + sum_{c, i, j} w[f, c, i, j] xpad[n, g Cg + c, ho sH + i dH,
    wo sW + j dW]`` with ``g = f // Fg``. Complex-step safe (only products and sums).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight : ndarray, shape (F, C/G, kH, kW)
    bias : ndarray, shape (F,), or None
    stride, padding, dilation : int or (int, int)
    groups : int
        G, dividing C and F.

    Returns
    -------
    out : ndarray, shape (N, F, Ho, Wo)
    cache : Conv2DCache
        For :func:`conv2d_backward`.

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type, rank or shape, naming it.
    """
    x, weight, bias, geometry = check_forward_arguments(
        x, weight, bias, stride, padding, dilation, groups, ("F", "Cg", "kH", "kW"),
        "conv2d_forward")
    filters, groups = weight.shape[0], geometry.groups
    if bias is not None and bias.shape != (filters,):
        raise ValueError(f"conv2d_forward: bias: expected shape ({filters},), got {bias.shape}")
    batch, _, out_h, out_w = conv2d_output_shape(x.shape, x.shape[1], filters, *geometry[1:5],
                                                 who="conv2d_forward")
    cols = im2col(x, *geometry[1:5])                           # (C*kH*kW, M)
    positions = out_h * out_w
    # One product per group: rows g*Kg .. (g+1)*Kg - 1 of cols are group g's channels. The
    # columns are read per example, (Kg, P) blocks of the same array, so the product lands
    # in NCHW order with no transposing copy.
    out = (weight.reshape(groups, filters // groups, -1)                      # (G, Fg, Kg)
           @ cols.reshape(groups, -1, batch, positions).transpose(2, 0, 1, 3)  # (N, G, Kg, P)
           )                                                                 # (N, G, Fg, P)
    if bias is not None:
        # + (G, Fg, 1): the bias of each filter. In place into our own fresh array unless
        # only the bias is complex (a complex step on the bias alone).
        in_place = out.dtype == np.result_type(out, bias)
        out = np.add(out, bias.reshape(groups, -1, 1), out=out if in_place else None)
    return out.reshape(batch, filters, out_h, out_w), Conv2DCache(cols, weight, geometry,
                                                                   bias is not None)


def conv2d_backward(
    dout: np.ndarray, cache: Conv2DCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv2d_forward`.

    With ``D = dout`` as (F, M) and the columns ``X`` (C*kH*kW, M), per group g:

    * term 1, ``dweight_g = D_g @ X_g.T``: the kernel is used at every output column, so its
      gradient is the sum over all (n, ho, wo): shared-parameter accumulation as a product;
    * term 2, ``dcols_g = W_g.T @ D_g``, then col2im adds each column entry back onto the
      input element it was read from (elements read by several windows receive the sum); see
      :func:`conv2d_input_gradient` for the two equivalent orders this is computed in;
    * term 3, ``dbias[f]`` = sum over (n, ho, wo) of ``dout[n, f]``.

    Parameters
    ----------
    dout : ndarray, shape (N, F, Ho, Wo)
        The upstream gradient.
    cache : Conv2DCache
        From :func:`conv2d_forward`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    dweight : ndarray, shape (F, Cg, kH, kW)
    dbias : ndarray, shape (F,), or None
    """
    dout = check_dout(dout, cache, Conv2DCache,
                      lambda c: output_shape_of(c.geometry, c.weight.shape[0]), "conv2d_backward")
    weight, geometry = cache.weight, cache.geometry
    groups = geometry.groups
    # dout as (G, Fg, M) serves term 1 and term 2 by columns; with term 2 by positions it is
    # made afterwards, so that the two forms' temporaries are never alive together.
    if positions_first(weight.shape[1], dout.shape[3]):
        dx = input_gradient_by_positions(dout, weight, geometry)          # term 2
        dout_g = _dout_by_group(dout, groups)
    else:
        dout_g = _dout_by_group(dout, groups)
        dx = _input_gradient_by_columns(dout_g, weight, geometry)         # term 2
    cols_g = cache.cols.reshape(groups, -1, cache.cols.shape[1])           # (G, Kg, M)
    # term 1 as its transpose, X_g @ D_g.T (Kg, Fg): the faster order for these long, thin
    # operands (benchmarks/bench_conv.py).
    dweight = (cols_g @ dout_g.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(weight.shape)
    dbias = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None          # term 3: (F,)
    return dx, dweight, dbias


def conv2d_input_gradient(
    dout: np.ndarray, weight: np.ndarray, x_shape: tuple[int, int, int, int], stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, method: str = "auto",
) -> np.ndarray:
    """Term 2 of :func:`conv2d_backward`: the input gradient (a transposed convolution).

    ``dx[n, c, h, w]`` = sum over (f, i, j, ho, wo) with ``h + pH = ho sH + i dH`` and
    ``w + pW = wo sW + j dW`` of ``w[f, c, i, j] dout[n, f, ho, wo]`` (c in f's group).

    Parameters
    ----------
    dout : ndarray, shape (N, F, Ho, Wo)
    weight : ndarray, shape (F, C/G, kH, kW)
    x_shape : (N, C, H, W)
        The shape of the forward input.
    stride, padding, dilation : int or (int, int)
    groups : int
    method : {"auto", "columns", "positions"}
        ``"columns"``: ``dcols_g = W_g.T @ D_g`` (C*kH*kW, N*Ho*Wo), then :func:`col2im`;
        ``"positions"``: :func:`~refimpl.nn.conv_positions.input_gradient_by_positions`;
        ``"auto"``: :func:`~refimpl.nn.conv_positions.positions_first` decides. The forms
        agree to rounding (BLAS does not promise bit equality).

    Returns
    -------
    dx : ndarray, shape (N, C, H, W), C-contiguous
    """
    if method not in INPUT_GRADIENT_METHODS:
        raise ValueError(f"conv2d_input_gradient: method must be one of "
                         f"{INPUT_GRADIENT_METHODS}, got {method!r}")
    stride, padding, dilation, groups = check_hyperparameters(stride, padding, dilation, groups)
    dout, weight, _ = check_arrays(dout, weight, None, ("F", "Cg", "kH", "kW"),
                                   "conv2d_input_gradient", "dout", ("N", "F", "Ho", "Wo"))
    filters, group_channels, kh, kw = weight.shape
    if filters % groups:
        raise ValueError(f"conv2d_input_gradient: weight shape {weight.shape}: "
                         f"groups={groups} does not divide F={filters}")
    expected = conv2d_output_shape(x_shape, group_channels * groups, filters, (kh, kw), stride,
                                   padding, dilation, who="conv2d_input_gradient (x_shape)")
    if dout.shape != expected:
        raise ValueError(f"conv2d_input_gradient: dout: expected shape {expected}, got "
                         f"{dout.shape}")
    if method == "auto":
        method = "positions" if positions_first(group_channels, expected[3]) else "columns"
    geometry = ConvGeometry(tuple(x_shape), (kh, kw), stride, padding, dilation, groups)
    if method == "columns":
        return _input_gradient_by_columns(_dout_by_group(dout, groups), weight, geometry)
    return input_gradient_by_positions(dout, weight, geometry)


def _dout_by_group(dout: np.ndarray, groups: int) -> np.ndarray:
    """dout (N, F, Ho, Wo) as (G, Fg, M), columns (n, ho, wo): one copy."""
    return dout.transpose(1, 0, 2, 3).reshape(groups, dout.shape[1] // groups, -1)


def _input_gradient_by_columns(dout_g: np.ndarray, weight: np.ndarray,
                               geometry: ConvGeometry) -> np.ndarray:
    """The ``"columns"`` form: ``W_g.T @ D_g`` then col2im; dout_g is dout as (G, Fg, M)."""
    groups = geometry.groups
    weight_g = weight.reshape(groups, weight.shape[0] // groups, -1)              # (G, Fg, Kg)
    dcols = (weight_g.transpose(0, 2, 1) @ dout_g).reshape(-1, dout_g.shape[2])   # (K, M)
    return col2im(dcols, *geometry[:5])


def _columns_product(weight: np.ndarray, cols: np.ndarray, geometry: ConvGeometry
                     ) -> np.ndarray:
    """The forward product without the bias: ``W_g @ X_g`` per group, as (N, F, Ho, Wo)."""
    groups, filters = geometry.groups, weight.shape[0]
    batch, _, out_h, out_w = output_shape_of(geometry, filters)
    out = (weight.reshape(groups, filters // groups, -1)                          # (G, Fg, Kg)
           @ cols.reshape(groups, -1, batch, out_h * out_w).transpose(2, 0, 1, 3))  # (N, G, Kg, P)
    return out.reshape(batch, filters, out_h, out_w)


def _weight_gradient(dout: np.ndarray, cols: np.ndarray, weight_shape: tuple[int, ...],
                     groups: int) -> np.ndarray:
    """Term 1 of :func:`conv2d_backward`, ``D_g @ X_g.T`` per group, for any columns."""
    cols_g = cols.reshape(groups, -1, cols.shape[1])                      # (G, Kg, M)
    dout_g = _dout_by_group(dout, groups)                                 # (G, Fg, M)
    return (cols_g @ dout_g.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(weight_shape)


def conv2d_jvp(
    x_dot: np.ndarray | None, weight_dot: np.ndarray | None, bias_dot: np.ndarray | None,
    cache: Conv2DCache,
) -> tuple[np.ndarray, Conv2DTangentCache]:
    """Forward-mode derivative of :func:`conv2d_forward` (bilinear in x and w)::

        out_dot = conv(x_dot, w) + conv(x, w_dot) + b_dot

    through the columns: ``W_g @ im2col(x_dot)_g + W_dot_g @ X_g`` per group.

    Parameters
    ----------
    x_dot : ndarray, shape (N, C, H, W), or None
        None for a zero tangent (the data of a model).
    weight_dot : ndarray, shape (F, Cg, kH, kW), or None
    bias_dot : ndarray, shape (F,), or None
    cache : Conv2DCache
        From :func:`conv2d_forward`.

    Returns
    -------
    out_dot : ndarray, shape (N, F, Ho, Wo)
    tangent_cache : Conv2DTangentCache
        For :func:`conv2d_backward_jvp`.
    """
    check_cache(cache, Conv2DCache, "conv2d_jvp: cache")
    if x_dot is not None:
        x_dot = check_array(x_dot, "conv2d_jvp: x_dot", cache.geometry.x_shape)
    if weight_dot is not None:
        weight_dot = check_array(weight_dot, "conv2d_jvp: weight_dot", cache.weight.shape)
    if bias_dot is not None:
        bias_dot = check_array(bias_dot, "conv2d_jvp: bias_dot", (cache.weight.shape[0],))
    return _conv2d_jvp(x_dot, weight_dot, bias_dot, cache)


def _conv2d_jvp(x_dot, weight_dot, bias_dot, cache):
    """:func:`conv2d_jvp` without the argument checks."""
    geometry, weight = cache.geometry, cache.weight
    cols_dot = None if x_dot is None else im2col(x_dot, *geometry[1:5])     # (C*kH*kW, M)
    out_dot = np.zeros(output_shape_of(geometry, weight.shape[0]), dtype=np.result_type(
        cache.cols, weight, *[t for t in (x_dot, weight_dot, bias_dot) if t is not None]))
    if cols_dot is not None:
        out_dot = out_dot + _columns_product(weight, cols_dot, geometry)     # conv(x_dot, w)
    if weight_dot is not None:
        out_dot = out_dot + _columns_product(weight_dot, cache.cols, geometry)  # conv(x, w_dot)
    if bias_dot is not None:
        out_dot = out_dot + bias_dot.reshape(-1, 1, 1)                       # (F, 1, 1)
    return out_dot, Conv2DTangentCache(cols_dot, weight_dot)


def conv2d_backward_jvp(
    dout: np.ndarray, dout_dot: np.ndarray, cache: Conv2DCache,
    tangent_cache: Conv2DTangentCache,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Directional derivative of :func:`conv2d_backward` (the layer's R-operator).

    The backward pass is bilinear: ``dx`` is linear in ``(dout, W)``, ``dW`` in ``(dout, X)``
    (the columns), ``db`` in ``dout``. Along ``(dout_dot, x_dot, W_dot)``:

    * term 1, the backward pass of ``dout_dot`` at the point (:func:`conv2d_backward`);
    * term 2, ``dout`` through the tangent kernel into ``dx_dot`` (the transposed convolution
      of ``dout`` with ``W_dot``, :func:`conv2d_input_gradient`);
    * term 3, ``dout`` against the tangent columns into ``dW_dot``: ``D_g @ im2col(x_dot)_g.T``
      (the sum over positions of a shared kernel, as term 1 of the backward pass).

    Parameters
    ----------
    dout, dout_dot : ndarray, shape (N, F, Ho, Wo)
    cache : Conv2DCache
    tangent_cache : Conv2DTangentCache
        From :func:`conv2d_jvp`.

    Returns
    -------
    dx_dot : ndarray, shape (N, C, H, W)
    dweight_dot : ndarray, shape (F, Cg, kH, kW)
    dbias_dot : ndarray, shape (F,), or None
    """
    check_cache(tangent_cache, Conv2DTangentCache, "conv2d_backward_jvp: tangent_cache")
    dout = check_dout(dout, cache, Conv2DCache,
                      lambda c: output_shape_of(c.geometry, c.weight.shape[0]),
                      "conv2d_backward_jvp")
    dout_dot = check_array(dout_dot, "conv2d_backward_jvp: dout_dot", dout.shape)
    return _conv2d_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _conv2d_backward_jvp(dout, dout_dot, cache, tangent_cache):
    """:func:`conv2d_backward_jvp` without the argument checks."""
    geometry = cache.geometry
    dx_dot, dweight_dot, dbias_dot = conv2d_backward(dout_dot, cache)             # term 1
    if tangent_cache.weight_dot is not None:                                      # term 2
        dx_dot = dx_dot + conv2d_input_gradient(dout, tangent_cache.weight_dot,
                                                geometry.x_shape, *geometry[2:])
    if tangent_cache.cols_dot is not None:                                        # term 3
        dweight_dot = dweight_dot + _weight_gradient(dout, tangent_cache.cols_dot,
                                                     cache.weight.shape, geometry.groups)
    return dx_dot, dweight_dot, dbias_dot


@register
@dataclass(frozen=True)
class Conv2D(ConvLayerGeometry, Layer):
    """2-D convolution spec (PyTorch's ``nn.Conv2d``).

    Parameters ``weight`` (out_channels, in_channels / groups, kH, kW) and ``bias``
    (out_channels,). ``kernel_size``, ``stride``, ``padding``, ``dilation``: an int or an
    (h, w) pair, stored as a pair. Initialisation: weight and bias from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = in_channels / groups * kH * kW``,
    PyTorch's default distribution.
    """

    functions = (conv2d_forward, conv2d_backward)
    tangent_functions = (_conv2d_jvp, _conv2d_backward_jvp)

    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.out_channels, self.in_channels // self.groups,
                             *self.kernel_size)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self._output_shape(input_shape)
