"""Diagnoses, not only verdicts: the bug a failing gradient of a shared model shows.

The gradient of a shared, tied, recurrent, Siamese or micro-batch model is a *sum* of labelled
contributions (:mod:`refimpl.study`): one per use (slot) of the parameter, per time step of an
RNN, per occurrence of an embedding row, per Siamese branch, per micro-batch (weighted by its
share ``n_i / N``), and the pull of a tying or anchoring penalty. The bugs such a model
invites leave one of them out, count one twice, transpose one wrongly or weight one wrongly.
When an implementation's gradient fails the comparison, :func:`diagnose` builds a small
family of *named* candidates from the contributions at the case's point — each the reference
``g`` changed in one documented way, never a fitted combination — and names the bug when one
of them matches the implementation.

The candidates
--------------
With ``g`` the reference gradient, ``U`` one use of the parameter (summed over branches and
micro-batches), ``P`` the penalty's pull, ``S_t`` the part of an RNN use through time step
``t``, ``B_b`` Siamese branch ``b``, ``m_i`` micro-batch ``i`` (weighted by its share ``s_i =
n_i / N``, of its own model's batch for a tied pair) and ``M`` the number of micro-batches:

======================================  =====================================================
bug (a key of :data:`BUGS`)             candidate
======================================  =====================================================
use missing                             ``g - U`` (2 or more uses); with 3 or more, also the
                                        use ``U`` alone (every other use missing)
use counted twice                       ``g + U`` (2 or more uses)
transposed use not transposed back      ``g - U + U^T``: a use that reads a square parameter
                                        transposed, added in its slot's layout
pull missing                            ``g - P``
pull halved                             ``g - P / 2``
pull with the wrong sign                ``g - 2 P``
pull counted once per micro-batch       ``g + (M - 1) P``
time step dropped                       ``g - S_t``, every step ``t`` of an RNN use
branch dropped                          ``g - B_b``; with 3 or more branches, also ``B_b``
                                        alone (every other branch dropped)
micro-batch dropped                     ``g - m_i``
micro-batches weighted 1                ``g + sum_i (m_i / s_i - m_i)``: summed, not averaged
micro-batches weighted 1/M              ``g + sum_i (m_i / (M s_i) - m_i)``: the mean of the
                                        micro-batch means
micro-batch weighted 1                  ``g - m_i + m_i / s_i``
occurrences assigned, not accumulated   an embedding use with every repeated row given the
                                        gradient of its first (or of its last) occurrence
                                        alone: ``dW[x] = dout`` instead of ``np.add.at``
======================================  =====================================================

When a diagnosis is offered
---------------------------
Every decision is the comparison rule of :mod:`refimpl.testing.comparison` with the failing
tensor's own tolerance and resolution floor, nothing looser:

1. a candidate is considered only when it is *told apart* from the reference (the rule fails
   it against ``g`` and ``g`` against it): a candidate the dtype cannot separate from the
   right answer names nothing (an RNN's ``W_hh`` has no part at step 0, so "step 0 dropped"
   is the reference itself);
2. it *fits* when the implementation's gradient passes the rule with the candidate in the
   reference's place;
3. the bug is named only when exactly one candidate fits and it is told apart from every
   other candidate of step 1. Otherwise the fitting candidates and those they cannot be told
   apart from coincide at this point (two equal uses: either one missing gives the same
   gradient): the diagnosis says so, lists them, and names no bug (:attr:`Diagnosis.bug` is
   the bug only if they all share it, :attr:`Diagnosis.named` is False).

When no candidate fits — a gradient wrong in any other way — nothing is offered. A diagnosis
never changes a verdict. The contributions are recomputed from the case's configuration at
its point; a tensor whose contributions do not sum to the reference by the float64 rule (a
hand-made case whose configuration describes another model) is not diagnosed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..nn import Siamese
from ..study import (
    Contributions,
    Term,
    anchored_contributions,
    microbatch_contributions,
    model_contributions,
    pair_contributions,
    siamese_contributions,
)
from ..tying import AnchoredModel, TiedPair
from .cases import Case
from .cases.models import case_model, describes_model
from .comparison import (
    DTYPE_TOLERANCES,
    Diagnosis,
    TensorComparison,
    Tolerance,
    compare_tensor,
)

__all__ = ["BUGS", "Candidate", "case_contributions", "candidates", "diagnose",
           "diagnose_gradient"]

#: The named bugs a diagnosis can offer, with what each means (the module docstring gives
#: every candidate's formula).
BUGS: dict[str, str] = {
    "use missing": "a use of a shared parameter left out of its gradient's sum",
    "use counted twice": "a use's gradient added twice",
    "transposed use not transposed back": "a use that reads the parameter transposed, added "
                                          "in its own layout",
    "pull missing": "the tying (or anchoring) penalty's gradient left out",
    "pull halved": "half the penalty's gradient (lam (a - b) for the gradient 2 lam (a - b))",
    "pull with the wrong sign": "the penalty's gradient subtracted instead of added",
    "pull counted once per micro-batch": "the penalty added in every micro-batch, not once "
                                         "per step",
    "time step dropped": "one time step's part of an RNN weight's gradient left out",
    "branch dropped": "one Siamese branch's gradient left out",
    "micro-batch dropped": "one micro-batch's gradient left out of the step",
    "micro-batches weighted 1": "the micro-batches' gradients summed instead of weighted by "
                                "n_i / N",
    "micro-batches weighted 1/M": "the micro-batches' gradients averaged (1 / M) instead of "
                                  "weighted by n_i / N",
    "micro-batch weighted 1": "one micro-batch's gradient weighted 1 instead of n_i / N",
    "occurrences assigned, not accumulated": "an embedding row named several times given one "
                                             "occurrence's gradient instead of their sum",
}

Params = dict[str, np.ndarray]


class Candidate(NamedTuple):
    """One named candidate for a failing gradient: the reference changed in one way.

    Attributes
    ----------
    bug : str
        A key of :data:`BUGS`.
    equals : str
        What the gradient equals under this bug: ``"the use enc.weight alone"``.
    summary : str
        The bug in words: ``"the use dec.weight^T is missing"``.
    terms : tuple of str
        The contributions concerned (``("dec.weight^T",)``, ``("pull",)``, ``("mb1",)``).
    gradient : ndarray
        The candidate, with the parameter's shape.
    """

    bug: str
    equals: str
    summary: str
    terms: tuple[str, ...]
    gradient: np.ndarray


# --- the contributions of a case -----------------------------------------------------------

def case_contributions(case: Case) -> dict[str, Contributions]:
    """The contributions of every parameter of ``case`` (a model, a tied pair, an anchored
    model, a Siamese model, micro-batches of any of them), at its point and on its data.

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        A catalogue, drawn or model-built case: its ``config`` describes the model
        (``"model"``, ``"pair"``, ``"siamese"``, ``"anchored"``, or ``"base"`` with
        ``"micro_batches"``).

    Returns
    -------
    dict of str to refimpl.study.Contributions
        Keyed like ``case.params``.

    Raises
    ------
    ValueError, TypeError, KeyError
        For a configuration that describes none of those models.
    """
    model, batch, splits, splits_b = case_model(case)
    if splits is not None:
        return microbatch_contributions(model, case.params, batch, splits, splits_b=splits_b)
    if isinstance(model, TiedPair):
        return pair_contributions(model, *model.split(case.params), *batch)
    if isinstance(model, Siamese):
        extra = {"y": batch[-1]} if model.loss_spec.needs_target else {}
        return siamese_contributions(model, case.params,
                                     *batch[:model.loss_spec.branches], **extra)
    if isinstance(model, AnchoredModel):
        return anchored_contributions(model, case.params, *batch)
    return model_contributions(model, case.params, *batch)


def _micro_batch_sizes(config: Mapping[str, Any]) -> dict[str, list[int]] | None:
    """The micro-batch sizes of each model of a micro-batch case (``Term.model`` keys), or
    None for another case."""
    if "micro_batches" not in config:
        return None
    sizes = [len(item) if isinstance(item, Sequence) else int(item)
             for item in config["micro_batches"]]
    sizes_b = config.get("micro_batches_b")
    sizes_b = sizes if sizes_b is None else [len(item) if isinstance(item, Sequence)
                                             else int(item) for item in sizes_b]
    return {"model": sizes, "model_a": sizes, "model_b": sizes_b}


# --- the candidates ------------------------------------------------------------------------

def _use_label(term: Term) -> str:
    """A use's name: its slot, ``"A:"`` / ``"B:"`` in a pair, ``^T`` when read transposed."""
    prefix = {"model_a": "A:", "model_b": "B:"}.get(term.model, "")
    return prefix + str(term.slot) + ("^T" if term.transposed else "")


