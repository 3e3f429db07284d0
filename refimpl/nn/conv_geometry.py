"""The geometry every sliding-window layer shares: output sizes, padding, im2col and col2im.

:mod:`refimpl.nn.conv`, :mod:`refimpl.nn.conv_positions`, :mod:`refimpl.nn.locally_connected`
and :mod:`refimpl.nn.pool` build on it.

Legend: ``N`` batch, ``C`` input channels, ``F`` filters (output channels), ``G`` groups,
``H``/``W`` input height/width, ``Hp``/``Wp`` padded height/width, ``Ho``/``Wo`` output
height/width, ``kH``/``kW`` kernel height/width, ``P = Ho * Wo`` output positions,
``M = N * Ho * Wo`` output columns, ``Cg = C / G``, ``Fg = F / G``, ``Kg = Cg * kH * kW``.

Geometry (PyTorch's ``nn.Conv2d``), per spatial axis with kernel ``k``, stride ``s``, padding
``p`` and dilation ``d``::

    Ho = floor((H + 2p - d(k - 1) - 1) / s) + 1

and the output position ``ho`` reads the padded input rows ``ho*s + i*d`` for
``i = 0 .. k-1`` (cross-correlation: the kernel is not flipped). When the division rounds
down, the last input rows are read by no window and get a zero gradient; nothing in the
formulas assumes the division is exact.

im2col columns (C*kH*kW, M): row ``(c, i, j)`` (c slowest), column ``(n, ho, wo)`` (n
slowest). Because ``c`` is the slowest row index, the rows of group ``g`` are one contiguous
block, so a grouped convolution is one matrix product per group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._validate import check_array, check_cache, positive_int
from .base import check_name, weight_and_bias

__all__ = ["Pair", "ConvGeometry", "as_pair", "conv_output_size", "conv2d_output_shape",
           "window_slice", "pad_spatial", "im2col", "col2im"]

Pair = tuple[int, int]


class ConvGeometry(NamedTuple):
    """The geometry of one convolution call, as its backward pass needs it."""

    x_shape: tuple[int, int, int, int]   # (N, C, H, W) of the input
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int


# --- sizes -----------------------------------------------------------------------------------

def as_pair(value: Any, name: str, minimum: int) -> Pair:
    """An int or an ``(h, w)`` pair of ints, each ``>= minimum``, as a tuple ``(h, w)``.

    Parameters
    ----------
    value : int or sequence of two ints
        Bools are not ints here.
    name : str
        The argument's name, for the message.
    minimum : int
        The smallest value allowed.

    Raises
    ------
    TypeError
        For anything that is not an int or a length-2 sequence of ints.
    ValueError
        For a value below ``minimum``.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name}: expected an int or an (h, w) pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {value!r}")
    return pair


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """``floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1``, PyTorch's formula.

    It is ``<= 0`` when the dilated kernel is larger than the padded input.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_output_shape(
    input_shape: tuple[int, ...], in_channels: int, out_channels: int, kernel_size: Pair,
    stride: Pair, padding: Pair, dilation: Pair, who: str = "conv2d",
) -> tuple[int, int, int, int]:
    """The output shape (N, F, Ho, Wo) of a convolution geometry on an input (N, C, H, W).

    Raises
    ------
    ValueError
        Naming ``who``, for a wrong rank, a wrong channel count, an empty input or a dilated
        kernel larger than the padded input.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{who}: expected input of rank 4 (N, C, H, W) with C = {in_channels}, "
                         f"got shape {input_shape}")
    batch, channels, height, width = input_shape
    if channels != in_channels:
        raise ValueError(f"{who}: expected {in_channels} input channels (N, {in_channels}, H, W), "
                         f"got shape {input_shape}")
    if height < 1 or width < 1:
        raise ValueError(f"{who}: expected a non-empty input (H, W >= 1), got shape {input_shape}")
    out_size = []
    for axis, size, k, s, p, d in zip(("height", "width"), (height, width), kernel_size, stride,
                                      padding, dilation, strict=True):
        extent = d * (k - 1) + 1
        if extent > size + 2 * p:
            raise ValueError(
                f"{who}: kernel {axis} {k} (dilated to {extent}) is larger than the padded "
                f"input {axis} {size} + 2*{p} = {size + 2 * p}; input shape {input_shape}")
        out_size.append(conv_output_size(size, k, s, p, d))
    return (batch, out_channels, out_size[0], out_size[1])


