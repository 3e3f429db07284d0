"""Training steps over every model kind: the step's gradient (a tying penalty counted once),
optional clipping, the update; ``K`` steps as a trajectory.

One step, as a PyTorch training loop runs it (``loss.backward()``,
``clip_grad_norm_``, ``optimizer.step()``)::

    loss, g  = the model's loss and gradient at theta_{k-1} on batch k   (unique parameters)
    norm     = ||g||                       (before clipping; the clip's norm_type, else 2)
    g        = g * min(max_norm / (norm + 1e-6), 1)                      (with clip)
    theta_k, state_k = optimizer.step(theta_{k-1}, g, state_{k-1})

Parameters are one flat dict of **unique** parameters for every model kind (a shared
parameter is one key, a hard-tied pair's shared parameter is one ``"A:"`` key), so the norm
counts each once and the optimizer keeps one state for each. Nothing is written into the
caller's arrays.

One step's batch, by model kind (``batches`` of :func:`train_steps` is a list of these, one
per step)::

    Sequential (shared or not), AnchoredModel   (x, y)
    TiedPair (params: the joined dict)          ((xa, ya), (xb, yb))
    Siamese, triplet loss                       (anchor, positive, negative)
    Siamese, contrastive loss                   (x1, x2, y)
    a callable f(params, batch) -> (loss, grads)   whatever f takes
    any of them, accumulated over micro-batches MicroBatches(batch, splits[, splits_b])

with ``x`` (N, D) or (N, C, H, W) (integer ids (N, T) for an embedding), ``y`` the targets
of the model's loss (N,) class labels or (N, K) regression targets; a pair's two batches
may have different sizes; a Siamese branch input (N, ...) per branch, ``y`` (N,) 1 similar /
0 dissimilar. :class:`MicroBatches` splits the step's batch as
:func:`refimpl.accumulated_loss_and_grads` does (``splits_b`` for a pair's B batch): the
gradient is the full batch's, a tying or anchoring penalty added once per step.

Legend: ``N`` batch, ``C`` channels, ``H``/``W`` height/width, ``D`` features, ``K`` classes
or outputs, ``T`` time; ``K`` steps in a trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..microbatch import accumulated_loss_and_grads
from ..nn import Sequential, Siamese
from ..tying import AnchoredModel, TiedPair
from ._params import Params, check_params
from .clipping import ClipGradNorm, gradient_norm
from .optimizers import Optimizer, State

__all__ = ["MicroBatches", "StepResult", "Trajectory", "step_loss_and_grads", "train_step",
           "train_steps", "TrainResult", "train"]


class MicroBatches(NamedTuple):
    """One step's batch accumulated over micro-batches
    (:func:`refimpl.accumulated_loss_and_grads`).

    Attributes
    ----------
    batch : tuple
        The step's whole batch, in the form of its model kind (module docstring).
    splits : sequence
        Micro-batch sizes ``[n_1, ...]`` summing to ``N``, or index lists partitioning
        ``range(N)``; for a pair, of A's batch.
    splits_b : sequence, optional
        A ``TiedPair``'s B batch's micro-batches (required for a pair, refused otherwise).
    """

    batch: Any
    splits: Any
    splits_b: Any = None


class StepResult(NamedTuple):
    """One training step (:func:`train_step`)."""

    params: Params      # the parameters after the step (new arrays)
    state: State        # the optimizer's state after the step
    loss: float         # the objective at the parameters before the step
    grad_norm: float    # the gradient's total norm before clipping


class Trajectory(NamedTuple):
    """``K`` training steps (:func:`train_steps`).

    Attributes
    ----------
    params : list of dict
        ``K`` dicts: the parameters after every step (new arrays).
    losses : ndarray, shape (K,)
        The objective at the start of every step (before its update): for a pair
        ``L_A + L_B + penalty``, for an anchored model ``L + penalty``.
    grad_norms : ndarray, shape (K,)
        The total norm of every step's gradient before clipping, over the unique parameters
        (the clip's ``norm_type``; the 2-norm without clipping), as
        ``torch.nn.utils.clip_grad_norm_`` returns it.
    state : dict
        The optimizer's state after the last step (the given ``state``, or ``{}``, for
        ``K = 0``); pass it to :func:`train_steps` to continue.
    """

    params: list[Params]
    losses: np.ndarray
    grad_norms: np.ndarray
    state: State


def _kind(model: Any) -> str:
    """Which of the model kinds ``model`` is, or a ``TypeError``."""
    if isinstance(model, TiedPair):
        return "pair"
    if isinstance(model, AnchoredModel):
        return "anchored"
    if isinstance(model, Siamese):
        return "siamese"
    if isinstance(model, Sequential):
        if model.loss_spec is None:
            raise ValueError("model: a Sequential without a loss has nothing to train; build "
                             "it with loss=...")
        return "sequential"
    if callable(model):
        return "callable"
    raise TypeError(f"model: expected a Sequential, TiedPair, AnchoredModel, Siamese or a "
                    f"callable f(params, batch) -> (loss, grads), got {type(model).__name__}")


def _check_model_params(model: Any, kind: str, params: Any) -> Params:
    """The starting point checked by the model (keys, shapes, finite), as float64."""
    if kind == "pair":
        if isinstance(params, (tuple, list)):
            raise TypeError("params: a TiedPair is stepped as one flat dict of its unique "
                            "parameters; pass pair.join(params_a, params_b)")
        model.check_params(*model.split(params))
    elif kind == "anchored":
        model.model.check_params(params)
    elif kind in ("siamese", "sequential"):
        model.check_params(params)
    return check_params(params)


def _tuple(batch: Any, length: int, where: str, what: str) -> tuple[Any, ...]:
    if not isinstance(batch, (tuple, list)) or len(batch) != length:
        got = (f"a {type(batch).__name__} of {len(batch)}"
               if isinstance(batch, (tuple, list)) else type(batch).__name__)
        raise TypeError(f"{where}: expected {what}, got {got} (batches holds one batch per "
                        f"step)")
    return tuple(batch)


def _evaluate(model: Any, kind: str, params: Params, batch: Any, where: str
              ) -> tuple[Any, Mapping[str, Any]]:
    """The step's loss and gradient, by model kind (module docstring)."""
    if isinstance(batch, MicroBatches):
        return accumulated_loss_and_grads(model, params, batch.batch, batch.splits,
                                          splits_b=batch.splits_b)
    if kind == "pair":
        batch_a, batch_b = _tuple(batch, 2, where, "((xa, ya), (xb, yb))")
        _tuple(batch_a, 2, f"{where}[0]", "(xa, ya)")
        _tuple(batch_b, 2, f"{where}[1]", "(xb, yb)")
        return model.joined_loss_and_grads(params, batch_a, batch_b)
    if kind == "siamese":
        branches = model.loss_spec.branches
        if model.loss_spec.needs_target:
            arrays = _tuple(batch, branches + 1, where,
                            f"({', '.join(model.branch_names)}, y)")
            return model.loss_and_grads(params, *arrays[:branches], y=arrays[branches])
        arrays = _tuple(batch, branches, where, f"({', '.join(model.branch_names)})")
        return model.loss_and_grads(params, *arrays)
    if kind == "callable":
        return model(params, batch)
    x, y = _tuple(batch, 2, where, "(x, y)")
    return model.loss_and_grads(params, x, y)


