"""Built-in step cases: ``K`` optimizer steps of a model with shared or tied parameters.

A step case (kind "steps") is a gradient case of another kind — its *base*: one model, a
shared model, a tied pair, an anchored model, a Siamese model, or any of them over
micro-batches — given ``K`` batches instead of one, an optimizer and optional clipping by the
total norm. Its reference is :func:`refimpl.train_steps`: the parameters after every step,
the loss at the start of every step and the gradient's norm before clipping. Every case has
``K >= 3``, so that the optimizer's state (momentum buffers, Adam's moments and step count)
matters.

What an implementation receives
-------------------------------
Through the step capability of the builder protocol (:mod:`refimpl.testing.conform`):

* ``config``: the base case's configuration (``config["model"]``, ``config["pair"]``,
  ``config["anchored"]``, ``config["siamese"]`` or ``config["base"]`` with
  ``config["micro_batches"]``; ``config["inputs"]`` describes *one* batch) plus
  ``config["steps"] = {"optimizer": ..., "clip": ... | None, "count": K, "case_kind": ...}``:
  the optimizer as :meth:`refimpl.optim.Optimizer.config` (PyTorch's hyper-parameters, and
  ``decoupled_weight_decay``, ``eps_root``, ``bias_correction`` for Adam), the clipping as
  :meth:`refimpl.ClipGradNorm.config` (``max_norm``, ``norm_type``, ``eps``: PyTorch's 1e-6)
  or None, the number of steps, and the base case's kind;
* ``params``: the starting point, keyed like the base case's (unique parameters; a pair's
  ``"A:"`` / ``"B:"`` keys);
* ``batches``: ``K`` input dicts, batch ``k`` keyed exactly like the base case's inputs
  (``x``, ``y``; ``xa``, ``ya``, ``xb``, ``yb``; ``w0:<name>``; branch inputs; micro-batch
  ``<name>.<i>``): step ``k`` evaluates the loss on ``batches[k - 1]``.

Step ``k`` (1-based, as PyTorch's step count ``t``) is what a PyTorch loop runs::

    loss_k, g = the base case's loss and gradient at theta_{k-1} on batches[k - 1]
    grad_norm_k = ||g||  over the unique parameters, before clipping (clip's norm_type; else 2)
    g = g * min(max_norm / (grad_norm_k + eps), 1)                    (with clipping)
    theta_k = the optimizer's update of theta_{k-1} with g and its state

A :class:`StepCase` is also an ordinary :class:`~refimpl.testing.cases.Case` of its first
step (``inputs`` the first batch, ``loss_and_grads`` and ``evaluate`` the base case's), so
that every tool that reads a gradient case reads a step case's first step.

Legend: ``N`` batch, ``D`` features, ``K`` steps (also classes in the base cases), ``T``
time, ``V`` vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...nn import MLP, Dense, Sequential, Siamese, Tanh, TripletMarginLoss, transposed
from ...nn.losses import MSE
from ...optim import (
    SGD,
    Adam,
    AdamW,
    ClipGradNorm,
    MicroBatches,
    Optimizer,
    Trajectory,
    optimizer_from_config,
    train_steps,
)
from ...tying import AnchoredModel, TiedPair
from . import Case
from .microbatch import join_inputs, microbatch_case
from .mlp import model_case
from .sequence import language_model, sequence_case
from .siamese import build_case, siamese_case
from .tied import anchored_case, pair_case

__all__ = ["StepCase", "step_case", "cases", "STEPS_KIND", "MIN_STEPS", "with_optimizer"]

#: The kind of every step case.
STEPS_KIND = "steps"

#: Every built-in step case runs at least this many steps (the optimizer's state matters).
MIN_STEPS = 3

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class StepCase(Case):
    """``K`` training steps of a base case (module docstring).

    The fields of :class:`~refimpl.testing.cases.Case` are the base case's first step
    (``inputs`` the first batch; ``loss_and_grads``, ``outputs`` and ``evaluate`` the base
    case's), with ``kind`` "steps" and ``config["steps"]``.

    Attributes
    ----------
    batches : tuple of dict
        ``K`` input dicts, each keyed like the base case's inputs (``batches[0] is inputs``).
    model : object
        The refimpl model :func:`refimpl.train_steps` steps (a ``Sequential``, ``TiedPair``,
        ``AnchoredModel`` or ``Siamese``).
    batch_of : callable
        ``batch_of(inputs) -> batch``: one input dict as :func:`refimpl.train_steps` takes a
        batch of ``model`` (``(x, y)``, ``((xa, ya), (xb, yb))``, a Siamese tuple, or
        :class:`refimpl.MicroBatches`).
    """

    batches: tuple[Inputs, ...] = ()
    model: Any = None
    batch_of: Callable[[Mapping[str, np.ndarray]], Any] | None = None

    @property
    def count(self) -> int:
        """``K``, the number of steps."""
        return len(self.batches)

    def optimizer(self) -> Optimizer:
        """The optimizer of ``config["steps"]["optimizer"]``."""
        return optimizer_from_config(self.config["steps"]["optimizer"],
                                     "config['steps']['optimizer']")

    def clip(self) -> ClipGradNorm | None:
        """The clipping of ``config["steps"]["clip"]`` (None without clipping)."""
        clip = self.config["steps"]["clip"]
        return None if clip is None else ClipGradNorm.from_config(clip, "config['steps']['clip']")

    def trajectory(self, params: Mapping[str, Any] | None = None,
                   batches: Sequence[Mapping[str, np.ndarray]] | None = None) -> Trajectory:
        """refimpl's reference: :func:`refimpl.train_steps` of :attr:`model` from ``params``
        (default the case's) on ``batches`` (default the case's), with the case's optimizer
        and clipping."""
        start = self.params if params is None else params
        data = self.batches if batches is None else batches
        return train_steps(self.model, start, [self.batch_of(inputs) for inputs in data],
                           self.optimizer(), clip=self.clip())


def step_case(name: str, base: Case, model: Any, later: Sequence[Inputs], optimizer: Optimizer,
              clip: ClipGradNorm | None = None,
              batch_of: Callable[[Mapping[str, np.ndarray]], Any] | None = None) -> StepCase:
    """The step case of ``base``: its point, its inputs as the first batch, ``later`` as the
    batches of steps 2 .. K, ``optimizer`` and ``clip``.

    Parameters
    ----------
    name : str
        The case's name.
    base : Case
        A gradient case of ``model`` (its ``evaluate`` is every step's loss and gradient).
    model : object
        What :func:`refimpl.train_steps` steps: a ``Sequential``, ``TiedPair``,
        ``AnchoredModel`` or ``Siamese``.
    later : sequence of dict
        The inputs of steps 2 .. K, keyed, shaped and typed like ``base.inputs``.
    optimizer : refimpl.SGD, refimpl.Adam or refimpl.AdamW
    clip : refimpl.ClipGradNorm, optional
    batch_of : callable, optional
        Inputs -> one batch of ``model`` (default: by the model's kind, :func:`batch_maker`).

    Raises
    ------
    ValueError
        For fewer than :data:`MIN_STEPS` batches, or a later batch keyed, shaped or typed
        otherwise than the first.
    """
    batches = (base.inputs, *later)
    if len(batches) < MIN_STEPS:
        raise ValueError(f"later: a step case runs at least {MIN_STEPS} steps (the optimizer's "
                         f"state must matter), got {len(batches)} batches")
    for index, inputs in enumerate(batches[1:], start=1):
        same = list(inputs) == list(base.inputs) and all(
            np.shape(inputs[key]) == np.shape(value)
            and np.asarray(inputs[key]).dtype == value.dtype for key, value in base.inputs.items())
        if not same:
            raise ValueError(f"later[{index - 1}]: the inputs of step {index + 1} must be keyed, "
                             f"shaped and typed like the first step's {list(base.inputs)}")
    steps = {"optimizer": optimizer.config(),
             "clip": None if clip is None else clip.config(),
             "count": len(batches), "case_kind": base.kind}
    return StepCase(name=name, kind=STEPS_KIND, config={**base.config, "steps": steps},
                    params=base.params, inputs=base.inputs,
                    loss_and_grads=base.loss_and_grads, outputs=base.outputs,
                    evaluate=base.evaluate, batches=batches, model=model,
                    batch_of=batch_of or batch_maker(base, model))


def with_optimizer(case: StepCase, optimizer: Optimizer, clip: ClipGradNorm | None = None,
                   name: str | None = None) -> StepCase:
    """The same step case (point, batches, model) with another optimizer and clipping."""
    steps = {**case.config["steps"], "optimizer": optimizer.config(),
             "clip": None if clip is None else clip.config()}
    return dataclasses.replace(case, name=name or case.name,
                               config={**case.config, "steps": steps})


def batch_maker(base: Case, model: Any) -> Callable[[Mapping[str, np.ndarray]], Any]:
    """``inputs -> batch``: one input dict of ``base`` as :func:`refimpl.train_steps` takes a
    batch of ``model`` (the module docstring of :mod:`refimpl.optim.training`)."""
    config = base.config
    if "micro_batches" in config:
        pair = isinstance(model, TiedPair)
        names = sorted({name.rpartition(".")[0] for name in base.inputs},
                       key=lambda name: list(base.inputs).index(f"{name}.0"))
        sizes, sizes_b = config["micro_batches"], config.get("micro_batches_b")
        single = _single_batch(model, names)

        def micro(inputs: Mapping[str, np.ndarray]) -> Any:
            whole = single(join_inputs(dict(inputs), names, len(sizes)))
            return MicroBatches(whole, list(sizes), list(sizes_b) if pair else None)
        return micro
    return _single_batch(model, list(base.inputs))


def _single_batch(model: Any, names: list[str]) -> Callable[[Mapping[str, np.ndarray]], Any]:
    """``inputs -> batch`` for a whole batch of ``model`` (inputs named ``names``)."""
    if isinstance(model, TiedPair):
        return lambda d: ((d["xa"], d["ya"]), (d["xb"], d["yb"] if "yb" in d else d["xb"]))
    if isinstance(model, Siamese):
        order = [*model.branch_names, *(("y",) if model.loss_spec.needs_target else ())]
        return lambda d: tuple(d[key] for key in order)
    return lambda d: (d["x"], d["y"])


# --- the catalogue ------------------------------------------------------------------------------

def _later(make: Callable[[int], Case], seeds: Sequence[int]) -> list[Inputs]:
    """The inputs of the cases ``make(seed)``: the same model and sizes, other data."""
    return [make(seed).inputs for seed in seeds]


def _tied_language_model() -> StepCase:
    # The tied LM of the catalogue: out.weight is embed.weight (one (V, D) parameter read by
    # the embedding and by the output layer); AdamW decays it once, the clipping counts it once.
    model = language_model(True)
    rng = np.random.default_rng(500)
    shape = (3, 6)
    batches = []
    for _ in range(4):
        tokens = rng.integers(0, model.layers[0].num_embeddings, size=(shape[0], shape[1] + 1))
        batches.append({"x": tokens[:, :-1], "y": tokens[:, 1:]})
    base = sequence_case("steps-tied-lm-base", model, batches[0]["x"], batches[0]["y"],
                         seed=500)
    return step_case("steps-tied-lm-adamw-clip", base, model, batches[1:],
                     AdamW(lr=0.05, weight_decay=0.1), ClipGradNorm(1.25))


def _shared_autoencoder() -> StepCase:
    # dec.weight = enc.weight^T: one weight, two uses (and two Dense layers whose "weight"
    # a module walk would list twice); SGD's coupled decay and momentum, once per parameter.
    model = Sequential([Dense("enc", 5, 3), Tanh(), Dense("dec", 3, 5)], loss=MSE(),
                       share={"dec.weight": transposed("enc.weight")})

    def make(seed: int) -> Case:
        return model_case("steps-shared-autoencoder-base", "shared", model, (5,), 6, seed=seed)
    return step_case("steps-shared-autoencoder-sgd-decay", make(510), model,
                     _later(make, [511, 512, 513]),
                     SGD(lr=0.2, momentum=0.9, weight_decay=0.05))


def _soft_pair() -> StepCase:
    pair = TiedPair(MLP([4, 6, 3], activation="tanh"),
                    MLP([4, 6, 2], activation="sigmoid", loss="mse"),
                    {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"}, lam=0.3)

    def make(seed: int) -> Case:
        return pair_case("steps-soft-pair-base", pair, (4,), (4,), 5, 4, seed=seed)
    return step_case("steps-tied-soft-adam", make(520), pair, _later(make, [521, 522]),
                     Adam(lr=0.02))


def _hard_pair() -> StepCase:
    # model B reads A's fc1.weight; the shared weight's gradient is the sum of both models',
    # its norm counted once (a replica counted twice over-clips every step).
    pair = TiedPair(MLP([4, 5, 3], activation="tanh"), MLP([4, 5, 2], activation="softplus"),
                    {"fc1.weight": "fc1.weight"}, mode="hard")

    def make(seed: int) -> Case:
        return pair_case("steps-hard-pair-base", pair, (4,), (4,), 6, 5, seed=seed)
    return step_case("steps-tied-hard-sgd-clip", make(530), pair, _later(make, [531, 532, 533]),
                     SGD(lr=0.3, momentum=0.5, nesterov=True), ClipGradNorm(0.3))


def _anchored() -> StepCase:
    reference = MLP([4, 6, 3], activation="tanh").init(99)
    anchored = AnchoredModel(MLP([4, 6, 3], activation="tanh"), lam=0.2, reference=reference)

    def make(seed: int) -> Case:
        return anchored_case("steps-anchored-base", anchored, (4,), 5, seed=seed,
                             reference_given=True)
    return step_case("steps-anchored-l2sp-adam-decay", make(540), anchored,
                     _later(make, [541, 542]), Adam(lr=0.05, weight_decay=0.02))


def _micro_batches() -> StepCase:
    # Unequal micro-batches of a shared MLP: each step's gradient is the whole batch's; a
    # loop that steps (or synchronises) after the wrong micro-batch diverges at step 1.
    model = MLP([3, 5, 5, 5, 2], activation="tanh",
                share={"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias"})
    sizes = [1, 3, 2]

    def make(seed: int) -> Case:
        base = model_case("steps-micro-base", "shared", model, (3,), 6, seed=seed)
        return microbatch_case("steps-micro-batches-base", base, model, sizes)
    return step_case("steps-micro-batches-adam-clip", make(550), model,
                     _later(make, [551, 552]), Adam(lr=0.03), ClipGradNorm(0.22))


def _siamese() -> StepCase:
    # A margin of 5 keeps every triplet's hinge far inside along the whole trajectory: the
    # loss is smooth there, so the steps have no kink for a dtype to land on either side of.
    tower = Sequential([Dense("fc1", 4, 5), Tanh(), Dense("fc2", 5, 3, bias=False)])
    drawn = build_case("steps-siamese-base", tower, TripletMarginLoss, (4,), 5, seed=560,
                       placement="active")
    model = Siamese(tower, TripletMarginLoss(margin=5.0))
    base = siamese_case("steps-siamese-base", model, drawn.params, drawn.inputs,
                        {**drawn.config, "siamese": model.config(),
                         "placement": "margin 5: every hinge active along the trajectory"})
    rng = np.random.default_rng(561)
    later = [{key: rng.standard_normal(value.shape) for key, value in base.inputs.items()}
             for _ in range(2)]
    return step_case("steps-siamese-triplet-adamw", base, model, later,
                     AdamW(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05))


def cases() -> list[StepCase]:
    """The step cases of the catalogue (the step probes are in :mod:`.step_probes`)."""
    return [_tied_language_model(), _shared_autoencoder(), _soft_pair(), _hard_pair(),
            _anchored(), _micro_batches(), _siamese()]
