"""Comparing an implementation's ``train_steps`` with a golden folder's step case.

Above :mod:`.verification`: the stored trajectory is trusted no more than ``refimpl verify``
trusts it (``SHA256SUMS`` agrees with the manifest, and every stored value is this refimpl's
recomputation by the float64 rule), before it becomes the reference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..cases.rebuild import rebuild_case
from ..cases.steps import StepCase
from ..comparison import resolve_tolerance
from ..resolution import HAND_OVER_DTYPE
from ..trajectory import (
    TrajectoryReport,
    compare_trajectory,
    reference_trajectory,
    run_steps,
    trajectory_floors,
)
from .format import MANIFEST, GoldenError
from .read import read_manifest
from .steps import GoldenSteps, load_steps, step_file_name
from .verification import _check_checksums_of, _value_problems

__all__ = ["compare_steps_with_golden"]


def _check_same_steps(name: str, case: Any, data: GoldenSteps) -> None:
    """Refuse a stored step case whose point or batches differ from the rebuilt case's."""
    def same(stored: Mapping[str, Any], built: Mapping[str, Any]) -> bool:
        return set(stored) == set(built) and all(
            np.shape(stored[key]) == np.shape(built[key])
            and np.array_equal(stored[key], built[key]) for key in built)

    if not isinstance(case, StepCase) or len(case.batches) != len(data.batches) \
            or not same(data.params, case.params) \
            or not all(same(s, b) for s, b in zip(data.batches, case.batches, strict=True)):
        raise ValueError(f"golden_dir: case {name!r}: the stored point or batches differ from "
                         f"refimpl's step case of that name, so its floors cannot be derived; "
                         f"regenerate the folder with this refimpl (refimpl golden)")


def compare_steps_with_golden(impl: Any, golden_dir: str | os.PathLike, name: str, *,
                              manifest: Mapping[str, Any] | None = None,
                              dtype: Any = "float64", rtol: float | None = None,
                              atol: float | None = None) -> TrajectoryReport:
    """``impl.train_steps`` on a golden folder's step case, against the stored trajectory.

    The reference is the stored float64 trajectory; the floors are derived by rebuilding the
    case from refimpl alone (:func:`refimpl.testing.cases.rebuild.rebuild_case`), whose point
    and batches must equal the stored ones.

    Raises
    ------
    refimpl.testing.NotExpressible
        When ``impl`` has no ``train_steps``.
    ValueError
        When the case cannot be rebuilt here or differs from the rebuilt one.
    """
    dtype_name, _ = resolve_tolerance(dtype, rtol, atol)
    manifest = read_manifest(golden_dir) if manifest is None else manifest
    data = load_steps(golden_dir, name, manifest)
    rebuilt = rebuild_case(name, manifest["cases"][name].get("config", {}))
    if rebuilt is None:
        raise ValueError(f"golden_dir: case {name!r} is neither in refimpl's catalogue nor "
                         f"rebuilt by a registered rebuilder, so its floors cannot be derived")
    _check_same_steps(name, rebuilt, data)
    _check_stored_steps(golden_dir, data, rebuilt, manifest)
    floors = trajectory_floors(rebuilt, dtype_name)
    start = {key: np.asarray(value).astype(HAND_OVER_DTYPE[dtype_name]).astype(np.float64)
             for key, value in data.params.items()}
    result = run_steps(impl, rebuilt, dtype_name)
    return compare_trajectory(result, rebuilt, dtype_name, start=start,
                              reference=data.trajectory, floors=floors, rtol=rtol, atol=atol)



def _check_stored_steps(golden_dir: str | os.PathLike, stored: GoldenSteps, case: StepCase,
                        manifest: Mapping[str, Any]) -> None:
    """Refuse a stored trajectory unless this refimpl reproduces it: ``SHA256SUMS`` agrees
    with the manifest, every step holds exactly the case's parameters, and every stored loss,
    norm and parameter equals the recomputation by the float64 rule; else a
    :class:`GoldenError` naming the file."""
    root = Path(golden_dir)
    _check_checksums_of(root, manifest, stored.name)
    reference = reference_trajectory(case)
    for k, after in enumerate(stored.trajectory["params"]):
        step = k + 1
        if set(after) != set(case.params):
            raise GoldenError(f"{root / MANIFEST}: case {stored.name!r}, step {step}: the "
                              f"parameters {sorted(after)} are not the case's "
                              f"{sorted(case.params)}; every parameter is compared")
        tensors = [("loss", "loss", stored.trajectory["losses"][k], reference["losses"][k]),
                   ("grad_norm", "grad_norm", stored.trajectory["grad_norms"][k],
                    reference["grad_norms"][k])]
        tensors += [("parameter", name, after[name], reference["params"][k][name])
                    for name in case.params]
        for role, name, value, expected in tensors:
            problems, _ = _value_problems((role, name), np.asarray(expected, dtype=np.float64),
                                          np.asarray(value))
            if problems:
                path = root / stored.name / step_file_name(role, name, step)
                raise GoldenError(f"{path}: the stored {role} {name!r} of step {step} is not "
                                  f"this refimpl's for case {stored.name!r} "
                                  f"({'; '.join(problems)}); the folder was changed (refimpl "
                                  f"verify {golden_dir} says where) or written by another "
                                  f"refimpl")
