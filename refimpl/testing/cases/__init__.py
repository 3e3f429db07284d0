"""The catalogue of built-in cases: the models `refimpl check` verifies and `refimpl golden`
writes. Each area keeps its cases in its own module (``mlp``, ...); :func:`all_cases`
collects them in a fixed order.

A :class:`Case` is self-contained and deterministic: a JSON-able configuration, the point
(``params``), the data (``inputs``), and two functions of a parameter dict — the loss with its
gradients, and the forward outputs. Functions of a *single* parameter dict make every case,
tied pairs included (whose keys are prefixed ``"A:"`` / ``"B:"``), checkable by
:func:`refimpl.check_gradients`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Case", "all_cases", "get_case", "CASE_MODULES"]

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One deterministic model + point + data.

    Attributes
    ----------
    name : str
        Unique id, also the golden folder name (``[a-z0-9-]``).
    kind : str
        "mlp", "cnn", "tied", "shared", "probe", "sequence", "siamese" or "microbatch".
    config : dict
        JSON-able description (model configuration, data sizes, conventions).
    params : dict of str to np.ndarray
        The point, float64 arrays.
    inputs : dict of str to np.ndarray
        Data arrays (``x``, ``y`` or ``xa``, ``ya``, ``xb``, ``yb``), float64 / int64; e.g.
        ``x`` of shape (N, D) or (N, C, H, W), ``y`` int64 labels of shape (N,).
    loss_and_grads : callable
        ``f(params) -> (loss, grads)``; accepts complex params (complex step).
    outputs : callable
        ``g(params) -> {name: array}``, the forward outputs (e.g. ``{"out": logits}`` of
        shape (N, K)).
    evaluate : callable or None
        ``h(params, inputs) -> (loss, grads, outputs)``, the same reference as a function of
        the data too (``inputs`` keyed like :attr:`inputs`). The resolution floor
        (:mod:`refimpl.testing.resolution`) perturbs the data as well as the point through it;
        None (a hand-made case) perturbs the point only, a smaller floor.
    """

    name: str
    kind: str
    config: dict[str, Any]
    params: Params
    inputs: dict[str, np.ndarray]
    loss_and_grads: Callable[[Params], tuple[Any, Params]]
    outputs: Callable[[Params], dict[str, np.ndarray]]
    evaluate: Callable[[Params, dict[str, np.ndarray]],
                       tuple[Any, Params, dict[str, np.ndarray]]] | None = None

    def parameter_total(self) -> int:
        """The number of scalar parameters (the sum of the sizes of ``params``)."""
        return sum(value.size for value in self.params.values())


#: Modules of ``refimpl.testing.cases`` that define ``cases() -> list[Case]``, in catalogue order.
CASE_MODULES = ("mlp", "cnn", "tied", "shared", "probes", "sequence", "siamese", "microbatch")


def all_cases() -> list[Case]:
    """Every built-in case, in catalogue order (a fresh list of fresh cases)."""
    cases: list[Case] = []
    for module_name in CASE_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        cases.extend(module.cases())
    names = [case.name for case in cases]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise RuntimeError(f"duplicate case names in the catalogue: {duplicated}")
    return cases


def get_case(name: str) -> Case:
    """The built-in case called ``name``; ``ValueError`` listing the known names otherwise."""
    for case in all_cases():
        if case.name == name:
            return case
    raise ValueError(f"case: unknown case {name!r}")
