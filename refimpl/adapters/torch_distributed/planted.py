"""Planted bugs: the distributed adapter with one line changed, after a public report each.

Each builder here is a mode of :mod:`refimpl.adapters.torch_distributed` whose step has one
line changed, reproducing in miniature a silent wrong gradient or training step reported in a
real training framework. They exist to show that ``refimpl conform`` catches each class of bug
(a *fail* naming the tensor, and on a step case the first step where it diverges), while the
unmodified adapter passes::

    refimpl conform refimpl.adapters.torch_distributed.planted:fsdp_tie_dropped \\
        --case sequence-tied-lm

Each replaced line is a function of the mode's ``Hooks`` (sent to the ranks by reference);
the docstring of each shows the one line that differs from the adapter's own. Every builder
runs the gradient cases and the step cases alike (``train_steps`` runs the same hooks).

=================================  ==========  ===============================================
builder                            mode        fails on (float64)
=================================  ==========  ===============================================
:func:`fsdp_tie_dropped`           fsdp        every case with a parameter read by two layers
                                               (the tied LM, the tied autoencoders, the
                                               shared kernel, the hard-tied pairs), their
                                               step cases at step 1
:func:`pipeline_reduce_skipped`    pipeline    every case with a parameter used on two stages
:func:`pipeline_mismatched_layouts` pipeline   the cases whose stages hold a copy transposed
                                               (a tied decoder's weight on the last stage)
:func:`pipeline_norm_counts_copies` pipeline   the step cases with a parameter on two stages
                                               (the gradient norm at step 1; passes every
                                               gradient case)
:func:`ddp_no_sync_off_by_one`     ddp         every micro-batch case (ranks keep local
                                               gradients), its step case at step 1
=================================  ==========  ===============================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from . import DistributedImplementation, build
from ._data_parallel import HOOKS as DATA_PARALLEL_HOOKS
from ._modules import CaseModule
from ._pipeline import HOOKS as PIPELINE_HOOKS
from ._pipeline import Stage

__all__ = ["fsdp_tie_dropped", "pipeline_reduce_skipped", "pipeline_mismatched_layouts",
           "pipeline_norm_counts_copies", "ddp_no_sync_off_by_one", "PLANTED"]


# --- FSDP: the tie lost when the parameters are re-materialised ------------------------------

def rematerialise_without_tie(module: CaseModule) -> None:
    """``to_empty()`` without re-tying (verl-project/verl #7834, fixed by #7835).

    ``to_empty()`` gives every parameter fresh storage, so a tied output layer stops aliasing
    the embedding. Nothing fails: the values are still right (the state dict carries the
    output layer's weight as an alias and loads it into both), but the embedding receives only
    the input-side part of its gradient. Over training steps the two copies, stepped apart,
    drift from the first step (facebookresearch/lingua #75: FSDP "silently giving different
    weight for the embedding and output linear"; verl #7749's negative control: after one
    AdamW update 489 of 512 embedding and head elements differ): the step cases fail at step
    1 on the embedding, whose update lacks the output layer's part. The adapter's line that is
    missing here::

        module.tie()
    """
    module.to_empty(device="cpu")


def fsdp_tie_dropped(config: Mapping[str, Any], dtype: Any = "float64"
                     ) -> DistributedImplementation:
    """FSDP2 with :func:`rematerialise_without_tie` (verl #7835)."""
    return build(config, dtype, mode="fsdp",
                 hooks=DATA_PARALLEL_HOOKS._replace(rematerialise=rematerialise_without_tie))


# --- pipeline: the tied copies' all-reduce skipped -------------------------------------------

def reduce_shared_copies_skipped(stage: Stage) -> None:
    """The copies of a shared parameter on several stages never all-reduced (Megatron-LM's
    embedding group left out; uw-syfi/piper #13, fixed by #25: "the embedding parameters are
    duplicated on each actor and their gradients are not synchronized before the optimizer
    step"). Each stage keeps its own part of the gradient. The adapter's line that is missing
    here::

        dist.all_reduce(logical, group=stage.groups[key])
    """
    with torch.no_grad():
        for key in stage.shared:
            flat = stage.gradient(key).view(-1)
            order = stage.logical_order[key]
            logical = flat[order]
            flat[order] = logical


def pipeline_reduce_skipped(config: Mapping[str, Any], dtype: Any = "float64"
                            ) -> DistributedImplementation:
    """The pipeline with :func:`reduce_shared_copies_skipped` (piper #13/#25)."""
    return build(config, dtype, mode="pipeline",
                 hooks=PIPELINE_HOOKS._replace(
                     reduce_shared_copies=reduce_shared_copies_skipped))


# --- pipeline: the all-reduce over mismatched layouts ----------------------------------------

def reduce_raw_local_copies(stage: Stage) -> None:
    """The copies all-reduced element by element in each stage's own storage order, not in the
    parameter's layout (NVIDIA/Megatron-LM #6500: "different PP stages can use different
    flattened layouts ... reducing the raw local shards directly would combine mismatched
    elements"). A stage holding its copy transposed (a tied decoder's ``(out, in)`` weight)
    adds the other stage's element ``(i, j)`` to its ``(j, i)``; nothing fails, every shape
    still fits. The adapter's line, replaced here::

        order = stage.logical_order[key]
    """
    with torch.no_grad():
        for key in stage.shared:
            flat = stage.gradient(key).view(-1)
            order = torch.arange(flat.numel())
            logical = flat[order]
            dist.all_reduce(logical, group=stage.groups[key])
            flat[order] = logical


def pipeline_mismatched_layouts(config: Mapping[str, Any], dtype: Any = "float64"
                                ) -> DistributedImplementation:
    """The pipeline with :func:`reduce_raw_local_copies` (Megatron-LM #6500)."""
    return build(config, dtype, mode="pipeline",
                 hooks=PIPELINE_HOOKS._replace(reduce_shared_copies=reduce_raw_local_copies))


# --- pipeline: the global gradient norm counting every copy --------------------------------

def count_every_copy(stage: Stage) -> list[torch.Tensor]:
    """Every stage counts the gradient of every copy it holds in the global norm, the tied
    embedding's copy on the last stage too (NVIDIA/Megatron-LM #7227, fixed by #7228: the
    optimizer's norm "iterate[s] every optimizer parameter", and "both copies are summed in the
    all_reduce ... The reported norm comes out sqrt(2) too large and gradients are
    over-clipped"). After the all-reduce each copy holds the whole gradient, so a parameter
    with two copies is counted twice. Every gradient is right (every gradient case passes);
    the step is not. The adapter's line, replaced here::

        if stage.layout.holders[key][0] == stage.stage]
    """
    return [stage.gradient(key) for key in stage.leaves]


def pipeline_norm_counts_copies(config: Mapping[str, Any], dtype: Any = "float64"
                                ) -> DistributedImplementation:
    """The pipeline with :func:`count_every_copy` (Megatron-LM #7227/#7228)."""
    return build(config, dtype, mode="pipeline",
                 hooks=PIPELINE_HOOKS._replace(counted_in_norm=count_every_copy))


# --- DDP: no_sync on the wrong micro-batch ------------------------------------------------------

def synchronises_first(index: int, count: int) -> bool:
    """The first micro-batch synchronised, the last under ``no_sync`` (modelscope/FunASR
    #3472: the condition ``batch_idx % accum_grad`` "synchronizes the first microbatch and
    suppresses synchronization on the optimizer-step microbatch, leaving rank-local
    accumulated gradients"). ``index`` counts the micro-batches over the whole run, as
    FunASR's ``batch_idx``: over ``K`` steps each rank steps its own gradient, the replicas
    part from step 1 (rank 0's is returned). The adapter's line, replaced here::

        return (index + 1) % count == 0
    """
    return index % count == 0


def ddp_no_sync_off_by_one(config: Mapping[str, Any], dtype: Any = "float64"
                           ) -> DistributedImplementation:
    """DDP with :func:`synchronises_first` (FunASR #3472)."""
    return build(config, dtype, mode="ddp",
                 hooks=DATA_PARALLEL_HOOKS._replace(synchronises=synchronises_first))


#: Every planted builder, by name.
PLANTED = {builder.__name__: builder for builder in (
    fsdp_tie_dropped, pipeline_reduce_skipped, pipeline_mismatched_layouts,
    pipeline_norm_counts_copies, ddp_no_sync_off_by_one)}
