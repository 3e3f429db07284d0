"""A pool of worker processes that run jobs for a distributed adapter (framework-neutral).

A distributed adapter (:mod:`refimpl.adapters.torch_distributed`, the sharded mode of
:mod:`refimpl.adapters.jax`) runs each case in ``size`` local processes. Starting them costs
seconds (each imports its framework), a case costs milliseconds: so the processes start once,
live in a :class:`WorkerPool`, and receive one job per case.

The protocol
------------
Each worker is ``python -c "...serve(fd)"``, connected to the parent by one socket pair (a
:class:`multiprocessing.connection.Connection` at each end, pickled messages):

- worker -> parent, once: ``("ready", pid)``;
- parent -> worker: ``("call", "package.module:function", payload)``; the worker imports the
  module (once), runs ``function(payload)`` and answers ``("ok", value)``,
  ``("not expressible", reason)`` for :class:`refimpl.testing.NotExpressible`, or
  ``("error", "TypeName: message", traceback text)``;
- parent -> worker: ``("stop",)``: the worker returns from ``serve`` (its atexit handlers
  run, e.g. a framework's shutdown).

A job is a plain function of a picklable payload, so that a new kind of job (the K optimizer
steps of a training-step case) is one more function, not a change of the protocol.

Bounds
------
Nothing waits forever, and no process outlives its purpose:

- :meth:`WorkerPool.call` waits at most ``timeout`` seconds for every rank; a rank that raised,
  died or did not answer makes the call raise :class:`WorkerError` (the rank, its error or
  exit status, the tail of its log) after the whole pool was killed: the ranks of a collective
  that lost a member cannot be trusted with the next job. The next call starts a fresh pool.
- Each worker is the leader of its own process group (``start_new_session``) and is killed
  with its group (``SIGKILL``) when the pool closes; :func:`close_all` runs at interpreter exit.
- A worker whose parent disappears (killed without running atexit) exits within a second: a
  watchdog thread compares ``os.getppid()`` with the parent it started under.

POSIX only (the worker's end of the socket pair is inherited through ``pass_fds``).
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from .._validate import check_int, check_real
from ..testing.comparison import NotExpressible

__all__ = ["WorkerPool", "WorkerError", "serve", "shared_pool", "close_all"]

#: How long the other ranks may still answer after one rank failed (their errors are often
#: the consequence, sometimes the cause: both are reported), in seconds.
GRACE_SECONDS = 1.0
#: How long a stopping worker may take to exit before it is killed, in seconds.
STOP_SECONDS = 5.0
#: How many characters of a failed rank's log its error quotes.
LOG_TAIL = 2000

_BOOT = "import sys; from refimpl.adapters._workers import serve; serve(int(sys.argv[1]))"


class WorkerError(RuntimeError):
    """A job failed on some rank: it raised, died or did not answer in time (the pool that ran
    it has been killed)."""


class _Worker:
    """One process: its rank, its connection and the file its stdout and stderr go to."""

    def __init__(self, rank: int, environment: Mapping[str, str]) -> None:
        self.rank = rank
        self.log = tempfile.TemporaryFile(mode="w+b", prefix=f"refimpl-rank{rank}-")
        ours, theirs = Pipe(duplex=True)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=self.log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **environment})
        except BaseException:
            ours.close()
            self.log.close()
            raise
        finally:
            theirs.close()
        self.connection: Connection = ours

    def log_tail(self) -> str:
        """The last :data:`LOG_TAIL` characters of the worker's output ("" if none)."""
        try:
            self.log.flush()
            size = self.log.seek(0, os.SEEK_END)
            self.log.seek(max(0, size - LOG_TAIL))
            return self.log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        """SIGKILL the worker's process group and reap it; close the connection and log."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:     # pragma: no cover - SIGKILL is not refused
            pass
        self.connection.close()
        self.log.close()


class WorkerPool:
    """``size`` worker processes (ranks ``0 .. size - 1``), started on the first call.

    Parameters
    ----------
    size : int
        The number of processes (>= 1).
    environment : dict of str to str, optional
        Variables added to the workers' environment (e.g. ``XLA_FLAGS``).
    start_timeout : float
        Seconds the workers may take to start and say they are ready.
    label : str
        What the pool is for, in its error messages ("torch.distributed, 2 ranks").

    Examples
    --------
    >>> pool = WorkerPool(2, label="an example")
    >>> pool.call("math:sqrt", [4.0, 9.0], timeout=60)
    [2.0, 3.0]
    >>> pool.close()
    """

    def __init__(self, size: int, *, environment: Mapping[str, str] | None = None,
                 start_timeout: float = 120.0, label: str = "worker pool") -> None:
        self.size = check_int(size, "size", 1)
        environment = dict(environment or {})
        for key, value in environment.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"environment: expected str names and values, got "
                                f"{key!r}: {value!r}")
        self.environment = environment
        self.start_timeout = check_real(start_timeout, "start_timeout", minimum=0)
        self.label = label
        self._workers: list[_Worker] = []

    @property
    def running(self) -> bool:
        """Whether the workers are started (and not closed)."""
        return bool(self._workers)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids, by rank (empty before the first call)."""
        return [worker.process.pid for worker in self._workers]

    def start(self) -> None:
        """Start the workers and wait until each is ready (a no-op when running).

        Raises
        ------
        WorkerError
            When a worker exits or is not ready within ``start_timeout`` (all are killed).
        """
        if self._workers:
            return
        try:
            for rank in range(self.size):
                self._workers.append(_Worker(rank, self.environment))
            replies = self._collect(list(range(self.size)), self.start_timeout, "start")
        except BaseException:
            self.close(graceful=False)
            raise
        bad = {rank: reply for rank, reply in replies.items() if reply[0] != "ready"}
        if bad:
            self._fail(bad, "start")

    def call(self, function: str, payloads: Sequence[Any], timeout: float, *,
             ranks: Sequence[int] | None = None) -> list[Any]:
        """Run ``function(payload)`` on each rank and return the values, by rank.

        Parameters
        ----------
        function : str
            ``"package.module:function"``, importable in the workers.
        payloads : sequence
            One picklable payload per rank of ``ranks``.
        timeout : float
            Seconds every rank may take (the workers start first if they are not running).
        ranks : sequence of int, optional
            The ranks to call (default all, in order).

        Returns
        -------
        list
            Each rank's return value, in the order of ``ranks``.

        Raises
        ------
        refimpl.testing.NotExpressible
            When every called rank raised it (the reason of the first; the pool is closed).
        WorkerError
            When any rank raised something else, died or did not answer within ``timeout``
            (the pool is closed: its collectives may be in any state).
        """
        if not isinstance(function, str) or function.count(":") != 1:
            raise ValueError(f"function: expected 'package.module:function', got {function!r}")
        ranks = list(range(self.size)) if ranks is None else [
            check_int(rank, "ranks[]", 0) for rank in ranks]
        if any(rank >= self.size for rank in ranks) or len(set(ranks)) != len(ranks):
            raise ValueError(f"ranks: expected distinct ranks below {self.size}, got {ranks}")
        if len(payloads) != len(ranks):
            raise ValueError(f"payloads: expected one per rank ({len(ranks)}), got "
                             f"{len(payloads)}")
        timeout = check_real(timeout, "timeout", minimum=0)
        self.start()
        try:
            for rank, payload in zip(ranks, payloads, strict=True):
                self._workers[rank].connection.send(("call", function, payload))
            replies = self._collect(ranks, timeout, function)
        except BaseException:
            self.close(graceful=False)       # interrupted, or a rank's pipe broke
            raise
        if all(replies[rank][0] == "ok" for rank in ranks):
            return [replies[rank][1] for rank in ranks]
        if all(replies[rank][0] == "not expressible" for rank in ranks):
            self.close(graceful=False)
            raise NotExpressible(replies[ranks[0]][1])
        self._fail({rank: reply for rank, reply in replies.items() if reply[0] != "ok"},
                   function)
        raise AssertionError("unreachable")  # pragma: no cover

    def _collect(self, ranks: list[int], timeout: float, what: str
                 ) -> dict[int, tuple[Any, ...]]:
        """Every rank's reply within ``timeout`` (after a failure, within a short grace);
        a rank that died answers ``("died", exit status)``, one that did not answer
        ``("timeout", seconds)`` or ``("abandoned", the rank that failed first)``."""
        deadline = time.monotonic() + timeout
        pending = {self._workers[rank].connection: rank for rank in ranks}
        replies: dict[int, tuple[Any, ...]] = {}
        first_failure = None
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for connection in wait(list(pending), timeout=remaining):
                rank = pending.pop(connection)
                try:
                    replies[rank] = connection.recv()
                except (EOFError, OSError):
                    process = self._workers[rank].process
                    try:
                        status = process.wait(timeout=STOP_SECONDS)
                    except subprocess.TimeoutExpired:
                        status = None
                    replies[rank] = ("died", status)
                if replies[rank][0] not in ("ok", "ready") and first_failure is None:
                    first_failure = rank
                    deadline = min(deadline, time.monotonic() + GRACE_SECONDS)
        for rank in pending.values():
            replies[rank] = (("timeout", timeout) if first_failure is None
                             else ("abandoned", first_failure))
        return replies

    def _fail(self, bad: Mapping[int, tuple[Any, ...]], what: str) -> None:
        """Raise the :class:`WorkerError` describing ``bad`` replies (after closing)."""
        tails = {rank: self._workers[rank].log_tail() if self._workers else ""
                 for rank in bad}
        self.close(graceful=False)
        lines = []
        for rank in sorted(bad):
            reply = bad[rank]
            if reply[0] == "error":
                line = f"rank {rank} raised {reply[1]}\n{reply[2]}"
            elif reply[0] == "died":
                line = f"rank {rank} died (exit status {reply[1]})"
            elif reply[0] == "timeout":
                line = f"rank {rank} did not answer within {reply[1]:g} s (killed)"
            elif reply[0] == "abandoned":
                line = (f"rank {rank} was still running {GRACE_SECONDS:g} s after rank "
                        f"{reply[1]} failed (killed)")
            elif reply[0] == "not expressible":
                line = f"rank {rank}: not expressible: {reply[1]}"
            else:
                line = f"rank {rank} answered {reply!r:.200}"
            if reply[0] in ("died", "timeout") and tails[rank]:
                line += f"; its log ends:\n{tails[rank]}"
            lines.append(line)
        raise WorkerError(f"{self.label}, {what}: " + "\n".join(lines))

    def close(self, graceful: bool = True) -> None:
        """Stop every worker (``graceful``: ask, then kill after :data:`STOP_SECONDS`; else
        kill at once). Idempotent; the pool starts again on the next call."""
        workers, self._workers = self._workers, []
        if graceful:
            for worker in workers:
                try:
                    worker.connection.send(("stop",))
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + STOP_SECONDS
            for worker in workers:
                try:
                    worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for worker in workers:
            worker.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pids {self.pids}" if self._workers else "not running"
        return f"WorkerPool({self.size}, {self.label!r}, {state})"


