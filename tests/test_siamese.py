"""Tests of refimpl/nn/siamese.py: one tower applied to two or three inputs.

The gradient of a tower parameter is the sum over the branches. The untie-and-sum property
checks that against a model with one independent copy of the tower per branch, whose own
gradient is checked numerically: at equal copies, the copies' gradients summed are the
Siamese gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import assert_close
from refimpl.testing.strategies.siamese import siamese_cases, siamese_models

TOWER = nn.Sequential([nn.Dense("fc1", 4, 5), nn.Tanh(), nn.Dense("fc2", 5, 3), nn.Sigmoid()])


def branch_inputs(model, params, rng, size=4):
    """Branch inputs (and labels) for ``model``: a dict as the Siamese cases name them."""
    features = model.tower.layers[0].in_features
    inputs = {name: rng.standard_normal((size, features)) for name in model.branch_names}
    y = (np.arange(size) % 2).astype(np.int64) if model.loss_spec.needs_target else None
    return inputs, y


def untied_loss_and_grads(model, copies, inputs, y):
    """The untied model: branch b reads its own copy ``copies[b]`` of the tower's parameters.

    Returns ``(loss, grads per copy)``: each copy's gradient through its branch only (the
    tower's vjp), no sum anywhere.
    """
    arrays = [inputs[name] for name in model.branch_names]
    embeddings = tuple(model.tower.forward(p, x) for p, x in zip(copies, arrays, strict=True))
    loss, cache = model.loss_spec.forward(embeddings,
                                          None if y is None else y.astype(np.float64))
    douts = model.loss_spec.backward(1.0, cache)
    grads = [model.tower.vjp(p, x, d)[2] for p, x, d in zip(copies, arrays, douts, strict=True)]
    return loss, grads


def joined(copies):
    return {f"{b}:{key}": value for b, copy in enumerate(copies) for key, value in copy.items()}


def split(flat, count):
    return [{key.split(":", 1)[1]: value for key, value in flat.items()
             if key.startswith(f"{b}:")} for b in range(count)]


@settings(max_examples=25, deadline=None)
@given(model=siamese_models(margin=None), seed=st.integers(0, 2**16))
def test_untie_and_sum(model, seed):
    rng = np.random.default_rng(seed)
    params = model.init(seed)
    inputs, y = branch_inputs(model, params, rng)
    count = model.loss_spec.branches

    def untied(flat):
        loss, grads = untied_loss_and_grads(model, split(flat, count), inputs, y)
        return loss, joined(grads)

    # The untied model's per-copy gradients are right (numerically), at distinct copies ...
    distinct = joined([{k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
                       for _ in range(count)])
    report = ri.check_gradients(untied, distinct, method="complex")
    assert report.ok, report
    # ... and at equal copies, summed over the copies, they are the Siamese gradient.
    loss, grads = model.loss_and_grads(params, *(inputs[n] for n in model.branch_names), y=y)
    untied_loss, copy_grads = untied_loss_and_grads(model, [params] * count, inputs, y)
    assert_close(loss, untied_loss, name="loss")
    for key in params:
        assert_close(grads[key], sum(copy[key] for copy in copy_grads), name=key)
    # Each branch contributes: no single copy's gradient is the Siamese one.
    total = sum(np.abs(grads[key]).sum() for key in params)
    for copy in copy_grads:
        if total > 1e-8 and sum(np.abs(copy[key]).sum() for key in params) > 1e-8:
            assert any(not np.allclose(copy[key], grads[key], rtol=1e-6, atol=1e-12)
                       for key in params)


@settings(max_examples=30, deadline=None)
@given(case=siamese_cases())
def test_drawn_siamese_cases_match_complex_step(case):
    report = ri.check_gradients(case.loss_and_grads, case.params, method="complex")
    assert report.ok, report


@settings(max_examples=30, deadline=None)
@given(case=siamese_cases(gap=0.05))
def test_drawn_siamese_cases_match_central_differences(case):
    report = ri.check_gradients(case.loss_and_grads, case.params, method="central")
    assert report.ok, report


def test_a_branch_left_out_of_the_sum_is_detected():
    # The property the sum enforces: drop the last branch and the gradient check fails.
    model = ri.Siamese(TOWER, nn.TripletMarginLoss(margin=3.0))
    rng = np.random.default_rng(0)
    params = model.init(0)
    a, p, n = (rng.standard_normal((3, 4)) for _ in range(3))

    def two_branches(q):
        loss, copy_grads = untied_loss_and_grads(model, [q] * 3, {"anchor": a, "positive": p,
                                                                  "negative": n}, None)
        return loss, {k: copy_grads[0][k] + copy_grads[1][k] for k in q}

    assert ri.check_gradients(lambda q: model.loss_and_grads(q, a, p, n), params).ok
    assert not ri.check_gradients(two_branches, params).ok


def test_the_last_dense_bias_of_a_tower_has_zero_gradient():
    # Distances are invariant under a translation of every embedding: the bias of a final
    # Dense layer moves all of them alike (why the cases end towers without one).
    tower = nn.Sequential([nn.Dense("fc1", 3, 4), nn.Tanh(), nn.Dense("fc2", 4, 2)])
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((5, 3)) for _ in range(3)]
    for loss, args, y in ((nn.TripletMarginLoss(margin=4.0), x, None),
                          (nn.ContrastiveLoss(margin=4.0), x[:2], np.array([1, 0, 1, 0, 0]))):
        model = ri.Siamese(tower, loss)
        _, grads = model.loss_and_grads(model.init(2), *args, y=y)
        assert np.abs(grads["fc2.bias"]).max() <= 1e-15
        assert np.abs(grads["fc2.weight"]).max() > 1e-3


def test_parameter_count_counts_one_use_per_branch():
    count = TOWER.parameter_count()
    triplet = ri.Siamese(TOWER).parameter_count()
    contrastive = ri.Siamese(TOWER, nn.ContrastiveLoss()).parameter_count()
    assert (triplet.unique, triplet.uses, triplet.bytes) == (count.unique, 3 * count.uses,
                                                             count.bytes)
    assert contrastive.uses == 2 * count.uses


def test_config_round_trips_and_forward_returns_one_embedding_per_branch():
    model = ri.Siamese(TOWER, nn.ContrastiveLoss(margin=0.5, eps=0.0))
    again = ri.Siamese.from_config(model.config())
    assert again.config() == model.config()
    params = model.init(3)
    x1, x2 = np.ones((2, 4)), np.zeros((2, 4))
    out1, out2 = model.forward(params, x1, x2)
    assert_close(out1, TOWER.forward(params, x1))
    assert_close(out2, TOWER.forward(params, x2))


def test_inputs_and_params_are_not_mutated():
    model = ri.Siamese(TOWER)
    params = model.init(4)
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((3, 4)) for _ in range(3)]
    before = ({k: v.copy() for k, v in params.items()}, [a.copy() for a in arrays])
    for value in [*params.values(), *arrays]:
        value.flags.writeable = False
    model.loss_and_grads(params, *arrays)
    assert all(np.array_equal(params[k], before[0][k]) for k in params)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, before[1], strict=True))


@pytest.mark.parametrize("build, error, match", [
    (lambda: ri.Siamese("tower"), TypeError, "tower: expected a refimpl Sequential"),
    (lambda: ri.Siamese(ri.MLP([2, 3])), ValueError, "without a loss"),
    (lambda: ri.Siamese(TOWER, nn.MSE()), TypeError, "loss: expected TripletMarginLoss"),
    (lambda: ri.Siamese.from_config({"tower": TOWER.config()}), ValueError, "missing"),
])
def test_bad_construction_is_a_clear_error(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("call, error, match", [
    (lambda m, p: m.loss_and_grads(p, np.ones((2, 4)), np.ones((2, 4))), TypeError,
     r"takes 3 inputs \(anchor, positive, negative\), got 2"),
    (lambda m, p: m.loss_and_grads(p, np.ones((2, 4)), np.ones((3, 4)), np.ones((2, 4))),
     ValueError, r"positive: expected the batch size of anchor \(2\), got 3"),
    (lambda m, p: m.loss_and_grads(p, np.ones((2, 4)), np.ones((2, 5)), np.ones((2, 4))),
     ValueError, "positive: "),
    (lambda m, p: m.loss_and_grads(p, *[np.ones((2, 4))] * 3, y=np.ones(2)), ValueError,
     "takes no labels"),
    (lambda m, p: m.loss_and_grads(p, *[np.ones((0, 4))] * 3), ValueError, "non-empty batch"),
    (lambda m, p: m.loss_and_grads({}, *[np.ones((2, 4))] * 3), ValueError, "params: missing"),
])
def test_bad_calls_are_clear_errors(call, error, match):
    model = ri.Siamese(TOWER)
    with pytest.raises(error, match=match):
        call(model, model.init(0))


def test_contrastive_needs_labels_and_a_flat_embedding():
    model = ri.Siamese(TOWER, nn.ContrastiveLoss())
    with pytest.raises(ValueError, match="needs pair labels"):
        model.loss_and_grads(model.init(0), np.ones((2, 4)), np.ones((2, 4)))
    conv = ri.Siamese(nn.Sequential([nn.Conv2D("conv", 1, 1, kernel_size=2)]))
    with pytest.raises(ValueError, match=r"embeddings \(N, D\)"):
        conv.loss_and_grads(conv.init(0), *[np.ones((2, 1, 3, 3))] * 3)
