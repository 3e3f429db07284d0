"""Conformance runs: a builder of implementations against every case, in every dtype.

The builder protocol
--------------------
A *builder* is any callable ``build(config, dtype) -> impl``:

- ``config``: a case's ``Case.config`` (a fresh deep copy, JSON-able): ``config["model"]`` (a
  :meth:`refimpl.nn.Sequential.config`), ``config["pair"]`` (a :meth:`refimpl.TiedPair.config`),
  ``config["anchored"]``, ``config["siamese"]`` or, for a micro-batch case, ``config["base"]``
  (the single-batch case's config) with ``config["micro_batches"]``; the input shape, the
  seed, and for a convention probe ``config["convention"] = {"name", "refimpl_rule",
  "isolates", "on_kink", "resolved_in"}``;
- ``dtype``: "float64", "float32" or "tf32", the precision ``impl`` computes in;
- ``impl``: an implementation of the oracle protocol, ``impl(params, inputs) -> (loss, grads)``
  or ``(loss, grads, outputs)`` (:mod:`refimpl.testing.oracle`).

A builder raises :class:`refimpl.testing.NotExpressible` (in ``build`` or in ``impl``) for what
its framework cannot express (grouped convolutions, a loss it lacks).

The step capability (optional)
------------------------------
For a step case (kind "steps", :mod:`refimpl.testing.cases.steps`: ``K`` optimizer steps of
a base case), ``config`` is the base case's configuration plus ``config["steps"] =
{"optimizer": ..., "clip": ... | None, "count": K, "case_kind": ...}`` (the optimizer as
:meth:`refimpl.optim.Optimizer.config`, the clipping as :meth:`refimpl.ClipGradNorm.config`),
and the object ``build`` returns has a method::

    impl.train_steps(params, batches) -> {"params": [K dicts], "losses": [K numbers],
                                          "grad_norms": [K numbers]}

``params`` the starting point and ``batches`` ``K`` input dicts keyed like the base case's
inputs (micro-batches ``<name>.<i>`` included), both in the dtype under test; it returns after
every step the parameters, the loss at the start of the step and the total gradient norm
before clipping (:mod:`refimpl.testing.trajectory`, which judges them step by step). A
builder whose ``impl`` has no ``train_steps`` is "not expressible" on every step case, never a
failure; a step case is judged by this capability alone.

The optional ``hvp`` capability (second order)
----------------------------------------------
``impl`` may also have a method (or callable attribute) ``hvp``::

    impl.hvp(params, inputs, vector) -> {name: array}

the Hessian of the loss ``impl`` returns (the step's loss for a micro-batch case, a penalty
included) times ``vector``, keyed like ``params``; ``params``, ``inputs`` and ``vector`` are
fresh copies in the dtype under test (:mod:`refimpl.testing.second_order`). With ``hvp=True``
(``refimpl conform --hvp``) every case with an HVP expectation (every catalogue, probe and drawn
case) gets a second row per dtype, ``check == "hvp"``: the case's seeded direction ``v`` and
refimpl's ``H v`` (:func:`refimpl.testing.second_order.hvp_expectation`) against
``impl.hvp(params, inputs, v)``, by the ordinary comparison rule with the products' own
resolution floors. An HVP row builds its own ``impl`` (``build`` is called once per row) and
runs ``impl.hvp`` once. An ``impl`` without ``hvp`` makes those rows **not expressible**; a
default run (``hvp=False``) has gradient rows only, as before the capability existed.

The module of a builder may name the framework it runs on: module attributes ``FRAMEWORK``
(e.g. ``"torch"``) and, optionally, ``FRAMEWORK_VERSION`` (default: the installed
distribution's version, or the imported module's ``__version__``). The report records them
(:func:`framework_of`).

Outcomes (one per case, dtype and check)
----------------------------------------
- **pass**: every tensor matched (:func:`refimpl.testing.compare_with_oracle` says "pass"; for
  a step case every tensor of every step, :func:`refimpl.testing.compare_steps_with_oracle`);
- **fail**: a tensor did not match, the return value was malformed, or ``build`` / ``impl``
  raised anything but ``NotExpressible`` and ``KeyboardInterrupt`` — ``sys.exit()`` and any
  other ``BaseException`` included (the exception, where the builder's code raised it, is the
  detail; the run goes on);
- **inconclusive**: nothing failed, but some tensor lies below what the dtype can resolve at
  the case's point, or the case is a convention probe outside the dtypes that resolve it
  (``config["convention"]["resolved_in"]``): never a pass;
- **not expressible**: ``NotExpressible`` was raised, with its reason;
- **convention differs**: a convention probe whose implementation's *whole* result (loss,
  every gradient, the outputs it returns, their dtypes, the keys) fails against refimpl and
  passes the same comparison, at the same floors, against refimpl's reference with exactly
  one *documented* alternative rule applied (:func:`refimpl.testing.cases.probes.alternatives`):
  the detail names the rule (a step probe: the whole trajectory against refimpl's with one
  optimizer or clipping rule changed, :func:`refimpl.testing.cases.step_probes.step_alternatives`).
  Everything else is a fail, with the probe's best guess
  (:func:`refimpl.testing.cases.probes.diagnose`) in the detail: a bug, a loss of precision,
  a non-finite value, a value outside a documented family, or a documented rule followed by
  the gradients while something else is wrong too. An HVP row of a probe is judged the same
  way: "convention differs" when its products fail against refimpl's ``H v`` and pass against
  the ``H v`` of a documented alternative that is another model (the probe's model with one
  layer or hyper-parameter changed: :func:`refimpl.testing.second_order.alternative_hvp`);
  a rule of the backward pass alone (a tie's share, a subgradient) or a value between two
  rules has no ``H v`` of its own, and outside the dtypes that resolve the probe an HVP row
  that passes is inconclusive, as the gradient row is.

A ``KeyboardInterrupt`` is not a row: it stops the run (it propagates out of
:func:`conform`; ``refimpl conform`` reports where it stopped and exits with status 130).

A run is **ok** when no row failed and at least one passed (a builder that expresses nothing,
or whose every case is inconclusive, has shown nothing). "convention differs" does not fail a
run by default: the implementation follows another documented rule, which the report names;
with ``strict_conventions=True`` it does.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import json
import math
import os
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._table import format_table
from .._validate import check_seed
from .._version import __version__
from .cases import Case, all_cases, probes
from .cases.drawn import case_named, drawn_case, drawn_name, parse_drawn_name
from .cases.step_probes import step_alternatives
from .cases.steps import StepCase
from .comparison import ComparisonReport, NotExpressible, resolve_tolerance
from .oracle import _run_and_compare, compare_with_oracle
from .resolution import HAND_OVER_DTYPE, case_floors
from .second_order import (
    alternative_hvp,
    compare_hvp,
    has_hvp,
    hvp_expectation,
    hvp_floors,
    hvp_function,
)
from .trajectory import (
    TrajectoryReport,
    compare_trajectory,
    reference_trajectory,
    run_steps,
    trajectory_floors,
)

__all__ = ["OUTCOMES", "CHECKS", "ConformanceRow", "ConformanceReport", "conform",
           "conform_case", "load_builder", "builder_name", "framework_of"]

#: The outcomes of one (case, dtype), in the order the summary counts them.
OUTCOMES = ("pass", "fail", "inconclusive", "not expressible", "convention differs")

#: What a row checks: the loss, gradients and outputs ``impl(params, inputs)`` returns, or
#: the Hessian-vector product ``impl.hvp(params, inputs, vector)``.
CHECKS = ("gradient", "hvp")

Builder = Callable[[dict[str, Any], str], Any]
Diagnose = Callable[[Case, Any, Any], "str | None"]
#: ``progress(done, total, label)``: called before each row (label "<case> [<dtype>]") and
#: once at the end (``done == total``, label "").
Progress = Callable[[int, int, str], None]


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
        Why: the failing tensor, the exception and where it was raised, the reason, the
        convention followed.
    check : str
        One of :data:`CHECKS`: "gradient" (``impl(params, inputs)``) or "hvp"
        (``impl.hvp(params, inputs, vector)``).
    """

    case: str
    kind: str
    dtype: str
    outcome: str
    worst: float
    tensor: str
    seconds: float
    detail: str
    check: str = "gradient"

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-able values (a non-finite ``worst`` as the string "inf" / "nan")."""
        worst = self.worst if math.isfinite(self.worst) else str(self.worst)
        return {"case": self.case, "kind": self.kind, "dtype": self.dtype,
                "check": self.check, "outcome": self.outcome, "worst": worst,
                "tensor": self.tensor, "seconds": self.seconds, "detail": self.detail}


def builder_name(build: Any) -> str:
    """``module:qualified name`` of a builder (the name alone without a module; its
    ``repr`` without a name)."""
    module, name = getattr(build, "__module__", None), getattr(build, "__qualname__", None)
    if not name:
        return repr(build)
    return f"{module}:{name}" if module else name


def framework_of(build: Any) -> dict[str, str] | None:
    """The framework a builder runs on, as its module declares it: ``{"name", "version"}``.

    The builder's module sets ``FRAMEWORK = "<name>"`` (a distribution or module name such as
    ``"torch"``) and optionally ``FRAMEWORK_VERSION``; without the latter the version is the
    installed distribution's (:func:`importlib.metadata.version`), else the imported
    module's ``__version__``, else "unknown".

    Returns
    -------
    dict or None
        None when the module declares no ``FRAMEWORK`` (or it is not a non-empty str).
    """
    module = sys.modules.get(getattr(build, "__module__", None) or "")
    name = getattr(module, "FRAMEWORK", None)
    if not isinstance(name, str) or not name:
        return None
    version = getattr(module, "FRAMEWORK_VERSION", None)
    if not isinstance(version, str) or not version:
        try:
            version = importlib.metadata.version(name)
        except (importlib.metadata.PackageNotFoundError, ValueError):
            version = getattr(sys.modules.get(name), "__version__", None)
    return {"name": name, "version": str(version) if version else "unknown"}


@dataclass(frozen=True)
class ConformanceReport:
    """The rows of a conformance run and what they were run with.

    Attributes
    ----------
    rows : tuple of ConformanceRow
        One per (case, dtype, check), cases in order, each case's dtypes together, a dtype's
        HVP row after its gradient row.
    builder : str
        The builder (``module:function``).
    dtypes : tuple of str
    drawn : int
        How many drawn cases ran, of seeds ``seed`` to ``seed + drawn - 1``.
    seed : int
    strict_conventions : bool
        Whether "convention differs" fails the run.
    framework : dict or None
        ``{"name", "version"}`` of the framework the builder's module declares
        (:func:`framework_of`).
    hvp : bool
        Whether the Hessian-vector products were judged too (rows with ``check == "hvp"``).
    """

    rows: tuple[ConformanceRow, ...]
    builder: str
    dtypes: tuple[str, ...]
    drawn: int
    seed: int
    strict_conventions: bool = False
    framework: dict[str, str] | None = None
    hvp: bool = False

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
        """What was run: the builder (and its framework), dtypes, drawn count and seed, and
        how to rerun one."""
        drawn = (f"{self.drawn} drawn case(s), seeds {self.seed}..{self.seed + self.drawn - 1}"
                 f" (rerun one with --case drawn-<kind>-<seed>)" if self.drawn
                 else f"no drawn cases (seed {self.seed})")
        strict = "; convention differences fail the run" if self.strict_conventions else ""
        framework = (f" ({self.framework['name']} {self.framework['version']})"
                     if self.framework else "")
        hvp = "; gradients and Hessian-vector products" if self.hvp else ""
        return (f"refimpl conform {self.builder}{framework}: dtypes {', '.join(self.dtypes)}; "
                f"{drawn}{hvp}{strict}")

    def summary(self) -> str:
        """One line: the counts per outcome and the verdict (with HVP rows, how many rows of
        each check)."""
        counts = ", ".join(f"{count} {outcome}" for outcome, count in self.counts().items())
        verdict = "ok" if self.ok else ("FAILED" if self.failed else "NOT OK (nothing passed)")
        checks = ""
        if self.hvp:
            checks = " (" + ", ".join(f"{sum(row.check == check for row in self.rows)} {check}"
                                      for check in CHECKS) + ")"
        return f"{len(self.rows)} rows{checks}: {counts}: {verdict}"

    def table(self, detail_width: int = 100) -> str:
        """The header, one line per row, and the summary, as plain text.

        The detail of a "fail" or "convention differs" row is shown whole (the failing
        tensor's values, the rule followed); the others are cut to ``detail_width``
        characters.
        """
        def cut(row: ConformanceRow) -> str:
            line = " ".join(row.detail.split())
            if row.outcome in ("fail", "convention differs") or len(line) <= detail_width:
                return line
            return line[:detail_width - 3] + "..."

        # The check column only when a run judged HVPs: a default run's table is unchanged.
        checked = self.hvp or any(row.check != "gradient" for row in self.rows)
        body = format_table(
            ("case", "dtype", *(("check",) if checked else ()), "outcome", "worst/limit",
             "tensor", "time", "detail"),
            [(row.case, row.dtype, *((row.check,) if checked else ()),
              row.outcome.upper() if row.outcome == "fail" else row.outcome,
              f"{row.worst:.2e}", row.tensor, f"{row.seconds:.2f}s", cut(row))
             for row in self.rows])
        return "\n".join((self.header(), body, self.summary()))

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-able values."""
        return {"refimpl": __version__, "numpy": np.__version__,
                "python": ".".join(map(str, sys.version_info[:3])),
                "framework": dict(self.framework) if self.framework else None,
                "builder": self.builder, "dtypes": list(self.dtypes), "drawn": self.drawn,
                "seed": self.seed, "strict_conventions": self.strict_conventions,
                "hvp": self.hvp, "ok": self.ok, "counts": self.counts(), "summary": self.summary(),
                "rows": [row.to_dict() for row in self.rows]}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (no NaN or Infinity tokens)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def __str__(self) -> str:
        return self.table()


def load_builder(spec: str) -> Builder:
    """The callable named by ``"package.module:function"`` (``function`` may be dotted).

    The module is imported from ``sys.path`` as it stands (``refimpl conform`` puts the
    current folder first, as ``python -m`` does).

    Raises
    ------
    ValueError
        For a spec without exactly one ``:``, a module that does not import (with the
        import error; a ``sys.exit()`` at import included), a missing attribute, or one
        that is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"builder: expected MODULE:FUNCTION such as "
                         f"'refimpl.adapters.torch:build', got {spec!r}")
    module_name, attribute = spec.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - any failure of the user's module is reported
        raise ValueError(f"builder {spec!r}: module {module_name!r} does not import: "
                         f"{_exception_text(error)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"builder {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"builder {spec!r}: {attribute!r} is not callable (it is a "
                         f"{type(target).__name__})")
    return target


# --- exceptions of the builder's code ------------------------------------------------------------

#: refimpl's own code, whose frames are never an implementation's location: the whole package
#: but its adapters (which are builders).
_PACKAGE = Path(__file__).resolve().parents[1]
_ADAPTERS = _PACKAGE / "adapters"
#: Installed libraries and the standard library: a location there is a last resort (the user's
#: own frame that called into them says more).
_LIBRARIES = tuple(Path(path).resolve() for path in {
    sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    if path)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _builder_home(build: Any) -> Path | None:
    """Where the builder's own code lives: its module's package folder (the module's file for
    a top-level module), so that a builder installed among the libraries is still told apart
    from the frameworks it calls."""
    module_name = getattr(build, "__module__", None) or ""
    parent = sys.modules.get(module_name.rpartition(".")[0]) if "." in module_name else None
    folders = list(getattr(parent, "__path__", ()) or ())
    if folders:
        return Path(folders[0]).resolve()
    file = getattr(sys.modules.get(module_name), "__file__", None)
    return Path(file).resolve() if file else None


def _location(error: BaseException, build: Any = None) -> str:
    """``file:line in function`` of the innermost frame of the builder's own code in the
    traceback of ``error``: not refimpl's frames (its adapters excepted), nor a library's
    unless it is the builder's package or no other frame is there; "" when there is none."""
    home = _builder_home(build)
    foreign, own = [], []
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename).resolve()
        if _inside(path, _PACKAGE) and not _inside(path, _ADAPTERS):
            continue
        library = any(_inside(path, folder) for folder in _LIBRARIES)
        ours = home is not None and _inside(path, home)
        (foreign if library and not ours else own).append((path, frame))
    chosen = own or foreign
    if not chosen:
        return ""
    path, frame = chosen[-1]
    try:
        shown = os.path.relpath(path) if _inside(path, Path.cwd().resolve()) else str(path)
    except ValueError:               # another drive (Windows)
        shown = str(path)
    return f"{shown}:{frame.lineno} in {frame.name}"


