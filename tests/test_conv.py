"""Tests of refimpl/nn/conv*.py and locally_connected.py: Conv2D (both input-gradient forms)
and LocallyConnected2D, and CNNs built from them.

Geometries are drawn *constructively*: per axis an output size ``Ho`` and a remainder
``r in [0, s)`` are drawn and the input size is ``H = d(k-1) + 1 - 2p + s(Ho-1) + r``, so
every drawn geometry is valid and the output-size division rounds down by ``r / s`` — the
case where published implementations break (the last ``r`` rows are read by no window and
must get a zero gradient). The expected output size is the drawn ``Ho``, not the formula
under test.

References: plain nested loops over every output element and kernel tap, written here and
nowhere in the package.
"""

from __future__ import annotations

import json
from typing import NamedTuple
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close, check_gradients, check_vjp
from refimpl.nn import CNN
from refimpl.nn import conv as conv_module
from refimpl.nn.base import layer_config, layer_from_config
from refimpl.nn.conv import (
    INPUT_GRADIENT_METHODS,
    col2im,
    conv2d_backward,
    conv2d_forward,
    conv2d_input_gradient,
    im2col,
    positions_first,
)
from refimpl.nn.locally_connected import locally_connected2d_backward, locally_connected2d_forward

COMPLEX = TOLERANCES["complex"]


# --- geometries ------------------------------------------------------------------------------

class Geometry(NamedTuple):
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_h: int           # the output size by construction (not by the formula under test)
    out_w: int

    @property
    def conv_kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)


def axis_size(kernel, stride, padding, dilation, out, remainder):
    """Input size with exactly ``out`` outputs and ``remainder`` unread trailing rows (grown
    by whole strides when padding alone would cover the kernel)."""
    size = dilation * (kernel - 1) + 1 - 2 * padding + stride * (out - 1) + remainder
    while size < 1:
        size += stride
        out += 1
    return size, out


def make_geometry(batch=1, in_channels=1, out_channels=1, kernel=(1, 1), stride=(1, 1),
                  padding=(0, 0), dilation=(1, 1), groups=1, out=(1, 1), remainder=(0, 0)):
    sizes = [axis_size(kernel[a], stride[a], padding[a], dilation[a], out[a], remainder[a])
             for a in range(2)]
    return Geometry(batch, in_channels, out_channels, sizes[0][0], sizes[1][0], kernel, stride,
                    padding, dilation, groups, sizes[0][1], sizes[1][1])


