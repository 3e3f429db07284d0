"""A pytest plugin: the conformance suite as one test per (case, dtype).

::

    pytest -p refimpl.testing.pytest_plugin --refimpl-build=MODULE:FUNCTION \\
        [--refimpl-dtypes=float64,float32] [--refimpl-drawn=N] [--refimpl-seed=S] \\
        [--refimpl-case=NAME ...] [--refimpl-strict-conventions] [--refimpl-hvp] [-n auto]

(``-p ...`` is not needed once refimpl is installed: it registers the plugin as the ``refimpl``
entry point of ``pytest11``). Each item, ``refimpl-conform::<case>[<dtype>]``, runs
:func:`refimpl.testing.conform.conform_case`; so ``pytest-xdist`` (``-n auto``) spreads a
large drawn run over cores or machines, ``-k`` selects cases, and ``--lf`` reruns the failures.
With ``--refimpl-hvp`` every case also gets an item ``<case>[<dtype>-hvp]`` judging the
implementation's Hessian-vector product (``impl.hvp``, :mod:`refimpl.testing.second_order`).

Outcomes: "pass" passes; "fail" fails with the failing tensor (or the exception); "inconclusive"
and "not expressible" are skipped with their reason (``-rs`` lists them): never a pass;
"convention differs" is an expected failure (xfail) naming the convention, or a failure with
``--refimpl-strict-conventions``.

Nothing passed is not ok, as for ``refimpl conform``: a session in which conformance items ran
and none of them passed (every one skipped or xfailed) ends with exit status 1
(``pytest.ExitCode.TESTS_FAILED``) and a line saying so, not green. Under ``pytest-xdist`` the
controller counts the items its workers report. A session in which ``-k`` / ``-m`` deselected
every conformance item is left to pytest. Ctrl-C (``KeyboardInterrupt``) stops the session as
pytest always does; a ``sys.exit()`` in the builder's code is a failed item.

Without ``--refimpl-build`` the plugin adds no option values, items or work: importing it
builds no case and runs nothing (it costs the import of refimpl itself).
"""

from __future__ import annotations

from typing import Any

import pytest

from .cases import all_cases
from .cases.drawn import case_named, drawn_name, parse_drawn_name
from .comparison import resolve_tolerance
from .conform import conform_case, load_builder
from .second_order import has_hvp

#: The collector every conformance item hangs from (the first part of their node ids).
COLLECTOR = "refimpl-conform"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``--refimpl-*`` options."""
    group = parser.getgroup("refimpl", "refimpl conformance (refimpl.testing.conform)")
    group.addoption("--refimpl-build", metavar="MODULE:FUNCTION", default=None,
                    help="run the builder build(config, dtype) -> impl over every case; "
                         "one test per case and dtype")
    group.addoption("--refimpl-dtypes", metavar="DTYPES", default="float64,float32",
                    help="comma-separated dtypes (float64, float32, tf32); default "
                         "float64,float32")
    group.addoption("--refimpl-drawn", metavar="N", type=int, default=0,
                    help="also run N drawn cases (default 0)")
    group.addoption("--refimpl-seed", metavar="S", type=int, default=0,
                    help="seed of the first drawn case; case i has seed S + i (default 0)")
    group.addoption("--refimpl-case", metavar="NAME", action="append", default=None,
                    help="only this case (repeatable, or comma-separated): a built-in name or "
                         "drawn-<kind>-<seed>")
    group.addoption("--refimpl-strict-conventions", action="store_true",
                    help="fail, rather than xfail, a case whose convention differs")
    group.addoption("--refimpl-hvp", action="store_true",
                    help="also one item per case and dtype judging impl.hvp(params, inputs, "
                         "vector), the Hessian-vector product")


def pytest_configure(config: pytest.Config) -> None:
    """Check the options once, before collection: a usage error, not a failed test."""
    spec = config.getoption("refimpl_build")
    if spec is None:
        return
    try:
        builder = load_builder(spec)
        dtypes = [resolve_tolerance(name.strip())[0]
                  for name in config.getoption("refimpl_dtypes").split(",") if name.strip()]
        if not dtypes:
            raise ValueError("--refimpl-dtypes: expected at least one dtype")
        for option in ("refimpl_drawn", "refimpl_seed"):
            if config.getoption(option) < 0:
                raise ValueError(f"--{option.replace('_', '-')}: expected a non-negative int, "
                                 f"got {config.getoption(option)}")
        names = _case_names(config)
        if names == []:
            raise ValueError("--refimpl-case: expected case names")
        for name in names or []:
            if parse_drawn_name(name) is None:     # a drawn case is drawn when it runs
                case_named(name)
    except ValueError as error:
        raise pytest.UsageError(f"refimpl: {error}") from None
    run = _Run(builder, spec, tuple(dict.fromkeys(dtypes)),
               bool(config.getoption("refimpl_strict_conventions")),
               bool(config.getoption("refimpl_hvp")))
    config.stash[_RUN] = run
    # an xdist worker (``workerinput``) sees a share of the items: its controller decides
    config.pluginmanager.register(_NothingPassedRule(run, not hasattr(config, "workerinput")),
                                  "refimpl-nothing-passed")


def _case_names(config: pytest.Config) -> list[str] | None:
    """The names of ``--refimpl-case`` (repeated and / or comma-separated); None: every
    built-in case."""
    given = config.getoption("refimpl_case")
    if given is None:
        return None
    return [name.strip() for value in given for name in value.split(",") if name.strip()]


class _Run:
    """What every item of one session shares: the builder, the dtypes, strictness, and
    whether the Hessian-vector products are judged too."""

    def __init__(self, builder: Any, spec: str, dtypes: tuple[str, ...], strict: bool,
                 hvp: bool = False) -> None:
        self.builder, self.spec, self.dtypes, self.strict = builder, spec, dtypes, strict
        self.hvp = hvp


_RUN = pytest.StashKey[_Run]()


class ConformanceFailure(Exception):
    """A (case, dtype) whose outcome fails: its row's detail is the message."""


