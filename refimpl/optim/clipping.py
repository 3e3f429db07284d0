"""Gradient clipping by the total norm: ``torch.nn.utils.clip_grad_norm_`` to the letter.

Over the gradients ``g_1, ..., g_P`` of the **unique** parameters (a shared or hard-tied
parameter is one key, so it is counted once)::

    total_norm = || (||g_1||_p, ..., ||g_P||_p) ||_p      (the norm of all entries at once)
    clip_coef  = max_norm / (total_norm + 1e-6)
    g_i       <- g_i * min(clip_coef, 1)

``p = inf`` takes the largest ``|entry|``. The ``1e-6`` keeps the coefficient finite for a
zero gradient, and leaves the clipped norm just below ``max_norm``:
``max_norm * total_norm / (total_norm + 1e-6)``. optax's ``clip_by_global_norm`` has no such
term (``g * max_norm / total_norm`` when ``total_norm >= max_norm``): ``eps=0`` here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_keys, check_real, no_fp_warnings
from ._params import Params, check_params

__all__ = ["gradient_norm", "clip_grad_norm", "ClipGradNorm", "CLIP_EPS"]

#: PyTorch's term in the clip coefficient's denominator.
CLIP_EPS = 1e-6


def _check_norm_type(norm_type: Any) -> float:
    """A norm's order: a real number >= 1, or ``inf`` (also PyTorch's string ``"inf"``)."""
    if isinstance(norm_type, str) and norm_type == "inf":
        return math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(
            norm_type, (int, float, np.integer, np.floating)):
        raise TypeError(f"norm_type: expected a number >= 1 or inf, got "
                        f"{type(norm_type).__name__} {norm_type!r}")
    order = float(norm_type)
    if not (order >= 1):   # also refuses NaN
        raise ValueError(f"norm_type: expected a number >= 1 or inf (a norm), got {norm_type!r}")
    return order


def _vector_norm(values: np.ndarray, order: float) -> float:
    """``||values||_order`` over all entries (0 for no entries)."""
    flat = values.reshape(-1)
    if flat.size == 0:
        return 0.0
    return float(np.linalg.norm(flat, ord=order))


def gradient_norm(grads: Mapping[str, Any], norm_type: float | str = 2.0) -> float:
    """The total norm of the gradients, over the unique parameters, as PyTorch computes it:
    the norm of the per-parameter norms.

    Parameters
    ----------
    grads : dict of str to ndarray
        One gradient per unique parameter (real, finite; no two keys holding one array).
    norm_type : float or "inf"
        The order ``p`` >= 1, or ``inf`` (the largest absolute entry).

    Returns
    -------
    float

    Raises
    ------
    TypeError, ValueError
        Naming the argument.
    FloatingPointError
        If the norm overflows (finite entries whose squares do not fit in float64).

    Examples
    --------
    >>> import numpy as np
    >>> gradient_norm({"a": np.array([3.0]), "b": np.array([[4.0]])})
    5.0
    """
    return _total_norm(check_params(grads, "grads"), _check_norm_type(norm_type))


def _total_norm(grads: Params, order: float) -> float:
    """The norm of the per-parameter norms (``torch.nn.utils.get_total_norm``)."""
    with no_fp_warnings():
        per_parameter = np.array([_vector_norm(grad, order) for grad in grads.values()])
        total = _vector_norm(per_parameter, order)
    if not math.isfinite(total):
        raise FloatingPointError(f"grads: the total {order:g}-norm overflowed to {total} from "
                                 f"finite gradients")
    return total


def clip_grad_norm(grads: Mapping[str, Any], max_norm: float, norm_type: float | str = 2.0,
                   eps: float = CLIP_EPS) -> tuple[Params, float]:
    """Scale the gradients so that their total norm is at most about ``max_norm``
    (module docstring), as ``torch.nn.utils.clip_grad_norm_`` does, without modifying them.

    Parameters
    ----------
    grads : dict of str to ndarray
        One gradient per unique parameter.
    max_norm : float
        > 0.
    norm_type : float or "inf"
        The order ``p`` >= 1 of the norm, or ``inf``.
    eps : float
        The term of the coefficient's denominator, >= 0 (PyTorch's 1e-6; optax's form is 0).

    Returns
    -------
    clipped : dict of str to ndarray
        New arrays, keyed like ``grads``: ``g * min(max_norm / (total_norm + eps), 1)``.
    total_norm : float
        The norm *before* clipping (what PyTorch returns).

    Raises
    ------
    TypeError, ValueError
        Naming the argument.
    FloatingPointError
        If the norm overflows.

    Examples
    --------
    >>> import numpy as np
    >>> clipped, norm = clip_grad_norm({"a": np.array([3.0]), "b": np.array([4.0])}, 1.0)
    >>> norm, gradient_norm(clipped) < 1.0
    (5.0, True)
    """
    max_norm = check_real(max_norm, "max_norm", minimum=0)
    if max_norm == 0:
        raise ValueError("max_norm: expected a number > 0 (0 would zero every gradient), got 0.0")
    eps = check_real(eps, "eps", minimum=0)
    order = _check_norm_type(norm_type)
    checked = check_params(grads, "grads")
    total_norm = _total_norm(checked, order)
    denominator = total_norm + eps
    # clip_coef = max_norm / (total_norm + eps), clamped at 1: never scales a gradient up
    clip_coef = 1.0 if denominator == 0 else min(max_norm / denominator, 1.0)
    return {key: grad * clip_coef for key, grad in checked.items()}, total_norm


class ClipGradNorm(NamedTuple):
    """Clipping by the total norm as a value (:func:`clip_grad_norm`'s arguments), for
    :func:`refimpl.train_steps` and for configurations (JSON).

    Examples
    --------
    >>> ClipGradNorm(1.0, "inf").config()
    {'max_norm': 1.0, 'norm_type': 'inf', 'eps': 1e-06}
    >>> ClipGradNorm.from_config({"max_norm": 0.5})
    ClipGradNorm(max_norm=0.5, norm_type=2.0, eps=1e-06)
    """

    max_norm: float
    norm_type: float | str = 2.0
    eps: float = CLIP_EPS

    def checked(self) -> ClipGradNorm:
        """The same clipping with every field checked and normalised (floats, inf)."""
        max_norm = check_real(self.max_norm, "max_norm", minimum=0)
        if max_norm == 0:
            raise ValueError("max_norm: expected a number > 0 (0 would zero every gradient), "
                             "got 0.0")
        return ClipGradNorm(max_norm, _check_norm_type(self.norm_type),
                            check_real(self.eps, "eps", minimum=0))

    def clip(self, grads: Mapping[str, Any]) -> tuple[Params, float]:
        """:func:`clip_grad_norm` with these arguments."""
        return clip_grad_norm(grads, self.max_norm, self.norm_type, self.eps)

    def config(self) -> dict[str, Any]:
        """``{"max_norm": float, "norm_type": float or "inf", "eps": float}`` (JSON has no
        infinity: PyTorch's string "inf" stands for it)."""
        checked = self.checked()
        order = checked.norm_type
        return {"max_norm": checked.max_norm,
                "norm_type": "inf" if order == math.inf else order, "eps": checked.eps}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], what: str = "clip") -> ClipGradNorm:
        """Inverse of :meth:`config` (``norm_type`` and ``eps`` optional)."""
        check_keys(config, ["max_norm"], ["norm_type", "eps"], what=what)
        try:
            return cls(config["max_norm"], config.get("norm_type", 2.0),
                       config.get("eps", CLIP_EPS)).checked()
        except (TypeError, ValueError) as error:
            raise type(error)(f"{what}: {error}") from None
