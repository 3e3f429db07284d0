"""Tests of refimpl/nn/dense.py: dense_forward/dense_backward and the Dense layer spec.

Legend: ``N`` batch, ``D`` input features, ``F`` output features; weight (F, D), PyTorch's
layout, ``out = x @ W.T + b``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from drawing import arrays
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import nn
from refimpl.gradcheck import TOLERANCES, check_vjp
from refimpl.nn.base import layer_config, layer_from_config
from refimpl.nn.dense import DenseCache, dense_backward, dense_forward

COMPLEX = TOLERANCES["complex"]
SIZES = st.integers(1, 5)


@st.composite
def order_one(draw, shape):
    """Magnitudes in [0.25, 4] with drawn signs: the scale at which central differences
    (step ~6e-6) are accurate to ~1e-9, whatever the mix of values."""
    magnitude = draw(arrays(shape, 0.25, 4.0))
    return np.where(draw(hnp.arrays(np.bool_, shape)), -magnitude, magnitude)


@st.composite
def dense_problems(draw, central=False):
    """(x, weight, bias): x (N, D), weight (F, D), bias (F,), N, D, F in 1..5."""
    n, d, f = draw(SIZES), draw(SIZES), draw(SIZES)
    values = order_one if central else arrays
    return draw(values((n, d))), draw(values((f, d))), draw(values((f,)))


def square(n=3, d=3, seed=0):
    """A problem whose weight is square, so a transposed W has the right shape and only
    wrong values (pinned with @example: a W / W.T mix-up must fail on values)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((d, d)), rng.standard_normal(d)


ONE = (np.array([[1.5]]), np.array([[-2.0]]), np.array([0.5]))   # batch 1, one feature


