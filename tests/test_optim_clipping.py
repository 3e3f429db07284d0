"""Tests of refimpl/optim/clipping.py: the total norm over unique parameters and PyTorch's
clip coefficient, against a loop-level reference written here; the 1e-6 term; the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl as ri
from refimpl import nn
from refimpl.optim import CLIP_EPS, ClipGradNorm, clip_grad_norm, gradient_norm

# The reference sums in another order than NumPy: they agree to rounding. A changed formula
# (the epsilon dropped or moved, the clamp, the order p) changes the result by far more (the
# 1e-6 term alone by about 1e-6 / total_norm, relative, with total_norm <= 1e3 here).
# Comparison: |actual - expected| <= ATOL + RTOL |expected|.
RTOL, ATOL = 1e-12, 1e-300


def reference_norm(grads, order):
    """The norm of all entries at once, element by element."""
    entries = [abs(float(value)) for grad in grads.values() for value in np.ravel(grad)]
    if order == math.inf:
        return max(entries, default=0.0)
    return sum(entry ** order for entry in entries) ** (1 / order)


def reference_clip(grads, max_norm, order, eps=1e-6):
    total = reference_norm(grads, order)
    coefficient = min(max_norm / (total + eps), 1.0)
    return {key: [coefficient * float(value) for value in np.ravel(grad)]
            for key, grad in grads.items()}, total


@st.composite
def gradient_dicts(draw):
    count = draw(st.integers(1, 3))
    elements = st.floats(-10, 10, allow_subnormal=False)
    return {f"g{index}": draw(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2,
                                                                       max_side=3),
                                         elements=elements))
            for index in range(count)}


ORDERS = st.sampled_from([1.0, 2.0, 3.0, math.inf])


@given(gradient_dicts(), ORDERS, st.floats(1e-3, 100))
def test_clipping_matches_the_loop_level_reference(grads, order, max_norm):
    clipped, total = clip_grad_norm(grads, max_norm, order)
    expected, expected_total = reference_clip(grads, max_norm, order)
    np.testing.assert_allclose(total, expected_total, rtol=RTOL, atol=ATOL)
    assert list(clipped) == list(grads)
    for key, grad in grads.items():
        assert clipped[key].shape == grad.shape
        np.testing.assert_allclose(np.ravel(clipped[key]), expected[key], rtol=RTOL, atol=ATOL)


@given(gradient_dicts(), ORDERS)
def test_a_large_max_norm_is_the_identity(grads, order):
    total = gradient_norm(grads, order)
    clipped, reported = clip_grad_norm(grads, total + 1.0, order)
    assert reported == total
    for key, grad in grads.items():
        np.testing.assert_array_equal(clipped[key], grad)
        assert not np.shares_memory(clipped[key], grad)


@given(gradient_dicts(), ORDERS, st.floats(0.01, 0.99))
def test_a_small_max_norm_leaves_the_norm_at_max_norm_up_to_the_epsilon(grads, order, share):
    total = gradient_norm(grads, order)
    if total < 1e-3:
        return   # nothing to clip
    max_norm = share * total
    clipped, _ = clip_grad_norm(grads, max_norm, order)
    after = gradient_norm(clipped, order)
    # || g max_norm / (total + eps) || = max_norm total / (total + eps): just below max_norm
    np.testing.assert_allclose(after, max_norm * total / (total + CLIP_EPS), rtol=1e-13)
    assert after < max_norm
    assert max_norm - after <= max_norm * CLIP_EPS / total * (1 + 1e-9)
    # optax's form (no epsilon) reaches max_norm itself
    np.testing.assert_allclose(gradient_norm(clip_grad_norm(grads, max_norm, order, eps=0.0)[0],
                                             order), max_norm, rtol=1e-13)


def test_the_default_epsilon_is_pytorchs():
    grads = {"w": np.array([3.0, 4.0])}                 # total 5
    clipped, total = clip_grad_norm(grads, 1.0)
    assert total == 5.0
    np.testing.assert_array_equal(clipped["w"], grads["w"] * (1.0 / (5.0 + 1e-6)))
    assert not np.array_equal(clipped["w"], grads["w"] * (1.0 / 5.0))
    assert CLIP_EPS == 1e-6


def test_a_zero_gradient_is_left_alone_even_without_the_epsilon():
    for eps in (CLIP_EPS, 0.0):
        clipped, total = clip_grad_norm({"w": np.zeros(3)}, 1.0, eps=eps)
        assert total == 0.0 and not clipped["w"].any()


def test_the_norm_of_the_norms_is_the_norm_of_all_entries():
    grads = {"a": np.array([1.0, -2.0]), "b": np.array([[2.0], [4.0]]), "c": np.zeros((0, 3))}
    assert gradient_norm(grads) == pytest.approx(5.0, rel=1e-15)
    assert gradient_norm(grads, "inf") == 4.0 and gradient_norm(grads, math.inf) == 4.0
    assert gradient_norm(grads, 1) == 9.0


def test_a_shared_parameter_is_counted_once():
    # The tied autoencoder's weight is one key: the norm counts its (summed) gradient once.
    # Its untied twin holds two copies; a norm over both counts the shared weight twice, and
    # when the two uses' gradients are equal that is a factor sqrt(2) on its share (the
    # over-clipping of a replicated weight, NVIDIA/Megatron-LM #7227).
    model = ri.Sequential([nn.Dense("enc", 3, 3, bias=False)], loss=nn.MSE())
    tied = ri.Sequential([nn.Dense("enc", 3, 3, bias=False), nn.Dense("dec", 3, 3, bias=False)],
                         loss=nn.MSE(), share={"dec.weight": "enc.weight"})
    x = np.random.default_rng(0).standard_normal((4, 3))
    params = model.init(0)
    _, grads = tied.loss_and_grads(params, x, x)
    assert list(grads) == ["enc.weight"]
    assert gradient_norm(grads) == pytest.approx(np.linalg.norm(grads["enc.weight"]), rel=1e-14)
    twice = {"enc.weight": grads["enc.weight"], "dec.weight": grads["enc.weight"].copy()}
    assert gradient_norm(twice) == pytest.approx(math.sqrt(2) * gradient_norm(grads), rel=1e-14)


def test_two_keys_holding_one_gradient_are_refused():
    g = np.ones(3)
    with pytest.raises(ValueError, match=r"'a' and 'b' are \(views of\) the same array"):
        clip_grad_norm({"a": g, "b": g}, 1.0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_norm=0.0), ValueError, r"max_norm: expected a number > 0"),
    (dict(max_norm=-1.0), ValueError, r"max_norm: expected a finite real number >= 0"),
    (dict(max_norm=math.nan), ValueError, r"max_norm"),
    (dict(max_norm="1"), TypeError, r"max_norm"),
    (dict(max_norm=1.0, norm_type=0.5), ValueError, r"norm_type: expected a number >= 1 or "
                                                    r"inf \(a norm\), got 0.5"),
    (dict(max_norm=1.0, norm_type=math.nan), ValueError, r"norm_type"),
    (dict(max_norm=1.0, norm_type="two"), TypeError, r"norm_type: expected a number >= 1 or inf"),
    (dict(max_norm=1.0, norm_type=True), TypeError, r"norm_type"),
    (dict(max_norm=1.0, eps=-1e-6), ValueError, r"eps: expected a finite real number >= 0"),
])
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        clip_grad_norm({"w": np.ones(2)}, **kwargs)


@pytest.mark.parametrize("grads, error, match", [
    ({}, TypeError, r"grads: expected a non-empty dict"),
    ({"w": np.array([1.0, np.inf])}, ValueError, r"grads\['w'\]: contains 1 NaN or Inf"),
    ({"w": np.ones(2) * 1j}, TypeError, r"grads\['w'\]: expected a real array"),
])
def test_bad_gradients_are_refused(grads, error, match):
    with pytest.raises(error, match=match):
        gradient_norm(grads)


def test_an_overflowing_norm_is_an_error_not_a_silent_zero_gradient():
    with np.errstate(over="raise"), pytest.raises(FloatingPointError, match=r"grads: the total "
                                                                            r"2-norm overflowed"):
        clip_grad_norm({"w": np.full(2, 1e200)}, 1.0)


@given(st.floats(1e-3, 1e3), st.sampled_from([1.0, 2.0, 2.5, math.inf, "inf"]),
       st.sampled_from([0.0, 1e-6, 1e-3]))
def test_a_clip_config_survives_json(max_norm, order, eps):
    clip = ClipGradNorm(max_norm, order, eps)
    config = json.loads(json.dumps(clip.config()))
    assert ClipGradNorm.from_config(config) == clip.checked()
    grads = {"w": np.array([3.0, -4.0])}
    for got, expected in zip(ClipGradNorm.from_config(config).clip(grads),
                             clip_grad_norm(grads, max_norm, order, eps), strict=True):
        np.testing.assert_equal(got, expected)


@pytest.mark.parametrize("config, error, match", [
    ({}, ValueError, r"clip: missing \['max_norm'\]"),
    ({"max_norm": 1.0, "norm": 2}, ValueError, r"clip: unexpected \['norm'\]"),
    ({"max_norm": 1.0, "norm_type": "Infinity"}, TypeError, r"clip: norm_type"),
    ({"max_norm": 0}, ValueError, r"clip: max_norm: expected a number > 0"),
])
def test_a_bad_clip_config_is_refused(config, error, match):
    with pytest.raises(error, match=match):
        ClipGradNorm.from_config(config)
