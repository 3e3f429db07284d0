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

from ..._validate import did_you_mean

__all__ = ["Case", "all_cases", "get_case", "CASE_MODULES", "INPUT_ROLES", "describe_inputs",
           "resolved_share"]

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One deterministic model + point + data.

    Attributes
    ----------
    name : str
        Unique id, also the golden folder name (``[a-z0-9-]``).
    kind : str
        "mlp", "cnn", "tied", "shared", "probe", "sequence", "siamese", "microbatch" or
        "steps" (:class:`.steps.StepCase`: K optimizer steps of a base case).
    config : dict
        JSON-able description (model configuration, data sizes, conventions). Every case's
        config has ``"inputs"``, the description of :attr:`inputs` as data
        (:func:`describe_inputs`), and ``"resolved_share"`` (:func:`resolved_share`).
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


#: The role of every input name a case can have (``"w0:<name>"``: :data:`REFERENCE_ROLE`;
#: ``"<name>.<i>"``: micro-batch ``i`` of ``<name>``, the role of ``<name>``). None: decided
#: by the dtype, "labels" (int64) or "targets" (float).
INPUT_ROLES = {"x": "features", "xa": "features", "xb": "features", "y": None, "ya": None,
               "yb": None, "anchor": "features", "positive": "features",
               "negative": "features", "x1": "features", "x2": "features"}

#: The role of an input ``"w0:<name>"``: the fixed reference of an anchored parameter.
REFERENCE_ROLE = "reference weights"

#: The role of ``"xb"`` in a pair whose model B is an autoencoder (no ``"yb"``).
AUTOENCODER_ROLE = "features and targets"

#: The role of an int64 ``"x"``: token indices into an Embedding's rows.
TOKEN_ROLE = "token indices"

#: The role of ``"y"`` of a contrastive Siamese case (inputs ``"x1"``, ``"x2"``): int64 pair
#: labels, 1 similar, 0 dissimilar.
SIMILARITY_ROLE = "similarity labels"


def _base_name(name: str) -> str:
    """``"<name>.<i>"`` (micro-batch ``i`` of ``<name>``) -> ``"<name>"``; others unchanged."""
    base, dot, index = name.rpartition(".")
    return base if dot and base and index.isdigit() else name


def _role(name: str, value: np.ndarray, names: set[str]) -> str:
    """The role of one input (see :func:`describe_inputs`); ``names``: the base names of
    every input of the case."""
    if name.startswith("w0:"):
        return REFERENCE_ROLE
    base = _base_name(name)
    if base not in INPUT_ROLES:
        raise ValueError(f"inputs: unknown input name {name!r}; known: "
                         f"{sorted(INPUT_ROLES)}, 'w0:<parameter>' and '<name>.<i>'")
    if base == "xb" and "yb" not in names:
        return AUTOENCODER_ROLE
    integer = value.dtype.kind in "iu"
    if base == "x" and integer:
        return TOKEN_ROLE
    if base == "y" and "x1" in names:
        return SIMILARITY_ROLE
    if INPUT_ROLES[base] is not None:
        return INPUT_ROLES[base]
    return "labels" if integer else "targets"


def describe_inputs(inputs: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Every input of a case described as data (JSON-able), in the order of ``inputs``.

    Parameters
    ----------
    inputs : dict of str to ndarray
        A case's inputs: ``x`` (N, D), (N, C, H, W), (N, T, D) or int64 token indices
        (N, T); ``y`` int64 labels (N,) or (N, T), or float targets of the output's shape; a
        pair's ``xa``, ``ya``, ``xb`` and ``yb`` (absent when B is an autoencoder, whose
        target is ``xb``); a Siamese case's branch inputs ``anchor``, ``positive``,
        ``negative`` or ``x1``, ``x2`` with int64 pair labels ``y`` (N,); an anchored model's
        ``w0:<name>``; ``<name>.<i>``, micro-batch ``i`` of any of those.

    Returns
    -------
    dict
        ``{name: {"shape": [...], "dtype": "float64" | "int64", "role": role}}`` with role
        "features", "token indices" (int64 ``x``: rows of an Embedding), "labels" (int64
        class indices, cross-entropy), "similarity labels" (int64 ``y`` of a contrastive
        Siamese case: 1 similar, 0 dissimilar), "targets" (float, MSE), "features and
        targets" (``xb`` of an autoencoder B: its input is its target) or "reference
        weights" (``w0:<name>``, the anchor of parameter ``<name>``, shaped like it). A
        micro-batch ``<name>.<i>`` has the role of ``<name>``.

    Raises
    ------
    ValueError
        For an input name outside those.

    Examples
    --------
    >>> import numpy as np
    >>> describe_inputs({"x": np.zeros((2, 3)), "y": np.zeros(2, dtype=np.int64)})["y"]
    {'shape': [2], 'dtype': 'int64', 'role': 'labels'}
    >>> describe_inputs({"x.0": np.zeros((2, 5), dtype=np.int64)})["x.0"]["role"]
    'token indices'
    """
    names = {_base_name(name) for name in inputs}
    return {name: {"shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype),
                   "role": _role(name, np.asarray(value), names)}
            for name, value in inputs.items()}


def resolved_share(model: Any) -> dict[str, dict[str, Any]]:
    """A model's sharing map with every chain resolved: ``{slot: {"source": unique
    parameter, "transpose": bool}}``, the transposes along the chain composed (``fc4 -> fc3^T
    -> fc2^T``: fc4 reads fc2 untransposed). Empty for a model without sharing.

    Parameters
    ----------
    model : refimpl.nn.Sequential
        The model.

    Returns
    -------
    dict
        One entry per shared slot (the keys of ``model.share``).
    """
    uses = model.slot_uses()
    return {slot: {"source": uses[slot][0], "transpose": uses[slot][1]} for slot in model.share}


#: Modules of ``refimpl.testing.cases`` that define ``cases() -> list[Case]``, in catalogue order.
CASE_MODULES = ("mlp", "cnn", "tied", "shared", "probes", "sequence", "siamese", "microbatch",
                "steps", "step_probes")


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


def _catalogue_case(name: str) -> Case | None:
    """The built-in case called ``name`` (a fresh one), or None: the catalogue's modules are
    built in order only as far as the one that holds it, since a comparison or a golden
    folder asks for one case at a time and every case is built from its own seed."""
    for module_name in CASE_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        for case in module.cases():
            if case.name == name:
                return case
    return None


def get_case(name: str) -> Case:
    """The built-in case called ``name``; otherwise a ``ValueError`` with the closest names."""
    case = _catalogue_case(name)
    if case is not None:
        return case
    cases = all_cases()
    raise ValueError(f"case: unknown case {name!r}"
                     f"{did_you_mean(name, [case.name for case in cases])}; refimpl check "
                     f"--list names the {len(cases)} built-in cases")