def _grouped(terms: Sequence[Term], key: Callable[[Term], Any]) -> dict[Any, list[Term]]:
    """The terms grouped by ``key``, groups and terms in their order."""
    groups: dict[Any, list[Term]] = {}
    for term in terms:
        groups.setdefault(key(term), []).append(term)
    return groups


def _total(terms: Sequence[Term], shape: tuple[int, ...]) -> np.ndarray:
    total = np.zeros(shape)
    for term in terms:
        total = total + term.gradient
    return total


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names)


#: One candidate before the reference is added: (bug, equals, summary, terms, change of g).
_Change = tuple[str, str, str, tuple[str, ...], np.ndarray]


def _without(removed: Sequence[str], kept: Sequence[str]) -> str:
    """What the gradient equals when the contributions ``removed`` are left out: the one
    contribution that remains "alone", or the sum without the removed ones."""
    if len(kept) == 1:
        return f"{kept[0]} alone"
    return f"the sum of its contributions without {_listed(removed)}"


def _use_changes(found: Contributions, task: Sequence[Term], pulls: Sequence[Term]
                 ) -> Iterator[_Change]:
    """Uses missing, counted twice, transposed uses not transposed back."""
    uses = {label: _total(terms, found.gradient.shape)
            for label, terms in _grouped(task, _use_label).items()}
    pull_names = ["the pull"] if pulls else []
    labels = list(uses)
    if len(labels) >= 2:
        for label, use in uses.items():
            others = [f"the use {other}" for other in labels if other != label]
            yield ("use missing", _without([f"the use {label}"], others + pull_names),
                   f"the use {label} is missing", (label,), -use)
            yield ("use counted twice", f"the sum of its contributions plus {label} once more",
                   f"the use {label} is counted twice", (label,), use)
    if len(labels) >= 3:
        for label in labels:
            others = [other for other in labels if other != label]
            yield ("use missing",
                   _without([f"the uses {_listed(others)}"], [f"the use {label}"] + pull_names),
                   f"the uses {_listed(others)} are missing", tuple(others),
                   -sum(uses[other] for other in others))
    for label, use in uses.items():
        if label.endswith("^T") and use.ndim >= 2 and use.shape[-1] == use.shape[-2]:
            yield ("transposed use not transposed back",
                   f"the sum of its contributions with {label} in its slot's layout",
                   f"the transposed use {label} is not transposed back", (label,),
                   np.swapaxes(use, -1, -2) - use)


