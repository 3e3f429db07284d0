"""The pipeline mode: a model's layers split into stages, one stage per rank.

Each model of a case (a tied pair's two, a Siamese tower) is cut into ``S`` contiguous stages
with as equal a number of parameterised layers as can be (an activation goes with the layer
before it): with two stages, the tied language model's embedding lies on the first and its
RNN and output layer on the last. Every micro-batch flows forward through the stages (each
run in turn: a Siamese model's branches, a pair's two models), the last stage computes the
loss, and the gradients of the activations flow back, stage to stage, over ``send`` /
``recv``. A penalty term is computed on the stage of its first parameter, once per step.

A parameter whose uses land on several stages — the tied embedding and output layer, a shared
kernel, a tied decoder reading the encoder's weight transposed, a penalty pulling a weight
of one stage towards one of another — has a *copy* on each of those stages, held as the first
layer on that stage reads it (a decoder holds the transposed encoder weight as its own
``(out, in)`` weight), each with only that stage's part of the gradient. Before the step the
copies' gradients are all-reduced (summed) in the parameter's own layout within the group of
the stages holding one: Megatron-LM's "embedding group" (first and last stage), generalised
to any shared parameter. Then every copy holds the gradient of the one unique parameter.

A training step (``_jobs.run_step_job``): each stage's optimizer steps its own copies — equal
values, equal gradients, so equal updates keep the copies equal — after the clipping by the
global gradient norm: each stage's norm over the parameters it holds *first*, combined over
every stage by an all-reduce, so that a parameter with copies on two stages is counted once
(Megatron-LM marks the last stage's copy of the tied embedding ``shared`` and leaves it out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from .._config import CasePlan, LayerStep, ModelPlan, Term, Use
from .._microbatches import micro_batches
from ..torch import TORCH_DTYPES, _forward, _loss, _metric_loss, _penalty
from ._modules import tensors
from ._ranks import concatenate_outputs, gather_to_first

__all__ = ["StagePlan", "PipelineLayout", "pipeline_layout", "logical_order", "Stage", "Hooks",
           "HOOKS", "reduce_shared_copies", "counted_in_norm", "global_norm"]


class StagePlan(NamedTuple):
    """What one stage computes.

    ``parts``: per distinct model, its layers on this stage, each use rewritten to read this
    stage's copy (``Use(key, transpose)`` relative to how the copy is held); ``terms``: the
    penalty terms computed here; ``held``: every parameter this stage holds a copy of, in the
    order of first use, with whether it holds it transposed.
    """

    parts: tuple[ModelPlan, ...]
    terms: tuple[Term, ...]
    held: dict[str, bool]


class PipelineLayout(NamedTuple):
    """A case over ``len(stages)`` stages: each stage's plan, each run's model (an index into
    ``parts``), and for each parameter the stages holding a copy, ascending."""

    stages: tuple[StagePlan, ...]
    run_models: tuple[int, ...]
    holders: dict[str, tuple[int, ...]]


def _cuts(model: ModelPlan, stages: int) -> list[int]:
    """The layer index where each stage starts, and the end: ``stages + 1`` numbers. Stage
    ``s`` starts at parameterised layer ``floor(s P / S)`` of the ``P``."""
    with_parameters = [index for index, step in enumerate(model.layers) if step.params]
    count = len(with_parameters)
    starts = [0]
    for stage in range(1, stages):
        first = stage * count // stages
        starts.append(with_parameters[first] if first < count else len(model.layers))
    return starts + [len(model.layers)]


def pipeline_layout(plan: CasePlan, stages: int) -> PipelineLayout:
    """Where every layer, term and copy of ``plan`` lies on ``stages`` stages (the same on
    every rank: it depends on the plan alone)."""
    distinct: list[ModelPlan] = []
    for run in plan.runs:
        if run.model not in distinct:
            distinct.append(run.model)
    cuts = [_cuts(model, stages) for model in distinct]
    slices = [[model.layers[cut[stage]:cut[stage + 1]]
               for model, cut in zip(distinct, cuts, strict=True)] for stage in range(stages)]
    home: dict[str, int] = {}
    for stage in range(stages):
        for layers in slices[stage]:
            for step in layers:
                for use in step.params.values():
                    home.setdefault(use.key, stage)
    plans, holders = [], {key: [] for key in plan.parameters}
    for stage in range(stages):
        terms = tuple(term for term in plan.terms if home[term.key] == stage)
        uses = [use for layers in slices[stage] for step in layers for use in step.params.values()]
        for term in terms:
            uses.append(Use(term.key, False))
            if not term.from_inputs:
                uses.append(Use(term.other, term.transpose))
        held: dict[str, bool] = {}
        for use in uses:
            held.setdefault(use.key, use.transpose)
        for key in held:
            holders[key].append(stage)
        parts = tuple(ModelPlan(tuple(
            LayerStep(step.type, step.options,
                      {local: Use(use.key, use.transpose ^ held[use.key])
                       for local, use in step.params.items()}) for step in layers), model.loss)
            for model, layers in zip(distinct, slices[stage], strict=True))
        plans.append(StagePlan(parts, terms, held))
    return PipelineLayout(tuple(plans), tuple(distinct.index(run.model) for run in plan.runs),
                          {key: tuple(stages_) for key, stages_ in holders.items()})


_GROUPS: dict[Any, Any] = {"world": None}


def _group(ranks: tuple[int, ...]) -> Any:
    """The process group of ``ranks`` (None: every rank), made once per process group:
    ``new_group`` is called by every rank in the same order (the sorted order of
    :class:`Stage`)."""
    if len(ranks) == dist.get_world_size():
        return None
    if _GROUPS["world"] is not dist.group.WORLD:       # a new process group: new subgroups
        _GROUPS.clear()
        _GROUPS["world"] = dist.group.WORLD
    if ranks not in _GROUPS:
        _GROUPS[ranks] = dist.new_group(list(ranks))
    return _GROUPS[ranks]


def _logical(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    return tensor.T if transposed else tensor


def logical_order(shape: tuple[int, ...], transposed: bool) -> torch.Tensor:
    """Where each element of a parameter lies in a copy of it held as ``shape`` (transposed
    when ``transposed``): ``copy.view(-1)[order]`` is the parameter, flattened in its own
    layout, and ``copy.view(-1)[order] = values`` writes it back."""
    positions = torch.arange(int(np.prod(shape))).reshape(shape)
    return _logical(positions, transposed).reshape(-1)


def reduce_shared_copies(stage: Stage) -> None:
    """Sum the gradients of every parameter's copies over the stages holding one (Megatron-LM's
    embedding-group all-reduce, generalised), in the parameter's own layout."""
    with torch.no_grad():
        for key in stage.shared:
            flat = stage.gradient(key).view(-1)      # this stage's copy, as its layers hold it
            order = stage.logical_order[key]         # where each logical element lies in it
            logical = flat[order]                    # the gradient in the parameter's layout
            dist.all_reduce(logical, group=stage.groups[key])
            flat[order] = logical


