"""Data-parallel ``synchronises`` hooks that break a rank, for the process-machinery tests of
``test_distributed_torch.py``. The ranks import this module by name: the pools put the
parent's ``sys.path`` (which holds ``tests/``) on theirs.

- :func:`hang_on_rank_1`: rank 1 never returns, as a rank stuck in a deadlock;
- :func:`die_on_rank_1`: rank 1 exits with status 7, as a crashed rank.
"""

from __future__ import annotations

import os
import time

import torch.distributed as dist


def hang_on_rank_1(index: int, count: int) -> bool:
    if dist.get_rank() == 1:
        while True:
            time.sleep(1)
    return (index + 1) % count == 0


def die_on_rank_1(index: int, count: int) -> bool:
    if dist.get_rank() == 1:
        os._exit(7)
    return (index + 1) % count == 0