def _pull_changes(found: Contributions, pulls: Sequence[Term], micro_batches: int
                  ) -> Iterator[_Change]:
    """The pull missing, halved, with the wrong sign, counted once per micro-batch."""
    if not pulls:
        return
    pull = _total(pulls, found.gradient.shape)
    label = pulls[0].label                       # "pull (l2 penalty)"
    yield ("pull missing", "its task terms alone", f"the {label} is missing", ("pull",), -pull)
    yield ("pull halved", "its task terms plus half the pull", f"the {label} is halved",
           ("pull",), -0.5 * pull)
    yield ("pull with the wrong sign", "its task terms minus the pull",
           f"the {label} has the wrong sign", ("pull",), -2.0 * pull)
    if micro_batches >= 2:
        yield ("pull counted once per micro-batch",
               f"its task terms plus {micro_batches} pulls",
               f"the {label} is added once per micro-batch ({micro_batches} times) instead of "
               f"once per step", ("pull",), (micro_batches - 1) * pull)


def _branch_changes(found: Contributions, task: Sequence[Term]) -> Iterator[_Change]:
    """A Siamese branch dropped (or, with three or more, every other one)."""
    branches = {branch: _total(terms, found.gradient.shape) for branch, terms in
                _grouped([t for t in task if t.branch is not None],
                         lambda term: term.branch).items()}
    if len(branches) < 2:
        return
    names = list(branches)
    for name, part in branches.items():
        others = [other for other in names if other != name]
        kept = (f"the branch {others[0]!r} alone" if len(others) == 1 else
                f"the sum over the branches {_listed([repr(o) for o in others])}")
        yield ("branch dropped", kept, f"the branch {name!r} is dropped", (name,), -part)
    if len(names) >= 3:
        for name in names:
            others = [other for other in names if other != name]
            yield ("branch dropped", f"the branch {name!r} alone",
                   f"the branches {_listed([repr(o) for o in others])} are dropped",
                   tuple(others), -sum(branches[other] for other in others))


