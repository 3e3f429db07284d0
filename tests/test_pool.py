"""Tests of refimpl/nn/pool.py: max and average pooling, Flatten.

Pooling geometries are drawn constructively as in tests/test_conv.py (an output size and a
round-down remainder per axis), so every draw is valid. Max-pool inputs for the numerical
checks are tie-free by construction: a random permutation of distinct values spaced 0.5
apart. Ties get their own tests, against a nested-loop reference that takes the first
maximum of each window in scan order (``np.argmax`` over the row-major window), which is
PyTorch's rule.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close, check_vjp
from refimpl.nn.base import layer_config, layer_from_config
from refimpl.nn.pool import (
    _gather_rows,
    avgpool2d_backward,
    avgpool2d_forward,
    flatten_backward,
    flatten_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

COMPLEX = TOLERANCES["complex"]


class PoolGeometry(NamedTuple):
    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_h: int           # by construction, not by the formula under test
    out_w: int

    @property
    def shape(self):
        return (self.batch, self.channels, self.height, self.width)

    @property
    def kwargs(self):
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding)


def axis_size(kernel, stride, padding, out, remainder):
    """Input size with exactly ``out`` outputs and ``remainder`` unread trailing rows (grown
    by whole strides when the padding alone would cover the window: an even window with
    ``p = k/2`` needs no real row)."""
    size = kernel - 2 * padding + stride * (out - 1) + remainder
    while size < 1:
        size += stride
        out += 1
    return size, out


def make_geometry(batch=1, channels=1, kernel=(2, 2), stride=(2, 2), padding=(0, 0),
                  out=(1, 1), remainder=(0, 0)):
    (height, out_h), (width, out_w) = (
        axis_size(kernel[a], stride[a], padding[a], out[a], remainder[a]) for a in range(2))
    return PoolGeometry(batch, channels, height, width, kernel, stride, padding, out_h, out_w)


@st.composite
def geometries(draw, disjoint=False):
    """Window 1..4, stride 1..3 (``disjoint``: window..window + 2, so that no two windows
    overlap), padding 0..k//2 (PyTorch's limit), output 1..3, any round-down remainder;
    batch 1..2, channels 1..3."""
    axes = []
    for _ in range(2):
        kernel = draw(st.integers(1, 4))
        stride = draw(st.integers(kernel, kernel + 2) if disjoint else st.integers(1, 3))
        padding = draw(st.integers(0, kernel // 2))
        axes.append((kernel, stride, padding, draw(st.integers(1, 3)),
                     draw(st.integers(0, stride - 1))))
    kernel, stride, padding, out, remainder = (tuple(v) for v in zip(*axes, strict=True))
    return make_geometry(draw(st.integers(1, 2)), draw(st.integers(1, 3)), kernel, stride,
                         padding, out, remainder)


EDGE_GEOMETRIES = (
    make_geometry(),                                                 # one 2x2 window
    make_geometry(kernel=(1, 1), stride=(1, 1)),                     # a single element
    make_geometry(kernel=(3, 3), stride=(1, 1), padding=(1, 1), out=(3, 2)),  # overlapping
    make_geometry(kernel=(2, 3), stride=(3, 2), out=(2, 3), remainder=(2, 1)),  # round-down
    make_geometry(batch=2, channels=3, kernel=(4, 4), stride=(3, 2), padding=(2, 2),
                  out=(3, 3), remainder=(2, 1)),
)


def tie_free(shape, seed):
    """Distinct values (spaced 0.5 apart, random signs and order): no window has a tie."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2.0).reshape(shape) * 0.5 + rng.uniform(0, 0.25)


def with_ties(shape, seed):
    """Small integers: most windows have ties, negative values test -inf padding."""
    return np.random.default_rng(seed).integers(-3, 2, size=shape).astype(np.float64)


# --- nested-loop references --------------------------------------------------------------------