class ConformanceItem(pytest.Item):
    """One case in one dtype (and check). ``case`` is a Case, or a drawn case's name (drawn
    when run)."""

    def __init__(self, *, case: Any, dtype: str, check: str = "gradient", **kwargs: Any
                 ) -> None:
        super().__init__(**kwargs)
        self.case, self.dtype, self.check = case, dtype, check

    def runtest(self) -> None:
        """Run the case; pass, fail, skip (inconclusive, not expressible) or xfail."""
        run = self.config.stash[_RUN]
        case = case_named(self.case) if isinstance(self.case, str) else self.case
        if self.check == "hvp" and not has_hvp(case):
            pytest.skip("not expressible: refimpl has no Hessian-vector expectation for this "
                        "case (its configuration describes no refimpl model)")
        row = conform_case(run.builder, case, self.dtype, check=self.check)
        self.user_properties.append(("refimpl", row.to_dict()))
        if row.outcome == "pass":
            return
        if row.outcome in ("inconclusive", "not expressible"):
            pytest.skip(f"{row.outcome}: {row.detail}")
        if row.outcome == "convention differs" and not run.strict:
            pytest.xfail(f"convention differs: {row.detail}")
        what = f"{row.dtype}, hvp" if row.check == "hvp" else row.dtype
        raise ConformanceFailure(f"{row.case} [{what}] with {run.spec}: {row.outcome}: "
                                 f"{row.detail} (worst tensor {row.tensor or '-'}, "
                                 f"error/limit {row.worst:.3e})")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        """The row's message alone for a conformance failure (no traceback into refimpl)."""
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        """Where pytest reports the item: the collector's path and the case's test id."""
        return self.path, None, f"{COLLECTOR}::{self.name}"


class ConformanceCollector(pytest.Collector):
    """The parent of every conformance item."""

    def collect(self) -> list[pytest.Item]:
        run = self.config.stash[_RUN]
        names = _case_names(self.config)
        cases: list[Any] = all_cases() if names is None else [
            name if parse_drawn_name(name) is not None else case_named(name) for name in names]
        seed = self.config.getoption("refimpl_seed")
        cases += [drawn_name(seed + index)
                  for index in range(self.config.getoption("refimpl_drawn"))]
        checks = ("gradient", "hvp") if run.hvp else ("gradient",)
        return [ConformanceItem.from_parent(
                    self, name=f"{case if isinstance(case, str) else case.name}[{dtype}"
                               f"{'-hvp' if check == 'hvp' else ''}]",
                    case=case, dtype=dtype, check=check)
                for case in cases for dtype in run.dtypes for check in checks]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Add the conformance items (first, so that ``-k`` and ``-m`` select among them)."""
    if _RUN not in config.stash:
        return
    collector = ConformanceCollector.from_parent(session, name=COLLECTOR, nodeid=COLLECTOR)
    items.extend(collector.collect())



class _NothingPassedRule:
    """The rule of ``refimpl conform`` on a session: it counts the conformance items that
    ran and those that passed (on the controller under xdist, which receives its workers'
    reports) and fails a session in which some ran and none passed."""

    def __init__(self, run: _Run, controller: bool) -> None:
        self.run, self.controller = run, controller
        self.ran = self.passed = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" or not report.nodeid.startswith(f"{COLLECTOR}::"):
            return
        self.ran += 1
        self.passed += bool(report.passed and not hasattr(report, "wasxfail"))

    def _violated(self) -> bool:
        return self.controller and self.ran > 0 and self.passed == 0

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self._violated() and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._violated():
            terminalreporter.write_line(
                f"refimpl: none of the {self.ran} conformance item(s) of {self.run.spec} "
                f"passed (every one not expressible, inconclusive or a convention "
                f"difference): nothing was shown to conform, so the session fails",
                red=True, bold=True)