def _share(term: Term, sizes: Mapping[str, list[int]]) -> float:
    """``n_i / N`` of the micro-batch a term comes from, in its own model's batch."""
    own = sizes[term.model]
    return own[term.micro_batch] / sum(own)


def _micro_batch_changes(found: Contributions, task: Sequence[Term],
                         sizes: Mapping[str, list[int]] | None) -> Iterator[_Change]:
    """A micro-batch dropped or weighted 1; every micro-batch weighted 1 or 1/M."""
    groups = _grouped([t for t in task if t.micro_batch is not None],
                      lambda term: term.micro_batch)
    if len(groups) < 2:
        return
    shape = found.gradient.shape
    count = len(groups)
    weighted = {index: _total(terms, shape) for index, terms in groups.items()}

    def shares(index: int) -> str:
        """``"3/7"``, or ``"A: 2/5, B: 6/7"`` for a tied pair's two models."""
        if sizes is None:
            return ""
        sides = {term.model: f"{sizes[term.model][index]}/{sum(sizes[term.model])}"
                 for term in groups[index]}
        if len(sides) == 1:
            return next(iter(sides.values()))
        return ", ".join(f"{'A' if model == 'model_a' else 'B'}: {text}"
                         for model, text in sides.items())

    for index, part in weighted.items():
        named = f"micro-batch {index}" + (f" ({shares(index)})" if sizes else "")
        kept = _listed([str(other) for other in groups if other != index])
        yield ("micro-batch dropped", f"the accumulated micro-batches {kept} alone",
               f"{named} is dropped", (f"mb{index}",), -part)
    if sizes is None:
        return
    # every term divided by its share: the micro-batch's own mean gradient
    unweighted = {index: sum((term.gradient / _share(term, sizes) for term in terms),
                             np.zeros(shape)) for index, terms in groups.items()}
    listed = "; ".join(shares(index) for index in groups)
    labels = tuple(f"mb{index}" for index in groups)
    yield ("micro-batches weighted 1", "the micro-batches' gradients summed with weight 1 each",
           f"every micro-batch is weighted 1 instead of its share n_i/N ({listed})", labels,
           sum(unweighted[index] - weighted[index] for index in groups))
    yield ("micro-batches weighted 1/M", f"the micro-batches' gradients weighted 1/{count} each",
           f"every micro-batch is weighted 1/M = 1/{count} instead of its share n_i/N "
           f"({listed})", labels,
           sum(unweighted[index] / count - weighted[index] for index in groups))
    for index in groups:
        yield ("micro-batch weighted 1",
               f"the accumulated micro-batches with micro-batch {index} weighted 1",
               f"micro-batch {index} is weighted 1 instead of its share {shares(index)}",
               (f"mb{index}",), unweighted[index] - weighted[index])


def _step_changes(found: Contributions, task: Sequence[Term]) -> Iterator[_Change]:
    """One time step of an RNN use dropped."""
    stepped = [t for t in task if t.parts is not None and t.parts.axes == ("T",)]
    for label, terms in _grouped(stepped, _use_label).items():
        steps = sum(term.parts.gradients for term in terms)          # (T, *shape)
        for t in range(steps.shape[0]):
            yield ("time step dropped",
                   f"the sum over the time steps of {label} without step {t} "
                   f"(T = {steps.shape[0]})", f"the contribution of time step {t} is dropped",
                   (f"{label}@t{t}",), -steps[t])


