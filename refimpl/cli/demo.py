"""``refimpl demo``: the parameter-tying experiment (:mod:`refimpl.cli.tying_experiment`)
from the command line: its flags, its report, its plot."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from dataclasses import asdict
from typing import Any

from .._io import JSON_HELP, atomic_output, check_destination, write_text_atomically
from .._table import format_table
from ..optim import SGD
from ..tying import PENALTIES
from .tying_experiment import DEFAULT, HARD, QUICK, DemoSettings, check_stability, sweep

__all__ = ["format_report", "settings_from_args", "add_demo_arguments", "run_demo"]


def _label(lam: Any) -> tuple[str, str]:
    """The "tying" and "lambda" cells of a strength."""
    if lam == HARD:
        return "hard sharing", "inf"
    if lam == 0:
        return "independent", "0"
    return "soft", f"{lam:g}"


def _cell(row: dict[str, Any], metric: str, digits: int, sign: str = "") -> str:
    """``mean +- standard error`` of ``metric`` in ``row``."""
    return f"{row[metric]:{sign}.{digits}f} +- {row[metric + '_se']:.{digits}f}"


def format_report(results: dict[str, list[dict[str, Any]]], settings: DemoSettings) -> str:
    """The demo's text: what was run, then one table per experiment.

    Parameters
    ----------
    results : dict
        As returned by :func:`sweep`.
    settings : DemoSettings
        The settings of the sweep (described in the header).

    Returns
    -------
    str
        The report, without a trailing newline.
    """
    s = settings
    norm = "||wA - wB||^2" if s.penalty == "l2" else "||wA - wB||_1"
    lines = [
        f"refimpl demo: parameter tying, {s.seeds} seeds x {s.steps} full-batch steps of "
        f"SGD(lr={s.learning_rate:g}, momentum={s.momentum:g}); penalty lam * {norm}; "
        f"mean +- standard error over seeds; gain = paired difference from lambda = 0",
        "",
        f"1. Shifted task: {s.classes} classes, {s.dim} features. A: {s.n_a} labelled "
        f"examples. B: {s.n_b_per_class * s.classes} labelled examples, inputs rotated by "
        f"{s.angle:g} rad and shifted by {s.shift:g}. MLP {s.dim}-{s.hidden}-{s.classes} "
        f"(tanh), all parameters paired; held-out sets of {s.n_test}.",
    ]
    rows = [(*_label(row["lam"]), _cell(row, "b_accuracy", 3), _cell(row, "gain", 3, "+"),
             _cell(row, "a_accuracy", 3), _cell(row, "distance", 3))
            for row in results["shifted"]]
    lines.append(format_table(("tying", "lambda", "B test accuracy", "B gain",
                               "A test accuracy", "||wA - wB||"), rows))
    lines += [
        "",
        f"2. Lasserre variant: classifier {s.dim}-{s.lasserre_hidden}-{s.classes} on "
        f"{s.n_b_per_class * s.classes} labelled examples; its fc1 (weight, bias) tied to the "
        f"encoder of an autoencoder {s.dim}-{s.lasserre_hidden}-{s.dim} (MSE) trained on "
        f"{s.n_a} unlabelled inputs of the same distribution.",
    ]
    rows = [(*_label(row["lam"]), _cell(row, "accuracy", 3), _cell(row, "gain", 3, "+"),
             _cell(row, "distance", 3))
            for row in results["lasserre"]]
    lines.append(format_table(("tying", "lambda", "classifier test accuracy", "gain",
                               "||w_fc1 - w_enc||"), rows))
    return "\n".join(lines)


def _plot(results: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Plot accuracy and distance against lambda to ``path``, atomically."""
    import matplotlib  # optional extra: refimpl[plot]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for experiment, metric, label in (("shifted", "b_accuracy", "shifted task: B accuracy"),
                                      ("shifted", "a_accuracy", "shifted task: A accuracy"),
                                      ("lasserre", "accuracy", "Lasserre: classifier accuracy")):
        rows = results[experiment]
        soft = [row for row in rows if row["lam"] not in (0, HARD)]
        line, = axes[0].plot([row["lam"] for row in soft], [row[metric] for row in soft],
                             "o-", label=label)
        for row, style in ((rows[0], ":"), (rows[-1], "--")):
            axes[0].axhline(row[metric], color=line.get_color(), linestyle=style, linewidth=1)
        distances = [row["distance"] for row in soft]
        if metric != "a_accuracy":
            axes[1].plot([row["lam"] for row in soft], distances, "o-", label=experiment)
    axes[0].set(xscale="log", xlabel="lambda (dotted: lambda = 0, dashed: hard sharing)",
                ylabel="held-out accuracy")
    axes[1].set(xscale="log", yscale="log", xlabel="lambda",
                ylabel="distance between tied parameters")
    for axis in axes:
        axis.legend(fontsize=8)
    figure.tight_layout()
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary)
    finally:
        plt.close(figure)


