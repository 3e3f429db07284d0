"""Input validation shared by every module: clear errors before any arithmetic.

Every public entry point converts its array arguments here. The rules, in one place:

* real inputs of any float or integer dtype become float64 (float32 and float16 are
  *widened*, never truncated); complex inputs become complex128 (the complex step);
* booleans, strings, objects and other non-numeric dtypes are a ``TypeError``;
* NaN or Inf is a ``ValueError`` naming the argument;
* nothing is ever broadcast: shapes are compared exactly by the caller.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["as_float_array", "as_label_array", "as_rectangular", "check_shape",
           "check_finite", "positive_int", "check_int", "check_tolerance", "check_seed",
           "check_array", "check_same_shape", "check_nonempty", "check_real", "check_scalar",
           "check_cache", "check_keys", "check_finite_result", "no_fp_warnings", "did_you_mean"]


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


def as_rectangular(value: Any, name: str, what: str = "integer labels") -> np.ndarray:
    """``value`` (an array or a nested list) as an array, its dtype not yet checked.

    A ragged nested list (rows of different lengths: sequences of unequal lengths) is a
    ``TypeError`` (not an array, as for :func:`as_float_array`) naming ``name``, what was
    expected and the rows' lengths, instead of NumPy's "inhomogeneous shape" (which names
    neither).
    """
    try:
        return np.asarray(value)
    except ValueError:
        lengths = _row_lengths(value)
        raise TypeError(f"{name}: expected a rectangular array of {what}, got a ragged nested "
                         f"list" + (f" (rows of lengths {lengths})" if lengths else "")
                         + "; pad or cut every row to one length") from None


def _row_lengths(value: Any) -> list[Any] | None:
    """The lengths of the rows of a nested list (``None`` for a row without one), for a
    message; ``None`` when ``value`` has no rows."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return None
    try:
        return [len(row) if hasattr(row, "__len__") else None for row in value][:20]
    except TypeError:
        return None


def as_label_array(value: Any, name: str, batch: int, classes: int) -> np.ndarray:
    """Integer class labels of shape ``(batch,)`` in ``[0, classes)``, as int64."""
    array = as_rectangular(value, name)
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
    return _real_number(value, name, "a finite non-negative number", minimum=0.0)


# --- the arguments of the public free functions (O(ndim) checks, no scan of the values) ---------

Shape = tuple[Any, ...]


def _pattern(shape: Shape) -> str:
    """``("N", 4)`` -> ``"(N, 4)"``: a shape pattern as the messages show it."""
    sizes = ["..." if size is Ellipsis else str(size) for size in shape]
    return "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"


def check_array(value: Any, name: str, shape: Shape | None = None) -> np.ndarray:
    """An array argument of a free function, as float64 (real) or complex128 (complex step).

    O(ndim) for float64 / complex128 input: the values are not scanned (the models check
    finiteness once, at their entry). The result may be ``value`` itself: never write into it.

    Parameters
    ----------
    value : ndarray or NumPy scalar
        A list is not silently converted. Its dtype a real or complex number; other real
        dtypes are widened to float64 exactly, complex64 to complex128.
    name : str
        The argument's name, for the message.
    shape : tuple, optional
        None (any), or a pattern with one entry per axis: an int is that size exactly, a
        string (a dimension letter such as ``"N"``) any size, a final ``...`` one or more
        further axes of any size.

    Returns
    -------
    ndarray
        float64 or complex128.

    Raises
    ------
    TypeError
        For a non-array, or a dtype that is not a number (bool, str, object) or is extended
        precision.
    ValueError
        For a shape that does not fit the pattern.
    """
    if isinstance(value, np.generic):   # x[0] + 1e-20j of a 0-d array is a NumPy scalar
        value = np.asarray(value)
    elif not isinstance(value, np.ndarray):
        wanted = "an array" if shape is None else f"an array of shape {_pattern(shape)}"
        raise TypeError(f"{name}: expected {wanted}, got {type(value).__name__}")
    dtype = value.dtype
    if dtype != np.float64 and dtype != np.complex128:
        kind = dtype.kind
        if kind not in "fiuc":
            raise TypeError(f"{name}: expected a numeric (float, integer or complex) array, "
                            f"got dtype {dtype}")
        if dtype.itemsize > (16 if kind == "c" else 8):
            raise TypeError(f"{name}: extended precision {dtype} would be truncated to "
                            f"float64; convert it explicitly if that is intended")
        value = value.astype(np.complex128 if kind == "c" else np.float64)
    if shape is not None:
        actual = value.shape
        rank_differs = (len(actual) < len(shape) if shape and shape[-1] is Ellipsis
                        else len(actual) != len(shape))
        if rank_differs or any(isinstance(size, int) and size != got
                               for size, got in zip(shape, actual, strict=False)):
            raise ValueError(f"{name}: expected shape {_pattern(shape)}, got {actual}")
    return value


