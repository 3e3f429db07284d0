"""A case plan as an ``nn.Module`` (what ``DistributedDataParallel`` and ``fully_shard`` wrap).

:func:`refimpl.adapters.plan_case` resolves every layer slot to the unique parameter it reads;
here each layer becomes a small module (:class:`Layer`) running the PyTorch adapter's own
function for its type (:data:`refimpl.adapters.torch.LAYERS`), and each unique parameter one
``nn.Parameter``, registered on the first layer that reads it and *the same object* on every
other layer that reads it: a tie as ``transformers`` writes it (``lm_head.weight =
embed.weight``). ``named_parameters()`` lists a tied parameter once, DDP and FSDP treat it as
one parameter, and autograd sums the gradients of its uses.

The module is built on the ``meta`` device (no storage, no random initialisation) and made
real by :meth:`CaseModule.to_empty` — fresh, uninitialised storage for every parameter, which
unties a tie held by two modules (each gets its own tensor) — then :meth:`CaseModule.tie`
and :meth:`CaseModule.load`, as a checkpoint is loaded into a model skeleton.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .._config import CasePlan, LayerStep, ModelPlan
from ..torch import LAYERS, _loss, _metric_loss, _penalty, _tensor

__all__ = ["Layer", "CaseModule", "use_counts", "tensors"]


class Layer(nn.Module):
    """One layer of a plan: ``LAYERS[type](x, {local: parameter or its transpose}, options)``.

    Its parameters are registered by :class:`CaseModule` under their local names
    (``weight``, ``bias``, ``weight_ih``, ...); ``reads[local]`` says whether the layer reads
    that parameter transposed (a tied decoder reading the encoder's weight).
    """

    def __init__(self, step: LayerStep) -> None:
        super().__init__()
        self.kind, self.options = step.type, step.options
        self.reads = {local: use.transpose for local, use in step.params.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = {local: getattr(self, local).T if transposed else getattr(self, local)
                 for local, transposed in self.reads.items()}
        return LAYERS[self.kind](x, slots, self.options)

    def extra_repr(self) -> str:
        return self.kind


def use_counts(plan: CasePlan) -> dict[str, int]:
    """How many times one step reads each parameter: once per layer slot per run (a Siamese
    tower's layers once per branch) and once per penalty term it is in."""
    counts = dict.fromkeys(plan.parameters, 0)
    for run in plan.runs:
        for step in run.model.layers:
            for use in step.params.values():
                counts[use.key] += 1
    for term in plan.terms:
        counts[term.key] += 1
        if not term.from_inputs:
            counts[term.other] += 1
    return counts


class CaseModule(nn.Module):
    """A whole case: its models (a tied pair's two, a Siamese model's one tower) as
    ``nn.ModuleList`` s of :class:`Layer`, its loss, metric and penalty terms in
    :meth:`forward`.

    Parameters
    ----------
    plan : CasePlan
    shapes : dict of str to tuple of int
        Every unique parameter's shape.
    dtype : torch.dtype
    """

    def __init__(self, plan: CasePlan, shapes: Mapping[str, tuple[int, ...]],
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.plan = plan
        distinct: list[ModelPlan] = []
        for run in plan.runs:          # a Siamese model's runs share one tower
            if run.model not in distinct:
                distinct.append(run.model)
        self.run_models = tuple(distinct.index(run.model) for run in plan.runs)
        self.models = nn.ModuleList(nn.ModuleList(Layer(step) for step in model.layers)
                                    for model in distinct)
        self.owners: dict[str, tuple[Layer, str]] = {}
        self.ties: list[tuple[Layer, str, str]] = []
        for model, layers in zip(distinct, self.models, strict=True):
            for step, layer in zip(model.layers, layers, strict=True):
                for local, use in step.params.items():
                    if use.key in self.owners:
                        self.ties.append((layer, local, use.key))
                    else:
                        layer.register_parameter(local, nn.Parameter(
                            torch.empty(shapes[use.key], dtype=dtype, device="meta")))
                        self.owners[use.key] = (layer, local)
        self.tie()

    def parameter(self, key: str) -> torch.Tensor:
        """The tensor the unique parameter ``key`` is now (FSDP swaps sharded and unsharded
        tensors in and out of the modules)."""
        layer, local = self.owners[key]
        return getattr(layer, local)

    def tie(self) -> None:
        """Make every later slot of a parameter hold its first slot's ``nn.Parameter``."""
        for layer, local, key in self.ties:
            setattr(layer, local, self.parameter(key))

    def load(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy the case's values into every slot, a tied slot too (as a state dict that
        lists ``lm_head.weight`` beside ``embed.weight`` does)."""
        slots = [(layer, local, key) for key, (layer, local) in self.owners.items()]
        with torch.no_grad():
            for layer, local, key in slots + self.ties:
                target = getattr(layer, local)
                target.copy_(torch.as_tensor(np.asarray(params[key]), dtype=target.dtype))

    def layers_used_once(self) -> list[Layer]:
        """The layers whose every parameter has a single use in the step (no tie, no sharing,
        no penalty, not a tower run per branch): each may be its own FSDP group."""
        counts = use_counts(self.plan)
        return [layer for layers in self.models for layer in layers
                if layer.reads and all(counts[key] == 1 for key in self._keys_of(layer))]

    def layers_with_parameters(self) -> list[Layer]:
        """Every layer that reads a parameter (one FSDP group each, when asked)."""
        return [layer for layers in self.models for layer in layers if layer.reads]

    def _keys_of(self, layer: Layer) -> list[str]:
        keys = [key for key, (owner, _) in self.owners.items() if owner is layer]
        return keys + [key for tied, _, key in self.ties if tied is layer]

    def forward(self, batch: Mapping[str, torch.Tensor], weights: tuple[float, ...],
                terms: bool, references: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch of this rank: ``(objective, data loss, outputs)``.

        ``weights`` are the runs' weights on this rank (its share of each run's batch, scaled
        as the caller's reduction needs; 0 for a run of which this rank holds no example and
        computes one borrowed example, so that every parameter still takes part in the
        backward pass that DDP and FSDP reduce). The data loss is the weighted sum of the
        runs' losses; the objective adds the penalty terms when ``terms`` (once per step).
        """
        plan = self.plan
        outputs: dict[str, torch.Tensor] = {}
        for run, model in zip(plan.runs, self.run_models, strict=True):
            x = batch[run.input]
            for layer in self.models[model]:
                x = layer(x)
            outputs[run.output] = x
        if plan.metric is not None:
            loss = weights[0] * _metric_loss(
                plan.metric, [outputs[run.output] for run in plan.runs], batch)
        else:
            loss = sum(weight * _loss(run.model.loss, outputs[run.output],
                                      next(batch[key] for key in run.targets if key in batch))
                       for run, weight in zip(plan.runs, weights, strict=True))
        objective = loss
        if terms and plan.terms:
            leaves = {key: self.parameter(key) for key in plan.parameters}
            objective = loss + sum(_penalty(plan.penalty, term, leaves, references)
                                   for term in plan.terms)
        return objective, loss, outputs


def tensors(arrays: Mapping[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Float arrays as ``dtype`` tensors, integer arrays (labels, indices) as int64."""
    return {key: _tensor(value, dtype, torch.device("cpu")) for key, value in arrays.items()}
