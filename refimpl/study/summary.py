"""The numbers ``refimpl explain`` prints: norms, shares and cosines of a gradient's terms, and
for an embedding the rows its occurrences land in (the rows used most, not every row)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import check_int
from .contributions import Contributions, Term

__all__ = ["ParameterSummary", "summarize", "RowSummary", "row_summary"]


class ParameterSummary(NamedTuple):
    """The numbers ``refimpl explain`` prints for one unique parameter.

    Attributes
    ----------
    name : str
    norm : float
        ``||g||``, the Frobenius norm of the gradient.
    labels : tuple of str
        The terms' labels, in order.
    norms : tuple of float
        ``||t_i||`` of every term.
    shares : tuple of float
        ``<t_i, s> / ||s||^2`` with ``s`` the sum of the terms: the fraction of the gradient
        along its own direction that term ``i`` supplies. They sum to 1; a negative share is a
        term pulling against the total. NaN when the gradient is zero.
    cosines : ndarray, shape (T, T)
        ``<t_i, t_j> / (||t_i|| ||t_j||)`` between the terms (NaN for a zero term): near 1
        the uses agree, near -1 they fight.
    pull_to_task : float or None
        ``||pull|| / ||task||`` (the task terms summed) when the parameter is pulled by a
        penalty; None otherwise.
    """

    name: str
    norm: float
    labels: tuple[str, ...]
    norms: tuple[float, ...]
    shares: tuple[float, ...]
    cosines: np.ndarray
    pull_to_task: float | None


def _norm(array: np.ndarray) -> float:
    return float(np.sqrt(np.sum(array * array)))


def summarize(found: Contributions) -> ParameterSummary:
    """Norms, shares and cosines of one parameter's terms (real gradients).

    Parameters
    ----------
    found : Contributions
        As returned by :func:`model_contributions` (or the pair / anchored forms).

    Returns
    -------
    ParameterSummary
    """
    if not isinstance(found, Contributions):
        raise TypeError(f"found: expected Contributions, got {type(found).__name__}")
    terms = [term.gradient.ravel() for term in found.terms]
    total = found.total().ravel()
    norms = [_norm(term) for term in terms]
    square = float(total @ total)
    shares = tuple(float(term @ total) / square if square > 0 else float("nan")
                   for term in terms)
    cosines = np.full((len(terms), len(terms)), np.nan)
    for i, first in enumerate(terms):
        for j, second in enumerate(terms):
            if norms[i] > 0 and norms[j] > 0:
                cosines[i, j] = float(first @ second) / (norms[i] * norms[j])
    pull_to_task = None
    if any(term.role == "pull" for term in found.terms):
        task = sum((t.gradient for t in found.terms if t.role == "task"),
                   np.zeros_like(found.gradient))
        pull = sum((t.gradient for t in found.terms if t.role == "pull"),
                   np.zeros_like(found.gradient))
        task_norm = _norm(task)
        pull_to_task = _norm(pull) / task_norm if task_norm > 0 else float("inf")
    return ParameterSummary(found.name, _norm(found.gradient),
                            tuple(term.label for term in found.terms), tuple(norms), shares,
                            cosines, pull_to_task)


class RowSummary(NamedTuple):
    """Where an embedding use's gradient lands: one entry per row of the table it touched.

    Attributes
    ----------
    rows : ndarray of int, shape (R,)
        The rows touched, largest ``||row gradient||`` first (ties: the smaller row first).
    occurrences : ndarray of int, shape (R,)
        How many positions of the index array name each row.
    norms : ndarray, shape (R,)
        ``||sum of the row's occurrences||``: the row's gradient through this use.
    occurrence_norms : ndarray, shape (R,)
        ``sum of ||occurrence||``: equal to ``norms`` when the occurrences agree, larger when
        they cancel (``norms / occurrence_norms`` is their agreement, 1 for one occurrence).
    vocabulary : int
        V, the rows of the table (used or not).
    """

    rows: np.ndarray
    occurrences: np.ndarray
    norms: np.ndarray
    occurrence_norms: np.ndarray
    vocabulary: int


def row_summary(term: Term, vocabulary: int, top: int | None = None) -> RowSummary:
    """The rows an embedding use's occurrences land in, those with the largest gradient first.

    Parameters
    ----------
    term : Term
        A term whose ``parts`` are row parts (an embedding's occurrences).
    vocabulary : int
        V, the number of rows of the table.
    top : int, optional
        Keep only the ``top`` rows with the largest gradient (default: every row touched).

    Returns
    -------
    RowSummary

    Raises
    ------
    ValueError
        For a term without row parts, or ``top < 1``.
    """
    if not isinstance(term, Term) or term.parts is None or term.parts.rows is None:
        raise ValueError("term: expected a Term whose parts are an embedding's occurrences "
                         "(parts.rows set)")
    vocabulary = check_int(vocabulary, "vocabulary", 1)
    rows = term.parts.rows.reshape(-1)
    each = term.parts.norms().reshape(-1)                      # ||occurrence||, (N*T,)
    count = np.bincount(rows, minlength=vocabulary)            # (V,)
    occurrence_norms = np.bincount(rows, weights=each, minlength=vocabulary)
    gradient = term.gradient.reshape(vocabulary, -1)
    norms = np.sqrt(np.sum(gradient * gradient, axis=1))       # (V,)
    used = np.flatnonzero(count)
    order = used[np.lexsort((used, -norms[used]))]
    if top is not None:
        order = order[:check_int(top, "top", 1)]
    return RowSummary(order, count[order], norms[order], occurrence_norms[order], vocabulary)
