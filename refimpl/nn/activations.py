"""Element-wise activations as forward/backward pairs.

Every forward works unchanged on complex128 input so the complex step applies: a branch is
taken on the *real part* only (``x.real > 0`` as a mask, never as a value), and no ``abs``
or ``conj`` is used. Shapes: any; ``out`` and ``dx`` have the shape of ``x``.

Kinks (documented, and tested): at exactly ``x == 0``

* ``relu'(0) = 0`` (PyTorch's ``threshold_backward``: the gradient passes only where x > 0);
* ``leaky_relu'(0) = negative_slope`` (PyTorch: the slope 1 applies only where x > 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._validate import check_array, check_cache, check_real
from .base import ParameterFreeLayer, register

__all__ = [
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Identity",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "softplus_forward", "softplus_backward", "identity_forward", "identity_backward",
]


class MaskCache(NamedTuple):
    positive: np.ndarray  # bool, shape of x: where Re x > 0


class SlopeCache(NamedTuple):
    positive: np.ndarray  # bool, shape of x
    negative_slope: float


class OutputCache(NamedTuple):
    out: np.ndarray  # the forward output, from which the derivative is computed


class InputCache(NamedTuple):
    x: np.ndarray


class ShapeCache(NamedTuple):
    x_shape: tuple[int, ...]  # all the identity's backward needs: dout's expected shape


# Every forward checks that x is a numeric array (any shape), every backward that the cache
# is its forward's and that dout has x's shape exactly: O(ndim), no scan of the values.

def _dout(dout: np.ndarray, cache: tuple, cache_type: type, who: str) -> np.ndarray:
    """dout checked against the cache, whose first field is x's shape or an array of it."""
    check_cache(cache, cache_type, f"{who}: cache")
    first = cache[0]
    return check_array(dout, f"{who}: dout", first if isinstance(first, tuple) else first.shape)


# --- ReLU -----------------------------------------------------------------------------------

def relu_forward(x: np.ndarray) -> tuple[np.ndarray, MaskCache]:
    """``max(x, 0)``, branching on Re x."""
    x = check_array(x, "relu_forward: x")
    return _relu_forward(x)


def _relu_forward(x: np.ndarray) -> tuple[np.ndarray, MaskCache]:
    """:func:`relu_forward` without the argument checks (the model checked them once)."""
    positive = x.real > 0
    return np.where(positive, x, 0), MaskCache(positive)


def relu_backward(dout: np.ndarray, cache: MaskCache) -> np.ndarray:
    """``dout * [x > 0]``: relu'(0) = 0."""
    dout = _dout(dout, cache, MaskCache, "relu_backward")
    return _relu_backward(dout, cache)


def _relu_backward(dout: np.ndarray, cache: MaskCache) -> np.ndarray:
    """:func:`relu_backward` without the argument checks (the model checked them once)."""
    return np.where(cache.positive, dout, 0)


# --- LeakyReLU ------------------------------------------------------------------------------

def leaky_relu_forward(x: np.ndarray, negative_slope: float) -> tuple[np.ndarray, SlopeCache]:
    """``x`` where Re x > 0, else ``negative_slope * x`` (negative_slope: a finite real)."""
    x = check_array(x, "leaky_relu_forward: x")
    negative_slope = check_real(negative_slope, "leaky_relu_forward: negative_slope")
    return _leaky_relu_forward(x, negative_slope)


def _leaky_relu_forward(x: np.ndarray, negative_slope: float) -> tuple[np.ndarray, SlopeCache]:
    """:func:`leaky_relu_forward` without the argument checks (the model checked them once)."""
    positive = x.real > 0
    return np.where(positive, x, negative_slope * x), SlopeCache(positive, negative_slope)


def leaky_relu_backward(dout: np.ndarray, cache: SlopeCache) -> np.ndarray:
    """``dout`` where x > 0, else ``negative_slope * dout``: the derivative at 0 is the slope."""
    dout = _dout(dout, cache, SlopeCache, "leaky_relu_backward")
    return _leaky_relu_backward(dout, cache)


def _leaky_relu_backward(dout: np.ndarray, cache: SlopeCache) -> np.ndarray:
    """:func:`leaky_relu_backward` without the argument checks (the model checked them once)."""
    return np.where(cache.positive, dout, cache.negative_slope * dout)


# --- Tanh -----------------------------------------------------------------------------------

def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, OutputCache]:
    x = check_array(x, "tanh_forward: x")
    return _tanh_forward(x)


def _tanh_forward(x: np.ndarray) -> tuple[np.ndarray, OutputCache]:
    """:func:`tanh_forward` without the argument checks (the model checked them once)."""
    out = np.tanh(x)
    return out, OutputCache(out)


def tanh_backward(dout: np.ndarray, cache: OutputCache) -> np.ndarray:
    """tanh' = 1 - tanh^2, from the cached output."""
    dout = _dout(dout, cache, OutputCache, "tanh_backward")
    return _tanh_backward(dout, cache)


def _tanh_backward(dout: np.ndarray, cache: OutputCache) -> np.ndarray:
    """:func:`tanh_backward` without the argument checks (the model checked them once)."""
    return dout * (1 - cache.out * cache.out)


# --- Sigmoid --------------------------------------------------------------------------------

def _stable_sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-s x) with s = sign(Re x) never overflows: its real exponent is <= 0.
    # For Re x >= 0: 1 / (1 + e^-x); otherwise e^x / (1 + e^x). Same function, no overflow.
    sign = np.where(x.real >= 0, 1.0, -1.0)
    z = np.exp(-sign * x)
    return np.where(sign > 0, 1 / (1 + z), z / (1 + z))


