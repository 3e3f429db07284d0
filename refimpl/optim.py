"""A minimal deterministic optimizer and training loop.

Parameters are a plain ``dict[str, np.ndarray]`` of *unique* parameters (a shared parameter is
one key, whatever the number of its uses; a tied pair is one flat dict, see
:meth:`refimpl.tying.TiedPair.join`). :meth:`SGD.step` updates every key exactly once and returns
new dicts; it never writes into its inputs.

The classic sharing bug of frameworks is a parameter listed twice (two optimizer groups holding
one tensor), hence stepped twice per iteration. Here a parameter cannot be listed twice by
name, and two keys holding the *same memory* (``{"a": w, "b": w}`` or views of one array) are
refused: they would be stepped as two parameters that then silently diverge, which is neither
sharing nor tying. Share with ``Sequential(share=...)`` or ``TiedPair(mode="hard")`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ._validate import as_float_array, check_real, check_shape

__all__ = ["SGD", "TrainResult", "train"]

Params = dict[str, np.ndarray]


def _check_distinct_memory(params: Mapping[str, np.ndarray], name: str) -> None:
    keys = list(params)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            if np.shares_memory(params[first], params[second]):
                raise ValueError(
                    f"{name}: {first!r} and {second!r} are (views of) the same array; a "
                    f"parameter must be stored once, or it is stepped once per key and the "
                    f"copies diverge. Share it with Sequential(share=...) or "
                    f"TiedPair(mode='hard').")


class SGD:
    """Stochastic gradient descent with optional (heavy-ball) momentum, PyTorch's convention::

        v <- momentum * v + g        (v = 0 before the first step, so the first v is g)
        w <- w - learning_rate * v

    Deterministic: no randomness, no state besides the velocities returned by :meth:`step`.
    Weight decay is not an option here: it is the anchored penalty
    (:class:`refimpl.tying.AnchoredModel` with ``reference=None``), part of the loss.
    """

    def __init__(self, learning_rate: float, momentum: float = 0.0) -> None:
        self.learning_rate = check_real(learning_rate, "learning_rate", minimum=0)
        if self.learning_rate == 0:
            raise ValueError("learning_rate: expected a number > 0, got 0.0")
        self.momentum = check_real(momentum, "momentum", minimum=0, below=1)

    def step(
        self,
        params: Mapping[str, Any],
        grads: Mapping[str, Any],
        state: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[Params, Params]:
        """One update of every unique parameter, exactly once.

        Parameters
        ----------
        params : dict of str to ndarray
            The unique parameters.
        grads : dict of str to ndarray
            Exactly the keys and shapes of ``params``.
        state : dict of str to ndarray, optional
            The velocities returned by the previous step; None at the start.

        Returns
        -------
        new_params, new_state : dict of str to ndarray
            Fresh arrays (the inputs are not modified).
        """
        if not isinstance(params, Mapping) or not params:
            raise TypeError("params: expected a non-empty dict of arrays")
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of arrays, got {type(grads).__name__}")
        missing = [key for key in params if key not in grads]
        extra = [key for key in grads if key not in params]
        if missing or extra:
            raise ValueError("grads: keys differ from params: " + "; ".join(part for part in (
                f"missing {missing}" if missing else "",
                f"unexpected {extra} (a gradient for a name that is not a unique parameter, "
                f"e.g. a shared slot, would be lost)" if extra else "") if part))
        checked = {key: as_float_array(value, f"params[{key!r}]", allow_complex=False)
                   for key, value in params.items()}
        _check_distinct_memory(checked, "params")
        if state is None or (not state and not self.momentum):
            state = {}
        elif not isinstance(state, Mapping) or set(state) != set(params):
            raise ValueError("state: expected None or the velocities of the previous step, "
                             "keyed exactly like params")
        new_params: Params = {}
        new_state: Params = {}
        for key, value in checked.items():
            grad = as_float_array(grads[key], f"grads[{key!r}]", allow_complex=False)
            check_shape(grad, value.shape, f"grads[{key!r}]")
            if self.momentum:
                velocity = state.get(key)
                if velocity is None:
                    velocity = grad
                else:
                    check_shape(np.asarray(velocity), value.shape, f"state[{key!r}]")
                    velocity = self.momentum * velocity + grad
                new_state[key] = velocity
            else:
                velocity = grad
            new_params[key] = value - self.learning_rate * velocity
        return new_params, new_state

    def __repr__(self) -> str:
        return f"SGD(learning_rate={self.learning_rate!r}, momentum={self.momentum!r})"


class TrainResult(NamedTuple):
    params: Params       # the parameters after the last step
    losses: np.ndarray   # (steps,) the objective at the start of each step
    state: Params        # the optimizer's velocities after the last step


def train(
    objective: Callable[[Params, int], tuple[Any, Mapping[str, np.ndarray]]],
    params: Mapping[str, Any],
    optimizer: SGD,
    steps: int,
    callback: Callable[[int, Params, float], None] | None = None,
) -> TrainResult:
    """Run ``steps`` optimizer steps and return the final parameters and the loss curve.

    Parameters
    ----------
    objective : callable
        ``objective(params, step) -> (loss, grads)``; ``step`` (0, 1, ...) lets it pick a
        mini-batch deterministically; full-batch objectives ignore it.
    params : dict of str to ndarray
        The starting parameters (not modified).
    optimizer : SGD
    steps : int
        How many steps, >= 0.
    callback : callable, optional
        ``callback(step, params, loss)`` after each step's evaluation.

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        Naming the step, if the loss becomes non-finite or the objective raises
        ``FloatingPointError`` (a refimpl model's forward or backward pass overflowed): a
        learning rate too large for the problem's curvature, e.g. for a large tying strength.
    """
    if not callable(objective):
        raise TypeError(f"objective: expected a callable objective(params, step), got "
                        f"{objective!r}")
    if not isinstance(optimizer, SGD):
        raise TypeError(f"optimizer: expected an SGD instance, got {type(optimizer).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
    current: Params = dict(params)
    state: Params | None = None
    losses = np.empty(int(steps))
    for step in range(int(steps)):
        try:
            loss, grads = objective(current, step)
        except FloatingPointError as error:   # a refimpl model overflowed (it names the layer)
            raise FloatingPointError(f"train: the objective became non-finite ({error}) at "
                                     f"step {step}; lower the learning rate") from error
        loss = float(np.asarray(loss).real)
        if not math.isfinite(loss):
            raise FloatingPointError(f"train: the loss became non-finite ({loss}) at step "
                                     f"{step}; lower the learning rate")
        losses[step] = loss
        if callback is not None:
            callback(step, current, loss)
        current, state = optimizer.step(current, grads, state)
    return TrainResult(current, losses, state or {})
