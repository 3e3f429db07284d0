"""Tests of refimpl/_validate.py: conversions and clear errors before any arithmetic."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl._validate import (
    as_float_array,
    as_label_array,
    check_finite,
    check_shape,
    positive_int,
)

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
FINITE = {"allow_nan": False, "allow_infinity": False}

# Every dtype float64 holds exactly: conversion must round-trip.
EXACT_REAL_DTYPES = st.one_of(
    hnp.floating_dtypes(sizes=(16, 32, 64)),
    hnp.integer_dtypes(sizes=(8, 16, 32)),
    hnp.unsigned_integer_dtypes(sizes=(8, 16, 32)),
)


# --- as_float_array: conversions -----------------------------------------------------------

@given(value=hnp.arrays(EXACT_REAL_DTYPES, SHAPES, elements=FINITE))
@example(value=np.array([0.1, 65504.0], np.float16))
@example(value=np.array(np.float32(1e-45)))       # float32 subnormal
@example(value=np.array([-(2**31), 2**31 - 1], np.int32))
def test_real_arrays_become_float64_exactly(value):
    result = as_float_array(value, "x")
    assert result.dtype == np.float64 and result.shape == value.shape
    # widened, never truncated: converting back gives the original values bit for bit
    assert np.array_equal(result.astype(value.dtype), value)
    assert np.array_equal(result, value)


@given(value=hnp.arrays(hnp.complex_number_dtypes(), SHAPES, elements=FINITE))
def test_complex_arrays_become_complex128(value):
    result = as_float_array(value, "x")
    assert result.dtype == np.complex128 and result.shape == value.shape
    assert np.array_equal(result, value)


@given(value=hnp.arrays(np.float64, SHAPES, elements=FINITE))
def test_float64_is_unchanged_and_never_mutated(value):
    copy = value.copy()
    value.flags.writeable = False
    result = as_float_array(value, "x")
    assert np.array_equal(result, copy) and np.array_equal(value, copy)


@pytest.mark.parametrize("value, expected", [
    (3, np.array(3.0)),
    (2.5, np.array(2.5)),
    ([1, 2, 3], np.array([1.0, 2.0, 3.0])),
    ([[1, 2.5], [3, 4]], np.array([[1.0, 2.5], [3.0, 4.0]])),
    (np.uint8(255), np.array(255.0)),
    (np.arange(6, dtype=np.int64).reshape(2, 3), np.arange(6.0).reshape(2, 3)),
])
def test_python_numbers_lists_and_integers_become_float64(value, expected):
    result = as_float_array(value, "x")
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, expected)


def test_python_complex_becomes_complex128():
    result = as_float_array([1 + 2j, 3], "x")
    assert result.dtype == np.complex128
    np.testing.assert_array_equal(result, [1 + 2j, 3 + 0j])


# --- as_float_array: errors naming the argument --------------------------------------------

@pytest.mark.parametrize("value", [
    "abc",
    np.array(["1.0", "2.0"]),
    np.array([b"1", b"2"]),
    np.array([True, False]),
    True,
    np.array([1.0, 2.0], dtype=object),
    np.array([1, "a"], dtype=object),
    None,
    {"a": 1},
    object(),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
    np.array([1], dtype="timedelta64[s]"),
    datetime.date(2020, 1, 1),
])
def test_non_numeric_values_are_a_type_error_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"^my_input: expected a numeric"):
        as_float_array(value, "my_input")


def test_ragged_lists_are_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match=r"^my_input: expected a numeric"):
        as_float_array([[1.0, 2.0], [3.0]], "my_input")


@pytest.mark.parametrize("value", [1j, np.zeros(3, np.complex64), np.array([1 + 0j])])
def test_complex_is_a_type_error_when_not_allowed(value):
    with pytest.raises(TypeError, match=r"^target: expected a real array, got dtype complex"):
        as_float_array(value, "target", allow_complex=False)


@given(value=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
                        elements=st.floats(-1e30, 1e30)),   # finite in float32 too
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_a_single_nan_or_inf_is_a_value_error_naming_the_argument(value, bad, data):
    index = data.draw(st.integers(0, value.size - 1))
    value = value.copy()
    value.flat[index] = bad
    for candidate in (value, value.astype(np.float32), value.tolist()):
        with pytest.raises(ValueError, match=r"^weights: contains 1 NaN or Inf value\(s\); all "
                                             r"values must be finite"):
            as_float_array(candidate, "weights")


@pytest.mark.parametrize("value, count", [
    (float("nan"), 1),
    (np.array([np.inf, 1.0, -np.inf]), 2),
    (np.full((2, 3), np.nan), 6),
    (np.array([complex(1.0, np.nan)]), 1),        # NaN in the imaginary part only
    (np.array([complex(np.inf, 0.0), 1j]), 1),
    (np.array([np.nan], np.float16), 1),
])
def test_nan_and_inf_are_counted(value, count):
    with pytest.raises(ValueError, match=rf"^x: contains {count} NaN or Inf"):
        as_float_array(value, "x")


# --- as_label_array -------------------------------------------------------------------------

@given(dtype=st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes()), data=st.data())
def test_integer_labels_become_int64(dtype, data):
    classes = data.draw(st.integers(1, 100))
    batch = data.draw(st.integers(0, 6))
    labels = data.draw(hnp.arrays(dtype, batch, elements=st.integers(0, classes - 1)))
    result = as_label_array(labels, "y", batch, classes)
    assert result.dtype == np.int64 and result.shape == (batch,)
    assert np.array_equal(result, labels)


def test_labels_from_a_list_and_an_empty_batch():
    np.testing.assert_array_equal(as_label_array([2, 0, 1], "y", 3, 3), [2, 0, 1])
    assert as_label_array(np.zeros(0, np.int64), "y", 0, 3).shape == (0,)


@pytest.mark.parametrize("labels, batch, classes, error, match", [
    ([0, 3], 2, 3, ValueError, r"^labels: labels must lie in \[0, 3\), got range \[0, 3\]"),
    ([-1, 2], 2, 3, ValueError, r"^labels: labels must lie in \[0, 3\), got range \[-1, 2\]"),
    (np.array([0, 1], np.uint8), 2, 1, ValueError, r"^labels: labels must lie in \[0, 1\)"),
    ([0.0, 1.0], 2, 3, TypeError, r"^labels: expected integer class labels, got dtype float64"),
    (np.array([0, 1], np.float32), 2, 3, TypeError, "^labels: expected integer class labels"),
    ([True, False], 2, 3, TypeError, "^labels: expected integer class labels, got dtype bool"),
    (["0", "1"], 2, 3, TypeError, "^labels: expected integer class labels"),
    ([0, 1j], 2, 3, TypeError, "^labels: expected integer class labels"),
    ([0, 1, 2], 2, 3, ValueError, r"^labels: expected shape \(2,\), got \(3,\)"),
    ([[0, 1]], 2, 3, ValueError, r"^labels: expected shape \(2,\), got \(1, 2\)"),
    (0, 1, 3, ValueError, r"^labels: expected shape \(1,\), got \(\)"),
])
def test_bad_labels_are_errors_naming_the_argument(labels, batch, classes, error, match):
    with pytest.raises(error, match=match):
        as_label_array(labels, "labels", batch, classes)


# --- check_shape, check_finite, positive_int ------------------------------------------------

@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3))
def test_check_shape_accepts_exactly_the_expected_shape(shape):
    check_shape(np.zeros(shape), shape, "a")
    check_shape(np.zeros(shape), list(shape), "a")


@pytest.mark.parametrize("shape, expected", [
    ((3,), (1, 3)),     # broadcastable, still an error
    ((1, 3), (3,)),
    ((2, 1), (2, 3)),
    ((), (1,)),
    ((3, 2), (2, 3)),
])
def test_check_shape_never_broadcasts(shape, expected):
    message = rf"^bias: expected shape {re_escape(tuple(expected))}, got {re_escape(shape)}$"
    with pytest.raises(ValueError, match=message):
        check_shape(np.zeros(shape), expected, "bias")


def re_escape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@given(value=hnp.arrays(np.float64, SHAPES, elements=FINITE))
def test_check_finite_passes_finite_arrays(value):
    check_finite(value, "v")
    check_finite(value.astype(np.complex128) * (1 + 1j), "v")


@pytest.mark.parametrize("value", [1, 7, 2**40, np.int64(3), np.uint8(1), np.int32(12)])
def test_positive_int_returns_a_python_int(value):
    result = positive_int(value, "size")
    assert result == value and type(result) is int


@pytest.mark.parametrize("value, error, match", [
    (0, ValueError, r"^size: expected a positive int, got 0$"),
    (-3, ValueError, r"^size: expected a positive int, got -3$"),
    (np.int64(0), ValueError, "^size: expected a positive int, got 0"),
    (True, TypeError, r"^size: expected a positive int, got bool True$"),
    (np.bool_(True), TypeError, "^size: expected a positive int, got bool"),
    (2.0, TypeError, r"^size: expected a positive int, got float 2.0$"),
    ("2", TypeError, r"^size: expected a positive int, got str '2'$"),
    (None, TypeError, "^size: expected a positive int, got NoneType"),
    (np.float64(2.0), TypeError, "^size: expected a positive int, got float64"),
])
def test_positive_int_rejects_bad_values(value, error, match):
    with pytest.raises(error, match=match):
        positive_int(value, "size")


@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_extended_precision_is_refused_not_truncated(dtype):
    if np.dtype(dtype).itemsize <= (16 if np.dtype(dtype).kind == "c" else 8):
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(TypeError, match="x: extended precision .* would be truncated"):
        as_float_array(np.ones(3, dtype=dtype), "x")
