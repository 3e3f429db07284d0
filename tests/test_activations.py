"""Tests of refimpl/nn/activations.py: every activation's forward/backward pair.

The backward passes are checked against the complex step (to rounding) and against central
differences, with random upstream gradients. Inputs of ReLU and LeakyReLU are built away from
the kink at 0 (a magnitude >= 0.1 and a separately drawn sign), so no example is discarded;
the kink itself is tested exactly, with the documented conventions relu'(0) = 0 and
leaky_relu'(0) = negative_slope.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close, check_vjp
from refimpl.nn import activations as act
from refimpl.nn.base import layer_config, layer_from_config

COMPLEX = TOLERANCES["complex"]

# Any shape (0-d included) with at most 4**3 = 64 elements, so a full check stays cheap.
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)

# LeakyReLU slopes: 0 or |slope| in [1e-6, 2]. Not subnormal: the complex step's imaginary
# part slope * 1e-20 would underflow to 0 (a limit of the step h, not of the formula).
SLOPES = st.one_of(st.just(0.0), st.floats(1e-6, 2.0), st.floats(-2.0, -1e-6))


class Op(NamedTuple):
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    kinked: bool                          # has a kink at 0: inputs are built away from it
    spec: Callable[[dict[str, Any]], nn.Layer]


OPS = {
    "relu": Op(act.relu_forward, act.relu_backward, True, lambda s: nn.ReLU()),
    "leaky_relu": Op(act.leaky_relu_forward, act.leaky_relu_backward, True,
                     lambda s: nn.LeakyReLU(s["negative_slope"])),
    "tanh": Op(act.tanh_forward, act.tanh_backward, False, lambda s: nn.Tanh()),
    "sigmoid": Op(act.sigmoid_forward, act.sigmoid_backward, False, lambda s: nn.Sigmoid()),
    "softplus": Op(act.softplus_forward, act.softplus_backward, False, lambda s: nn.Softplus()),
    "identity": Op(act.identity_forward, act.identity_backward, False, lambda s: nn.Identity()),
}
NAMES = list(OPS)
SMOOTH = [name for name, op in OPS.items() if not op.kinked]


def arrays(shape, low, high):
    return hnp.arrays(np.float64, shape, elements=st.floats(low, high))


@st.composite
def away_from_zero(draw, shape, low=0.1, high=100.0):
    """Values with magnitude in [low, high] and independently drawn signs: never within
    ``low`` of the kink at 0, by construction."""
    magnitude = draw(arrays(shape, low, high))
    negative = draw(hnp.arrays(np.bool_, shape))
    return np.where(negative, -magnitude, magnitude)


@st.composite
def problems(draw, name, order_one=False):
    """(x, static) for activation ``name``.

    Default range: kinked ops |x| in [0.1, 100]; smooth ops x in [-4, 4], where tanh' and
    sigmoid' (computed from the output, 1 - y^2 and y (1 - y)) are still >= 1e-3 and hence
    accurate to ~1e-13 *relative* (far out they are accurate to eps only absolutely: see
    ``test_backward_far_from_zero``). ``order_one`` keeps |x| <= 4 for central differences.
    """
    shape = draw(SHAPES)
    if OPS[name].kinked:
        x = draw(away_from_zero(shape, 0.1, 4.0 if order_one else 100.0))
    else:
        x = draw(arrays(shape, -4.0, 4.0))
    static = {}
    if name == "leaky_relu":
        static["negative_slope"] = draw(SLOPES)
    return x, static


def assert_equal_up_to_rounding(actual, expected, magnitude):
    """Elementwise ``|actual - expected| <= atol + rtol * magnitude`` with the rounding-level
    (complex-step) tolerances, ``magnitude`` bounding the absolute size of the terms summed to
    get ``expected`` (so a cancellation between them cannot make the test flaky)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    error = np.abs(actual - expected)
    limit = COMPLEX.atol + COMPLEX.rtol * np.asarray(magnitude)
    assert np.all(error <= limit), (error.max(), actual, expected)


def freeze(*arrays_or_caches):
    """Make every ndarray (or ndarray field of a NamedTuple cache) read-only: a write raises."""
    for item in arrays_or_caches:
        for value in (item if isinstance(item, tuple) else (item,)):
            if isinstance(value, np.ndarray):
                value.flags.writeable = False


# --- backward against numerical differentiation --------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_backward_matches_complex_step(name, data):
    x, static = data.draw(problems(name))
    op = OPS[name]
    report = check_vjp(op.forward, op.backward, {"x": x}, static=static,
                       seed=data.draw(st.integers(0, 2**16)), method="complex")
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_backward_matches_complex_step_with_drawn_upstream_gradient(name, data):
    x, static = data.draw(problems(name))
    dout = data.draw(arrays(x.shape, -10.0, 10.0))
    op = OPS[name]
    report = check_vjp(op.forward, op.backward, {"x": x}, static=static, dout=dout,
                       method="complex")
    assert report.ok, report


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_backward_matches_central_differences(name, data):
    x, static = data.draw(problems(name, order_one=True))
    op = OPS[name]
    report = check_vjp(op.forward, op.backward, {"x": x}, static=static,
                       seed=data.draw(st.integers(0, 2**16)), method="central")
    assert report.ok, report


