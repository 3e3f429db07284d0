"""Checks and plumbing shared by the tied models (:mod:`.pair`, :mod:`.anchored`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._validate import check_finite_result, check_keys, no_fp_warnings
from ..nn.sequential import Sequential
from .penalties import check_lam

Params = dict[str, np.ndarray]


def check_lams(lam: Any, names: list[str], what: str) -> dict[str, float]:
    """``lam`` as a float for every name: one number for all, or ``{name: number}`` covering
    exactly ``names``."""
    if isinstance(lam, Mapping):
        check_keys(lam, names, what=f"lam (a per-{what} mapping)")
        return {key: check_lam(lam[key], f"lam[{key!r}]") for key in names}
    value = check_lam(lam)
    return dict.fromkeys(names, value)



def check_model(model: Any, name: str) -> Sequential:
    if not isinstance(model, Sequential):
        raise TypeError(f"{name}: expected a refimpl Sequential model, got {type(model).__name__}")
    if model.loss_spec is None:
        raise ValueError(f"{name}: the model needs a loss (built with loss=None)")
    return model


def unique_parameter(model: Sequential, name: Any, role: str,
                      argument: str = "pairs") -> tuple[int, ...]:
    """Shape of the unique parameter ``name`` of ``model``, or a clear error naming
    ``argument``."""
    shapes = model.parameter_shapes()
    if isinstance(name, str) and name in shapes:
        return shapes[name]
    uses = model.slot_uses()
    if isinstance(name, str) and name in uses:
        root, transpose = uses[name]
        raise ValueError(f"{argument}: {name!r} is a shared slot of {role} (it reads "
                         f"{'transposed ' if transpose else ''}{root!r}); pair the unique "
                         f"parameter {root!r} instead")
    raise ValueError(f"{argument}: unknown parameter {name!r} of {role}; its parameters are "
                     f"{sorted(shapes)}")



def item(value: Any) -> Any:
    return value.item() if isinstance(value, np.ndarray | np.generic) else value


def in_model(role: str, method: Callable[..., Any], *args: Any) -> Any:
    """``method(*args)`` of one model of a pair; its ``FloatingPointError`` (a layer that
    overflowed) gains the model's role, "model_a: layer 'fc1' (Dense): ..."."""
    try:
        return method(*args)
    except FloatingPointError as error:
        raise FloatingPointError(f"{role}: {error}") from None


def add_penalty_grads(grads: Params, penalty_grads: Params, role: str) -> None:
    """``grads[key] += penalty_grads[key]`` (new arrays); finite terms can sum to inf."""
    with no_fp_warnings():
        for key, grad in penalty_grads.items():
            grads[key] = grads[key] + grad
            check_finite_result(grads[key], lambda name=key: (
                f"gradient of {role}{name!r} (loss + penalty)"))


def check_total(total: Any, what: str) -> Any:
    with no_fp_warnings():
        check_finite_result(total, what)
    return total

