"""What every rank does around a job: join the process group, split a batch, gather results.

Runs in the ranks (the workers of :class:`refimpl.adapters._workers.WorkerPool`, or the
processes ``torchrun`` starts), never in the process that runs ``refimpl conform`` locally.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from .._config import CasePlan
from .._microbatches import MicroBatch

__all__ = ["open_store", "join", "join_from_environment", "Shard", "shard", "gather_to_first",
           "concatenate_outputs", "LOOPBACK"]

#: The address the local ranks meet at.
LOOPBACK = "127.0.0.1"

_STORE: dict[str, Any] = {}


def open_store(settings: Mapping[str, Any]) -> int:
    """Rank 0 of a local pool: open the rendezvous store on a port the system chooses (free
    by construction, nothing to race for) and return it, for the other ranks' :func:`join`."""
    _STORE["store"] = dist.TCPStore(LOOPBACK, 0, settings["world_size"], is_master=True,
                                    wait_for_workers=False,
                                    timeout=timedelta(seconds=settings["timeout"]))
    return _STORE["store"].port


def join(settings: Mapping[str, Any]) -> int:
    """Join the local pool's gloo process group (``settings``: rank, world_size, port,
    timeout: every collective's bound). One thread per rank: the ranks share the cores.
    Returns the process id."""
    rank, world_size = settings["rank"], settings["world_size"]
    timeout = timedelta(seconds=settings["timeout"])
    store = _STORE.pop("store") if rank == 0 else dist.TCPStore(
        LOOPBACK, settings["port"], world_size, is_master=False, timeout=timeout)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
    return os.getpid()


def join_from_environment(timeout: float) -> None:
    """Under ``torchrun``: join its process group (``env://``: ``MASTER_ADDR``, ``RANK``, ...)
    with the gloo backend, once."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))


class Shard(NamedTuple):
    """This rank's part of one micro-batch.

    ``inputs``: every per-example input sliced to this rank's examples; ``counts``: how many
    examples of each run it holds; ``shares``: ``count / N`` per run (its share of the run's
    micro-batch). A rank holding no example of a run computes that run on the micro-batch's
    first example with share 0 (its outputs are not reported): every rank then runs the
    same layers, as DDP's and FSDP's collectives need, and adds exactly nothing.
    """

    inputs: dict[str, np.ndarray]
    counts: tuple[int, ...]
    shares: tuple[float, ...]


def _bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous examples ``[start, stop)`` of ``total``: the first
    ``total % world_size`` ranks hold one more (``numpy.array_split``'s rule)."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(plan: CasePlan, batch: MicroBatch, rank: int, world_size: int) -> Shard:
    """This rank's :class:`Shard` of ``batch``: each run's examples split over the ranks in
    order (rank 0 first), its input and targets (and a Siamese model's labels) alike."""
    inputs, counts, shares = {}, [], []
    labels = (plan.metric.target,) if plan.metric is not None and plan.metric.target else ()
    for run in plan.runs:
        total = len(batch.inputs[run.input])
        start, stop = _bounds(total, rank, world_size)
        if stop == start:
            start, stop = 0, 1
            counts.append(0)
            shares.append(0.0)
        else:
            counts.append(stop - start)
            shares.append((stop - start) / total)
        for name in (run.input, *run.targets, *labels):
            if name in batch.inputs:
                inputs[name] = np.asarray(batch.inputs[name])[start:stop]
    return Shard(inputs, tuple(counts), tuple(shares))


def gather_to_first(value: Any) -> list[Any] | None:
    """Every rank's ``value`` at rank 0 (by rank; None on the other ranks)."""
    if dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def concatenate_outputs(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ranks' outputs (by rank, each a dict of this rank's examples) joined along the
    batch axis in rank order: the order of the examples."""
    names = list(dict.fromkeys(name for piece in pieces for name in piece))
    return {name: np.concatenate([piece[name] for piece in pieces if name in piece])
            for name in names}
