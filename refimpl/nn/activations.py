"""Element-wise activations as forward/backward pairs.

Every forward works unchanged on complex128 input so the complex step applies: a branch is
taken on the *real part* only (``x.real > 0`` as a mask, never as a value), and no ``abs``
or ``conj`` is used. Shapes: any; ``out`` and ``dx`` have the shape of ``x``.

Kinks (documented, and tested): at exactly ``x == 0``

* ``relu'(0) = 0`` (PyTorch's ``threshold_backward``: the gradient passes only where x > 0);
* ``leaky_relu'(0) = negative_slope`` (PyTorch: the slope 1 applies only where x > 0).

Second order. Beside each pair, ``*_jvp(x_dot, cache) -> (out_dot, tangent_cache)`` is the
forward-mode derivative ``out_dot = act'(x) x_dot``, and ``*_backward_jvp(dout, dout_dot,
cache, tangent_cache) -> dx_dot`` the directional derivative of the backward pass
``dx = dout act'(x)`` (Pearlmutter's R-operator)::

    dx_dot = dout_dot act'(x) + dout act''(x) x_dot

=========  ====================  ===============================
act        act'(x)               act''(x)
=========  ====================  ===============================
relu       [x > 0]               0 (0 at the kink too)
leaky      1 or negative_slope   0 (0 at the kink too)
tanh       1 - t^2               -2 t (1 - t^2),  t = tanh x
sigmoid    s (1 - s)             s (1 - s) (1 - 2 s),  s = sigma(x)
softplus   s                     s (1 - s),  s = sigma(x)
identity   1                     0
=========  ====================  ===============================

At the kink the JVP takes the backward pass's one-sided derivative (relu'(0) = 0,
leaky_relu'(0) = negative_slope), so ``<jvp(x_dot), u> = <x_dot, backward(u)>`` holds at every
point; the piecewise-linear activations have a zero second derivative on both sides of their
kink, and it is taken 0 at the kink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._validate import check_array, check_cache, check_real
from .base import InputTangentCache, ParameterFreeLayer, register

__all__ = [
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Identity",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "softplus_forward", "softplus_backward", "identity_forward", "identity_backward",
    "relu_jvp", "relu_backward_jvp", "leaky_relu_jvp", "leaky_relu_backward_jvp",
    "tanh_jvp", "tanh_backward_jvp", "sigmoid_jvp", "sigmoid_backward_jvp",
    "softplus_jvp", "softplus_backward_jvp", "identity_jvp", "identity_backward_jvp",
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


def _x_dot(x_dot: np.ndarray, cache: tuple, cache_type: type, who: str) -> np.ndarray:
    """x_dot checked against the cache: x's shape exactly (a tangent of the input)."""
    check_cache(cache, cache_type, f"{who}: cache")
    first = cache[0]
    return check_array(x_dot, f"{who}: x_dot",
                       first if isinstance(first, tuple) else first.shape)


