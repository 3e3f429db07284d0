"""Tests of refimpl/nn/metric_losses.py: the pairwise distance, the triplet margin loss and the
contrastive loss.

Legend: ``N`` rows (pairs or triplets), ``D`` embedding features. Every backward pass is checked
by the complex step and by central differences with a random upstream scalar (check_vjp draws
it), against a nested-loop reference written from the documented formulas, and (triplet)
against ``torch.nn.functional.triplet_margin_loss`` in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refimpl.gradcheck import assert_close, check_vjp
from refimpl.nn import ContrastiveLoss, TripletMarginLoss
from refimpl.nn.metric_losses import (
    contrastive_loss_backward,
    contrastive_loss_forward,
    metric_loss_from_config,
    pairwise_distance_backward,
    pairwise_distance_forward,
    triplet_margin_loss_backward,
    triplet_margin_loss_forward,
)

EPS = 1e-6


@st.composite
def triplets(draw, max_rows=4, max_features=4):
    """(anchor, positive, negative), each (N, D), from a NumPy generator Hypothesis seeds."""
    n, d = draw(st.integers(1, max_rows)), draw(st.integers(1, max_features))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return tuple(rng.standard_normal((n, d)) * 2 for _ in range(3))


@st.composite
def pairs(draw, max_rows=5, max_features=4):
    """(x1, x2, y): labels 0/1 drawn per row, int64 or float64."""
    n, d = draw(st.integers(1, max_rows)), draw(st.integers(1, max_features))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y = (rng.random(n) < 0.5).astype(draw(st.sampled_from([np.int64, np.float64])))
    return rng.standard_normal((n, d)), rng.standard_normal((n, d)), y


margins = st.floats(0.05, 4.0)


# --- nested-loop references, written from the module docstring's formulas -----------------------

def loop_distance(u, v, eps):
    return math.sqrt(math.fsum((ui - vi + eps) ** 2 for ui, vi in zip(u, v, strict=True)))


def loop_triplet(anchor, positive, negative, margin, eps):
    """(loss, [da, dp, dn]) row by row, feature by feature."""
    n, d = anchor.shape
    grads = [np.zeros((n, d)) for _ in range(3)]
    rows = []
    for i in range(n):
        d_ap = loop_distance(anchor[i], positive[i], eps)
        d_an = loop_distance(anchor[i], negative[i], eps)
        z = margin + d_ap - d_an
        rows.append(max(z, 0.0))
        if z >= 0:
            for j in range(d):
                u = (anchor[i, j] - positive[i, j] + eps) / d_ap if d_ap > 0 else 0.0
                v = (anchor[i, j] - negative[i, j] + eps) / d_an if d_an > 0 else 0.0
                grads[0][i, j], grads[1][i, j], grads[2][i, j] = (u - v) / n, -u / n, v / n
    return math.fsum(rows) / n, grads


def loop_contrastive(x1, x2, y, margin, eps):
    """(loss, [dx1, dx2]) row by row: y d^2 + (1 - y) max(0, m - d)^2, mean, no 1/2."""
    n, d = x1.shape
    grads = [np.zeros((n, d)) for _ in range(2)]
    rows = []
    for i in range(n):
        dist = loop_distance(x1[i], x2[i], eps)
        slack = max(margin - dist, 0.0)
        rows.append(y[i] * dist ** 2 + (1 - y[i]) * slack ** 2)
        for j in range(d):
            diff = x1[i, j] - x2[i, j] + eps
            g = y[i] * 2 * diff + (1 - y[i]) * (-2 * slack * diff / dist if dist > 0 else 0.0)
            grads[0][i, j], grads[1][i, j] = g / n, -g / n
    return math.fsum(rows) / n, grads


# --- triplet margin loss ----------------------------------------------------------------------

def hinges(anchor, positive, negative, margin):
    d_ap = pairwise_distance_forward(anchor, positive, EPS)[0]
    d_an = pairwise_distance_forward(anchor, negative, EPS)[0]
    return margin + d_ap - d_an


@given(problem=triplets(), margin=margins, seed=st.integers(0, 2**16))
def test_triplet_backward_matches_complex_step(problem, margin, seed):
    anchor, positive, negative = problem
    report = check_vjp(triplet_margin_loss_forward, triplet_margin_loss_backward,
                       {"anchor": anchor, "positive": positive, "negative": negative},
                       static={"margin": margin}, seed=seed, method="complex")
    assert report.ok, report


@given(problem=triplets(), margin=margins, seed=st.integers(0, 2**16))
def test_triplet_backward_matches_central_differences(problem, margin, seed):
    anchor, positive, negative = problem
    # Central differences straddle a hinge closer than their step: keep every row away.
    assume(np.min(np.abs(hinges(anchor, positive, negative, margin))) > 1e-3)
    report = check_vjp(triplet_margin_loss_forward, triplet_margin_loss_backward,
                       {"anchor": anchor, "positive": positive, "negative": negative},
                       static={"margin": margin}, seed=seed, method="central")
    assert report.ok, report


@given(problem=triplets(), margin=margins, dloss=st.floats(-5.0, 5.0))
def test_triplet_matches_the_nested_loop_reference(problem, margin, dloss):
    anchor, positive, negative = problem
    loss, cache = triplet_margin_loss_forward(anchor, positive, negative, margin)
    expected_loss, expected_grads = loop_triplet(anchor, positive, negative, margin, EPS)
    assert_close(loss, expected_loss, name="loss")
    for name, grad, expected in zip(("anchor", "positive", "negative"),
                                    triplet_margin_loss_backward(dloss, cache), expected_grads,
                                    strict=True):
        assert_close(grad, dloss * expected, name=name)


def test_triplet_hand_derived_value_and_gradient():
    # d(a, p) = 5 and d(a, n) = 6 exactly (eps = 0): z = 2 + 5 - 6 = 1, loss = 1 / 1 row.
    anchor, positive, negative = np.zeros((1, 2)), np.array([[3.0, 4.0]]), np.array([[0.0, 6.0]])
    loss, cache = triplet_margin_loss_forward(anchor, positive, negative, margin=2.0, eps=0.0)
    assert loss == 1.0
    da, dp, dn = triplet_margin_loss_backward(1.0, cache)
    # u = (a - p) / 5 = (-0.6, -0.8), v = (a - n) / 6 = (0, -1)
    assert_close(da, np.array([[-0.6, 0.2]]))
    assert_close(dp, np.array([[0.6, 0.8]]))
    assert_close(dn, np.array([[0.0, -1.0]]))


def test_triplet_eps_is_added_to_every_entry_of_the_difference():
    # Identical rows are eps * sqrt(D) apart (PyTorch's pairwise_distance), not 0, not
    # sqrt(eps): with margin m and a == p == n the loss is exactly m (both distances equal).
    x = np.array([[1.0, -2.0, 0.5]])
    distance, _ = pairwise_distance_forward(x, x, eps=1e-3)
    assert_close(distance, np.array([1e-3 * math.sqrt(3)]))
    distance, _ = pairwise_distance_forward(np.array([[1.0]]), np.array([[0.0]]), eps=0.25)
    assert distance[0] == 1.25       # |1 - 0 + 0.25|: eps inside, with its sign


def test_triplet_at_the_hinge_takes_the_active_side_as_pytorch():
    # z = 1 + 5 - 6 = 0 exactly: the loss is 0 and the gradient that of the active side.
    anchor, positive, negative = np.zeros((1, 2)), np.array([[3.0, 4.0]]), np.array([[0.0, 6.0]])
    loss, cache = triplet_margin_loss_forward(anchor, positive, negative, margin=1.0, eps=0.0)
    assert loss == 0.0
    da, dp, dn = triplet_margin_loss_backward(1.0, cache)
    assert_close(da, np.array([[-0.6, 0.2]]))
    assert_close(dn, np.array([[0.0, -1.0]]))


def test_the_gradient_of_a_zero_distance_is_zero():
    # x1 - x2 + eps = 0 in every entry: d = 0, and the norm's subgradient there is taken as 0.
    x1, x2 = np.zeros((2, 3)), np.full((2, 3), 1e-6)
    x2[1] = [1.0, 2.0, 2.0]
    distance, cache = pairwise_distance_forward(x1, x2, eps=1e-6)
    assert distance[0] == 0.0
    dx1, dx2 = pairwise_distance_backward(np.array([2.0, -1.0]), cache)
    assert np.all(dx1[0] == 0) and np.all(dx2[0] == 0)
    assert_close(dx1[1], -np.array([-1 + 1e-6, -2 + 1e-6, -2 + 1e-6]) / distance[1])
    anchor = np.zeros((1, 3))
    loss, cache = triplet_margin_loss_forward(anchor, np.full((1, 3), 1e-6), np.ones((1, 3)),
                                              margin=5.0)
    da, dp, dn = triplet_margin_loss_backward(1.0, cache)
    assert np.all(dp == 0)                            # only through d(a, n)
    assert_close(da, -dn)


@given(problem=triplets(), margin=margins, dloss=st.floats(-5.0, 5.0))
def test_triplet_gradients_sum_to_zero(problem, margin, dloss):
    # A common translation of the three embeddings leaves every distance unchanged.
    loss, cache = triplet_margin_loss_forward(*problem, margin)
    da, dp, dn = triplet_margin_loss_backward(dloss, cache)
    scale = np.abs(da).max() + np.abs(dp).max() + np.abs(dn).max()
    assert np.all(np.abs(da + dp + dn) <= 4 * np.finfo(float).eps * scale)


# --- agreement with PyTorch -------------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=40)
@given(problem=triplets(max_rows=5, max_features=5), margin=margins, eps=st.sampled_from(
    [1e-6, 0.0, 0.1]), dloss=st.floats(-3.0, 3.0))
def test_triplet_agrees_with_torch_in_float64(problem, margin, eps, dloss):
    torch = pytest.importorskip("torch")
    anchor, positive, negative = problem
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in problem]
    expected = torch.nn.functional.triplet_margin_loss(*tensors, margin=margin, p=2, eps=eps,
                                                       swap=False, reduction="mean")
    (expected * dloss).backward()
    loss, cache = triplet_margin_loss_forward(anchor, positive, negative, margin, eps)
    assert abs(loss - expected.item()) <= 1e-12 * (1 + abs(expected.item()))
    for grad, tensor in zip(triplet_margin_loss_backward(dloss, cache), tensors, strict=True):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["hinge", "zero distance"])
def test_triplet_agrees_with_torch_at_its_non_differentiable_points(where):
    torch = pytest.importorskip("torch")
    if where == "hinge":   # z = 0 exactly
        problem, margin, eps = (np.zeros((1, 2)), np.array([[3.0, 4.0]]),
                                np.array([[0.0, 6.0]])), 1.0, 0.0
    else:                  # d(a, p) = 0 exactly
        problem, margin, eps = (np.zeros((1, 3)), np.full((1, 3), 1e-6), np.ones((1, 3))), \
            5.0, 1e-6
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in problem]
    torch.nn.functional.triplet_margin_loss(*tensors, margin=margin, eps=eps).backward()
    _, cache = triplet_margin_loss_forward(*problem, margin, eps)
    for grad, tensor in zip(triplet_margin_loss_backward(1.0, cache), tensors, strict=True):
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-12, atol=1e-15)


# --- contrastive loss -------------------------------------------------------------------------

def contrastive_kinks(x1, x2, y, margin):
    """|margin - d| over the dissimilar rows (inf if none), and d over all rows."""
    distance = pairwise_distance_forward(x1, x2, EPS)[0]
    dissimilar = np.abs(margin - distance)[y == 0]
    return (dissimilar.min() if dissimilar.size else np.inf), distance.min()


@given(problem=pairs(), margin=margins, seed=st.integers(0, 2**16))
def test_contrastive_backward_matches_complex_step(problem, margin, seed):
    x1, x2, y = problem
    report = check_vjp(contrastive_loss_forward, contrastive_loss_backward, {"x1": x1, "x2": x2},
                       static={"y": y, "margin": margin}, seed=seed, method="complex")
    assert report.ok, report


@given(problem=pairs(), margin=margins, seed=st.integers(0, 2**16))
def test_contrastive_backward_matches_central_differences(problem, margin, seed):
    x1, x2, y = problem
    assume(contrastive_kinks(x1, x2, y, margin)[1] > 1e-3)   # away from d = 0
    report = check_vjp(contrastive_loss_forward, contrastive_loss_backward, {"x1": x1, "x2": x2},
                       static={"y": y, "margin": margin}, seed=seed, method="central")
    assert report.ok, report


@given(problem=pairs(), margin=margins, dloss=st.floats(-5.0, 5.0))
def test_contrastive_matches_the_nested_loop_reference(problem, margin, dloss):
    x1, x2, y = problem
    loss, cache = contrastive_loss_forward(x1, x2, y, margin)
    expected_loss, expected_grads = loop_contrastive(x1, x2, y, margin, EPS)
    assert_close(loss, expected_loss, name="loss")
    for name, grad, expected in zip(("x1", "x2"), contrastive_loss_backward(dloss, cache),
                                    expected_grads, strict=True):
        assert_close(grad, dloss * expected, name=name)


def test_contrastive_hand_derived_value_no_half_factor():
    # Similar pair at d = 0.5: 0.25. Dissimilar pair at d = 0.5, m = 2: (1.5)^2 = 2.25. Mean
    # over the 2 pairs, no factor 1/2: 1.25 (Hadsell et al.'s 1/2 convention would give 0.625).
    x1, x2 = np.zeros((2, 1)), np.array([[0.5], [0.5]])
    loss, cache = contrastive_loss_forward(x1, x2, np.array([1, 0]), margin=2.0, eps=0.0)
    assert loss == 1.25
    dx1, dx2 = contrastive_loss_backward(1.0, cache)
    # similar: 2 (x1 - x2) / 2 = -0.5; dissimilar: -2 * 1.5 * (-1) / 2 = 1.5
    assert_close(dx1, np.array([[-0.5], [1.5]]))
    assert_close(dx2, -dx1)


def test_contrastive_is_continuously_differentiable_at_the_margin():
    # A dissimilar pair at d = m exactly: both one-sided derivatives of max(0, m - d)^2 are 0.
    x1, x2 = np.zeros((1, 2)), np.array([[0.6, 0.8]])
    loss, cache = contrastive_loss_forward(x1, x2, np.array([0]), margin=1.0, eps=0.0)
    assert loss == 0.0
    assert np.all(contrastive_loss_backward(1.0, cache)[0] == 0)
    # Both one-sided difference quotients along x2's direction vanish like 2 h / N: at d = 1 + h
    # the term is 0, at d = 1 - h it is h^2.
    direction = x2 / 1.0
    for h in (1e-2, 1e-3, 1e-4):
        for side in (1.0, -1.0):
            moved = contrastive_loss_forward(x1, x2 + side * h * direction, np.array([0]),
                                             margin=1.0, eps=0.0)[0]
            assert abs(moved / h) <= h * (1 + 1e-9)


def test_contrastive_dissimilar_pair_at_zero_distance_has_zero_gradient():
    x1 = np.zeros((2, 2))
    x2 = np.array([[0.0, 0.0], [0.3, 0.0]])
    _, cache = contrastive_loss_forward(x1, x2, np.array([0, 0]), margin=1.0, eps=0.0)
    dx1, _ = contrastive_loss_backward(1.0, cache)
    assert np.all(dx1[0] == 0)
    assert_close(dx1[1], np.array([2 * 0.7 / 2, 0.0]))     # -2 (m - d) (-1) / N


# --- arguments and specs ----------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: triplet_margin_loss_forward(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 2))),
     "negative: expected the shape of anchor"),
    (lambda: triplet_margin_loss_forward(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)),
                                         margin=0.0), "margin: expected a finite real number > 0"),
    (lambda: triplet_margin_loss_forward(np.ones(3), np.ones(3), np.ones(3)),
     r"anchor: expected shape \(N, D\)"),
    (lambda: triplet_margin_loss_forward(np.ones((0, 3)), np.ones((0, 3)), np.ones((0, 3))),
     "anchor: expected at least one element"),
    (lambda: pairwise_distance_forward(np.ones((2, 3)), np.ones((2, 3)), eps=-1.0), "eps"),
    (lambda: contrastive_loss_forward(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 2])),
     "y: expected labels 0 .dissimilar. or 1 .similar., got 2.0 at index 1"),
    (lambda: contrastive_loss_forward(np.ones((2, 3)), np.ones((2, 3)), np.array([0.5, 1.0])),
     "got 0.5 at index 0"),
    (lambda: contrastive_loss_forward(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 1, 1])),
     r"y: expected shape \(2,\)"),
    (lambda: TripletMarginLoss(p=1), "only the Euclidean distance p=2"),
    (lambda: ContrastiveLoss(margin=-1.0), "margin"),
    (lambda: metric_loss_from_config({"type": "Nope"}), "loss: expected"),
    (lambda: metric_loss_from_config({"type": "ContrastiveLoss", "p": 2}), "unknown field"),
])
def test_bad_arguments_are_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_backward_refuses_another_cache_and_a_bad_dloss():
    _, cache = contrastive_loss_forward(np.ones((1, 2)), np.zeros((1, 2)), np.array([1]))
    with pytest.raises(TypeError, match="expected the TripletCache"):
        triplet_margin_loss_backward(1.0, cache)
    with pytest.raises(TypeError, match="dloss: expected a scalar"):
        contrastive_loss_backward(np.ones(2), cache)


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((3, 2)) for _ in range(3)]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    _, cache = triplet_margin_loss_forward(*arrays)
    triplet_margin_loss_backward(0.7, cache)
    y = np.array([1, 0, 1])
    y.flags.writeable = False
    _, cache = contrastive_loss_forward(arrays[0], arrays[1], y)
    contrastive_loss_backward(0.7, cache)
    for a, c in zip(arrays, copies, strict=True):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("spec", [TripletMarginLoss(margin=0.5, eps=0.0),
                                  ContrastiveLoss(margin=2.0)])
def test_spec_config_round_trips(spec):
    assert metric_loss_from_config(spec.config()) == spec


@pytest.mark.slow
def test_defaults_are_pytorchs():
    # TripletMarginLoss() is torch.nn.TripletMarginLoss(): margin 1, p 2, eps 1e-6; the
    # contrastive loss takes the same margin and distance eps.
    assert TripletMarginLoss().config() == {"type": "TripletMarginLoss", "margin": 1.0, "p": 2,
                                            "eps": 1e-6}
    assert ContrastiveLoss().config() == {"type": "ContrastiveLoss", "margin": 1.0, "eps": 1e-6}
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    problem = [rng.standard_normal((4, 3)) * 0.3 for _ in range(3)]
    problem[1] = problem[0] + 1e-7        # d(a, p) ~ eps: where eps decides the value
    expected = torch.nn.TripletMarginLoss()(*(torch.tensor(v) for v in problem)).item()
    spec = TripletMarginLoss()
    assert abs(spec.forward(tuple(problem), None)[0] - expected) <= 1e-14
