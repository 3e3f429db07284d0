"""The data-parallel modes: ``DistributedDataParallel`` and FSDP2's ``fully_shard``.

Every rank holds the whole model (DDP) or a shard of every parameter (FSDP), and computes
its own contiguous share of every micro-batch. Both frameworks *average* the ranks'
gradients, so rank ``r`` weights its share of micro-batch ``i`` by ``W * n_ir / N`` (``W``
ranks, ``n_ir`` of its examples, ``N`` examples of the step): the average over the ranks is
then the step's gradient, ``sum_i sum_r (n_ir / N) grad L_ir``. A penalty term is computed
whole on every rank, in the last micro-batch: its average is itself, counted once.

Micro-batches accumulate as a training loop writes it: every backward pass but the last
under ``no_sync()`` (DDP) or ``set_requires_gradient_sync(False)`` (FSDP), so that the last,
synchronised backward reduces the gradients of the whole step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from ...testing.comparison import NotExpressible
from .._config import CasePlan
from .._microbatches import micro_batches
from ..torch import TORCH_DTYPES
from ._modules import CaseModule, tensors
from ._ranks import concatenate_outputs, gather_to_first, shard

__all__ = ["Hooks", "HOOKS", "synchronises", "rematerialise", "Replicated", "Sharded",
           "FSDP_GROUPS"]

#: How ``fsdp`` groups the layers: "shared" (default) gives each layer whose parameters have
#: one use its own group and keeps every parameter with several uses (a tied embedding and
#: output layer, a shared kernel, a Siamese tower, a penalised weight) in the root group with
#: all its uses; "layer" gives every layer with parameters its own group, which torch 2.13
#: refuses for a parameter shared by two groups (then the case is not expressible).
FSDP_GROUPS = ("shared", "layer")

#: The message of torch's refusal of one parameter in two FSDP groups.
_REFUSAL = "already managed by another FSDP group"


def synchronises(index: int, count: int) -> bool:
    """Whether the backward pass of micro-batch ``index`` (of ``count``) reduces the
    gradients: the last one, which reduces what the others accumulated under ``no_sync``."""
    return (index + 1) % count == 0


def rematerialise(module: CaseModule) -> None:
    """Give the module built on the ``meta`` device real storage."""
    module.to_empty(device="cpu")   # fresh storage for each parameter: a tie across layers is lost
    module.tie()                    # so tie again, as transformers' tie_weights() after to_empty()


class Hooks(NamedTuple):
    """The lines of the data-parallel step that the planted bugs change (each a function, sent
    to the ranks by reference)."""

    synchronises: Callable[[int, int], bool]
    rematerialise: Callable[[CaseModule], None]


HOOKS = Hooks(synchronises, rematerialise)


class _DataParallel:
    """The module on this rank (built, re-materialised, loaded, wrapped) and one step."""

    def __init__(self, plan: CasePlan, params: Mapping[str, np.ndarray], dtype: str,
                 hooks: Hooks, options: Mapping[str, Any]) -> None:
        self.plan, self.hooks, self.dtype = plan, hooks, TORCH_DTYPES[dtype]
        shapes = {key: np.shape(params[key]) for key in plan.parameters}
        self.module = CaseModule(plan, shapes, self.dtype)
        hooks.rematerialise(self.module)
        self.module.load(params)
        self.wrapped = self.wrap(self.module, options)

    def wrap(self, module: CaseModule, options: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def synchronising(self, synchronise: bool) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def step(self, inputs: Mapping[str, np.ndarray], start: int = 0
             ) -> tuple[float, dict[str, np.ndarray]]:
        """One step's forward and backward passes over its micro-batches: the gradients are
        left reduced in the parameters. ``start``: how many micro-batches the run passed
        before this step (a training loop counts them over the whole run, as
        ``Hooks.synchronises`` sees them). Returns the step's loss and, at rank 0, the outputs
        of every example (``{}`` elsewhere)."""
        plan = self.plan
        rank, world_size = dist.get_rank(), dist.get_world_size()
        references = tensors({term.other: inputs[term.other] for term in plan.terms
                              if term.from_inputs and term.other in inputs}, self.dtype)
        batches = micro_batches(plan, inputs)
        data_loss, penalty, outputs = 0.0, 0.0, {}
        for index, batch in enumerate(batches):
            part = shard(plan, batch, rank, world_size)
            weights = tuple(weight * share * world_size
                            for weight, share in zip(batch.weights, part.shares, strict=True))
            last = index == len(batches) - 1
            with self.synchronising(self.hooks.synchronises(start + index, len(batches))):
                objective, loss, outs = self.wrapped(tensors(part.inputs, self.dtype), weights,
                                                     last, references)
                objective.backward()
            data_loss += loss.item() / world_size
            if last and plan.terms:
                penalty = (objective - loss).item()
            outputs.update({run.output + batch.suffix: outs[run.output].detach().numpy()
                            for run, count in zip(plan.runs, part.counts, strict=True)
                            if count})
        total = torch.tensor([data_loss], dtype=torch.float64)
        dist.all_reduce(total)
        pieces = gather_to_first(outputs)
        return total.item() + penalty, concatenate_outputs(pieces) if pieces else {}

    def gradients(self) -> dict[str, np.ndarray] | None:
        """Every unique parameter's gradient, whole, at rank 0 (None elsewhere)."""
        raise NotImplementedError

    # --- the training steps (``_jobs.run_step_job``) ---------------------------------------------

    def trained(self) -> list[torch.Tensor]:
        """The tensors this rank's optimizer steps: ``module.parameters()``, which lists a tied
        parameter once (one ``nn.Parameter`` held by two layers)."""
        return list(self.module.parameters())

    def gradient_norm(self, norm_type: float) -> torch.Tensor:
        """The total norm of the step's gradient over the unique parameters, as a user of the
        wrapper computes it: ``get_total_norm`` (``clip_grad_norm_``'s first half) over
        ``module.parameters()``. The gradients are already reduced: every rank's is the
        whole, so is its norm."""
        return torch.nn.utils.get_total_norm([tensor.grad for tensor in self.trained()],
                                             norm_type)

    def parameters(self) -> dict[str, np.ndarray] | None:
        """Every unique parameter's value, whole, at rank 0 (None elsewhere)."""
        raise NotImplementedError


