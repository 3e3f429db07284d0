"""Tests of refimpl/microbatch.py: accumulated micro-batches give the full-batch step.

The reference of every accumulation property is the model's own full-batch ``loss_and_grads``
(checked numerically in its own tests); the property holds over drawn splits (sizes and index
lists) for every model kind. A tying penalty counted once per micro-batch, and micro-batch
means averaged with weights 1/M, are shown to differ from the step.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import assert_close
from refimpl.microbatch import accumulated_loss_and_grads, split_indices
from refimpl.testing import strategies as rs
from refimpl.testing.strategies.siamese import micro_batch_splits, siamese_models

SETTINGS = settings(max_examples=25, deadline=None)


def assert_same_step(result, reference):
    (loss, grads), (expected_loss, expected_grads) = result, reference
    assert_close(loss, expected_loss, name="loss")
    assert list(grads) == list(expected_grads)
    for key in expected_grads:
        assert_close(grads[key], expected_grads[key], name=key)


@st.composite
def model_and_split(draw, models):
    model = draw(models)
    point = draw(rs.points(model, min_batch=1, max_batch=6))
    split = draw(micro_batch_splits(len(point.inputs["x"]), index_lists=None))
    return model, point, split


@SETTINGS
@given(drawn=model_and_split(rs.mlps()))
def test_plain_model_accumulates_to_the_full_batch(drawn):
    model, point, split = drawn
    x, y = point.inputs["x"], point.inputs["y"]
    assert_same_step(accumulated_loss_and_grads(model, point.params, (x, y), split),
                     model.loss_and_grads(point.params, x, y))


@SETTINGS
@given(drawn=model_and_split(rs.shared_mlps()))
def test_shared_model_accumulates_to_the_full_batch(drawn):
    model, point, split = drawn
    x, y = point.inputs["x"], point.inputs["y"]
    assert_same_step(accumulated_loss_and_grads(model, point.params, (x, y), split),
                     model.loss_and_grads(point.params, x, y))


@st.composite
def pair_and_splits(draw, **pair_options):
    pair = draw(rs.tied_pairs(**pair_options))
    point = draw(rs.points(pair, min_batch=1, max_batch=5))
    size_a, size_b = len(point.inputs["xa"]), len(point.inputs["xb"])
    return (pair, point, draw(micro_batch_splits(size_a, index_lists=None)),
            draw(micro_batch_splits(size_b, index_lists=None)))


def pair_batches(inputs):
    return (inputs["xa"], inputs["ya"]), (inputs["xb"], inputs["yb"])


@SETTINGS
@given(drawn=pair_and_splits())
def test_tied_pair_accumulates_to_the_full_batch_with_the_penalty_once(drawn):
    pair, point, split_a, split_b = drawn
    batches = pair_batches(point.inputs)
    assert_same_step(accumulated_loss_and_grads(pair, point.params, batches, split_a,
                                                splits_b=split_b),
                     pair.joined_loss_and_grads(point.params, *batches))


def per_micro_batch_penalty(pair, params, batches, sizes):
    """The bug: every micro-step adds its weighted task gradients AND the whole penalty's
    (a soft pair; one split for both models)."""
    (xa, ya), (xb, yb) = batches
    params_a, params_b = pair.split(params)
    total, grads, start = 0.0, dict.fromkeys(params, 0.0), 0
    for size in sizes:
        part, weight = slice(start, start + size), size / len(xa)
        start += size
        loss_a, grads_a = pair.model_a.loss_and_grads(params_a, xa[part], ya[part])
        loss_b, grads_b = pair.model_b.loss_and_grads(params_b, xb[part], yb[part])
        penalty, penalty_a, penalty_b = pair.penalty(params_a, params_b)
        total += weight * (loss_a + loss_b) + penalty
        task, extra = pair.join(grads_a, grads_b), pair.join(penalty_a, penalty_b)
        grads = {k: grads[k] + weight * task[k] + extra.get(k, 0.0) for k in params}
    return total, grads


def test_a_penalty_counted_per_micro_batch_is_not_the_step():
    rng = np.random.default_rng(0)
    pair = ri.TiedPair(ri.MLP([3, 4, 2]), ri.MLP([3, 4, 2], activation="sigmoid"),
                       {"fc1.weight": "fc1.weight"}, lam=0.5)
    params = pair.join(*pair.init(0))
    params["B:fc1.weight"] = params["B:fc1.weight"] + 0.3   # a penalty that is not 0
    batches = ((rng.standard_normal((6, 3)), rng.integers(0, 2, 6)),
               (rng.standard_normal((6, 3)), rng.integers(0, 2, 6)))
    step = pair.joined_loss_and_grads(params, *batches)
    assert_same_step(accumulated_loss_and_grads(pair, params, batches, [2, 4], splits_b=[2, 4]),
                     step)
    # One micro-batch: counting the penalty per micro-batch is (trivially) right ...
    assert_same_step(per_micro_batch_penalty(pair, params, batches, [6]), step)
    # ... with two it is counted twice: neither the loss nor the tied weight's gradient match.
    wrong_loss, wrong_grads = per_micro_batch_penalty(pair, params, batches, [2, 4])
    penalty = pair.penalty(*pair.split(params))[0]
    assert abs(wrong_loss - step[0] - penalty) <= 1e-12 * abs(step[0])
    assert not np.allclose(wrong_grads["A:fc1.weight"], step[1]["A:fc1.weight"])


@SETTINGS
@given(drawn=model_and_split(rs.mlps(activations=["tanh"])), lam=st.floats(0.01, 2.0))
def test_anchored_model_adds_its_penalty_once(drawn, lam):
    model, point, split = drawn
    anchored = ri.AnchoredModel(model, lam=lam)
    x, y = point.inputs["x"], point.inputs["y"]
    assert_same_step(accumulated_loss_and_grads(anchored, point.params, (x, y), split),
                     anchored.loss_and_grads(point.params, x, y))


@SETTINGS
@given(model=siamese_models(), seed=st.integers(0, 2**16), size=st.integers(1, 6),
       data=st.data())
def test_siamese_model_accumulates_to_the_full_batch(model, seed, size, data):
    rng = np.random.default_rng(seed)
    params = model.init(seed)
    features = model.tower.layers[0].in_features
    arrays = [rng.standard_normal((size, features)) for _ in model.branch_names]
    y = (rng.random(size) < 0.5).astype(np.int64) if model.loss_spec.needs_target else None
    batch = (*arrays, y) if y is not None else tuple(arrays)
    split = data.draw(micro_batch_splits(size, index_lists=None))
    assert_same_step(accumulated_loss_and_grads(model, params, batch, split),
                     model.loss_and_grads(params, *arrays, y=y))


@SETTINGS
@given(drawn=model_and_split(rs.mlps(losses=["mse"])))
def test_any_callable_with_a_dict_batch_accumulates(drawn):
    model, point, split = drawn
    x, y = point.inputs["x"], point.inputs["y"]

    def f(params, batch):
        return model.loss_and_grads(params, batch["inputs"], batch["targets"])

    assert_same_step(accumulated_loss_and_grads(f, point.params, {"inputs": x, "targets": y},
                                                split),
                     model.loss_and_grads(point.params, x, y))


def test_weights_are_shares_of_the_batch_not_one_over_m():
    # Micro-batches of sizes 1 and 3: the mean of the two micro-batch means is another loss.
    rng = np.random.default_rng(5)
    model = ri.MLP([2, 3, 2])
    params = model.init(5)
    x, y = rng.standard_normal((4, 2)), np.array([0, 1, 1, 0])
    step = model.loss_and_grads(params, x, y)
    assert_same_step(accumulated_loss_and_grads(model, params, (x, y), [1, 3]), step)
    means = [model.loss_and_grads(params, x[s], y[s])[0] for s in (slice(0, 1), slice(1, 4))]
    assert abs(np.mean(means) - step[0]) > 1e-3


def test_complex_parameters_pass_through_for_the_complex_step():
    rng = np.random.default_rng(6)
    model = ri.MLP([3, 4, 2])
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    report = ri.check_gradients(
        lambda p: accumulated_loss_and_grads(model, p, (x, y), [[4, 0], [1, 3, 2]]),
        model.init(6), method="complex")
    assert report.ok, report


# --- splits -------------------------------------------------------------------------------------

@given(size=st.integers(1, 12), data=st.data())
def test_drawn_splits_partition_the_batch(size, data):
    split = data.draw(micro_batch_splits(size, index_lists=None))
    pieces = split_indices(split, size)
    assert all(piece.size >= 1 for piece in pieces)
    assert sorted(np.concatenate(pieces).tolist()) == list(range(size))


@pytest.mark.parametrize("splits, error, match", [
    ([2, 2], ValueError, r"sum to 4; they must partition the batch of 5"),
    ([5, 0], ValueError, "must be >= 1"),
    ([6, -1], ValueError, "must be >= 1"),
    ([], ValueError, "at least one micro-batch"),
    ([[0, 1], [1, 2, 3, 4]], ValueError, r"repeated indices \[1\], missing \[\]"),
    ([[0, 1], [2, 3]], ValueError, r"repeated indices \[\], missing \[4\]"),
    ([[0, 1, 2], [3, 5]], ValueError, "index 5 is outside the batch"),
    ([[0, 1, 2, 3, 4], []], TypeError, r"splits\[1\]: expected a non-empty list"),
    ([[0, 1], 3], TypeError, r"splits\[1\]"),
    ([2.5, 2.5], TypeError, r"^splits\[0\]: expected an integer micro-batch size, got float "
                            r"2.5$"),                           # never truncated to [2, 2]
    ([3, 3], ValueError, r"sum to 6; they must partition the batch of 5"),
    ([2, True, 2], TypeError, r"^splits\[1\]: expected an integer micro-batch size, got bool"),
    ([2.0, 3.0], TypeError, r"^splits\[0\]: expected an integer micro-batch size, got float"),
    ("23", TypeError, "expected micro-batch sizes"),
    (5, TypeError, "expected micro-batch sizes"),
])
def test_splits_that_do_not_partition_the_batch_are_clear_errors(splits, error, match):
    with pytest.raises(error, match=match):
        split_indices(splits, 5)


def test_bad_calls_are_clear_errors():
    model = ri.MLP([2, 2])
    params = model.init(0)
    x, y = np.ones((3, 2)), np.array([0, 1, 0])
    with pytest.raises(ValueError, match="every array must have the batch size"):
        accumulated_loss_and_grads(model, params, (x, y[:2]), [3])
    with pytest.raises(TypeError, match="splits_b: only a TiedPair"):
        accumulated_loss_and_grads(model, params, (x, y), [3], splits_b=[3])
    with pytest.raises(TypeError, match=r"batch: expected \(x, y\)"):
        accumulated_loss_and_grads(model, params, x, [3])
    pair = ri.TiedPair(model, model, {"fc1.weight": "fc1.weight"}, lam=0.1)
    with pytest.raises(TypeError, match="splits_b: a TiedPair needs"):
        accumulated_loss_and_grads(pair, pair.join(*pair.init(0)), ((x, y), (x, y)), [3])
    with pytest.raises(ValueError, match=r"splits_b: micro-batch sizes \[2\] sum to 2"):
        accumulated_loss_and_grads(pair, pair.join(*pair.init(0)), ((x, y), (x, y)), [3],
                                   splits_b=[2])
    with pytest.raises(ValueError, match="grads .returned for a micro-batch.: missing"):
        accumulated_loss_and_grads(lambda p, b: (1.0, {}), params, (x,), [3])
    with pytest.raises(TypeError, match="model: expected"):
        accumulated_loss_and_grads(3, params, (x, y), [3])
    siamese = ri.Siamese(nn.Sequential([nn.Dense("fc", 2, 2)]), nn.ContrastiveLoss())
    with pytest.raises(TypeError, match="the 2 branch inputs and y"):
        accumulated_loss_and_grads(siamese, siamese.init(0), (x, x), [3])


@pytest.mark.parametrize("returned, expected", [
    (1.0, r"must return \(loss, grads\), got float 1.0"),
    ((1.0, {}, {}), r"got a tuple of 3 items \(return the first two: \(loss, grads\)\)"),
    ((1.0, [np.zeros(2)]), r"grads: expected a dict of arrays keyed like params, got list"),
    ((None, {}), r"loss: expected a scalar \(a real or complex number\), got NoneType"),
    ((np.ones(2), {}), r"loss: expected a scalar .*got ndarray of shape \(2,\)"),
])
def test_a_callable_returning_something_else_is_named(returned, expected):
    params = {"w": np.zeros(2)}
    with pytest.raises(TypeError, match=r"^model: f\(params, micro-batch\) must return "
                                        r"\(loss, grads\)"):
        accumulated_loss_and_grads(lambda p, b: returned, params, (np.zeros((3, 2)),), [1, 2])
    with pytest.raises(TypeError, match=expected):
        accumulated_loss_and_grads(lambda p, b: returned, params, (np.zeros((3, 2)),), [1, 2])


def test_the_batch_is_not_mutated():
    model = ri.MLP([2, 3, 2])
    x, y = np.random.default_rng(2).standard_normal((4, 2)), np.array([0, 1, 1, 0])
    before = x.copy(), y.copy()
    x.flags.writeable = y.flags.writeable = False
    accumulated_loss_and_grads(model, model.init(0), (x, y), [[3, 1], [0, 2]])
    assert np.array_equal(x, before[0]) and np.array_equal(y, before[1])


@pytest.mark.parametrize("model_b, pairs", [
    # B an autoencoder whose decoder weight (4, 3) is A's first weight (3, 4) transposed.
    (ri.MLP([4, 3, 4], loss="mse"), {"fc1.weight": ri.transposed("fc2.weight")}),
    # square weights: a transpose forgotten would not even change a shape.
    (ri.MLP([4, 3, 3], activation="sigmoid"), {"fc2.weight": ri.transposed("fc2.weight")}),
])
def test_hard_transposed_pairs_accumulate_to_the_full_batch(model_b, pairs):
    rng = np.random.default_rng(8)
    model_a = ri.MLP([4, 3, 3]) if "fc2.weight" in pairs else ri.MLP([4, 3, 2])
    pair = ri.TiedPair(model_a, model_b, pairs, mode="hard")
    params = pair.join(*pair.init(8))
    xb = rng.standard_normal((5, 4))
    yb = xb if model_b.loss_spec.config()["type"] == "MSE" else rng.integers(0, 3, 5)
    batches = ((rng.standard_normal((4, 4)), rng.integers(0, 2, 4)), (xb, yb))
    assert_same_step(accumulated_loss_and_grads(pair, params, batches, [1, 3],
                                                splits_b=[[4, 0], [2, 1, 3]]),
                     pair.joined_loss_and_grads(params, *batches))