def _exception_text(error: BaseException) -> str:
    """``Type: message`` of an exception, qualified when it is not a builtin."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    text = str(error)
    return f"{name}: {text}" if text else name


def _raised(where: str, error: BaseException, build: Any) -> str:
    """The detail of a row whose ``build`` or ``impl`` (of the builder ``build``) raised
    ``error``."""
    detail = f"{where} raised {_exception_text(error)}"
    location = _location(error, build)
    if location:
        detail += f" (at {location})"
    if isinstance(error, SystemExit):
        detail += ("; a SystemExit (sys.exit()) inside the builder's code is a failure of "
                   "this case, not the end of the run")
    if type(error).__name__ == "NotExpressible":
        detail += ("; a class of your own named NotExpressible is an ordinary exception here: "
                   "raise refimpl.testing.NotExpressible for a case your framework cannot "
                   "express")
    return detail


class _Recorder:
    """The implementation (or its ``hvp``), recording what it returned (for the convention
    check) and whether it raised, so that the implementation runs once."""

    def __init__(self, impl: Any) -> None:
        self.impl, self.result, self.raised = impl, None, False

    def __call__(self, params: dict[str, np.ndarray], *arrays: dict[str, np.ndarray]) -> Any:
        try:
            self.result = self.impl(params, *arrays)
        except BaseException:
            self.raised = True
            raise
        return self.result


# --- judging one comparison -------------------------------------------------------------------

class _Verdict(NamedTuple):
    """What one check of a case concluded: the row's outcome, detail, worst ratio, tensor."""

    outcome: str
    detail: str
    worst: float = math.nan
    tensor: str = ""


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