@st.composite
def geometries(draw, max_channels=4, max_out=3):
    """Kernel 1..5, stride 1..3, padding 0..2, dilation 1..3 (per axis), groups 1..3 dividing
    both channel counts, batch 1..2, output 1..max_out per axis, any round-down remainder."""
    groups = draw(st.integers(1, 3))
    per_group = st.integers(1, max(1, max_channels // groups))
    in_channels, out_channels = groups * draw(per_group), groups * draw(per_group)
    axes = []
    for _ in range(2):
        kernel, stride = draw(st.integers(1, 5)), draw(st.integers(1, 3))
        padding, dilation = draw(st.integers(0, 2)), draw(st.integers(1, 3))
        out, remainder = draw(st.integers(1, max_out)), draw(st.integers(0, stride - 1))
        axes.append((kernel, stride, padding, dilation, out, remainder))
    kernel, stride, padding, dilation, out, remainder = (tuple(v) for v in zip(*axes,
                                                                               strict=True))
    return make_geometry(draw(st.integers(1, 2)), in_channels, out_channels, kernel, stride,
                         padding, dilation, groups, out, remainder)


# Pinned edge cases: batch 1 with one channel; round-down by almost a whole stride; dilation
# wider than the stride (taps skip rows); depthwise groups; padding larger than the kernel
# needs (pure-padding outputs); the largest drawn kernel, stride, padding and dilation.
EDGE_GEOMETRIES = (
    make_geometry(),
    make_geometry(kernel=(3, 2), stride=(3, 2), out=(2, 3), remainder=(2, 1)),
    make_geometry(batch=2, in_channels=2, out_channels=3, kernel=(2, 3), dilation=(3, 2),
                  out=(3, 2)),
    make_geometry(in_channels=3, out_channels=6, kernel=(3, 3), groups=3, padding=(1, 1),
                  out=(2, 2)),
    make_geometry(kernel=(1, 2), padding=(2, 2), out=(3, 2), out_channels=2),
    make_geometry(in_channels=2, out_channels=2, kernel=(5, 5), stride=(3, 3),
                  padding=(2, 2), dilation=(3, 3), groups=2, out=(2, 1), remainder=(2, 2)),
)


def conv_arrays(geometry, seed, bias=True):
    """Standard-normal x (N, C, H, W), weight (F, C/G, kH, kW), bias (F,) from ``seed``."""
    rng = np.random.default_rng(seed)
    g = geometry
    x = rng.standard_normal((g.batch, g.in_channels, g.height, g.width))
    weight = rng.standard_normal((g.out_channels, g.in_channels // g.groups, *g.kernel))
    b = rng.standard_normal(g.out_channels) if bias else None
    return x, weight, b


def lc_arrays(geometry, seed, bias=True):
    """x, weight (Ho, Wo, F, C/G, kH, kW), bias (F, Ho, Wo) from ``seed``."""
    rng = np.random.default_rng(seed)
    g = geometry
    x = rng.standard_normal((g.batch, g.in_channels, g.height, g.width))
    weight = rng.standard_normal((g.out_h, g.out_w, g.out_channels,
                                  g.in_channels // g.groups, *g.kernel))
    b = rng.standard_normal((g.out_channels, g.out_h, g.out_w)) if bias else None
    return x, weight, b


# --- nested-loop references --------------------------------------------------------------------

def _padded(x, padding):
    ph, pw = padding
    xp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw))
    xp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return xp


def reference(x, weight, bias, geometry, dout, locally_connected=False):
    """Forward and all gradients by loops over every (n, f, ho, wo, c, i, j).

    ``weight`` is (F, Cg, kH, kW) for a convolution, (Ho, Wo, F, Cg, kH, kW) when
    ``locally_connected``; the bias is (F,) or (F, Ho, Wo) accordingly.
    """
    g = geometry
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    kh, kw = g.kernel
    cg, fg = g.in_channels // g.groups, g.out_channels // g.groups
    xp = _padded(x, g.padding)
    out = np.zeros((g.batch, g.out_channels, g.out_h, g.out_w))
    dxp, dweight = np.zeros_like(xp), np.zeros_like(weight)
    dbias = None if bias is None else np.zeros_like(bias)
    for n in range(g.batch):
        for f in range(g.out_channels):
            group = f // fg
            for ho in range(g.out_h):
                for wo in range(g.out_w):
                    kernel = weight[ho, wo, f] if locally_connected else weight[f]
                    dkernel = dweight[ho, wo, f] if locally_connected else dweight[f]
                    total = 0.0
                    if bias is not None:
                        total = bias[f, ho, wo] if locally_connected else bias[f]
                        if locally_connected:
                            dbias[f, ho, wo] += dout[n, f, ho, wo]
                        else:
                            dbias[f] += dout[n, f, ho, wo]
                    for c in range(cg):
                        channel = group * cg + c
                        for i in range(kh):
                            for j in range(kw):
                                r, q = ho * sh + i * dh, wo * sw + j * dw
                                total += kernel[c, i, j] * xp[n, channel, r, q]
                                dxp[n, channel, r, q] += dout[n, f, ho, wo] * kernel[c, i, j]
                                dkernel[c, i, j] += dout[n, f, ho, wo] * xp[n, channel, r, q]
                    out[n, f, ho, wo] = total
    dx = dxp[:, :, ph:ph + g.height, pw:pw + g.width]
    return out, dx, dweight, dbias


# --- Conv2D: output size, complex step, nested loops -----------------------------------------

@given(geometries())
def test_output_size_rounds_down_as_constructed(geometry):
    g = geometry
    layer = nn.Conv2D("conv", g.in_channels, g.out_channels, g.kernel, **g.conv_kwargs)
    shape = (g.batch, g.in_channels, g.height, g.width)
    assert layer.output_shape(shape) == (g.batch, g.out_channels, g.out_h, g.out_w)
    x, weight, bias = conv_arrays(g, 0)
    assert conv2d_forward(x, weight, bias, **g.conv_kwargs)[0].shape == layer.output_shape(shape)


@given(geometries(), st.integers(0, 2**16), st.booleans())
@example(EDGE_GEOMETRIES[0], 0, True)
@example(EDGE_GEOMETRIES[1], 1, True)
@example(EDGE_GEOMETRIES[2], 2, False)
@example(EDGE_GEOMETRIES[3], 3, True)
@example(EDGE_GEOMETRIES[4], 4, True)
@example(EDGE_GEOMETRIES[5], 5, True)
def test_conv2d_backward_matches_complex_step(geometry, seed, with_bias):
    x, weight, bias = conv_arrays(geometry, seed, with_bias)
    inputs = {"x": x, "weight": weight} | ({"bias": bias} if with_bias else {})
    static = geometry.conv_kwargs | ({} if with_bias else {"bias": None})
    report = check_vjp(conv2d_forward, conv2d_backward, inputs, static=static, seed=seed)
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@given(geometries(), st.integers(0, 2**16))
@example(EDGE_GEOMETRIES[1], 0)
@example(EDGE_GEOMETRIES[2], 0)
@example(EDGE_GEOMETRIES[5], 0)
def test_conv2d_matches_nested_loop_reference(geometry, seed):
    x, weight, bias = conv_arrays(geometry, seed)
    out, cache = conv2d_forward(x, weight, bias, **geometry.conv_kwargs)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    dx, dweight, dbias = conv2d_backward(dout, cache)
    expected = reference(x, weight, bias, geometry, dout)
    for name, actual, wanted in zip(("out", "dx", "dweight", "dbias"),
                                    (out, dx, dweight, dbias), expected, strict=True):
        assert_close(actual, wanted, name=name)


# The input gradient has two implementations ("columns", "positions"), which conv2d_backward
# picks between by shape (positions_first). The drawn geometries are small, so "auto" would
# almost always pick "columns": every test below forces each method in turn.

def backward_through(method):
    """conv2d_backward with its input gradient forced through ``method``."""
    def backward(dout, cache):
        with mock.patch.object(conv_module, "positions_first",
                               lambda *_: method == "positions"):
            return conv2d_backward(dout, cache)
    return backward


@pytest.mark.parametrize("method", ["columns", "positions"])
@given(geometries(max_channels=9), st.integers(0, 2**16), st.booleans())
@example(EDGE_GEOMETRIES[3], 3, True)
@example(EDGE_GEOMETRIES[5], 5, True)
def test_conv2d_backward_matches_complex_step_through_each_method(method, geometry, seed,
                                                                  with_bias):
    x, weight, bias = conv_arrays(geometry, seed, with_bias)
    inputs = {"x": x, "weight": weight} | ({"bias": bias} if with_bias else {})
    static = geometry.conv_kwargs | ({} if with_bias else {"bias": None})
    report = check_vjp(conv2d_forward, backward_through(method), inputs, static=static,
                       seed=seed)
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@pytest.mark.parametrize("method", INPUT_GRADIENT_METHODS)
@given(geometries(max_channels=9), st.integers(0, 2**16))
@example(EDGE_GEOMETRIES[1], 0)
@example(EDGE_GEOMETRIES[5], 0)
def test_conv2d_input_gradient_matches_nested_loop_reference(method, geometry, seed):
    x, weight, bias = conv_arrays(geometry, seed)
    g = geometry
    dout = np.random.default_rng(seed + 1).standard_normal(
        (g.batch, g.out_channels, g.out_h, g.out_w))
    dx = conv2d_input_gradient(dout, weight, x.shape, **g.conv_kwargs, method=method)
    assert dx.shape == x.shape and dx.flags.c_contiguous
    assert_close(dx, reference(x, weight, bias, g, dout)[1], name="dx")


def test_auto_takes_positions_for_narrow_outputs_and_many_channels_per_group():
    # The documented rule, at its edges; and conv2d_backward follows it.
    assert positions_first(8, 12) and positions_first(64, 1)
    assert not positions_first(7, 12) and not positions_first(8, 13)
    calls = []
    by_positions = conv_module.input_gradient_by_positions

    def counting(*args):
        calls.append(args[0].shape)
        return by_positions(*args)

    rng = np.random.default_rng(0)
    with mock.patch.object(conv_module, "input_gradient_by_positions", counting):
        for channels, groups, picked in ((8, 1, True), (16, 2, True), (16, 4, False),
                                         (7, 1, False)):
            x = rng.standard_normal((2, channels, 27, 27))              # Wo = 12
            weight = rng.standard_normal((4, channels // groups, 5, 5))
            out, cache = conv2d_forward(x, weight, None, stride=2, groups=groups)
            dout = rng.standard_normal(out.shape)
            calls.clear()
            dx = conv2d_backward(dout, cache)[0]
            assert len(calls) == picked
            assert_close(dx, conv2d_input_gradient(dout, weight, x.shape, stride=2,
                                                   groups=groups, method="columns"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="fast"), r"method must be one of \('auto', 'columns', 'positions'\)"),
    (dict(x_shape=(2, 8, 9)), r"\(x_shape\): expected input of rank 4"),
    (dict(x_shape=(2, 4, 9, 9)), r"\(x_shape\): expected 8 input channels"),
    (dict(x_shape=(2, 8, 10, 9)), r"dout: expected shape \(2, 4, 4, 4\), got \(2, 4, 3, 4\)"),
    (dict(groups=3), "groups=3 does not divide F=4"),
    (dict(groups=2), r"\(x_shape\): expected 16 input channels"),
    (dict(dout=np.zeros((2, 4, 3))), r"dout: expected shape \(N, F, Ho, Wo\), got \(2, 4, 3\)"),
    (dict(weight=np.zeros((4, 8, 3))), r"weight: expected shape \(F, Cg, kH, kW\), got "),
])
def test_conv2d_input_gradient_rejects_bad_arguments(kwargs, match):
    arguments = dict(dout=np.zeros((2, 4, 3, 4)), weight=np.zeros((4, 8, 3, 3)),
                     x_shape=(2, 8, 9, 10), stride=2) | kwargs
    with pytest.raises(ValueError, match=f"conv2d_input_gradient.*{match}"):
        conv2d_input_gradient(**arguments)


def read_indices(size, kernel, stride, padding, dilation, out):
    """The input rows (or columns) some window reads: ``o*s + i*d - p`` inside [0, size)."""
    taps = {o * stride + i * dilation - padding for o in range(out) for i in range(kernel)}
    return sorted(t for t in taps if 0 <= t < size)


@given(geometries(), st.integers(0, 2**16))
@example(EDGE_GEOMETRIES[1], 0)
@example(EDGE_GEOMETRIES[2], 0)
@example(make_geometry(kernel=(1, 1), stride=(2, 1), padding=(1, 0), out=(2, 1)), 0)
def test_input_elements_read_by_no_window_get_zero_gradient(geometry, seed):
    # Rows after the last window (the round-down remainder), rows between dilated taps that
    # no stride offset reaches, and rows only padding-reading windows surround: exactly zero.
    # Every element some window reads gets a (generically) nonzero gradient.
    g = geometry
    x, weight, bias = conv_arrays(g, seed)
    out, cache = conv2d_forward(x, weight, bias, **g.conv_kwargs)
    dx = conv2d_backward(np.random.default_rng(seed).standard_normal(out.shape), cache)[0]
    rows = read_indices(g.height, g.kernel[0], g.stride[0], g.padding[0], g.dilation[0],
                        g.out_h)
    cols = read_indices(g.width, g.kernel[1], g.stride[1], g.padding[1], g.dilation[1],
                        g.out_w)
    read = np.zeros((g.height, g.width), dtype=bool)
    read[np.ix_(rows, cols)] = True
    assert not dx[:, :, ~read].any()
    assert np.all(dx[:, :, read] != 0)


@given(geometries(), st.integers(0, 2**16))
def test_col2im_is_the_adjoint_of_im2col(geometry, seed):
    # <im2col(x), c> = <x, col2im(c)> for all x, c: col2im is exactly the transpose of the
    # linear map im2col, which is what the input gradient needs.
    g = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g.batch, g.in_channels, g.height, g.width))
    cols = im2col(x, g.kernel, g.stride, g.padding, g.dilation)
    assert cols.shape == (g.in_channels * g.kernel[0] * g.kernel[1],
                          g.batch * g.out_h * g.out_w)
    c = rng.standard_normal(cols.shape)
    back = col2im(c, x.shape, g.kernel, g.stride, g.padding, g.dilation)
    left, right = np.sum(cols * c), np.sum(x * back)
    magnitude = np.sum(np.abs(cols * c))
    assert abs(left - right) <= COMPLEX.atol + COMPLEX.rtol * magnitude


@given(geometries(), st.integers(0, 2**16))
def test_complex_forward_has_the_real_forward_as_real_part(geometry, seed):
    x, weight, bias = conv_arrays(geometry, seed)
    direction = np.random.default_rng(seed + 1).standard_normal(x.shape)
    real_out = conv2d_forward(x, weight, bias, **geometry.conv_kwargs)[0]
    complex_out = conv2d_forward(x + 1e-20j * direction, weight, bias,
                                 **geometry.conv_kwargs)[0]
    assert complex_out.dtype == np.complex128
    assert_close(complex_out.real, real_out)


def test_inputs_and_cache_are_never_mutated():
    g = EDGE_GEOMETRIES[5]
    x, weight, bias = conv_arrays(g, 0)
    for array in (x, weight, bias):
        array.flags.writeable = False
    out, cache = conv2d_forward(x, weight, bias, **g.conv_kwargs)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dout.flags.writeable = False
    cache.cols.flags.writeable = False
    first = conv2d_backward(dout, cache)
    second = conv2d_backward(dout, cache)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


# --- LocallyConnected2D ---------------------------------------------------------------------------

@given(geometries(max_out=2), st.integers(0, 2**16), st.booleans())
@example(EDGE_GEOMETRIES[0], 0, True)
@example(EDGE_GEOMETRIES[3], 0, False)
def test_locally_connected_backward_matches_complex_step(geometry, seed, with_bias):
    x, weight, bias = lc_arrays(geometry, seed, with_bias)
    inputs = {"x": x, "weight": weight} | ({"bias": bias} if with_bias else {})
    static = geometry.conv_kwargs | ({} if with_bias else {"bias": None})
    report = check_vjp(locally_connected2d_forward, locally_connected2d_backward, inputs,
                       static=static, seed=seed)
    assert report.ok, report


@given(geometries(max_out=2), st.integers(0, 2**16))
@example(EDGE_GEOMETRIES[1], 0)
def test_locally_connected_matches_nested_loop_reference(geometry, seed):
    x, weight, bias = lc_arrays(geometry, seed)
    out, cache = locally_connected2d_forward(x, weight, bias, **geometry.conv_kwargs)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    actual = (out, *locally_connected2d_backward(dout, cache))
    expected = reference(x, weight, bias, geometry, dout, locally_connected=True)
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), actual, expected, strict=True):
        assert_close(a, e, name=name)