def output_shape_of(geometry: ConvGeometry, filters: int) -> tuple[int, int, int, int]:
    """(N, F, Ho, Wo) of the forward output that ``geometry`` (a
    :class:`~refimpl.nn.conv_geometry.ConvGeometry`) belongs to."""
    batch, _, height, width = geometry.x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry[1:5]
    return (batch, filters, conv_output_size(height, kh, sh, ph, dh),
            conv_output_size(width, kw, sw, pw, dw))


# --- windows ---------------------------------------------------------------------------------

def window_slice(offset: int, stride: int, count: int) -> slice:
    """Padded-input rows ``offset, offset + stride, ..., offset + stride (count - 1)``."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def pad_spatial(x: np.ndarray, padding: Pair) -> np.ndarray:
    """Zero-pad the two spatial axes of (N, C, H, W); ``x`` itself for no padding."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    batch, channels, height, width = x.shape
    padded = np.zeros((batch, channels, height + 2 * ph, width + 2 * pw), dtype=x.dtype)
    padded[:, :, ph:ph + height, pw:pw + width] = x
    return padded


def im2col(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair,
           dilation: Pair) -> np.ndarray:
    """Unfold the (zero-padded) windows of ``x`` into columns.

    One copy of a strided view: the sliding windows of the padded input, subsampled by the
    stride (window start) and the dilation (taps inside a window).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding, dilation : (int, int)

    Returns
    -------
    cols : ndarray, shape (C*kH*kW, N*Ho*Wo)
        ``cols[(c, i, j), (n, ho, wo)] = xpad[n, c, ho*sH + i*dH, wo*sW + j*dW]``.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    xpad = pad_spatial(x, padding)                                      # (N, C, Hp, Wp)
    windows = sliding_window_view(xpad, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                     # (N, C, Ho, Wo, kH, kW)
    channels = x.shape[1]
    return windows.transpose(1, 4, 5, 0, 2, 3).reshape(channels * kh * kw, -1)


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kernel_size: Pair,
           stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    """Adjoint of :func:`im2col`: add every column entry back onto the input element it was
    read from (an element read by several windows receives the sum).

    One strided-slice addition per kernel offset (i, j); padded positions are dropped at the
    end, and input rows that no window reads (when the output size rounds down) stay zero.

    Parameters
    ----------
    cols : ndarray, shape (C*kH*kW, N*Ho*Wo)
    x_shape : (N, C, H, W)
    kernel_size, stride, padding, dilation : (int, int)

    Returns
    -------
    dx : ndarray, shape (N, C, H, W), C-contiguous
    """
    batch, channels, height, width = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    out_h = conv_output_size(height, kh, sh, ph, dh)
    out_w = conv_output_size(width, kw, sw, pw, dw)
    blocks = cols.reshape(channels, kh, kw, batch, out_h, out_w)
    # Accumulate in (C, N, Hp, Wp), the order of the column blocks, so that each addition
    # reads its block contiguously.
    dpad = np.zeros((channels, batch, height + 2 * ph, width + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        rows = window_slice(i * dh, sh, out_h)
        for j in range(kw):
            dpad[:, :, rows, window_slice(j * dw, sw, out_w)] += blocks[:, i, j]
    return np.ascontiguousarray(dpad[:, :, ph:ph + height, pw:pw + width].transpose(1, 0, 2, 3))


# --- argument checks of the free functions ---------------------------------------------------

def check_hyperparameters(stride: Any, padding: Any, dilation: Any,
                          groups: Any) -> tuple[Pair, Pair, Pair, int]:
    """stride, padding, dilation as pairs (>= 1, >= 0, >= 1) and groups a positive int."""
    return (as_pair(stride, "stride", 1), as_pair(padding, "padding", 0),
            as_pair(dilation, "dilation", 1), positive_int(groups, "groups"))


def check_arrays(x: Any, weight: Any, bias: Any, weight_layout: tuple[str, ...], who: str,
                 x_name: str = "x", x_layout: tuple[str, ...] = ("N", "C", "H", "W"),
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x (N, C, H, W) and the weight (of ``weight_layout``) as numeric arrays of the right
    ranks, and the bias as an array (its shape is checked by the caller)."""
    x = check_array(x, f"{who}: {x_name}", x_layout)
    weight = check_array(weight, f"{who}: weight", weight_layout)
    if bias is not None:
        bias = check_array(bias, f"{who}: bias")
    return x, weight, bias


