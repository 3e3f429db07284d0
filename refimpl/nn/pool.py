"""2-D max and average pooling, and flattening, as forward/backward pairs.

Legend: ``N`` batch, ``C`` channels, ``H``/``W`` input height/width, ``Hp``/``Wp`` padded,
``Ho``/``Wo`` output height/width, ``kH``/``kW`` window height/width.

Geometry (PyTorch's ``nn.MaxPool2d`` / ``nn.AvgPool2d`` with ``ceil_mode=False``), per axis
with window ``k``, stride ``s`` (default ``k``) and padding ``p``::

    Ho = floor((H + 2p - k) / s) + 1,     p <= k // 2 (PyTorch's limit)

Output ``(ho, wo)`` pools the padded rows ``ho*s .. ho*s + k - 1`` (columns likewise).

Max pooling
    *Padding* counts as ``-inf`` (PyTorch): a padded position is never the maximum, and since
    ``p <= k // 2`` every window holds at least one real input.
    *Ties* (PyTorch's rule): the gradient goes to the **first** maximum of the window in scan
    order — row by row, left to right within a row (offset ``i*kW + j``). The other tied
    entries get zero. The comparison is strict (``>``), so a later equal value never
    displaces an earlier one.
    The forward compares ``Re x`` only (a mask), so it is complex-step safe: the complex step
    does not move the real part, hence not the selection.

Average pooling
    ``count_include_pad=True`` (PyTorch's default, and ours): the divisor is always
    ``kH * kW``, padded zeros included. ``count_include_pad=False`` divides by the number of
    real (unpadded) inputs in each window.

Second order
    Both poolings and the flattening are linear in the input once max pooling's selection is
    fixed, and the selection is locally constant (it only changes at ties): ``*_jvp`` applies
    the same map to the tangent (max pooling: the tangent at each window's first maximum) and
    ``*_backward_jvp`` is the backward pass of ``dout_dot``, with no second-order term. Max
    pooling's Hessian is 0 away from ties; at a tie the JVP follows the backward pass's rule
    (the first maximum), so ``<jvp(x_dot), u> = <x_dot, backward(u)>`` holds there too.

Both loop over the window offsets (max pooling: ``kH + kW``, separably), each handling one
strided slice of the whole batch (never a Python loop over windows). The max-pooling
gradient of disjoint windows (stride >= window, the common 2x2 / stride 2 included) is one
scatter of ``dout`` to the maxima's positions instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_array, check_cache
from .base import InputTangentCache, ParameterFreeLayer, register
from .conv_geometry import Pair, as_pair, conv_output_size, pad_spatial, window_slice

__all__ = [
    "MaxPool2D", "AvgPool2D", "Flatten", "MaxPool2DCache", "AvgPool2DCache",
    "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "flatten_forward", "flatten_backward", "pool2d_output_shape",
    "maxpool2d_jvp", "maxpool2d_backward_jvp", "avgpool2d_jvp", "avgpool2d_backward_jvp",
    "flatten_jvp", "flatten_backward_jvp",
]


def _pool_geometry(kernel_size: Any, stride: Any, padding: Any) -> tuple[Pair, Pair, Pair]:
    kernel = as_pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else as_pair(stride, "stride", 1)
    padding = as_pair(padding, "padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding: expected at most half the kernel size {kernel} "
                         f"(as PyTorch), got {padding}")
    return kernel, stride, padding


def pool2d_output_shape(input_shape: tuple[int, ...], kernel_size: Pair, stride: Pair,
                        padding: Pair, who: str = "pool2d") -> tuple[int, int, int, int]:
    """Validate (N, C, H, W) against a pooling geometry; return (N, C, Ho, Wo)."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{who}: expected input of rank 4 (N, C, H, W), got shape {input_shape}")
    batch, channels, height, width = input_shape
    if height < 1 or width < 1:
        raise ValueError(f"{who}: expected a non-empty input (H, W >= 1), got shape {input_shape}")
    sizes = []
    for axis, size, k, s, p in zip(("height", "width"), (height, width), kernel_size, stride,
                                   padding, strict=True):
        if k > size + 2 * p:
            raise ValueError(f"{who}: kernel {axis} {k} is larger than the padded input "
                             f"{axis} {size} + 2*{p} = {size + 2 * p}; input shape {input_shape}")
        sizes.append(conv_output_size(size, k, s, p, 1))
    return (batch, channels, sizes[0], sizes[1])