def maxpool_reference(x, g, dout):
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    xp = np.full((g.batch, g.channels, g.height + 2 * ph, g.width + 2 * pw), -np.inf)
    xp[:, :, ph:ph + g.height, pw:pw + g.width] = x
    out = np.empty((g.batch, g.channels, g.out_h, g.out_w))
    dxp = np.zeros(xp.shape)
    for n in range(g.batch):
        for c in range(g.channels):
            for ho in range(g.out_h):
                for wo in range(g.out_w):
                    window = xp[n, c, ho * sh:ho * sh + kh, wo * sw:wo * sw + kw]
                    first = int(np.argmax(window))        # first maximum, row-major scan
                    i, j = divmod(first, kw)
                    out[n, c, ho, wo] = window[i, j]
                    dxp[n, c, ho * sh + i, wo * sw + j] += dout[n, c, ho, wo]
    return out, dxp[:, :, ph:ph + g.height, pw:pw + g.width]


def avgpool_reference(x, g, dout, count_include_pad):
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    out = np.zeros((g.batch, g.channels, g.out_h, g.out_w))
    dx = np.zeros(x.shape)
    for n in range(g.batch):
        for c in range(g.channels):
            for ho in range(g.out_h):
                for wo in range(g.out_w):
                    taps = [(ho * sh + i - ph, wo * sw + j - pw)
                            for i in range(kh) for j in range(kw)]
                    real = [(r, q) for r, q in taps if 0 <= r < g.height and 0 <= q < g.width]
                    divisor = kh * kw if count_include_pad else len(real)
                    for r, q in real:
                        out[n, c, ho, wo] += x[n, c, r, q] / divisor
                        dx[n, c, r, q] += dout[n, c, ho, wo] / divisor
    return out, dx


# --- max pooling -----------------------------------------------------------------------------

@given(geometries(), st.integers(0, 2**16))
@example(EDGE_GEOMETRIES[0], 0)
@example(EDGE_GEOMETRIES[1], 0)
@example(EDGE_GEOMETRIES[4], 0)
def test_maxpool_backward_matches_complex_step(geometry, seed):
    x = tie_free(geometry.shape, seed)
    report = check_vjp(maxpool2d_forward, maxpool2d_backward, {"x": x},
                       static=geometry.kwargs, seed=seed)
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@given(geometries(), st.integers(0, 2**16))
def test_maxpool_backward_matches_central_differences(geometry, seed):
    # Values 0.5 apart: the central step (~6e-6) never reorders a window.
    x = tie_free(geometry.shape, seed)
    report = check_vjp(maxpool2d_forward, maxpool2d_backward, {"x": x},
                       static=geometry.kwargs, seed=seed, method="central")
    assert report.ok, report


@given(geometries(), st.integers(0, 2**16), st.booleans())
@example(EDGE_GEOMETRIES[2], 0, True)
@example(EDGE_GEOMETRIES[3], 0, True)
@example(EDGE_GEOMETRIES[4], 1, True)
def test_maxpool_matches_nested_loop_reference_ties_included(geometry, seed, ties):
    x = with_ties(geometry.shape, seed) if ties else tie_free(geometry.shape, seed)
    out, cache = maxpool2d_forward(x, **geometry.kwargs)
    assert out.shape == (geometry.batch, geometry.channels, geometry.out_h, geometry.out_w)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    expected_out, expected_dx = maxpool_reference(x, geometry, dout)
    assert np.array_equal(out, expected_out)  # a selection: exact
    assert_close(maxpool2d_backward(dout, cache), expected_dx, name="dx")


@given(geometries(disjoint=True), st.integers(0, 2**16), st.booleans())
@example(make_geometry(2, 3, out=(3, 4)), 0, True)                  # 2x2 windows tiling x
@example(make_geometry(kernel=(2, 3), stride=(3, 3), padding=(1, 1), out=(2, 2),
                       remainder=(2, 1)), 0, True)                  # gaps, padding, round-down
@example(make_geometry(1, 2, out=(10, 13)), 0, True)    # Hp*Wp > 256: positions past uint8
def test_disjoint_windows_pass_dout_exactly_to_their_first_maximum(geometry, seed, ties):
    # Each input receives at most one window's dout: no sum to round, so dx equals the
    # reference bit for bit (a position one row or column off fails). A -0.0 arrives as
    # +0.0 (0.0 + -0.0), as in the reference: no gradient is a negative zero.
    x = with_ties(geometry.shape, seed) if ties else tie_free(geometry.shape, seed)
    out, cache = maxpool2d_forward(x, **geometry.kwargs)
    rng = np.random.default_rng(seed + 1)
    dout = np.where(rng.random(out.shape) < 0.2, -0.0, rng.standard_normal(out.shape))
    dx = maxpool2d_backward(dout, cache)
    assert np.array_equal(dx, maxpool_reference(x, geometry, dout)[1])
    assert not np.signbit(dx[dx == 0]).any()