def check_same_shape(first: np.ndarray, second: np.ndarray, names: tuple[str, str]) -> None:
    """``ValueError`` unless the two arrays have one shape exactly (nothing is broadcast)."""
    if first.shape != second.shape:
        raise ValueError(f"{names[1]}: expected the shape of {names[0]} {first.shape}, got "
                         f"{second.shape} (nothing is broadcast)")


def check_nonempty(array: np.ndarray, name: str) -> None:
    """``ValueError`` for an array without elements (a mean over none is 0/0)."""
    if array.size == 0:
        raise ValueError(f"{name}: expected at least one element, got shape {array.shape}")


def check_real(value: Any, name: str, minimum: float | None = None,
               below: float | None = None) -> float:
    """A real hyper-parameter (a slope, a strength, a rate) as a float.

    Parameters
    ----------
    value : Any
        A finite int or float (NumPy scalars included), not bool.
    name : str
        The argument's name, for the message.
    minimum : float, optional
        Inclusive lower bound.
    below : float, optional
        Exclusive upper bound (a momentum lies in ``[0, 1)``).

    Returns
    -------
    float

    Raises
    ------
    TypeError
        For a non-number or a bool.
    ValueError
        For NaN, an infinity, or a number outside the bounds.
    """
    if minimum is not None and below is not None:
        wanted = f"a finite real number in [{minimum:g}, {below:g})"
    else:
        wanted = ("a finite real number" + ("" if minimum is None else f" >= {minimum:g}")
                  + ("" if below is None else f" < {below:g}"))
    return _real_number(value, name, wanted, minimum, below)


def _real_number(value: Any, name: str, wanted: str, minimum: float | None = None,
                 below: float | None = None) -> float:
    """``value`` as a finite float in ``[minimum, below)``, or an error saying ``wanted``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name}: expected {wanted}, got {type(value).__name__} {value!r}")
    number = float(value)
    if not np.isfinite(number) or (minimum is not None and number < minimum) or (
            below is not None and number >= below):
        raise ValueError(f"{name}: expected {wanted}, got {value!r}")
    return number


def check_scalar(value: Any, name: str) -> Any:
    """An upstream scalar gradient (``dloss``): a real or complex number, or a 0-d array of
    one (not bool). Returned as is."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        kind = value.dtype.kind
    elif isinstance(value, (int, float, complex, np.number)):
        kind = "c" if isinstance(value, (complex, np.complexfloating)) else "f"
    else:
        kind = ""
    if isinstance(value, (bool, np.bool_)) or kind not in ("f", "i", "u", "c"):
        shape = getattr(value, "shape", None)
        raise TypeError(f"{name}: expected a scalar (a real or complex number), got "
                        f"{type(value).__name__}" + ("" if shape is None else f" of shape {shape}"))
    return value


def check_cache(cache: Any, cache_type: type, name: str) -> None:
    """``TypeError`` unless ``cache`` is what the matching forward function returned."""
    if not isinstance(cache, cache_type):
        raise TypeError(f"{name}: expected the {cache_type.__name__} returned by the forward "
                        f"function, got {type(cache).__name__}")


# --- mappings: configurations and dicts of arrays ----------------------------------------------

