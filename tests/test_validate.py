"""Tests of refimpl/_validate.py: conversions and clear errors before any arithmetic."""

from __future__ import annotations

import datetime
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl._validate import (
    as_float_array,
    as_label_array,
    check_array,
    check_cache,
    check_finite,
    check_finite_result,
    check_keys,
    check_nonempty,
    check_real,
    check_same_shape,
    check_scalar,
    check_shape,
    did_you_mean,
    no_fp_warnings,
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
    with pytest.raises(TypeError, match=r"^labels: expected a rectangular array of integer "
                                        r"labels, got a ragged nested list \(rows of lengths "
                                        r"\[2, 1\]\)"):
        as_label_array([[1, 2], [3]], "labels", 2, 4)


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


# --- check_array: the arguments of the free functions, O(ndim) ---------------------------------

@pytest.mark.parametrize("value, shape, error, match", [
    ([1.0, 2.0], None, TypeError, r"x: expected an array, got list"),
    (3.0, ("N",), TypeError, r"x: expected an array of shape \(N,\), got float"),
    (np.ones(3, bool), None, TypeError, r"x: expected a numeric .* got dtype bool"),
    (np.array(["a"]), None, TypeError, r"x: expected a numeric .* got dtype <U1"),
    (np.ones((2, 3)), ("N",), ValueError, r"x: expected shape \(N,\), got \(2, 3\)"),
    (np.ones((2, 3)), ("N", 4), ValueError, r"x: expected shape \(N, 4\), got \(2, 3\)"),
    (np.ones((2, 1)), (2, 3), ValueError, r"x: expected shape \(2, 3\), got \(2, 1\)"),
    (np.ones(3), ("N", ...), ValueError, r"x: expected shape \(N, \.\.\.\), got \(3,\)"),
    (np.ones(()), ("N",), ValueError, r"x: expected shape \(N,\), got \(\)"),
])
def test_check_array_rejects(value, shape, error, match):
    with pytest.raises(error, match=match):
        check_array(value, "x", shape)


@pytest.mark.parametrize("value, shape", [
    (np.ones((2, 3)), ("N", 3)), (np.ones((2, 3)), None), (np.ones((2, 3, 4)), ("N", ...)),
    (np.ones((2, 3)), ("N", ...)), (np.ones(()), ()), (np.float64(2.0), ()),
])
def test_check_array_accepts_and_returns_float64_unchanged(value, shape):
    result = check_array(value, "x", shape)
    assert result.dtype == np.float64 and result.shape == np.shape(value)
    if isinstance(value, np.ndarray):
        assert result is value   # no copy for float64: O(1)


def test_check_array_widens_and_never_scans_the_values():
    assert check_array(np.ones(2, np.float32), "x").dtype == np.float64
    assert check_array(np.ones(2, np.complex64), "x").dtype == np.complex128
    assert check_array(np.complex128(1j), "x").dtype == np.complex128
    nan = np.array([np.nan, np.inf])   # finiteness is the models' check, once, on entry
    assert check_array(nan, "x") is nan


def test_check_same_shape_and_nonempty():
    check_same_shape(np.ones((2, 3)), np.zeros((2, 3)), ("a", "b"))
    with pytest.raises(ValueError, match=r"b: expected the shape of a \(2, 3\), got \(3,\)"):
        check_same_shape(np.ones((2, 3)), np.zeros(3), ("a", "b"))
    check_nonempty(np.ones((1, 1)), "x")
    with pytest.raises(ValueError, match=r"x: expected at least one element, got shape \(2, 0\)"):
        check_nonempty(np.ones((2, 0)), "x")


@pytest.mark.parametrize("value, minimum, error", [
    (float("nan"), None, ValueError), (float("inf"), None, ValueError), (-1e-300, 0, ValueError),
    (True, None, TypeError), ("1", None, TypeError), (1j, None, TypeError), (None, 0, TypeError),
])
def test_check_real_rejects(value, minimum, error):
    with pytest.raises(error, match="lam: expected a finite real number"):
        check_real(value, "lam", minimum)


def test_check_real_accepts_and_returns_a_float():
    assert check_real(np.int64(3), "s") == 3.0 and isinstance(check_real(3, "s"), float)
    assert check_real(0, "lam", minimum=0) == 0.0 and check_real(-2.5, "s") == -2.5
    assert check_real(0.999, "momentum", minimum=0, below=1) == 0.999


@pytest.mark.parametrize("value", [1, 1.0, 2.5, -0.1])
def test_check_real_bounds_are_half_open(value):
    with pytest.raises(ValueError, match=r"momentum: expected a finite real number in \[0, 1\), "
                                         rf"got {value!r}"):
        check_real(value, "momentum", minimum=0, below=1)


@pytest.mark.parametrize("value", [np.ones(2), "1", None, True, [1.0], np.array(True)])
def test_check_scalar_rejects(value):
    with pytest.raises(TypeError, match="dloss: expected a scalar"):
        check_scalar(value, "dloss")


@pytest.mark.parametrize("value", [1, 2.5, 1j, np.float64(2), np.array(3.0), np.array(1j)])
def test_check_scalar_accepts(value):
    assert check_scalar(value, "dloss") is value


def test_check_cache():
    check_cache((1, 2), tuple, "cache")
    with pytest.raises(TypeError, match=r"f: cache: expected the tuple returned by the forward "
                                        r"function, got NoneType"):
        check_cache(None, tuple, "f: cache")


# --- check_keys: the one missing/unexpected keys message ---------------------------------------

@pytest.mark.parametrize("mapping, optional, error, match", [
    ({}, (), ValueError, r"^d: missing \['a', 'b'\]; expected exactly \['a', 'b'\]$"),
    ({"a": 1, "b": 2, "c": 3}, (), ValueError,
     r"^d: unexpected \['c'\]; expected exactly \['a', 'b'\]$"),
    ({"a": 1, "c": 3}, ("o",), ValueError,
     r"^d: missing \['b'\]; unexpected \['c'\]; expected the keys \['a', 'b'\] and "
     r"optionally \['o'\]$"),
    ({"a": 1, "a2": 1}, (), ValueError, r"^d: missing \['b'\]; unexpected \['a2'\]"),
    (["a", "b"], (), TypeError, r"^d: expected a dict; expected exactly \['a', 'b'\]; got list"),
])
def test_check_keys_names_missing_and_unexpected_keys(mapping, optional, error, match):
    with pytest.raises(error, match=match):
        check_keys(mapping, ["a", "b"], optional, what="d")


def test_check_keys_accepts_and_explains():
    check_keys({"b": 1, "a": 2}, ["a", "b"], what="d")
    check_keys({"b": 1, "a": 2, "o": 3}, ["a", "b"], ["o", "p"], what="d")
    with pytest.raises(ValueError, match=r"unexpected \['c'\] \(c is shared\); expected"):
        check_keys({"a": 1, "b": 1, "c": 1}, ["a", "b"], what="d",
                   explain=lambda extra: f"({extra[0]} is shared)")


# --- check_finite_result -----------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    np.array([1.0, np.inf]), np.array([np.nan, 1.0]), np.array([np.inf, -np.inf]),
    np.array([1.0, complex(0, np.inf)]), np.array([complex(np.nan, 0)]), float("inf"),
    np.full((3, 3), 1e308).astype(complex) * np.array([1, 1, complex(np.nan, 0)]),
])
def test_check_finite_result_raises_on_inf_or_nan_in_either_part(value):
    with no_fp_warnings(), pytest.raises(FloatingPointError,
                                         match=r"^layer 'fc' \(Dense\): output contains "
                                               r"inf/NaN from finite inputs$"):
        check_finite_result(value, lambda: "layer 'fc' (Dense): output")