@given(st.data())
def test_gathered_rows_are_the_strided_slice_bit_for_bit(data):
    # The forward's stage 2 reads window rows through _gather_rows (whole rows copied as
    # opaque items, or the slice itself): the same rows, for each dtype it gathers (real
    # parts, complex values, uint8 column offsets), NaN payloads and zero signs included.
    start, step, count = (data.draw(st.integers(low, 3)) for low in (0, 1, 1))
    height = start + step * (count - 1) + 1 + data.draw(st.integers(0, 2))  # unread rows
    dtype = data.draw(st.sampled_from([np.float64, np.complex128, np.uint8]))
    shape = (data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3)), height,
             data.draw(st.integers(1, 5)))
    a = data.draw(hnp.arrays(dtype, shape))
    if data.draw(st.booleans()):                       # a strided view, as for kW = 1
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    gathered = _gather_rows(a, start, step, count)
    expected = a[:, :, start::step][:, :, :count]
    assert gathered.shape == expected.shape and gathered.dtype == expected.dtype
    assert np.ascontiguousarray(gathered).tobytes() == np.ascontiguousarray(expected).tobytes()


def test_ties_send_the_gradient_to_the_first_maximum_in_scan_order():
    # One 2x2 window of equal values: (0, 0) gets it. A tie between (0, 1) and (1, 0) (both
    # above (0, 0) and (1, 1)): (0, 1) comes first in row-major order.
    for x, first in ((np.zeros((1, 1, 2, 2)), (0, 0)),
                     (np.array([[[[0.0, 5.0], [5.0, 1.0]]]]), (0, 1)),
                     (np.array([[[[0.0, 1.0], [5.0, 5.0]]]]), (1, 0))):
        out, cache = maxpool2d_forward(x, 2)
        dx = maxpool2d_backward(np.array([[[[3.0]]]]), cache)
        expected = np.zeros((1, 1, 2, 2))
        expected[(0, 0, *first)] = 3.0
        assert out.item() == x.max()
        assert np.array_equal(dx, expected)


def test_overlapping_windows_add_their_gradients_at_a_shared_maximum():
    x = np.array([[[[0.0, 9.0, 1.0]]]])                   # 9 is the max of both windows
    out, cache = maxpool2d_forward(x, (1, 2), stride=1)
    assert np.array_equal(out, [[[[9.0, 9.0]]]])
    dx = maxpool2d_backward(np.array([[[[2.0, 5.0]]]]), cache)
    assert np.array_equal(dx, [[[[0.0, 7.0, 0.0]]]])


def test_padding_counts_as_minus_infinity():
    # All-negative input: zero padding would put 0 in the output; -inf padding never wins.
    x = -1.0 - np.arange(9.0).reshape(1, 1, 3, 3)
    out, cache = maxpool2d_forward(x, 2, stride=2, padding=1)
    assert np.array_equal(out, [[[[-1.0, -2.0], [-4.0, -5.0]]]])
    dx = maxpool2d_backward(np.ones(out.shape), cache)
    assert dx.sum() == 4.0 and dx.shape == x.shape


@given(geometries(), st.integers(0, 2**16))
def test_maxpool_complex_forward_selects_on_the_real_part(geometry, seed):
    x = tie_free(geometry.shape, seed)
    direction = np.random.default_rng(seed).standard_normal(x.shape)
    real_out, real_cache = maxpool2d_forward(x, **geometry.kwargs)
    complex_out, complex_cache = maxpool2d_forward(x + 1e-20j * direction, **geometry.kwargs)
    assert complex_out.dtype == np.complex128
    assert np.array_equal(complex_out.real, real_out)
    assert np.array_equal(complex_cache.argmax, real_cache.argmax)


# --- average pooling ---------------------------------------------------------------------------

@given(geometries(), st.integers(0, 2**16), st.booleans())
@example(EDGE_GEOMETRIES[4], 0, False)
def test_avgpool_backward_matches_complex_step(geometry, seed, count_include_pad):
    x = np.random.default_rng(seed).standard_normal(geometry.shape)
    report = check_vjp(avgpool2d_forward, avgpool2d_backward, {"x": x},
                       static=geometry.kwargs | {"count_include_pad": count_include_pad},
                       seed=seed)
    assert report.ok, report


