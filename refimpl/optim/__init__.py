"""Reference optimizers, clipping and training steps over every model kind.

- :mod:`.optimizers`: :class:`SGD`, :class:`Adam`, :class:`AdamW`, PyTorch's update rules to
  the letter in float64, their state kept per unique parameter, their configuration as data
  (:func:`optimizer_from_config`);
- :mod:`.clipping`: :func:`clip_grad_norm`, PyTorch's clipping by the total norm over the
  unique parameters;
- :mod:`.training`: :func:`train_step` and :func:`train_steps` (the trajectory of ``K``
  steps) for a ``Sequential`` (shared or not), a ``TiedPair`` (soft, hard, L1), an
  ``AnchoredModel``, a ``Siamese`` model and micro-batch accumulation; :func:`train`, the
  loop over an objective.

Parameters are a plain ``dict[str, np.ndarray]`` of *unique* parameters (a shared parameter
is one key, whatever the number of its uses; a tied pair is one flat dict, see
:meth:`refimpl.tying.TiedPair.join`). Every step updates each key exactly once and returns
new dicts; it never writes into its inputs.

The classic sharing bug of frameworks is a parameter listed twice (two optimizer groups holding
one tensor), hence stepped twice per iteration and counted twice in the gradient norm. Here a
parameter cannot be listed twice by name, and two keys holding the *same memory* (``{"a": w,
"b": w}`` or views of one array) are refused: they would be stepped as two parameters that then
silently diverge, which is neither sharing nor tying. Share with ``Sequential(share=...)`` or
``TiedPair(mode="hard")`` instead.
"""

from .clipping import CLIP_EPS, ClipGradNorm, clip_grad_norm, gradient_norm
from .optimizers import OPTIMIZERS, SGD, Adam, AdamW, Optimizer, State, optimizer_from_config
from .training import (
    MicroBatches,
    StepResult,
    TrainResult,
    Trajectory,
    step_loss_and_grads,
    train,
    train_step,
    train_steps,
)

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "optimizer_from_config", "State",
    "gradient_norm", "clip_grad_norm", "ClipGradNorm", "CLIP_EPS",
    "MicroBatches", "StepResult", "Trajectory", "step_loss_and_grads", "train_step",
    "train_steps", "TrainResult", "train",
]
