"""Conformance runs: a builder of implementations against every case, in every dtype.

The builder protocol
--------------------
A *builder* is any callable ``build(config, dtype) -> impl``:

- ``config``: a case's ``Case.config`` (a fresh deep copy, JSON-able): ``config["model"]`` (a
  :meth:`refimpl.nn.Sequential.config`), ``config["pair"]`` (a :meth:`refimpl.TiedPair.config`)
  or ``config["anchored"]``, the input shape, the seed, and for a convention probe
  ``config["convention"] = {"name": ..., "refimpl_rule": ...}``;
- ``dtype``: "float64", "float32" or "tf32", the precision ``impl`` computes in;
- ``impl``: an implementation of the oracle protocol, ``impl(params, inputs) -> (loss, grads)``
  or ``(loss, grads, outputs)`` (:mod:`refimpl.testing.oracle`).

A builder raises :class:`refimpl.testing.NotExpressible` (in ``build`` or in ``impl``) for what
its framework cannot express (grouped convolutions, a loss it lacks).

Outcomes (one per case and dtype)
---------------------------------
- **pass**: every tensor matched (:func:`refimpl.testing.compare_with_oracle` says "pass");
- **fail**: a tensor did not match, the return value was malformed, or ``build`` / ``impl``
  raised anything but ``NotExpressible`` (the exception's text is the detail; the run goes on);
- **inconclusive**: nothing failed, but some tensor lies below what the dtype can resolve at
  the case's point: never a pass;
- **not expressible**: ``NotExpressible`` was raised, with its reason;
- **convention differs**: a convention probe (a case whose config has a ``"convention"``)
  failed *and* ``diagnose(case, loss, grads)`` recognised a documented alternative convention:
  the detail names it and what the implementation appears to do.

A run is **ok** when no row failed and at least one passed (a builder that expresses nothing,
or whose every case is inconclusive, has shown nothing). "convention differs" does not fail a
run by default: the implementation follows another documented rule, which the report names;
with ``strict_conventions=True`` it does.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._table import format_table
from .._validate import check_seed
from .._version import __version__
from .cases import Case, all_cases, probes
from .cases.drawn import case_named, drawn_cases
from .comparison import ComparisonReport, NotExpressible, resolve_tolerance
from .oracle import compare_with_oracle

__all__ = ["OUTCOMES", "ConformanceRow", "ConformanceReport", "conform", "conform_case",
           "load_builder", "builder_name"]

#: The outcomes of one (case, dtype), in the order the summary counts them.
OUTCOMES = ("pass", "fail", "inconclusive", "not expressible", "convention differs")

Builder = Callable[[dict[str, Any], str], Any]
Diagnose = Callable[[Case, Any, Any], "str | None"]


@dataclass(frozen=True)
class ConformanceRow:
    """One case in one dtype.

    Attributes
    ----------
    case, kind, dtype : str
        The case's name and kind, and the dtype the implementation computed in.
    outcome : str
        One of :data:`OUTCOMES`.
    worst : float
        The worst compared tensor's ``max abs error / limit`` (> 1 fails it); ``inf`` for a
        structural problem (missing, misshapen, non-finite), ``nan`` when nothing was
        compared (an exception, not expressible).
    tensor : str
        The worst tensor's label (``"gradient 'fc1.weight'"``), or "".
    seconds : float
        Wall time of ``build``, the implementation and the comparison.
    detail : str
        Why: the failing tensor, the exception, the reason, the diagnosed convention.
    """

    case: str
    kind: str
    dtype: str
    outcome: str
    worst: float
    tensor: str
    seconds: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-able values (a non-finite ``worst`` as the string "inf" / "nan")."""
        worst = self.worst if math.isfinite(self.worst) else str(self.worst)
        return {"case": self.case, "kind": self.kind, "dtype": self.dtype,
                "outcome": self.outcome, "worst": worst, "tensor": self.tensor,
                "seconds": self.seconds, "detail": self.detail}