@given(geometries(), st.integers(0, 2**16), st.booleans())
@example(EDGE_GEOMETRIES[4], 0, False)
@example(EDGE_GEOMETRIES[4], 0, True)
def test_avgpool_matches_nested_loop_reference(geometry, seed, count_include_pad):
    x = np.random.default_rng(seed).standard_normal(geometry.shape)
    out, cache = avgpool2d_forward(x, **geometry.kwargs, count_include_pad=count_include_pad)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    expected_out, expected_dx = avgpool_reference(x, geometry, dout, count_include_pad)
    assert_close(out, expected_out, name="out")
    assert_close(avgpool2d_backward(dout, cache), expected_dx, name="dx")


def test_count_include_pad_divisors():
    x = np.ones((1, 1, 2, 2))
    with_pad = avgpool2d_forward(x, 2, stride=1, padding=1)[0]
    assert np.array_equal(with_pad, [[[[0.25, 0.5, 0.25], [0.5, 1.0, 0.5],
                                       [0.25, 0.5, 0.25]]]])
    assert np.array_equal(avgpool2d_forward(x, 2, stride=1, padding=1,
                                            count_include_pad=False)[0], np.ones((1, 1, 3, 3)))


# --- Flatten ---------------------------------------------------------------------------------

def test_flatten_is_a_c_order_reshape_and_its_backward_the_inverse():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    out, cache = flatten_forward(x)
    assert np.array_equal(out, x.reshape(2, 12)) and out[1, 0] == 12.0
    dout = np.random.default_rng(0).standard_normal(out.shape)
    assert np.array_equal(flatten_backward(dout, cache), dout.reshape(x.shape))
    report = check_vjp(flatten_forward, flatten_backward, {"x": x})
    assert report.ok, report
    assert nn.Flatten().output_shape((2, 3, 2, 2)) == (2, 12)


# --- layer specs and bad input -----------------------------------------------------------------

def test_specs_normalise_and_round_trip_through_json():
    assert nn.MaxPool2D(2) == nn.MaxPool2D((2, 2), stride=2, padding=0)
    assert nn.MaxPool2D(3, stride=1).stride == (1, 1)
    assert nn.AvgPool2D((2, 3)).stride == (2, 3)
    specs = [nn.MaxPool2D(2), nn.MaxPool2D((3, 2), stride=(1, 2), padding=(1, 0)),
             nn.AvgPool2D(3, padding=1, count_include_pad=False), nn.Flatten()]
    for spec in specs:
        assert layer_from_config(json.loads(json.dumps(layer_config(spec)))) == spec


def test_specs_in_a_model():
    model = ri.Sequential([nn.MaxPool2D(2, padding=1), nn.AvgPool2D(2, stride=1), nn.Flatten()])
    x = tie_free((2, 3, 5, 4), 0)
    assert model.output_shape(x.shape) == (2, 3 * 2 * 2)
    out, dx, grads = model.vjp({}, x, np.ones((2, 12)))
    assert out.shape == (2, 12) and dx.shape == x.shape and grads == {}


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.MaxPool2D(0), ValueError, "kernel_size: expected values >= 1"),
    (lambda: nn.MaxPool2D(2, stride=0), ValueError, "stride: expected values >= 1"),
    (lambda: nn.MaxPool2D(2, padding=-1), ValueError, "padding: expected values >= 0"),
    (lambda: nn.MaxPool2D(2, padding=2), ValueError, "padding: expected at most half"),
    (lambda: nn.AvgPool2D((3, 4), padding=(1, 3)), ValueError, "padding: expected at most"),
    (lambda: nn.MaxPool2D(2.0), TypeError, "kernel_size: expected an int or an"),
    (lambda: nn.MaxPool2D(2, stride="2"), TypeError, "stride: expected an int or an"),
    (lambda: nn.AvgPool2D(2, count_include_pad=1), TypeError, "count_include_pad: expected"),
    (lambda: maxpool2d_forward(np.zeros((1, 1, 4, 4)), 2, padding=2), ValueError,
     "padding: expected at most half"),
    (lambda: avgpool2d_forward(np.zeros((1, 1, 4, 4)), 2, count_include_pad=None), TypeError,
     "count_include_pad: expected a bool"),
    (lambda: maxpool2d_forward([[1.0]], 1), TypeError,
     r"x: expected an array of shape \(N, C, H, W\), got list"),
])
def test_bad_hyper_parameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("layer", [nn.MaxPool2D(3), nn.AvgPool2D(3)])
@pytest.mark.parametrize("shape, match", [
    ((1, 2, 2, 8), "kernel height 3 is larger than the padded input height 2 "),
    ((1, 2, 8, 2), "kernel width 3 is larger than the padded input width 2 "),
    ((2, 8, 8), "expected input of rank 4"),
])
def test_bad_input_shapes(layer, shape, match):
    with pytest.raises(ValueError, match=f"{type(layer).__name__}: {match}"):
        layer.output_shape(shape)
    with pytest.raises(ValueError, match=match):
        ri.Sequential([layer]).forward({}, np.zeros(shape))


