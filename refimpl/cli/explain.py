"""``refimpl explain CASE``: where each unique parameter's gradient comes from
(:mod:`refimpl.study`) — one row per parameter: its gradient norm, the norm and share of every
contribution (per use, per Siamese branch, per micro-batch, the penalty's pull), the cosine
between them, and for a tied parameter the ratio of the penalty's pull to the task gradient;
then the uses inside a layer: per-position maps of a convolution's kernel gradient, per-step
norms of an RNN's weights, the rows of an embedding its occurrences move most.

``refimpl explain --hessian CASE``: where the curvature comes from (:mod:`refimpl.study.curvature`)
— along the case's seeded direction ``v`` (its HVP expectation's), every parameter's ``e^T H e``
(``e``: ``v`` on that parameter, 0 elsewhere) as the sum of its uses' diagonal blocks, the cross
terms between uses, and a tying or anchoring penalty's Hessian (a soft-tied pair is one
block)."""

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
from ..study.curvature import Curvature, model_curvature
from ..testing.cases.models import case_model
from ..testing.diagnosis import case_contributions
from ..testing.second_order import direction_seed, has_hvp, hvp_expectation
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
           "format_explanation", "format_curvature", "curvature_document", "plot_curvature"]

def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``CASE``, ``--config``, ``--json`` and ``--plot`` to the ``explain`` sub-parser."""
    add_case_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="contributions"))
    parser.add_argument("--plot", metavar="PATH",
                        help="also plot a bar chart of the contributions, and a panel per use "
                             "inside a layer (a convolution's per-position map, an RNN's "
                             "per-step bars, an embedding's top rows), to PATH "
                             f"{PLOT_HELP}")
    parser.add_argument("--hessian", action="store_true",
                        help="instead, the curvature along the case's seeded direction v: "
                             "every parameter's e^T H e split into its uses' diagonal blocks, "
                             "the cross terms between uses and a penalty's share (the plot: "
                             "one signed bar per term)")


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


#: The explain figure's width in inches (1000 px at save_figure's 100 dpi): about a docs page's
#: column, so that the figure is shown at nearly its own size. Panels that do not fit beside
#: each other at that width are stacked, PANEL_COLUMNS to a row.
FIGURE_WIDTH = 10.0
PANEL_COLUMNS = 3
PANEL_HEIGHT = 3.2
#: A kernel map or a time axis with at most this many positions gets a tick at every integer.
EVERY_TICK_UP_TO = 12


def _integer_ticks(axis: Any, plt: Any, which: str, count: int) -> None:
    """Positions are integers: a tick at each one for a short axis, else integer ticks only."""
    target = axis.xaxis if which == "x" else axis.yaxis
    if count <= EVERY_TICK_UP_TO:
        target.set_ticks(range(count))
    else:
        target.set_major_locator(plt.MaxNLocator(integer=True))


def _bar_labels(axis: Any, values: list[float], positions: list[float], labels: list[str]
                ) -> None:
    """Each bar's label kept inside the frame: inside a bar longer than half the longest
    (right-aligned, white), just past the end of a shorter one, where the other half of the
    frame leaves it room."""
    top = max(values, default=0.0) or 1.0
    for value, position, label in zip(values, positions, labels, strict=True):
        inside = value > 0.5 * top
        axis.text(value - 0.01 * top if inside else value + 0.01 * top, position, label,
                  va="center", ha="right" if inside else "left", fontsize=7,
                  color="white" if inside else "black", clip_on=True)


def _plot_contributions(axis: Any, found: Mapping[str, Contributions]) -> None:
    """One bar per term, grouped by parameter; a black tick marks each gradient's norm."""
    position, ticks, names = 0, [], []
    values, positions, labels = [], [], []
    for key, contributions in found.items():
        summary = summarize(contributions)
        for offset, (term, norm) in enumerate(zip(contributions.terms, summary.norms,
                                                  strict=True)):
            axis.barh(position + offset, norm, color=f"C{offset % 10}")
            values.append(float(norm))
            positions.append(position + offset)
            labels.append(short_label(term))
        axis.plot([summary.norm], [position - 0.6], "k|", markersize=8)
        values.append(float(summary.norm))
        positions.append(position - 0.6)
        labels.append("")
        ticks.append(position - 0.6)
        names.append(key)
        position += len(contributions.terms) + 1
    _bar_labels(axis, values, positions, labels)
    axis.set_yticks(ticks, names, fontsize=8)
    axis.set_ylim(position - 0.5, -1.2)
    axis.set(xlabel="||term|| (black tick: ||gradient||)",
             title="every gradient's contributions")


def _plot_rows(axis: Any, title: str, term: Term, shape: tuple[int, ...]) -> None:
    """An embedding use's top rows: each row's gradient over the sum of its occurrences'."""
    rows = row_summary(term, shape[0], TOP_ROWS)
    labels = [f"row {row} (x{count})" for row, count in zip(rows.rows, rows.occurrences,
                                                          strict=True)]
    axis.barh(labels, rows.occurrence_norms, color="0.8", label="sum ||occurrence||")
    axis.barh(labels, rows.norms, color="C0", label="||row gradient||")
    axis.invert_yaxis()
    axis.set_xlim(0, 1.1 * max(rows.occurrence_norms))
    axis.legend(fontsize=7, loc="lower right")
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title(f"{title}: top {len(labels)} rows", fontsize=9)
    axis.set(xlabel="norm")