@pytest.mark.parametrize("value", [
    np.full(4, 1e308), np.full(4, -1e308),   # their sum overflows: decided element by element
    np.array([1e308, -1e308, 1e308]), np.full(3, 1e308 + 1e308j), 1.5, 2 + 3j, np.ones((0,)),
])
def test_check_finite_result_accepts_finite_values_whose_sum_overflows(value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with no_fp_warnings():
            check_finite_result(value, "never shown")


# --- did_you_mean ------------------------------------------------------------------------------

CASE_NAMES = ["mlp-tanh-ce", "mlp-relu-ce", "tied-soft-l2", "tied-soft-l1", "tied-hard",
              "sequence-tied-lm", "sequence-untied-lm"]


@pytest.mark.parametrize("given_name, expected", [
    ("mlp-tanh", " (did you mean 'mlp-tanh-ce'?)"),                  # a prefix
    ("tied-sof-l2", " (did you mean 'tied-soft-l2' or 'tied-soft-l1'"),  # a typo: closest first
    ("mlp-tahn-ce", " (did you mean 'mlp-tanh-ce'"),
    ("tied", " (did you mean 'tied-soft-l2' or 'tied-soft-l1' or 'tied-hard'?)"),  # 3 at most
    ("no-such-thing", ""),
    ("", ""),
    (3, ""),
])
def test_did_you_mean_offers_the_closest_names(given_name, expected):
    found = did_you_mean(given_name, CASE_NAMES)
    assert found.startswith(expected) and (expected or not found)