def test_empty_spatial_input_is_rejected():
    # Padding alone could cover the window (k = 4, p = 2), but a window of padding only has
    # no maximum: PyTorch rejects an empty input too.
    for layer in (nn.MaxPool2D(4, padding=2), nn.AvgPool2D(4, padding=2)):
        with pytest.raises(ValueError, match=r"expected a non-empty input \(H, W >= 1\)"):
            layer.output_shape((1, 1, 0, 3))


def test_padding_counts_towards_the_input_size():
    layer = nn.MaxPool2D(4, padding=(1, 2))
    assert layer.output_shape((1, 1, 2, 1)) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"kernel height 4 is larger than the padded input "
                                         r"height 1 \+ 2\*1 = 3"):
        layer.output_shape((1, 1, 1, 1))


def test_flatten_rejects_rank_one():
    with pytest.raises(ValueError, match=r"Flatten: expected input of rank >= 2"):
        nn.Flatten().output_shape((5,))


@pytest.mark.parametrize("stride", [2, 1])     # disjoint and overlapping windows
def test_maxpool_gradient_zeros_are_positive_and_non_finite_upstream_stays_local(stride):
    # The fast paths multiply dout by the selection mask: unselected inputs must still get
    # +0.0 (not -0.0 from a negative dout), and an infinite dout must reach only its
    # window's maximum (0 * inf would be NaN everywhere else).
    x = tie_free((2, 3, 4, 6), 0)
    out, cache = maxpool2d_forward(x, 2, stride=stride)
    dout = -1.0 - np.random.default_rng(0).random(out.shape)       # all negative
    dx = maxpool2d_backward(dout, cache)
    assert not np.signbit(dx[dx == 0]).any()
    geometry = make_geometry(2, 3, stride=(stride, stride), out=out.shape[2:])
    assert_close(dx, maxpool_reference(x, geometry, dout)[1])  # sums in another order
    dout[0, 0, 0, 0] = np.inf
    dx = maxpool2d_backward(dout, cache)
    expected = maxpool_reference(x, geometry, dout)[1]
    assert not np.isnan(dx).any()
    assert np.isinf(dx).sum() == 1 and np.isinf(dx[0, 0, :2, :2]).sum() == 1
    assert np.array_equal(np.isinf(dx), np.isinf(expected))
    assert_close(dx[np.isfinite(dx)], expected[np.isfinite(expected)])
    assert not np.signbit(dx[dx == 0]).any()


@pytest.mark.parametrize("shape", [(1, 1, 5, 4), (2, 3, 4, 7), (1, 2, 9, 9)])
def test_unread_rows_get_exact_zeros_even_from_dirty_memory(shape):
    # Stride = kernel = 2 with an odd size: the last row/column is read by no window. The
    # backward writes disjoint windows without a zero fill only when they tile the input;
    # freeing NaN-filled arrays of dx's size first makes a missing fill visible (the
    # allocator hands the same memory back).
    x = tie_free(shape, 1)
    out, cache = maxpool2d_forward(x, 2)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    expected = maxpool_reference(x, make_geometry(shape[0], shape[1], out=out.shape[2:],
                                                  remainder=(shape[2] % 2, shape[3] % 2)),
                                 dout)[1]
    for _ in range(5):
        junk = [np.full(shape, np.nan) for _ in range(3)]
        del junk
        assert np.array_equal(maxpool2d_backward(dout, cache), expected)
