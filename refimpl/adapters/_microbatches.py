"""The micro-batches of one step, as every framework adapter walks them (NumPy only).

A micro-batch case hands the implementation its batch already split: input ``"<name>.<i>"``
is micro-batch ``i`` of the base case's input ``<name>``. For a loss that is a mean over the
batch, the step's loss and gradient are (:mod:`refimpl.microbatch`)::

    L = sum_i (n_i / N) L_i,     grad L = sum_i (n_i / N) grad L_i     (+ a penalty once)

with each model of a tied pair weighted by its own batch. :func:`micro_batches` gives each
micro-batch's inputs under the base names and its weights; the adapter scales each
micro-batch's loss by its weight, runs its framework's backward pass per micro-batch (the
gradients accumulate, as in a training loop's gradient accumulation), and adds the penalty
terms once per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ._config import CasePlan

__all__ = ["MicroBatch", "micro_batches"]


class MicroBatch(NamedTuple):
    """One micro-batch of a step: its inputs under the base case's names (``x``, ``ya``,
    ``anchor``, ...), each run's weight ``n_i / N`` (its share of that run's batch), and the
    suffix of its output names (``".<i>"``; ``""`` for a whole batch)."""

    inputs: dict[str, Any]
    weights: tuple[float, ...]
    suffix: str


def micro_batches(plan: CasePlan, inputs: Mapping[str, Any]) -> list[MicroBatch]:
    """The micro-batches of one step, in order.

    Parameters
    ----------
    plan : CasePlan
    inputs : dict of str to array_like
        The case's inputs: ``"<name>.<i>"`` for micro-batch ``i`` of the base input
        ``<name>`` (a micro-batch case), else the whole batch.

    Returns
    -------
    list of MicroBatch
        For a plan without micro-batches, the whole batch once with weights 1. The weights
        are the ``n_i / N`` of a mean loss (module docstring): an adapter scales each
        micro-batch's loss by them, accumulates the gradients, and adds the terms once.

    Raises
    ------
    ValueError
        Naming the input: a micro-batch missing, or not of its configured size along axis 0.

    Examples
    --------
    >>> from refimpl.adapters import plan_case
    >>> from refimpl.testing.cases import get_case
    >>> case = get_case("microbatch-mlp")                 # sizes [3, 1, 3]
    >>> [(sorted(m.inputs), m.weights, m.suffix)
    ...  for m in micro_batches(plan_case(case.config), case.inputs)][1]
    (['x', 'y'], (0.14285714285714285,), '.1')
    """
    if plan.micro_batches is None:
        return [MicroBatch(dict(inputs), (1.0,) * len(plan.runs), "")]
    labels = (plan.metric.target,) if plan.metric is not None and plan.metric.target else ()
    batches = []
    for i in range(len(plan.micro_batches[0])):
        data: dict[str, Any] = {}
        for run, sizes in zip(plan.runs, plan.micro_batches, strict=True):
            for name in (run.input, *run.targets, *labels):
                key = f"{name}.{i}"
                if key not in inputs:
                    continue
                if np.ndim(inputs[key]) == 0 or np.shape(inputs[key])[0] != sizes[i]:
                    raise ValueError(f"inputs[{key!r}]: expected micro-batch {i} of {sizes[i]} "
                                     f"example(s) (micro-batches {list(sizes)}), got shape "
                                     f"{np.shape(inputs[key])}")
                data[name] = inputs[key]
            wanted = [(run.input,), *((run.targets,) if run.model.loss else ()),
                      *((label,) for label in labels)]
            for names in wanted:
                if not any(name in data for name in names):
                    raise ValueError(f"inputs: missing {names[0] + '.' + str(i)!r} (micro-batch "
                                     f"{i} of {names[0]!r}); got {sorted(inputs)}")
        weights = tuple(sizes[i] / sum(sizes) for sizes in plan.micro_batches)
        batches.append(MicroBatch(data, weights, f".{i}"))
    return batches