@given(geometries(), st.integers(0, 2**16))
@example(EDGE_GEOMETRIES[5], 0)
def test_sharing_is_accumulation_locally_connected_with_one_kernel_equals_conv(geometry, seed):
    """Parameter sharing, exactly: a locally connected layer whose kernels are all one kernel
    K computes the convolution with K, and the sum over positions of its per-position weight
    (and bias) gradients is the convolution's gradient."""
    g = geometry
    x, kernel, b = conv_arrays(g, seed)
    positions = (g.out_h, g.out_w)
    lc_weight = np.broadcast_to(kernel, positions + kernel.shape).copy()  # (Ho, Wo, F, ...)
    lc_bias = np.broadcast_to(b[:, None, None], (g.out_channels, *positions)).copy()
    conv_out, conv_cache = conv2d_forward(x, kernel, b, **g.conv_kwargs)
    lc_out, lc_cache = locally_connected2d_forward(x, lc_weight, lc_bias, **g.conv_kwargs)
    assert_close(lc_out, conv_out, name="out")
    dout = np.random.default_rng(seed + 1).standard_normal(conv_out.shape)
    conv_dx, conv_dweight, conv_dbias = conv2d_backward(dout, conv_cache)
    lc_dx, lc_dweight, lc_dbias = locally_connected2d_backward(dout, lc_cache)
    assert lc_dweight.shape == positions + conv_dweight.shape
    assert_close(lc_dweight.sum(axis=(0, 1)), conv_dweight, name="sum of per-position dweight")
    assert_close(lc_dbias.sum(axis=(1, 2)), conv_dbias, name="sum of per-position dbias")
    assert_close(lc_dx, conv_dx, name="dx")


