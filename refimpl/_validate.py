"""Input validation shared by every module: clear errors before any arithmetic.

Every public entry point converts its array arguments here. The rules, in one place:

* real inputs of any float or integer dtype become float64 (float32 and float16 are
  *widened*, never truncated); complex inputs become complex128 (the complex step);
* booleans, strings, objects and other non-numeric dtypes are a ``TypeError``;
* NaN or Inf is a ``ValueError`` naming the argument;
* nothing is ever broadcast: shapes are compared exactly by the caller.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_float_array", "as_label_array", "check_shape", "check_finite", "positive_int",
           "check_int", "check_tolerance", "check_seed"]


def as_float_array(value: Any, name: str, *, allow_complex: bool = True) -> np.ndarray:
    """Return ``value`` as a float64 (or complex128) array, or raise naming ``name``.

    The result may be ``value`` itself when it already has the right dtype: callers
    must not write into it (no function in refimpl mutates its inputs).
    """
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name}: expected a numeric array, could not convert ({error})") from None
    kind = array.dtype.kind
    if kind in "fc" and array.dtype.itemsize > (16 if kind == "c" else 8):
        raise TypeError(f"{name}: extended precision {array.dtype} would be truncated to "
                        f"float64; convert it explicitly if that is intended")
    if kind == "c":
        if not allow_complex:
            raise TypeError(f"{name}: expected a real array, got dtype {array.dtype}")
        array = array.astype(np.complex128, copy=False)
    elif kind in "fiu":
        array = array.astype(np.float64, copy=False)
    else:
        raise TypeError(
            f"{name}: expected a numeric (float, integer or complex) array, got dtype {array.dtype}"
        )
    check_finite(array, name)
    return array


def as_label_array(value: Any, name: str, batch: int, classes: int) -> np.ndarray:
    """Integer class labels of shape ``(batch,)`` in ``[0, classes)``, as int64."""
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class labels, got dtype {array.dtype}")
    if array.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},), got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {classes}), got range "
            f"[{array.min()}, {array.max()}]"
        )
    return array.astype(np.int64, copy=False)


def check_shape(array: np.ndarray, expected: tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` unless ``array.shape == expected`` exactly (no broadcasting)."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(array.shape)}")


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` if ``array`` holds NaN or Inf (in the real or imaginary part)."""
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name}: contains {bad} NaN or Inf value(s); all values must be finite")


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """An ``int`` (Python or NumPy integer, never ``bool``) ``>= minimum``, as a Python int.

    ``TypeError`` for a non-integer (a float such as ``3.0`` included), ``ValueError`` below
    ``minimum``; both name the argument.
    """
    wanted = {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(
        minimum, f"an int >= {minimum}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {wanted}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected {wanted}, got {value}")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    """Validate a positive integer hyper-parameter (layer sizes, counts)."""
    return check_int(value, name, minimum=1)


def check_seed(value: Any, name: str = "seed") -> int:
    """A random seed: a non-negative int (what ``np.random.default_rng`` accepts)."""
    return check_int(value, name, minimum=0)


def check_tolerance(value: Any, name: str) -> float:
    """A tolerance: a finite, non-negative real number (int or float, not bool), as a float.

    NaN would make every comparison ``error <= limit`` False *and* hide it when negated; an
    infinite or negative tolerance accepts everything or nothing. All three are refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a finite non-negative number, got "
                        f"{type(value).__name__} {value!r}")
    number = float(value)
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name}: expected a finite non-negative number, got {value!r}")
    return number
