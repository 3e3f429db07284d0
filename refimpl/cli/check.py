"""``refimpl check``: every built-in case (:mod:`refimpl.testing.cases`) through the gradient
checker with the complex step and with central differences; one table, one summary line, exit
status 1 on any failure.

A step case (``K`` optimizer steps, :mod:`refimpl.testing.cases.steps`) is checked at every
step: the gradient at each step's point of refimpl's trajectory, on that step's batch, with
each method (rows ``step <k>: <parameter>``); and, with the complex step, the trajectory
itself recomputed from scratch — every step's gradient by the complex step, the norm, the
clipping and the optimizer's update — and judged by the trajectory rule in float64
(:mod:`refimpl.testing.trajectory`; one row ``trajectory (K steps)``). The recomputation
shares no code with :func:`refimpl.train_steps` but the optimizer's and the clipping's
formulas: it checks the step case's expected values (what ``refimpl golden`` stores and
``refimpl conform`` compares with) end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from .._io import JSON_HELP, check_destination, write_text_atomically
from .._table import format_table
from .._validate import did_you_mean
from .._version import __version__
from ..gradcheck import check_gradients
from ..optim import clip_grad_norm, gradient_norm
from ..testing.cases import Case, all_cases
from ..testing.cases.steps import StepCase
from ..testing.trajectory import compare_trajectory, reference_trajectory, trajectory_floors

#: Above this many parameters a case is checked along random directions instead of
#: coordinate by coordinate, to keep `refimpl check` well under a minute.
FULL_CHECK_LIMIT = 2000
DIRECTIONS = 16
CHECK_METHODS = ("complex", "central")
#: The status of a real-step row that found a kink where a probe declares one
#: (``config["convention"]["on_kink"]``): expected there, so a pass.
KINK_STATUS = "kink (probe)"


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``, ``--case`` and ``--list`` to the ``check`` sub-parser."""
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="results"))
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="check only this case (repeatable); default: all")
    parser.add_argument("--list", action="store_true",
                        help="print the name of every built-in case, one per line, and exit")


def unknown_cases(unknown: list[str], known: list[str]) -> str:
    """The message for unknown ``--case`` names: each with the closest known names."""
    named = "; ".join(f"{name!r}{did_you_mean(name, known)}" for name in unknown)
    return (f"unknown case{'s' if len(unknown) > 1 else ''} {named}; refimpl check --list "
            f"names the {len(known)} built-in cases")


def check_case(case: Case, method: str) -> list[dict[str, Any]]:
    """Check one case's gradients with one method.

    Parameters
    ----------
    case : Case
        A built-in case; above :data:`FULL_CHECK_LIMIT` parameters it is checked along
        :data:`DIRECTIONS` seeded directions instead of coordinate by coordinate.
    method : str
        A method of :func:`refimpl.gradcheck.check_gradients`.

    Returns
    -------
    list of dict
        One row per parameter (or direction), plus one ``"non-finite"`` row naming the
        problems when the loss or a gradient at the point is not finite. On a probe whose
        convention declares ``"on_kink"``, a real-step row found "non-differentiable" has the
        status :data:`KINK_STATUS` and passes; the complex step is never excused.
    """
    mode = "full" if case.parameter_total() <= FULL_CHECK_LIMIT else "directional"
    report = check_gradients(case.loss_and_grads, case.params, method=method, mode=mode,
                             directions=DIRECTIONS, seed=0)
    # A convention probe placed exactly on a kink on purpose (its convention says
    # "on_kink"): there the one-sided differences disagree by construction, so a real-step
    # method can only say "non-differentiable", and that verdict is the expected one. The
    # complex step branches on the real part, as the forward pass does, so it checks the
    # convention itself and is never excused.
    convention = case.config.get("convention")
    on_kink = (isinstance(convention, dict) and convention.get("on_kink") is True
               and method != "complex")
    rows = []
    for row in report.rows:
        expected_kink = on_kink and row.status == "non-differentiable"
        rows.append({
            "case": case.name, "kind": case.kind, "method": method, "mode": mode,
            "parameter": row.name, "max_rel_error": row.max_rel_error,
            "max_abs_error": row.max_abs_error, "rtol": report.tolerance.rtol,
            "status": KINK_STATUS if expected_kink else row.status,
            "ok": row.status == "ok" or expected_kink,
        })
    if report.problems:
        rows.append({"case": case.name, "kind": case.kind, "method": method, "mode": mode,
                     "parameter": "; ".join(report.problems), "max_rel_error": float("nan"),
                     "max_abs_error": float("nan"), "rtol": report.tolerance.rtol,
                     "status": "non-finite", "ok": False})
    return rows


def check_step_case(case: StepCase, method: str) -> list[dict[str, Any]]:
    """Check a step case with one method (module docstring).

    Returns
    -------
    list of dict
        The rows of :func:`check_case` at every step's point (parameters ``"step <k>:
        <name>"``), and with ``method == "complex"`` one more row, ``"trajectory (K steps)"``:
        the trajectory recomputed with complex-step gradients against the case's, by the
        trajectory rule in float64 (``max_rel_error`` the worst tensor's error over its
        scale).
    """
    reference = reference_trajectory(case)
    rows = []
    points = [case.params, *reference["params"][:-1]]
    for k, (point, batch) in enumerate(zip(points, case.batches, strict=True)):
        def step_loss(p: dict[str, Any], batch: dict[str, Any] = batch) -> tuple[Any, Any]:
            return case.evaluate(p, batch)[:2]
        at_step = Case(case.name, case.kind, case.config, point, batch, step_loss,
                       case.outputs, case.evaluate)
        for row in check_case(at_step, method):
            rows.append({**row, "parameter": f"step {k + 1}: {row['parameter']}"})
    if method == "complex":
        rows.append(_trajectory_row(case, reference))
    return rows


