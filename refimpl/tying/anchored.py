"""One model whose parameters are pulled towards a fixed reference (weight decay, L2-SP)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._validate import (
    as_float_array,
    check_finite_result,
    check_keys,
    check_shape,
    no_fp_warnings,
)
from ..nn.sequential import ParameterCount, Sequential
from . import _models
from ._models import Params
from .penalties import anchored_penalty_backward, anchored_penalty_forward, penalty_by_name

__all__ = ["AnchoredModel", "AnchoredResult"]


class AnchoredResult(NamedTuple):
    """``total = loss + penalty`` and the gradients of ``total``."""

    total: Any
    loss: Any
    penalty: Any
    grads: Params


class AnchoredModel:
    """One model with an anchored penalty: ``total = L(w) + sum over names lam_n ||w_n - w0_n||``.

    Parameters
    ----------
    model : refimpl.nn.sequential.Sequential
        A model with a loss.
    lam : float or dict of str to float
        One number >= 0, or ``{name: number}`` per anchored parameter.
    reference : dict of str to ndarray, optional
        The fixed ``w0`` (e.g. pretrained weights: L2-SP), or None for ``w0 = 0`` (weight
        decay). Copied at construction.
    names : iterable of str, optional
        The unique parameters to anchor (default: the keys of ``reference``, or every unique
        parameter when ``reference`` is None).
    penalty : {"l2", "l1"}
        Squared L2 (default) or L1.

    Examples
    --------
    >>> from refimpl import MLP
    >>> model = MLP([3, 4, 2], activation="tanh")
    >>> decay = AnchoredModel(model, lam=0.01, names=["fc1.weight"])
    >>> decay.config()["reference"]
    'zero'
    >>> AnchoredModel.from_config(decay.config()).config() == decay.config()
    True
    """

    #: ``config()["reference"]``: the anchors are zero (weight decay) / data handed to an
    #: implementation as inputs ``"w0:<name>"`` (e.g. pretrained weights, L2-SP).
    REFERENCE_MODES = ("zero", "inputs")

    def __init__(
        self,
        model: Sequential,
        lam: float | Mapping[str, float],
        reference: Mapping[str, Any] | None = None,
        names: Iterable[str] | None = None,
        penalty: str = "l2",
    ) -> None:
        self.model = _models.check_model(model, "model")
        self.penalty_name = penalty_by_name(penalty).name
        shapes = model.parameter_shapes()
        if reference is not None and not isinstance(reference, Mapping):
            raise TypeError(f"reference: expected a dict of arrays or None, got "
                            f"{type(reference).__name__}")
        if names is None:
            names = list(reference) if reference is not None else list(shapes)
        else:
            if isinstance(names, str):
                raise TypeError(f"names: expected a list of parameter names, got the string "
                                f"{names!r}")
            names = list(names)
        if not names:
            raise ValueError("names: expected at least one parameter to anchor")
        for name in names:
            _models.unique_parameter(model, name, "model", "names")
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"names: {duplicated} anchored twice")
        self.names = tuple(names)
        self.lams = _models.check_lams(lam, list(self.names), "parameter")
        self.reference_mode = "zero" if reference is None else "inputs"
        if reference is None:
            self.reference = {name: np.zeros(shapes[name]) for name in self.names}
        else:
            check_keys(reference, self.names, what="reference")
            self.reference = {}
            for name in self.names:
                array = np.array(as_float_array(reference[name], f"reference[{name!r}]",
                                                allow_complex=False))
                check_shape(array, shapes[name], f"reference[{name!r}]")
                array.setflags(write=False)
                self.reference[name] = array

    def penalty(self, params: Mapping[str, Any]) -> tuple[Any, Params]:
        """``(value, grads)`` of the anchored penalty alone, grads keyed by the anchored names."""
        params = self.model.check_params(params)
        value, grads = self._penalty(params)
        return _models.item(value), grads

    def _penalty(self, params: Params) -> tuple[Any, Params]:
        total: Any = 0.0
        grads: Params = {}
        with no_fp_warnings():
            for name in self.names:
                value, cache = anchored_penalty_forward(params[name], self.reference[name],
                                                        self.lams[name], self.penalty_name)
                total = total + value
                grads[name] = anchored_penalty_backward(1.0, cache)
                # The inputs are finite; lam (w - w0)^2 can still overflow, and so can the sum.
                for result, what in ((total, "value"), (grads[name], "gradient")):
                    check_finite_result(result, lambda n=name, w=what: (
                        f"penalty {self.penalty_name!r} anchoring {n!r}: {w}"))
        return total, grads

    def evaluate(self, params: Mapping[str, Any], x: Any, y: Any) -> AnchoredResult:
        """The one computation: the loss, the penalty and the gradients of their sum.

        :meth:`loss_and_grads` returns a view of this result.
        """
        params = self.model.check_params(params)
        loss, grads = _models.in_model("model", self.model.loss_and_grads, params, x, y)
        penalty, penalty_grads = self._penalty(params)
        penalty = _models.item(penalty)
        _models.add_penalty_grads(grads, penalty_grads, "")
        total = _models.check_total(loss + penalty, "total (loss + penalty)")
        return AnchoredResult(total, loss, penalty, grads)

    def loss_and_grads(self, params: Mapping[str, Any], x: Any, y: Any) -> tuple[Any, Params]:
        """``(loss + penalty, grads)``, grads keyed exactly like ``params``."""
        result = self.evaluate(params, x, y)
        return result.total, result.grads

    def parameter_count(self) -> ParameterCount:
        """The model's count (the reference is a constant, not a parameter)."""
        return self.model.parameter_count()

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the model.

        ``{"model": Sequential config, "names": [...], "lam": {name: float}, "penalty": "l2" |
        "l1", "reference": "zero" | "inputs"}``. The reference arrays are data, not
        configuration: with ``"inputs"`` an implementation receives them as the inputs
        ``"w0:<name>"`` (shaped like the parameter) next to ``x`` and ``y``.
        """
        return {"model": self.model.config(), "names": list(self.names), "lam": dict(self.lams),
                "penalty": self.penalty_name, "reference": self.reference_mode}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], reference: Mapping[str, Any] | None = None,
                    what: str = "config") -> AnchoredModel:
        """Inverse of :meth:`config`.

        Parameters
        ----------
        config : mapping
            As returned by :meth:`config` (``"penalty"`` and ``"reference"`` optional:
            "l2" and "zero").
        reference : dict of str to ndarray, optional
            The anchors ``{name: w0}``; required when ``config["reference"] == "inputs"``,
            refused when it is "zero".
        what : str
            Names the configuration in error messages.

        Returns
        -------
        AnchoredModel

        Raises
        ------
        TypeError, ValueError
            Naming the missing, unknown or malformed key (``config['lam']``, ...) or the
            reference that does not fit the mode.
        """
        check_keys(config, ["model", "names", "lam"], ["penalty", "reference"], what=what)
        mode = config.get("reference", "zero")
        if not isinstance(mode, str) or mode not in cls.REFERENCE_MODES:
            raise ValueError(f"{what}['reference']: expected one of {list(cls.REFERENCE_MODES)}, "
                             f"got {mode!r}")
        if mode == "inputs" and reference is None:
            raise ValueError(f"reference: {what}['reference'] is 'inputs': pass the anchors "
                             f"{{name: w0}} (an implementation's inputs 'w0:<name>')")
        if mode == "zero" and reference is not None:
            raise ValueError(f"reference: {what}['reference'] is 'zero' (weight decay); got "
                             f"anchors for {sorted(reference)!r:.80}")
        names = config["names"]
        if not isinstance(names, (list, tuple)):
            raise TypeError(f"{what}['names']: expected a list of parameter names, got "
                            f"{type(names).__name__} {names!r:.80}")
        penalty = config.get("penalty", "l2")
        if not isinstance(penalty, str):
            raise TypeError(f"{what}['penalty']: expected 'l2' or 'l1', got {penalty!r}")
        model = Sequential.from_config(config["model"], what=f"{what}['model']")
        return cls(model, lam=config["lam"], reference=reference, names=names, penalty=penalty)

    def __repr__(self) -> str:
        return (f"AnchoredModel({self.model!r}, lam={self.lams!r}, names={list(self.names)}, "
                f"penalty={self.penalty_name!r})")