def _check_input(x: Any, who: str) -> np.ndarray:
    return check_array(x, f"{who}: x", ("N", "C", "H", "W"))


# --- max pooling -----------------------------------------------------------------------------

class MaxPool2DCache(NamedTuple):
    argmax: np.ndarray   # (N, C, Ho, Wo): window offset i*kW + j of the first maximum
    x_shape: tuple[int, int, int, int]
    kernel_size: Pair
    stride: Pair
    padding: Pair


def _first_maximum(real_candidates, value_candidates, index_candidates):
    """Running first maximum over a sequence of equally shaped candidates.

    ``real_candidates`` are the real parts (compared), ``value_candidates`` the values
    (selected): the same list object for real input, complex arrays under the complex step.
    ``index_candidates`` are what to record for each candidate (unsigned integers; the first
    an array, the others arrays or scalars), each greater than every earlier one. Returns
    (best real parts, best values, the index candidate of the first maximum).

    Strictly greater replaces: on a tie the earlier candidate keeps the maximum. Written
    without ``np.where`` on the real path, whose branches mispredict on a random mask:
    ``np.maximum`` selects the value and integer arithmetic the index.
    """
    best_real, best_value = real_candidates[0], value_candidates[0]
    index = index_candidates[0]
    for position in range(1, len(real_candidates)):
        candidate_real, candidate_value = real_candidates[position], value_candidates[position]
        better = candidate_real > best_real
        # Every earlier candidate's index is smaller than this one's: max(index, better *
        # this index) is this index where better, the earlier one elsewhere.
        index = np.maximum(index, better * index_candidates[position])
        if value_candidates is real_candidates:
            # Equal candidates have equal values (up to the sign of a zero), so the maximum
            # is the selected value whichever of them np.maximum returns.
            best_real = np.maximum(best_real, candidate_real)
            best_value = best_real
        else:
            best_real = np.where(better, candidate_real, best_real)
            best_value = np.where(better, candidate_value, best_value)
    return best_real, best_value, index


def _gather_rows(a: np.ndarray, start: int, step: int, count: int) -> np.ndarray:
    """Rows ``start, start + step, ...`` (``count`` of them) of (N, C, Hp, L): (N, C, count, L),
    laid out so that NumPy's inner loops run over more than one row.

    A strided slice of rows (step > 1) makes every NumPy operation on it run N*C*count inner
    loops of only L elements each, so the rows are copied once into a contiguous array. The
    copy moves each row of L elements as one opaque item (a NumPy void of L*itemsize bytes):
    one long loop over the N*C*count rows. Adjacent rows (step 1) need no copy: their slice's
    inner loops already span count*L elements.
    """
    rows = window_slice(start, step, count)
    if step == 1 or not a.flags.c_contiguous:   # or a strided view of the input (kW = 1)
        return a[:, :, rows]
    row_type = np.dtype((np.void, a.shape[-1] * a.itemsize))
    return np.ascontiguousarray(a.view(row_type)[:, :, rows]).view(a.dtype)