def _complex_step_gradient(loss: Any, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every coordinate's ``Im f(p + i h e) / h`` (h = 1e-20): the gradient without any
    backward formula."""
    grads = {}
    work = {key: value.astype(np.complex128) for key, value in params.items()}
    for key, value in work.items():
        flat, gradient = value.reshape(-1), np.empty(value.size)
        for index in range(value.size):
            original = flat[index]
            flat[index] = original + 1e-20j
            gradient[index] = np.imag(loss(work)) / 1e-20
            flat[index] = original
        grads[key] = gradient.reshape(value.shape)
    return grads


def _trajectory_row(case: StepCase, reference: dict[str, Any]) -> dict[str, Any]:
    """The step case's trajectory recomputed from complex-step gradients, as one row."""
    optimizer, clip = case.optimizer(), case.clip()
    params = {key: np.asarray(value, dtype=np.float64) for key, value in case.params.items()}
    state = None
    result: dict[str, list[Any]] = {"params": [], "losses": [], "grad_norms": []}
    for batch in case.batches:
        loss = float(case.evaluate(params, batch)[0])
        grads = _complex_step_gradient(lambda p, b=batch: case.evaluate(p, b)[0], params)
        if clip is None:
            norm = gradient_norm(grads)
        else:
            grads, norm = clip_grad_norm(grads, clip.max_norm, clip.norm_type, clip.eps)
        params, state = optimizer.step(params, grads, state)
        result["params"].append(params)
        result["losses"].append(loss)
        result["grad_norms"].append(norm)
    report = compare_trajectory(result, case, "float64", start=case.params, reference=reference,
                                floors=trajectory_floors(case, "float64"))
    worst = max((row.comparison.relative_error for row in report.rows), default=float("nan"))
    return {"case": case.name, "kind": case.kind, "method": "complex", "mode": "full",
            "parameter": f"trajectory ({case.count} steps)", "max_rel_error": worst,
            "max_abs_error": max((row.comparison.max_abs_error for row in report.rows),
                                 default=float("nan")),
            "rtol": report.tolerance.rtol,
            "status": "ok" if report.ok else f"mismatch: {report.summary()}", "ok": report.ok}


def _format_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`check_case` as a plain-text table."""
    return format_table(
        ("case", "method", "parameter", "max rel error", "tolerance", "result"),
        [(row["case"], row["method"] + ("" if row["mode"] == "full" else " (dir)"),
          row["parameter"], f"{row['max_rel_error']:.2e}", f"{row['rtol']:.0e}",
          ("pass" if row["status"] == "ok" else f"pass ({row['status']})") if row["ok"]
          else f"FAIL ({row['status']})") for row in rows])


def _json_ready(value: Any) -> Any:
    """``value``, with a non-finite float as its string ("nan", "inf"): JSON has neither."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def run_check(args: argparse.Namespace) -> int:
    """Run ``refimpl check``: print a table and a summary line (or the JSON).

    Every built-in case (or those named by ``--case``) is checked with each of
    :data:`CHECK_METHODS`; ``args`` holds the flags of :func:`add_check_arguments`.

    Returns
    -------
    int
        The exit status: 0 when every check passed, 1 when one failed, 2 for an unknown
        ``--case``.
    """
    start = time.perf_counter()
    cases = all_cases()
    if getattr(args, "list", False):
        print("\n".join(case.name for case in cases))
        return 0
    if args.case:
        known = [case.name for case in cases]
        unknown = [name for name in args.case if name not in known]
        if unknown:
            print(f"refimpl check: {unknown_cases(unknown, known)}", file=sys.stderr)
            return 2
        cases = [case for case in cases if case.name in args.case]
    if args.json and args.json != "-":
        check_destination(args.json)   # before the work, not after it
    rows = [row for case in cases for method in CHECK_METHODS
            for row in (check_step_case(case, method) if isinstance(case, StepCase)
                        else check_case(case, method))]
    failed_cases = sorted({row["case"] for row in rows if not row["ok"]})
    elapsed = time.perf_counter() - start
    passed = sum(row["ok"] for row in rows)
    summary = (f"{len(cases)} cases, {len(rows)} checks: {passed} passed, "
               f"{len(rows) - passed} failed ({elapsed:.1f} s)"
               + (f"; failing cases: {', '.join(failed_cases)}" if failed_cases else ""))
    if args.json:
        document = {
            "refimpl": __version__, "numpy": np.__version__, "ok": not failed_cases,
            "summary": summary,
            "rows": [{key: _json_ready(value) for key, value in row.items()} for row in rows],
        }
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_text_atomically(args.json, text)
    if args.json != "-":
        print(_format_table(rows))
        print(summary)
    return 1 if failed_cases else 0


