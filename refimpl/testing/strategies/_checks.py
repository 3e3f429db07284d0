"""Checks of the strategies' keyword overrides, run when a strategy is created.

Integers and non-negative numbers go through :mod:`refimpl._validate`; what is specific to
the strategies (ranges, choices among names, a flag that ``None`` leaves to Hypothesis) is
here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st

from ..._validate import check_int, check_tolerance


def _range(low: Any, high: Any, name_low: str, name_high: str, minimum: int = 0
           ) -> tuple[int, int]:
    """Two ints ``minimum <= low <= high``."""
    low, high = check_int(low, name_low, minimum), check_int(high, name_high, minimum)
    if low > high:
        raise ValueError(f"{name_low}, {name_high}: expected {name_low} <= {name_high}, got "
                         f"{low} > {high}")
    return low, high


def _positive(value: Any, name: str) -> float:
    """A finite number > 0, as a float (a scale, a margin, a tying strength)."""
    value = check_tolerance(value, name)
    if value == 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return value


def _choices(values: Any, name: str, known: Iterable[str]) -> tuple[str, ...]:
    """A non-empty subset of the names ``known`` (all of them for ``None``)."""
    known = tuple(known)
    if values is None:
        return known
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: expected at least one of {list(known)}, got none")
    unknown = [value for value in values if value not in known]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; expected a subset of {list(known)}")
    return values


def _optional_bool(value: Any, name: str) -> bool | None:
    """True, False, or None (Hypothesis draws it)."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name}: expected True, False or None (draw), got {value!r}")
    return value


def _bools(**flags: Any) -> None:
    """Refuse any of ``flags`` that is not a bool, naming them all."""
    if not all(isinstance(value, bool) for value in flags.values()):
        wanted = "a bool" if len(flags) == 1 else "bools"
        got = ", ".join(repr(value) for value in flags.values())
        raise TypeError(f"{', '.join(flags)}: expected {wanted}, got {got}")


def _flag(draw: Any, value: bool | None) -> bool:
    """``value``, or a drawn bool where it is None."""
    return draw(st.booleans()) if value is None else value