def _tangent_arguments(dout: np.ndarray, dout_dot: np.ndarray, cache: tuple,
                       tangent_cache: InputTangentCache, cache_type: type, who: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """dout and dout_dot of x's shape, the forward's cache and the jvp's tangent cache."""
    dout = _dout(dout, cache, cache_type, who)
    dout_dot = check_array(dout_dot, f"{who}: dout_dot", dout.shape)
    check_cache(tangent_cache, InputTangentCache, f"{who}: tangent_cache")
    check_array(tangent_cache.x_dot, f"{who}: tangent_cache.x_dot", dout.shape)
    return dout, dout_dot


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


def relu_jvp(x_dot: np.ndarray, cache: MaskCache
             ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = x_dot * [x > 0]``: the tangent passes where the gradient does (relu'(0) = 0).

    Returns ``(out_dot, tangent_cache)``, ``out_dot`` of x's shape.
    """
    return _relu_jvp(_x_dot(x_dot, cache, MaskCache, "relu_jvp"), cache)


def _relu_jvp(x_dot, cache):
    return np.where(cache.positive, x_dot, 0), InputTangentCache(x_dot)


def relu_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: MaskCache,
                      tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = dout_dot * [x > 0]``: relu'' = 0 on both sides of the kink (0 at it)."""
    dout, dout_dot = _tangent_arguments(dout, dout_dot, cache, tangent_cache, MaskCache,
                                        "relu_backward_jvp")
    return _relu_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _relu_backward_jvp(dout, dout_dot, cache, tangent_cache):
    return np.where(cache.positive, dout_dot, 0)


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


def leaky_relu_jvp(x_dot: np.ndarray, cache: SlopeCache
                   ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = x_dot`` where x > 0, else ``negative_slope * x_dot`` (the slope at 0)."""
    return _leaky_relu_jvp(_x_dot(x_dot, cache, SlopeCache, "leaky_relu_jvp"), cache)


def _leaky_relu_jvp(x_dot, cache):
    return _leaky_relu_backward(x_dot, cache), InputTangentCache(x_dot)


def leaky_relu_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: SlopeCache,
                            tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot`` = the backward pass of ``dout_dot``: the second derivative is 0 on both
    sides of the kink (0 at it)."""
    dout, dout_dot = _tangent_arguments(dout, dout_dot, cache, tangent_cache, SlopeCache,
                                        "leaky_relu_backward_jvp")
    return _leaky_relu_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _leaky_relu_backward_jvp(dout, dout_dot, cache, tangent_cache):
    return _leaky_relu_backward(dout_dot, cache)


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


def tanh_jvp(x_dot: np.ndarray, cache: OutputCache
             ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = (1 - t^2) x_dot``, t = tanh x from the cache."""
    return _tanh_jvp(_x_dot(x_dot, cache, OutputCache, "tanh_jvp"), cache)


def _tanh_jvp(x_dot, cache):
    return _tanh_backward(x_dot, cache), InputTangentCache(x_dot)


def tanh_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: OutputCache,
                      tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = dout_dot (1 - t^2) + dout (-2 t) t_dot`` with ``t_dot = (1 - t^2) x_dot``:
    the derivative of ``1 - t^2`` along the tangent is ``-2 t t_dot``."""
    dout, dout_dot = _tangent_arguments(dout, dout_dot, cache, tangent_cache, OutputCache,
                                        "tanh_backward_jvp")
    return _tanh_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _tanh_backward_jvp(dout, dout_dot, cache, tangent_cache):
    t = cache.out
    slope = 1 - t * t                                    # act'(x)
    t_dot = slope * tangent_cache.x_dot                  # the output's tangent
    return dout_dot * slope - 2 * dout * t * t_dot       # term 1 + term 2 (act'')


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


def sigmoid_jvp(x_dot: np.ndarray, cache: OutputCache
                ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = s (1 - s) x_dot``, s = sigma(x) from the cache."""
    return _sigmoid_jvp(_x_dot(x_dot, cache, OutputCache, "sigmoid_jvp"), cache)


def _sigmoid_jvp(x_dot, cache):
    return _sigmoid_backward(x_dot, cache), InputTangentCache(x_dot)


def sigmoid_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: OutputCache,
                         tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = dout_dot s (1 - s) + dout s (1 - s) (1 - 2 s) x_dot``: the derivative of
    ``s (1 - s)`` is ``(1 - 2 s) s'``."""
    dout, dout_dot = _tangent_arguments(dout, dout_dot, cache, tangent_cache, OutputCache,
                                        "sigmoid_backward_jvp")
    return _sigmoid_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _sigmoid_backward_jvp(dout, dout_dot, cache, tangent_cache):
    s = cache.out
    slope = s * (1 - s)                                                   # act'(x)
    return dout_dot * slope + dout * (slope * (1 - 2 * s)) * tangent_cache.x_dot


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


def softplus_jvp(x_dot: np.ndarray, cache: InputCache
                 ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = sigma(x) x_dot``."""
    return _softplus_jvp(_x_dot(x_dot, cache, InputCache, "softplus_jvp"), cache)


def _softplus_jvp(x_dot, cache):
    return _softplus_backward(x_dot, cache), InputTangentCache(x_dot)


def softplus_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: InputCache,
                          tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = dout_dot s + dout s (1 - s) x_dot``, s = sigma(x): softplus'' = sigma'."""
    dout, dout_dot = _tangent_arguments(dout, dout_dot, cache, tangent_cache, InputCache,
                                        "softplus_backward_jvp")
    return _softplus_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _softplus_backward_jvp(dout, dout_dot, cache, tangent_cache):
    s = _stable_sigmoid(cache.x)
    return dout_dot * s + dout * (s * (1 - s)) * tangent_cache.x_dot


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


def identity_jvp(x_dot: np.ndarray, cache: ShapeCache
                 ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = x_dot``."""
    return _identity_jvp(_x_dot(x_dot, cache, ShapeCache, "identity_jvp"), cache)


def _identity_jvp(x_dot, cache):
    return x_dot, InputTangentCache(x_dot)


def identity_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: ShapeCache,
                          tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot = dout_dot`` (a linear map: no second-order term)."""
    dout, dout_dot = _tangent_arguments(dout, dout_dot, cache, tangent_cache, ShapeCache,
                                        "identity_backward_jvp")
    return _identity_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _identity_backward_jvp(dout, dout_dot, cache, tangent_cache):
    return dout_dot


# --- Layer specs ----------------------------------------------------------------------------

class _ElementwiseLayer(ParameterFreeLayer):
    """A parameter-free layer spec over one forward/backward pair of unchecked free functions
    (the model checks its input once, at its entry)."""

    #: ``(forward(x) -> (out, cache), backward(dout, cache) -> dx)``, held in a tuple so that
    #: the functions are not bound as methods.
    functions: ClassVar[tuple[Callable[..., Any], Callable[..., Any]]]
    #: ``(jvp(x_dot, cache) -> (out_dot, tangent_cache), backward_jvp(dout, dout_dot, cache,
    #: tangent_cache) -> dx_dot)``, unchecked likewise.
    tangent_functions: ClassVar[tuple[Callable[..., Any], Callable[..., Any]]]

    def forward(self, x, params):
        return self.functions[0](x)

    def backward(self, dout, cache):
        return self.functions[1](dout, cache), {}

    def jvp(self, x_dot, params_dot, cache):
        return self.tangent_functions[0](x_dot, cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return self.tangent_functions[1](dout, dout_dot, cache, tangent_cache), {}


def _elementwise_layer(name: str, forward: Callable[..., Any], backward: Callable[..., Any],
                       doc: str, selects: bool = False,
                       tangents: tuple[Callable[..., Any], Callable[..., Any]] = ()) -> type:
    """A registered, frozen :class:`_ElementwiseLayer` class called ``name``.

    ``selects``: every output element is an input element or a zero, and every element of
    the input gradient one of ``dout`` or a zero (see :class:`~refimpl.nn.base.Layer`).
    ``tangents``: the unchecked ``(jvp, backward_jvp)`` pair of second order.
    """
    namespace = {"__doc__": doc, "__module__": __name__, "__qualname__": name,
                 "functions": (forward, backward), "output_selects_input": selects,
                 "input_gradient_selects_dout": selects, "tangent_functions": tangents}
    return register(dataclass(frozen=True)(type(name, (_ElementwiseLayer,), namespace)))


ReLU = _elementwise_layer("ReLU", _relu_forward, _relu_backward,
                          "``max(x, 0)``; relu'(0) = 0.", selects=True,
                          tangents=(_relu_jvp, _relu_backward_jvp))
Tanh = _elementwise_layer("Tanh", _tanh_forward, _tanh_backward, "``tanh(x)``.",
                          tangents=(_tanh_jvp, _tanh_backward_jvp))
Sigmoid = _elementwise_layer("Sigmoid", _sigmoid_forward, _sigmoid_backward,
                             "``1 / (1 + exp(-x))``.",
                             tangents=(_sigmoid_jvp, _sigmoid_backward_jvp))
Softplus = _elementwise_layer(
    "Softplus", _softplus_forward, _softplus_backward,
    "``log(1 + exp(x))`` exactly (PyTorch's beta=1 without its linear threshold).",
    tangents=(_softplus_jvp, _softplus_backward_jvp))
Identity = _elementwise_layer("Identity", _identity_forward, _identity_backward,
                              "``x`` unchanged.", selects=True,
                              tangents=(_identity_jvp, _identity_backward_jvp))


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

    def jvp(self, x_dot, params_dot, cache):
        return _leaky_relu_jvp(x_dot, cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return _leaky_relu_backward_jvp(dout, dout_dot, cache, tangent_cache), {}