def test_parameter_count_conv_versus_locally_connected():
    # Same geometry (3 -> 16 channels, 3x3, padding 1, on 32x32): the convolution stores one
    # kernel, the locally connected layer one per output position (32 * 32 of them).
    conv = ri.Sequential([nn.Conv2D("layer", 3, 16, 3, padding=1)])
    local = ri.Sequential([nn.LocallyConnected2D("layer", 3, 16, 3, (32, 32), padding=1)])
    kernel_values = 16 * 3 * 3 * 3
    assert conv.parameter_count() == (kernel_values + 16, kernel_values + 16,
                                      8 * (kernel_values + 16))
    positions = 32 * 32
    assert local.parameter_count().unique == positions * (kernel_values + 16)
    assert local.parameter_count().unique == positions * conv.parameter_count().unique
    assert conv.parameter_count().unique == 448
    assert local.parameter_count().unique == 458_752


@given(geometries(), st.integers(0, 2**16))
def test_locally_connected_parameter_count_is_positions_times_conv(geometry, seed):
    g = geometry
    conv = ri.Sequential([nn.Conv2D("layer", g.in_channels, g.out_channels, g.kernel,
                                    **g.conv_kwargs)])
    local = ri.Sequential([nn.LocallyConnected2D(
        "layer", g.in_channels, g.out_channels, g.kernel, (g.height, g.width),
        **g.conv_kwargs)])
    assert local.parameter_count().unique == (
        g.out_h * g.out_w * conv.parameter_count().unique)


