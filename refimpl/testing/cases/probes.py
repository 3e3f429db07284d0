"""Convention probes: built-in cases that each isolate one documented convention.

A placeholder until the probes land: no cases yet, and :func:`diagnose` recognises nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cases", "diagnose"]


def cases() -> list[Any]:
    """The probe cases, in catalogue order (none yet)."""
    return []


def diagnose(case: Any, loss: Any, grads: Any) -> str | None:
    """For a probe ``case`` whose comparison failed: the convention the implementation
    appears to follow, as one sentence, or None when it matches no known alternative."""
    return None