def check_keys(mapping: Any, required: Iterable[Any], optional: Iterable[Any] = (),
               what: str = "mapping", explain: Callable[[list[Any]], str] | None = None) -> None:
    """The keys of a dict: every ``required`` key, others only from ``optional``.

    ``TypeError`` for a non-mapping; ``ValueError`` naming the missing and the unexpected keys
    and what was expected: ``"<what>: missing [...]; unexpected [...]; expected exactly
    [...]"``. ``explain(unexpected)`` may add a sentence about the unexpected keys.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what}: expected a dict; {_expected_keys(required, optional)}; got "
                        f"{type(mapping).__name__} {mapping!r:.80}")
    missing = [key for key in required if key not in mapping]
    if not missing and not optional and len(mapping) == len(missing) + len(required):
        return   # every required key present and nothing else (the common case, no sets)
    required, optional = list(required), list(optional)
    allowed = set(required) | set(optional)
    unexpected = [key for key in mapping if key not in allowed]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            note = explain(unexpected) if explain is not None else ""
            parts.append(f"unexpected {unexpected}" + (f" {note}" if note else ""))
        raise ValueError(f"{what}: {'; '.join(parts)}; {_expected_keys(required, optional)}")


def _expected_keys(required: Iterable[Any], optional: Iterable[Any]) -> str:
    required, optional = list(required), list(optional)
    return (f"expected exactly {required}" if not optional else
            f"expected the keys {required} and optionally {optional}")


# --- results ----------------------------------------------------------------------------------

def no_fp_warnings() -> np.errstate:
    """NumPy's overflow, invalid and divide warnings off, as a decorator (``@no_fp_warnings()``)
    or a context manager, for the public computations of the models: every layer output, loss
    and gradient is checked by :func:`check_finite_result` instead, whose ``FloatingPointError``
    names the layer (a warning names none, and lets the NaN through). A new ``errstate`` per
    call: one instance cannot be entered twice."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def check_finite_result(value: Any, where: str | Callable[[], str]) -> None:
    """``FloatingPointError`` if a value computed from finite inputs holds inf or NaN (in the
    real or the imaginary part): an overflow, or inf - inf, inside the computation.

    ``where`` names the computation (a callable is only called to build the message).
    """
    # Fast path: the sum of the values is finite only if every value is (inf and NaN absorb
    # anything added to them), and ``total - total == 0`` is the cheapest test of that for a
    # real or complex scalar. One reduction without a temporary array; an inf or NaN total
    # may still be an overflow of finite values, so it is then decided element by element.
    # (Called under no_fp_warnings: an overflowing sum must not warn.)
    total = np.add.reduce(value, axis=None)
    if not total - total == 0 and not np.isfinite(value).all():
        where = where() if callable(where) else where
        raise FloatingPointError(f"{where} contains inf/NaN from finite inputs")


# --- names ------------------------------------------------------------------------------------

def did_you_mean(given: Any, known: Iterable[str], count: int = 3) -> str:
    """``" (did you mean 'a' or 'b'?)"`` for the known names closest to ``given`` (those it
    begins, then the closest by :func:`difflib.get_close_matches`), or ``""`` when none is
    close: the tail of an "unknown name" message.

    Examples
    --------
    >>> did_you_mean("mlp-tanh", ["mlp-tanh-ce", "mlp-relu-ce", "cnn-relu-maxpool"])
    " (did you mean 'mlp-tanh-ce'?)"
    >>> did_you_mean("--jsn", ["--json", "--case", "--list"])
    " (did you mean '--json'?)"
    >>> did_you_mean("zzz", ["mlp-tanh-ce"])
    ''
    """
    if not isinstance(given, str) or not given:
        return ""
    known = list(dict.fromkeys(str(name) for name in known))
    begun = [name for name in known if name.startswith(given) and name != given]
    close = difflib.get_close_matches(given, known, n=count, cutoff=0.75)
    found = list(dict.fromkeys(begun + close))
    if len(begun) > count:   # a prefix many names share: its first few say the pattern
        found = begun[:count]
    found = found[:count]
    if not found:
        return ""
    return f" (did you mean {' or '.join(repr(name) for name in found)}?)"
