"""What a single-process adapter's ``build`` returns: one object with every capability.

Framework-neutral: the framework's computations arrive as callables. ``impl(params, inputs)
-> (loss, grads, outputs)`` is the gradient protocol (:mod:`refimpl.testing.oracle`),
``impl.hvp(params, inputs, vector)`` the second-order capability
(:mod:`refimpl.testing.second_order`) and ``impl.train_steps(params, batches)`` the step
capability (:mod:`refimpl.testing.trajectory`), given to a step case only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..testing.comparison import NotExpressible

__all__ = ["BuiltImplementation"]


class BuiltImplementation:
    """The gradient protocol, the second-order capability and the step capability of one
    built case: ``call`` computes ``(loss, grads, outputs)``, ``hvp`` (or None: built
    without it) ``H v``, ``steps`` (or None: not a step case) has ``train_steps``."""

    def __init__(self, call: Callable[..., tuple[Any, ...]], steps: Any | None,
                 hvp: Callable[..., dict[str, np.ndarray]] | None = None) -> None:
        self._call, self._steps, self._hvp = call, steps, hvp

    def __call__(self, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
                 ) -> tuple[Any, ...]:
        return self._call(params, inputs)

    def hvp(self, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
            vector: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The step's Hessian times ``vector``, by the framework's own second derivative."""
        if self._hvp is None:
            raise NotExpressible("hvp: this implementation was built without it")
        return self._hvp(params, inputs, vector)

    def train_steps(self, params: dict[str, np.ndarray], batches: list[dict[str, np.ndarray]]
                    ) -> dict[str, Any]:
        """``K`` training steps of a step case, by the framework's own optimizer."""
        if self._steps is None:
            raise ValueError("train_steps: this configuration has no 'steps' (only a step case "
                             "says the optimizer, the clipping and the number of steps)")
        return self._steps.train_steps(params, batches)
