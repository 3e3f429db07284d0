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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Case", "all_cases", "get_case", "CASE_MODULES", "INPUT_ROLES", "describe_inputs",
           "resolved_share", "REBUILDERS", "register_rebuilder", "rebuild_case"]

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


#: Name prefix -> ``(module of refimpl.testing.cases, function, *arguments)`` or a callable
#: ``f(seed) -> Case``: how a case that is not in the catalogue is rebuilt from its
#: ``config["seed"]`` (``function(seed, *arguments)``; a drawn case ``drawn-<kind>-<seed>``,
#: whose kind may have been chosen rather than drawn from the seed), so that a golden folder
#: holding it can be verified.
REBUILDERS: dict[str, tuple[str, ...] | Callable[[int], Case]] = {
    "drawn-": ("drawn", "drawn_case"),
    **{f"drawn-{kind}-": ("drawn", "drawn_case", kind)
       for kind in ("mlp", "cnn", "shared", "tied")},
}


def register_rebuilder(prefix: str, build: Callable[[int], Case]) -> None:
    """Let :func:`rebuild_case` rebuild the cases whose names start with ``prefix``.

    Parameters
    ----------
    prefix : str
        A name prefix such as ``"drawn-"`` (not empty).
    build : callable
        ``build(seed) -> Case``, deterministic: the same seed gives the same case.

    Raises
    ------
    TypeError, ValueError
        For a prefix that is not a non-empty string or a ``build`` that is not callable.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix: expected a non-empty name prefix, got {prefix!r}")
    if not callable(build):
        raise TypeError(f"build: expected a callable build(seed) -> Case, got {build!r}")
    REBUILDERS[prefix] = build


def rebuild_case(name: str, config: Mapping[str, Any]) -> Case | None:
    """The case called ``name`` rebuilt from refimpl alone: the catalogue's, or for a name a
    registered rebuilder recognises, ``build(config["seed"])``; None when nothing can rebuild
    it (such a case can be compared, never verified against refimpl).

    Parameters
    ----------
    name : str
        The case's name, e.g. ``"mlp-tanh-ce"`` or ``"drawn-mlp-7"``.
    config : mapping
        The configuration stored with it (only its ``"seed"`` is used, to rebuild; the
        caller compares the rest with the rebuilt case's).

    Returns
    -------
    Case or None

    Raises
    ------
    ValueError
        When a rebuilder applies but the config has no integer ``"seed"``, or the rebuilt case
        is called otherwise than ``name``.
    """
    for case in all_cases():
        if case.name == name:
            return case
    # the longest matching prefix first: "drawn-mlp-" before "drawn-"
    for prefix in sorted(REBUILDERS, key=len, reverse=True):
        build = REBUILDERS[prefix]
        if not name.startswith(prefix):
            continue
        arguments: tuple[str, ...] = ()
        if isinstance(build, tuple):
            module_name, function, *rest = build
            arguments = tuple(rest)
            try:
                module = importlib.import_module(f"{__name__}.{module_name}")
            except ModuleNotFoundError:
                continue          # that module is not part of this refimpl
            build = getattr(module, function)
        seed = config.get("seed") if isinstance(config, Mapping) else None
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"config['seed']: case {name!r} is rebuilt from its seed, a "
                             f"non-negative int; got {seed!r}")
        case = build(seed, *arguments)
        if case.name != name:
            raise ValueError(f"case {name!r}: its seed {seed} rebuilds a case called "
                             f"{case.name!r}")
        return case
    return None
