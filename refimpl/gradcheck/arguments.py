"""Argument checks of the gradient checker: every option and parameter before ``f`` is first
called, and every value ``f`` returns, each refused with an error naming the argument."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .._validate import as_float_array, check_int, check_seed, check_tolerance
from .report import METHODS, MODES, TOLERANCES, Tolerance

Params = dict[str, np.ndarray]
GradFunction = Callable[[Params], tuple[Any, Mapping[str, np.ndarray]]]

def _scalar_loss(value: Any, who: str) -> np.ndarray:
    """The loss returned by ``who`` as a 0-d numeric array, or a clear error.

    A loss of shape (1,) or (N,) is refused rather than reduced: summing or taking the first
    entry would check a different function from the one the caller meant.
    """
    array = np.asarray(value)
    if array.dtype.kind not in "fiuc":
        raise TypeError(f"{who}: expected the loss to be a real (or complex) scalar, got "
                        f"{type(value).__name__} {value!r:.80}")
    if array.shape != ():
        raise ValueError(f"{who}: expected the loss to be a scalar (shape ()), got an array "
                         f"of shape {array.shape}")
    return array


def _real_loss(value: Any, who: str) -> float:
    """The real part of the scalar loss ``value`` returned by ``who``."""
    return float(_scalar_loss(value, who).real)


def _imag_loss(value: Any, who: str) -> float:
    """The imaginary part of the complex scalar loss ``value`` returned by ``who``."""
    return float(_complex_loss(value, who).imag)


def _complex_loss(value: Any, who: str) -> np.ndarray:
    """The loss at a complex point, which must itself be complex.

    A real loss there means ``who`` dropped the imaginary part (``float()``, ``np.real``,
    ``abs``): the complex step would then read a derivative of exactly 0 and pass an analytic
    gradient that is wrongly 0. That is refused, never judged.
    """
    array = _scalar_loss(value, who)
    if array.dtype.kind != "c":
        raise TypeError(f"{who}: returned a real loss (dtype {array.dtype}) at complex "
                        f"parameters, so the complex step cannot see its derivative (an "
                        f"imaginary part was dropped: float(), np.real, abs, ...); make the "
                        f"forward pass complex-safe or use method='central'")
    return array


def _pair(result: Any, who: str, call: str, names: str) -> tuple[Any, Any]:
    """Unpack the 2-tuple ``result`` of ``call``, or raise naming ``who``."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        described = (f"a {type(result).__name__} of length {len(result)}"
                     if isinstance(result, (tuple, list)) else
                     f"{type(result).__name__} {result!r:.80}")
        raise TypeError(f"{who}: expected {call} to return a pair {names}, got {described}")
    return result[0], result[1]


def _check_params(params: Mapping[str, Any], argument: str = "params") -> Params:
    """``params`` as a dict of float64 copies, each finite, real and non-empty."""
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"{argument}: expected a non-empty dict of arrays, got "
                        f"{type(params).__name__} {params!r:.80}")
    checked = {}
    for name, value in params.items():
        label = f"{argument}[{name!r}]"
        array = np.array(as_float_array(value, label, allow_complex=False))
        if array.size == 0:
            raise ValueError(f"{label}: expected an array with at least one entry, got shape "
                             f"{array.shape}; a parameter without entries has no gradient "
                             f"to check")
        checked[name] = array
    return checked


def _check_grads(grads: Any, params: Params, who: str = "f") -> Params:
    """The gradients ``who`` returned, as float64 arrays keyed and shaped like ``params``."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"{who}: expected a dict of gradients keyed like the parameters, got "
                        f"{type(grads).__name__} {grads!r:.80}")
    missing = [name for name in params if name not in grads]
    extra = [name for name in grads if name not in params]
    if missing or extra:
        raise ValueError(f"{who}: grads must have exactly the keys of params {list(params)}; "
                         f"missing {missing}, extra {extra}")
    checked = {}
    for name, value in params.items():
        grad = np.asarray(grads[name])
        if grad.dtype.kind not in "fiuc":
            raise TypeError(f"{who}: grads[{name!r}] is not a numeric array (got "
                            f"{type(grads[name]).__name__} of dtype {grad.dtype}); expected "
                            f"shape {value.shape}")
        if grad.shape != value.shape:
            raise ValueError(f"{who}: grads[{name!r}] has shape {grad.shape}, params[{name!r}] "
                             f"has {value.shape}")
        checked[name] = np.asarray(grad.real if grad.dtype.kind == "c" else grad, np.float64)
    return checked


def _check_options(method: Any, mode: Any, names: Any, directions: Any, seed: Any,
                   rtol: Any, atol: Any, params: Params) -> tuple[list[str], int, int, Tolerance]:
    """Validate the options shared by :func:`check_gradients` and :func:`check_vjp`."""
    if not isinstance(method, str) or method not in TOLERANCES:
        raise ValueError(f"method: unknown method {method!r}; expected one of {list(METHODS)}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode: unknown mode {mode!r}; expected one of {list(MODES)}")
    default = TOLERANCES[method]
    tolerance = Tolerance(default.rtol if rtol is None else check_tolerance(rtol, "rtol"),
                          default.atol if atol is None else check_tolerance(atol, "atol"))
    seed = check_seed(seed, "seed")
    directions = check_int(directions, "directions", minimum=1)
    if names is None:
        return list(params), directions, seed, tolerance
    if mode != "full":
        raise ValueError("names: only meaningful with mode='full'")
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"names: expected an iterable of parameter names, got "
                        f"{type(names).__name__} {names!r}")
    names = list(names)
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(f"names: unknown parameters {unknown}; params has {list(params)}")
    return names, directions, seed, tolerance