def _as_clip(clip: Any) -> ClipGradNorm | None:
    if clip is None:
        return None
    if isinstance(clip, ClipGradNorm):
        return clip.checked()
    if isinstance(clip, Mapping):
        return ClipGradNorm.from_config(clip)
    if isinstance(clip, (int, float, np.integer, np.floating)) and not isinstance(clip, bool):
        return ClipGradNorm(clip).checked()
    raise TypeError(f"clip: expected None, a max_norm > 0, a ClipGradNorm or its config, got "
                    f"{type(clip).__name__} {clip!r:.80}")


def _check_optimizer(optimizer: Any) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer: expected a refimpl optimizer (SGD, Adam, AdamW), got "
                        f"{type(optimizer).__name__}")
    return optimizer


def _step(model: Any, kind: str, params: Params, batch: Any, optimizer: Optimizer,
          state: State | None, clip: ClipGradNorm | None, where: str, index: int
          ) -> StepResult:
    """One step on checked arguments; errors name ``where`` (the batch) and the step."""
    try:
        loss, grads = _evaluate(model, kind, params, batch, where)
    except FloatingPointError as error:   # a refimpl model overflowed (it names the layer)
        raise FloatingPointError(f"step {index}: the objective became non-finite ({error}); "
                                 f"lower the learning rate") from error
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None
    loss = np.asarray(loss)
    if loss.shape != () or loss.dtype.kind not in "fiu":
        raise TypeError(f"{where}: the model returned a loss that is not a real scalar: "
                        f"{loss!r:.80}")
    loss = float(loss)
    if not math.isfinite(loss):
        raise FloatingPointError(f"step {index}: the loss became non-finite ({loss}); lower "
                                 f"the learning rate")
    try:
        if clip is None:
            norm = gradient_norm(grads)
        else:
            grads, norm = clip.clip(grads)
        new_params, new_state = optimizer.step(params, grads, state)
    except FloatingPointError as error:   # the norm or an updated parameter overflowed
        raise FloatingPointError(f"step {index}: {error}; lower the learning rate") from error
    return StepResult(new_params, new_state, loss, norm)