def _positive_float_list(text: str) -> tuple[float, ...]:
    """The argparse type of ``--lams``: comma-separated finite numbers > 0, sorted."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers > 0, got {text!r}")
    return tuple(sorted(values))


def _positive_int(text: str) -> int:
    """The argparse type of a count: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's flags (one per :class:`DemoSettings` knob, ``--json``, ``--plot``)."""
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.seeds} seeds x {QUICK.steps} steps instead of "
                             f"{DEFAULT.seeds} x {DEFAULT.steps} (for CI)")
    parser.add_argument("--seeds", type=_positive_int, help="number of seeds to average over")
    parser.add_argument("--steps", type=_positive_int, help="optimizer steps per run")
    parser.add_argument("--lams", type=_positive_float_list, metavar="L1,L2,...",
                        help="soft tying strengths besides 0 and hard sharing "
                             f"(default {','.join(f'{v:g}' for v in DEFAULT.lams)})")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT.learning_rate,
                        help="SGD step size (default %(default)s)")
    parser.add_argument("--momentum", type=float, default=DEFAULT.momentum,
                        help="SGD momentum in [0, 1) (default %(default)s)")
    parser.add_argument("--penalty", choices=sorted(PENALTIES), default="l2",
                        help="the tying penalty (default l2: squared L2)")
    parser.add_argument("--angle", type=float, default=DEFAULT.angle,
                        help="rotation of task B's inputs, radians per plane (default %(default)s)")
    parser.add_argument("--shift", type=float, default=DEFAULT.shift,
                        help="size of task B's input shift (default %(default)s)")
    parser.add_argument("--dim", type=_positive_int, default=DEFAULT.dim,
                        help="input features of both experiments (default %(default)s)")
    parser.add_argument("--noise", type=float, default=DEFAULT.noise,
                        help="standard deviation of the class clusters (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="results"))
    parser.add_argument("--plot", metavar="PATH",
                        help="also plot accuracy and distance against lambda to PATH (needs "
                             "matplotlib: pip install 'refimpl[plot]')")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The settings the flags ask for: ``--quick`` or the defaults, then every flag given.

    Parameters
    ----------
    args : argparse.Namespace
        As parsed by :func:`add_demo_arguments`.

    Returns
    -------
    DemoSettings
        Checked: finite ``angle``, ``shift``, ``noise`` (> 0), a valid optimizer, a stable
        strength.

    Raises
    ------
    ValueError, TypeError
        Naming the flag.
    """
    base = QUICK if getattr(args, "quick", False) else DEFAULT
    changes: dict[str, Any] = {}
    for key in ("seeds", "steps", "lams", "penalty", "angle", "shift", "dim", "noise",
                "learning_rate", "momentum"):
        value = getattr(args, key, None)
        if value is not None:
            changes[key] = value
    settings = DemoSettings(**{**asdict(base), **changes})
    if not all(math.isfinite(v) for v in (settings.angle, settings.shift, settings.noise)):
        raise ValueError("--angle, --shift, --noise: expected finite numbers")
    if settings.noise <= 0:
        raise ValueError(f"--noise: expected a number > 0, got {settings.noise:g}")
    SGD(lr=settings.learning_rate, momentum=settings.momentum)  # validates both
    check_stability(settings)
    return settings


def run_demo(args: argparse.Namespace) -> int:
    """Run ``refimpl demo``: the sweep, its report (or the JSON), and the optional plot.

    ``args`` holds the flags of :func:`add_demo_arguments`.

    Returns
    -------
    int
        The exit status: 0 once done; 1 when a run diverged; 2 for a bad value or
        ``--plot`` without matplotlib.
    """
    try:
        settings = settings_from_args(args)
    except (ValueError, TypeError) as error:
        print(f"refimpl demo: {error}", file=sys.stderr)
        return 2
    plot = getattr(args, "plot", None)
    destination = getattr(args, "json", None)
    # Output paths are checked before the sweep (minutes with the defaults), not after it.
    if destination and destination != "-":
        check_destination(destination)
    if plot:
        check_destination(plot)
        if importlib.util.find_spec("matplotlib") is None:
            print("refimpl demo: --plot needs matplotlib, which is not installed "
                  "(pip install 'refimpl[plot]')", file=sys.stderr)
            return 2
    try:
        results = sweep(settings)
    except FloatingPointError as error:
        print(f"refimpl demo: {error}", file=sys.stderr)
        return 1
    document = {"settings": asdict(settings), "results": results}
    if destination == "-":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        print(format_report(results, settings))
    if destination and destination != "-":
        write_text_atomically(destination, json.dumps(document, indent=2) + "\n")
    if plot:
        _plot(results, plot)
        print(f"plot written to {plot}", file=sys.stderr if destination == "-" else sys.stdout)
    return 0