# --- layer specs ----------------------------------------------------------------------------

def test_specs_normalise_to_pairs_and_round_trip_through_json():
    specs = [
        nn.Conv2D("c", 4, 6, 3, stride=2, padding=(1, 0), dilation=[2, 1], groups=2),
        nn.Conv2D("c", 1, 1, (1, 5), bias=False),
        nn.LocallyConnected2D("lc", 2, 3, 3, 7, stride=2, padding=1),
        nn.LocallyConnected2D("lc", 2, 4, (2, 3), (5, 6), dilation=(1, 2), groups=2,
                              bias=False),
    ]
    assert specs[0].kernel_size == (3, 3) and specs[0].stride == (2, 2)
    assert specs[0].padding == (1, 0) and specs[0].dilation == (2, 1)
    assert specs[2].input_size == (7, 7)
    for spec in specs:
        config = json.loads(json.dumps(layer_config(spec)))
        assert layer_from_config(config) == spec


def test_spec_forward_backward_and_init():
    layer = nn.LocallyConnected2D("lc", 2, 3, 3, (6, 5), stride=(2, 1))
    assert layer.output_size == (2, 3)
    params = layer.init_parameters(np.random.default_rng(0))
    assert params["weight"].shape == (2, 3, 3, 2, 3, 3)
    assert params["bias"].shape == (3, 2, 3)
    bound = 1 / np.sqrt(2 * 3 * 3)  # fan_in = C/G * kH * kW, as PyTorch
    assert all(np.abs(value).max() <= bound for value in params.values())
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 5))
    out, cache = layer.forward(x, params)
    dx, grads = layer.backward(np.ones(out.shape), cache)
    assert out.shape == (2, 3, 2, 3) and dx.shape == x.shape
    assert set(grads) == {"weight", "bias"}
    conv = nn.Conv2D("c", 4, 2, 2, groups=2, bias=False)
    assert conv.parameter_shapes() == {"weight": (2, 2, 2, 2)}
    assert set(conv.backward(np.ones((1, 2, 2, 2)),
                             conv.forward(np.ones((1, 4, 3, 3)),
                                          conv.init_parameters(np.random.default_rng(0)))[1]
                             )[1]) == {"weight"}


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=0), ValueError, "kernel_size: expected values >= 1"),
    (dict(kernel_size=3, stride=0), ValueError, "stride: expected values >= 1"),
    (dict(kernel_size=3, stride=(1, -1)), ValueError, "stride: expected values >= 1"),
    (dict(kernel_size=3, dilation=0), ValueError, "dilation: expected values >= 1"),
    (dict(kernel_size=3, dilation=-2), ValueError, "dilation: expected values >= 1"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding: expected values >= 0"),
    (dict(kernel_size=3, groups=4), ValueError, "groups=4 must divide both"),
    (dict(kernel_size=3, groups=0), ValueError, "groups: expected a positive int"),
    (dict(kernel_size=2.5), TypeError, "kernel_size: expected an int or an"),
    (dict(kernel_size=(1, 2, 3)), TypeError, "kernel_size: expected an int or an"),
    (dict(kernel_size=True), TypeError, "kernel_size: expected an int or an"),
    (dict(kernel_size="3"), TypeError, "kernel_size: expected an int or an"),
    (dict(kernel_size=3, bias=1), TypeError, "bias: expected a bool"),
])
def test_conv_spec_rejects_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.Conv2D("conv", 6, 8, **kwargs)