def _assigned(term: Term, shape: tuple[int, ...], which: str) -> tuple[np.ndarray, list[int]]:
    """An embedding term with every row given one occurrence's gradient (``which``: "first"
    or "last" in the index array's C order), and the rows named more than once."""
    rows = term.parts.rows.reshape(-1)                                    # (N*T,)
    occurrences = term.parts.gradients.reshape(rows.size, -1)             # (N*T, D)
    order = np.arange(rows.size) if which == "first" else np.arange(rows.size)[::-1]
    unique, position = np.unique(rows[order], return_index=True)
    chosen = order[position]
    assigned = np.zeros(shape)
    assigned[unique] = occurrences[chosen].reshape(len(unique), *shape[1:])
    counts = np.bincount(rows, minlength=shape[0])
    return assigned, [int(row) for row in np.flatnonzero(counts > 1)]


def _occurrence_changes(found: Contributions, task: Sequence[Term]) -> Iterator[_Change]:
    """An embedding's repeated rows assigned one occurrence's gradient, not accumulated."""
    indexed = [t for t in task if t.parts is not None and t.parts.rows is not None]
    shape = found.gradient.shape
    for label, terms in _grouped(indexed, _use_label).items():
        for which in ("last", "first"):
            change, repeated = np.zeros(shape), set()
            for term in terms:      # one backward pass each (a branch, a micro-batch)
                assigned, rows = _assigned(term, shape, which)
                change = change + assigned - term.gradient
                repeated.update(rows)
            if repeated:
                yield ("occurrences assigned, not accumulated",
                       f"{label} with each repeated row (rows "
                       f"{_listed([str(r) for r in sorted(repeated)])}) given its {which} "
                       f"occurrence's gradient alone",
                       f"the occurrences of {label} are assigned, not accumulated (np.add.at)",
                       (label,), change)


def candidates(found: Contributions, reference: Any = None,
               micro_batches: Mapping[str, list[int]] | None = None) -> list[Candidate]:
    """Every named candidate of one parameter's gradient (the table of the module docstring).

    Parameters
    ----------
    found : refimpl.study.Contributions
        The parameter's gradient and its labelled terms.
    reference : array_like, optional
        The reference gradient ``g`` the candidates change (default ``found.gradient``).
    micro_batches : dict of str to list of int, optional
        The micro-batch sizes of each model (keys ``Term.model``: ``"model"``,
        ``"model_a"``, ``"model_b"``) for the weighting candidates; without it, of the
        micro-batch candidates only "micro-batch dropped" is built.

    Returns
    -------
    list of Candidate
        In the order of the table; empty for a parameter used once with no pull.
    """
    if not isinstance(found, Contributions):
        raise TypeError(f"found: expected refimpl.study.Contributions, got "
                        f"{type(found).__name__}")
    base = np.asarray(found.gradient if reference is None else reference, dtype=np.float64)
    if base.shape != found.gradient.shape:
        raise ValueError(f"reference: expected shape {found.gradient.shape}, got {base.shape}")
    task = [term for term in found.terms if term.role == "task"]
    pulls = [term for term in found.terms if term.role == "pull"]
    count = len({term.micro_batch for term in task if term.micro_batch is not None})
    changes = [*_use_changes(found, task, pulls), *_pull_changes(found, pulls, count),
               *_step_changes(found, task), *_branch_changes(found, task),
               *_micro_batch_changes(found, task, micro_batches),
               *_occurrence_changes(found, task)]
    return [Candidate(bug, equals, summary, terms, base + change)
            for bug, equals, summary, terms, change in changes]


# --- judging them by the comparison rule ---------------------------------------------------