@pytest.mark.parametrize("name", SMOOTH)
@given(x=hnp.arrays(np.float64, SHAPES, elements=st.floats(-40.0, 40.0)),
       seed=st.integers(0, 2**16))
@example(x=np.array([-40.0, -19.0, 19.0, 40.0]), seed=0)  # derivatives ~1e-35 .. 1e-16
def test_backward_far_from_zero(name, x, seed):
    # tanh'(40) ~ 7e-35: 1 - tanh(40)^2 evaluates to 0. The checker's rule (error <= atol +
    # rtol * scale) accepts that: the derivative is right to eps absolutely, and there is no
    # overflow or NaN anywhere.
    op = OPS[name]
    report = check_vjp(op.forward, op.backward, {"x": x}, seed=seed, method="complex")
    assert report.ok, report


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_complex_forward_has_the_real_forward_as_real_part(name, data):
    # Complex-step safety, second half (the first is the complex-step test above): feeding
    # x + i h changes nothing in the real part.
    x, static = data.draw(problems(name))
    op = OPS[name]
    real_out, _ = op.forward(x, **static)
    complex_out, _ = op.forward(x + 1e-20j, **static)
    assert np.asarray(complex_out).dtype == np.complex128
    assert_close(np.real(complex_out), real_out)


# --- structural properties -----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@given(data=st.data(), a=st.floats(-3.0, 3.0), b=st.floats(-3.0, 3.0))
def test_backward_is_linear_in_the_upstream_gradient(name, data, a, b):
    x, static = data.draw(problems(name))
    d1 = data.draw(arrays(x.shape, -10.0, 10.0))
    d2 = data.draw(arrays(x.shape, -10.0, 10.0))
    op = OPS[name]
    _, cache = op.forward(x, **static)
    g1, g2 = op.backward(d1, cache), op.backward(d2, cache)
    combined = op.backward(a * d1 + b * d2, cache)
    assert_equal_up_to_rounding(combined, a * g1 + b * g2, np.abs(a * g1) + np.abs(b * g2))


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_zero_upstream_gradient_gives_zero_gradient(name, data):
    x, static = data.draw(problems(name))
    op = OPS[name]
    _, cache = op.forward(x, **static)
    dx = np.asarray(op.backward(np.zeros(x.shape), cache))
    assert dx.shape == x.shape
    assert not dx.any()


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_inputs_and_caches_are_never_mutated(name, data):
    x, static = data.draw(problems(name))
    dout = data.draw(arrays(x.shape, -10.0, 10.0))
    x_copy, dout_copy = x.copy(), dout.copy()
    freeze(x, dout)
    op = OPS[name]
    _, cache = op.forward(x, **static)
    cache_copy = None if cache is None else tuple(np.copy(v) for v in cache)
    freeze(cache)
    op.backward(dout, cache)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(dout, dout_copy)
    if cache is not None:
        for value, copy in zip(cache, cache_copy, strict=True):
            np.testing.assert_array_equal(value, copy)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_results_are_bit_for_bit_deterministic(name, data):
    x, static = data.draw(problems(name))
    dout = data.draw(arrays(x.shape, -10.0, 10.0))
    op = OPS[name]
    out1, cache1 = op.forward(x, **static)
    out2, cache2 = op.forward(x, **static)
    assert np.array_equal(out1, out2)
    assert np.array_equal(op.backward(dout, cache1), op.backward(dout, cache2))


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_shapes_and_dtypes(name, data):
    x, static = data.draw(problems(name))
    op = OPS[name]
    out, cache = op.forward(x, **static)
    out = np.asarray(out)
    assert out.shape == x.shape and out.dtype == np.float64
    dx = np.asarray(op.backward(np.ones(x.shape), cache))
    assert dx.shape == x.shape and dx.dtype == np.float64
    out_c, cache_c = op.forward(x.astype(np.complex128), **static)
    out_c = np.asarray(out_c)
    assert out_c.shape == x.shape and out_c.dtype == np.complex128
    dx_c = np.asarray(op.backward(np.ones(x.shape, np.complex128), cache_c))
    assert dx_c.shape == x.shape and dx_c.dtype == np.complex128


# --- the kink conventions, exactly ---------------------------------------------------------

ZEROS = np.array([0.0, -0.0, 0.0 + 0.0j, 0.0 + 1e-20j, -0.0 - 1e-20j], dtype=np.complex128)


@given(dout=arrays(5, -10.0, 10.0))
def test_relu_derivative_at_zero_is_zero(dout):
    for x in (ZEROS.real, ZEROS):   # real zeros (+0 and -0), and zero real part
        out, cache = act.relu_forward(x)
        assert not out.any()
        dx = act.relu_backward(dout, cache)
        assert np.array_equal(dx, np.zeros(5))
        dx_spec, grads = nn.ReLU().backward(dout, nn.ReLU().forward(x, {})[1])
        assert np.array_equal(dx_spec, np.zeros(5)) and grads == {}


