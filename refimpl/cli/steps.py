"""``refimpl steps CASE``: the error of forward, central, Richardson and complex-step
derivatives against the analytic gradient, for step sizes from 1e-1 down to 1e-300
(:mod:`refimpl.study.steps`), along one coordinate or one random direction of a case."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from .._io import JSON_HELP
from .._table import format_table
from ..study import (
    EPS,
    EXPONENTS,
    METHODS,
    StepStudy,
    best_step,
    converges,
    coordinate_direction,
    default_steps,
    random_direction,
    study_steps,
)
from ..testing.cases import Case
from ._cases import (
    PLOT_HELP,
    add_case_arguments,
    load_case,
    outputs_ready,
    pyplot,
    save_figure,
    write_outputs,
)

__all__ = ["add_steps_arguments", "run_steps", "format_steps", "choose_direction"]

#: The complex step's error is reported as its largest below this step (where its O(h^2)
#: truncation is below eps for any well-scaled function).
FLAT_BELOW = 1e-10


def add_steps_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``CASE``, ``--config``, the direction, ``--per-decade``, ``--json``, ``--plot``."""
    add_case_arguments(parser)
    parser.add_argument("--param", metavar="NAME",
                        help="study the coordinate of this parameter (a pair's keys are "
                             "'A:<name>' / 'B:<name>') instead of a random direction")
    parser.add_argument("--index", type=int, metavar="I",
                        help="the entry of --param (flat, C order; default 0)")
    parser.add_argument("--direction", type=int, metavar="SEED",
                        help="a random unit direction from SEED (the default, with SEED 0)")
    parser.add_argument("--per-decade", type=int, default=4, metavar="K",
                        help="steps per factor of 10 (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="errors"))
    parser.add_argument("--plot", metavar="PATH",
                        help=f"also plot the error curves on log-log axes to PATH {PLOT_HELP}")


def choose_direction(case: Case, gradient: dict[str, np.ndarray], args: argparse.Namespace
                     ) -> tuple[str, dict[str, np.ndarray]]:
    """The direction the flags ask for, and its description.

    Raises
    ------
    ValueError
        For ``--direction`` with ``--param`` / ``--index``, ``--index`` without ``--param``, or
        an unknown parameter or index.
    """
    if args.param is None:
        if args.index is not None:
            raise ValueError("--index: needs --param NAME")
        # A random direction by default: along one coordinate the loss can be a polynomial
        # of low degree (a last-layer bias under MSE is quadratic), whose central difference
        # has no truncation error, and no V to see.
        seed = 0 if args.direction is None else args.direction
        return f"random unit direction (seed {seed})", random_direction(case.params, seed)
    if args.direction is not None:
        raise ValueError("--direction: a random direction takes no --param or --index")
    index = 0 if args.index is None else args.index
    direction = coordinate_direction(case.params, args.param, index)
    if not np.any(gradient[args.param].flat[index]):
        raise ValueError(f"--param {args.param} --index {index}: the gradient there is 0; a "
                         f"relative error against 0 says nothing, choose another entry")
    return f"coordinate {args.param}[{index}] (flat index)", direction


def _table_rows(study: StepStudy, per_decade: int) -> list[int]:
    """Rows shown: every decade down to 1e-20, then every 20th decade."""
    rows = []
    for position in range(0, study.steps.size, per_decade):
        decade = position // per_decade + 1
        if decade <= 20 or decade % 20 == 0:
            rows.append(position)
    return rows


def format_steps(name: str, described: str, study: StepStudy, per_decade: int) -> str:
    """The text of ``refimpl steps``: the table of relative errors and the best steps (for a
    method that does not converge, :func:`refimpl.study.converges`, a line saying so)."""
    rows = [(f"{study.steps[i]:.0e}", *(f"{study.errors[m][i]:.1e}" for m in METHODS))
            for i in _table_rows(study, per_decade)]
    lines = [f"refimpl steps {name}: {described}; analytic derivative {study.analytic:.6e}; "
             f"relative error |estimate - analytic| / |analytic| at step h", "",
             format_table(("h", *METHODS), rows), ""]
    for method, exponent in EXPONENTS.items():
        if not converges(study, method):
            lines.append(f"{method:<10} does not converge: its error never falls as h shrinks "
                         f"(about {_error_at(study, method):.0e} from h = "
                         f"{study.steps[0]:.0e} down), so no step is best: "
                         f"the loss has a kink at p along this direction (one-sided slopes "
                         f"that differ)")
            continue
        lines.append(f"best h for {method:<10}  {best_step(study, method):.1e}   "
                     f"(eps^(1/{round(1 / exponent)}) = {EPS ** exponent:.1e}); error there "
                     f"{_error_at(study, method):.1e}")
    flat = study.errors["complex"][study.steps <= FLAT_BELOW]
    lines.append(f"complex step: largest error for h <= {FLAT_BELOW:.0e} (down to "
                 f"{study.steps[-1]:.0e}): {flat.max():.1e} = {flat.max() / EPS:.1f} eps")
    vanished = study.steps[study.estimates["forward"] == 0]
    if vanished.size:
        lines.append(f"largest h whose forward difference is exactly 0: {vanished.max():.1e} "
                     f"(below the spacing of the numbers around p, p + h v == p: the step "
                     f"vanishes, the three differences estimate 0, an error of 1)")
    return "\n".join(lines)


def _error_at(study: StepStudy, method: str) -> float:
    return float(study.errors[method][study.steps == best_step(study, method)][0])


def steps_document(name: str, described: str, study: StepStudy) -> dict[str, Any]:
    """The JSON of ``refimpl steps`` (a method that does not converge has no best step:
    null)."""
    return {"case": name, "direction": described, "analytic": study.analytic, "eps": EPS,
            "steps": study.steps.tolist(),
            "estimates": {m: study.estimates[m].tolist() for m in METHODS},
            "errors": {m: study.errors[m].tolist() for m in METHODS},
            "converges": {m: converges(study, m) for m in METHODS},
            "best_steps": {m: best_step(study, m) if converges(study, m) else None
                           for m in EXPONENTS}}


#: Decades between the major ticks of the two panels: down to 1e-20, and down to 1e-300.
TICK_DECADES = (2, 50)


def plot_steps(name: str, described: str, study: StepStudy, path: str) -> None:
    """The V-curves on log-log axes, down to 1e-20 (top) and down to 1e-300 (bottom), stacked
    so that each spans the page's width; the case and the direction in the figure's title."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 1, figsize=(10, 8), layout="constrained")
    floor = EPS / 16   # an exact estimate (error 0) is drawn at the bottom of the plot
    for axis, smallest, decades in zip(axes, (1e-20, study.steps[-1]), TICK_DECADES,
                                       strict=True):
        shown = study.steps >= smallest
        for number, method in enumerate(METHODS):
            axis.loglog(study.steps[shown], np.maximum(study.errors[method][shown], floor),
                        label=method, color=f"C{number}", linewidth=1)
            if method in EXPONENTS:
                axis.axvline(EPS ** EXPONENTS[method], color=f"C{number}", linestyle=":",
                             linewidth=1)
        last = int(round(-np.log10(smallest)))
        axis.set_xticks([10.0 ** -k for k in range(0, last + 1, decades)])
        axis.set(xlabel="step h", ylabel="relative error", ylim=(floor / 2, 10),
                 xlim=(study.steps[0], smallest))
    axes[0].set_title("down to 1e-20: the V-curves (dotted: eps^(1/2), eps^(1/3), "
                      "eps^(1/5), the best steps in theory)", fontsize=10)
    axes[1].set_title("down to 1e-300: the complex step stays flat (an error of 0 is drawn "
                      "at eps/16)", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower left")
    figure.suptitle(f"refimpl steps {name}: {described}")
    save_figure(figure, plt, path)


def run_steps(args: argparse.Namespace) -> int:
    """Run ``refimpl steps``: the table (or the JSON) and the optional plot.

    Returns
    -------
    int
        The exit status: 0 once done; 2 for a bad case, direction or ``--per-decade``, or
        ``--plot`` without matplotlib.
    """
    try:
        case = load_case(args)
        _, gradient = case.loss_and_grads(case.params)
        described, direction = choose_direction(case, gradient, args)
        steps = default_steps(per_decade=args.per_decade)
    except (ValueError, TypeError) as error:
        print(f"refimpl steps: {error}", file=sys.stderr)
        return 2
    if not outputs_ready("steps", args):
        return 2
    study = study_steps(lambda p: case.loss_and_grads(p)[0], case.params, gradient, direction,
                        steps)
    write_outputs(args, format_steps(case.name, described, study, args.per_decade),
                  steps_document(case.name, described, study),
                  lambda path: plot_steps(case.name, described, study, path))
    return 0