def maxpool2d_forward(
    x: np.ndarray, kernel_size: Any, stride: Any = None, padding: Any = 0
) -> tuple[np.ndarray, MaxPool2DCache]:
    """Max over each window (``torch.nn.functional.max_pool2d``, ceil_mode=False).

    Separable: first the first maximum of every padded row's kW taps (column offset ``j``,
    (N, C, Hp, Wo)), then the first of the kH row maxima (row offset ``i``, (N, C, Ho, Wo)).
    That is the row-major first maximum of the window: a maximum in an earlier row comes
    first, and within the first row holding the maximum its first column does. kH + kW - 2
    comparisons per output instead of kH*kW - 1.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.
    padding : int or (int, int)
        At most half the kernel size (PyTorch's limit).

    Returns
    -------
    out : ndarray, shape (N, C, Ho, Wo)
    cache : MaxPool2DCache
        Holds the offset ``i*kW + j`` of each window's first maximum in row-major scan
        order.
    """
    x = _check_input(x, "maxpool2d_forward")
    kernel, stride, padding = _pool_geometry(kernel_size, stride, padding)
    _, _, out_h, out_w = pool2d_output_shape(x.shape, kernel, stride, padding,
                                         "maxpool2d_forward")
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    # Selection on the real part only (a mask, never a value): -inf padding never wins.
    real = x.real
    if ph or pw:
        batch, channels, height, width = x.shape
        real = np.full((batch, channels, height + 2 * ph, width + 2 * pw), -np.inf)
        real[:, :, ph:ph + height, pw:pw + width] = x.real
    # The values are taken from here; for real x they are the compared array itself. Zeros
    # padded into a complex copy are never selected (their real part is -inf above).
    values = pad_spatial(x, padding) if np.iscomplexobj(x) else real
    offset_type = np.min_scalar_type(kh * kw - 1)
    # Stage 1, along each row: (N, C, Hp, Wo) row maxima and their column offsets j.
    columns = [(Ellipsis, window_slice(j, sw, out_w)) for j in range(kw)]
    real_columns = [real[c] for c in columns]
    row_real, row_value, column_offset = _first_maximum(
        real_columns, real_columns if values is real else [values[c] for c in columns],
        [np.zeros(real_columns[0].shape, dtype=offset_type)]
        + [offset_type.type(j) for j in range(1, kw)])

    # Stage 2, across the kH rows of each window: (N, C, Ho, Wo), on rows gathered into
    # contiguous arrays. Row i records the flat offset i*kW + j of its maximum, greater than
    # any earlier row's (j < kW), so the chain's index is the window's offset directly.
    def window_rows(a):
        return [_gather_rows(a, i, sh, out_h) for i in range(kh)]

    real_rows = window_rows(row_real)
    _, out, argmax = _first_maximum(
        real_rows, real_rows if row_value is row_real else window_rows(row_value),
        [offset + offset_type.type(i * kw)
         for i, offset in enumerate(window_rows(column_offset))])
    if np.may_share_memory(out, x):  # a 1x1 window: a view of x, which the caller may change
        out = out.copy()
    return out, MaxPool2DCache(argmax, tuple(x.shape), kernel, stride, padding)


