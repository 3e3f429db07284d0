"""Jobs the worker-pool tests send to worker processes by name (the workers import this module:
the tests put ``tests/`` on their ``PYTHONPATH``)."""

from __future__ import annotations

import os

from refimpl.testing import NotExpressible


def not_expressible(reason: str) -> None:
    raise NotExpressible(reason)


def parent_and_self(_: object) -> tuple[int, int]:
    """The worker's parent process id and its own."""
    return os.getppid(), os.getpid()
