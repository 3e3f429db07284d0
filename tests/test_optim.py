"""Tests of refimpl/optim.py: SGD steps every unique parameter exactly once, never mutates, and
refuses the inputs that would make a shared parameter be stepped twice; the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl as ri
from refimpl import nn
from refimpl.optim import SGD, train
from refimpl.tying import TiedPair


@st.composite
def params_and_grads(draw):
    """Two or three named arrays with gradients of the same shapes."""
    count = draw(st.integers(1, 3))
    params, grads = {}, {}
    for index in range(count):
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
        elements = st.floats(-5, 5, allow_subnormal=False)
        params[f"p{index}"] = draw(hnp.arrays(np.float64, shape, elements=elements))
        grads[f"p{index}"] = draw(hnp.arrays(np.float64, shape, elements=elements))
    return params, grads


@given(params_and_grads(), st.floats(1e-3, 2))
def test_plain_step_is_w_minus_learning_rate_times_g(pg, learning_rate):
    params, grads = pg
    new, state = SGD(learning_rate).step(params, grads)
    assert list(new) == list(params)
    for name in params:
        np.testing.assert_array_equal(new[name], params[name] - learning_rate * grads[name])
    assert state == {}


@given(params_and_grads(), st.integers(0, 2**16), st.floats(1e-3, 1), st.floats(0.01, 0.99))
def test_momentum_follows_the_heavy_ball_recurrence(pg, seed, learning_rate, momentum):
    params, g1 = pg
    rng = np.random.default_rng(seed)
    g2 = {name: rng.standard_normal(g.shape) for name, g in g1.items()}
    optimizer = SGD(learning_rate, momentum)
    w1, state1 = optimizer.step(params, g1)
    w2, state2 = optimizer.step(w1, g2, state1)
    for name in params:
        v1 = g1[name]                              # v starts at 0: v1 = g1
        v2 = momentum * v1 + g2[name]
        np.testing.assert_array_equal(state1[name], v1)
        np.testing.assert_array_equal(state2[name], v2)
        np.testing.assert_array_equal(w1[name], params[name] - learning_rate * v1)
        np.testing.assert_array_equal(w2[name], w1[name] - learning_rate * v2)


@given(params_and_grads(), st.floats(0, 0.9))
def test_step_never_mutates_its_inputs(pg, momentum):
    params, grads = pg
    kept = ({k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in grads.items()})
    optimizer = SGD(0.1, momentum)
    new, state = optimizer.step(params, grads)
    state_kept = {k: v.copy() for k, v in state.items()}
    optimizer.step(new, grads, state)
    for original, copy in zip((params, grads, state), (*kept, state_kept), strict=True):
        for key in copy:
            np.testing.assert_array_equal(original[key], copy[key])
    for key in params:
        assert not np.shares_memory(new[key], params[key])


def test_a_shared_parameter_is_stepped_once_with_the_sum_of_its_uses():
    # The tied autoencoder's encoder weight is used twice (enc, and dec transposed): one key,
    # one step of -lr * (the summed gradient), not two steps.
    model = ri.Sequential([nn.Dense("enc", 4, 2), nn.Tanh(), nn.Dense("dec", 2, 4)],
                          loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    x = np.random.default_rng(0).standard_normal((5, 4))
    params = model.init(0)
    _, grads = model.loss_and_grads(params, x, x)
    new, _ = SGD(0.5).step(params, grads)
    assert list(new) == ["enc.weight", "enc.bias", "dec.bias"]
    np.testing.assert_array_equal(new["enc.weight"] - params["enc.weight"],
                                  (params["enc.weight"] - 0.5 * grads["enc.weight"])
                                  - params["enc.weight"])
    # The step is the summed gradient's, so both uses moved: it differs from stepping with
    # only the encoder's own use.
    untied = ri.Sequential(model.layers, loss=model.loss_spec)
    untied_params = {**params, "dec.weight": params["enc.weight"].T}
    own = untied.loss_and_grads(untied_params, x, x)[1]["enc.weight"]
    assert not np.allclose(grads["enc.weight"], own)


def test_a_hard_pair_steps_each_shared_parameter_once():
    classifier = ri.MLP([3, 4, 2])
    other = ri.MLP([3, 4, 5])
    pair = TiedPair(classifier, other, {"fc1.weight": "fc1.weight"}, mode="hard")
    params_a, params_b = pair.init(0)
    rng = np.random.default_rng(1)
    batch_a = (rng.standard_normal((4, 3)), rng.integers(0, 2, 4))
    batch_b = (rng.standard_normal((4, 3)), rng.integers(0, 5, 4))
    joined = pair.join(params_a, params_b)
    _, grads = pair.joined_loss_and_grads(joined, batch_a, batch_b)
    new, _ = SGD(0.1).step(joined, grads)
    assert "B:fc1.weight" not in new
    np.testing.assert_array_equal(new["A:fc1.weight"],
                                  joined["A:fc1.weight"] - 0.1 * grads["A:fc1.weight"])


def test_two_keys_holding_one_array_are_refused():
    w = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"'a' and 'b' are \(views of\) the same array"):
        SGD(0.1).step({"a": w, "b": w}, {"a": w, "b": w})
    with pytest.raises(ValueError, match=r"'a' and 'row' are \(views of\) the same array"):
        SGD(0.1).step({"a": w, "row": w[0]}, {"a": w, "row": w[0]})
    # two different slices of one buffer that do not overlap are distinct parameters
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
        SGD(0.1).step({"w": np.ones(2)}, grads)


def test_bad_params_and_state_are_refused():
    with pytest.raises(TypeError, match="params: expected a non-empty dict"):
        SGD(0.1).step({}, {})
    with pytest.raises(ValueError, match=r"state: expected None or the velocities"):
        SGD(0.1, 0.9).step({"w": np.ones(2)}, {"w": np.ones(2)}, {"v": np.ones(2)})
    with pytest.raises(ValueError, match=r"state\['w'\]: expected shape"):
        SGD(0.1, 0.9).step({"w": np.ones(2)}, {"w": np.ones(2)}, {"w": np.ones(3)})


LEARNING_RATE_REFUSED = r"learning_rate: expected a finite real number >= 0"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(learning_rate=0.0), ValueError, r"learning_rate: expected a number > 0"),
    (dict(learning_rate=-0.1), ValueError, LEARNING_RATE_REFUSED),
    (dict(learning_rate=math.inf), ValueError, LEARNING_RATE_REFUSED),
    (dict(learning_rate=math.nan), ValueError, LEARNING_RATE_REFUSED),
    (dict(learning_rate=True), TypeError, LEARNING_RATE_REFUSED),
    (dict(learning_rate="0.1"), TypeError, LEARNING_RATE_REFUSED),
    (dict(learning_rate=0.1, momentum=1.0), ValueError, r"momentum: expected a finite real "
                                                        r"number in \[0, 1\)"),
    (dict(learning_rate=0.1, momentum=-0.5), ValueError, r"momentum"),
])
def test_bad_hyper_parameters_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        SGD(**kwargs)


# --- the training loop ---------------------------------------------------------------------------

def regression_problem(seed=0):
    model = ri.MLP([3, 2], activation="identity", loss="mse")
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    # MSE over N*K entries of a linear model: Hessian 2/(N K) [x 1]^T [x 1] per output; a
    # step of 1/L (L its largest eigenvalue) decreases the loss at every step.
    design = np.hstack([x, np.ones((8, 1))])
    curvature = np.linalg.eigvalsh(2 / (8 * 2) * design.T @ design).max()
    return model, model.init(seed), x, y, 1.0 / curvature


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_a_convex_problem_decreases_the_loss_at_every_step(seed):
    model, params, x, y, learning_rate = regression_problem(seed)
    result = train(lambda p, step: model.loss_and_grads(p, x, y), params, SGD(learning_rate),
                   50)
    assert result.losses.shape == (50,)
    assert np.all(np.diff(result.losses) <= 1e-12 * result.losses[0])
    # and it approaches the least-squares optimum
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    best = np.linalg.lstsq(design, y, rcond=None)[0]
    optimum = float(((design @ best - y) ** 2).mean())
    final = model.loss(result.params, x, y)
    assert optimum <= final < optimum + 0.5 * (result.losses[0] - optimum)


def test_training_is_deterministic_and_passes_the_step_index():
    model, params, x, y, learning_rate = regression_problem()
    seen = []

    def objective(p, step):
        seen.append(step)
        return model.loss_and_grads(p, x, y)

    first = train(objective, params, SGD(learning_rate, 0.5), 5)
    second = train(lambda p, step: model.loss_and_grads(p, x, y), params,
                   SGD(learning_rate, 0.5), 5)
    assert seen == [0, 1, 2, 3, 4]
    for name in params:
        np.testing.assert_array_equal(first.params[name], second.params[name])
    np.testing.assert_array_equal(first.losses, second.losses)
    assert set(first.state) == set(params)
    untouched = train(objective, params, SGD(0.1), 0)
    assert untouched.params == params and untouched.losses.shape == (0,)


def test_training_stops_with_a_clear_error_when_the_loss_diverges():
    model, params, x, y, learning_rate = regression_problem()
    # The overflow warnings on the way to inf are the point of this test, not noise.
    with np.errstate(over="ignore", invalid="ignore"), \
            pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+"):
        train(lambda p, step: model.loss_and_grads(p, x, 1e150 * y), params,
              SGD(1e3 * learning_rate), 200)


def test_training_rejects_bad_arguments():
    model, params, x, y, _ = regression_problem()
    with pytest.raises(TypeError, match="objective: expected a callable"):
        train("loss", params, SGD(0.1), 1)
    with pytest.raises(TypeError, match="optimizer: expected an SGD"):
        train(lambda p, s: model.loss_and_grads(p, x, y), params, "sgd", 1)
    with pytest.raises(ValueError, match="steps: expected an int >= 0"):
        train(lambda p, s: model.loss_and_grads(p, x, y), params, SGD(0.1), -1)


def test_training_names_the_step_when_the_model_overflows():
    # a refimpl model raises FloatingPointError naming the layer; train adds the step
    model = ri.MLP([2, 3, 1], loss="mse")
    params = model.init(0)
    params["fc2.weight"] = np.full((1, 3), 1e308)
    params["fc1.bias"] = np.full(3, 10.0)   # tanh ~ 1: fc2 sums three terms of 1e308
    x, y = np.ones((4, 2)), np.zeros((4, 1))
    with pytest.raises(FloatingPointError,
                       match=r"train: the objective became non-finite \(layer 'fc2' \(Dense\): "
                             r"output contains inf/NaN from finite inputs\) at step 0; lower"):
        train(lambda p, step: model.loss_and_grads(p, x, y), params, SGD(0.1), 3)