def _maximum_positions(cache: MaxPool2DCache) -> np.ndarray:
    """(N, C, Ho, Wo) flat indices of the windows' first maxima in the padded (N, C, Hp, Wp)
    input."""
    batch, channels, height, width = cache.x_shape
    (kh, kw), (sh, sw), (ph, pw) = cache.kernel_size, cache.stride, cache.padding
    out_h, out_w = cache.argmax.shape[2:]
    padded_h, padded_w = height + 2 * ph, width + 2 * pw
    # Within one (Hp, Wp) image, in the smallest unsigned type that holds Hp*Wp - 1 (fewer
    # bytes to write than intp): window (ho, wo) starts at
    # ho*sh*Wp + wo*sw, and its offset i*kW + j is the input i*Wp + j further on.
    local_type = np.min_scalar_type(padded_h * padded_w - 1)
    starts = np.arange(out_h)[:, None] * (sh * padded_w) + np.arange(out_w) * sw  # (Ho, Wo)
    local = cache.argmax + starts.astype(local_type)                      # (N, C, Ho, Wo)
    if kh > 1:
        local += (cache.argmax // kw) * local_type.type(padded_w - kw)
    images = np.arange(batch * channels).reshape(batch, channels, 1, 1) * (padded_h * padded_w)
    return images + local


def maxpool2d_backward(dout: np.ndarray, cache: MaxPool2DCache) -> np.ndarray:
    """Gradient of max pooling: each window's ``dout`` goes to its first maximum only.

    Parameters
    ----------
    dout : ndarray, shape (N, C, Ho, Wo)
    cache : MaxPool2DCache

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        An input that is the maximum of several (overlapping) windows receives the sum of
        their gradients.
    """
    check_cache(cache, MaxPool2DCache, "maxpool2d_backward: cache")
    dout = check_array(dout, "maxpool2d_backward: dout", cache.argmax.shape)
    batch, channels, height, width = cache.x_shape
    (kh, kw), (sh, sw), (ph, pw) = cache.kernel_size, cache.stride, cache.padding
    out_h, out_w = cache.argmax.shape[2:]
    shape = (batch, channels, height + 2 * ph, width + 2 * pw)
    dpad = np.zeros(shape, dtype=dout.dtype)
    # A finite dout reaches its maximum as 0.0 + dout: its value, with a -0.0 made +0.0 (no
    # gradient is a negative zero). A non-finite one goes through np.where, as dout * mask
    # would spread NaN (0 * inf) over the window; np.where passes dout on as it is, and so
    # does the scatter below when any dout is non-finite.
    finite = bool(np.isfinite(dout).all())
    if sh >= kh and sw >= kw:
        # Disjoint windows give each input at most one gradient: one scatter of dout into
        # zeros, at the maxima's flat positions (instead of kH*kW strided masked products).
        dpad.reshape(-1)[_maximum_positions(cache)] = dout + 0.0 if finite else dout
    else:
        for i in range(kh):
            rows = window_slice(i, sh, out_h)
            for j in range(kw):
                target = dpad[:, :, rows, window_slice(j, sw, out_w)]  # (N, C, Ho, Wo) view
                selected = cache.argmax == i * kw + j
                # dout * mask rather than np.where(mask, dout, 0), whose branches mispredict
                # on a random mask; exact for finite dout; 0.0 + -0.0 = +0.0 keeps the zeros
                # positive.
                target += dout * selected if finite else np.where(selected, dout, 0)
    if ph or pw:
        return dpad[:, :, ph:ph + height, pw:pw + width].copy()
    return dpad


def _check_tangent(x_dot: Any, cache: Any, cache_type: type, who: str) -> np.ndarray:
    """x_dot of the forward input's shape (``cache.x_shape``)."""
    check_cache(cache, cache_type, f"{who}: cache")
    return check_array(x_dot, f"{who}: x_dot", cache.x_shape)


def _check_backward_tangents(dout: Any, dout_dot: Any, tangent_cache: Any, shape: tuple,
                             who: str) -> tuple[np.ndarray, np.ndarray]:
    """dout and dout_dot of the output's shape, and a tangent cache of the right type."""
    check_cache(tangent_cache, InputTangentCache, f"{who}: tangent_cache")
    return (check_array(dout, f"{who}: dout", shape),
            check_array(dout_dot, f"{who}: dout_dot", shape))


def maxpool2d_jvp(x_dot: np.ndarray, cache: MaxPool2DCache
                  ) -> tuple[np.ndarray, InputTangentCache]:
    """Forward-mode derivative of max pooling: each window's tangent at its first maximum.

    Parameters
    ----------
    x_dot : ndarray, shape (N, C, H, W)
    cache : MaxPool2DCache

    Returns
    -------
    out_dot : ndarray, shape (N, C, Ho, Wo)
    tangent_cache : InputTangentCache
    """
    return _maxpool2d_jvp(_check_tangent(x_dot, cache, MaxPool2DCache, "maxpool2d_jvp"), cache)


def _maxpool2d_jvp(x_dot, cache):
    # The -inf padding is never the maximum, so the zeros padded here are never read.
    padded = pad_spatial(x_dot, cache.padding)                            # (N, C, Hp, Wp)
    return padded.reshape(-1)[_maximum_positions(cache)], InputTangentCache(x_dot)


def maxpool2d_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: MaxPool2DCache,
                           tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = maxpool2d_backward(dout_dot)``: the selection does not move with the point
    (away from ties), so there is no second-order term; (N, C, H, W)."""
    check_cache(cache, MaxPool2DCache, "maxpool2d_backward_jvp: cache")
    dout, dout_dot = _check_backward_tangents(dout, dout_dot, tangent_cache,
                                              cache.argmax.shape, "maxpool2d_backward_jvp")
    return maxpool2d_backward(dout_dot, cache)


# --- average pooling -------------------------------------------------------------------------

class AvgPool2DCache(NamedTuple):
    divisor: Any         # kH*kW (an int), or (Ho, Wo) counts of real inputs per window
    x_shape: tuple[int, int, int, int]
    kernel_size: Pair
    stride: Pair
    padding: Pair


def _real_counts(size: int, kernel: int, stride: int, padding: int, count: int) -> np.ndarray:
    """Per output index along one axis: how many window taps fall on real (unpadded) input."""
    starts = np.arange(count) * stride - padding                    # first tap, input coords
    return np.minimum(starts + kernel, size) - np.maximum(starts, 0)


def avgpool2d_forward(
    x: np.ndarray, kernel_size: Any, stride: Any = None, padding: Any = 0,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, AvgPool2DCache]:
    """Mean over each window (``torch.nn.functional.avg_pool2d``, ceil_mode=False).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size, stride, padding : int or (int, int)
        As :func:`maxpool2d_forward`.
    count_include_pad : bool
        True divides by kH*kW (PyTorch's default); False by the number of unpadded inputs in
        the window.

    Returns
    -------
    out : ndarray, shape (N, C, Ho, Wo)
    cache : AvgPool2DCache
    """
    x = _check_input(x, "avgpool2d_forward")
    kernel, stride, padding = _pool_geometry(kernel_size, stride, padding)
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"count_include_pad: expected a bool, got {count_include_pad!r}")
    batch, channels, out_h, out_w = pool2d_output_shape(x.shape, kernel, stride, padding,
                                                        "avgpool2d_forward")
    (kh, kw), (sh, sw) = kernel, stride
    padded = pad_spatial(x, padding)
    total = np.zeros((batch, channels, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        rows = window_slice(i, sh, out_h)
        for j in range(kw):
            total += padded[:, :, rows, window_slice(j, sw, out_w)]
    if count_include_pad:
        divisor: Any = kh * kw
    else:
        height, width = x.shape[2:]
        divisor = np.outer(_real_counts(height, kh, sh, padding[0], out_h),
                           _real_counts(width, kw, sw, padding[1], out_w)).astype(np.float64)
    return total / divisor, AvgPool2DCache(divisor, tuple(x.shape), kernel, stride, padding)


def avgpool2d_backward(dout: np.ndarray, cache: AvgPool2DCache) -> np.ndarray:
    """Gradient of average pooling: every input of a window receives ``dout / divisor``.

    Returns ``dx`` (N, C, H, W) for ``dout`` (N, C, Ho, Wo) and the :class:`AvgPool2DCache`
    of the forward call: each input receives the sum over the windows that read it; padded
    positions are dropped.
    """
    check_cache(cache, AvgPool2DCache, "avgpool2d_backward: cache")
    dout = check_array(dout, "avgpool2d_backward: dout", pool2d_output_shape(
        cache.x_shape, cache.kernel_size, cache.stride, cache.padding, "avgpool2d_backward"))
    batch, channels, height, width = cache.x_shape
    (kh, kw), (sh, sw), (ph, pw) = cache.kernel_size, cache.stride, cache.padding
    out_h, out_w = dout.shape[2:]
    share = dout / cache.divisor                                      # (N, C, Ho, Wo)
    dpad = np.zeros((batch, channels, height + 2 * ph, width + 2 * pw), dtype=share.dtype)
    for i in range(kh):
        rows = window_slice(i, sh, out_h)
        for j in range(kw):
            dpad[:, :, rows, window_slice(j, sw, out_w)] += share
    if ph or pw:
        return dpad[:, :, ph:ph + height, pw:pw + width].copy()
    return dpad


def avgpool2d_jvp(x_dot: np.ndarray, cache: AvgPool2DCache
                  ) -> tuple[np.ndarray, InputTangentCache]:
    """Forward-mode derivative of average pooling (a linear map): the average pooling of the
    tangent, the same divisors; (N, C, H, W) -> (N, C, Ho, Wo)."""
    return _avgpool2d_jvp(_check_tangent(x_dot, cache, AvgPool2DCache, "avgpool2d_jvp"), cache)


def _avgpool2d_jvp(x_dot, cache):
    (kh, kw), (sh, sw) = cache.kernel_size, cache.stride
    _, _, out_h, out_w = pool2d_output_shape(cache.x_shape, cache.kernel_size, cache.stride,
                                             cache.padding)
    padded = pad_spatial(x_dot, cache.padding)
    total = np.zeros((*x_dot.shape[:2], out_h, out_w), dtype=x_dot.dtype)
    for i in range(kh):
        rows = window_slice(i, sh, out_h)
        for j in range(kw):
            total += padded[:, :, rows, window_slice(j, sw, out_w)]
    return total / cache.divisor, InputTangentCache(x_dot)


def avgpool2d_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: AvgPool2DCache,
                           tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = avgpool2d_backward(dout_dot)`` (a linear map: no second-order term)."""
    check_cache(cache, AvgPool2DCache, "avgpool2d_backward_jvp: cache")
    shape = pool2d_output_shape(cache.x_shape, cache.kernel_size, cache.stride, cache.padding,
                                "avgpool2d_backward_jvp")
    dout, dout_dot = _check_backward_tangents(dout, dout_dot, tangent_cache, shape,
                                              "avgpool2d_backward_jvp")
    return avgpool2d_backward(dout_dot, cache)


# --- flatten ---------------------------------------------------------------------------------

class FlattenCache(NamedTuple):
    x_shape: tuple[int, ...]


def flatten_forward(x: np.ndarray) -> tuple[np.ndarray, FlattenCache]:
    """(N, d1, d2, ...) -> (N, d1*d2*...), in C order (PyTorch's ``flatten(1)`` of NCHW)."""
    x = check_array(x, "flatten_forward: x", ("N", ...))
    return _flatten_forward(x)


def _flatten_forward(x):
    """:func:`flatten_forward` without the argument checks (the model checked them once)."""
    return x.reshape(x.shape[0], -1), FlattenCache(tuple(x.shape))


def flatten_backward(dout: np.ndarray, cache: FlattenCache) -> np.ndarray:
    """(N, D) -> the input's shape."""
    check_cache(cache, FlattenCache, "flatten_backward: cache")
    x_shape = cache.x_shape
    dout = check_array(dout, "flatten_backward: dout", (x_shape[0], int(np.prod(x_shape[1:]))))
    return _flatten_backward(dout, cache)


def _flatten_backward(dout, cache):
    """:func:`flatten_backward` without the argument checks."""
    return dout.reshape(cache.x_shape)


def flatten_jvp(x_dot: np.ndarray, cache: FlattenCache) -> tuple[np.ndarray, InputTangentCache]:
    """The tangent flattened as the input: (N, d1, d2, ...) -> (N, d1*d2*...)."""
    return _flatten_jvp(_check_tangent(x_dot, cache, FlattenCache, "flatten_jvp"), cache)


def _flatten_jvp(x_dot, cache):
    return x_dot.reshape(x_dot.shape[0], -1), InputTangentCache(x_dot)


def flatten_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: FlattenCache,
                         tangent_cache: InputTangentCache) -> np.ndarray:
    """``dout_dot`` reshaped to the input's shape (a linear map: no second-order term)."""
    check_cache(cache, FlattenCache, "flatten_backward_jvp: cache")
    x_shape = cache.x_shape
    dout, dout_dot = _check_backward_tangents(dout, dout_dot, tangent_cache,
                                              (x_shape[0], int(np.prod(x_shape[1:]))),
                                              "flatten_backward_jvp")
    return _flatten_backward(dout_dot, cache)


# --- layer specs -----------------------------------------------------------------------------

class _Pool2D(ParameterFreeLayer):
    def _normalise(self) -> None:
        kernel, stride, padding = _pool_geometry(self.kernel_size, self.stride, self.padding)
        # Stored normalised (stride=None becomes the kernel size) so that the config
        # round-trips to an equal spec.
        object.__setattr__(self, "kernel_size", kernel)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "padding", padding)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return pool2d_output_shape(input_shape, self.kernel_size, self.stride, self.padding,
                                   type(self).__name__)


