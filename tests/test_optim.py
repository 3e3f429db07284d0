"""Tests of refimpl/optim/optimizers.py: SGD, Adam and AdamW against loop-level references
written here from PyTorch's pseudo-code (scalar Python, one element at a time), their state
(one entry per unique parameter, never mutated), their configuration as data, and the inputs
they refuse. ``tests/test_optim_torch.py`` compares them with ``torch.optim`` itself."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl.optim import SGD, Adam, AdamW, clipping, optimizer_from_config, optimizers, training

# The references below repeat the optimizers' arithmetic in another form (scalar Python in
# the pseudo-code's order), so they agree to rounding: a few ulps per operation over a few
# steps. Every broken formula (a sign, a factor, a term dropped, a rule of PyTorch changed)
# moves a parameter by far more than this.
# Comparison: |actual - expected| <= ATOL + RTOL |expected|.
RTOL, ATOL = 1e-12, 1e-14
STEPS = 3


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# --- loop-level references (the pseudo-code of the torch.optim pages, per element) -----------

def sgd_reference(param, gradients, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                  nesterov=False):
    """The parameter after each step, element by element."""
    theta = [float(value) for value in np.ravel(param)]
    buffers = [None] * len(theta)
    after = []
    for gradient in gradients:
        for i, g in enumerate(float(value) for value in np.ravel(gradient)):
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            if momentum != 0:
                if buffers[i] is None:          # t = 1
                    buffers[i] = g
                else:
                    buffers[i] = momentum * buffers[i] + (1 - dampening) * g
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            theta[i] = theta[i] - lr * g
        after.append(np.reshape(theta, np.shape(param)))
    return after


def adam_reference(param, gradients, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                   amsgrad=False, decoupled=False, eps_root=0.0, bias_correction=True):
    """The parameter after each step, element by element: m_hat / (sqrt(v_hat + eps_root)
    + eps) written as the pseudo-code writes it (not in PyTorch's code order)."""
    beta1, beta2 = betas
    theta = [float(value) for value in np.ravel(param)]
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    v_max = [0.0] * len(theta)
    after = []
    for t, gradient in enumerate(gradients, start=1):
        for i, g in enumerate(float(value) for value in np.ravel(gradient)):
            if weight_decay != 0:
                if decoupled:
                    theta[i] = theta[i] - lr * weight_decay * theta[i]
                else:
                    g = g + weight_decay * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1 ** t) if bias_correction else m[i]
            second = v[i]
            if amsgrad:
                v_max[i] = max(v_max[i], v[i])
                second = v_max[i]
            v_hat = second / (1 - beta2 ** t) if bias_correction else second
            theta[i] = theta[i] - lr * m_hat / (math.sqrt(v_hat + eps_root) + eps)
        after.append(np.reshape(theta, np.shape(param)))
    return after


def run(optimizer, param, gradients):
    """The optimizer's parameter after each step (one key)."""
    params, state, after = {"w": param}, None, []
    for gradient in gradients:
        params, state = optimizer.step(params, {"w": gradient}, state)
        after.append(params["w"])
    return after


# --- strategies ------------------------------------------------------------------------------