def diagnose_gradient(name: str, actual: Any, reference: Any, found: Contributions,
                      tolerance: Tolerance, floor: float = 0.0,
                      micro_batches: Mapping[str, list[int]] | None = None
                      ) -> Diagnosis | None:
    """The diagnosis of one failing gradient, or None when no named candidate fits.

    Parameters
    ----------
    name : str
        The gradient's name (``"enc.weight"``).
    actual : array_like
        The implementation's gradient, of the reference's shape.
    reference : array_like
        The reference gradient it failed against.
    found : refimpl.study.Contributions
        The parameter's contributions at the same point.
    tolerance : refimpl.gradcheck.Tolerance
        The tolerance of the comparison (its ``rtol``, ``atol``).
    floor : float
        The tensor's resolution floor at the point.
    micro_batches : dict, optional
        As for :func:`candidates`.

    Returns
    -------
    Diagnosis or None
        Named when exactly one candidate fits and is told apart from the others (rules of the
        module docstring); listing the candidates that coincide otherwise; None when none fits
        or the contributions do not sum to ``reference``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != reference.shape or not _same(name, reference, found.gradient):
        return None

    def passes(expected: np.ndarray, value: np.ndarray) -> bool:
        return compare_tensor("gradient", name, expected, value, tolerance,
                              floor=floor).verdict == "pass"

    def told_apart(first: np.ndarray, second: np.ndarray) -> bool:
        return all(compare_tensor("gradient", name, a, b, tolerance, floor=floor).verdict
                   == "fail" for a, b in ((first, second), (second, first)))

    considered = [candidate for candidate in candidates(found, reference, micro_batches)
                  if told_apart(reference, candidate.gradient)]
    fits = [candidate for candidate in considered if passes(candidate.gradient, actual)]
    if not fits:
        return None
    close = [candidate for candidate in considered
             if not any(candidate is fit for fit in fits)
             and any(not told_apart(candidate.gradient, fit.gradient) for fit in fits)]
    matched = fits + close
    terms = tuple(dict.fromkeys(term for candidate in matched for term in candidate.terms))
    bugs = {candidate.bug for candidate in matched}
    if len(matched) == 1:
        only = matched[0]
        return Diagnosis(name, only.bug, f"gradient {name!r} equals {only.equals}; "
                                         f"{only.summary}", terms, (only.summary,))
    summaries = tuple(candidate.summary for candidate in matched)
    return Diagnosis(
        name, bugs.pop() if len(bugs) == 1 else None,
        f"gradient {name!r} matches {len(matched)} candidates that cannot be told apart at "
        f"this point, so no single bug is named: {'; or '.join(summaries)}", terms, summaries)


def _same(name: str, reference: np.ndarray, gradient: np.ndarray) -> bool:
    """Whether the contributions' gradient is the reference, by the float64 rule (without a
    floor: two float64 computations of one formula)."""
    return compare_tensor("gradient", name, reference, gradient,
                          DTYPE_TOLERANCES["float64"]).verdict == "pass"


def diagnose(case: Case, rows: Sequence[TensorComparison], grads: Mapping[str, Any],
             expected_grads: Mapping[str, Any], tolerance: Tolerance
             ) -> tuple[Diagnosis, ...]:
    """The diagnoses of a comparison's failing gradients (:func:`diagnose_gradient` each).

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        The case compared: its configuration, point and data give the contributions.
    rows : sequence of TensorComparison
        The comparison's rows; those of failing gradients compared value by value (not a
        missing tensor, a wrong shape or dtype, a NaN) are diagnosed, with their floors.
    grads : mapping
        The implementation's gradients.
    expected_grads : mapping
        The reference gradients the rows were judged against.
    tolerance : refimpl.gradcheck.Tolerance
        The comparison's tolerance.

    Returns
    -------
    tuple of Diagnosis
        One per failing gradient a candidate explains, in the order of ``rows``; empty when
        nothing fails, nothing fits, or the case's configuration names no refimpl model (a
        hand-made case).

    Raises
    ------
    ValueError, TypeError, KeyError
        For a configuration that names a model but does not describe one (the resolution
        floors of such a case cannot be derived either).
    """
    failing = [row for row in rows
               if row.role == "gradient" and row.verdict == "fail" and not row.problem]
    if not failing or not describes_model(case.config):
        return ()
    found = case_contributions(case)
    sizes = _micro_batch_sizes(case.config)
    diagnoses = []
    for row in failing:
        if row.name not in found:
            continue
        diagnosis = diagnose_gradient(row.name, grads[row.name], expected_grads[row.name],
                                      found[row.name], tolerance, row.floor, sizes)
        if diagnosis is not None:
            diagnoses.append(diagnosis)
    return tuple(diagnoses)
