"""``refimpl explain CASE``: where each unique parameter's gradient comes from
(:mod:`refimpl.study.contributions`) — one row per parameter: its gradient norm, the norm and
share of every contribution, the cosine between them, and for a tied parameter the ratio of the
penalty's pull to the task gradient; per-position maps of a convolution's kernel gradient."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._io import JSON_HELP, atomic_output, check_destination, write_text_atomically
from .._table import format_table
from ..nn import Sequential
from ..study import (
    Contributions,
    Term,
    anchored_contributions,
    model_contributions,
    pair_contributions,
    summarize,
)
from ..testing.cases import Case
from ..tying import AnchoredModel, TiedPair
from ._cases import PLOT_HELP, add_case_arguments, load_case, need_matplotlib

__all__ = ["add_explain_arguments", "run_explain", "case_contributions",
           "format_explanation"]

def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``CASE``, ``--config``, ``--json`` and ``--plot`` to the ``explain`` sub-parser."""
    add_case_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="contributions"))
    parser.add_argument("--plot", metavar="PATH",
                        help="also plot a bar chart of the contributions and the per-position "
                             f"map of every convolution kernel's gradient to PATH {PLOT_HELP}")


def case_contributions(case: Case) -> dict[str, Contributions]:
    """The contributions of every parameter of ``case`` (a model, a tied pair, an anchored
    model), at its point and on its data."""
    config, data = case.config, case.inputs
    if "model" in config:
        model = Sequential.from_config(config["model"])
        return model_contributions(model, case.params, data["x"], data["y"])
    if "pair" in config:
        pair = TiedPair.from_config(config["pair"])
        params_a, params_b = pair.split(case.params)
        target_b = data["yb"] if "yb" in data else data["xb"]   # no "yb": an autoencoder
        return pair_contributions(pair, params_a, params_b, (data["xa"], data["ya"]),
                                  (data["xb"], target_b))
    anchored = config["anchored"]
    references = {key[3:]: value for key, value in data.items() if key.startswith("w0:")}
    model = AnchoredModel(Sequential.from_config(anchored["model"]), anchored["lam"],
                          reference=references or None, names=anchored["names"],
                          penalty=anchored["penalty"])
    return anchored_contributions(model, case.params, data["x"], data["y"])


def short_label(term: Term) -> str:
    """A term's label for a table cell: ``dec.weight^T``, ``A:fc1.weight``, ``pull``."""
    if term.role == "pull":
        return "pull"
    prefix = {"model_a": "A:", "model_b": "B:"}.get(term.model, "")
    return prefix + str(term.slot) + ("^T" if term.transposed else "")


def _cosine_cell(cosines: np.ndarray) -> str:
    """The cosine of two terms, the smallest of several, '-' for one."""
    count = cosines.shape[0]
    if count < 2:
        return "-"
    off = cosines[~np.eye(count, dtype=bool)]
    if np.all(np.isnan(off)):
        return "nan"
    value = float(np.nanmin(off))
    return f"{value:+.3f}" if count == 2 else f"min {value:+.3f}"


def _position_map(term: Term) -> np.ndarray:
    """Norm of a term's part at every grid position: (Ho, Wo) for a convolution."""
    grid = len(term.parts.axes)
    gradients = term.parts.gradients
    flat = gradients.reshape(*gradients.shape[:grid], -1)
    return np.sqrt(np.sum(flat * flat, axis=-1))