# --- the pools shared by the builders of a process ----------------------------------------

_POOLS: dict[Any, Any] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(key: Any, factory: Callable[[], Any]) -> Any:
    """The process's pool for ``key`` (made by ``factory`` the first time: a
    :class:`WorkerPool`, or an object owning one, with a ``close()`` method): builders of one
    configuration share their workers across cases. Closed at interpreter exit."""
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = factory()
        return _POOLS[key]


def close_all(kind: Any = None) -> None:
    """Stop the shared pools whose key is ``kind`` or a tuple starting with it (every pool
    when None; registered with :mod:`atexit`). They start again when next used."""
    with _POOLS_LOCK:
        pools = [pool for key, pool in _POOLS.items() if kind is None or key == kind
                 or (isinstance(key, tuple) and key[:1] == (kind,))]
    for pool in pools:
        pool.close()


atexit.register(close_all)


# --- the worker's side --------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    """Exit the worker when its parent is gone (it was re-parented)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def _resolve(name: str, cache: dict[str, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    if name not in cache:
        module_name, _, attribute = name.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        cache[name] = target
    return cache[name]


def serve(fd: int) -> None:
    """The worker's loop over the connection on file descriptor ``fd`` (module docstring)."""
    connection = Connection(fd)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    functions: dict[str, Callable[[Any], Any]] = {}
    connection.send(("ready", os.getpid()))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, name, payload = message
        try:
            reply: tuple[Any, ...] = ("ok", _resolve(name, functions)(payload))
        except NotExpressible as reason:
            reply = ("not expressible", str(reason) or "(no reason given)")
        except BaseException as error:  # noqa: BLE001 - every failure goes to the parent
            reply = ("error", f"{type(error).__name__}: {error}", traceback.format_exc())
        try:
            connection.send(reply)
        except Exception as error:  # noqa: BLE001 - e.g. an unpicklable return value
            connection.send(("error", f"{type(error).__name__}: the reply of {name} could "
                             f"not be sent: {error}", traceback.format_exc()))
