"""``refimpl explain CASE``: where each unique parameter's gradient comes from
(:mod:`refimpl.study`) — one row per parameter: its gradient norm, the norm and share of every
contribution (per use, per Siamese branch, per micro-batch, the penalty's pull), the cosine
between them, and for a tied parameter the ratio of the penalty's pull to the task gradient;
then the uses inside a layer: per-position maps of a convolution's kernel gradient, per-step
norms of an RNN's weights, the rows of an embedding its occurrences move most."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._io import JSON_HELP
from .._table import format_table
from ..study import Contributions, Term, row_summary, summarize
from ..testing.diagnosis import case_contributions
from ._cases import (
    PLOT_HELP,
    add_case_arguments,
    load_case,
    outputs_ready,
    pyplot,
    save_figure,
    write_outputs,
)

__all__ = ["add_explain_arguments", "run_explain", "case_contributions",
           "format_explanation"]

def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``CASE``, ``--config``, ``--json`` and ``--plot`` to the ``explain`` sub-parser."""
    add_case_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="contributions"))
    parser.add_argument("--plot", metavar="PATH",
                        help="also plot a bar chart of the contributions, and a panel per use "
                             "inside a layer (a convolution's per-position map, an RNN's "
                             "per-step bars, an embedding's top rows), to PATH "
                             f"{PLOT_HELP}")


def short_label(term: Term) -> str:
    """A term's label for a table cell: ``dec.weight^T``, ``A:fc1.weight``, ``anchor:fc1.weight``,
    ``mb0:fc1.weight``, ``pull``."""
    if term.role == "pull":
        return "pull"
    prefix = {"model_a": "A:", "model_b": "B:"}.get(term.model, "")
    if term.branch is not None:
        prefix = f"{term.branch}:{prefix}"
    if term.micro_batch is not None:
        prefix = f"mb{term.micro_batch}:{prefix}"
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


#: Rows of an embedding listed by ``explain`` (those with the largest gradient): a reader
#: wants the rows that move most, not a table of the whole vocabulary.
TOP_ROWS = 8


def _parts_lines(key: str, term: Term, shape: tuple[int, ...]) -> list[str]:
    """The text of one term's parts: an embedding's top rows, an RNN's steps, a position map."""
    head = f"{key}, use {short_label(term)}"
    if term.parts.rows is not None:
        rows = row_summary(term, shape[0], TOP_ROWS)
        used = int(np.count_nonzero(np.bincount(term.parts.rows.reshape(-1),
                                                minlength=shape[0])))
        table = [(str(row), str(count), f"{norm:.3g}", f"{each:.3g}",
                  f"{norm / each:.3f}" if each > 0 else "-")
                 for row, count, norm, each in zip(*rows[:4], strict=True)]
        return ["", f"{head}: {term.parts.rows.size} occurrences ({' x '.join(term.parts.axes)}"
                    f") of {used} of {shape[0]} rows; the {len(table)} rows with the largest "
                    f"gradient (agreement = ||row gradient|| / sum ||occurrence||: 1 when its "
                    f"occurrences point one way)",
                format_table(("row", "occurrences", "||row gradient||", "sum ||occurrence||",
                              "agreement"), table)]
    norms = term.parts.norms()
    if norms.ndim == 1:
        note = "; step 0 reads h = 0: no W_hh there" if term.slot.endswith("weight_hh") else ""
        return ["", f"{head}: ||gradient|| through each time step ({term.parts.axes[0]} = "
                    f"{norms.size}{note}); they sum to the term",
                "  " + "  ".join(f"t{t}: {value:.2e}" for t, value in enumerate(norms))]
    return ["", f"{head}: ||gradient|| at each output position "
                f"({' x '.join(term.parts.axes)} = {' x '.join(map(str, norms.shape))}); they "
                f"sum to the term",
            *("  " + "  ".join(f"{value:.2e}" for value in row) for row in norms)]