def builder_name(build: Any) -> str:
    """``module:qualified name`` of a builder (the name alone without a module; its
    ``repr`` without a name)."""
    module, name = getattr(build, "__module__", None), getattr(build, "__qualname__", None)
    if not name:
        return repr(build)
    return f"{module}:{name}" if module else name


@dataclass(frozen=True)
class ConformanceReport:
    """The rows of a conformance run and what they were run with.

    Attributes
    ----------
    rows : tuple of ConformanceRow
        One per (case, dtype), cases in order, each case's dtypes together.
    builder : str
        The builder (``module:function``).
    dtypes : tuple of str
    drawn : int
        How many drawn cases ran, of seeds ``seed`` to ``seed + drawn - 1``.
    seed : int
    strict_conventions : bool
        Whether "convention differs" fails the run.
    """

    rows: tuple[ConformanceRow, ...]
    builder: str
    dtypes: tuple[str, ...]
    drawn: int
    seed: int
    strict_conventions: bool = False

    def counts(self) -> dict[str, int]:
        """How many rows have each outcome (every outcome of :data:`OUTCOMES`, zeros too)."""
        return {outcome: sum(row.outcome == outcome for row in self.rows)
                for outcome in OUTCOMES}

    @property
    def failed(self) -> tuple[ConformanceRow, ...]:
        """The rows that fail the run: "fail", and "convention differs" when strict."""
        failing = ("fail", "convention differs") if self.strict_conventions else ("fail",)
        return tuple(row for row in self.rows if row.outcome in failing)

    @property
    def ok(self) -> bool:
        """No row failed, and at least one passed."""
        return not self.failed and any(row.outcome == "pass" for row in self.rows)

    def header(self) -> str:
        """What was run: the builder, dtypes, drawn count and seed, and how to rerun one."""
        drawn = (f"{self.drawn} drawn case(s), seeds {self.seed}..{self.seed + self.drawn - 1}"
                 f" (rerun one with --case drawn-<kind>-<seed>)" if self.drawn
                 else f"no drawn cases (seed {self.seed})")
        strict = "; convention differences fail the run" if self.strict_conventions else ""
        return (f"refimpl conform {self.builder}: dtypes {', '.join(self.dtypes)}; "
                f"{drawn}{strict}")

    def summary(self) -> str:
        """One line: the counts per outcome and the verdict."""
        counts = ", ".join(f"{count} {outcome}" for outcome, count in self.counts().items())
        verdict = "ok" if self.ok else ("FAILED" if self.failed else "NOT OK (nothing passed)")
        return f"{len(self.rows)} rows: {counts}: {verdict}"

    def table(self, detail_width: int = 100) -> str:
        """The header, one line per row (details cut to ``detail_width`` characters), and the
        summary, as plain text."""
        def cut(text: str) -> str:
            line = " ".join(text.split())
            return line if len(line) <= detail_width else line[:detail_width - 3] + "..."

        body = format_table(
            ("case", "dtype", "outcome", "worst/limit", "tensor", "time", "detail"),
            [(row.case, row.dtype, row.outcome.upper() if row.outcome == "fail" else
              row.outcome, f"{row.worst:.2e}", row.tensor, f"{row.seconds:.2f}s",
              cut(row.detail)) for row in self.rows])
        return "\n".join((self.header(), body, self.summary()))

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-able values."""
        return {"refimpl": __version__, "numpy": np.__version__, "builder": self.builder,
                "dtypes": list(self.dtypes), "drawn": self.drawn, "seed": self.seed,
                "strict_conventions": self.strict_conventions, "ok": self.ok,
                "counts": self.counts(), "summary": self.summary(),
                "rows": [row.to_dict() for row in self.rows]}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (no NaN or Infinity tokens)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def __str__(self) -> str:
        return self.table()


def load_builder(spec: str) -> Builder:
    """The callable named by ``"package.module:function"`` (``function`` may be dotted).

    Raises
    ------
    ValueError
        For a spec without exactly one ``:``, a module that does not import (with the
        import error), a missing attribute, or one that is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"builder: expected MODULE:FUNCTION such as "
                         f"'refimpl.adapters.torch:build', got {spec!r}")
    module_name, attribute = spec.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure of the user's module is reported
        raise ValueError(f"builder {spec!r}: module {module_name!r} does not import: "
                         f"{type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"builder {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"builder {spec!r}: {attribute!r} is not callable (it is a "
                         f"{type(target).__name__})")
    return target


class _Recorder:
    """The implementation, recording what it returned (for ``diagnose``) and whether it
    raised, so that the implementation runs once."""

    def __init__(self, impl: Any) -> None:
        self.impl, self.result, self.raised = impl, None, False

    def __call__(self, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> Any:
        try:
            self.result = self.impl(params, inputs)
        except BaseException:
            self.raised = True
            raise
        return self.result


def _worst(report: ComparisonReport) -> tuple[float, str]:
    """The worst tensor's ``error / limit`` (inf for a structural problem) and its label."""
    if report.problems and not report.rows:
        return math.inf, ""
    worst, label = -1.0, ""
    for row in report.rows:
        if row.problem or not math.isfinite(row.max_abs_error):
            ratio = math.inf
        elif row.limit > 0:
            ratio = row.max_abs_error / row.limit
        else:                       # an exactly-zero reference: judged exactly
            ratio = 0.0 if row.max_abs_error == 0 else math.inf
        if ratio > worst:
            worst, label = ratio, row.label
    return (worst, label) if worst >= 0 else (math.nan, "")


def _detail(report: ComparisonReport, worst_tensor: str) -> str:
    """The first reason of a non-passing report (a problem, else the worst tensor's), or the
    number of tensors compared."""
    if report.verdict == "pass":
        return f"{len(report.rows)} tensors match"
    if report.verdict == "inconclusive":
        return "unresolved in this dtype: " + ", ".join(row.label
                                                         for row in report.inconclusive)
    # the same tensor as the row's worst/limit column first (stable sort keeps the rest)
    failures = sorted(report.failures, key=lambda row: row.label != worst_tensor)
    reasons = [*report.problems, *(row.describe() for row in failures)]
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return reasons[0] + more


def _diagnosed(case: Case, result: Any, diagnose: Diagnose) -> str | None:
    """``diagnose``'s sentence for a failed probe, None when it recognises nothing or the
    implementation's return value is malformed (then the row stays a plain fail)."""
    if "convention" not in case.config or not isinstance(result, tuple) or len(result) < 2 \
            or not isinstance(result[1], Mapping):
        return None
    return diagnose(case, result[0], result[1])


def conform_case(build: Builder, case: Case, dtype: str = "float64", *,
                 diagnose: Diagnose | None = None) -> ConformanceRow:
    """One case in one dtype: build the implementation, run it once, judge it.

    Parameters
    ----------
    build : callable
        ``build(config, dtype) -> impl`` (the module docstring's protocol).
    case : refimpl.testing.cases.Case
        A catalogue, probe or drawn case.
    dtype : str
        "float64", "float32" or "tf32".
    diagnose : callable, optional
        ``diagnose(case, loss, grads) -> str | None`` for failed convention probes
        (default: :func:`refimpl.testing.cases.probes.diagnose`, looked up when called).

    Returns
    -------
    ConformanceRow
        Its outcome is one of :data:`OUTCOMES`; an exception of ``build`` or ``impl`` is a
        "fail" row naming it, never raised.

    Raises
    ------
    ValueError
        For an unknown dtype.
    TypeError
        For a ``case`` that is not a :class:`~refimpl.testing.cases.Case`.
    """
    dtype, _ = resolve_tolerance(dtype)
    if not isinstance(case, Case):
        raise TypeError(f"case: expected a refimpl.testing.cases.Case, got "
                        f"{type(case).__name__}")
    start = time.perf_counter()

    def row(outcome: str, detail: str, worst: float = math.nan, tensor: str = "") -> Any:
        return ConformanceRow(case.name, case.kind, dtype, outcome, worst, tensor,
                              time.perf_counter() - start, detail)

    recorder = None
    try:
        impl = build(copy.deepcopy(case.config), dtype)
        if not callable(impl):
            return row("fail", f"build returned {type(impl).__name__}, not a callable "
                               f"impl(params, inputs)")
        recorder = _Recorder(impl)
        report = compare_with_oracle(recorder, case, dtype=dtype)
    except NotExpressible as reason:
        return row("not expressible", str(reason) or "(no reason given)")
    except Exception as error:  # noqa: BLE001 - a foreign builder's failure is a row
        if recorder is not None and not recorder.raised:
            raise                   # refimpl's own failure: a bug to see, not a row
        where = "impl" if recorder is not None else "build"
        return row("fail", f"{where} raised {type(error).__name__}: {error}")
    worst, tensor = _worst(report)
    if report.verdict == "fail":
        convention = _diagnosed(case, recorder.result, diagnose or probes.diagnose)
        if convention:
            return row("convention differs", convention, worst, tensor)
    return row(report.verdict, _detail(report, tensor), worst, tensor)


def _selected(cases: Iterable[Case | str] | None) -> list[Case]:
    """The cases to run: every built-in case (None), or these cases and case names."""
    if cases is None:
        return all_cases()
    if isinstance(cases, (str, Case)):
        cases = [cases]
    return [case if isinstance(case, Case) else case_named(case) for case in cases]


def conform(build: Builder, *, dtypes: Iterable[str] = ("float64", "float32"),
            cases: Iterable[Case | str] | None = None, drawn: int = 0, seed: int = 0,
            strict_conventions: bool = False, diagnose: Diagnose | None = None
            ) -> ConformanceReport:
    """Run a builder's implementations over the catalogue and drawn cases, per dtype.

    Parameters
    ----------
    build : callable
        ``build(config, dtype) -> impl`` (the module docstring's protocol).
    dtypes : iterable of str
        Any of "float64", "float32", "tf32".
    cases : iterable of Case or str, optional
        The cases (or their names: built-in, or ``drawn-<kind>-<seed>``); default every
        built-in case, convention probes included.
    drawn : int
        How many drawn cases to add (:func:`refimpl.testing.cases.drawn.drawn_case`), of
        seeds ``seed`` to ``seed + drawn - 1``.
    seed : int
        The first drawn case's seed.
    strict_conventions : bool
        Count "convention differs" as a failure of the run.
    diagnose : callable, optional
        ``diagnose(case, loss, grads) -> str | None`` for failed probes (default:
        :func:`refimpl.testing.cases.probes.diagnose`).

    Returns
    -------
    ConformanceReport
        One row per (case, dtype); ``report.ok`` when none failed and some passed.

    Raises
    ------
    ValueError, TypeError
        For a bad argument (an unknown dtype or case name, a negative count), before any
        case runs.

    Examples
    --------
    >>> from refimpl.testing import conform
    >>> def build(config, dtype):     # refimpl itself stands in for your framework
    ...     from refimpl.testing.cases import get_case
    ...     case = get_case("mlp-tanh-ce")
    ...     return lambda params, inputs: case.loss_and_grads(params)
    >>> conform(build, cases=["mlp-tanh-ce"], dtypes=["float64"]).ok
    True
    """
    if not callable(build):
        raise TypeError(f"build: expected a callable build(config, dtype) -> impl, got "
                        f"{build!r}")
    if isinstance(dtypes, str):
        dtypes = [dtypes]
    dtypes = tuple(dict.fromkeys(resolve_tolerance(dtype)[0] for dtype in dtypes))
    if not dtypes:
        raise ValueError("dtypes: expected at least one of float64, float32, tf32")
    if not isinstance(strict_conventions, bool):
        raise TypeError(f"strict_conventions: expected True or False, got "
                        f"{strict_conventions!r}")
    seed, drawn = check_seed(seed, "seed"), check_seed(drawn, "drawn")
    selected = _selected(cases) + drawn_cases(drawn, seed)
    rows = tuple(conform_case(build, case, dtype, diagnose=diagnose)
                 for case in selected for dtype in dtypes)
    return ConformanceReport(rows, builder_name(build), dtypes, drawn, seed, strict_conventions)
