"""Step cases in a golden folder: every step's batch and the trajectory, for an optimizer in any
language.

A step case (:mod:`refimpl.testing.cases.steps`, manifest ``kind`` "steps") is stored as::

    DIR/<case>/parameter.<name>.npy        the starting point: every unique parameter
    DIR/<case>/step<k>/input.<name>.npy    the batch of step k = 1 .. K (keyed like a gradient
                                           case's inputs; micro-batches "<name>.<i>" too)
    DIR/<case>/step<k>/loss.npy            the loss at the start of step k, 0-d
    DIR/<case>/step<k>/grad_norm.npy       the gradient's total norm before clipping, 0-d
    DIR/<case>/step<k>/parameter.<name>.npy   every parameter after step k

Each file's manifest entry has the fields of a gradient case's file plus ``"step": k`` (none
for the starting point); every compared file (``loss``, ``grad_norm``, a parameter after a
step) has its ``floors`` per dtype, derived through the whole trajectory
(:func:`refimpl.testing.trajectory.trajectory_floors`), and a parameter after a step has
``"still"``: per dtype, whether the step's update is structurally zero (then the parameter must
come back unchanged, bit for bit). The case's entry has ``"steps": K``, ``"inputs"`` (one
batch described as data) and the configuration with ``config["steps"]`` (the optimizer, the
clipping, ``K``). The trajectory rule is the manifest's ``conventions.steps``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cases import describe_inputs
from ..cases.steps import StepCase
from ..comparison import DTYPE_TOLERANCES
from ..trajectory import reference_trajectory, trajectory_floors
from .format import (
    _CASE_NAME,
    CONVENTIONS,
    FLOOR_DIGITS,
    GoldenError,
    _case_conventions,
    _case_record,
    _File,
    _file_stem,
    _golden_array,
    _json_value,
    _normalised,
    _npy_bytes,
    _sha256,
    _tolerances_json,
)
from .read import _case_entry, _checked_file, _load_npy_bytes, read_manifest

__all__ = ["STEP_ROLES", "GoldenSteps", "record", "load_steps", "step_file_name", "file_key"]

#: The roles of the files of one step, in manifest order.
STEP_ROLES = ("input", "loss", "grad_norm", "parameter")


def file_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What identifies a file of a case: ``(role, name)``, and its step for a step case's
    files of one step."""
    key = (entry.get("role"), entry.get("name"))
    return key + (entry["step"],) if "step" in entry else key


def step_file_name(role: str, name: str, step: int | None) -> str:
    """A file's path within its case folder (``step<k>/`` for the files of step ``k``)."""
    base = (f"{role}.npy" if role in ("loss", "grad_norm")
            else f"{role}.{_file_stem(name)}.npy")
    return base if step is None else f"step{step}/{base}"


def _floors(by_dtype: Mapping[str, Any], k: int, key: tuple[str, str]) -> dict[str, float]:
    return {dtype: float(f"{floors[k].floors[key]:.{FLOOR_DIGITS}g}")
            for dtype, floors in by_dtype.items()}


def _steps_files(case: StepCase) -> list[_File]:
    """Every file of a step case, computed (nothing written), in manifest order."""
    if not _CASE_NAME.match(case.name):
        raise GoldenError(f"case {case.name!r}: a golden case name must match [a-z0-9-]+")
    reference = reference_trajectory(case)
    floors = {dtype: trajectory_floors(case, dtype) for dtype in DTYPE_TOLERANCES}
    files: list[_File] = []
    seen: dict[str, str] = {}

    def add(role: str, name: str, value: Any, step: int | None, **fields: Any) -> None:
        array = _golden_array(value, f"case {case.name!r}, step {step}, {role} {name!r}")
        path = step_file_name(role, name, step)
        if path.lower() in seen:     # case-insensitive file systems must not merge two files
            raise GoldenError(f"case {case.name!r}: {name!r} and {seen[path.lower()]!r} map to "
                              f"the same file name {path!r}")
        seen[path.lower()] = name
        data = _npy_bytes(array)
        entry = {"path": f"{case.name}/{path}", "role": role, "name": name,
                 "shape": list(array.shape), "dtype": array.dtype.str, "bytes": len(data),
                 "sha256": _sha256(data), **({} if step is None else {"step": step}), **fields}
        if array.ndim == 0 and array.dtype.kind == "f":
            entry.update(_json_value(array.item()))
        files.append(_File(entry, array, data))

    for name, value in case.params.items():
        add("parameter", name, value, None)
    for k, batch in enumerate(case.batches):
        step = k + 1
        for name, value in batch.items():
            add("input", name, value, step)
        add("loss", "loss", np.asarray(reference["losses"][k]).reshape(()), step,
            floors=_floors(floors, k, ("loss", "loss")))
        add("grad_norm", "grad_norm", np.asarray(reference["grad_norms"][k]).reshape(()), step,
            floors=_floors(floors, k, ("norm", "grad_norm")))
        for name, value in reference["params"][k].items():
            add("parameter", name, value, step,
                floors=_floors(floors, k, ("parameter", name)),
                still={dtype: name in by_step[k].still for dtype, by_step in floors.items()})
    return files