def test_conv_spec_rejects_bad_names_and_channel_counts():
    with pytest.raises(ValueError, match="name: expected a non-empty string"):
        nn.Conv2D("a.b", 1, 1, 1)
    with pytest.raises(ValueError, match="in_channels: expected a positive int"):
        nn.Conv2D("c", 0, 1, 1)
    with pytest.raises(TypeError, match="out_channels: expected a positive int"):
        nn.Conv2D("c", 1, 1.0, 1)


@pytest.mark.parametrize("shape, match", [
    ((2, 3, 4, 4), r"kernel height 5 \(dilated to 5\) is larger than the padded input"),
    ((2, 3, 8, 3), r"kernel width 5 \(dilated to 5\) is larger than the padded input"),
    ((2, 4, 8, 8), "expected 3 input channels"),
    ((3, 8, 8), "expected input of rank 4"),
    ((2, 3, 8, 8, 1), "expected input of rank 4"),
])
def test_conv_rejects_bad_input_shapes(shape, match):
    layer = nn.Conv2D("conv1", 3, 2, 5)
    with pytest.raises(ValueError, match=f"conv1: {match}"):
        layer.output_shape(shape)
    model = ri.Sequential([layer, nn.Flatten(), nn.Dense("fc", 2, 2)],
                          loss=nn.SoftmaxCrossEntropy())
    params = model.init(0)
    with pytest.raises(ValueError, match=match):
        model.loss(params, np.zeros(shape), np.zeros(shape[0], dtype=int))


def test_empty_spatial_input_is_rejected():
    with pytest.raises(ValueError, match=r"conv: expected a non-empty input \(H, W >= 1\)"):
        nn.Conv2D("conv", 1, 1, 1, padding=1).output_shape((1, 1, 3, 0))


