"""The jobs the ranks run: one function per kind of job, the same under a local pool and
under ``torchrun``.

A job is a picklable ``NamedTuple``; every rank receives the same one and runs the mode's
engine on it (each engine computes this rank's part and takes part in the collectives);
rank 0 returns the result, the other ranks None. An engine is::

    engine = Engine(plan, params, dtype, hooks, options)   # this rank's model or stage
    loss, outputs = engine.step(inputs)   # one step's passes; gradients left reduced
    grads = engine.gradients()            # whole, at rank 0

so that the K optimizer steps of a training-step case are one more job here: per batch
``zero_grad``, ``engine.step``, ``optimizer.step()`` with ``torch.optim`` over this rank's
parameters, and the whole parameters gathered at rank 0 after each step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .._config import CasePlan
from ._data_parallel import Replicated, Sharded
from ._pipeline import Stage

__all__ = ["GradientJob", "ENGINES", "run_gradient_job"]

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
