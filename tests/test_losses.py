"""Tests of refimpl/nn/losses.py: softmax cross-entropy and mean squared error.

Legend: ``N`` batch, ``K`` classes. Both losses are reduced by the mean (PyTorch's defaults):
cross-entropy over the batch, MSE over *all* elements. ``*_backward(dloss, cache)`` is checked
with a random upstream scalar ``dloss`` (check_vjp draws it), and for linearity in it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from drawing import arrays
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close, check_vjp
from refimpl.nn.losses import (
    LOSS_TYPES,
    mse_backward,
    mse_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)

COMPLEX = TOLERANCES["complex"]
CE_FORWARD, CE_BACKWARD = softmax_cross_entropy_forward, softmax_cross_entropy_backward


@st.composite
def ce_problems(draw, low=-50.0, high=50.0, min_classes=2):
    """(logits (N, K), labels (N,) int64) with N in 1..5 and K in min_classes..5."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(min_classes, 5))
    logits = draw(arrays((n, k), low, high))
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), np.int64)
    return logits, labels


# Any rank from 1 to 3: MSE is the mean over all elements whatever the shape.
MSE_SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def mse_problems(draw, low=-10.0, high=10.0):
    shape = draw(MSE_SHAPES)
    return draw(arrays(shape, low, high)), draw(arrays(shape, low, high))


def pinned(logits, labels):
    return np.array(logits, np.float64), np.array(labels, np.int64)


# Edge cases: batch of 1 with two classes; the largest logits the docstring promises.
TWO_CLASSES = pinned([[0.3, -1.2]], [1])
HUGE = pinned([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]], [0, 0, 1])
# A confident right prediction: 1 - p_y ~ 1.7e-5 must not be computed by cancellation.
CONFIDENT = pinned([[11.0, 0.0], [0.0, 15.0]], [0, 1])
ONE_CLASS_MSE = (np.array([[1.5], [-0.5]]), np.array([[0.5], [0.25]]))   # (N, 1)
ONE_ELEMENT_MSE = (np.array([2.0]), np.array([-1.0]))