def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, OutputCache]:
    """``1 / (1 + exp(-x))``, evaluated without overflow for any finite x."""
    x = check_array(x, "sigmoid_forward: x")
    return _sigmoid_forward(x)


def _sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, OutputCache]:
    """:func:`sigmoid_forward` without the argument checks (the model checked them once)."""
    out = _stable_sigmoid(x)
    return out, OutputCache(out)


def sigmoid_backward(dout: np.ndarray, cache: OutputCache) -> np.ndarray:
    """sigma' = sigma (1 - sigma)."""
    dout = _dout(dout, cache, OutputCache, "sigmoid_backward")
    return _sigmoid_backward(dout, cache)


def _sigmoid_backward(dout: np.ndarray, cache: OutputCache) -> np.ndarray:
    """:func:`sigmoid_backward` without the argument checks (the model checked them once)."""
    return dout * cache.out * (1 - cache.out)


# --- Softplus -------------------------------------------------------------------------------

def softplus_forward(x: np.ndarray) -> tuple[np.ndarray, InputCache]:
    """``log(1 + exp(x))`` exactly (no linear threshold, unlike PyTorch's default of 20).

    Evaluated as ``max(x, 0) + log1p(exp(-|x|))`` with ``|x|`` written ``s * x``,
    ``s = sign(Re x)``, so that it stays complex-step safe and never overflows.
    """
    x = check_array(x, "softplus_forward: x")
    return _softplus_forward(x)


def _softplus_forward(x: np.ndarray) -> tuple[np.ndarray, InputCache]:
    """:func:`softplus_forward` without the argument checks (the model checked them once)."""
    positive = x.real >= 0
    sign = np.where(positive, 1.0, -1.0)
    out = np.where(positive, x, 0) + np.log1p(np.exp(-sign * x))
    return out, InputCache(x)


def softplus_backward(dout: np.ndarray, cache: InputCache) -> np.ndarray:
    """softplus' = sigmoid."""
    dout = _dout(dout, cache, InputCache, "softplus_backward")
    return _softplus_backward(dout, cache)


def _softplus_backward(dout: np.ndarray, cache: InputCache) -> np.ndarray:
    """:func:`softplus_backward` without the argument checks (the model checked them once)."""
    return dout * _stable_sigmoid(cache.x)


# --- Identity -------------------------------------------------------------------------------

def identity_forward(x: np.ndarray) -> tuple[np.ndarray, ShapeCache]:
    x = check_array(x, "identity_forward: x")
    return _identity_forward(x)


def _identity_forward(x: np.ndarray) -> tuple[np.ndarray, ShapeCache]:
    """:func:`identity_forward` without the argument checks (the model checked them once)."""
    return x, ShapeCache(x.shape)


def identity_backward(dout: np.ndarray, cache: ShapeCache) -> np.ndarray:
    dout = _dout(dout, cache, ShapeCache, "identity_backward")
    return _identity_backward(dout, cache)


def _identity_backward(dout: np.ndarray, cache: ShapeCache) -> np.ndarray:
    """:func:`identity_backward` without the argument checks (the model checked them once)."""
    return dout


# --- Layer specs ----------------------------------------------------------------------------

class _ElementwiseLayer(ParameterFreeLayer):
    """A parameter-free layer spec over one forward/backward pair of unchecked free functions
    (the model checks its input once, at its entry)."""

    #: ``(forward(x) -> (out, cache), backward(dout, cache) -> dx)``, held in a tuple so that
    #: the functions are not bound as methods.
    functions: ClassVar[tuple[Callable[..., Any], Callable[..., Any]]]

    def forward(self, x, params):
        return self.functions[0](x)

    def backward(self, dout, cache):
        return self.functions[1](dout, cache), {}


def _elementwise_layer(name: str, forward: Callable[..., Any], backward: Callable[..., Any],
                       doc: str, selects: bool = False) -> type:
    """A registered, frozen :class:`_ElementwiseLayer` class called ``name``.

    ``selects``: every output element is an input element or a zero, and every element of
    the input gradient one of ``dout`` or a zero (see :class:`~refimpl.nn.base.Layer`).
    """
    namespace = {"__doc__": doc, "__module__": __name__, "__qualname__": name,
                 "functions": (forward, backward), "output_selects_input": selects,
                 "input_gradient_selects_dout": selects}
    return register(dataclass(frozen=True)(type(name, (_ElementwiseLayer,), namespace)))


ReLU = _elementwise_layer("ReLU", _relu_forward, _relu_backward,
                          "``max(x, 0)``; relu'(0) = 0.", selects=True)
Tanh = _elementwise_layer("Tanh", _tanh_forward, _tanh_backward, "``tanh(x)``.")
Sigmoid = _elementwise_layer("Sigmoid", _sigmoid_forward, _sigmoid_backward,
                             "``1 / (1 + exp(-x))``.")
Softplus = _elementwise_layer(
    "Softplus", _softplus_forward, _softplus_backward,
    "``log(1 + exp(x))`` exactly (PyTorch's beta=1 without its linear threshold).")
Identity = _elementwise_layer("Identity", _identity_forward, _identity_backward,
                              "``x`` unchanged.", selects=True)


@register
@dataclass(frozen=True)
class LeakyReLU(ParameterFreeLayer):
    """``x`` for x > 0, ``negative_slope * x`` otherwise; derivative at 0 = negative_slope."""

    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        # Any real number, NumPy scalars included; bools are not numbers here.
        object.__setattr__(self, "negative_slope",
                           check_real(self.negative_slope, "negative_slope"))

    def forward(self, x, params):
        return _leaky_relu_forward(x, self.negative_slope)

    def backward(self, dout, cache):
        return _leaky_relu_backward(dout, cache), {}