def plot_explanation(name: str, found: Mapping[str, Contributions], path: str) -> None:
    """A bar chart of every term's norm per parameter and, below it, one panel per term with
    parts: an embedding's top rows (bars), an RNN's per-step norms (bars on one shared axis,
    logarithmic when they span more than two decades), a convolution's per-position norms
    (heat maps on one shared colour scale, with one colour bar). The case name is in the
    figure's title."""
    plt = pyplot()
    uses = {key: [term for term in c.terms if term.parts is not None]
            for key, c in found.items()}
    maps = [(key, term, found[key].gradient.shape) for key in found for term in uses[key]]
    # A parameter's uses are compared: side by side on one row of their own when it has
    # several; else the panels fill the rows in order.
    most = max(map(len, uses.values()), default=0)
    if most > 1:
        columns = min(most, PANEL_COLUMNS)
    else:   # as few rows as may be, then as few empty cells
        columns = min(range(1, PANEL_COLUMNS + 1),
                      key=lambda c: (-(-len(maps) // c), -len(maps) % c))
    cells = []
    for key in found:
        if most > 1 and cells and len(cells) % columns:
            cells += [None] * (columns - len(cells) % columns)
        cells += [key] * len(uses[key])
    rows = -(-len(cells) // columns)
    bar_count = sum(len(c.terms) + 1 for c in found.values())
    bar_height = 0.9 + 0.22 * bar_count
    figure = plt.figure(figsize=(FIGURE_WIDTH, bar_height + PANEL_HEIGHT * rows + 0.5),
                        layout="constrained")
    grid = figure.add_gridspec(1 + rows, columns,
                               height_ratios=[bar_height] + [PANEL_HEIGHT] * rows)
    _plot_contributions(figure.add_subplot(grid[0, :]), found)
    figure.suptitle(f"refimpl explain {name}: where every gradient comes from")
    axes = [figure.add_subplot(grid[1 + i // columns, i % columns])
            for i, key in enumerate(cells) if key is not None]
    steps = [(axis, term.parts.norms()) for axis, (_, term, _) in zip(axes, maps, strict=True)
             if term.parts.rows is None and term.parts.norms().ndim == 1]
    positions = [(axis, term.parts.norms()) for axis, (_, term, _) in
                 zip(axes, maps, strict=True)
                 if term.parts.rows is None and term.parts.norms().ndim == 2]
    for axis, (key, term, shape) in zip(axes, maps, strict=True):
        title = f"{key}, use {short_label(term)}"
        if term.parts.rows is not None:
            _plot_rows(axis, title, term, shape)
        else:
            axis.set_title(title, fontsize=9)
    _plot_steps(plt, steps)
    _plot_positions(plt, figure, positions)
    save_figure(figure, plt, path)


def _plot_steps(plt: Any, panels: list[tuple[Any, np.ndarray]]) -> None:
    """Per-step norms of RNN uses: bars on one y axis shared by all (they are compared), on a
    log scale when the nonzero norms span more than two decades (a vanishing gradient)."""
    if not panels:
        return
    values = np.concatenate([norms for _, norms in panels])
    positive = values[values > 0]
    logarithmic = positive.size > 0 and positive.max() > 100 * positive.min()
    for axis, norms in panels:
        axis.bar(np.arange(norms.size), norms, color="C1")
        _integer_ticks(axis, plt, "x", norms.size)
        axis.set(xlabel="time step t", ylabel="||gradient through step t||")
        if logarithmic:
            axis.set_yscale("log")
            axis.set_ylim(positive.min() / 2, positive.max() * 2)
        else:
            axis.set_ylim(0, 1.05 * values.max() if values.max() > 0 else 1)


def _plot_positions(plt: Any, figure: Any, panels: list[tuple[Any, np.ndarray]]) -> None:
    """Per-position norms of convolution uses: heat maps on one colour scale from 0 to the
    largest norm of them all (they are compared), with one colour bar."""
    if not panels:
        return
    top = max(float(norms.max()) for _, norms in panels) or 1.0
    image = None
    for axis, norms in panels:
        image = axis.imshow(norms, cmap="viridis", vmin=0, vmax=top)
        _integer_ticks(axis, plt, "x", norms.shape[1])
        _integer_ticks(axis, plt, "y", norms.shape[0])
        axis.set(xlabel="Wo", ylabel="Ho")
    figure.colorbar(image, ax=[axis for axis, _ in panels], shrink=0.9,
                    label="||gradient|| at output position (one scale)")


def run_explain(args: argparse.Namespace) -> int:
    """Run ``refimpl explain``: the table (or the JSON) and the optional plot.

    Returns
    -------
    int
        The exit status: 0 once done; 2 for a bad case or configuration, or ``--plot``
        without matplotlib.
    """
    if getattr(args, "hessian", False):
        return _run_curvature(args)
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
                  lambda path: plot_explanation(case.name, found, path))
    return 0


# --- explain --hessian ---------------------------------------------------------------------------

def _run_curvature(args: argparse.Namespace) -> int:
    """``refimpl explain --hessian``: the table (or the JSON) and the optional plot."""
    try:
        case = load_case(args)
        if not has_hvp(case):
            raise ValueError(f"case {case.name!r}: its configuration describes no refimpl "
                             f"model, so it has no Hessian to explain")
        model, data, _, _ = case_model(case)   # micro-batches: the step's H is the full batch's
        blocks = model_curvature(model, case.params, data, hvp_expectation(case).direction)
    except (ValueError, TypeError) as error:
        print(f"refimpl explain: {error}", file=sys.stderr)
        return 2
    if not outputs_ready("explain", args):
        return 2
    seed = direction_seed(case)
    write_outputs(args, format_curvature(case.name, seed, blocks),
                  curvature_document(case.name, seed, blocks),
                  lambda path: plot_curvature(case.name, blocks, path))
    return 0


def _block_name(block: Curvature) -> str:
    """A block's parameter, or a soft-tied pair as ``A:w ~ B:w'``."""
    return " ~ ".join(block.names)


def format_curvature(name: str, seed: int, blocks: list[Curvature]) -> str:
    """The text of ``refimpl explain --hessian``: one row per parameter (a soft-tied pair:
    one row), its ``e^T H e`` and every term with its share."""
    rows = []
    for block in blocks:
        cells = ", ".join(f"{term.label} {term.value:+.3g} ({share:+.0%})"
                          if math.isfinite(share) else f"{term.label} {term.value:+.3g}"
                          for term, share in zip(block.terms, block.shares(), strict=True))
        rows.append((_block_name(block), f"{block.value:+.4g}", cells))
    return "\n".join([
        f"refimpl explain --hessian {name}: the curvature e^T H e of every parameter along the "
        f"case's direction v (seed {seed}; e = v on the parameter, 0 elsewhere): each use's "
        f"diagonal block, the cross terms between uses (2 d_u^T H d_u'), a penalty's Hessian "
        f"(share = term / e^T H e; the shares sum to +100%)", "",
        format_table(("parameter", "e^T H e", "terms: value (share)"), rows)])


def curvature_document(name: str, seed: int, blocks: list[Curvature]) -> dict[str, Any]:
    """The JSON of ``refimpl explain --hessian`` (NaN as null)."""
    return {"case": name, "direction_seed": seed, "parameters": [
        {"names": list(block.names), "value": block.value, "hvp_check": block.product,
         "terms": [{"label": term.label, "kind": term.kind, "uses": list(term.uses),
                    "value": term.value, "share": _finite_or_none(share)}
                   for term, share in zip(block.terms, block.shares(), strict=True)]}
        for block in blocks]}


#: The colour of each kind of term in the ``--hessian`` plot.
TERM_COLOURS = {"use": "C0", "cross": "C1", "penalty": "C2"}
TERM_LABELS = {"use": "a use's diagonal block", "cross": "cross term between two uses",
               "penalty": "a penalty's Hessian"}


def plot_curvature(name: str, blocks: list[Curvature], path: str) -> None:
    """One signed horizontal bar per term, grouped by parameter (a cross term or a penalty
    can be negative), coloured by kind, a black tick at each parameter's ``e^T H e``."""
    plt = pyplot()
    bar_count = sum(len(block.terms) + 1 for block in blocks)
    figure = plt.figure(figsize=(FIGURE_WIDTH, 1.2 + 0.22 * bar_count), layout="constrained")
    axis = figure.add_subplot()
    position, ticks, names = 0, [], []
    for block in blocks:
        for offset, term in enumerate(block.terms):
            axis.barh(position + offset, term.value, color=TERM_COLOURS[term.kind])
            axis.text(term.value, position + offset, f" {term.label} ", va="center",
                      ha="left" if term.value >= 0 else "right", fontsize=7, clip_on=True)
        axis.plot([block.value], [position - 0.6], "k|", markersize=8)
        ticks.append(position - 0.6)
        names.append(_block_name(block))
        position += len(block.terms) + 1
    axis.axvline(0.0, color="0.5", linewidth=0.8)
    axis.set_yticks(ticks, names, fontsize=8)
    axis.set_ylim(position - 0.5, -1.2)
    low, high = axis.get_xlim()
    span = high - low
    axis.set_xlim(low - 0.35 * span, high + 0.35 * span)   # room for the labels of the bars
    kinds = {term.kind for block in blocks for term in block.terms}
    axis.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour, label=TERM_LABELS[kind])
                         for kind, colour in TERM_COLOURS.items() if kind in kinds],
                fontsize=7, loc="lower right")
    axis.set(xlabel="term of e^T H e (black tick: e^T H e)",
             title=f"refimpl explain --hessian {name}: where the curvature comes from")
    save_figure(figure, plt, path)