def test_dilation_makes_the_kernel_too_large():
    layer = nn.Conv2D("conv", 1, 1, 3, dilation=3, padding=1)  # extent 7 > 4 + 2
    with pytest.raises(ValueError, match=r"kernel height 3 \(dilated to 7\) is larger than "
                                         r"the padded input height 4 \+ 2\*1 = 6"):
        layer.output_shape((1, 1, 4, 9))


def test_free_functions_reject_inconsistent_arrays():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError, match="needs 6 input channels"):
        conv2d_forward(x, np.zeros((2, 3, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="F divisible by 2"):
        conv2d_forward(x, np.zeros((3, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\)"):
        conv2d_forward(x, np.zeros((2, 4, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"weight: expected shape \(F, Cg, kH, kW\), got"):
        conv2d_forward(x, np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, C, H, W\), got \(4, 5, 5\)"):
        conv2d_forward(np.zeros((4, 5, 5)), np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"does not start with the output size \(3, 3\)"):
        locally_connected2d_forward(x, np.zeros((2, 2, 2, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 3, 3\)"):
        locally_connected2d_forward(x, np.zeros((3, 3, 2, 4, 3, 3)), np.zeros(2))


def test_locally_connected_rejects_another_input_size():
    layer = nn.LocallyConnected2D("lc", 2, 3, 3, (6, 6))
    with pytest.raises(ValueError, match=r"lc: expected input of spatial size \(6, 6\)"):
        layer.output_shape((1, 2, 7, 6))
    with pytest.raises(ValueError, match="lc: kernel height 3 .* larger than the padded"):
        nn.LocallyConnected2D("lc", 2, 3, 3, (2, 6))
    with pytest.raises(ValueError, match="input_size: expected values >= 1"):
        nn.LocallyConnected2D("lc", 2, 3, 3, (0, 6))


# --- CNNs: the model-level complex step ---------------------------------------------------------

@st.composite
def cnn_problems(draw):
    """(model, params, x, y): 1-2 conv blocks (conv -> ReLU/Tanh -> optional max/avg pool),
    sometimes a locally connected first layer, then Flatten and 1-2 dense layers; every
    geometry drawn to fit its input."""
    channels, height, width = draw(st.integers(1, 2)), draw(st.integers(3, 7)), \
        draw(st.integers(3, 7))
    activation = draw(st.sampled_from((nn.ReLU(), nn.Tanh())))
    layers, shape = [], (1, channels, height, width)
    blocks = draw(st.integers(1, 2))
    for index in range(1, blocks + 1):
        groups = draw(st.sampled_from([g for g in (1, 2) if shape[1] % g == 0]))
        out_channels = groups * draw(st.integers(1, 2))
        kernel, stride, padding, dilation = [], [], [], []
        for size in shape[2:]:
            padding.append(draw(st.integers(0, 1)))
            dilation.append(draw(st.integers(1, 2)))
            largest = (size + 2 * padding[-1] - 1) // dilation[-1] + 1
            kernel.append(draw(st.integers(1, min(3, largest))))
            stride.append(draw(st.integers(1, 2)))
        local = index == 1 and draw(st.booleans())
        if local:
            layer = nn.LocallyConnected2D(f"conv{index}", shape[1], out_channels, kernel,
                                          shape[2:], stride, padding, dilation, groups)
        else:
            layer = nn.Conv2D(f"conv{index}", shape[1], out_channels, kernel, stride, padding,
                              dilation, groups)
        block = [layer, activation]
        if min(layer.output_shape(shape)[2:]) >= 2:
            pool_type = draw(st.sampled_from((None, nn.MaxPool2D, nn.AvgPool2D)))
            if pool_type is not None:
                block.append(pool_type(2, stride=draw(st.integers(1, 2))))
        for item in block:
            shape = item.output_shape(shape)
            layers.append(item)
    layers.append(nn.Flatten())
    features = int(np.prod(shape[1:]))
    hidden = draw(st.sampled_from(([], [3])))
    sizes = [features, *hidden, draw(st.integers(2, 3))]
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), 1):
        if index > 1:
            layers.append(activation)
        layers.append(nn.Dense(f"fc{index}", fan_in, fan_out))
    loss = draw(st.sampled_from((nn.SoftmaxCrossEntropy(), nn.MSE())))
    model = ri.Sequential(layers, loss=loss)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    batch = draw(st.integers(1, 3))
    x = rng.standard_normal((batch, channels, height, width))
    if isinstance(loss, nn.SoftmaxCrossEntropy):
        y = rng.integers(0, sizes[-1], size=batch)
    else:
        y = rng.standard_normal((batch, sizes[-1]))
    return model, model.init(seed), x, y


def edge_cnn_problem():
    """Batch 1, one channel: the smallest CNN with every layer type."""
    model = CNN((1, 4, 4), [{"out_channels": 1, "kernel_size": 2}], [2], pool=nn.MaxPool2D(2))
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    return model, model.init(0), x, np.array([1])


@given(cnn_problems())
@example(edge_cnn_problem())
def test_cnn_loss_and_grads_match_complex_step(problem):
    model, params, x, y = problem
    report = ri.check_model_gradients(model, params, (x, y))
    assert report.ok, report


@given(cnn_problems())
def test_cnn_input_gradient_matches_complex_step(problem):
    # The gradient with respect to the *input* through every layer (Sequential.vjp).
    model, params, x, _ = problem
    out = model.forward(params, x)
    dout = np.random.default_rng(0).standard_normal(out.shape)

    def forward(x):
        return model.forward(params, x), None

    def backward(dout, _):
        return model.vjp(params, x, dout)[1]

    report = check_vjp(forward, backward, {"x": x}, dout=dout)
    assert report.ok, report


def test_cnn_constructor_layers_and_errors():
    model = CNN((1, 12, 12), [4, {"out_channels": 6, "kernel_size": 3, "stride": 2,
                                  "padding": 1}], [16, 10], activation="tanh")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "Tanh", "MaxPool2D", "Conv2D", "Tanh", "MaxPool2D", "Flatten",
                     "Dense", "Tanh", "Dense"]
    assert model.output_shape((5, 1, 12, 12)) == (5, 10)
    assert list(model.parameter_shapes()) == ["conv1.weight", "conv1.bias", "conv2.weight",
                                              "conv2.bias", "fc1.weight", "fc1.bias",
                                              "fc2.weight", "fc2.bias"]
    assert ri.Sequential.from_config(json.loads(json.dumps(model.config()))).layers == \
        model.layers
    no_pool = CNN((2, 5, 5), [3], [2], pool=None, loss="mse")
    assert [type(layer).__name__ for layer in no_pool.layers] == ["Conv2D", "ReLU", "Flatten",
                                                                  "Dense"]
    with pytest.raises(ValueError, match=r"convs\[1\] \(conv2 block\): MaxPool2D: kernel"):
        CNN((1, 8, 8), [4, {"out_channels": 6, "kernel_size": 3, "stride": 2}], [10])
    with pytest.raises(ValueError, match="input_shape: expected"):
        CNN((8, 8), [4], [10])
    with pytest.raises(ValueError, match="dense: expected at least one"):
        CNN((1, 8, 8), [4], [])
    with pytest.raises(ValueError, match="in_channels and name are inferred"):
        CNN((1, 8, 8), [{"out_channels": 2, "kernel_size": 3, "in_channels": 1}], [2])
    with pytest.raises(TypeError, match="pool: expected None"):
        CNN((1, 8, 8), [4], [2], pool="max")
    with pytest.raises(TypeError, match=r"convs\[0\]: expected an int"):
        CNN((1, 8, 8), ["4"], [2])
    with pytest.raises(ValueError, match=r"activation: unknown name 'gelu'; expected one of "
                                         r"\['identity', 'leaky_relu', 'relu'"):
        CNN((1, 8, 8), [4], [2], activation="gelu")
    with pytest.raises(ValueError, match=r"loss: unknown name 'hinge'; expected one of "
                                         r"\['cross_entropy', 'mse'\]"):
        CNN((1, 8, 8), [4], [2], loss="hinge")


# --- the built-in CNN cases (refimpl check) --------------------------------------------------

def test_cnn_cases_are_deterministic_serialisable_and_pass_the_complex_step():
    from refimpl.testing.cases import cnn

    cases, again = cnn.cases(), cnn.cases()
    assert len({case.name for case in cases}) == len(cases) >= 6
    for case, same in zip(cases, again, strict=True):
        assert case.kind == "cnn" and case.name.startswith("cnn-")
        config = json.loads(json.dumps(case.config))
        assert ri.Sequential.from_config(config["model"]).config() == case.config["model"]
        for key in case.params:
            assert np.array_equal(case.params[key], same.params[key])
        mode = "full" if case.parameter_total() <= 2000 else "directional"
        report = check_gradients(case.loss_and_grads, case.params, mode=mode)
        assert report.ok, f"{case.name}\n{report}"
    kinds = {type(layer).__name__ for case in cases
             for layer in ri.Sequential.from_config(case.config["model"]).layers}
    assert {"Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "Flatten", "ReLU",
            "Tanh"} <= kinds