def counted_in_norm(stage: Stage) -> list[torch.Tensor]:
    """The gradients this stage counts in the global gradient norm: those of the parameters
    whose first holder it is, so that each unique parameter is counted once over the stages
    however many copies it has (Megatron-LM marks the last stage's copy of the tied embedding
    ``shared`` and leaves it out of the norm)."""
    return [stage.gradient(key) for key in stage.leaves
            if stage.layout.holders[key][0] == stage.stage]


def global_norm(gradients: list[torch.Tensor], norm_type: float, dtype: torch.dtype
                ) -> torch.Tensor:
    """The total ``p``-norm over every stage of the gradients each stage counts: this stage's
    ``get_total_norm`` (``clip_grad_norm_``'s first half), then ``(sum_s n_s^p)^(1/p)`` over
    the stages by an all-reduce (``max_s n_s`` for ``p = inf``), as Megatron-LM's
    ``get_grad_norm_fp32`` combines the pipeline's stages. Every rank returns the same."""
    local = (torch.nn.utils.get_total_norm(gradients, norm_type) if gradients
             else torch.zeros((), dtype=dtype))
    if math.isinf(norm_type):
        total = local.reshape(1).clone()
        dist.all_reduce(total, op=dist.ReduceOp.MAX)
        return total[0]
    total = (local ** norm_type).reshape(1)
    dist.all_reduce(total)
    return total[0] ** (1.0 / norm_type)