def _reasons(report: ComparisonReport, worst_tensor: str) -> list[str]:
    """Why a report failed: its problems, then its failing tensors, the row's worst first."""
    # the same tensor as the row's worst/limit column first (stable sort keeps the rest)
    failures = sorted(report.failures, key=lambda row: row.label != worst_tensor)
    return [*report.problems, *(row.describe() for row in failures)]


def _detail(report: ComparisonReport, worst_tensor: str) -> str:
    """The detail of a passing or inconclusive report, or :func:`_fail_detail`."""
    if report.verdict == "pass":
        return f"{len(report.rows)} tensors match"
    if report.verdict == "inconclusive":
        return "unresolved in this dtype: " + ", ".join(row.label
                                                         for row in report.inconclusive)
    return _fail_detail(report, worst_tensor)


def _fail_detail(report: ComparisonReport, worst_tensor: str, guess: str | None = None,
                 against_guess: str | None = None) -> str:
    """The detail of a failed row, composed in this one place: the first reason (the worst
    tensor's), how many more, and for a probe the best guess of what the implementation does
    (with the first reason its whole result fails that rule's reference too, when the guess
    is a documented convention), and the named bug of a failing gradient of a shared, tied,
    recurrent, Siamese or micro-batch model when one fits (``report.diagnosis``,
    :mod:`refimpl.testing.diagnosis`)."""
    reasons = _reasons(report, worst_tensor)
    detail = reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
    if guess:
        detail += f"; best guess: {guess}"
    if against_guess:
        detail += (f"; the gradients fit that documented rule, but the whole result does not "
                   f"match refimpl's with it: {against_guess}")
    if report.diagnosis:
        detail += f"; diagnosis: {report.diagnosis}"
    return detail