def check_forward_arguments(x: Any, weight: Any, bias: Any, stride: Any, padding: Any,
                            dilation: Any, groups: Any, weight_layout: tuple[str, ...],
                            who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                               ConvGeometry]:
    """The arguments of a convolution-like forward function, and its geometry.

    ``weight_layout`` ends in ``(F, Cg, kH, kW)``; ``groups`` groups of ``Cg`` channels must
    make x's channels and ``groups`` must divide ``F`` (``ValueError`` naming ``who``).
    """
    x, weight, bias = check_arrays(x, weight, bias, weight_layout, who)
    stride, padding, dilation, groups = check_hyperparameters(stride, padding, dilation, groups)
    filters, group_channels, kh, kw = weight.shape[-4:]
    if group_channels * groups != x.shape[1] or filters % groups:
        raise ValueError(f"{who}: weight shape {weight.shape} with groups={groups} needs "
                         f"{group_channels * groups} input channels and F divisible by "
                         f"{groups}; x has shape {x.shape}")
    return x, weight, bias, ConvGeometry(tuple(x.shape), (kh, kw), stride, padding, dilation,
                                         groups)


def check_dout(dout: Any, cache: Any, cache_type: type,
               expected: Callable[[Any], tuple[int, ...]], who: str) -> np.ndarray:
    """The cache is its forward's; dout (N, F, Ho, Wo) has the forward output's shape."""
    check_cache(cache, cache_type, f"{who}: cache")
    return check_array(dout, f"{who}: dout", expected(cache))


# --- the layer specs' shared geometry --------------------------------------------------------

@dataclass(frozen=True)
class ConvLayerGeometry:
    """The fields every convolution layer spec begins with, and their validation.

    A subclass adds ``stride``, ``padding``, ``dilation``, ``groups`` and ``bias`` after its
    own positional fields. The pairs are stored normalised as tuples (``kernel_size=3``
    becomes ``(3, 3)``), so that ``layer_config`` / ``layer_from_config`` round-trip to an
    equal spec.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: Any

    has_parameters = True
    #: The layer's free functions ``(forward, backward)``, in a tuple so that they are not
    #: bound as methods.
    functions: ClassVar[tuple[Callable[..., Any], Callable[..., Any]]]
    #: Its second-order functions ``(jvp, backward_jvp)``, unchecked, likewise.
    tangent_functions: ClassVar[tuple[Callable[..., Any], Callable[..., Any]]]

    def __post_init__(self) -> None:
        check_name(self.name)
        positive_int(self.in_channels, "in_channels")
        positive_int(self.out_channels, "out_channels")
        for field, minimum in (("kernel_size", 1), ("stride", 1), ("padding", 0),
                               ("dilation", 1)):
            object.__setattr__(self, field, as_pair(getattr(self, field), field, minimum))
        groups = positive_int(self.groups, "groups")
        if self.in_channels % groups or self.out_channels % groups:
            raise ValueError(f"{self.name}: groups={groups} must divide both "
                             f"in_channels={self.in_channels} and "
                             f"out_channels={self.out_channels}")
        object.__setattr__(self, "groups", groups)
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias: expected a bool, got {self.bias!r}")

    def _fan_in(self) -> int:
        kh, kw = self.kernel_size
        return self.in_channels // self.groups * kh * kw

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every parameter (PyTorch's default)."""
        bound = 1.0 / np.sqrt(self._fan_in())
        return {local: rng.uniform(-bound, bound, size=shape)
                for local, shape in self.parameter_shapes().items()}

    def _output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        return conv2d_output_shape(input_shape, self.in_channels, self.out_channels,
                                   self.kernel_size, self.stride, self.padding, self.dilation,
                                   who=self.name)

    def forward(self, x, params):
        self.output_shape(x.shape)
        return self.functions[0](x, params["weight"], params.get("bias"), self.stride,
                                 self.padding, self.dilation, self.groups)

    def backward(self, dout, cache):
        dx, dweight, dbias = self.functions[1](dout, cache)
        return dx, weight_and_bias(dweight, dbias)

    def jvp(self, x_dot, params_dot, cache):
        return self.tangent_functions[0](x_dot, params_dot["weight"], params_dot.get("bias"),
                                         cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        dx_dot, dweight_dot, dbias_dot = self.tangent_functions[1](dout, dout_dot, cache,
                                                                   tangent_cache)
        return dx_dot, weight_and_bias(dweight_dot, dbias_dot)
