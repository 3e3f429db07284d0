"""Plain-text tables for reports and the command line."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format rows as a plain-text table.

    Parameters
    ----------
    header : sequence of str
        The column titles.
    rows : sequence of sequence of str
        One sequence of cells per row, as many as ``header`` has titles.

    Returns
    -------
    str
        Left-aligned columns separated by two spaces, one line per row, header first, no
        trailing spaces or newline.

    Examples
    --------
    >>> print(format_table(("name", "size"), [("fc1.weight", "16x4")]))
    name        size
    fc1.weight  16x4
    """
    body = [tuple(header)] + [tuple(row) for row in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in body)