def _against(result: Any, alternative: probes.Alternative, dtype: str) -> ComparisonReport:
    """The implementation's recorded ``result`` compared with a documented alternative's
    reference by the ordinary rule: the dtype's tolerance and that reference's own resolution
    floors, derived as for any case (the implementation is not run again)."""
    _, tolerance = resolve_tolerance(dtype)
    case = alternative.case
    floors = case_floors(case, dtype, alternative.reference)
    return _run_and_compare(lambda params, inputs: result, case.name, case.params, case.inputs,
                            alternative.reference, dtype, tolerance, floors)


def _probe_verdict(case: Case, dtype: str, report: ComparisonReport, result: Any,
                   diagnose: Diagnose | None) -> _Verdict:
    """The outcome of a convention probe: inconclusive outside the dtypes that resolve it
    (unless it failed); on a failure, "convention differs" when the whole result passes
    against exactly one documented alternative's reference, else a fail with the best guess."""
    unresolved = _unresolved_verdict(case, dtype, report, "tensors")
    if unresolved is not None:
        return unresolved
    worst, tensor = _worst(report)
    if report.verdict != "fail":
        return _Verdict(report.verdict, _detail(report, tensor), worst, tensor)
    against = {alternative.describes: _against(result, alternative, dtype)
               for alternative in probes.alternatives(case) if alternative.convention}
    for describes, alternative_report in against.items():
        if alternative_report.verdict == "pass":
            return _Verdict("convention differs", (
                f"{describes}: the whole result matches refimpl's with this one documented "
                f"rule changed; refimpl: {case.config['convention']['refimpl_rule']}"),
                worst, tensor)
    sentence, documented = _guess(case, result, diagnose)
    against_guess = None
    if documented in against:
        alternative_report = against[documented]
        against_guess = _detail(alternative_report, _worst(alternative_report)[1])
    return _Verdict("fail", _fail_detail(report, tensor, sentence, against_guess), worst,
                    tensor)