def step_loss_and_grads(model: Any, params: Mapping[str, Any], batch: Any
                        ) -> tuple[float, Params]:
    """One step's objective and gradient for any model kind, without the update.

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.TiedPair, refimpl.AnchoredModel, refimpl.Siamese or callable
        The model (module docstring).
    params : dict of str to ndarray
        Its unique parameters (a pair's joined dict).
    batch : tuple or refimpl.MicroBatches
        One step's batch in the form of the model kind (module docstring).

    Returns
    -------
    loss : float or complex
    grads : dict of str to ndarray
        Keyed like ``params``.
    """
    kind = _kind(model)
    checked = _check_model_params(model, kind, params)
    try:
        return _evaluate(model, kind, checked, batch, "batch")
    except (TypeError, ValueError) as error:
        raise type(error)(f"batch: {error}") from None


def train_step(model: Any, params: Mapping[str, Any], batch: Any, optimizer: Optimizer,
               state: State | None = None, clip: Any = None) -> StepResult:
    """One training step: the gradient (a tying penalty once), optional clipping, the update.

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.TiedPair, refimpl.AnchoredModel, refimpl.Siamese or callable
        The model kind decides the form of ``batch`` (module docstring).
    params : dict of str to ndarray
        The unique parameters before the step (a pair's joined dict); not modified.
    batch : tuple or refimpl.MicroBatches
        The step's batch.
    optimizer : refimpl.SGD, refimpl.Adam or refimpl.AdamW
    state : dict, optional
        The optimizer state of the previous step; None at the start.
    clip : float, refimpl.ClipGradNorm or dict, optional
        A ``max_norm`` (the 2-norm, PyTorch's 1e-6), a :class:`ClipGradNorm`, or its config.

    Returns
    -------
    StepResult
        ``(params, state, loss, grad_norm)``: the new parameters and state, the loss before
        the update, the gradient's norm before clipping.

    Raises
    ------
    TypeError, ValueError
        Naming the argument: a model, batch, optimizer or clip of the wrong form.
    FloatingPointError
        If the loss, the gradient or an updated parameter became non-finite.
    """
    kind = _kind(model)
    _check_optimizer(optimizer)
    clip = _as_clip(clip)
    checked = _check_model_params(model, kind, params)
    return _step(model, kind, checked, batch, optimizer, state, clip, "batch", 0)


