"""Checks shared by the optimizers and the clipping: one dict of unique parameters, and
gradients keyed exactly like it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._validate import as_float_array, check_shape

Params = dict[str, np.ndarray]


def check_distinct_memory(arrays: Mapping[str, np.ndarray], name: str) -> None:
    """``ValueError`` if two keys hold (views of) one array.

    Two keys holding the same memory would be stepped as two parameters (or counted twice in
    a norm) that then silently diverge, which is neither sharing nor tying.
    """
    keys = list(arrays)
    for index, first in enumerate(keys):
        for second in keys[index + 1:]:
            if np.shares_memory(arrays[first], arrays[second]):
                raise ValueError(
                    f"{name}: {first!r} and {second!r} are (views of) the same array; a "
                    f"parameter must be stored once, or it is stepped (and counted in a norm) "
                    f"once per key and the copies diverge. Share it with "
                    f"Sequential(share=...) or TiedPair(mode='hard').")


def check_params(params: Any, name: str = "params") -> Params:
    """A non-empty dict of real, finite arrays as float64, no two keys holding one array."""
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"{name}: expected a non-empty dict of arrays, got "
                        f"{type(params).__name__} {params!r:.80}")
    checked = {key: as_float_array(value, f"{name}[{key!r}]", allow_complex=False)
               for key, value in params.items()}
    check_distinct_memory(checked, name)
    return checked


def check_grads(grads: Any, params: Params, name: str = "grads") -> Params:
    """Gradients with exactly the keys and shapes of ``params``, as float64 (in its order)."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"{name}: expected a dict of arrays, got {type(grads).__name__}")
    missing = [key for key in params if key not in grads]
    extra = [key for key in grads if key not in params]
    if missing or extra:
        raise ValueError(f"{name}: keys differ from params: " + "; ".join(part for part in (
            f"missing {missing}" if missing else "",
            f"unexpected {extra} (a gradient for a name that is not a unique parameter, "
            f"e.g. a shared slot, would be lost)" if extra else "") if part))
    checked = {}
    for key, value in params.items():
        grad = as_float_array(grads[key], f"{name}[{key!r}]", allow_complex=False)
        check_shape(grad, value.shape, f"{name}[{key!r}]")
        checked[key] = grad
    return checked