def _guess(case: Case, result: Any, diagnose: Diagnose | None) -> tuple[str | None, str]:
    """The best guess's sentence for a failed probe and, when it is a documented convention,
    that rule's ``describes`` ("" otherwise; always "" for a caller's own ``diagnose``)."""
    if not isinstance(result, tuple) or len(result) < 2 or not isinstance(result[1], Mapping):
        return None, ""
    if diagnose is not None:
        return diagnose(case, result[0], result[1]), ""
    found = probes.guess(case, result[0], result[1])
    if found is None:
        return None, ""
    return found.sentence, found.describes if found.convention else ""


def _oracle_check(build: Builder, case: Case, dtype: str,
                  diagnose: Diagnose | None) -> _Verdict:
    """Build the implementation, run it once on the case's point, judge its result."""
    recorder = None
    try:
        impl = build(copy.deepcopy(case.config), dtype)
        if not callable(impl):
            return _Verdict("fail", f"build returned {type(impl).__name__}, not a callable "
                                    f"impl(params, inputs)")
        recorder = _Recorder(impl)
        report = compare_with_oracle(recorder, case, dtype=dtype)
    except KeyboardInterrupt:
        raise
    except NotExpressible as reason:
        return _Verdict("not expressible", str(reason) or "(no reason given)")
    except BaseException as error:  # noqa: BLE001 - a foreign builder's failure is a row
        if recorder is not None and not recorder.raised:
            raise                   # refimpl's own failure: a bug to see, not a row
        return _Verdict("fail", _raised("impl" if recorder is not None else "build", error,
                                        build))
    if "convention" in case.config:
        return _probe_verdict(case, dtype, report, recorder.result, diagnose)
    worst, tensor = _worst(report)
    return _Verdict(report.verdict, _detail(report, tensor), worst, tensor)


