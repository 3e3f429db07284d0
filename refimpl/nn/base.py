"""The layer-spec protocol that :class:`refimpl.nn.Sequential` composes.

A layer spec is a small frozen dataclass holding hyper-parameters only (no arrays, no
state). The maths lives in free ``*_forward`` / ``*_backward`` functions beside each spec;
the spec's methods are one-line adapters to them, so ``Sequential`` can treat all layers
alike:

* ``parameter_shapes()`` -> ``{"weight": shape, ...}`` with *local* names; ``Sequential``
  prefixes them with the layer's name (``"fc1.weight"``);
* ``output_shape(input_shape)`` validates an input shape (batch first) and returns the
  output shape *before any arithmetic*, raising ``ValueError`` on a mismatch;
* ``init_parameters(rng)`` -> local parameter dict (float64);
* ``forward(x, params) -> (out, cache)`` and ``backward(dout, cache) -> (dx, grads)``
  with ``grads`` keyed by local name;
* second order (:mod:`refimpl.hessian`): ``jvp(x_dot, params_dot, cache) -> (out_dot,
  tangent_cache)``, the forward-mode derivative along the tangents ``x_dot`` (None: a zero
  tangent, the data of a model) and ``params_dot`` (local names), and
  ``backward_jvp(dout, dout_dot, cache, tangent_cache) -> (dx_dot, grads_dot)``, the
  directional derivative of ``backward`` (Pearlmutter's R-operator): the backward pass of
  ``dout_dot`` plus the change of the backward pass of ``dout`` along the tangents.

Legend: ``N`` batch, ``D`` features, ``C`` channels, ``H``/``W`` height/width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._validate import check_keys

__all__ = ["Layer", "ParameterFreeLayer", "InputTangentCache", "layer_config", "LAYER_TYPES"]

#: Registry of layer-spec classes by name, so that a configuration dict
#: (``{"type": "Dense", ...}``) can be turned back into a spec. Filled by ``register``.
LAYER_TYPES: dict[str, type] = {}


class InputTangentCache(NamedTuple):
    """The tangent cache of an operation without parameters (activations, pooling, flatten,
    last step): the input's tangent, all a ``*_backward_jvp`` can need of its ``*_jvp``."""

    x_dot: np.ndarray  # shape of x


def register(cls: type) -> type:
    """Class decorator: make ``cls`` constructible from :func:`layer_config` output."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


class Layer:
    """Base class of layer specs (subclasses are frozen dataclasses)."""

    #: Parameterised layers declare a ``name: str`` dataclass field (it prefixes their
    #: parameter names); parameter-free layers inherit ``name = None`` from
    #: :class:`ParameterFreeLayer`.
    has_parameters: ClassVar[bool] = False

    #: True when every output element is an input element or a zero (a selection: ReLU,
    #: MaxPool2D, Flatten, Identity). A finite input then gives a finite output, and
    #: ``Sequential`` skips that output's finiteness check (one pass over it fewer).
    output_selects_input: ClassVar[bool] = False
    #: Likewise for the backward pass: every element of the input gradient is an element of
    #: ``dout`` or a zero (not MaxPool2D's: overlapping windows add their gradients).
    input_gradient_selects_dout: ClassVar[bool] = False

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def forward(self, x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(self, dout: np.ndarray, cache: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def jvp(self, x_dot: np.ndarray | None, params_dot: dict[str, np.ndarray],
            cache: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward_jvp(self, dout: np.ndarray, dout_dot: np.ndarray, cache: Any,
                     tangent_cache: Any) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        raise NotImplementedError


class ParameterFreeLayer(Layer):
    """A layer without parameters whose output has the shape of its input (activations)."""

    name: ClassVar[None] = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)


def layer_config(layer: Layer) -> dict[str, Any]:
    """JSON-able description of a layer spec: ``{"type": "Dense", "name": ..., ...}``."""
    config: dict[str, Any] = {"type": type(layer).__name__}
    for field in dataclasses.fields(layer):
        value = getattr(layer, field.name)
        config[field.name] = list(value) if isinstance(value, tuple) else value
    return config


def layer_from_config(config: dict[str, Any], what: str = "layer config") -> Layer:
    """Inverse of :func:`layer_config`.

    ``TypeError`` / ``ValueError`` naming ``what`` for a non-dict, an unknown ``"type"``, a
    missing or unknown field; the values are then checked by the layer spec itself.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"{what}: expected a dict {{'type': ..., <fields>}}, got "
                        f"{type(config).__name__} {config!r:.80}")
    type_name = config.get("type")
    if not isinstance(type_name, str) or type_name not in LAYER_TYPES:
        raise ValueError(f"{what}: unknown layer type {type_name!r}; known: "
                         f"{sorted(LAYER_TYPES)}")
    cls = LAYER_TYPES[type_name]
    fields = dataclasses.fields(cls)
    no_default = dataclasses.MISSING
    check_keys(config,
               ["type"] + [f.name for f in fields
                           if f.default is no_default and f.default_factory is no_default],
               [f.name for f in fields
                if f.default is not no_default or f.default_factory is not no_default],
               what=f"{what} ({type_name})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
              if k != "type"}
    return cls(**kwargs)


def weight_and_bias(weight: Any, bias: Any) -> dict[str, Any]:
    """``{"weight": weight, "bias": bias}`` without the bias entry when ``bias`` is None: the
    local gradient (or parameter) dict of a layer with an optional bias."""
    return {"weight": weight} if bias is None else {"weight": weight, "bias": bias}


def check_name(name: Any) -> str:
    """A layer name: a non-empty string without dots (dots separate layer and parameter)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a non-empty string without '.', got {name!r}")
    if not name or "." in name:
        raise ValueError(f"name: expected a non-empty string without '.', got {name!r}")
    return name