def format_explanation(name: str, found: Mapping[str, Contributions]) -> str:
    """The text of ``refimpl explain``: the table, then every convolution's position maps."""
    rows = []
    for key, contributions in found.items():
        summary = summarize(contributions)
        cells = ", ".join(
            f"{short_label(term)} {norm:.3g} ({share:+.0%})" for term, norm, share in
            zip(contributions.terms, summary.norms, summary.shares, strict=True))
        ratio = "-" if summary.pull_to_task is None else f"{summary.pull_to_task:.3g}"
        rows.append((key, f"{summary.norm:.3g}", cells, _cosine_cell(summary.cosines), ratio))
    lines = [f"refimpl explain {name}: every gradient as the sum of its contributions "
             f"(share = <term, gradient> / ||gradient||^2; the shares sum to +100%)", "",
             format_table(("parameter", "||gradient||", "contributions: ||term|| (share)",
                           "cosine", "pull/task"), rows)]
    for key, contributions in found.items():
        for term in contributions.terms:
            if term.parts is not None:
                grid = _position_map(term)
                lines += ["", f"{key}, use {short_label(term)}: ||gradient|| at each output "
                              f"position ({' x '.join(term.parts.axes)} = "
                              f"{' x '.join(map(str, grid.shape))}); they sum to the term"]
                lines += ["  " + "  ".join(f"{value:.2e}" for value in row) for row in grid]
    return "\n".join(lines)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def explanation_document(name: str, found: Mapping[str, Contributions]) -> dict[str, Any]:
    """The JSON of ``refimpl explain`` (NaN and inf as null)."""
    parameters = []
    for key, contributions in found.items():
        summary = summarize(contributions)
        terms = []
        for term, norm, share in zip(contributions.terms, summary.norms, summary.shares,
                                     strict=True):
            terms.append({
                "label": term.label, "role": term.role, "model": term.model, "slot": term.slot,
                "transposed": term.transposed, "norm": norm, "share": _finite_or_none(share),
                "positions": None if term.parts is None else {
                    "axes": list(term.parts.axes), "norms": _position_map(term).tolist()}})
        parameters.append({
            "name": key, "norm": summary.norm, "terms": terms,
            "cosines": [[_finite_or_none(float(c)) for c in row] for row in summary.cosines],
            "pull_to_task": None if summary.pull_to_task is None
            else _finite_or_none(summary.pull_to_task)})
    return {"case": name, "parameters": parameters}


def plot_explanation(found: Mapping[str, Contributions], path: str) -> None:
    """A bar chart of every term's norm per parameter, and a heatmap per convolution use."""
    import matplotlib  # optional extra: refimpl[plot]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [(key, term) for key, c in found.items() for term in c.terms if term.parts is not None]
    figure, axes = plt.subplots(1, 1 + len(maps), figsize=(6 + 3 * len(maps), 4),
                                squeeze=False)
    bars = axes[0, 0]
    position = 0
    ticks, names = [], []
    for key, contributions in found.items():
        summary = summarize(contributions)
        for offset, (term, norm) in enumerate(zip(contributions.terms, summary.norms,
                                                  strict=True)):
            bars.barh(position + offset, norm, color=f"C{offset}")
            bars.text(norm, position + offset, " " + short_label(term), va="center", fontsize=7)
        bars.plot([summary.norm], [position - 0.6], "k|", markersize=8)
        ticks.append(position - 0.6)
        names.append(key)
        position += len(contributions.terms) + 1
    bars.set_yticks(ticks, names, fontsize=8)
    bars.invert_yaxis()
    bars.set(xlabel="||term|| (black tick: ||gradient||)", title="contributions")
    for axis, (key, term) in zip(axes[0, 1:], maps, strict=True):
        image = axis.imshow(_position_map(term), cmap="viridis")
        axis.set(title=f"{key}\nuse {short_label(term)}", xlabel="Wo", ylabel="Ho")
        figure.colorbar(image, ax=axis, shrink=0.8, label="||gradient|| at position")
    figure.tight_layout()
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary, dpi=100)
    finally:
        plt.close(figure)


def run_explain(args: argparse.Namespace) -> int:
    """Run ``refimpl explain``: the table (or the JSON) and the optional plot.

    Returns
    -------
    int
        The exit status: 0 once done; 2 for a bad case or configuration, or ``--plot``
        without matplotlib.
    """
    try:
        case = load_case(args)
        found = case_contributions(case)
    except (ValueError, TypeError) as error:
        print(f"refimpl explain: {error}", file=sys.stderr)
        return 2
    for path in (args.json, args.plot):
        if path and path != "-":
            check_destination(path)
    if args.plot and not need_matplotlib("explain"):
        return 2
    text = json.dumps(explanation_document(case.name, found), indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        print(format_explanation(case.name, found))
    if args.json and args.json != "-":
        write_text_atomically(args.json, text)
    if args.plot:
        plot_explanation(found, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr if args.json == "-" else sys.stdout)
    return 0