def assert_equal_up_to_rounding(actual, expected, magnitude):
    """Elementwise ``|actual - expected| <= atol + rtol * magnitude`` (rounding-level
    tolerances; ``magnitude`` bounds the absolute size of the terms being combined)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    error = np.abs(actual - expected)
    assert np.all(error <= COMPLEX.atol + COMPLEX.rtol * np.asarray(magnitude)), (
        error.max(), actual, expected)


def freeze(*items):
    for item in items:
        for value in (item if isinstance(item, tuple) else (item,)):
            if isinstance(value, np.ndarray):
                value.flags.writeable = False


# === softmax cross-entropy =================================================================

@given(problem=ce_problems(), seed=st.integers(0, 2**16))
@example(problem=TWO_CLASSES, seed=0)
@example(problem=HUGE, seed=1)
@example(problem=CONFIDENT, seed=0)
def test_cross_entropy_backward_matches_complex_step(problem, seed):
    logits, labels = problem
    report = check_vjp(CE_FORWARD, CE_BACKWARD, {"logits": logits}, static={"labels": labels},
                       seed=seed, method="complex")
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@given(problem=ce_problems(), dloss=st.floats(-10.0, 10.0))
@example(problem=TWO_CLASSES, dloss=-3.5)
def test_cross_entropy_backward_matches_complex_step_with_drawn_dloss(problem, dloss):
    logits, labels = problem
    report = check_vjp(CE_FORWARD, CE_BACKWARD, {"logits": logits}, static={"labels": labels},
                       dout=np.array(dloss), method="complex")
    assert report.ok, report


@given(problem=ce_problems(-4.0, 4.0), seed=st.integers(0, 2**16))
@example(problem=TWO_CLASSES, seed=0)
def test_cross_entropy_backward_matches_central_differences(problem, seed):
    logits, labels = problem
    report = check_vjp(CE_FORWARD, CE_BACKWARD, {"logits": logits}, static={"labels": labels},
                       seed=seed, method="central")
    assert report.ok, report


@given(problem=ce_problems(-1e4, 1e4), seed=st.integers(0, 2**16))
@example(problem=HUGE, seed=0)
def test_cross_entropy_is_finite_and_exact_for_huge_logits(problem, seed):
    logits, labels = problem
    loss, cache = CE_FORWARD(logits, labels)
    grad = CE_BACKWARD(1.0, cache)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    report = check_vjp(CE_FORWARD, CE_BACKWARD, {"logits": logits}, static={"labels": labels},
                       seed=seed, method="complex")
    assert report.ok, report


@pytest.mark.parametrize("logits, labels, loss, grad", [
    # -log softmax([1e4, -1e4])[0] = log(1 + e^-2e4), which is 0 in float64.
    ([[1e4, -1e4]], [0], 0.0, [[0.0, 0.0]]),
    # -log softmax([1e4, -1e4])[1] = 2e4 + log(1 + e^-2e4) = 2e4; gradient softmax - onehot.
    ([[1e4, -1e4]], [1], 2e4, [[1.0, -1.0]]),
    # mean over the batch: (0 + 2e4) / 2, each row's gradient divided by N = 2.
    ([[1e4, -1e4], [-1e4, 1e4]], [0, 0], 1e4, [[0.0, 0.0], [-0.5, 0.5]]),
    # equal logits: uniform probabilities, loss log K.
    ([[1e4, 1e4, 1e4]], [2], math.log(3), [[1 / 3, 1 / 3, -2 / 3]]),
    ([[-1e4, -1e4]], [0], math.log(2), [[-0.5, 0.5]]),
    ([[0.0, math.log(3.0)]], [0], math.log(4.0), [[-0.75, 0.75]]),  # p = (1/4, 3/4)
])
def test_cross_entropy_hand_derived_values(logits, labels, loss, grad):
    value, cache = CE_FORWARD(np.array(logits), np.array(labels))
    assert_close(value, loss, name="loss")
    assert_close(CE_BACKWARD(1.0, cache), np.array(grad), name="dlogits")


@given(margin=st.floats(0.0, 700.0), dloss=st.floats(0.5, 10.0), negative=st.booleans())
@example(margin=11.0, dloss=1.0, negative=False)
@example(margin=40.0, dloss=1.0, negative=True)   # 1 - p_y < eps: p_y - 1 would round to 0
def test_cross_entropy_of_a_confident_right_prediction_is_relatively_accurate(
        margin, dloss, negative):
    # logits (margin, 0), label 0: loss = log1p(e^-margin), dL/dlogits = dloss (-q, q) with
    # q = e^-margin / (1 + e^-margin). Both tiny, and accurate *relative* to themselves (no
    # atol here: it would swallow values ~e^-margin).
    dloss = -dloss if negative else dloss
    q = math.exp(-margin) / (1 + math.exp(-margin))
    loss, cache = CE_FORWARD(np.array([[margin, 0.0]]), np.array([0]))
    expected_loss = math.log1p(math.exp(-margin))
    assert abs(loss - expected_loss) <= COMPLEX.rtol * expected_loss, (loss, expected_loss)
    grad = CE_BACKWARD(dloss, cache)
    expected = np.array([[-q, q]]) * dloss
    assert np.all(np.abs(grad - expected) <= COMPLEX.rtol * np.abs(expected)), (grad, expected)


@given(problem=ce_problems())
@example(problem=TWO_CLASSES)
def test_cross_entropy_matches_an_independent_formula(problem):
    # Row loss -log(e^{z_y} / sum_k e^{z_k}) = log1p(sum_{k != y} e^{z_k - z_y}), with exactly
    # rounded sums (math.fsum); the batch mean with fsum too.
    logits, labels = problem
    rows = [math.log1p(math.fsum(math.exp(z - row[y]) for k, z in enumerate(row) if k != y))
            for row, y in zip(logits.tolist(), labels.tolist(), strict=True)]
    expected = math.fsum(rows) / len(rows)
    # log-sum-exp is accurate to rounding *of the logits' size* (it subtracts them).
    magnitude = 1 + 2 * np.abs(logits).max() + math.log(logits.shape[1])
    assert_equal_up_to_rounding(CE_FORWARD(logits, labels)[0], expected, magnitude)


@given(problem=ce_problems(), dloss=st.floats(-10.0, 10.0))
def test_cross_entropy_gradient_rows_sum_to_zero_with_the_right_signs(problem, dloss):
    # softmax - onehot: each row sums to 0, the label entry is <= 0 and the others >= 0
    # (times dloss / N); independent of how the values are computed.
    logits, labels = problem
    n = len(labels)
    grad = CE_BACKWARD(dloss, CE_FORWARD(logits, labels)[1])
    assert_equal_up_to_rounding(grad.sum(axis=1), np.zeros(n), np.abs(grad).sum(axis=1))
    scaled = grad * np.sign(dloss)
    onehot = np.zeros_like(grad, dtype=bool)
    onehot[np.arange(n), labels] = True
    assert np.all(scaled[onehot] <= 0) and np.all(scaled[~onehot] >= 0)
    # sum_k |p_k - onehot_k| = 2 (1 - p_y) <= 2
    assert np.all(np.abs(grad).sum(axis=1)
                  <= 2 * abs(dloss) / n * (1 + COMPLEX.rtol) + COMPLEX.atol)


@given(problem=ce_problems(), data=st.data())
def test_cross_entropy_is_exactly_invariant_to_a_constant_per_row(problem, data):
    # Logits on a 1/8 grid and integer shifts: z + c and (z + c) - max(z + c) = z - max z are
    # exact in float64, so the result must be bit-for-bit the same (and finite: the shift of
    # up to 1e4 overflows exp unless the row maximum is subtracted first).
    logits, labels = problem
    logits = np.round(logits * 8) / 8
    c = data.draw(hnp.arrays(np.int64, (len(labels), 1), elements=st.integers(-10_000, 10_000)))
    loss, cache = CE_FORWARD(logits, labels)
    shifted_loss, shifted_cache = CE_FORWARD(logits + c, labels)
    assert shifted_loss == loss
    assert np.array_equal(CE_BACKWARD(1.0, shifted_cache), CE_BACKWARD(1.0, cache))


@given(n=st.integers(1, 5), logits=st.floats(-1e4, 1e4))
def test_cross_entropy_with_one_class_is_zero(n, logits):
    loss, cache = CE_FORWARD(np.full((n, 1), logits), np.zeros(n, np.int64))
    assert loss == 0
    assert not CE_BACKWARD(1.0, cache).any()


@given(problem=ce_problems(), a=st.floats(-3.0, 3.0), b=st.floats(-3.0, 3.0),
       d1=st.floats(-10.0, 10.0), d2=st.floats(-10.0, 10.0))
def test_cross_entropy_backward_is_linear_in_dloss(problem, a, b, d1, d2):
    logits, labels = problem
    _, cache = CE_FORWARD(logits, labels)
    g1, g2 = CE_BACKWARD(d1, cache), CE_BACKWARD(d2, cache)
    assert_equal_up_to_rounding(CE_BACKWARD(a * d1 + b * d2, cache), a * g1 + b * g2,
                                np.abs(a * g1) + np.abs(b * g2))


@given(problem=ce_problems(-1e4, 1e4))
def test_cross_entropy_zero_dloss_gives_zero_gradient(problem):
    logits, labels = problem
    assert not CE_BACKWARD(0.0, CE_FORWARD(logits, labels)[1]).any()


@given(problem=ce_problems(), dloss=st.floats(-10.0, 10.0))
def test_cross_entropy_never_mutates_inputs_or_cache(problem, dloss):
    logits, labels = problem
    copies = (logits.copy(), labels.copy())
    freeze(logits, labels)
    _, cache = CE_FORWARD(logits, labels)
    cache_copies = tuple(value.copy() for value in cache)
    freeze(cache)
    CE_BACKWARD(dloss, cache)
    CE_BACKWARD(dloss, cache)   # twice: a first call must not change what the second sees
    np.testing.assert_array_equal(logits, copies[0])
    np.testing.assert_array_equal(labels, copies[1])
    for value, copy in zip(cache, cache_copies, strict=True):
        np.testing.assert_array_equal(value, copy)


@given(problem=ce_problems(), dloss=st.floats(-10.0, 10.0))
def test_cross_entropy_is_bit_for_bit_deterministic(problem, dloss):
    logits, labels = problem
    (loss1, cache1), (loss2, cache2) = CE_FORWARD(logits, labels), CE_FORWARD(logits, labels)
    assert loss1 == loss2
    assert np.array_equal(CE_BACKWARD(dloss, cache1), CE_BACKWARD(dloss, cache2))


@given(problem=ce_problems())
@example(problem=TWO_CLASSES)
def test_cross_entropy_shapes_and_dtypes(problem):
    logits, labels = problem
    for dtype in (np.float64, np.complex128):
        loss, cache = CE_FORWARD(logits.astype(dtype), labels)
        assert np.shape(loss) == () and np.asarray(loss).dtype == dtype
        grad = CE_BACKWARD(np.ones((), dtype), cache)
        assert grad.shape == logits.shape and grad.dtype == dtype


@given(problem=ce_problems())
def test_cross_entropy_complex_forward_has_the_real_forward_as_real_part(problem):
    logits, labels = problem
    loss = CE_FORWARD(logits, labels)[0]
    complex_loss = CE_FORWARD(logits + 1e-20j, labels)[0]
    assert_equal_up_to_rounding(np.real(complex_loss), loss, 1 + 2 * np.abs(logits).max())


# === mean squared error ====================================================================

@given(problem=mse_problems(), seed=st.integers(0, 2**16))
@example(problem=ONE_CLASS_MSE, seed=0)
@example(problem=ONE_ELEMENT_MSE, seed=0)
def test_mse_backward_matches_complex_step(problem, seed):
    out, target = problem
    report = check_vjp(mse_forward, mse_backward, {"out": out}, static={"target": target},
                       seed=seed, method="complex")
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol, report


@given(problem=mse_problems(), dloss=st.floats(-10.0, 10.0))
@example(problem=ONE_CLASS_MSE, dloss=0.25)
def test_mse_backward_matches_complex_step_with_drawn_dloss(problem, dloss):
    out, target = problem
    report = check_vjp(mse_forward, mse_backward, {"out": out}, static={"target": target},
                       dout=np.array(dloss), method="complex")
    assert report.ok, report


@given(problem=mse_problems(-4.0, 4.0), seed=st.integers(0, 2**16))
@example(problem=ONE_CLASS_MSE, seed=0)
def test_mse_backward_matches_central_differences(problem, seed):
    out, target = problem
    report = check_vjp(mse_forward, mse_backward, {"out": out}, static={"target": target},
                       seed=seed, method="central")
    assert report.ok, report


@given(problem=mse_problems())
@example(problem=ONE_CLASS_MSE)
@example(problem=ONE_ELEMENT_MSE)
def test_mse_is_the_mean_over_all_elements(problem):
    out, target = problem
    squares = [(o - t) ** 2 for o, t in zip(out.ravel().tolist(), target.ravel().tolist(),
                                            strict=True)]
    expected = math.fsum(squares) / out.size   # all elements, not the batch
    # a sum of non-negative terms: accurate relative to the result itself
    assert_equal_up_to_rounding(mse_forward(out, target)[0], expected, expected)


def test_mse_hand_derived_values():
    # (N, K) = (2, 3), every difference 1: the mean over all 6 elements is 1 (the mean over
    # the batch of the row sums would be 3).
    loss, cache = mse_forward(np.zeros((2, 3)), np.ones((2, 3)))
    assert loss == 1.0
    np.testing.assert_array_equal(mse_backward(1.0, cache), np.full((2, 3), -2 / 6))
    loss, cache = mse_forward(np.array([[3.0, -1.0]]), np.array([[1.0, -1.0]]))
    assert loss == 2.0   # (2^2 + 0^2) / 2
    np.testing.assert_array_equal(mse_backward(1.0, cache), [[2.0, 0.0]])  # 2 * 2 / 2


@given(problem=mse_problems())
def test_mse_is_symmetric_and_zero_at_the_target(problem):
    out, target = problem
    loss, cache = mse_forward(out, target)
    assert mse_forward(target, out)[0] == loss     # (t - o)^2 == (o - t)^2 exactly
    zero, zero_cache = mse_forward(out, out.copy())
    assert zero == 0 and not mse_backward(1.0, zero_cache).any()


@given(problem=mse_problems(), a=st.floats(-3.0, 3.0), b=st.floats(-3.0, 3.0),
       d1=st.floats(-10.0, 10.0), d2=st.floats(-10.0, 10.0))
def test_mse_backward_is_linear_in_dloss(problem, a, b, d1, d2):
    out, target = problem
    _, cache = mse_forward(out, target)
    g1, g2 = mse_backward(d1, cache), mse_backward(d2, cache)
    assert_equal_up_to_rounding(mse_backward(a * d1 + b * d2, cache), a * g1 + b * g2,
                                np.abs(a * g1) + np.abs(b * g2))


@given(problem=mse_problems())
def test_mse_zero_dloss_gives_zero_gradient(problem):
    out, target = problem
    assert not mse_backward(0.0, mse_forward(out, target)[1]).any()


@given(problem=mse_problems(), dloss=st.floats(-10.0, 10.0))
def test_mse_never_mutates_inputs_or_cache(problem, dloss):
    out, target = problem
    copies = (out.copy(), target.copy())
    freeze(out, target)
    _, cache = mse_forward(out, target)
    cache_copy = cache.difference.copy()
    freeze(cache)
    mse_backward(dloss, cache)
    np.testing.assert_array_equal(out, copies[0])
    np.testing.assert_array_equal(target, copies[1])
    np.testing.assert_array_equal(cache.difference, cache_copy)


@given(problem=mse_problems(), dloss=st.floats(-10.0, 10.0))
def test_mse_is_bit_for_bit_deterministic(problem, dloss):
    out, target = problem
    (loss1, cache1), (loss2, cache2) = mse_forward(out, target), mse_forward(out, target)
    assert loss1 == loss2
    assert np.array_equal(mse_backward(dloss, cache1), mse_backward(dloss, cache2))


@given(problem=mse_problems())
def test_mse_shapes_and_dtypes(problem):
    out, target = problem
    for dtype in (np.float64, np.complex128):
        loss, cache = mse_forward(out.astype(dtype), target)
        assert np.shape(loss) == () and np.asarray(loss).dtype == dtype
        grad = mse_backward(np.ones((), dtype), cache)
        assert grad.shape == out.shape and grad.dtype == dtype


@given(problem=mse_problems())
def test_mse_complex_forward_has_the_real_forward_as_real_part(problem):
    out, target = problem
    loss = mse_forward(out, target)[0]
    assert_equal_up_to_rounding(np.real(mse_forward(out + 1e-20j, target)[0]), loss, loss)


# === the loss specs ========================================================================

@given(problem=ce_problems(), dloss=st.floats(-10.0, 10.0))
def test_cross_entropy_spec_is_a_thin_adapter(problem, dloss):
    logits, labels = problem
    spec = nn.SoftmaxCrossEntropy()
    checked = spec.check_target(labels.astype(np.int32), logits.shape)
    assert checked.dtype == np.int64 and np.array_equal(checked, labels)
    loss, cache = spec.forward(logits, checked)
    assert loss == CE_FORWARD(logits, labels)[0]
    assert np.array_equal(spec.backward(dloss, cache),
                          CE_BACKWARD(dloss, CE_FORWARD(logits, labels)[1]))


@given(problem=mse_problems(), dloss=st.floats(-10.0, 10.0))
def test_mse_spec_is_a_thin_adapter(problem, dloss):
    out, target = problem
    spec = nn.MSE()
    checked = spec.check_target(target.astype(np.float32), out.shape)
    assert checked.dtype == np.float64      # widened, never truncated
    np.testing.assert_array_equal(checked, target.astype(np.float32).astype(np.float64))
    loss, cache = spec.forward(out, target)
    assert loss == mse_forward(out, target)[0]
    assert np.array_equal(spec.backward(dloss, cache),
                          mse_backward(dloss, mse_forward(out, target)[1]))


def test_loss_configs_and_registry():
    assert nn.SoftmaxCrossEntropy().config() == {"type": "SoftmaxCrossEntropy"}
    assert nn.MSE().config() == {"type": "MSE"}
    assert LOSS_TYPES["SoftmaxCrossEntropy"] is nn.SoftmaxCrossEntropy
    assert LOSS_TYPES["MSE"] is nn.MSE


@pytest.mark.parametrize("labels, output_shape, error, match", [
    ([0, 3], (2, 3), ValueError, r"y: labels must lie in \[0, 3\), got range \[0, 3\]"),
    ([-1, 0], (2, 3), ValueError, r"y: labels must lie in \[0, 3\)"),
    ([0, 1], (2, 1), ValueError, r"y: labels must lie in \[0, 1\)"),
    (np.array([0.0, 1.0]), (2, 3), TypeError, "y: expected integer class labels, got dtype "
                                              "float64"),
    (np.array([True, False]), (2, 3), TypeError, "y: expected integer class labels"),
    (np.array(["0", "1"]), (2, 3), TypeError, "y: expected integer class labels"),
    ([0, 1, 2], (2, 3), ValueError, r"y: expected shape \(2,\), got \(3,\)"),
    ([[0], [1]], (2, 3), ValueError, r"y: expected shape \(2,\), got \(2, 1\)"),
    (1, (1, 3), ValueError, r"y: expected shape \(1,\), got \(\)"),
    # (N, T, K) output wants (N, T) labels: per-example labels (N,) are refused, not broadcast
    ([0, 1], (2, 3, 4), ValueError, r"y: expected shape \(2, 3\), got \(2,\)"),
    ([0, 1], (2,), ValueError, r"y: SoftmaxCrossEntropy needs model output \(N, K\)"),
])
def test_cross_entropy_rejects_bad_labels(labels, output_shape, error, match):
    with pytest.raises(error, match=match):
        nn.SoftmaxCrossEntropy().check_target(labels, output_shape)


@pytest.mark.parametrize("target, output_shape, error, match", [
    # never broadcast: a target that numpy would broadcast is still an error
    (np.zeros((2, 1)), (2, 3), ValueError, r"y: expected shape \(2, 3\), got \(2, 1\)"),
    (np.zeros(3), (2, 3), ValueError, r"y: expected shape \(2, 3\), got \(3,\)"),
    (np.zeros((1, 3)), (2, 3), ValueError, r"y: expected shape \(2, 3\), got \(1, 3\)"),
    (np.zeros((2, 3, 1)), (2, 3), ValueError, r"y: expected shape \(2, 3\), got \(2, 3, 1\)"),
    (0.0, (2, 3), ValueError, r"y: expected shape \(2, 3\), got \(\)"),
    (np.array([[np.nan, 0.0]]), (1, 2), ValueError, "y: contains 1 NaN or Inf"),
    (np.array([[np.inf, -np.inf]]), (1, 2), ValueError, "y: contains 2 NaN or Inf"),
    (np.zeros((1, 2), complex), (1, 2), TypeError, "y: expected a real array"),
    (np.array([["a", "b"]]), (1, 2), TypeError, "y: expected a numeric"),
    (np.ones((1, 2), bool), (1, 2), TypeError, "y: expected a numeric"),
])
def test_mse_rejects_bad_targets(target, output_shape, error, match):
    with pytest.raises(error, match=match):
        nn.MSE().check_target(target, output_shape)


def test_mse_target_integers_become_float64():
    checked = nn.MSE().check_target(np.arange(6).reshape(2, 3), (2, 3))
    assert checked.dtype == np.float64
    np.testing.assert_array_equal(checked, np.arange(6.0).reshape(2, 3))


# === cross-entropy over positions: logits (N, ..., K), labels (N, ...) ======================

@st.composite
def position_problems(draw, low=-20.0, high=20.0):
    """(logits (N, T, K) or (N, T, U, K), labels of the leading shape)."""
    shape = (draw(st.integers(1, 3)), *draw(st.lists(st.integers(1, 3), min_size=1,
                                                       max_size=2)))
    classes = draw(st.integers(2, 4))
    logits = draw(arrays((*shape, classes), low, high))
    labels = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, classes - 1)))
    return logits, labels


@given(problem=position_problems(), seed=st.integers(0, 2**16))
def test_cross_entropy_over_positions_matches_complex_step(problem, seed):
    logits, labels = problem
    report = check_vjp(CE_FORWARD, CE_BACKWARD, {"logits": logits}, static={"labels": labels},
                       seed=seed, method="complex")
    assert report.ok, report


@given(problem=position_problems(-4.0, 4.0), dloss=st.floats(-5.0, 5.0))
def test_cross_entropy_over_positions_matches_central_differences(problem, dloss):
    logits, labels = problem
    report = check_vjp(CE_FORWARD, CE_BACKWARD, {"logits": logits}, static={"labels": labels},
                       dout=np.array(dloss), method="central")
    assert report.ok, report


@given(problem=position_problems())
def test_cross_entropy_over_positions_is_the_mean_over_every_position(problem):
    # PyTorch's cross_entropy on the positions flattened to (P, K): the mean over all P
    # positions, not a mean over N of per-sequence sums.
    logits, labels = problem
    loss, cache = CE_FORWARD(logits, labels)
    terms = []
    for position in np.ndindex(labels.shape):
        row = logits[position]
        top = max(row)
        log_norm = top + math.log(math.fsum(math.exp(v - top) for v in row))
        terms.append(log_norm - row[labels[position]])
    expected = math.fsum(terms) / len(terms)
    assert abs(loss - expected) <= COMPLEX.atol + COMPLEX.rtol * max(1.0, math.fsum(
        abs(t) for t in terms) / len(terms))
    flat_loss, flat_cache = CE_FORWARD(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert loss == flat_loss
    grad = CE_BACKWARD(1.0, cache)
    assert grad.shape == logits.shape
    np.testing.assert_array_equal(grad.reshape(-1, logits.shape[-1]),
                                  CE_BACKWARD(1.0, flat_cache))


@pytest.mark.slow
def test_cross_entropy_over_positions_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits, labels = rng.standard_normal((3, 5, 4)) * 3, rng.integers(0, 4, (3, 5))
    z = torch.from_numpy(logits).requires_grad_(True)
    value = torch.nn.functional.cross_entropy(z.reshape(-1, 4), torch.from_numpy(labels)
                                              .reshape(-1))
    value.backward()
    loss, cache = CE_FORWARD(logits, labels)
    assert loss == pytest.approx(value.item(), rel=1e-14)
    np.testing.assert_allclose(CE_BACKWARD(1.0, cache), z.grad.numpy(), rtol=1e-12,
                               atol=1e-16)


@pytest.mark.parametrize("labels, output_shape, error, match", [
    (np.zeros(6, np.int64), (2, 3, 4), ValueError, r"y: expected shape \(2, 3\), got \(6,\)"),
    (np.zeros((3, 2), np.int64), (2, 3, 4), ValueError,
     r"y: expected shape \(2, 3\), got \(3, 2\)"),
    (np.zeros((2, 3)), (2, 3, 4), TypeError, "y: expected integer class labels, got dtype "
                                             "float64"),
    (np.zeros((2, 3), bool), (2, 3, 4), TypeError, "y: expected integer class labels"),
    (np.full((2, 3), 4), (2, 3, 4), ValueError, r"y: labels must lie in \[0, 4\), got range "
                                                r"\[4, 4\]"),
    (np.zeros((2, 0), np.int64), (2, 0, 4), ValueError, "with at least one position"),
])
def test_cross_entropy_over_positions_rejects_bad_labels(labels, output_shape, error, match):
    with pytest.raises(error, match=match):
        nn.SoftmaxCrossEntropy().check_target(labels, output_shape)


def test_cross_entropy_free_function_rejects_flattened_labels():
    with pytest.raises(ValueError, match=r"softmax_cross_entropy_forward: labels: expected "
                                         r"shape \(2, 3\), got \(6,\)"):
        CE_FORWARD(np.zeros((2, 3, 4)), np.zeros(6, np.int64))
    with pytest.raises(ValueError, match=r"logits: expected shape \(N, K\), got \(4,\)"):
        CE_FORWARD(np.zeros(4), np.zeros((), np.int64))


# --- ragged label lists: one message naming the argument and the rows' lengths -------------

@pytest.mark.parametrize("labels, lengths", [([[0, 1, 2], [1]], "[3, 1]"),
                                             ([[0, 1], [1, 0], 1], "[2, 2, None]")])
def test_ragged_sequence_labels_name_the_argument_and_the_lengths(labels, lengths):
    with pytest.raises(TypeError) as caught:
        CE_FORWARD(np.zeros((len(labels), 3, 4)), labels)
    message = str(caught.value)
    assert message.startswith("softmax_cross_entropy_forward: labels: expected a rectangular "
                              "array of integer labels, got a ragged nested list")
    assert f"rows of lengths {lengths}" in message


def test_ragged_labels_of_a_classifier_name_y():
    model = nn.MLP([3, 4, 2])
    with pytest.raises(TypeError, match=r"^y: expected a rectangular array of integer labels, "
                                        r"got a ragged nested list \(rows of lengths \[2, 1\]\)"):
        model.loss_and_grads(model.init(0), np.zeros((2, 3)), [[0, 1], [1]])
