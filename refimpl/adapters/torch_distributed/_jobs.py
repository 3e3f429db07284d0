"""The jobs the ranks run: one function per kind of job, the same under a local pool and
under ``torchrun``.

A job is a picklable ``NamedTuple``; every rank receives the same one and runs the mode's
engine on it (each engine computes this rank's part and takes part in the collectives);
rank 0 returns the result, the other ranks None. An engine is::

    engine = Engine(plan, params, dtype, hooks, options)   # this rank's model or stage
    loss, outputs = engine.step(inputs)   # one step's passes; gradients left reduced
    grads = engine.gradients()            # whole, at rank 0
    engine.trained()                      # the tensors this rank's optimizer steps
    engine.gradient_norm(p)               # the step's total gradient norm, the same on every rank
    params = engine.parameters()          # whole, at rank 0

Two kinds of job: :class:`GradientJob` (one ``impl(params, inputs)`` call) and
:class:`StepJob` (one ``impl.train_steps(params, batches)`` call: ``K`` optimizer steps, each
rank stepping its own tensors with ``torch.optim``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .._config import CasePlan
from .._microbatches import micro_batches
from ..torch import TORCH_DTYPES, TorchSteps
from ._data_parallel import Replicated, Sharded
from ._pipeline import Stage

__all__ = ["GradientJob", "StepJob", "ENGINES", "run_gradient_job", "run_step_job",
           "step_rules"]

#: The engine of each mode.
ENGINES = {"ddp": Replicated, "fsdp": Sharded, "pipeline": Stage}


class GradientJob(NamedTuple):
    """One case's loss, gradients and outputs at one point: an ``impl(params, inputs)`` call.

    ``hooks``: the mode's :class:`~._data_parallel.Hooks` or :class:`~._pipeline.Hooks`
    (functions, pickled by reference); ``options``: the mode's options (``{"groups": ...}``
    for FSDP).
    """

    mode: str
    plan: CasePlan
    dtype: str
    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    hooks: Any
    options: Mapping[str, Any]


def run_gradient_job(job: GradientJob) -> tuple[float, dict, dict] | None:
    """This rank's part of ``job``: ``(loss, grads, outputs)`` at rank 0, None elsewhere."""
    engine = ENGINES[job.mode](job.plan, job.params, job.dtype, job.hooks, job.options)
    loss, outputs = engine.step(job.inputs)
    grads = engine.gradients()
    return None if grads is None else (loss, grads, outputs)


class StepJob(NamedTuple):
    """``K`` optimizer steps of a step case from one point: an ``impl.train_steps(params,
    batches)`` call.

    ``steps``: the case's ``config["steps"]`` (the optimizer, the clipping, ``K``);
    ``batches``: ``K`` input dicts, batch ``k`` keyed like a gradient case's inputs; the rest
    as :class:`GradientJob`.
    """

    mode: str
    plan: CasePlan
    dtype: str
    steps: Mapping[str, Any]
    params: dict[str, np.ndarray]
    batches: list[dict[str, np.ndarray]]
    hooks: Any
    options: Mapping[str, Any]


def step_rules(plan: CasePlan, steps: Mapping[str, Any], dtype: str) -> TorchSteps:
    """The single-process adapter's training rules for ``steps`` (its ``torch.optim``
    optimizer of the configuration, its clipping settings), with which every rank builds its
    optimizer. A malformed key of ``steps`` is named here; ``step_rules(...).optimizer(...)``
    raises :class:`refimpl.testing.NotExpressible` for an option ``torch.optim`` lacks."""
    return TorchSteps(plan, steps, TORCH_DTYPES[dtype], torch.device("cpu"))


def run_step_job(job: StepJob) -> dict[str, list[Any]] | None:
    """This rank's part of ``job``: the ``K`` steps, as a distributed training loop runs them::

        for each step k:
            loss = engine.step(batch k)              # the gradients reduced over the ranks
            norm = engine.gradient_norm(p)           # over the unique parameters
            clip_grads_with_norm_(trained, max_norm, norm)      # with clipping
            optimizer.step(); optimizer.zero_grad()  # this rank's tensors (torch.optim)
            rank 0 keeps: the whole parameters, the loss, the norm

    Returns ``{"params": [K dicts], "losses": [K], "grad_norms": [K]}`` at rank 0, None
    elsewhere (the step capability of :mod:`refimpl.testing.trajectory`).
    """
    rules = step_rules(job.plan, job.steps, job.dtype)
    clip = rules.clip_config
    norm_type = 2.0 if clip is None else clip.get("norm_type", 2.0)
    norm_type = math.inf if norm_type == "inf" else float(norm_type)
    engine = ENGINES[job.mode](job.plan, job.params, job.dtype, job.hooks, job.options)
    trained = engine.trained()
    # A rank holding no parameter (a pipeline stage of activations only) has no optimizer.
    optimizer = rules.optimizer(trained) if trained else None
    result: dict[str, list[Any]] = {"params": [], "losses": [], "grad_norms": []}
    start = 0
    for inputs in job.batches:
        loss, _ = engine.step(inputs, start)
        start += len(micro_batches(job.plan, inputs))
        for tensor in trained:           # a tensor no loss reads: a zero gradient, still stepped
            if tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
        norm = engine.gradient_norm(norm_type)
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(trained, clip["max_norm"], norm)
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        params = engine.parameters()
        result["params"].append(params)
        result["losses"].append(loss)
        result["grad_norms"].append(float(norm.full_tensor() if isinstance(norm, DTensor)
                                          else norm))
    return result if dist.get_rank() == 0 else None
