"""A case's refimpl model, rebuilt from its configuration: the one way the kit does it.

Every catalogue and drawn case (and every case :func:`refimpl.testing.compare_with_oracle`
builds from a model) describes its model as data in ``case.config``: ``"model"`` (a
:class:`~refimpl.nn.Sequential`), ``"pair"`` (a :class:`~refimpl.TiedPair`), ``"anchored"``
(an :class:`~refimpl.AnchoredModel`, its anchors the inputs ``"w0:<name>"`` when its
reference is "inputs"), ``"siamese"`` (a :class:`~refimpl.nn.Siamese` model) or, for a
micro-batch case, ``"base"`` (one of those) with ``"micro_batches"`` (and
``"micro_batches_b"`` for a pair). :func:`model_from_config` turns such a configuration and
the case's inputs into the model, its data in the form every refimpl checker takes
(``(x, y)``, ``((xa, ya), (xb, yb))``, the Siamese branches) and the micro-batch splits of
:func:`refimpl.hvp` and :func:`refimpl.accumulated_loss_and_grads`. The diagnoses
(:mod:`refimpl.testing.diagnosis`), the Hessian-vector expectations
(:mod:`refimpl.testing.second_order`) and ``refimpl explain --hessian`` all rebuild a case's
model here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ...nn import Sequential, Siamese
from ...tying import AnchoredModel, TiedPair
from . import Case
from .microbatch import join_inputs

__all__ = ["CaseModel", "MODEL_KEYS", "describes_model", "model_from_config", "case_model"]

#: The configuration keys that name a model (``"base"`` with ``"micro_batches"``: a
#: micro-batch case of one of them).
MODEL_KEYS = ("model", "pair", "anchored", "siamese")


class CaseModel(NamedTuple):
    """A case's model and data, as :func:`refimpl.hvp` takes them.

    Attributes
    ----------
    model : refimpl.nn.Sequential, refimpl.TiedPair, refimpl.AnchoredModel or refimpl.nn.Siamese
    data : tuple
        ``(x, y)`` (one model, an anchored model); ``((xa, ya), (xb, yb))`` (a pair, ``yb``
        being ``xb`` for an autoencoder B); the branch inputs and, for a contrastive loss,
        ``y`` (a Siamese model). The full batch for a micro-batch case.
    splits, splits_b : list or None
        A micro-batch case's sizes (``config["micro_batches"]`` and, for a pair,
        ``config["micro_batches_b"]``); None otherwise.
    """

    model: Any
    data: tuple
    splits: Any = None
    splits_b: Any = None


def describes_model(config: Any) -> bool:
    """Whether a configuration names a model :func:`model_from_config` rebuilds (a
    hand-made case's may not)."""
    if not isinstance(config, Mapping):
        return False
    base = config.get("base") if "micro_batches" in config else config
    return isinstance(base, Mapping) and any(key in base for key in MODEL_KEYS)


def _single(config: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> tuple[Any, tuple]:
    """The model of a single-batch configuration and its data."""
    if "model" in config:
        return Sequential.from_config(config["model"], "config['model']"), (inputs["x"],
                                                                           inputs["y"])
    if "pair" in config:
        target_b = inputs["yb"] if "yb" in inputs else inputs["xb"]   # no "yb": autoencoder
        return (TiedPair.from_config(config["pair"]),
                ((inputs["xa"], inputs["ya"]), (inputs["xb"], target_b)))
    if "siamese" in config:
        model = Siamese.from_config(config["siamese"], "config['siamese']")
        extra = ("y",) if model.loss_spec.needs_target else ()
        return model, tuple(inputs[name] for name in model.branch_names + extra)
    if "anchored" in config:
        anchored = config["anchored"]
        references = {key[3:]: value for key, value in inputs.items() if key.startswith("w0:")}
        model = AnchoredModel.from_config(
            anchored, reference=references if anchored.get("reference") == "inputs" else None,
            what="config['anchored']")
        return model, (inputs["x"], inputs["y"])
    raise ValueError(f"config: expected a key 'model', 'pair', 'siamese', 'anchored' or "
                     f"'base' with 'micro_batches', got {sorted(config)}")


def _sizes(splits: Any) -> list[Any]:
    """Micro-batch sizes or index lists as stored in a configuration (JSON lists)."""
    return [list(item) if isinstance(item, Sequence) else int(item) for item in splits]


def model_from_config(config: Mapping[str, Any], inputs: Mapping[str, np.ndarray]
                      ) -> CaseModel:
    """The model a case configuration describes, with its data and micro-batches.

    Parameters
    ----------
    config : mapping
        A case's configuration (module docstring).
    inputs : mapping of str to ndarray
        The case's inputs (``"<name>.<i>"`` for a micro-batch case: joined back into the full
        batch here).

    Returns
    -------
    CaseModel

    Raises
    ------
    ValueError, TypeError, KeyError
        For a configuration that describes none of those models, or inputs that do not fit
        it.

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> case = get_case("microbatch-tied-soft")
    >>> found = model_from_config(case.config, case.inputs)
    >>> type(found.model).__name__, found.splits, found.splits_b
    ('TiedPair', [2, 3], [6, 1])
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
    if "micro_batches" not in config:
        return CaseModel(*_single(config, inputs))
    splits = _sizes(config["micro_batches"])
    names = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in inputs))
    model, data = _single(config["base"], join_inputs(dict(inputs), names, len(splits)))
    splits_b = config.get("micro_batches_b")
    return CaseModel(model, data, splits, None if splits_b is None else _sizes(splits_b))


def case_model(case: Case) -> CaseModel:
    """:func:`model_from_config` of a case's configuration and inputs."""
    return model_from_config(case.config, case.inputs)