@st.composite
def trajectories(draw):
    """A parameter and STEPS gradients of its shape."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
    elements = st.floats(-3, 3, allow_subnormal=False)
    param = draw(hnp.arrays(np.float64, shape, elements=elements))
    gradients = [draw(hnp.arrays(np.float64, shape, elements=elements)) for _ in range(STEPS)]
    return param, gradients


@st.composite
def sgd_settings(draw):
    momentum = draw(st.sampled_from([0.0, 0.5]) | st.floats(0.0, 0.99))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.3]) | st.floats(0.0, 1.0))
    return dict(lr=draw(st.floats(1e-3, 1.0)), momentum=momentum, dampening=dampening,
                weight_decay=draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5)),
                nesterov=nesterov)


@st.composite
def adam_settings(draw):
    return dict(lr=draw(st.floats(1e-3, 0.5)),
                betas=(draw(st.floats(0.0, 0.99)), draw(st.floats(0.0, 0.999))),
                eps=draw(st.sampled_from([1e-8, 1e-3, 0.1])),
                weight_decay=draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5)),
                amsgrad=draw(st.booleans()))


# --- the update rules ------------------------------------------------------------------------

@given(trajectories(), sgd_settings())
def test_sgd_matches_the_loop_level_reference(trajectory, settings):
    param, gradients = trajectory
    for actual, expected in zip(run(SGD(**settings), param, gradients),
                                sgd_reference(param, gradients, **settings), strict=True):
        assert_close(actual, expected)


@given(trajectories(), adam_settings(), st.booleans())
def test_adam_and_adamw_match_the_loop_level_reference(trajectory, settings, decoupled):
    param, gradients = trajectory
    optimizer = AdamW(**settings) if decoupled else Adam(**settings)
    for actual, expected in zip(run(optimizer, param, gradients),
                                adam_reference(param, gradients, decoupled=decoupled,
                                               **settings), strict=True):
        assert_close(actual, expected)


@given(trajectories(), adam_settings(), st.booleans(), st.sampled_from([0.0, 1e-8, 1e-2]),
       st.booleans())
def test_the_adam_variants_match_the_loop_level_reference(trajectory, settings, decoupled,
                                                          eps_root, bias_correction):
    param, gradients = trajectory
    optimizer = Adam(**settings, decoupled_weight_decay=decoupled, eps_root=eps_root,
                     bias_correction=bias_correction)
    for actual, expected in zip(run(optimizer, param, gradients),
                                adam_reference(param, gradients, decoupled=decoupled,
                                               eps_root=eps_root,
                                               bias_correction=bias_correction, **settings),
                                strict=True):
        assert_close(actual, expected)


@given(trajectories(), st.floats(1e-3, 2))
def test_a_plain_sgd_step_is_w_minus_lr_times_g(trajectory, lr):
    param, gradients = trajectory
    new, state = SGD(lr).step({"w": param}, {"w": gradients[0]})
    np.testing.assert_array_equal(new["w"], param - lr * gradients[0])
    assert state == {"w": {}}


def test_the_first_momentum_buffer_is_the_gradient_undamped():
    # b_1 = g_1, not (1 - tau) g_1 (a zero-initialised buffer would give the latter)
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 4.0])
    sgd = SGD(lr=0.1, momentum=0.9, dampening=0.5)
    p1, s1 = sgd.step({"w": np.zeros(2)}, {"w": g1})
    np.testing.assert_array_equal(s1["w"]["momentum_buffer"], g1)
    np.testing.assert_array_equal(p1["w"], -0.1 * g1)
    _, s2 = sgd.step(p1, {"w": g2}, s1)
    np.testing.assert_allclose(s2["w"]["momentum_buffer"], 0.9 * g1 + 0.5 * g2, rtol=1e-15)


def test_nesterov_uses_the_new_buffer():
    # g <- g + mu b_t with b_t the buffer *after* this step's update
    g1, g2 = np.array([1.0]), np.array([3.0])
    sgd = SGD(lr=1.0, momentum=0.5, nesterov=True)
    p1, s1 = sgd.step({"w": np.zeros(1)}, {"w": g1})
    np.testing.assert_array_equal(p1["w"], -(g1 + 0.5 * g1))               # b_1 = g_1
    p2, _ = sgd.step(p1, {"w": g2}, s1)
    np.testing.assert_array_equal(p2["w"] - p1["w"], -(g2 + 0.5 * (0.5 * g1 + g2)))


def keras_nesterov(param, gradients, lr, momentum):
    """Keras's (and TensorFlow's) SGD(nesterov=True): the velocity carries the learning rate,
    ``m <- mu m - lr g; theta <- theta + mu m - lr g``, from m = 0."""
    theta, velocity, after = np.array(param, dtype=float), np.zeros(np.shape(param)), []
    for g in gradients:
        velocity = momentum * velocity - lr * g
        theta = theta + momentum * velocity - lr * g
        after.append(theta)
    return after


def optax_nesterov(param, gradients, lr, momentum):
    """optax.sgd(lr, momentum, nesterov=True): ``trace`` (t <- g + mu t from t = 0, update
    g + mu t) scaled by -lr."""
    theta, trace, after = np.array(param, dtype=float), np.zeros(np.shape(param)), []
    for g in gradients:
        trace = g + momentum * trace
        theta = theta - lr * (g + momentum * trace)
        after.append(theta)
    return after


@given(trajectories(), st.floats(1e-3, 1.0), st.floats(0.01, 0.99))
def test_pytorch_keras_and_optax_nesterov_agree_for_a_constant_lr(trajectory, lr, momentum):
    # Keras's velocity is -lr times PyTorch's buffer, so with one lr the iterates coincide:
    # the Nesterov forms differ only under a learning-rate schedule.
    param, gradients = trajectory
    ours = run(SGD(lr, momentum, nesterov=True), param, gradients)
    for form in (keras_nesterov, optax_nesterov):
        for actual, expected in zip(ours, form(param, gradients, lr, momentum), strict=True):
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


def test_adamw_decays_the_parameter_not_the_gradient():
    # A zero gradient: AdamW's moments stay 0, the parameter is only decayed, theta (1 - lr
    # lambda); coupled decay (Adam) feeds lambda theta into the moments and moves it by ~lr.
    params, grads = {"w": np.array([2.0, -1.0])}, {"w": np.zeros(2)}
    decayed, state = AdamW(lr=0.1, weight_decay=0.5).step(params, grads)
    np.testing.assert_array_equal(decayed["w"], params["w"] * (1 - 0.1 * 0.5))
    assert not state["w"]["exp_avg"].any() and not state["w"]["exp_avg_sq"].any()
    coupled, _ = Adam(lr=0.1, weight_decay=0.5).step(params, grads)
    np.testing.assert_allclose(coupled["w"], params["w"] - 0.1 * np.sign(params["w"]),
                               rtol=1e-6)


def test_the_first_adam_step_is_bias_corrected():
    # m_hat = g and v_hat = g^2 at t = 1, so the step is lr g / (|g| + eps), whatever betas;
    # without bias correction it is (1 - beta1) g / (sqrt(1 - beta2) |g| + eps).
    g = np.array([0.5, -2.0, 1e-3])
    for betas in ((0.9, 0.999), (0.5, 0.6)):
        new, _ = Adam(lr=0.1, betas=betas, eps=1e-8).step({"w": np.zeros(3)}, {"w": g})
        np.testing.assert_allclose(new["w"], -0.1 * g / (np.sqrt(g * g) + 1e-8), rtol=1e-14)
        raw, _ = Adam(lr=0.1, betas=betas, bias_correction=False).step({"w": np.zeros(3)},
                                                                       {"w": g})
        np.testing.assert_allclose(raw["w"], -0.1 * (1 - betas[0]) * g
                                   / (math.sqrt(1 - betas[1]) * np.sqrt(g * g) + 1e-8),
                                   rtol=1e-14)


def test_eps_root_sits_inside_the_square_root():
    g = np.array([1e-4])
    new, _ = Adam(lr=1.0, eps=0.0, eps_root=1e-8).step({"w": np.zeros(1)}, {"w": g})
    np.testing.assert_allclose(new["w"], -g / np.sqrt(g * g + 1e-8), rtol=1e-14)


def test_amsgrad_normalises_by_the_largest_second_moment():
    # a large gradient then a small one: v_2 < v_1, and AMSGrad keeps v_1's maximum
    big, small = np.array([10.0]), np.array([0.1])
    optimizer = Adam(lr=0.1, betas=(0.0, 0.5), amsgrad=True)
    p1, s1 = optimizer.step({"w": np.zeros(1)}, {"w": big})
    _, s2 = optimizer.step(p1, {"w": small}, s1)
    np.testing.assert_array_equal(s2["w"]["max_exp_avg_sq"], s1["w"]["exp_avg_sq"])
    assert s2["w"]["exp_avg_sq"] < s2["w"]["max_exp_avg_sq"]


# --- state ------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, entries", [
    (SGD(0.1), set()), (SGD(0.1, momentum=0.9), {"momentum_buffer"}),
    (Adam(), {"step", "exp_avg", "exp_avg_sq"}),
    (AdamW(amsgrad=True), {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
])
def test_the_state_has_one_entry_per_parameter_in_pytorchs_names(optimizer, entries):
    params = {"a": np.ones((2, 3)), "b": np.zeros(4)}
    grads = {"a": np.full((2, 3), 0.5), "b": np.arange(4.0)}
    _, state = optimizer.step(params, grads)
    _, state = optimizer.step(params, grads, state)
    assert list(state) == ["a", "b"]
    for key, entry in state.items():
        assert set(entry) == entries
        for name, value in entry.items():
            if name == "step":
                assert value == 2
            else:
                assert value.shape == params[key].shape and value.dtype == np.float64


@given(trajectories(), st.sampled_from([SGD(0.1, momentum=0.9, weight_decay=0.1),
                                        SGD(0.1, momentum=0.9), Adam(0.1, amsgrad=True),
                                        AdamW(0.1)]))
def test_a_step_never_mutates_or_aliases_its_inputs(trajectory, optimizer):
    param, gradients = trajectory
    params, grads = {"w": param}, {"w": gradients[0]}
    kept = (param.copy(), gradients[0].copy())
    new, state = optimizer.step(params, grads)
    kept_state = {name: np.copy(value) for name, value in state["w"].items()}
    newer, newer_state = optimizer.step(new, {"w": gradients[1]}, state)
    np.testing.assert_array_equal(param, kept[0])
    np.testing.assert_array_equal(gradients[0], kept[1])
    for name, value in kept_state.items():
        np.testing.assert_array_equal(state["w"][name], value)
    for value in (*new.values(), *state["w"].values(), *newer.values()):
        if isinstance(value, np.ndarray):
            assert not np.shares_memory(value, param)
            assert not np.shares_memory(value, gradients[0])
    for name, value in newer_state["w"].items():
        if isinstance(value, np.ndarray):
            assert not np.shares_memory(value, state["w"][name])


def test_two_keys_holding_one_array_are_refused():
    w = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"'a' and 'b' are \(views of\) the same array"):
        SGD(0.1).step({"a": w, "b": w}, {"a": w, "b": w})
    with pytest.raises(ValueError, match=r"'a' and 'row' are \(views of\) the same array"):
        Adam().step({"a": w, "row": w[0]}, {"a": w, "row": w[0]})
    # two slices of one buffer that do not overlap are distinct parameters
    buffer = np.ones(4)
    SGD(0.1).step({"a": buffer[:2], "b": buffer[2:]}, {"a": np.ones(2), "b": np.ones(2)})


@pytest.mark.parametrize("grads, error, match", [
    ({"w": np.ones(2), "shared": np.ones(2)}, ValueError,
     r"unexpected \['shared'\] \(a gradient for a name that is not a unique parameter"),
    ({}, ValueError, r"missing \['w'\]"),
    ({"w": np.ones(3)}, ValueError, r"grads\['w'\]: expected shape \(2,\), got \(3,\)"),
    ({"w": np.array([1.0, np.nan])}, ValueError, r"grads\['w'\]: contains 1 NaN"),
    ({"w": np.ones(2) * 1j}, TypeError, r"grads\['w'\]: expected a real array"),
    ([1.0], TypeError, r"grads: expected a dict"),
])
def test_bad_gradients_are_refused(grads, error, match):
    with pytest.raises(error, match=match):
        Adam().step({"w": np.ones(2)}, grads)


@pytest.mark.parametrize("optimizer, state, error, match", [
    (SGD(0.1, 0.9), {"v": {}}, ValueError, r"state \(keyed exactly like params.*missing "
                                           r"\['w'\]; unexpected \['v'\]"),
    (SGD(0.1, 0.9), {"w": {"momentum_buffer": np.ones(3)}}, ValueError,
     r"state\['w'\]\['momentum_buffer'\]: expected shape \(2,\)"),
    (SGD(0.1, 0.9), {"w": {"exp_avg": np.ones(2)}}, ValueError,
     r"state\['w'\]: .*unexpected \['exp_avg'\]"),
    (SGD(0.1, 0.9), {"w": np.ones(2)}, TypeError, r"state\['w'\]: expected a dict"),
    (SGD(0.1), {"v": {}}, ValueError, r"state \(keyed exactly like params.*missing \['w'\]"),
    (SGD(0.1), {"w": {"momentum_buffer": np.ones(2)}}, ValueError,
     r"state\['w'\]: unexpected \['momentum_buffer'\]"),
    (Adam(), {"w": {"step": 1, "exp_avg": np.ones(2)}}, ValueError,
     r"state\['w'\]: expected \{\} \(a fresh parameter\) or all of"),
    (Adam(), {"w": {"step": 0, "exp_avg": np.ones(2), "exp_avg_sq": np.ones(2)}}, ValueError,
     r"state\['w'\]\['step'\]: expected a positive int"),
    (Adam(), {"w": {"step": 1, "exp_avg": np.ones(2, np.float32), "exp_avg_sq": np.ones(2)}},
     TypeError, r"state\['w'\]\['exp_avg'\]: expected a float64 array"),
    (Adam(), [1], TypeError, r"state: expected None or the state returned"),
])
def test_a_state_that_is_not_the_previous_steps_is_refused(optimizer, state, error, match):
    with pytest.raises(error, match=match):
        optimizer.step({"w": np.ones(2)}, {"w": np.ones(2)}, state)


def test_a_fresh_entry_starts_that_parameter_anew():
    params, grads = {"w": np.ones(2)}, {"w": np.array([1.0, -1.0])}
    adam = Adam(0.1)
    np.testing.assert_array_equal(adam.step(params, grads, {"w": {}})[0]["w"],
                                  adam.step(params, grads)[0]["w"])


def test_bad_params_are_refused():
    with pytest.raises(TypeError, match="params: expected a non-empty dict"):
        SGD(0.1).step({}, {})
    with pytest.raises(TypeError, match=r"params\['w'\]: expected a real array"):
        SGD(0.1).step({"w": np.ones(2) * 1j}, {"w": np.ones(2)})


def test_an_update_that_overflows_names_the_parameter():
    with pytest.raises(FloatingPointError, match=r"SGD step: the new value of 'w' contains "
                                                 r"inf/NaN"):
        SGD(1e300).step({"w": np.ones(2)}, {"w": np.full(2, 1e300)})


# --- hyper-parameters and configuration --------------------------------------------------------

REAL = r"expected a finite real number"


@pytest.mark.parametrize("cls, kwargs, error, match", [
    (SGD, dict(lr=0.0), ValueError, r"lr: expected a number > 0"),
    (SGD, dict(lr=-0.1), ValueError, rf"lr: {REAL} >= 0"),
    (SGD, dict(lr=math.inf), ValueError, rf"lr: {REAL} >= 0"),
    (SGD, dict(lr=math.nan), ValueError, rf"lr: {REAL} >= 0"),
    (SGD, dict(lr=True), TypeError, rf"lr: {REAL} >= 0"),
    (SGD, dict(lr="0.1"), TypeError, rf"lr: {REAL} >= 0"),
    (SGD, dict(momentum=1.0), ValueError, rf"momentum: {REAL} in \[0, 1\)"),
    (SGD, dict(momentum=-0.5), ValueError, r"momentum"),
    (SGD, dict(dampening=1.5), ValueError, rf"dampening: {REAL} in \[0, 1\]"),
    (SGD, dict(weight_decay=-1), ValueError, rf"weight_decay: {REAL} >= 0"),
    (SGD, dict(nesterov=1), TypeError, r"nesterov: expected a bool"),
    (SGD, dict(nesterov=True), ValueError, r"nesterov: Nesterov momentum requires a momentum "
                                           r"> 0 and zero dampening"),
    (SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, r"nesterov:"),
    (Adam, dict(betas=0.9), TypeError, r"betas: expected a pair"),
    (Adam, dict(betas=(0.9, 1.0)), ValueError, rf"betas\[1\]: {REAL} in \[0, 1\)"),
    (Adam, dict(betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
    (Adam, dict(eps=-1e-8), ValueError, rf"eps: {REAL} >= 0"),
    (Adam, dict(amsgrad="no"), TypeError, r"amsgrad: expected a bool"),
    (Adam, dict(eps_root=-1.0), ValueError, r"eps_root"),
    (Adam, dict(bias_correction=None), TypeError, r"bias_correction: expected a bool"),
    (AdamW, dict(weight_decay=math.nan), ValueError, r"weight_decay"),
])
def test_bad_hyper_parameters_are_refused(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_the_defaults_are_pytorchs():
    assert SGD().config() == {"name": "sgd", "lr": 1e-3, "momentum": 0.0, "dampening": 0.0,
                              "weight_decay": 0.0, "nesterov": False}
    assert Adam().config() == {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                               "weight_decay": 0.0, "amsgrad": False,
                               "decoupled_weight_decay": False, "eps_root": 0.0,
                               "bias_correction": True}
    assert AdamW().config() == {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999],
                                "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False,
                                "eps_root": 0.0, "bias_correction": True}


@given(st.one_of(sgd_settings().map(lambda s: SGD(**s)), adam_settings().map(lambda s: Adam(**s)),
                 adam_settings().map(lambda s: AdamW(**s))))
def test_a_config_survives_json_and_rebuilds_the_same_optimizer(optimizer):
    config = json.loads(json.dumps(optimizer.config()))
    rebuilt = optimizer_from_config(config)
    assert rebuilt == optimizer and type(rebuilt) is type(optimizer)
    assert rebuilt.config() == optimizer.config()
    assert repr(rebuilt) == repr(optimizer)


def test_adam_with_decoupled_decay_is_adamw():
    settings = dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.3)
    param, gradients = np.array([1.0, -2.0]), [np.array([0.3, 0.1]), np.array([-1.0, 2.0])]
    for a, b in zip(run(Adam(**settings, decoupled_weight_decay=True), param, gradients),
                    run(AdamW(**settings), param, gradients), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config, error, match", [
    ({"name": "rmsprop"}, ValueError, r"config\['name'\]: expected one of \['adam', 'adamw', "
                                      r"'sgd'\], got 'rmsprop'"),
    ({"lr": 0.1}, ValueError, r"config\['name'\]"),
    ({"name": "sgd", "learning_rate": 0.1}, ValueError, r"config: unexpected "
                                                        r"\['learning_rate'\]"),
    ({"name": "adamw", "decoupled_weight_decay": False}, ValueError, r"unexpected "
                                                                     r"\['decoupled_weight_decay'"),
    ({"name": "adam", "lr": -1}, ValueError, r"config: lr: expected"),
    ({"name": "adam", "betas": [0.9]}, TypeError, r"config: betas: expected a pair"),
    ([("name", "sgd")], TypeError, r"config: expected a dict"),
])
def test_a_bad_config_is_refused_naming_the_key(config, error, match):
    with pytest.raises(error, match=match):
        optimizer_from_config(config)


@pytest.mark.parametrize("module", [optimizers, clipping, training], ids=lambda m: m.__name__)
def test_the_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