class Replicated(_DataParallel):
    """``DistributedDataParallel``: the whole model on every rank, gradients all-reduced
    (averaged) in the synchronised backward pass; rank 0's copy is every rank's."""

    def wrap(self, module: CaseModule, options: Mapping[str, Any]) -> torch.nn.Module:
        return DistributedDataParallel(module)

    def synchronising(self, synchronise: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if synchronise else self.wrapped.no_sync()

    def gradients(self) -> dict[str, np.ndarray] | None:
        if dist.get_rank() != 0:
            return None
        return {key: _numpy(self.module.parameter(key).grad, self.module.parameter(key))
                for key in self.plan.parameters}

    def parameters(self) -> dict[str, np.ndarray] | None:
        # every rank stepped the same averaged gradient: rank 0's replica is the model
        if dist.get_rank() != 0:
            return None
        return {key: self.module.parameter(key).detach().numpy().copy()
                for key in self.plan.parameters}


_MESH: dict[str, Any] = {"world": None, "mesh": None}


def _mesh() -> DeviceMesh:
    """The CPU device mesh over every rank (made once per process group)."""
    if _MESH["world"] is not dist.group.WORLD:
        _MESH["mesh"] = init_device_mesh("cpu", (dist.get_world_size(),))
        _MESH["world"] = dist.group.WORLD
    return _MESH["mesh"]


class Sharded(_DataParallel):
    """FSDP2: ``fully_shard`` on each layer of its own group (:data:`FSDP_GROUPS`), then on the
    whole module (the root group); every parameter is sharded along its first axis, gathered
    for the forward and backward passes, its gradient reduce-scattered (averaged)."""

    def wrap(self, module: CaseModule, options: Mapping[str, Any]) -> torch.nn.Module:
        groups = options.get("groups", "shared")
        layers = (module.layers_used_once() if groups == "shared"
                  else module.layers_with_parameters())
        for layer in layers:
            fully_shard(layer, mesh=_mesh())
        fully_shard(module, mesh=_mesh())
        return module

    @contextlib.contextmanager
    def synchronising(self, synchronise: bool) -> Iterator[None]:
        self.wrapped.set_requires_gradient_sync(synchronise)
        yield

    def step(self, inputs: Mapping[str, np.ndarray], start: int = 0
             ) -> tuple[float, dict[str, np.ndarray]]:
        try:
            return super().step(inputs, start)
        except ValueError as error:
            # FSDP2 checks its groups at the first forward pass, on every rank alike.
            if _REFUSAL in str(error):
                raise NotExpressible(f"FSDP2 (torch {torch.__version__}) refuses these "
                                     f"groups: {error}") from None
            raise

    def gradients(self) -> dict[str, np.ndarray] | None:
        # full_tensor() all-gathers the shards: every rank takes part, rank 0 keeps them.
        grads = {key: _numpy(_full(self.module.parameter(key).grad),
                             self.module.parameter(key)) for key in self.plan.parameters}
        return grads if dist.get_rank() == 0 else None

    def parameters(self) -> dict[str, np.ndarray] | None:
        # full_tensor() all-gathers the shards of the stepped parameter: every rank takes part
        values = {key: self.module.parameter(key).full_tensor().detach().numpy().copy()
                  for key in self.plan.parameters}
        return values if dist.get_rank() == 0 else None


def _full(grad: Any) -> Any:
    return None if grad is None else grad.full_tensor()


def _numpy(grad: torch.Tensor | None, parameter: torch.Tensor) -> np.ndarray:
    """A gradient as NumPy; a parameter that took no part in the step has gradient zero."""
    if grad is None:
        return torch.zeros(tuple(parameter.shape), dtype=parameter.dtype).numpy()
    return grad.detach().numpy()
