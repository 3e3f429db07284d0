"""A job for the JAX sharded mode's worker (``test_distributed_jax.py``), sent by name.

:func:`sharded_collectives` runs ``run_sharded_job`` (or, for a step job,
``run_sharded_steps``) recording the optimised HLO of every computation it compiles, to see
that XLA partitioned it over the devices.
"""

from __future__ import annotations

from typing import Any

import jax

from refimpl.adapters import jax as adapter


def sharded_collectives(job: Any) -> tuple[Any, list[str]]:
    """``(run_sharded_job(job), [the HLO text of each compiled computation])`` (for a
    :class:`~refimpl.adapters.jax.ShardedStepJob`, ``run_sharded_steps``)."""
    texts: list[str] = []
    original = jax.jit

    def recording_jit(function: Any, **options: Any) -> Any:
        jitted = original(function, **options)

        def call(*args: Any) -> Any:
            texts.append(jitted.lower(*args).compile().as_text())
            return jitted(*args)

        return call

    jax.jit = recording_jit
    try:
        if isinstance(job, adapter.ShardedStepJob):
            return adapter.run_sharded_steps(job), texts
        return adapter.run_sharded_job(job), texts
    finally:
        jax.jit = original