def format_explanation(name: str, found: Mapping[str, Contributions]) -> str:
    """The text of ``refimpl explain``: the table, then every use inside a layer (position
    maps, per-step norms, top embedding rows)."""
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
                lines += _parts_lines(key, term, contributions.gradient.shape)
    return "\n".join(lines)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _parts_document(term: Term, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """A term's parts in the JSON: the norm at every grid position; for an embedding, also
    every row touched (largest gradient first)."""
    if term.parts is None:
        return None
    document: dict[str, Any] = {"axes": list(term.parts.axes),
                                "norms": term.parts.norms().tolist()}
    if term.parts.rows is not None:
        rows = row_summary(term, shape[0])
        document["rows"] = [{"row": int(row), "occurrences": int(count), "norm": float(norm),
                             "occurrence_norms": float(each)}
                            for row, count, norm, each in zip(*rows[:4], strict=True)]
    return document


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
                "branch": term.branch, "micro_batch": term.micro_batch,
                "positions": _parts_document(term, contributions.gradient.shape)})
        parameters.append({
            "name": key, "norm": summary.norm, "terms": terms,
            "cosines": [[_finite_or_none(float(c)) for c in row] for row in summary.cosines],
            "pull_to_task": None if summary.pull_to_task is None
            else _finite_or_none(summary.pull_to_task)})
    return {"case": name, "parameters": parameters}


def _plot_parts(axis: Any, figure: Any, key: str, term: Term, shape: tuple[int, ...]) -> None:
    """One term's parts: top rows of an embedding (bars), per-step bars of an RNN, a heatmap
    over a convolution's output positions."""
    title = f"{key}\nuse {short_label(term)}"
    if term.parts.rows is not None:
        rows = row_summary(term, shape[0], TOP_ROWS)
        labels = [f"row {row} (x{count})" for row, count in zip(rows.rows, rows.occurrences,
                                                              strict=True)]
        axis.barh(labels, rows.occurrence_norms, color="0.8", label="sum ||occurrence||")
        axis.barh(labels, rows.norms, color="C0", label="||row gradient||")
        axis.invert_yaxis()
        axis.legend(fontsize=7)
        axis.set(title=title + f": top {len(labels)} rows", xlabel="norm")
        return
    norms = term.parts.norms()
    if norms.ndim == 1:
        axis.bar(np.arange(norms.size), norms, color="C1")
        axis.set(title=title, xlabel="time step t", ylabel="||gradient through step t||")
        return
    image = axis.imshow(norms, cmap="viridis")
    axis.set(title=title, xlabel="Wo", ylabel="Ho")
    figure.colorbar(image, ax=axis, shrink=0.8, label="||gradient|| at position")


def plot_explanation(found: Mapping[str, Contributions], path: str) -> None:
    """A bar chart of every term's norm per parameter, and one panel per term with parts
    (top embedding rows, per-step bars, per-position heatmap)."""
    plt = pyplot()
    maps = [(key, term, c.gradient.shape) for key, c in found.items() for term in c.terms
            if term.parts is not None]
    figure, axes = plt.subplots(1, 1 + len(maps), figsize=(6 + 3.5 * len(maps), 4),
                                squeeze=False)
    bars = axes[0, 0]
    position = 0
    ticks, names = [], []
    for key, contributions in found.items():
        summary = summarize(contributions)
        for offset, (term, norm) in enumerate(zip(contributions.terms, summary.norms,
                                                  strict=True)):
            bars.barh(position + offset, norm, color=f"C{offset % 10}")
            bars.text(norm, position + offset, " " + short_label(term), va="center", fontsize=7)
        bars.plot([summary.norm], [position - 0.6], "k|", markersize=8)
        ticks.append(position - 0.6)
        names.append(key)
        position += len(contributions.terms) + 1
    bars.set_yticks(ticks, names, fontsize=8)
    bars.invert_yaxis()
    bars.set(xlabel="||term|| (black tick: ||gradient||)", title="contributions")
    for axis, (key, term, shape) in zip(axes[0, 1:], maps, strict=True):
        _plot_parts(axis, figure, key, term, shape)
    save_figure(figure, plt, path)


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
    if not outputs_ready("explain", args):
        return 2
    write_outputs(args, format_explanation(case.name, found),
                  explanation_document(case.name, found),
                  lambda path: plot_explanation(found, path))
    return 0
