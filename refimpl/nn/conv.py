"""2-D convolution (stride, padding, dilation, groups) and its unshared twin, the locally
connected layer, as forward/backward pairs through im2col.

Legend: ``N`` batch, ``C`` input channels, ``F`` filters (output channels), ``G`` groups,
``H``/``W`` input height/width, ``Hp``/``Wp`` padded height/width, ``Ho``/``Wo`` output
height/width, ``kH``/``kW`` kernel height/width, ``P = Ho * Wo`` output positions,
``M = N * Ho * Wo`` output columns, ``Cg = C / G``, ``Fg = F / G``.

Geometry (PyTorch's ``nn.Conv2d``), per spatial axis with kernel ``k``, stride ``s``, padding
``p`` and dilation ``d``::

    Ho = floor((H + 2p - d(k - 1) - 1) / s) + 1

and the output position ``ho`` reads the padded input rows ``ho*s + i*d`` for
``i = 0 .. k-1`` (cross-correlation: the kernel is not flipped). When the division rounds
down, the last input rows are read by no window and get a zero gradient; nothing in the
formulas below assumes the division is exact.

Layouts:

* input ``x`` (N, C, H, W); output (N, F, Ho, Wo) — NCHW as PyTorch;
* ``Conv2D`` weight (F, Cg, kH, kW), bias (F,) — ``nn.Conv2d``'s layout. Output channel ``f``
  belongs to group ``g = f // Fg`` and reads input channels ``g*Cg .. (g+1)*Cg - 1``;
* ``LocallyConnected2D`` weight (Ho, Wo, F, Cg, kH, kW): ``weight[i, j]`` is the conv-layout
  kernel used at output position ``(i, j)`` only; bias (F, Ho, Wo), one per output value;
* im2col columns (C*kH*kW, M): row ``(c, i, j)`` (c slowest), column ``(n, ho, wo)`` (n
  slowest). Because ``c`` is the slowest row index, the rows of group ``g`` are one
  contiguous block, so a grouped convolution is one matrix product per group (in the
  forward pass a stacked product over the examples, so that the output is born NCHW).

Parameter sharing: ``Conv2D`` uses one kernel at all ``P`` positions, so its weight gradient
is the *sum* over positions (and over the batch) of the per-position gradients — which the
one matrix product ``cols (C*kH*kW, M) @ dout.T (M, F)`` computes in one step. The locally
connected layer keeps the ``P`` terms apart (one gradient per kernel). ``tests/test_conv.py``
checks that the first is the sum of the second.

Speed (measured, see ``benchmarks/bench_conv.py``): the column layout (C*kH*kW, M) with one
matrix product per group, im2col as a single copy of a strided (sliding-window) view, and the
input gradient (col2im) as a loop over the kH*kW kernel offsets, each adding one strided
slice. Against ``np.add.at`` / ``np.bincount`` over a flat index array the offset loop was
faster for every kernel measured (1x1 to 7x7, stride 1 and 2; NumPy 2.4) once building the
indices is counted; even with the indices precomputed, ``bincount`` won only for a 5x5
stride-2 kernel (0.28 vs 0.45 ms) and lost by 1.1-1.4x for 3x3 stride 1.

For narrow outputs (Wo <= 12) with at least 8 input channels per group, the input gradient
is computed in another order ("positions", see :func:`conv2d_input_gradient`): col2im's inner
loops then run over N*C contiguous elements instead of Wo strided ones. The same sums, bit
for bit on every shape compared; forward + backward took 0.66-1.06x the time on such shapes
(``benchmarks/bench_conv_input_gradient.py``) and up to 1.73x on others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._validate import check_array, check_cache, positive_int
from .base import Layer, check_name, register, weight_and_bias

__all__ = [
    "Conv2D", "LocallyConnected2D", "Conv2DCache", "LocallyConnected2DCache",
    "conv2d_forward", "conv2d_backward",
    "locally_connected2d_forward", "locally_connected2d_backward",
    "conv2d_input_gradient", "positions_first",
    "conv_output_size", "conv2d_output_shape", "im2col", "col2im", "as_pair",
]

Pair = tuple[int, int]


# --- geometry --------------------------------------------------------------------------------

def as_pair(value: Any, name: str, minimum: int) -> Pair:
    """An int or an (h, w) pair of ints, each ``>= minimum``, as a tuple ``(h, w)``.

    ``TypeError`` for anything that is not an int or a length-2 sequence of ints (bools are
    not ints here); ``ValueError`` for a value below ``minimum``.
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
    """``floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1`` (PyTorch's
    formula); <= 0 when the dilated kernel is larger than the padded input."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_output_shape(
    input_shape: tuple[int, ...], in_channels: int, out_channels: int, kernel_size: Pair,
    stride: Pair, padding: Pair, dilation: Pair, who: str = "conv2d",
) -> tuple[int, int, int, int]:
    """Validate an input shape (N, C, H, W) against a convolution geometry and return the
    output shape (N, F, Ho, Wo). Raises ``ValueError`` naming ``who`` on a wrong rank, a wrong
    channel count or a dilated kernel larger than the padded input."""
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


def _window_slice(offset: int, stride: int, count: int) -> slice:
    """Padded-input rows ``offset, offset + stride, ..., offset + stride (count - 1)``."""
    return slice(offset, offset + stride * (count - 1) + 1, stride)


def _pad(x: np.ndarray, padding: Pair) -> np.ndarray:
    """Zero-pad the two spatial axes of (N, C, H, W) (returns ``x`` itself for no padding)."""
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

    - x: (N, C, H, W); the geometry as (h, w) pairs
    - returns cols: (C*kH*kW, N*Ho*Wo) with ``cols[(c, i, j), (n, ho, wo)] =
      xpad[n, c, ho*sH + i*dH, wo*sW + j*dW]``.

    One copy of a strided view: the sliding windows of the padded input, subsampled by the
    stride (window start) and the dilation (taps inside a window).
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    xpad = _pad(x, padding)                                             # (N, C, Hp, Wp)
    windows = sliding_window_view(xpad, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                     # (N, C, Ho, Wo, kH, kW)
    channels = x.shape[1]
    return windows.transpose(1, 4, 5, 0, 2, 3).reshape(channels * kh * kw, -1)


def col2im(cols: np.ndarray, x_shape: tuple[int, int, int, int], kernel_size: Pair,
           stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    """Adjoint of :func:`im2col`: add every column entry back onto the input element it was
    read from (an element read by several windows receives the sum).

    - cols: (C*kH*kW, N*Ho*Wo); x_shape: (N, C, H, W)
    - returns dx: (N, C, H, W), C-contiguous.

    One strided-slice addition per kernel offset (i, j); padded positions are dropped at the
    end, and input rows that no window reads (when the output size rounds down) stay zero.
    """
    batch, channels, height, width = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    out_h = conv_output_size(height, kh, sh, ph, dh)
    out_w = conv_output_size(width, kw, sw, pw, dw)
    blocks = cols.reshape(channels, kh, kw, batch, out_h, out_w)
    # Accumulate in (C, N, Hp, Wp), the order of the column blocks: each addition then reads
    # its block contiguously (measured ~1.4x faster than accumulating in NCHW).
    dpad = np.zeros((channels, batch, height + 2 * ph, width + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        rows = _window_slice(i * dh, sh, out_h)
        for j in range(kw):
            dpad[:, :, rows, _window_slice(j * dw, sw, out_w)] += blocks[:, i, j]
    return np.ascontiguousarray(dpad[:, :, ph:ph + height, pw:pw + width].transpose(1, 0, 2, 3))


# --- Conv2D ----------------------------------------------------------------------------------

class Conv2DCache(NamedTuple):
    cols: np.ndarray                  # (C*kH*kW, N*Ho*Wo), im2col of the input
    weight: np.ndarray                # (F, Cg, kH, kW)
    x_shape: tuple[int, int, int, int]
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    has_bias: bool


def _check_groups(groups: Any, in_channels: int, out_channels: int, who: str) -> int:
    groups = positive_int(groups, "groups")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{who}: groups={groups} must divide both in_channels={in_channels} "
                         f"and out_channels={out_channels}")
    return groups


def _check_arrays(x: Any, weight: Any, bias: Any, weight_layout: tuple[str, ...], who: str,
                  x_name: str = "x", x_layout: tuple[str, ...] = ("N", "C", "H", "W"),
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x (N, C, H, W) and the weight (of ``weight_layout``) as numeric arrays of the right
    ranks, and the bias as an array (its shape is checked by the caller)."""
    x = check_array(x, f"{who}: {x_name}", x_layout)
    weight = check_array(weight, f"{who}: weight", weight_layout)
    if bias is not None:
        bias = check_array(bias, f"{who}: bias")
    return x, weight, bias