def assert_equal_up_to_rounding(actual, expected, magnitude):
    """Elementwise ``|actual - expected| <= atol + rtol * magnitude`` with the rounding-level
    (complex-step) tolerances; ``magnitude`` is the sum of the absolute values of the terms
    (e.g. ``|x| @ |W|.T``), the scale of the rounding error of a sum whatever cancels."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    error = np.abs(actual - expected)
    limit = COMPLEX.atol + COMPLEX.rtol * np.asarray(magnitude)
    assert np.all(error <= limit), (error.max(), actual, expected)


def freeze(*items):
    for item in items:
        for value in (item if isinstance(item, tuple) else (item,)):
            if isinstance(value, np.ndarray):
                value.flags.writeable = False


def backward_with(dout, x, weight, bias):
    return dense_backward(dout, dense_forward(x, weight, bias)[1])


# --- backward against numerical differentiation --------------------------------------------

@given(problem=dense_problems(), seed=st.integers(0, 2**16))
@example(problem=ONE, seed=0)
@example(problem=square(), seed=1)
@example(problem=square(n=1, d=4), seed=2)
def test_backward_matches_complex_step(problem, seed):
    x, weight, bias = problem
    report = check_vjp(dense_forward, dense_backward, {"x": x, "weight": weight, "bias": bias},
                       seed=seed, method="complex")
    assert report.ok, report
    assert [row.name for row in report.rows] == ["x", "weight", "bias"]
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@given(data=st.data())
def test_backward_matches_complex_step_with_drawn_upstream_gradient(data):
    x, weight, bias = data.draw(dense_problems())
    dout = data.draw(arrays((x.shape[0], weight.shape[0])))
    report = check_vjp(dense_forward, dense_backward, {"x": x, "weight": weight, "bias": bias},
                       dout=dout, method="complex")
    assert report.ok, report


@given(problem=dense_problems(central=True), seed=st.integers(0, 2**16))
@example(problem=ONE, seed=0)
@example(problem=square(), seed=1)
def test_backward_matches_central_differences(problem, seed):
    x, weight, bias = problem
    report = check_vjp(dense_forward, dense_backward, {"x": x, "weight": weight, "bias": bias},
                       seed=seed, method="central")
    assert report.ok, report


@given(problem=dense_problems(), seed=st.integers(0, 2**16))
@example(problem=square(), seed=0)
def test_backward_without_bias_matches_complex_step(problem, seed):
    x, weight, _ = problem
    report = check_vjp(dense_forward, dense_backward, {"x": x, "weight": weight},
                       static={"bias": None}, seed=seed, method="complex")
    assert report.ok, report
    _, _, dbias = backward_with(np.ones((x.shape[0], weight.shape[0])), x, weight, None)
    assert dbias is None


@given(problem=dense_problems())
@example(problem=ONE)
def test_complex_forward_has_the_real_forward_as_real_part(problem):
    x, weight, bias = problem
    out, _ = dense_forward(x, weight, bias)
    out_c, _ = dense_forward(x + 0j, weight + 1e-20j, bias + 0j)
    assert out_c.dtype == np.complex128
    # complex and real BLAS kernels may sum in different orders: equal up to rounding
    assert_equal_up_to_rounding(out_c.real, out, np.abs(x) @ np.abs(weight).T + np.abs(bias))


# --- values against an independent formula -------------------------------------------------

@given(problem=dense_problems())
@example(problem=ONE)
@example(problem=square())
def test_forward_matches_explicit_sums(problem):
    # out[n, f] = sum_d x[n, d] W[f, d] + b[f]: weight is (out, in), as torch.nn.Linear.
    x, weight, bias = problem
    out, _ = dense_forward(x, weight, bias)
    expected = np.array([[math.fsum(x[n] * weight[f]) + bias[f] for f in range(len(bias))]
                         for n in range(len(x))])
    assert_equal_up_to_rounding(out, expected, np.abs(x) @ np.abs(weight).T + np.abs(bias))


@given(problem=dense_problems(), seed=st.integers(0, 2**16))
@example(problem=ONE, seed=0)
@example(problem=square(n=4), seed=0)
def test_batch_gradient_is_the_sum_over_rows(problem, seed):
    # The batch is the first case of parameter sharing: every row uses the same W and b, so
    # their gradients are the sums of the per-row gradients; dx is computed row by row.
    x, weight, bias = problem
    shape = (x.shape[0], weight.shape[0])
    dout = np.random.default_rng(seed).standard_normal(shape)
    dx, dweight, dbias = backward_with(dout, x, weight, bias)
    rows = [backward_with(dout[n:n + 1], x[n:n + 1], weight, bias) for n in range(len(x))]
    assert_equal_up_to_rounding(dx, np.concatenate([r[0] for r in rows]),
                                np.abs(dout) @ np.abs(weight))
    assert_equal_up_to_rounding(dweight, sum(r[1] for r in rows), np.abs(dout).T @ np.abs(x))
    assert_equal_up_to_rounding(dbias, sum(r[2] for r in rows), np.abs(dout).sum(axis=0))


# --- structural properties -----------------------------------------------------------------

@given(problem=dense_problems(), data=st.data(), a=st.floats(-3.0, 3.0),
       b=st.floats(-3.0, 3.0))
def test_backward_is_linear_in_the_upstream_gradient(problem, data, a, b):
    x, weight, bias = problem
    shape = (x.shape[0], weight.shape[0])
    d1, d2 = data.draw(arrays(shape)), data.draw(arrays(shape))
    _, cache = dense_forward(x, weight, bias)
    g1, g2 = dense_backward(d1, cache), dense_backward(d2, cache)
    combined = dense_backward(a * d1 + b * d2, cache)
    size = np.abs(a * d1) + np.abs(b * d2)     # bounds the terms on both sides
    magnitudes = (size @ np.abs(weight), size.T @ np.abs(x), size.sum(axis=0))
    for got, one, two, magnitude in zip(combined, g1, g2, magnitudes, strict=True):
        assert_equal_up_to_rounding(got, a * one + b * two, magnitude)


@given(problem=dense_problems())
@example(problem=ONE)
def test_zero_upstream_gradient_gives_zero_gradients(problem):
    x, weight, bias = problem
    for grad in backward_with(np.zeros((x.shape[0], weight.shape[0])), x, weight, bias):
        assert not grad.any()


@given(problem=dense_problems(), data=st.data())
def test_inputs_and_cache_are_never_mutated(problem, data):
    x, weight, bias = problem
    dout = data.draw(arrays((x.shape[0], weight.shape[0])))
    copies = [array.copy() for array in (x, weight, bias, dout)]
    freeze(x, weight, bias, dout)
    out, cache = dense_forward(x, weight, bias)
    freeze(out, cache)
    dense_backward(dout, cache)
    for array, copy in zip((x, weight, bias, dout), copies, strict=True):
        np.testing.assert_array_equal(array, copy)
    assert cache.x is x and cache.weight is weight   # cached by reference, not copied


@given(problem=dense_problems(), data=st.data())
def test_results_are_bit_for_bit_deterministic(problem, data):
    x, weight, bias = problem
    dout = data.draw(arrays((x.shape[0], weight.shape[0])))
    out1, cache1 = dense_forward(x, weight, bias)
    out2, cache2 = dense_forward(x, weight, bias)
    assert np.array_equal(out1, out2)
    for g1, g2 in zip(dense_backward(dout, cache1), dense_backward(dout, cache2), strict=True):
        assert np.array_equal(g1, g2)


@given(problem=dense_problems())
@example(problem=ONE)
def test_shapes_and_dtypes(problem):
    x, weight, bias = problem
    (n, d), f = x.shape, weight.shape[0]
    for dtype in (np.float64, np.complex128):
        out, cache = dense_forward(x.astype(dtype), weight.astype(dtype), bias.astype(dtype))
        assert isinstance(cache, DenseCache) and cache.has_bias
        assert out.shape == (n, f) and out.dtype == dtype
        dx, dweight, dbias = dense_backward(np.ones((n, f), dtype), cache)
        assert dx.shape == (n, d) and dweight.shape == (f, d) and dbias.shape == (f,)
        assert dx.dtype == dweight.dtype == dbias.dtype == dtype
    out, cache = dense_forward(x, weight, None)
    assert out.shape == (n, f) and not cache.has_bias


# --- the Dense layer spec ------------------------------------------------------------------

@given(problem=dense_problems(), data=st.data(), use_bias=st.booleans())
def test_spec_is_a_thin_adapter_of_the_free_functions(problem, data, use_bias):
    x, weight, bias = problem
    (n, d), f = x.shape, weight.shape[0]
    dout = data.draw(arrays((n, f)))
    layer = nn.Dense("fc", d, f, bias=use_bias)
    assert layer.has_parameters and layer.name == "fc"
    expected_shapes = {"weight": (f, d), "bias": (f,)} if use_bias else {"weight": (f, d)}
    assert layer.parameter_shapes() == expected_shapes
    assert layer.output_shape((n, d)) == (n, f)
    params = {"weight": weight, "bias": bias} if use_bias else {"weight": weight}
    out, cache = layer.forward(x, params)
    assert np.array_equal(out, dense_forward(x, weight, bias if use_bias else None)[0])
    dx, grads = layer.backward(dout, cache)
    ref = backward_with(dout, x, weight, bias if use_bias else None)
    assert np.array_equal(dx, ref[0])
    assert list(grads) == list(expected_shapes)
    assert np.array_equal(grads["weight"], ref[1])
    if use_bias:
        assert np.array_equal(grads["bias"], ref[2])


@pytest.mark.parametrize("in_features, out_features", [(1, 1), (3, 7), (50, 2)])
def test_init_parameters_fan_in_uniform_and_deterministic(in_features, out_features):
    layer = nn.Dense("fc", in_features, out_features)
    first = layer.init_parameters(np.random.default_rng(5))
    again = layer.init_parameters(np.random.default_rng(5))
    other = layer.init_parameters(np.random.default_rng(6))
    bound = 1 / math.sqrt(in_features)
    assert set(first) == {"weight", "bias"}
    for local, shape in layer.parameter_shapes().items():
        assert first[local].shape == shape and first[local].dtype == np.float64
        assert np.all(np.abs(first[local]) <= bound)
        assert np.array_equal(first[local], again[local])
        assert not np.array_equal(first[local], other[local])
    assert set(nn.Dense("fc", 2, 3, bias=False).init_parameters(np.random.default_rng(0))) == {
        "weight"}


@pytest.mark.parametrize("layer", [nn.Dense("fc1", 3, 4), nn.Dense("out", 1, 1, bias=False)])
def test_spec_config_round_trips_through_json(layer):
    config = json.loads(json.dumps(layer_config(layer)))
    assert config["type"] == "Dense"
    assert layer_from_config(config) == layer


@pytest.mark.parametrize("args, kwargs, error, match", [
    (("fc", 0, 3), {}, ValueError, "in_features: expected a positive int, got 0"),
    (("fc", -2, 3), {}, ValueError, "in_features: expected a positive int, got -2"),
    (("fc", 3, 0), {}, ValueError, "out_features: expected a positive int, got 0"),
    (("fc", 3, -1), {}, ValueError, "out_features"),
    (("fc", True, 3), {}, TypeError, "in_features: expected a positive int, got bool"),
    (("fc", 3, False), {}, TypeError, "out_features: .*bool"),
    (("fc", "3", 3), {}, TypeError, "in_features: .*str"),
    (("fc", 3.0, 3), {}, TypeError, "in_features: .*float"),
    (("fc", 3, None), {}, TypeError, "out_features"),
    (("fc.1", 3, 3), {}, ValueError, "name: expected a non-empty string without '.'"),
    (("", 3, 3), {}, ValueError, "name: expected a non-empty string"),
    (("fc", 3, 3), {"bias": 1}, TypeError, "bias: expected a bool"),
    (("fc", 3, 3), {"bias": "yes"}, TypeError, "bias: expected a bool"),
])
def test_dense_rejects_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.Dense(*args, **kwargs)


@pytest.mark.parametrize("name", [None, 3, ("fc",)])
def test_dense_rejects_non_string_names(name):
    with pytest.raises((TypeError, ValueError), match="name: expected a non-empty string"):
        nn.Dense(name, 3, 3)


def test_dense_accepts_numpy_integer_sizes():
    layer = nn.Dense("fc", np.int64(3), np.int32(2))
    assert layer.parameter_shapes() == {"weight": (2, 3), "bias": (2,)}


@pytest.mark.parametrize("input_shape", [(4,), (2, 4, 1), (2, 3), (2, 5), ()])
def test_output_shape_rejects_wrong_rank_or_feature_count(input_shape):
    layer = nn.Dense("fc7", 4, 2)
    with pytest.raises(ValueError, match=r"fc7: expected input of shape \(N, 4\), got "):
        layer.output_shape(input_shape)


def test_frozen_spec():
    layer = nn.Dense("fc", 2, 3)
    with pytest.raises(AttributeError):
        layer.in_features = 5


def test_numpy_integer_sizes_are_stored_as_ints():
    layer = nn.Dense("fc", np.int64(3), np.int32(2))
    assert type(layer.in_features) is int and type(layer.out_features) is int
    json.dumps(layer_config(layer))


# --- inputs of rank >= 3: the last axis, as torch.nn.Linear --------------------------------

@st.composite
def sequence_problems(draw, central=False):
    """(x (N, T, D) or (N, T, U, D), weight (F, D), bias (F,))."""
    middle = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    n, d, f = draw(SIZES), draw(SIZES), draw(SIZES)
    values = order_one if central else arrays
    return draw(values((n, *middle, d))), draw(values((f, d))), draw(values((f,)))


@given(problem=sequence_problems(), seed=st.integers(0, 2**16))
def test_rank_3_and_4_backward_matches_complex_step(problem, seed):
    x, weight, bias = problem
    report = check_vjp(dense_forward, dense_backward, {"x": x, "weight": weight, "bias": bias},
                       seed=seed, method="complex")
    assert report.ok, report


@given(problem=sequence_problems(central=True), seed=st.integers(0, 2**16))
def test_rank_3_and_4_backward_matches_central_differences(problem, seed):
    x, weight, bias = problem
    report = check_vjp(dense_forward, dense_backward, {"x": x, "weight": weight, "bias": bias},
                       seed=seed, method="central")
    assert report.ok, report


@given(problem=sequence_problems(), seed=st.integers(0, 2**16))
def test_every_position_is_a_row_and_shares_the_weight(problem, seed):
    # Per position (n, t, ...) the rank-2 map on that one row; W and b's gradients are the
    # sums over every position (each time step is one more use of the same weight).
    x, weight, bias = problem
    out, cache = dense_forward(x, weight, bias)
    assert out.shape == (*x.shape[:-1], weight.shape[0])
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    dx, dweight, dbias = dense_backward(dout, cache)
    positions = list(np.ndindex(x.shape[:-1]))
    rows = [backward_with(dout[p][None], x[p][None], weight, bias) for p in positions]
    for p in positions:
        assert_equal_up_to_rounding(out[p], dense_forward(x[p][None], weight, bias)[0][0],
                                    np.abs(x[p]) @ np.abs(weight).T + np.abs(bias))
    assert_equal_up_to_rounding(dx, np.stack([r[0][0] for r in rows]).reshape(dx.shape),
                                np.abs(dout) @ np.abs(weight))
    flat_dout, flat_x = np.abs(dout).reshape(-1, dout.shape[-1]), np.abs(x).reshape(-1,
                                                                                 x.shape[-1])
    assert_equal_up_to_rounding(dweight, sum(r[1] for r in rows), flat_dout.T @ flat_x)
    assert_equal_up_to_rounding(dbias, sum(r[2] for r in rows), flat_dout.sum(axis=0))


def test_rank_3_spec_shapes_and_errors():
    layer = nn.Dense("fc", 4, 2)
    assert layer.output_shape((3, 5, 4)) == (3, 5, 2)
    assert layer.output_shape((3, 5, 6, 4)) == (3, 5, 6, 2)
    with pytest.raises(ValueError, match=r"fc: expected input of shape \(N, 4\), got \(3, 5, "
                                         r"2\) \(or \(N, \.\.\., 4\): Dense acts on the last"):
        layer.output_shape((3, 5, 2))
    with pytest.raises(ValueError, match=r"dense_forward: x: expected shape \(N, D\), got "
                                         r"\(4,\)"):
        dense_forward(np.zeros(4), np.zeros((2, 4)), None)
    _, cache = dense_forward(np.zeros((3, 5, 4)), np.zeros((2, 4)), None)
    with pytest.raises(ValueError, match=r"dense_backward: dout: expected shape \(3, 5, 2\)"):
        dense_backward(np.zeros((15, 2)), cache)    # flattened positions are not accepted
