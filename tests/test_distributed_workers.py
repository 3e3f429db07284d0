"""The pool of worker processes (refimpl/adapters/_workers.py) that the distributed adapters
run their jobs in: no framework needed, a few cheap processes.

What the adapters promise rests on it: a job answers, a rank that raises, dies or hangs is an
error naming it within the timeout, and no process is left behind.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from refimpl.adapters import _workers
from refimpl.adapters._workers import (
    GRACE_SECONDS,
    WorkerError,
    WorkerPool,
    close_all,
    shared_pool,
)
from refimpl.testing import NotExpressible

TESTS = str(Path(__file__).resolve().parent)
ROOT = str(Path(__file__).resolve().parent.parent)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no longer does: it waits for a parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:                 # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def pool():
    pool = WorkerPool(2, environment={"PYTHONPATH": os.pathsep.join([TESTS, ROOT])},
                      label="test pool")
    yield pool
    pool.close()


def test_a_pool_answers_with_the_same_processes_and_leaves_none_behind(pool):
    assert pool.pids == [] and not pool.running
    assert pool.call("math:sqrt", [4.0, 9.0], timeout=60) == [2.0, 3.0]
    pids = pool.pids
    assert len(set(pids)) == 2 and os.getpid() not in pids
    # The same processes answer the next job: each is this process's child.
    assert pool.call("distributed_jobs:parent_and_self", [None, None], timeout=60) \
        == [(os.getpid(), pid) for pid in pids]
    assert pool.call("math:sqrt", [16.0], timeout=60, ranks=[1]) == [4.0]
    # NotExpressible on every rank is not expressible, with the reason (not a WorkerError).
    with pytest.raises(NotExpressible, match="no such layer"):
        pool.call("distributed_jobs:not_expressible", ["no such layer"] * 2, timeout=60)
    pool.close()
    assert not pool.running and _gone_within(pids, 5)


def test_a_hung_rank_is_killed_within_its_timeout_and_named(pool):
    pool.start()
    pids = pool.pids
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 1 did not answer within 0\.5 s \(killed\)"):
        pool.call("time:sleep", [0.0, 60.0], timeout=0.5)
    # Rank 0 answered at once; rank 1 is killed at the deadline, not after its 60 s.
    assert time.monotonic() - start < 0.5 + 5
    assert not pool.running and _gone_within(pids, 5)
    # The next call starts fresh processes.
    assert pool.call("math:sqrt", [1.0, 1.0], timeout=60) == [1.0, 1.0]
    assert set(pool.pids).isdisjoint(pids)


def test_a_rank_that_raises_or_dies_is_named_and_its_partners_are_not_waited_for(pool):
    pool.start()
    with pytest.raises(WorkerError, match=r"rank 0 raised TypeError: must be real number"):
        pool.call("math:sqrt", ["four", 9.0], timeout=60)
    assert not pool.running
    # A rank that dies: its exit status; the other rank, stuck, is killed after the grace.
    start = time.monotonic()
    with pytest.raises(WorkerError) as error:
        pool.call("os:_exit", [5, None], timeout=60)
    message = str(error.value)
    assert "rank 0 died (exit status 5)" in message
    assert "rank 1 raised TypeError" in message or f"{GRACE_SECONDS:g} s after rank 0" \
        in message
    assert time.monotonic() - start < 30


def test_the_module_example_runs():
    assert doctest.testmod(_workers).failed == 0


def test_bad_arguments_are_refused_before_any_process_starts():
    with pytest.raises(ValueError, match="size"):
        WorkerPool(0)
    with pytest.raises(TypeError, match="environment"):
        WorkerPool(1, environment={"X": 1})
    pool = WorkerPool(2)
    with pytest.raises(ValueError, match="function: expected 'package.module:function'"):
        pool.call("math.sqrt", [1, 1], timeout=1)
    with pytest.raises(ValueError, match=r"payloads: expected one per rank \(2\), got 1"):
        pool.call("math:sqrt", [1], timeout=1)
    with pytest.raises(ValueError, match="ranks: expected distinct ranks below 2"):
        pool.call("math:sqrt", [1], timeout=1, ranks=[2])
    with pytest.raises(ValueError, match="timeout"):
        pool.call("math:sqrt", [1, 1], timeout=-1)
    assert not pool.running


def test_shared_pools_are_made_once_per_key_and_closed_by_kind():
    class Closable:
        closed = 0

        def close(self):
            self.closed += 1

    first = shared_pool(("test kind", 1), Closable)
    assert shared_pool(("test kind", 1), Closable) is first
    other = shared_pool(("other kind", 1), Closable)
    close_all("test kind")
    assert (first.closed, other.closed) == (1, 0)


@pytest.mark.slow
def test_no_worker_outlives_the_interpreter_or_a_parent_killed_outright():
    # A parent that exits normally (atexit closes its pools) and one killed with SIGKILL while
    # its workers are busy in a job (each notices it was re-parented): both print their
    # workers' pids first.
    script = textwrap.dedent("""
        import os, sys, threading
        from refimpl.adapters._workers import WorkerPool, shared_pool
        pool = shared_pool("p", lambda: WorkerPool(2))
        pool.start()
        print(*pool.pids, flush=True)
        if sys.argv[1] == "kill":
            threading.Timer(1.0, os.kill, (os.getpid(), 9)).start()
            pool.call("time:sleep", [600, 600], timeout=900)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT}
    for how in ("exit", "kill"):
        result = subprocess.run([sys.executable, "-c", script, how], capture_output=True,
                                text=True, env=env, timeout=120)
        pids = [int(pid) for pid in result.stdout.split()]
        assert len(pids) == 2, (how, result.stdout, result.stderr)
        assert _gone_within(pids, 10), how
