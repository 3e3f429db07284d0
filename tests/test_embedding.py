"""Tests of refimpl/nn/embedding.py: embedding_forward/embedding_backward and the Embedding
layer spec.

Legend: ``V`` vocabulary (rows), ``D`` embedding size, ``S`` the shape of the indices. The
backward pass is a scatter-add: a row used k times receives k contributions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from drawing import arrays
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import check_vjp, nn
from refimpl.gradcheck import TOLERANCES
from refimpl.nn.base import layer_config, layer_from_config
from refimpl.nn.embedding import EmbeddingCache, embedding_backward, embedding_forward

COMPLEX = TOLERANCES["complex"]
INDEX_SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@st.composite
def problems(draw, low=-10.0, high=10.0):
    """(indices S int64, weight (V, D)): V in 1..4 with up to 64 positions, so most draws
    repeat some row (the case the scatter-add exists for)."""
    vocabulary, dim = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    shape = draw(INDEX_SHAPES)
    indices = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, vocabulary - 1)))
    return indices, draw(arrays((vocabulary, dim), low, high))


# Every position names row 1 of 3: row 1 gets the sum of all of dout, rows 0 and 2 nothing.
REPEATED = (np.array([[1, 1], [1, 1]]), np.arange(6.0).reshape(3, 2) - 2.5)


def loop_forward(indices, weight):
    """out[s, d] = weight[indices[s], d], position by position."""
    out = np.empty((*indices.shape, weight.shape[1]))
    for position in np.ndindex(indices.shape):
        for d in range(weight.shape[1]):
            out[(*position, d)] = weight[indices[position], d]
    return out


def loop_backward(dout, indices, vocabulary):
    """dweight[v, d] = sum over positions s with indices[s] == v of dout[s, d]."""
    dweight = np.zeros((vocabulary, dout.shape[-1]))
    for v in range(vocabulary):
        for position in np.ndindex(indices.shape):
            if indices[position] == v:
                dweight[v] += dout[position]
    return dweight


# --- backward against numerical differentiation ----------------------------------------------

@given(problem=problems(), seed=st.integers(0, 2**16))
@example(problem=REPEATED, seed=0)
def test_backward_matches_complex_step(problem, seed):
    indices, weight = problem
    report = check_vjp(embedding_forward, embedding_backward, {"weight": weight},
                       static={"indices": indices}, seed=seed, method="complex")
    assert report.ok, report
    assert report.rows[0].max_rel_error <= COMPLEX.rtol, report


@given(problem=problems(-4.0, 4.0), data=st.data())
@example(problem=REPEATED, data=None)
def test_backward_matches_central_differences_with_drawn_upstream_gradient(problem, data):
    indices, weight = problem
    shape = (*indices.shape, weight.shape[1])
    dout = (np.random.default_rng(3).standard_normal(shape) if data is None
            else data.draw(arrays(shape, -4.0, 4.0)))
    report = check_vjp(embedding_forward, embedding_backward, {"weight": weight},
                       static={"indices": indices}, dout=dout, method="central")
    assert report.ok, report


# --- values against position-by-position loops -----------------------------------------------

@given(problem=problems(), seed=st.integers(0, 2**16))
@example(problem=REPEATED, seed=0)
def test_forward_and_backward_match_loops(problem, seed):
    indices, weight = problem
    out, cache = embedding_forward(indices, weight)
    np.testing.assert_array_equal(out, loop_forward(indices, weight))   # a pure selection
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    expected = loop_backward(dout, indices, weight.shape[0])
    magnitude = loop_backward(np.abs(dout), indices, weight.shape[0])
    error = np.abs(embedding_backward(dout, cache) - expected)
    assert np.all(error <= COMPLEX.atol + COMPLEX.rtol * magnitude)


def test_a_row_used_k_times_receives_k_contributions():
    indices, weight = REPEATED
    dout = np.array([[[1.0, 2.0], [10.0, 20.0]], [[100.0, 200.0], [1000.0, 2000.0]]])
    _, cache = embedding_forward(indices, weight)
    dweight = embedding_backward(dout, cache)
    np.testing.assert_array_equal(dweight, [[0.0, 0.0], [1111.0, 2222.0], [0.0, 0.0]])


def test_rows_never_named_get_exactly_zero_and_order_of_positions_does_not_matter():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 3))
    indices = np.array([[4, 0, 4], [2, 4, 0]])
    dout = rng.standard_normal((2, 3, 3))
    dweight = embedding_backward(dout, embedding_forward(indices, weight)[1])
    assert not dweight[[1, 3, 5]].any()
    np.testing.assert_allclose(dweight[4], dout[0, 0] + dout[0, 2] + dout[1, 1], rtol=1e-15)
    flat = embedding_backward(dout.reshape(6, 3),
                              embedding_forward(indices.reshape(6), weight)[1])
    np.testing.assert_array_equal(dweight, flat)      # the shape S does not matter


# --- structure: shapes, dtypes, linearity, no mutation ----------------------------------------

@given(problem=problems())
def test_shapes_dtypes_and_complex_forward(problem):
    indices, weight = problem
    out, cache = embedding_forward(indices, weight)
    assert isinstance(cache, EmbeddingCache)
    assert out.shape == (*indices.shape, weight.shape[1]) and out.dtype == np.float64
    out_c, cache_c = embedding_forward(indices, weight + 1e-20j)
    assert out_c.dtype == np.complex128 and np.array_equal(out_c.real, out)
    dweight = embedding_backward(np.ones(out.shape, complex), cache_c)
    assert dweight.shape == weight.shape and dweight.dtype == np.complex128


@given(problem=problems(), a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 99))
def test_backward_is_linear_in_dout(problem, a, b, seed):
    indices, weight = problem
    out, cache = embedding_forward(indices, weight)
    rng = np.random.default_rng(seed)
    d1, d2 = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    combined = embedding_backward(a * d1 + b * d2, cache)
    expected = a * embedding_backward(d1, cache) + b * embedding_backward(d2, cache)
    magnitude = embedding_backward(np.abs(a * d1) + np.abs(b * d2), cache)
    assert np.all(np.abs(combined - expected) <= COMPLEX.atol + 4 * COMPLEX.rtol * magnitude)


def test_inputs_and_cache_are_never_mutated():
    indices, weight = REPEATED
    indices, weight = indices.copy(), weight.copy()
    dout = np.random.default_rng(1).standard_normal((2, 2, 2))
    for array in (indices, weight, dout):
        array.flags.writeable = False
    out, cache = embedding_forward(indices, weight)
    embedding_backward(dout, cache)
    embedding_backward(dout, cache)          # a second call sees the same cache
    np.testing.assert_array_equal(weight, REPEATED[1])
    np.testing.assert_array_equal(indices, REPEATED[0])


# --- clear errors -------------------------------------------------------------------------------

WEIGHT = np.zeros((3, 2))


@pytest.mark.parametrize("indices, error, match", [
    (np.array([0, 3]), ValueError, r"indices must lie in \[0, 3\), got range \[0, 3\]"),
    (np.array([[-1, 0]]), ValueError, r"indices must lie in \[0, 3\), got range \[-1, 0\]"),
    (np.array([0.0, 1.0]), TypeError, "expected integer indices .*got dtype float64"),
    (np.array([True, False]), TypeError, "expected integer indices .*got dtype bool"),
    (np.array(["0"]), TypeError, "expected integer indices"),
    ([0, 1], TypeError, "expected an integer array of indices, got list"),
    (np.array(1), ValueError, "expected indices of shape"),
])
def test_forward_rejects_bad_indices(indices, error, match):
    with pytest.raises(error, match="embedding_forward: indices: " + match):
        embedding_forward(indices, WEIGHT)


def test_forward_and_backward_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"embedding_forward: weight: expected shape \(V, D\)"):
        embedding_forward(np.array([0]), np.zeros(3))
    _, cache = embedding_forward(np.array([[0, 1]]), WEIGHT)
    with pytest.raises(ValueError, match=r"embedding_backward: dout: expected shape \(1, 2, 2\)"):
        embedding_backward(np.zeros((2, 2)), cache)
    with pytest.raises(TypeError, match="embedding_backward: cache"):
        embedding_backward(np.zeros((1, 2, 2)), (np.array([[0, 1]]), (3, 2)))


# --- the layer spec and Sequential ----------------------------------------------------------

def test_spec_shapes_init_and_config():
    layer = nn.Embedding("embed", 10, 4)
    assert layer.parameter_shapes() == {"weight": (10, 4)}
    assert layer.output_shape((2, 7)) == (2, 7, 4) and layer.output_shape((3,)) == (3, 4)
    config = json.loads(json.dumps(layer_config(layer)))
    assert config == {"type": "Embedding", "name": "embed", "num_embeddings": 10,
                      "embedding_dim": 4}
    assert layer_from_config(config) == layer
    big = nn.Embedding("e", 400, 50).init_parameters(np.random.default_rng(0))["weight"]
    # N(0, 1), PyTorch's default: mean 0 +- 5 standard errors, variance 1 +- 5 of its s.e.
    assert abs(big.mean()) < 5 / np.sqrt(big.size)
    assert abs(big.var() - 1) < 5 * np.sqrt(2 / big.size)
    again = nn.Embedding("e", 400, 50).init_parameters(np.random.default_rng(0))["weight"]
    np.testing.assert_array_equal(big, again)


@pytest.mark.parametrize("args, error, match", [
    (("e", 0, 3), ValueError, "num_embeddings: expected a positive int"),
    (("e", 3, 0), ValueError, "embedding_dim: expected a positive int"),
    (("e", 3.0, 3), TypeError, "num_embeddings"),
    (("e", 3, True), TypeError, "embedding_dim"),
    (("e.x", 3, 3), ValueError, "name: expected a non-empty string without '.'"),
])
def test_spec_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        nn.Embedding(*args)


def model():
    return nn.Sequential([nn.Embedding("embed", 5, 3), nn.Tanh(), nn.Dense("out", 3, 5)],
                         loss=nn.SoftmaxCrossEntropy())


@pytest.mark.parametrize("x, error, match", [
    (np.array([[0.0, 1.0]]), TypeError, r"x: expected integer indices \(int64\), got dtype "
                                        r"float64"),
    (np.array([[True, False]]), TypeError, "x: expected integer indices"),
    (np.array([[0, 5]]), ValueError, r"x: indices must lie in \[0, 5\), got range \[0, 5\]"),
    (np.array([[-2, 1]]), ValueError, r"x: indices must lie in \[0, 5\)"),
    (np.zeros((0, 2), np.int64), ValueError, "x: expected a non-empty batch"),
    ([[0, 1], [2]], TypeError, r"x: expected a rectangular array of token indices, got a "
                               r"ragged nested list \(rows of lengths \[2, 1\]\)"),
])
def test_sequential_checks_indices_before_any_arithmetic(x, error, match):
    m = model()
    with pytest.raises(error, match=match):
        m.loss_and_grads(m.init(0), x, np.zeros((1, 2), np.int64))


def test_sequential_accepts_lists_and_int32_and_has_no_input_gradient():
    m = model()
    params = m.init(0)
    y = np.array([[1, 2]])
    loss, grads = m.loss_and_grads(params, [[0, 3]], y)
    assert loss == m.loss_and_grads(params, np.array([[0, 3]], np.int32), y)[0]
    out, dx, vjp_grads = m.vjp(params, np.array([[0, 3]]), np.ones((1, 2, 5)))
    assert dx is None and out.shape == (1, 2, 5)
    assert not vjp_grads["embed.weight"][[1, 2, 4]].any()     # rows not used: exactly zero


def test_embedding_must_be_the_first_layer():
    with pytest.raises(ValueError, match=r"layers\[1\]: Embedding takes integer indices, so "
                                         r"it can only be the first layer"):
        nn.Sequential([nn.Dense("fc", 2, 2), nn.Embedding("e", 2, 2)])