def _steps_entry(case: StepCase, files: list[_File]) -> dict[str, Any]:
    """The manifest entry of a step case whose files are ``files``."""
    config = _normalised(case.config)
    return {
        "kind": case.kind,
        "config": config,
        "seed": config.get("seed"),
        "conventions": {**_case_conventions(config), "steps": CONVENTIONS["steps"]},
        "convention": config.get("convention"),
        "tolerances": _tolerances_json(),
        "inputs": _normalised(describe_inputs(case.inputs)),
        "parameters": list(case.params),
        "steps": case.count,
        "files": [file.entry for file in files],
    }


def record(case: Any) -> tuple[list[_File], dict[str, Any]]:
    """Every file of one case and its manifest entry (a step case's, or a gradient case's):
    what :func:`refimpl.testing.golden.write` writes and :func:`~refimpl.testing.golden.verify`
    recomputes."""
    if isinstance(case, StepCase):
        files = _steps_files(case)
        return files, _steps_entry(case, files)
    return _case_record(case)


# --- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoldenSteps:
    """One step case read from a golden folder (every file checked against its SHA-256).

    Attributes
    ----------
    name, kind : str
        The case's name and kind ("steps").
    config : dict
        The base case's configuration and ``config["steps"]`` (optimizer, clipping, ``K``).
    params : dict of str to np.ndarray
        The starting point.
    batches : list of dict
        ``K`` input dicts, one per step.
    trajectory : dict
        ``{"params": [K dicts], "losses": [K floats], "grad_norms": [K floats]}``: refimpl's
        parameters after every step, losses and norms before clipping.
    """

    name: str
    kind: str
    config: dict[str, Any]
    params: dict[str, np.ndarray]
    batches: list[dict[str, np.ndarray]]
    trajectory: dict[str, Any]


def load_steps(golden_dir: str | os.PathLike, name: str,
               manifest: Mapping[str, Any] | None = None) -> GoldenSteps:
    """Read step case ``name`` of a golden folder, checking every file's SHA-256 and header.

    Raises
    ------
    ValueError
        For a case the manifest does not hold, or one that is not a step case.
    refimpl.testing.golden.GoldenError
        For a missing, changed, unsafe or malformed file, or steps that are not 1 .. K.
    """
    root = Path(golden_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    entry = _case_entry(manifest, name)
    if entry.get("kind") != "steps":
        raise ValueError(f"name: case {name!r} is a gradient case (kind "
                         f"{entry.get('kind')!r}), not a step case; read it with load_case")
    count = entry.get("steps")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise GoldenError(f"{root / 'manifest.json'}: case {name!r}: 'steps' must be the number "
                          f"of steps, got {count!r}")
    start: dict[str, np.ndarray] = {}
    batches: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    after: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    losses: list[float | None] = [None] * count
    norms: list[float | None] = [None] * count
    for file_entry in entry["files"]:
        role, step = file_entry.get("role"), file_entry.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)
                                 or not 1 <= step <= count):
            raise GoldenError(f"{root / 'manifest.json'}: case {name!r}: step {step!r} outside "
                              f"1 .. {count}")
        if not (role == "parameter" if step is None else role in STEP_ROLES):
            raise GoldenError(f"{root / 'manifest.json'}: case {name!r}: a file of role "
                              f"{role!r} and step {step!r} has no place in a step case")
        path, data = _checked_file(root, file_entry, f"case {name!r}")
        array = _load_npy_bytes(data, path, file_entry.get("dtype"), file_entry.get("shape"))
        key = file_entry.get("name")
        if step is None:
            start[key] = array
        elif role == "input":
            batches[step - 1][key] = array
        elif role == "parameter":
            after[step - 1][key] = array
        elif role == "loss":
            losses[step - 1] = float(array)
        else:
            norms[step - 1] = float(array)
    missing = [k + 1 for k in range(count) if losses[k] is None or norms[k] is None]
    if missing:
        raise GoldenError(f"{root / 'manifest.json'}: case {name!r}: steps {missing} have no "
                          f"loss or grad_norm file")
    return GoldenSteps(name, entry["kind"], entry.get("config", {}), start, batches,
                       {"params": after, "losses": losses, "grad_norms": norms})
