"""Tests of every op's second-order pair beside its forward/backward pair (``refimpl/nn/*``,
``refimpl/tying/penalties.py``): ``*_jvp`` and ``*_backward_jvp``.

For every op, at drawn points, with drawn (random, never all-ones) tangents and upstream
gradients:

* ``*_jvp`` against the complex step of the forward pass, ``Im f(x + i h x_dot) / h``;
* ``*_backward_jvp`` against the complex step of the backward pass,
  ``Im backward(dout + i h dout_dot, cache(x + i h x_dot)) / h``, which needs the backward
  pass to be complex-step safe (it is, for every op: that is checked here too);
* the transpose identity ``<jvp(x_dot), u> = <x_dot, backward(u)>``, at drawn points and at
  the kinks, where the JVP must take the backward pass's one-sided rule.

The comparison rule is :func:`refimpl.gradcheck.assert_close` with the complex method's
tolerance of :data:`refimpl.hessian.HVP_TOLERANCES` (two computations exact to rounding).
Legend: ``N`` batch, ``C`` channels, ``H``/``W``, ``D`` features, ``T`` time, ``H`` hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled

from refimpl.gradcheck import assert_close
from refimpl.hessian import HVP_TOLERANCES
from refimpl.nn import activations as act
from refimpl.nn import conv, dense, embedding, locally_connected, losses, metric_losses, pool
from refimpl.nn import recurrent as rec
from refimpl.testing import strategies as rs
from refimpl.tying import penalties as pen

EXACT = HVP_TOLERANCES["complex"]
STEP = 1e-20
SEEDS = st.integers(0, 2**32 - 1)

#: Examples per op: a few in the default tier (every op's every code path is reached by a
#: handful of draws), many in the slow tier; both scale with the Hypothesis profile (the slow
#: tier's thorough profile makes the slow ones 80).
TIERS = [pytest.param(6, id="default"),
         pytest.param(8, id="slow", marks=pytest.mark.slow)]


def run(check, examples, *args):
    """``check(*args, data)`` as a Hypothesis test of ``examples`` examples (scaled by the
    profile: tests/profiles.py)."""
    settings(max_examples=scaled(examples))(
        given(data=st.data())(lambda data: check(*args, data)))()


class Op(NamedTuple):
    """One operation: ``forward(*inputs) -> (out, cache)`` (static arguments bound),
    ``backward(dout, cache)`` (the inputs' gradients first), ``jvp(*tangents, cache)``,
    ``backward_jvp(dout, dout_dot, cache, tangent_cache)``, and ``draw(data) -> inputs``."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    jvp: Callable[..., Any]
    backward_jvp: Callable[..., Any]
    draw: Callable[[Any], tuple[np.ndarray, ...]]
    scalar: bool = False   # a loss or penalty: dout is a scalar


def _rng(data):
    return np.random.default_rng(data.draw(SEEDS))


def _size(data, high=3):
    return data.draw(st.integers(1, high))


def _draw_any_shape(data):
    rng = _rng(data)
    return (rng.standard_normal(tuple(_size(data) for _ in range(data.draw(st.integers(1, 3))))),)


def _elementwise(name, *extra):
    forward = getattr(act, f"{name}_forward")
    return Op(lambda x: forward(x, *extra), getattr(act, f"{name}_backward"),
              getattr(act, f"{name}_jvp"), getattr(act, f"{name}_backward_jvp"), _draw_any_shape)


def _draw_dense(data):
    rng = _rng(data)
    lead = tuple(_size(data) for _ in range(data.draw(st.integers(1, 2))))
    d, f = _size(data), _size(data)
    return rng.standard_normal((*lead, d)), rng.standard_normal((f, d)), rng.standard_normal(f)


def _conv_geometry(data, max_groups=2):
    return data.draw(rs.conv_geometries(max_kernel=3, max_stride=2, max_padding=1,
                                        max_dilation=2, max_channels=2, max_groups=max_groups))


def _conv_op():
    geometry = {}

    def draw(data):
        g = _conv_geometry(data)
        geometry.update(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)
        rng = _rng(data)
        n = _size(data, 2)
        return (rng.standard_normal((n, g.in_channels, g.height, g.width)),
                rng.standard_normal((g.out_channels, g.in_channels // g.groups, *g.kernel_size)),
                rng.standard_normal(g.out_channels))
    return Op(lambda x, w, b: conv.conv2d_forward(x, w, b, **geometry), conv.conv2d_backward,
              conv.conv2d_jvp, conv.conv2d_backward_jvp, draw)


def _locally_connected_op():
    geometry = {}

    def draw(data):
        g = _conv_geometry(data)
        geometry.update(stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)
        rng = _rng(data)
        out_h, out_w = g.output_size()
        return (rng.standard_normal((_size(data, 2), g.in_channels, g.height, g.width)),
                rng.standard_normal((out_h, out_w, g.out_channels, g.in_channels // g.groups,
                                     *g.kernel_size)),
                rng.standard_normal((g.out_channels, out_h, out_w)))
    return Op(lambda x, w, b: locally_connected.locally_connected2d_forward(x, w, b, **geometry),
              locally_connected.locally_connected2d_backward,
              locally_connected.locally_connected2d_jvp,
              locally_connected.locally_connected2d_backward_jvp, draw)


def _pool_op(kind):
    geometry = {}

    def draw(data):
        k = (_size(data), _size(data))
        stride = (_size(data, 2), _size(data, 2))
        padding = (data.draw(st.integers(0, k[0] // 2)), data.draw(st.integers(0, k[1] // 2)))
        geometry.update(kernel_size=k, stride=stride, padding=padding)
        if kind == "avg":
            geometry["count_include_pad"] = data.draw(st.booleans())
        rng = _rng(data)
        shape = (_size(data, 2), _size(data, 2), k[0] + _size(data, 3) - 1,
                 k[1] + _size(data, 3) - 1)
        return (rng.standard_normal(shape),)
    if kind == "max":
        return Op(lambda x: pool.maxpool2d_forward(x, **geometry), pool.maxpool2d_backward,
                  pool.maxpool2d_jvp, pool.maxpool2d_backward_jvp, draw)
    return Op(lambda x: pool.avgpool2d_forward(x, **geometry), pool.avgpool2d_backward,
              pool.avgpool2d_jvp, pool.avgpool2d_backward_jvp, draw)


def _embedding_op():
    indices = {}

    def draw(data):
        rng = _rng(data)
        v = _size(data, 4)
        indices["value"] = rng.integers(0, v, size=(_size(data), _size(data)))
        return (rng.standard_normal((v, _size(data))),)
    return Op(lambda w: embedding.embedding_forward(indices["value"], w),
              lambda dout, cache: (embedding.embedding_backward(dout, cache),),
              embedding.embedding_jvp, embedding.embedding_backward_jvp, draw)


def _rnn_op(unrolled):
    options = {}

    def draw(data):
        rng = _rng(data)
        n, t, d, h = _size(data, 2), _size(data), _size(data), _size(data)
        options["nonlinearity"] = data.draw(st.sampled_from(rec.NONLINEARITIES))
        lead = (t,) if unrolled else ()
        arrays = [rng.standard_normal((n, t, d)), rng.standard_normal((*lead, h, d)),
                  rng.standard_normal((*lead, h, h))]
        if data.draw(st.booleans()):
            arrays += [rng.standard_normal((*lead, h)), rng.standard_normal((*lead, h))]
        return tuple(arrays)

    forward = rec.unrolled_rnn_forward if unrolled else rec.rnn_forward
    backward = rec.unrolled_rnn_backward if unrolled else rec.rnn_backward
    jvp = rec.unrolled_rnn_jvp if unrolled else rec.rnn_jvp
    backward_jvp = rec.unrolled_rnn_backward_jvp if unrolled else rec.rnn_backward_jvp

    def forward_of(x, w_ih, w_hh, b_ih=None, b_hh=None):
        return forward(x, w_ih, w_hh, b_ih, b_hh, **options)

    def jvp_of(*tangents):
        *tangents, cache = tangents
        tangents += [None] * (5 - len(tangents))
        return jvp(*tangents, cache)
    return Op(forward_of, backward, jvp_of, backward_jvp, draw)


def _cross_entropy_op():
    labels = {}

    def draw(data):
        rng = _rng(data)
        shape = (_size(data), *([_size(data)] if data.draw(st.booleans()) else []),
                 _size(data, 4) + 1)
        labels["value"] = rng.integers(0, shape[-1], size=shape[:-1])
        return (3 * rng.standard_normal(shape),)
    return Op(lambda z: losses.softmax_cross_entropy_forward(z, labels["value"]),
              losses.softmax_cross_entropy_backward, losses.softmax_cross_entropy_jvp,
              losses.softmax_cross_entropy_backward_jvp, draw, scalar=True)


def _mse_op():
    target = {}

    def draw(data):
        rng = _rng(data)
        x = _draw_any_shape(data)[0]
        target["value"] = rng.standard_normal(x.shape)
        return (x,)
    return Op(lambda out: losses.mse_forward(out, target["value"]), losses.mse_backward,
              losses.mse_jvp, losses.mse_backward_jvp, draw, scalar=True)


def _rows(data, count):
    rng = _rng(data)
    shape = (_size(data, 4), _size(data))
    return tuple(rng.standard_normal(shape) for _ in range(count))


def _metric_op(kind):
    options = {}

    def draw(data):
        options["eps"] = data.draw(st.sampled_from([0.0, 1e-6]))
        if kind != "distance":   # a margin that leaves some rows active, some not
            options["margin"] = data.draw(st.floats(0.2, 3.0))
        return _rows(data, 3 if kind == "triplet" else 2)

    if kind == "distance":
        return Op(lambda a, b: metric_losses.pairwise_distance_forward(a, b, **options),
                  metric_losses.pairwise_distance_backward, metric_losses.pairwise_distance_jvp,
                  metric_losses.pairwise_distance_backward_jvp, draw)
    if kind == "triplet":
        return Op(lambda a, p, n: metric_losses.triplet_margin_loss_forward(a, p, n, **options),
                  metric_losses.triplet_margin_loss_backward,
                  metric_losses.triplet_margin_loss_jvp,
                  metric_losses.triplet_margin_loss_backward_jvp, draw, scalar=True)
    similar = {}

    def draw_contrastive(data):
        rows = draw(data)
        similar["y"] = data.draw(st.lists(st.sampled_from([0, 1]), min_size=len(rows[0]),
                                          max_size=len(rows[0])))
        return rows
    return Op(lambda a, b: metric_losses.contrastive_loss_forward(a, b, np.array(similar["y"]),
                                                                  **options),
              metric_losses.contrastive_loss_backward, metric_losses.contrastive_loss_jvp,
              metric_losses.contrastive_loss_backward_jvp, draw_contrastive, scalar=True)


def _penalty_op(name):
    strength = {}

    def draw(data):
        strength["lam"] = data.draw(st.floats(0.0, 3.0))
        return _rows(data, 2)
    return Op(lambda a, b: getattr(pen, f"{name}_penalty_forward")(a, b, strength["lam"]),
              getattr(pen, f"{name}_penalty_backward"), getattr(pen, f"{name}_penalty_jvp"),
              getattr(pen, f"{name}_penalty_backward_jvp"), draw, scalar=True)


def _anchored_op():
    options = {}

    def draw(data):
        options.update(lam=data.draw(st.floats(0.0, 3.0)),
                       penalty=data.draw(st.sampled_from(["l2", "l1"])),
                       reference=_rows(data, 1)[0])
        return (_rng(data).standard_normal(options["reference"].shape),)
    return Op(lambda w: pen.anchored_penalty_forward(w, options["reference"], options["lam"],
                                                     options["penalty"]),
              lambda dvalue, cache: (pen.anchored_penalty_backward(dvalue, cache),),
              pen.anchored_penalty_jvp, pen.anchored_penalty_backward_jvp, draw, scalar=True)


OPS: dict[str, Callable[[], Op]] = {
    "relu": lambda: _elementwise("relu"),
    "leaky_relu": lambda: _elementwise("leaky_relu", 0.07),
    "tanh": lambda: _elementwise("tanh"),
    "sigmoid": lambda: _elementwise("sigmoid"),
    "softplus": lambda: _elementwise("softplus"),
    "identity": lambda: _elementwise("identity"),
    "dense": lambda: Op(dense.dense_forward, dense.dense_backward, dense.dense_jvp,
                        dense.dense_backward_jvp, _draw_dense),
    "conv2d": _conv_op,
    "locally_connected2d": _locally_connected_op,
    "maxpool2d": lambda: _pool_op("max"),
    "avgpool2d": lambda: _pool_op("avg"),
    "flatten": lambda: Op(pool.flatten_forward, pool.flatten_backward, pool.flatten_jvp,
                          pool.flatten_backward_jvp,
                          lambda data: (_rng(data).standard_normal((2, 3, _size(data))),)),
    "embedding": _embedding_op,
    "rnn": lambda: _rnn_op(False),
    "unrolled_rnn": lambda: _rnn_op(True),
    "last_step": lambda: Op(rec.last_step_forward, rec.last_step_backward, rec.last_step_jvp,
                            rec.last_step_backward_jvp,
                            lambda data: (_rng(data).standard_normal((2, _size(data), 3)),)),
    "softmax_cross_entropy": _cross_entropy_op,
    "mse": _mse_op,
    "pairwise_distance": lambda: _metric_op("distance"),
    "triplet_margin_loss": lambda: _metric_op("triplet"),
    "contrastive_loss": lambda: _metric_op("contrastive"),
    "l2_penalty": lambda: _penalty_op("l2"),
    "l1_penalty": lambda: _penalty_op("l1"),
    "anchored_penalty": _anchored_op,
}


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def _random_like(rng, value):
    return rng.standard_normal(np.shape(value)) if np.ndim(value) else float(rng.standard_normal())


def _point(op, data):
    """inputs, their tangents, the forward's (out, cache), dout and dout_dot."""
    inputs = op.draw(data)
    rng = _rng(data)
    tangents = tuple(rng.standard_normal(value.shape) for value in inputs)
    out, cache = op.forward(*inputs)
    dout, dout_dot = _random_like(rng, out), _random_like(rng, out)
    return inputs, tangents, out, cache, dout, dout_dot


def _complex_step_of(function, inputs, tangents):
    """``Im function(x + i h x_dot) / h`` for each array ``function`` returns."""
    moved = [x + 1j * STEP * t for x, t in zip(inputs, tangents, strict=True)]
    return tuple(np.imag(value) / STEP for value in _as_tuple(function(moved)))


@pytest.mark.parametrize("examples", TIERS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_jvp_is_the_complex_step_of_the_forward_pass(name, examples):
    run(_jvp_is_the_complex_step_of_the_forward_pass, examples, name)


def _jvp_is_the_complex_step_of_the_forward_pass(name, data):
    op = OPS[name]()
    inputs, tangents, out, cache, _, _ = _point(op, data)
    out_dot, _ = op.jvp(*tangents, cache)
    (expected,) = _complex_step_of(lambda moved: op.forward(*moved)[0], inputs, tangents)
    assert_close(out_dot, expected, EXACT, f"{name}: out_dot")


@pytest.mark.parametrize("examples", TIERS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_backward_jvp_is_the_complex_step_of_the_backward_pass(name, examples):
    run(_backward_jvp_is_the_complex_step_of_the_backward_pass, examples, name)


def _backward_jvp_is_the_complex_step_of_the_backward_pass(name, data):
    op = OPS[name]()
    inputs, tangents, out, cache, dout, dout_dot = _point(op, data)
    _, tangent_cache = op.jvp(*tangents, cache)
    explicit = _as_tuple(op.backward_jvp(dout, dout_dot, cache, tangent_cache))

    def backward_at(moved):   # the backward pass at the complex point, of a complex dout
        complex_cache = op.forward(*moved)[1]
        return _as_tuple(op.backward(dout + 1j * STEP * dout_dot, complex_cache))[:len(inputs)]
    expected = _complex_step_of(backward_at, inputs, tangents)
    for index, (got, want) in enumerate(zip(explicit, expected, strict=False)):
        assert_close(got, want, EXACT, f"{name}: backward_jvp output {index}")


@pytest.mark.parametrize("examples", TIERS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_jvp_is_the_transpose_of_the_backward_pass(name, examples):
    run(_jvp_is_the_transpose_of_the_backward_pass, examples, name)


def _jvp_is_the_transpose_of_the_backward_pass(name, data):
    op = OPS[name]()
    inputs, tangents, out, cache, dout, _ = _point(op, data)
    out_dot, _ = op.jvp(*tangents, cache)
    grads = _as_tuple(op.backward(dout, cache))
    left = float(np.sum(out_dot * dout))
    terms = [float(np.sum(t * g)) for t, g in zip(tangents, grads, strict=False)]
    assert_close(left, sum(terms), EXACT._replace(
        atol=EXACT.atol * (1 + np.sum(np.abs(out_dot * dout)))), f"{name}: <jvp, u>")


# --- a zero input tangent (the data of a model) ------------------------------------------------

@pytest.mark.parametrize("examples", TIERS)
@pytest.mark.parametrize("name", ["dense", "conv2d", "locally_connected2d", "rnn",
                                  "unrolled_rnn"])
def test_a_zero_input_tangent_may_be_none(name, examples):
    run(_a_zero_input_tangent_may_be_none, examples, name)


def _a_zero_input_tangent_may_be_none(name, data):
    op = OPS[name]()
    inputs, tangents, out, cache, dout, dout_dot = _point(op, data)
    zero = (np.zeros_like(inputs[0]), *tangents[1:])
    out_dot, tangent_cache = op.jvp(None, *tangents[1:], cache)
    out_zero, zero_cache = op.jvp(*zero, cache)
    assert_close(out_dot, out_zero, EXACT, f"{name}: out_dot")
    for got, want in zip(_as_tuple(op.backward_jvp(dout, dout_dot, cache, tangent_cache)),
                         _as_tuple(op.backward_jvp(dout, dout_dot, cache, zero_cache)),
                         strict=True):
        if want is not None:
            assert_close(got, want, EXACT, f"{name}: backward_jvp")


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_backward_jvp_through_the_positions_form(groups):
    """With >= 8 channels per group and a narrow output the convolution's backward pass takes
    its tuned "positions" form (:mod:`refimpl.nn.conv_positions`), which the drawn geometries
    above (<= 2 channels per group) never reach: complex-step safe and right too."""
    rng = np.random.default_rng(groups)
    x, w, b = (rng.standard_normal((2, 16, 5, 5)), rng.standard_normal((4, 16 // groups, 3, 3)),
               rng.standard_normal(4))
    tangents = tuple(rng.standard_normal(value.shape) for value in (x, w, b))
    out, cache = conv.conv2d_forward(x, w, b, padding=1, groups=groups)
    assert conv.positions_first(16 // groups, out.shape[3])
    dout, dout_dot = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    _, tangent_cache = conv.conv2d_jvp(*tangents, cache)
    explicit = conv.conv2d_backward_jvp(dout, dout_dot, cache, tangent_cache)
    _, moved = conv.conv2d_forward(*(a + 1j * STEP * t for a, t in zip((x, w, b), tangents,
                                                                       strict=True)),
                                   padding=1, groups=groups)
    for got, want in zip(explicit, conv.conv2d_backward(dout + 1j * STEP * dout_dot, moved),
                         strict=True):
        assert_close(got, want.imag / STEP, EXACT)


# --- kinks: the backward pass's one-sided rules carry over ------------------------------------

def test_relu_and_leaky_relu_take_the_backward_rule_at_zero():
    x = np.array([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]])
    x_dot = np.array([[0.3, -1.7, 0.9], [2.2, -0.4, 1.1]])
    dout, dout_dot = np.array([[1.5, -2.0, 0.5], [0.7, 1.2, -0.9]]), np.ones_like(x) * 0.25
    out, cache = act.relu_forward(x)
    out_dot, tangent = act.relu_jvp(x_dot, cache)
    np.testing.assert_array_equal(out_dot, np.where(x > 0, x_dot, 0.0))   # relu'(0) = 0
    np.testing.assert_array_equal(act.relu_backward_jvp(dout, dout_dot, cache, tangent),
                                  np.where(x > 0, dout_dot, 0.0))   # relu'' = 0: only dout_dot
    out, cache = act.leaky_relu_forward(x, 0.1)
    out_dot, tangent = act.leaky_relu_jvp(x_dot, cache)
    np.testing.assert_array_equal(out_dot, np.where(x > 0, x_dot, 0.1 * x_dot))
    np.testing.assert_array_equal(act.leaky_relu_backward_jvp(dout, dout_dot, cache, tangent),
                                  np.where(x > 0, dout_dot, 0.1 * dout_dot))


@settings(max_examples=10)
@given(seed=SEEDS)
def test_max_pooling_with_ties_takes_the_first_maximum(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, size=(2, 2, 5, 5)).astype(np.float64)   # many ties
    x_dot, u = rng.standard_normal(x.shape), rng.standard_normal((2, 2, 3, 3))
    out, cache = pool.maxpool2d_forward(x, 3, stride=2, padding=1)
    out_dot, tangent = pool.maxpool2d_jvp(x_dot, cache)
    assert_close(np.sum(out_dot * u), np.sum(x_dot * pool.maxpool2d_backward(u, cache)), EXACT)
    np.testing.assert_array_equal(pool.maxpool2d_backward_jvp(u, 2 * u, cache, tangent),
                                  pool.maxpool2d_backward(2 * u, cache))


def test_l1_penalty_at_a_equals_b_has_zero_hessian_and_zero_slope():
    a = np.array([1.0, -2.0, 0.5])
    b = np.array([1.0, 0.0, 0.5])        # equal at 0 and 2: the kink, sign(0) = 0
    a_dot, b_dot = np.array([0.4, -1.0, 2.0]), np.array([-0.3, 0.2, 0.7])
    _, cache = pen.l1_penalty_forward(a, b, 0.5)
    value_dot, tangent = pen.l1_penalty_jvp(a_dot, b_dot, cache)
    assert value_dot == pytest.approx(0.5 * -1 * (-1.0 - 0.2))   # only the entry away from 0
    grad_a_dot, grad_b_dot = pen.l1_penalty_backward_jvp(1.0, 0.0, cache, tangent)
    np.testing.assert_array_equal(grad_a_dot, 0.0)
    np.testing.assert_array_equal(grad_b_dot, 0.0)


def test_l2_penalty_hessian_is_two_lambda_block():
    rng = np.random.default_rng(3)
    a, b, a_dot, b_dot = rng.standard_normal((4, 2, 3))
    _, cache = pen.l2_penalty_forward(a, b, 0.3)
    _, tangent = pen.l2_penalty_jvp(a_dot, b_dot, cache)
    grad_a_dot, grad_b_dot = pen.l2_penalty_backward_jvp(1.0, 0.0, cache, tangent)
    assert_close(grad_a_dot, 2 * 0.3 * (a_dot - b_dot), EXACT)
    assert_close(grad_b_dot, -2 * 0.3 * (a_dot - b_dot), EXACT)


def test_distance_at_zero_takes_a_zero_gradient_and_hessian():
    x1 = np.array([[1.0, 2.0], [0.5, -1.0]])
    x2 = np.array([[1.0, 2.0], [1.5, 0.0]])   # row 0: d = 0 (eps = 0)
    _, cache = metric_losses.pairwise_distance_forward(x1, x2, 0.0)
    rng = np.random.default_rng(0)
    d_dot, tangent = metric_losses.pairwise_distance_jvp(rng.standard_normal((2, 2)),
                                                         rng.standard_normal((2, 2)), cache)
    assert d_dot[0] == 0.0 and d_dot[1] != 0.0
    dx1_dot, _ = metric_losses.pairwise_distance_backward_jvp(np.ones(2), np.ones(2), cache,
                                                              tangent)
    np.testing.assert_array_equal(dx1_dot[0], 0.0)


def test_confident_softmax_keeps_its_relative_accuracy():
    """A saturated softmax (p_top ~ 1 - 1e-5): the Hessian term of the top class is a sum of
    small terms, right relatively, entry by entry (not only against the largest entry)."""
    rng = np.random.default_rng(1)
    z = 3 * rng.standard_normal((4, 5))
    z[:, 2] += 12
    labels = np.array([2, 2, 1, 2])
    z_dot = rng.standard_normal(z.shape)
    _, cache = losses.softmax_cross_entropy_forward(z, labels)
    _, tangent = losses.softmax_cross_entropy_jvp(z_dot, cache)
    explicit = losses.softmax_cross_entropy_backward_jvp(1.0, 0.0, cache, tangent)
    _, moved = losses.softmax_cross_entropy_forward(z + 1j * STEP * z_dot, labels)
    expected = losses.softmax_cross_entropy_backward(1.0, moved).imag / STEP
    assert np.all(np.abs(explicit - expected) <= 1e-13 * np.abs(expected)), (explicit, expected)


# --- argument checks of the public free functions -------------------------------------------------

def test_bad_tangents_are_errors_naming_the_argument():
    x, w, b = np.ones((2, 3)), np.ones((4, 3)), np.ones(4)
    _, cache = dense.dense_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dense_jvp: x_dot: expected shape \(2, 3\)"):
        dense.dense_jvp(np.ones((3, 2)), None, None, cache)
    with pytest.raises(ValueError, match="dense_jvp: weight_dot"):
        dense.dense_jvp(None, np.ones((3, 4)), None, cache)
    _, tangent = dense.dense_jvp(None, w, None, cache)
    with pytest.raises(TypeError, match="dense_backward_jvp: tangent_cache"):
        dense.dense_backward_jvp(np.ones((2, 4)), np.ones((2, 4)), cache, cache)
    with pytest.raises(ValueError, match="dense_backward_jvp: dout_dot"):
        dense.dense_backward_jvp(np.ones((2, 4)), np.ones((2, 3)), cache, tangent)
    _, cache = act.tanh_forward(x)
    with pytest.raises(ValueError, match="tanh_jvp: x_dot"):
        act.tanh_jvp(np.ones(3), cache)
    with pytest.raises(TypeError, match="tanh_jvp: cache"):
        act.tanh_jvp(x, object())
    _, cache = rec.rnn_forward(np.ones((1, 2, 3)), np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="unrolled_rnn_jvp: cache: expected the cache of "
                                        "unrolled_rnn_forward"):
        rec.unrolled_rnn_jvp(None, None, None, None, None, cache)
    _, cache = losses.mse_forward(np.ones(3), np.zeros(3))
    _, tangent = losses.mse_jvp(np.ones(3), cache)
    with pytest.raises(TypeError, match="mse_backward_jvp: dloss_dot"):
        losses.mse_backward_jvp(1.0, np.ones(3), cache, tangent)