# --- step cases: the builder's step capability -------------------------------------------------

#: The detail of a step case whose implementation has no ``train_steps``.
NO_STEPS = ("the implementation has no train_steps(params, batches) (the step capability of "
            "the builder protocol)")


def _steps_check(build: Builder, case: StepCase, dtype: str) -> _Verdict:
    """Build the implementation, run its ``train_steps`` once over the case's ``K`` batches,
    judge the trajectory step by step (:mod:`refimpl.testing.trajectory`); "not expressible"
    without the capability, never a failure."""
    where = "build"
    try:
        impl = build(copy.deepcopy(case.config), dtype)
        if not callable(getattr(impl, "train_steps", None)):
            return _Verdict("not expressible", NO_STEPS)
        where = "impl.train_steps"
        result = run_steps(impl, case, dtype)
        where = ""
    except KeyboardInterrupt:
        raise
    except NotExpressible as reason:
        return _Verdict("not expressible", str(reason) or "(no reason given)")
    except BaseException as error:  # noqa: BLE001 - a foreign builder's failure is a row
        if not where:
            raise                   # refimpl's own failure: a bug to see, not a row
        return _Verdict("fail", _raised(where, error, build))
    start = {name: np.asarray(value).astype(HAND_OVER_DTYPE[dtype]).astype(np.float64)
             for name, value in case.params.items()}
    reference = reference_trajectory(case)
    report = compare_trajectory(result, case, dtype, start=start, reference=reference,
                                floors=trajectory_floors(case, dtype))
    if "convention" in case.config:
        return _step_probe_verdict(case, dtype, report, result, start)
    worst, tensor = report.worst()
    return _Verdict(report.verdict, report.summary(), worst, tensor)


def _step_probe_verdict(case: StepCase, dtype: str, report: TrajectoryReport, result: Any,
                        start: Mapping[str, np.ndarray]) -> _Verdict:
    """A step probe's outcome, as a gradient probe's (:func:`_probe_verdict`): inconclusive
    outside the dtypes that resolve it (unless it failed); on a failure, "convention differs"
    when the whole trajectory passes against one documented alternative's (refimpl's
    trajectory with that one rule changed, its own floors), else a fail."""
    worst, tensor = report.worst()
    resolving = probes.resolved_in(case)
    convention = case.config["convention"]
    if dtype not in resolving:
        if report.verdict != "pass":
            return _Verdict(report.verdict, report.summary(), worst, tensor)
        rules = "; ".join(alternative.describes for alternative in step_alternatives(case))
        return _Verdict("inconclusive", (
            f"{convention['name']}: only {', '.join(resolving)} resolves it: refimpl's rule and "
            f"its alternatives ({rules}) agree within {dtype}'s tolerance along this "
            f"trajectory, so no {dtype} implementation can show which it follows "
            f"({report.summary()})"), worst, tensor)
    if report.verdict != "fail":
        return _Verdict(report.verdict, report.summary(), worst, tensor)
    for alternative in step_alternatives(case):
        if not alternative.convention:
            continue
        against = compare_trajectory(result, alternative.case, dtype, start=start)
        if against.verdict == "pass":
            return _Verdict("convention differs", (
                f"{alternative.describes}: the whole trajectory matches refimpl's with this one "
                f"documented rule changed; refimpl: {convention['refimpl_rule']}"),
                worst, tensor)
    return _Verdict("fail", report.summary(), worst, tensor)


def _unresolved_verdict(case: Case, dtype: str, report: ComparisonReport, what: str
                        ) -> _Verdict | None:
    """A probe's row in a dtype that cannot resolve it (None in one that does): a failure or
    an inconclusive tensor as the report says, else inconclusive, never a pass."""
    if dtype in probes.resolved_in(case):
        return None
    worst, tensor = _worst(report)
    if report.verdict == "fail" or report.inconclusive:
        return _Verdict(report.verdict, _detail(report, tensor), worst, tensor)
    return _Verdict("inconclusive", f"{probes.unresolved(case, dtype)} ({len(report.rows)} "
                                    f"{what} match)", worst, tensor)