class Hooks(NamedTuple):
    """The lines of the pipeline step that the planted bugs change (functions, sent to the
    ranks by reference)."""

    reduce_shared_copies: Callable[[Stage], None]
    counted_in_norm: Callable[[Stage], list[torch.Tensor]]


HOOKS = Hooks(reduce_shared_copies, counted_in_norm)

#: Length of the header sent before an activation: float or not, the number of axes, the
#: shape (up to 8 axes).
_HEADER = 10


def _send(tensor: torch.Tensor, peer: int) -> None:
    header = torch.zeros(_HEADER, dtype=torch.int64)
    header[0], header[1] = int(tensor.is_floating_point()), tensor.dim()
    header[2:2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    dist.send(header, peer)
    dist.send(tensor.detach().contiguous(), peer)


def _receive(peer: int, dtype: torch.dtype) -> torch.Tensor:
    header = torch.empty(_HEADER, dtype=torch.int64)
    dist.recv(header, peer)
    shape = tuple(header[2:2 + int(header[1])].tolist())
    tensor = torch.empty(shape, dtype=dtype if header[0] else torch.int64)
    dist.recv(tensor, peer)
    return tensor


class Stage:
    """This rank's stage: its copies of the parameters (leaf tensors, held as its layers read
    them) and one step over the micro-batches."""

    def __init__(self, plan: CasePlan, params: Mapping[str, np.ndarray], dtype: str,
                 hooks: Hooks, options: Mapping[str, Any]) -> None:
        self.plan, self.hooks, self.dtype = plan, hooks, TORCH_DTYPES[dtype]
        self.stage, self.stages = dist.get_rank(), dist.get_world_size()
        self.layout = pipeline_layout(plan, self.stages)
        self.mine = self.layout.stages[self.stage]
        self.leaves = {key: torch.tensor(np.asarray(params[key]).T if transposed
                                         else np.asarray(params[key]),
                                         dtype=self.dtype).requires_grad_(True)
                       for key, transposed in self.mine.held.items()}
        for ranks in sorted({holders for holders in self.layout.holders.values()
                             if len(holders) > 1}):
            _group(ranks)
        self.shared = sorted(key for key in self.mine.held if len(self.layout.holders[key]) > 1)
        self.groups = {key: _group(self.layout.holders[key]) for key in self.shared}
        self.logical_order = {key: logical_order(tuple(self.leaves[key].shape),
                                                 self.mine.held[key]) for key in self.shared}

    def gradient(self, key: str) -> torch.Tensor:
        """This stage's gradient of its copy of ``key`` (zero if no use here was reached)."""
        leaf = self.leaves[key]
        if leaf.grad is None:
            leaf.grad = torch.zeros_like(leaf)
        elif not leaf.grad.is_contiguous():     # accumulated through a transposed read
            leaf.grad = leaf.grad.contiguous()
        return leaf.grad

    def step(self, inputs: Mapping[str, np.ndarray], start: int = 0
             ) -> tuple[float, dict[str, np.ndarray]]:
        """One step over the micro-batches, then the copies' all-reduce. Returns the step's
        loss and, at rank 0, the outputs (``{}`` elsewhere). ``start`` (the micro-batches of
        earlier steps) changes nothing here: every micro-batch's gradient flows back alike."""
        plan, stage, last = self.plan, self.stage, self.stages - 1
        total, outputs = 0.0, {}
        for batch in micro_batches(plan, inputs):
            data = tensors(batch.inputs, self.dtype)
            received, produced = [], []
            for run, model in zip(plan.runs, self.layout.run_models, strict=True):
                x = data[run.input] if stage == 0 else _receive(stage - 1, self.dtype)
                if stage > 0 and x.is_floating_point():
                    x.requires_grad_(True)
                y = _forward(self.mine.parts[model], self.leaves, x)
                received.append(x)
                produced.append(y)
                if stage < last:
                    _send(y, stage + 1)
            if stage == last:
                loss = self._loss(batch.weights, produced, data)
                loss.backward()
                total += loss.item()
                outputs.update({run.output + batch.suffix: y.detach().numpy()
                                for run, y in zip(plan.runs, produced, strict=True)})
            else:
                pairs = []
                for y in produced:
                    if y.is_floating_point():
                        gradient = _receive(stage + 1, self.dtype)
                        if y.requires_grad:
                            pairs.append((y, gradient))
                if pairs:
                    torch.autograd.backward([y for y, _ in pairs], [g for _, g in pairs])
            if stage > 0:
                for x in received:
                    if x.is_floating_point():
                        _send(x.grad if x.grad is not None else torch.zeros_like(x), stage - 1)
        if self.mine.terms:
            # The penalty reads the parameters only: once per step, on its first stage.
            logical = {key: _logical(leaf, self.mine.held[key])
                       for key, leaf in self.leaves.items()}
            references = tensors({term.other: inputs[term.other] for term in self.mine.terms
                                  if term.from_inputs and term.other in inputs}, self.dtype)
            penalty = sum(_penalty(plan.penalty, term, logical, references)
                          for term in self.mine.terms)
            penalty.backward()
            total += penalty.item()
        self.hooks.reduce_shared_copies(self)
        loss = torch.tensor([total], dtype=torch.float64)
        dist.all_reduce(loss)
        pieces = gather_to_first(outputs)
        return loss.item(), concatenate_outputs(pieces) if pieces else {}

    def _loss(self, weights: tuple[float, ...], produced: list[torch.Tensor],
              data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        plan = self.plan
        if plan.metric is not None:
            return weights[0] * _metric_loss(plan.metric, produced, data)
        return sum(weight * _loss(run.model.loss, y,
                                  next(data[key] for key in run.targets if key in data))
                   for run, y, weight in zip(plan.runs, produced, weights, strict=True))

    def gradients(self) -> dict[str, np.ndarray] | None:
        """Every unique parameter's gradient, in its own layout, at rank 0 (from the first
        stage holding it; after the all-reduce every copy holds the same)."""
        return self._gather({key: self.gradient(key) for key in self.leaves})

    # --- the training steps (``_jobs.run_step_job``) ---------------------------------------------

    def trained(self) -> list[torch.Tensor]:
        """The tensors this stage's optimizer steps: its copies. The copies of a shared
        parameter hold the same values and, after the all-reduce, the same gradient: the same
        update keeps them equal."""
        return list(self.leaves.values())

    def gradient_norm(self, norm_type: float) -> torch.Tensor:
        """The global gradient norm (:func:`global_norm`) over the gradients each stage counts
        (``Hooks.counted_in_norm``)."""
        return global_norm(self.hooks.counted_in_norm(self), norm_type, self.dtype)

    def parameters(self) -> dict[str, np.ndarray] | None:
        """Every unique parameter's value, in its own layout, at rank 0 (from the first stage
        holding it)."""
        return self._gather(self.leaves)

    def _gather(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
        """``tensors`` (this stage's, keyed by parameter, as its copies are held) in each
        parameter's own layout at rank 0, each from the first stage holding it."""
        mine = {key: _logical(tensor, self.mine.held[key]).detach().numpy().copy()
                for key, tensor in tensors.items() if self.layout.holders[key][0] == self.stage}
        pieces = gather_to_first(mine)
        if pieces is None:
            return None
        merged = {key: value for piece in pieces for key, value in piece.items()}
        return {key: merged[key] for key in self.plan.parameters}