def _check_dout(dout: Any, cache: Any, cache_type: type, expected: Any, who: str) -> np.ndarray:
    """The cache is its forward's; dout (N, F, Ho, Wo) has the forward output's shape."""
    check_cache(cache, cache_type, f"{who}: cache")
    return check_array(dout, f"{who}: dout", expected(cache))


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1,
) -> tuple[np.ndarray, Conv2DCache]:
    """Grouped, strided, padded, dilated 2-D cross-correlation (``torch.nn.functional.conv2d``).

    - x: (N, C, H, W); weight: (F, C/G, kH, kW); bias: (F,) or None
    - stride, padding, dilation: ints or (h, w) pairs; groups: G dividing C and F
    - returns out: (N, F, Ho, Wo) with
      ``out[n, f, ho, wo] = b[f] + sum_{c, i, j} w[f, c, i, j] xpad[n, g Cg + c, ho sH + i dH,
      wo sW + j dW]`` (g = f // Fg), and the cache for :func:`conv2d_backward`.

    Complex-step safe (only products and sums of the inputs).
    """
    x, weight, bias = _check_arrays(x, weight, bias, ("F", "Cg", "kH", "kW"), "conv2d_forward")
    stride, padding = as_pair(stride, "stride", 1), as_pair(padding, "padding", 0)
    dilation = as_pair(dilation, "dilation", 1)
    filters, group_channels, kh, kw = weight.shape
    channels = x.shape[1]
    groups = positive_int(groups, "groups")
    if group_channels * groups != channels or filters % groups:
        raise ValueError(f"conv2d_forward: weight shape {weight.shape} with groups={groups} needs "
                         f"{group_channels * groups} input channels and F divisible by "
                         f"{groups}; x has shape {x.shape}")
    if bias is not None and bias.shape != (filters,):
        raise ValueError(f"conv2d_forward: bias: expected shape ({filters},), got {bias.shape}")
    batch, _, out_h, out_w = conv2d_output_shape(x.shape, channels, filters, (kh, kw), stride,
                                                 padding, dilation, who="conv2d_forward")
    cols = im2col(x, (kh, kw), stride, padding, dilation)      # (C*kH*kW, M)
    positions = out_h * out_w
    # One product per group: rows g*Kg .. (g+1)*Kg - 1 of cols are group g's channels. The
    # columns are read per example, (Kg, P) blocks of the same array, so the product lands
    # in NCHW order with no transposing copy (measured in isolation against (F, M) and a
    # copy: 4-6x faster for a thin 16 x 27 weight, equal to 15% slower for 32 x 144).
    out = (weight.reshape(groups, filters // groups, -1)                      # (G, Fg, Kg)
           @ cols.reshape(groups, -1, batch, positions).transpose(2, 0, 1, 3)  # (N, G, Kg, P)
           )                                                                 # (N, G, Fg, P)
    if bias is not None:
        # + (G, Fg, 1): the bias of each filter. In place into our own fresh array unless
        # only the bias is complex (a complex step on the bias alone).
        in_place = out.dtype == np.result_type(out, bias)
        out = np.add(out, bias.reshape(groups, -1, 1), out=out if in_place else None)
    cache = Conv2DCache(cols, weight, tuple(x.shape), (kh, kw), stride, padding, dilation,
                        groups, bias is not None)
    return out.reshape(batch, filters, out_h, out_w), cache


def conv2d_backward(
    dout: np.ndarray, cache: Conv2DCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv2d_forward`.

    - dout: (N, F, Ho, Wo), the upstream gradient
    - returns dx: (N, C, H, W), dweight: (F, Cg, kH, kW), dbias: (F,) or None

    With ``D = dout`` as (F, M) and the columns ``X`` (C*kH*kW, M), per group g:

    * term 1, dweight_g = D_g @ X_g.T — the kernel is used at every output column, so its
      gradient is the sum over all (n, ho, wo): shared-parameter accumulation as a product;
    * term 2, dcols_g = W_g.T @ D_g, then col2im adds each column entry back onto the input
      element it was read from (elements read by several windows receive the sum); see
      :func:`conv2d_input_gradient` for the two equivalent orders this is computed in;
    * term 3, dbias[f] = sum over (n, ho, wo) of dout[n, f].
    """
    dout = _check_dout(dout, cache, Conv2DCache, _conv2d_output_shape, "conv2d_backward")
    weight, groups = cache.weight, cache.groups
    _, group_channels, kh, kw = weight.shape
    geometry = (cache.x_shape, (kh, kw), cache.stride, cache.padding, cache.dilation)
    # dout as (G, Fg, M) for term 1, and for term 2 by columns; made after term 2 by positions
    # so that the two methods' temporaries are never alive together.
    if positions_first(group_channels, dout.shape[3]):
        dx = _input_gradient_by_positions(dout, weight, groups, *geometry)   # term 2
        dout_g = _dout_by_group(dout, groups)
    else:
        dout_g = _dout_by_group(dout, groups)
        dx = _input_gradient_by_columns(dout_g, weight, groups, *geometry)   # term 2
    cols = cache.cols                                                  # (K, M)
    cols_g = cols.reshape(groups, -1, cols.shape[1])                   # (G, Kg, M)
    # term 1 computed as its transpose, X_g @ D_g.T (Kg, Fg): measured as fast as, or up to
    # 1.9x faster than, D_g @ X_g.T for these long, thin operands.
    dweight = (cols_g @ dout_g.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(weight.shape)
    dbias = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None     # term 3: (F,)
    return dx, dweight, dbias


def _conv2d_output_shape(cache: Conv2DCache) -> tuple[int, int, int, int]:
    """(N, F, Ho, Wo) of the forward output a :class:`Conv2DCache` belongs to."""
    batch, _, height, width = cache.x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (cache.kernel_size, cache.stride, cache.padding,
                                              cache.dilation)
    return (batch, cache.weight.shape[0], conv_output_size(height, kh, sh, ph, dh),
            conv_output_size(width, kw, sw, pw, dw))


INPUT_GRADIENT_METHODS = ("auto", "columns", "positions")


def positions_first(group_channels: int, out_width: int) -> bool:
    """The rule ``method="auto"`` of :func:`conv2d_input_gradient` follows: True (take
    ``"positions"``) when the output is at most 12 wide and a group has at least 8 input
    channels; else ``"columns"``.

    The two methods compute the same sums, adding the kernel offsets in the same order. They
    differ in the runs NumPy adds in one inner loop: ``Wo`` elements (strided by the stride)
    for ``"columns"``, ``N*C`` contiguous elements for ``"positions"``; short runs cost a
    loop overhead each.
    ``"positions"`` pays for its long runs with a transposing copy of ``dout`` and of ``dx``,
    more memory at its peak, and matrix products only ``Cg`` wide. Measured by
    ``benchmarks/bench_conv_input_gradient.py`` (conv forward + backward, 2 cores, NumPy 2.4,
    OpenBLAS, two runs): "positions" took 0.66-1.06x the time of "columns" on the shapes
    with ``Wo <= 12`` and ``Cg >= 8`` and 0.86-1.73x on the others, never faster on both
    runs there; the table is in that file's docstring.
    """
    return out_width <= 12 and group_channels >= 8


def conv2d_input_gradient(
    dout: np.ndarray, weight: np.ndarray, x_shape: tuple[int, int, int, int], stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, method: str = "auto",
) -> np.ndarray:
    """Term 2 of :func:`conv2d_backward`: the input gradient (a transposed convolution).

    - dout: (N, F, Ho, Wo); weight: (F, C/G, kH, kW); x_shape: (N, C, H, W) of the input
    - returns dx: (N, C, H, W), C-contiguous, with ``dx[n, c, h, w] = sum over (f, i, j, ho,
      wo) with h + p_h = ho sH + i dH and w + p_w = wo sW + j dW of w[f, c, i, j]
      dout[n, f, ho, wo]`` (c in f's group).

    Two implementations of the same sums, chosen by ``method``:

    * ``"columns"``: ``dcols_g = W_g.T @ D_g`` (C*kH*kW, N*Ho*Wo), then :func:`col2im`;
    * ``"positions"``: per kernel offset (i, j), ``T[i, j] = D @ W[:, :, i, j]`` laid out
      (Ho, Wo, N, C), so that one strided-slice addition per offset adds runs of N*C
      contiguous elements into a (Hp, Wp, N, C) accumulator; then one transposing copy to
      NCHW;
    * ``"auto"`` (the default): :func:`positions_first` decides, from measurements.

    Both accumulate the kH*kW offsets in the same order (i slowest), each a sum over the
    filters of a group computed by a matrix product; they agree to rounding (bit for bit on
    the shapes measured, though BLAS does not promise it).
    """
    if method not in INPUT_GRADIENT_METHODS:
        raise ValueError(f"conv2d_input_gradient: method must be one of "
                         f"{INPUT_GRADIENT_METHODS}, got {method!r}")
    stride, padding = as_pair(stride, "stride", 1), as_pair(padding, "padding", 0)
    dilation = as_pair(dilation, "dilation", 1)
    groups = positive_int(groups, "groups")
    dout, weight, _ = _check_arrays(dout, weight, None, ("F", "Cg", "kH", "kW"),
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
    geometry = (tuple(x_shape), (kh, kw), stride, padding, dilation)
    if method == "columns":
        dout_g = _dout_by_group(dout, groups)
        return _input_gradient_by_columns(dout_g, weight, groups, *geometry)
    return _input_gradient_by_positions(dout, weight, groups, *geometry)


def _dout_by_group(dout: np.ndarray, groups: int) -> np.ndarray:
    """dout (N, F, Ho, Wo) as (G, Fg, M), columns (n, ho, wo): one copy."""
    return dout.transpose(1, 0, 2, 3).reshape(groups, dout.shape[1] // groups, -1)


def _input_gradient_by_columns(dout_g: np.ndarray, weight: np.ndarray, groups: int,
                               x_shape: tuple[int, int, int, int], kernel_size: Pair,
                               stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    """``method="columns"`` of :func:`conv2d_input_gradient`; dout_g is dout as (G, Fg, M)."""
    filters = weight.shape[0]
    weight_g = weight.reshape(groups, filters // groups, -1)           # (G, Fg, Kg)
    dcols = (weight_g.transpose(0, 2, 1) @ dout_g).reshape(-1, dout_g.shape[2])   # (K, M)
    return col2im(dcols, x_shape, kernel_size, stride, padding, dilation)


def _input_gradient_by_positions(dout: np.ndarray, weight: np.ndarray, groups: int,
                                 x_shape: tuple[int, int, int, int], kernel_size: Pair,
                                 stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    """``method="positions"`` of :func:`conv2d_input_gradient`."""
    batch, channels, height, width = x_shape
    filters, group_channels, kh, kw = weight.shape
    _, _, out_h, out_w = dout.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    rows = out_h * out_w * batch
    fg = filters // groups
    # D: rows (ho, wo, n), one transposing copy of dout; per group a (rows, Fg) block.
    d = np.ascontiguousarray(dout.transpose(2, 3, 0, 1)).reshape(rows, groups, fg)
    # W: per offset and group the (Fg, Cg) matrix, contiguous (BLAS needs unit strides).
    w = np.ascontiguousarray(
        weight.reshape(groups, fg, group_channels, kh * kw).transpose(3, 0, 1, 2))
    # T[(i, j), (ho, wo, n), g, cg]: the products land directly in that order (each
    # (rows, Cg) block is a BLAS-compatible strided view of T, so no copy).
    t = np.empty((kh * kw, rows, groups, group_channels), dtype=np.result_type(dout, weight))
    np.matmul(d.transpose(1, 0, 2), w, out=t.transpose(0, 2, 1, 3))   # (kHkW, G, rows, Cg)
    t = t.reshape(kh, kw, out_h, out_w, batch * channels)
    dpad = np.zeros((height + 2 * ph, width + 2 * pw, batch * channels), dtype=t.dtype)
    for i in range(kh):
        rows_i = _window_slice(i * dh, sh, out_h)
        for j in range(kw):
            dpad[rows_i, _window_slice(j * dw, sw, out_w)] += t[i, j]
    dx = dpad[ph:ph + height, pw:pw + width].reshape(height, width, batch, channels)
    return np.ascontiguousarray(dx.transpose(2, 3, 0, 1))


class _ConvGeometry:
    """Shared validation and normalisation of the convolution hyper-parameters.

    The pairs are stored normalised as tuples (``kernel_size=3`` becomes ``(3, 3)``), so
    that ``layer_config`` / ``layer_from_config`` round-trip to an equal spec.
    """

    def _normalise_geometry(self) -> None:
        check_name(self.name)
        positive_int(self.in_channels, "in_channels")
        positive_int(self.out_channels, "out_channels")
        for field, minimum in (("kernel_size", 1), ("stride", 1), ("padding", 0),
                               ("dilation", 1)):
            object.__setattr__(self, field, as_pair(getattr(self, field), field, minimum))
        object.__setattr__(self, "groups", _check_groups(self.groups, self.in_channels,
                                                         self.out_channels, self.name))
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias: expected a bool, got {self.bias!r}")

    def _fan_in(self) -> int:
        kh, kw = self.kernel_size
        return self.in_channels // self.groups * kh * kw

    def _init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(self._fan_in())
        return {local: rng.uniform(-bound, bound, size=shape)
                for local, shape in self.parameter_shapes().items()}

    def _output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        return conv2d_output_shape(input_shape, self.in_channels, self.out_channels,
                                   self.kernel_size, self.stride, self.padding, self.dilation,
                                   who=self.name)


@register
@dataclass(frozen=True)
class Conv2D(_ConvGeometry, Layer):
    """2-D convolution spec (PyTorch's ``nn.Conv2d``): parameters ``weight``
    (out_channels, in_channels / groups, kH, kW) and ``bias`` (out_channels,).

    ``kernel_size``, ``stride``, ``padding``, ``dilation``: an int or an (h, w) pair, stored
    as a pair. Initialisation: weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    ``fan_in = in_channels / groups * kH * kW`` — PyTorch's default distribution.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    has_parameters = True

    def __post_init__(self) -> None:
        self._normalise_geometry()

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.out_channels, self.in_channels // self.groups,
                             *self.kernel_size)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self._output_shape(input_shape)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self._init(rng)

    def forward(self, x, params):
        self._output_shape(x.shape)
        return conv2d_forward(x, params["weight"], params.get("bias"), self.stride,
                              self.padding, self.dilation, self.groups)

    def backward(self, dout, cache):
        dx, dweight, dbias = conv2d_backward(dout, cache)
        return dx, weight_and_bias(dweight, dbias)


# --- LocallyConnected2D ------------------------------------------------------------------------

class LocallyConnected2DCache(NamedTuple):
    cols: np.ndarray     # (P, G, Kg, N): the im2col columns regrouped by output position
    weight: np.ndarray   # (Ho, Wo, F, Cg, kH, kW)
    x_shape: tuple[int, int, int, int]
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    has_bias: bool


def locally_connected2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1,
) -> tuple[np.ndarray, LocallyConnected2DCache]:
    """The convolution geometry with a separate kernel at every output position.

    - x: (N, C, H, W); weight: (Ho, Wo, F, C/G, kH, kW); bias: (F, Ho, Wo) or None
    - returns out: (N, F, Ho, Wo) with
      ``out[n, f, ho, wo] = b[f, ho, wo] + sum_{c, i, j} w[ho, wo, f, c, i, j]
      xpad[n, g Cg + c, ho sH + i dH, wo sW + j dW]``, and the cache.

    ``(Ho, Wo)`` follow from x and the geometry and must match weight's first two axes.
    One batched product: for each position p and group g, (Fg, Kg) @ (Kg, N).
    """
    x, weight, bias = _check_arrays(x, weight, bias, ("Ho", "Wo", "F", "Cg", "kH", "kW"),
                                    "locally_connected2d_forward")
    stride, padding = as_pair(stride, "stride", 1), as_pair(padding, "padding", 0)
    dilation = as_pair(dilation, "dilation", 1)
    kh, kw = weight.shape[4:]
    filters, group_channels = weight.shape[2:4]
    channels = x.shape[1]
    groups = positive_int(groups, "groups")
    if group_channels * groups != channels or filters % groups:
        raise ValueError(f"locally_connected2d_forward: weight shape {weight.shape} with "
                         f"groups={groups} needs {group_channels * groups} input channels and "
                         f"F divisible by {groups}; x has shape {x.shape}")
    batch, _, out_h, out_w = conv2d_output_shape(
        x.shape, channels, filters, (kh, kw), stride, padding, dilation,
        who="locally_connected2d_forward")
    if weight.shape[:2] != (out_h, out_w):
        raise ValueError(f"locally_connected2d_forward: weight shape {weight.shape} does not "
                         f"start with the output size ({out_h}, {out_w}) of input shape {x.shape}")
    if bias is not None and bias.shape != (filters, out_h, out_w):
        raise ValueError(f"locally_connected2d_forward: bias: expected shape "
                         f"{(filters, out_h, out_w)}, got {bias.shape}")
    positions = out_h * out_w
    cols = im2col(x, (kh, kw), stride, padding, dilation)              # (C*kH*kW, N*P)
    cols = cols.reshape(groups, -1, batch, positions).transpose(3, 0, 1, 2)  # (P, G, Kg, N)
    weight_p = weight.reshape(positions, groups, filters // groups, -1)  # (P, G, Fg, Kg)
    out = weight_p @ cols                                              # (P, G, Fg, N)
    out = out.reshape(out_h, out_w, filters, batch).transpose(3, 2, 0, 1)  # (N, F, Ho, Wo)
    if bias is not None:
        out = out + bias  # (N, F, Ho, Wo) + (F, Ho, Wo): the intended broadcast over the batch
    cache = LocallyConnected2DCache(cols, weight, tuple(x.shape), (kh, kw), stride, padding,
                                    dilation, groups, bias is not None)
    return np.ascontiguousarray(out), cache


def locally_connected2d_backward(
    dout: np.ndarray, cache: LocallyConnected2DCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`locally_connected2d_forward`.

    - dout: (N, F, Ho, Wo)
    - returns dx: (N, C, H, W), dweight: (Ho, Wo, F, Cg, kH, kW), dbias: (F, Ho, Wo) or None

    Per position p and group g (``D`` = dout at p as (Fg, N), ``X`` = the columns at p):

    * term 1, dweight[p] = D @ X.T — a sum over the batch only: each kernel is used at one
      position, so nothing is accumulated across positions (contrast ``conv2d_backward``);
    * term 2, dcols[p] = W[p].T @ D, then col2im as for the convolution;
    * term 3, dbias[f, ho, wo] = sum over n of dout[n, f, ho, wo].
    """
    dout = _check_dout(dout, cache, LocallyConnected2DCache,
                       lambda c: (c.x_shape[0], c.weight.shape[2], *c.weight.shape[:2]),
                       "locally_connected2d_backward")
    weight, groups, cols = cache.weight, cache.groups, cache.cols
    out_h, out_w, filters = weight.shape[:3]
    positions, _, group_rows, batch = cols.shape
    dout_p = dout.transpose(2, 3, 1, 0).reshape(positions, groups, filters // groups, batch)
    weight_p = weight.reshape(positions, groups, filters // groups, -1)        # (P, G, Fg, Kg)
    dweight = (dout_p @ cols.transpose(0, 1, 3, 2)).reshape(weight.shape)     # term 1
    dcols = weight_p.transpose(0, 1, 3, 2) @ dout_p                             # (P, G, Kg, N)
    dcols = dcols.transpose(1, 2, 3, 0).reshape(groups * group_rows, batch * positions)
    dx = col2im(dcols, cache.x_shape, cache.kernel_size, cache.stride, cache.padding,
                cache.dilation)                                                 # term 2
    dbias = dout.sum(axis=0) if cache.has_bias else None                        # term 3
    return dx, dweight, dbias


@register
@dataclass(frozen=True)
class LocallyConnected2D(_ConvGeometry, Layer):
    """Locally connected layer spec: ``Conv2D``'s geometry, an *unshared* kernel per output
    position.

    Parameters ``weight`` (Ho, Wo, out_channels, in_channels / groups, kH, kW) —
    ``weight[i, j]`` is the conv-layout kernel used at output position (i, j) — and ``bias``
    (out_channels, Ho, Wo). ``input_size`` (H, W) (an int or a pair) fixes (Ho, Wo), hence
    the parameter shapes; an input of another spatial size is a ``ValueError``.
    Initialisation as ``Conv2D`` (same fan-in), independently at every position.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: Any
    input_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    has_parameters = True

    def __post_init__(self) -> None:
        self._normalise_geometry()
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

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self._init(rng)

    def forward(self, x, params):
        self.output_shape(x.shape)
        return locally_connected2d_forward(x, params["weight"], params.get("bias"), self.stride,
                                           self.padding, self.dilation, self.groups)

    def backward(self, dout, cache):
        dx, dweight, dbias = locally_connected2d_backward(dout, cache)
        return dx, weight_and_bias(dweight, dbias)