def train_steps(model: Any, params: Mapping[str, Any], batches: Any, optimizer: Optimizer,
                clip: Any = None, state: State | None = None) -> Trajectory:
    """``K`` training steps of any model kind; the trajectory of parameters, losses and norms.

    Step ``k`` evaluates the model on ``batches[k]`` at the parameters after step ``k - 1``,
    clips the gradient if asked, and updates every unique parameter once (module docstring).

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.TiedPair, refimpl.AnchoredModel, refimpl.Siamese or callable
        The model kind decides the form of each batch (module docstring).
    params : dict of str to ndarray
        The starting unique parameters (a pair's joined dict, ``pair.join(params_a,
        params_b)``); not modified.
    batches : list
        ``K`` >= 0 batches, one per step, each in the form of the model kind or a
        :class:`MicroBatches`.
    optimizer : refimpl.SGD, refimpl.Adam or refimpl.AdamW
    clip : float, refimpl.ClipGradNorm or dict, optional
        Clipping by the total norm before every update: a ``max_norm`` (the 2-norm with
        PyTorch's 1e-6), a :class:`ClipGradNorm`, or its config.
    state : dict, optional
        An optimizer state to continue from (a previous trajectory's); None starts fresh.

    Returns
    -------
    Trajectory
        ``params`` after every step (``K`` dicts), ``losses`` (K,), ``grad_norms`` (K,)
        before clipping, and the final optimizer ``state``.

    Raises
    ------
    TypeError, ValueError
        Naming the argument (``batches[k]`` for a step's batch).
    FloatingPointError
        Naming the step, if the loss, the gradient or an updated parameter became
        non-finite (a learning rate too large for the problem).

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> model = ri.MLP([3, 4, 2])
    >>> rng = np.random.default_rng(0)
    >>> batches = [(rng.standard_normal((5, 3)), rng.integers(0, 2, 5)) for _ in range(3)]
    >>> run = ri.train_steps(model, model.init(seed=0), batches, ri.AdamW(lr=0.01), clip=1.0)
    >>> len(run.params), run.losses.shape, run.grad_norms.shape
    (3, (3,), (3,))
    """
    kind = _kind(model)
    _check_optimizer(optimizer)
    clip = _as_clip(clip)
    if not isinstance(batches, (list, tuple)):
        raise TypeError(f"batches: expected a list with one batch per step, got "
                        f"{type(batches).__name__}")
    current = _check_model_params(model, kind, params)
    trajectory: list[Params] = []
    losses = np.empty(len(batches))
    norms = np.empty(len(batches))
    for index, batch in enumerate(batches):
        result = _step(model, kind, current, batch, optimizer, state, clip,
                       f"batches[{index}]", index)
        current, state = result.params, result.state
        trajectory.append(current)
        losses[index], norms[index] = result.loss, result.grad_norm
    return Trajectory(trajectory, losses, norms, dict(state or {}))


# --- a loop over an objective ------------------------------------------------------------------

class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    params: Params       # the parameters after the last step
    losses: np.ndarray   # (steps,) the objective at the start of each step
    state: State         # the optimizer's state after the last step


def train(
    objective: Callable[[Params, int], tuple[Any, Mapping[str, np.ndarray]]],
    params: Mapping[str, Any],
    optimizer: Optimizer,
    steps: int,
    callback: Callable[[int, Params, float], None] | None = None,
) -> TrainResult:
    """Run ``steps`` optimizer steps of an objective; the final parameters and the loss curve.

    :func:`train_steps` keeps every step's parameters and norms; this loop keeps the last
    parameters only, for long runs (``refimpl demo``).

    Parameters
    ----------
    objective : callable
        ``objective(params, step) -> (loss, grads)``; ``step`` (0, 1, ...) lets it pick a
        mini-batch deterministically; full-batch objectives ignore it.
    params : dict of str to ndarray
        The starting parameters (not modified).
    optimizer : refimpl.SGD, refimpl.Adam or refimpl.AdamW
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
    _check_optimizer(optimizer)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
    current: Params = dict(params)
    state: State | None = None
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
