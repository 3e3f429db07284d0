"""Rebuilding a case that is not in the catalogue from its seed, so that a golden folder
holding it (a drawn case exported for another language) can be verified against refimpl.

Its own module, above :mod:`.drawn`: the registry's default rebuilders are the drawn cases'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from . import Case, _catalogue_case
from .drawn import DRAWN_KINDS, drawn_case

__all__ = ["REBUILDERS", "register_rebuilder", "rebuild_case"]

#: Name prefix -> ``build(seed) -> Case``: how a case that is not in the catalogue is rebuilt
#: from its ``config["seed"]``. A drawn case ``drawn-<kind>-<seed>`` whose kind was chosen
#: rather than drawn from the seed is rebuilt with that kind.
REBUILDERS: dict[str, Callable[[int], Case]] = {
    "drawn-": drawn_case,
    **{f"drawn-{kind}-": partial(drawn_case, kind=kind) for kind in DRAWN_KINDS},
}


def register_rebuilder(prefix: str, build: Callable[[int], Case]) -> None:
    """Let :func:`rebuild_case` rebuild the cases whose names start with ``prefix``.

    Parameters
    ----------
    prefix : str
        A name prefix such as ``"drawn-"`` (not empty).
    build : callable
        ``build(seed) -> Case``, deterministic: the same seed gives the same case.

    Raises
    ------
    TypeError, ValueError
        For a prefix that is not a non-empty string or a ``build`` that is not callable.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix: expected a non-empty name prefix, got {prefix!r}")
    if not callable(build):
        raise TypeError(f"build: expected a callable build(seed) -> Case, got {build!r}")
    REBUILDERS[prefix] = build


def rebuild_case(name: str, config: Mapping[str, Any]) -> Case | None:
    """The case called ``name`` rebuilt from refimpl alone: the catalogue's, or for a name a
    registered rebuilder recognises, ``build(config["seed"])``; None when nothing can rebuild
    it (such a case can be compared, never verified against refimpl).

    Parameters
    ----------
    name : str
        The case's name, e.g. ``"mlp-tanh-ce"`` or ``"drawn-mlp-7"``.
    config : mapping
        The configuration stored with it (only its ``"seed"`` is used, to rebuild; the
        caller compares the rest with the rebuilt case's).

    Returns
    -------
    Case or None

    Raises
    ------
    ValueError
        When a rebuilder applies but the config has no integer ``"seed"``, or the rebuilt case
        is called otherwise than ``name``.
    """
    case = _catalogue_case(name)
    if case is not None:
        return case
    # the longest matching prefix first: "drawn-mlp-" before "drawn-"
    for prefix in sorted(REBUILDERS, key=len, reverse=True):
        if not name.startswith(prefix):
            continue
        seed = config.get("seed") if isinstance(config, Mapping) else None
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"config['seed']: case {name!r} is rebuilt from its seed, a "
                             f"non-negative int; got {seed!r}")
        case = REBUILDERS[prefix](seed)
        if case.name != name:
            raise ValueError(f"case {name!r}: its seed {seed} rebuilds a case called "
                             f"{case.name!r}")
        return case
    return None