@register
@dataclass(frozen=True)
class MaxPool2D(_Pool2D):
    """Max pooling (``nn.MaxPool2d``); ties: the first maximum in scan order gets the
    gradient; padding counts as -inf. ``stride`` defaults to ``kernel_size``."""

    # Each output is one of its window's inputs (the -inf padding is never the maximum).
    output_selects_input = True

    kernel_size: Any
    stride: Any = None
    padding: Any = 0

    def __post_init__(self) -> None:
        self._normalise()

    def forward(self, x, params):
        self.output_shape(x.shape)
        return maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dout, cache):
        return maxpool2d_backward(dout, cache), {}

    def jvp(self, x_dot, params_dot, cache):
        return _maxpool2d_jvp(x_dot, cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return maxpool2d_backward(dout_dot, cache), {}


@register
@dataclass(frozen=True)
class AvgPool2D(_Pool2D):
    """Average pooling (``nn.AvgPool2d``); ``count_include_pad=True`` (PyTorch's default)
    divides by kH*kW, padded zeros included. ``stride`` defaults to ``kernel_size``."""

    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    count_include_pad: bool = True

    def __post_init__(self) -> None:
        self._normalise()
        if not isinstance(self.count_include_pad, bool):
            raise TypeError(f"count_include_pad: expected a bool, got {self.count_include_pad!r}")

    def forward(self, x, params):
        self.output_shape(x.shape)
        return avgpool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                 self.count_include_pad)

    def backward(self, dout, cache):
        return avgpool2d_backward(dout, cache), {}

    def jvp(self, x_dot, params_dot, cache):
        return _avgpool2d_jvp(x_dot, cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return avgpool2d_backward(dout_dot, cache), {}


@register
@dataclass(frozen=True)
class Flatten(ParameterFreeLayer):
    """(N, C, H, W) -> (N, C*H*W) in C order, as PyTorch's ``nn.Flatten()``."""

    output_selects_input = True          # the same values, reshaped
    input_gradient_selects_dout = True

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ValueError(f"Flatten: expected input of rank >= 2 (N, ...), got shape "
                             f"{input_shape}")
        return (input_shape[0], int(np.prod(input_shape[1:])))

    def forward(self, x, params):
        return _flatten_forward(x)

    def backward(self, dout, cache):
        return _flatten_backward(dout, cache), {}

    def jvp(self, x_dot, params_dot, cache):
        return _flatten_jvp(x_dot, cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return _flatten_backward(dout_dot, cache), {}
