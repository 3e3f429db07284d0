"""Tests of refimpl/nn/recurrent.py: the RNN (backpropagation through time), LastStep and the
unrolled twin.

Legend: ``N`` batch, ``T`` time steps, ``D`` input features, ``H`` hidden units.
``pre_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh``, ``h_t = act(pre_t)``, ``h_{-1} = 0``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from drawing import arrays
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import check_vjp, nn
from refimpl.gradcheck import TOLERANCES
from refimpl.nn.base import layer_config, layer_from_config
from refimpl.nn.recurrent import (
    last_step_backward,
    last_step_forward,
    rnn_backward,
    rnn_forward,
    unrolled_rnn_backward,
    unrolled_rnn_forward,
)

COMPLEX = TOLERANCES["complex"]
NAMES = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]


@st.composite
def rnn_problems(draw, low=-2.0, high=2.0, steps=None):
    """Inputs of rnn_forward: x (N, T, D), W_ih (H, D), W_hh (H, H), b_ih, b_hh (H,)."""
    n, t, d, h = (draw(st.integers(1, 3)), steps or draw(st.integers(1, 5)),
                  draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    return {"x": draw(arrays((n, t, d), low, high)),
            "weight_ih": draw(arrays((h, d), low, high)),
            "weight_hh": draw(arrays((h, h), low, high)),
            "bias_ih": draw(arrays((h,), low, high)), "bias_hh": draw(arrays((h,), low, high))}


def seeded(n=2, t=4, d=3, h=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, t, d)), "weight_ih": rng.standard_normal((h, d)),
            "weight_hh": rng.standard_normal((h, h)) * 0.7, "bias_ih": rng.standard_normal(h),
            "bias_hh": rng.standard_normal(h)}


def loop_forward(p, nonlinearity):
    """h[n, t, i] by explicit sums, step by step (math.fsum: no BLAS)."""
    x, w_ih, w_hh = p["x"], p["weight_ih"], p["weight_hh"]
    (n_batch, steps, inputs), hidden = x.shape, w_ih.shape[0]
    h = np.zeros((n_batch, steps, hidden))
    for n in range(n_batch):
        for t in range(steps):
            for i in range(hidden):
                terms = [x[n, t, d] * w_ih[i, d] for d in range(inputs)]
                if t > 0:
                    terms += [h[n, t - 1, j] * w_hh[i, j] for j in range(hidden)]
                pre = math.fsum(terms + [p["bias_ih"][i], p["bias_hh"][i]])
                h[n, t, i] = math.tanh(pre) if nonlinearity == "tanh" else max(pre, 0.0)
    return h


def pre_activations(p):
    """The pre-activations, for keeping relu draws away from its kink."""
    _, cache = rnn_forward(**p, nonlinearity="relu")
    return cache.pre


# --- backward against numerical differentiation ----------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@given(problem=rnn_problems(), seed=st.integers(0, 2**16))
@example(problem=seeded(), seed=0)
@example(problem=seeded(n=1, t=1, d=1, h=1), seed=1)
@settings(max_examples=40)
def test_rnn_backward_matches_complex_step(nonlinearity, problem, seed):
    report = check_vjp(rnn_forward, rnn_backward, problem,
                       static={"nonlinearity": nonlinearity}, seed=seed, method="complex")
    assert report.ok, report
    assert [row.name for row in report.rows] == NAMES


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@given(problem=rnn_problems(-1.0, 1.0), data=st.data())
@example(problem=seeded(), data=None)
@settings(max_examples=40)
def test_rnn_backward_matches_central_differences_with_drawn_dout(nonlinearity, problem,
                                                                  data):
    if nonlinearity == "relu":   # a difference step across the kink measures no derivative
        assume(np.abs(pre_activations(problem)).min() > 1e-3)
    shape = (*problem["x"].shape[:2], problem["weight_ih"].shape[0])
    dout = (np.random.default_rng(5).standard_normal(shape) if data is None
            else data.draw(arrays(shape, -2.0, 2.0)))
    report = check_vjp(rnn_forward, rnn_backward, problem,
                       static={"nonlinearity": nonlinearity}, dout=dout, method="central")
    assert report.ok, report


@given(problem=rnn_problems(), seed=st.integers(0, 2**16))
@settings(max_examples=30)
def test_rnn_without_bias_matches_complex_step(problem, seed):
    inputs = {k: problem[k] for k in NAMES[:3]}
    report = check_vjp(rnn_forward, rnn_backward, inputs, seed=seed, method="complex")
    assert report.ok, report
    _, cache = rnn_forward(**inputs)
    assert rnn_backward(np.ones(cache.hidden.shape), cache)[3:] == (None, None)


# --- the forward against explicit sums --------------------------------------------------------

@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_a_complex_step_on_one_argument_alone_reaches_the_output(name, unrolled):
    # The other arguments stay real: a buffer typed from them alone would silently drop the
    # perturbation's imaginary part (a derivative of 0), which a check that makes every
    # argument complex at once never sees.
    p = seeded(seed=3)
    steps = p["x"].shape[1]
    forward, backward = rnn_forward, rnn_backward
    if unrolled:
        forward, backward = unrolled_rnn_forward, unrolled_rnn_backward
        p = {"x": p["x"], "weights_ih": np.stack([p["weight_ih"]] * steps),
             "weights_hh": np.stack([p["weight_hh"]] * steps),
             "biases_ih": np.stack([p["bias_ih"]] * steps),
             "biases_hh": np.stack([p["bias_hh"]] * steps)}
        name = name.replace("weight_", "weights_").replace("bias_", "biases_")
    rng = np.random.default_rng(7)
    dout = rng.standard_normal(forward(**p)[0].shape)
    grads = dict(zip(p, backward(dout, forward(**p)[1]), strict=True))
    direction = rng.standard_normal(p[name].shape)
    h = 1e-20
    out = forward(**{**p, name: p[name] + 1j * h * direction})[0]
    numerical = np.sum(dout * out.imag) / h
    analytic = np.sum(grads[name] * direction)
    assert numerical == pytest.approx(analytic, rel=1e-12, abs=1e-14)
    assert analytic != 0


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@given(problem=rnn_problems())
@example(problem=seeded())
@settings(max_examples=30)
def test_rnn_forward_matches_loops(nonlinearity, problem):
    out, _ = rnn_forward(**problem, nonlinearity=nonlinearity)
    np.testing.assert_allclose(out, loop_forward(problem, nonlinearity), rtol=1e-12,
                               atol=1e-12)


def test_first_step_ignores_weight_hh_and_later_steps_use_it():
    p = seeded()
    out, _ = rnn_forward(**p)
    other = dict(p, weight_hh=p["weight_hh"] + 1.0)
    out_other, _ = rnn_forward(**other)
    np.testing.assert_array_equal(out[:, 0], out_other[:, 0])      # h_{-1} = 0
    assert not np.allclose(out[:, 1:], out_other[:, 1:])


# --- the unrolled twin: sharing across time is accumulation -----------------------------------

UNROLLED = {"weight_ih": "weights_ih", "weight_hh": "weights_hh", "bias_ih": "biases_ih",
            "bias_hh": "biases_hh"}


def tiled(p, steps):
    """The unrolled twin's stacked arguments with every copy equal to the RNN's."""
    return {"x": p["x"], **{UNROLLED[k]: np.stack([p[k]] * steps) for k in NAMES[1:]}}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@given(problem=rnn_problems(), seed=st.integers(0, 2**16))
@example(problem=seeded(t=5), seed=0)
@settings(max_examples=40)
def test_unrolled_twin_with_equal_copies_computes_the_rnn(nonlinearity, problem, seed):
    steps = problem["x"].shape[1]
    out, cache = rnn_forward(**problem, nonlinearity=nonlinearity)
    out_u, cache_u = unrolled_rnn_forward(**tiled(problem, steps), nonlinearity=nonlinearity)
    np.testing.assert_allclose(out_u, out, rtol=1e-12, atol=1e-13)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    grads = rnn_backward(dout, cache)
    per_step = unrolled_rnn_backward(dout, cache_u)
    np.testing.assert_allclose(per_step[0], grads[0], rtol=1e-11, atol=1e-12)   # dx
    for name, grad, steps_grad in zip(NAMES[1:], grads[1:], per_step[1:], strict=True):
        # the RNN's gradient of a shared weight = the sum over steps of its copies'
        np.testing.assert_allclose(steps_grad.sum(axis=0), grad, rtol=1e-11, atol=1e-12,
                                   err_msg=name)
    assert not per_step[2][0].any()      # W_hh's copy at step 0 multiplies h_{-1} = 0


@given(problem=rnn_problems(), seed=st.integers(0, 2**16))
@settings(max_examples=30)
def test_unrolled_backward_matches_complex_step_with_distinct_copies(problem, seed):
    steps = problem["x"].shape[1]
    rng = np.random.default_rng(seed)
    inputs = {k: v + 0.3 * rng.standard_normal(v.shape)
              for k, v in tiled(problem, steps).items()}
    report = check_vjp(unrolled_rnn_forward, unrolled_rnn_backward, inputs, seed=seed,
                       method="complex")
    assert report.ok, report


@pytest.mark.parametrize("nonlinearity, bias", [("tanh", True), ("relu", False)])
def test_unrolled_layer_with_its_sharing_map_is_the_rnn(nonlinearity, bias):
    rnn = nn.RNN("rnn", 3, 4, nonlinearity=nonlinearity, bias=bias)
    unrolled = nn.UnrolledRNN("rnn", 3, 4, steps=5, nonlinearity=nonlinearity, bias=bias)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 4))
    model = nn.Sequential([rnn], loss=nn.MSE())
    params = model.init(0)
    loss, grads = model.loss_and_grads(params, x, y)
    # 1. separate copies, all equal: the same loss, and the per-step gradients sum to the RNN's
    twin = nn.Sequential([unrolled], loss=nn.MSE())
    copies = unrolled.copies(params)
    assert len(copies) == (4 * 5 - 1 if bias else 2 * 5 - 1)
    loss_u, grads_u = twin.loss_and_grads(copies, x, y)
    assert loss_u == pytest.approx(loss, rel=1e-13)
    summed = unrolled.sum_over_steps(grads_u)
    assert list(summed) == list(grads)
    for name in grads:
        np.testing.assert_allclose(summed[name], grads[name], rtol=1e-11, atol=1e-14)
    # 2. the copies tied by Sequential's sharing map: the RNN again, through the share sums
    shared = nn.Sequential([unrolled], loss=nn.MSE(), share=unrolled.sharing_map())
    firsts = {"rnn.weight_hh": "rnn.weight_hh_1"}
    renamed = {firsts.get(k, k + "_0"): v for k, v in params.items()}
    loss_s, grads_s = shared.loss_and_grads(renamed, x, y)
    assert loss_s == pytest.approx(loss, rel=1e-13)
    for name, value in grads.items():
        np.testing.assert_allclose(grads_s[firsts.get(name, name + "_0")], value, rtol=1e-11,
                                   atol=1e-14)
    assert ri.check_gradients(lambda p: twin.loss_and_grads(p, x, y), copies).ok


# --- LastStep -----------------------------------------------------------------------------------

@given(x=st.integers(1, 3).flatmap(lambda n: arrays((n, 3, 2))), seed=st.integers(0, 99))
@settings(max_examples=30)
def test_last_step_matches_complex_step_and_selects(x, seed):
    out, _ = last_step_forward(x)
    np.testing.assert_array_equal(out, x[:, -1])
    report = check_vjp(last_step_forward, last_step_backward, {"x": x}, seed=seed)
    assert report.ok, report
    dx = last_step_backward(np.ones(out.shape), x.shape)
    assert not dx[:, :-1].any() and (dx[:, -1] == 1).all()


def test_last_step_spec():
    layer = nn.LastStep()
    assert layer_config(layer) == {"type": "LastStep"}
    assert layer_from_config({"type": "LastStep"}) == layer
    assert layer.output_shape((2, 5, 3)) == (2, 3)
    for bad in [(2, 3), (2, 0, 3), (2, 3, 4, 5)]:
        with pytest.raises(ValueError, match=r"LastStep: expected input of shape \(N, T, H\)"):
            layer.output_shape(bad)


# --- the RNN spec -------------------------------------------------------------------------------

def test_rnn_spec_config_shapes_and_init():
    layer = nn.RNN("rnn", 3, 5, nonlinearity="relu", bias=True)
    config = json.loads(json.dumps(layer_config(layer)))
    assert config == {"type": "RNN", "name": "rnn", "input_size": 3, "hidden_size": 5,
                      "nonlinearity": "relu", "bias": True}
    assert layer_from_config(config) == layer
    assert layer.parameter_shapes() == {"weight_ih": (5, 3), "weight_hh": (5, 5),
                                        "bias_ih": (5,), "bias_hh": (5,)}
    assert list(nn.RNN("r", 3, 5, bias=False).parameter_shapes()) == ["weight_ih",
                                                                      "weight_hh"]
    assert layer.output_shape((2, 7, 3)) == (2, 7, 5)
    wide = nn.RNN("r", 2, 400).init_parameters(np.random.default_rng(0))
    bound = 1 / math.sqrt(400)     # PyTorch: U(-1/sqrt(H), 1/sqrt(H)), H not D
    for value in wide.values():
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.9 * bound


@pytest.mark.parametrize("kwargs, error, match", [
    ({"nonlinearity": "sigmoid"}, ValueError, r"nonlinearity: expected one of \['tanh', "
                                              r"'relu'\], got 'sigmoid'"),
    ({"bias": 1}, TypeError, "bias: expected a bool"),
    ({"hidden_size": 0}, ValueError, "hidden_size: expected a positive int"),
    ({"input_size": 2.0}, TypeError, "input_size"),
])
def test_rnn_spec_rejects_bad_arguments(kwargs, error, match):
    arguments = {"name": "rnn", "input_size": 2, "hidden_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        nn.RNN(**arguments)


@pytest.mark.parametrize("shape", [(2, 3), (2, 4, 2), (2, 0, 3), (2, 4, 3, 1)])
def test_rnn_output_shape_rejects_bad_inputs(shape):
    with pytest.raises(ValueError, match=r"rnn: expected input of shape \(N, T, 3\)"):
        nn.RNN("rnn", 3, 2).output_shape(shape)


def test_free_functions_reject_bad_arguments():
    p = seeded(h=3)
    with pytest.raises(ValueError, match=r"rnn_forward: weight_hh: expected shape \(3, 3\)"):
        rnn_forward(**dict(p, weight_hh=np.zeros((3, 2))))
    with pytest.raises(ValueError, match="rnn_forward: bias_ih, bias_hh: expected both or "
                                         "neither, got bias_ih only"):
        rnn_forward(**dict(p, bias_hh=None))
    with pytest.raises(ValueError, match="rnn_forward: x: expected at least one time step"):
        rnn_forward(**dict(p, x=np.zeros((2, 0, 3))))
    with pytest.raises(ValueError, match="rnn_forward: nonlinearity"):
        rnn_forward(**p, nonlinearity="Tanh")
    _, cache = rnn_forward(**p)
    with pytest.raises(ValueError, match=r"rnn_backward: dout: expected shape \(2, 4, 3\)"):
        rnn_backward(np.zeros((2, 3, 3)), cache)
    with pytest.raises(TypeError, match="unrolled_rnn_backward: cache: expected the cache of "
                                        "unrolled_rnn_forward"):
        unrolled_rnn_backward(np.zeros((2, 4, 3)), cache)


def test_rnn_never_mutates_its_inputs():
    p = seeded()
    copies = {k: v.copy() for k, v in p.items()}
    for value in p.values():
        value.flags.writeable = False
    out, cache = rnn_forward(**p)
    rnn_backward(np.ones(out.shape), cache)
    for key, value in p.items():
        np.testing.assert_array_equal(value, copies[key])


# --- against PyTorch's nn.RNN (an independent implementation), float64 -----------------------

@pytest.mark.slow
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_agrees_with_torch(nonlinearity):
    torch = pytest.importorskip("torch")
    p = seeded(n=3, t=6, d=2, h=4, seed=7)
    module = torch.nn.RNN(2, 4, nonlinearity=nonlinearity, batch_first=True).double()
    with torch.no_grad():
        for name in NAMES[1:]:
            getattr(module, name + "_l0").copy_(torch.from_numpy(p[name]))
    x = torch.from_numpy(p["x"]).requires_grad_(True)
    out, _ = module(x)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    (out * torch.from_numpy(dout)).sum().backward()
    ours, cache = rnn_forward(**p, nonlinearity=nonlinearity)
    np.testing.assert_allclose(ours, out.detach().numpy(), rtol=1e-12, atol=1e-14)
    grads = rnn_backward(dout, cache)
    theirs = [x.grad] + [getattr(module, name + "_l0").grad for name in NAMES[1:]]
    for name, mine, other in zip(NAMES, grads, theirs, strict=True):
        np.testing.assert_allclose(mine, other.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_a_tagger_with_ragged_label_sequences_names_y_and_the_lengths():
    tagger = nn.Sequential([nn.RNN("rnn", 2, 4), nn.Dense("fc", 4, 3)],
                           loss=nn.SoftmaxCrossEntropy())
    ragged = [[0, 1, 2, 0, 1], [0, 1], [1, 1, 1, 1, 1]]   # the second sequence is cut short
    with pytest.raises(TypeError, match=r"^y: expected a rectangular array of integer labels, "
                                        r"got a ragged nested list \(rows of lengths "
                                        r"\[5, 2, 5\]\)"):
        tagger.loss_and_grads(tagger.init(0), np.zeros((3, 5, 2)), ragged)