def _hvp_probe_verdict(case: Case, dtype: str, report: ComparisonReport, result: Any,
                       direction: Mapping[str, np.ndarray]) -> _Verdict:
    """The outcome of a probe's HVP row, as :func:`_probe_verdict` judges its gradients:
    inconclusive outside the dtypes that resolve the probe (unless it failed); a failure that
    passes against the ``H v`` of exactly one documented alternative with one (another model:
    :func:`refimpl.testing.second_order.alternative_hvp`) is "convention differs"."""
    unresolved = _unresolved_verdict(case, dtype, report, "products")
    if unresolved is not None:
        return unresolved
    worst, tensor = _worst(report)
    if report.verdict != "fail":
        return _Verdict(report.verdict, _detail(report, tensor), worst, tensor)
    _, tolerance = resolve_tolerance(dtype)
    for alternative in probes.alternatives(case):
        if not alternative.convention:
            continue
        reference = alternative_hvp(alternative, direction)
        if reference is None:
            continue
        floors = hvp_floors(alternative.case, dtype, reference, direction)
        against = compare_hvp(lambda *_: result, case.name, case.params, case.inputs,
                              direction, reference, dtype, tolerance, floors)
        if against.verdict == "pass":
            return _Verdict("convention differs", (
                f"{alternative.describes}: every product matches refimpl's H v with this one "
                f"documented rule changed; refimpl: "
                f"{case.config['convention']['refimpl_rule']}"), worst, tensor)
    return _Verdict("fail", _fail_detail(report, tensor), worst, tensor)


def _hvp_check(build: Builder, case: Case, dtype: str) -> _Verdict:
    """Build the implementation, run its ``hvp`` once along the case's direction, judge the
    products (module docstring, "The optional hvp capability")."""
    expected = hvp_expectation(case)
    try:
        impl = build(copy.deepcopy(case.config), dtype)
    except KeyboardInterrupt:
        raise
    except NotExpressible as reason:
        return _Verdict("not expressible", str(reason) or "(no reason given)")
    except BaseException as error:  # noqa: BLE001 - a foreign builder's failure is a row
        return _Verdict("fail", _raised("build", error, build))
    hvp = hvp_function(impl)
    if hvp is None:
        return _Verdict("not expressible", "the implementation has no hvp(params, inputs, "
                                           "vector): the optional second-order capability")
    _, tolerance = resolve_tolerance(dtype)
    floors = hvp_floors(case, dtype, expected.hvp, expected.direction)
    recorder = _Recorder(hvp)
    try:
        report = compare_hvp(recorder, case.name, case.params, case.inputs, expected.direction,
                             expected.hvp, dtype, tolerance, floors)
    except KeyboardInterrupt:
        raise
    except NotExpressible as reason:
        return _Verdict("not expressible", str(reason) or "(no reason given)")
    except BaseException as error:  # noqa: BLE001 - a foreign builder's failure is a row
        if not recorder.raised:
            raise                   # refimpl's own failure: a bug to see, not a row
        return _Verdict("fail", _raised("impl.hvp", error, build))
    if "convention" in case.config:
        return _hvp_probe_verdict(case, dtype, report, recorder.result, expected.direction)
    worst, tensor = _worst(report)
    return _Verdict(report.verdict, _detail(report, tensor), worst, tensor)