@given(dout=arrays(5, -10.0, 10.0), slope=st.floats(-2.0, 2.0))
@example(dout=np.arange(5.0) - 2, slope=0.01)   # the default slope
def test_leaky_relu_derivative_at_zero_is_the_slope(dout, slope):
    for x in (ZEROS.real, ZEROS):
        out, cache = act.leaky_relu_forward(x, slope)
        assert not out.real.any()
        assert np.array_equal(act.leaky_relu_backward(dout, cache), slope * dout)
        layer = nn.LeakyReLU(slope)
        dx_spec, grads = layer.backward(dout, layer.forward(x, {})[1])
        assert np.array_equal(dx_spec, slope * dout) and grads == {}


def test_kinked_derivatives_on_either_side_of_zero():
    x = np.array([-1e-300, -5e-324, 5e-324, 1e-300])   # as close to the kink as floats go
    dout = np.array([2.0, 3.0, 5.0, 7.0])
    assert np.array_equal(act.relu_backward(dout, act.relu_forward(x)[1]), [0, 0, 5, 7])
    np.testing.assert_array_equal(
        act.leaky_relu_backward(dout, act.leaky_relu_forward(x, 0.5)[1]), [1, 1.5, 5, 7])


# --- values against independent formulas ---------------------------------------------------

@given(x=st.floats(-700.0, 700.0))
@example(x=0.0)
@example(x=-700.0)
@example(x=700.0)
def test_values_match_the_math_module(x):
    # Scalar reference formulas from the math module, written independently of the code.
    ref_sigmoid = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
    ref_softplus = x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
    array = np.array([x])
    assert_close(act.sigmoid_forward(array)[0], [ref_sigmoid], name="sigmoid")
    assert_close(act.softplus_forward(array)[0], [ref_softplus], name="softplus")
    assert_close(act.tanh_forward(array)[0], [math.tanh(x)], name="tanh")
    assert_close(act.relu_forward(array)[0], [max(x, 0.0)], name="relu")
    assert_close(act.leaky_relu_forward(array, 0.25)[0], [x if x > 0 else 0.25 * x],
                 name="leaky_relu")
    assert np.array_equal(act.identity_forward(array)[0], array)


def test_no_overflow_at_large_inputs():
    x = np.array([-1e308, -800.0, 800.0, 1e308])
    for name in SMOOTH:
        for values in (x, x + 1e-20j):
            out, cache = OPS[name].forward(values)
            dx = OPS[name].backward(np.ones(4), cache)
            assert np.isfinite(out).all() and np.isfinite(dx).all(), name
    np.testing.assert_array_equal(act.sigmoid_forward(x)[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(act.softplus_forward(x)[0], [0, 0, 800, 1e308])
    np.testing.assert_array_equal(act.softplus_backward(np.ones(4), act.softplus_forward(x)[1]),
                                  [0, 0, 1, 1])


# --- layer specs ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_specs_are_thin_adapters_of_the_free_functions(name, data):
    x, static = data.draw(problems(name))
    dout = data.draw(arrays(x.shape, -10.0, 10.0))
    op = OPS[name]
    layer = op.spec(static)
    assert layer.parameter_shapes() == {} and layer.name is None
    assert layer.init_parameters(np.random.default_rng(0)) == {}
    assert layer.output_shape((7, *x.shape)) == (7, *x.shape)
    out, cache = layer.forward(x, {})
    assert np.array_equal(out, op.forward(x, **static)[0])
    dx, grads = layer.backward(dout, cache)
    assert np.array_equal(dx, op.backward(dout, op.forward(x, **static)[1])) and grads == {}


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.LeakyReLU(0.3), nn.LeakyReLU(), nn.Tanh(),
                                   nn.Sigmoid(), nn.Softplus(), nn.Identity()])
def test_spec_config_round_trips_through_json(layer):
    assert layer_from_config(json.loads(json.dumps(layer_config(layer)))) == layer


def test_leaky_relu_slope_is_stored_as_float():
    assert nn.LeakyReLU().negative_slope == 0.01
    layer = nn.LeakyReLU(1)
    assert layer.negative_slope == 1.0 and type(layer.negative_slope) is float


@pytest.mark.parametrize("slope, error", [
    (float("nan"), ValueError), (float("inf"), ValueError), (-float("inf"), ValueError),
    (np.nan, ValueError), ("0.1", TypeError), (True, TypeError), (None, TypeError),
    ([0.1], TypeError)])
def test_leaky_relu_rejects_bad_slopes(slope, error):
    with pytest.raises(error, match="negative_slope: expected a finite real number"):
        nn.LeakyReLU(slope)


def test_leaky_relu_accepts_numpy_scalars():
    assert nn.LeakyReLU(np.float32(0.25)).negative_slope == 0.25
    assert type(nn.LeakyReLU(np.int64(0)).negative_slope) is float