def conform_case(build: Builder, case: Case, dtype: str = "float64", *,
                 diagnose: Diagnose | None = None, check: str = "gradient") -> ConformanceRow:
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
        ``diagnose(case, loss, grads) -> str | None``, the best guess written into the detail
        of a failed convention probe (default: :func:`refimpl.testing.cases.probes.diagnose`).
        It never decides the outcome: "convention differs" is granted by comparing the whole
        result with the documented alternatives' references.
    check : str
        "gradient" (``impl(params, inputs)``) or "hvp" (``impl.hvp(params, inputs, v)``
        along the case's direction; the case must have an HVP expectation,
        :func:`refimpl.testing.second_order.has_hvp`).

    Returns
    -------
    ConformanceRow
        Its outcome is one of :data:`OUTCOMES`; an exception of ``build`` or ``impl`` is a
        "fail" row naming it and where it was raised, never raised (``KeyboardInterrupt``
        excepted).

    Raises
    ------
    ValueError
        For an unknown dtype or check, or an HVP check of a case without an HVP expectation.
    TypeError
        For a ``case`` that is not a :class:`~refimpl.testing.cases.Case`.
    KeyboardInterrupt
        Passed on: the user stops the run.
    """
    dtype, _ = resolve_tolerance(dtype)
    if not isinstance(case, Case):
        raise TypeError(f"case: expected a refimpl.testing.cases.Case, got "
                        f"{type(case).__name__}")
    if check not in CHECKS:
        raise ValueError(f"check: expected one of {list(CHECKS)}, got {check!r}")
    if check == "hvp" and not has_hvp(case):
        raise ValueError(f"check: case {case.name!r} has no Hessian-vector expectation (its "
                         f"configuration describes no refimpl model)")
    start = time.perf_counter()
    # Each capability of the builder is its own row: a wrong H v never hides behind right
    # gradients, nor the other way round. A step case is judged by the builder's step
    # capability alone: its first step is a gradient case of a kind the catalogue has.
    if check == "hvp":
        verdict = _hvp_check(build, case, dtype)
    elif isinstance(case, StepCase):
        verdict = _steps_check(build, case, dtype)
    else:
        verdict = _oracle_check(build, case, dtype, diagnose)
    return ConformanceRow(case.name, case.kind, dtype, verdict.outcome, verdict.worst,
                          verdict.tensor, time.perf_counter() - start, verdict.detail, check)


class _Drawn(NamedTuple):
    """A drawn case not drawn yet: its seed and kind (None: the kind the seed draws)."""

    seed: int
    kind: str | None

    @property
    def name(self) -> str:
        return drawn_name(self.seed) if self.kind is None else f"drawn-{self.kind}-{self.seed}"

    def case(self) -> Case:
        return drawn_case(self.seed, self.kind)


def _selected(cases: Iterable[Case | str] | None) -> list[Case | _Drawn]:
    """The cases to run: every built-in case (None), or these cases and case names, checked
    now; a drawn case named here is drawn when its turn comes."""
    if cases is None:
        return list(all_cases())
    if isinstance(cases, (str, Case)):
        cases = [cases]
    selected: list[Case | _Drawn] = []
    for case in cases:
        if isinstance(case, Case):
            selected.append(case)
            continue
        parsed = parse_drawn_name(case)
        selected.append(case_named(case) if parsed is None else _Drawn(parsed[1], parsed[0]))
    return selected


def _rows(build: Builder, selected: list[Case | _Drawn], dtypes: tuple[str, ...],
          diagnose: Diagnose | None, progress: Progress | None, hvp: bool = False
          ) -> Iterator[ConformanceRow]:
    """Every (case, dtype[, check]) row in order, each drawn case drawn when its turn comes,
    with the progress reported before each row and once at the end. With ``hvp``, a case
    with an HVP expectation gets an HVP row after each dtype's gradient row."""
    per_dtype = 2 if hvp else 1
    total, done = len(selected) * len(dtypes) * per_dtype, 0
    for item in selected:
        case = item.case() if isinstance(item, _Drawn) else item
        checks = CHECKS if hvp and has_hvp(case) else CHECKS[:1]
        total -= len(dtypes) * (per_dtype - len(checks))
        for dtype in dtypes:
            for check in checks:
                if progress is not None:
                    progress(done, total, f"{case.name} [{dtype}]"
                                          + (" hvp" if check == "hvp" else ""))
                yield conform_case(build, case, dtype, diagnose=diagnose, check=check)
                done += 1
    if progress is not None:
        progress(total, total, "")


def conform(build: Builder, *, dtypes: Iterable[str] = ("float64", "float32"),
            cases: Iterable[Case | str] | None = None, drawn: int = 0, seed: int = 0,
            strict_conventions: bool = False, diagnose: Diagnose | None = None,
            progress: Progress | None = None, hvp: bool = False) -> ConformanceReport:
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
        How many drawn cases to add (:func:`refimpl.testing.cases.drawn.drawn_case`, every
        kind of :data:`~refimpl.testing.cases.drawn.DRAWN_KINDS`), of seeds ``seed`` to
        ``seed + drawn - 1``.
    seed : int
        The first drawn case's seed.
    strict_conventions : bool
        Count "convention differs" as a failure of the run.
    diagnose : callable, optional
        ``diagnose(case, loss, grads) -> str | None``, the best guess in the detail of a failed
        probe (default: :func:`refimpl.testing.cases.probes.diagnose`); never an outcome.
    progress : callable, optional
        ``progress(done, total, label)``, called before each row with the rows done so far,
        the number of rows and ``"<case> [<dtype>]"``, and once at the end with ``done ==
        total`` and label "" (``refimpl conform`` draws a progress bar with it); an HVP row's
        label ends with " hvp".
    hvp : bool
        Also judge ``impl.hvp`` (module docstring, "The optional hvp capability"): a second
        row per dtype, ``check == "hvp"``, for every case with an HVP expectation; "not
        expressible" for an ``impl`` without ``hvp``.

    Returns
    -------
    ConformanceReport
        One row per (case, dtype[, check]); ``report.ok`` when none failed and some passed.

    Raises
    ------
    ValueError, TypeError
        For a bad argument (an unknown dtype or case name, a negative count), before any
        case runs.
    KeyboardInterrupt
        Passed on from the builder's code or the user: the run stops, no report.

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
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a callable progress(done, total, label) or None, "
                        f"got {progress!r}")
    seed, drawn = check_seed(seed, "seed"), check_seed(drawn, "drawn")
    selected = _selected(cases) + [_Drawn(seed + index, None) for index in range(drawn)]
    if not isinstance(hvp, bool):
        raise TypeError(f"hvp: expected True or False, got {hvp!r}")
    rows = tuple(_rows(build, selected, dtypes, diagnose, progress, hvp))
    return ConformanceReport(rows, builder_name(build), dtypes, drawn, seed, strict_conventions,
                             framework_of(build), hvp)
