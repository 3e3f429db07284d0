"""``refimpl conform MODULE:FUNCTION``: a builder ``build(config, dtype) -> impl`` over every
built-in case (convention probes included) and N drawn cases, per dtype
(:func:`refimpl.testing.conform`); one table, exit status 1 on any fail. ``--hvp`` also judges
the implementation's Hessian-vector products (``impl.hvp``), one more row per case and dtype.
Any case, drawn or built-in, can also be written to a golden folder for an implementation in
another language.

``MODULE`` is imported with the current folder first on ``sys.path``, as ``python -m`` does.
While the cases run, a progress bar on stderr shows the rows done, the time and the case and
dtype running (only when stderr is a terminal). Ctrl-C stops the run: a message names the case
it stopped at, nothing is written, exit status 130."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator

from .._io import JSON_HELP, OutputError, check_destination, write_text_atomically
from ..testing.cases.drawn import case_named, parse_drawn_name
from ..testing.comparison import DTYPE_TOLERANCES, resolve_tolerance
from ..testing.conform import conform, load_builder
from ..testing.golden import GoldenError, write

DEFAULT_DTYPES = ("float64", "float32")


def add_conform_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the builder and the flags of the ``conform`` sub-parser."""
    parser.add_argument("builder", metavar="MODULE:FUNCTION",
                        help="the builder build(config, dtype) -> impl, e.g. "
                             "refimpl.adapters.torch:build")
    parser.add_argument("--dtype", action="append", metavar="DTYPE",
                        help=f"a dtype to run in (repeatable, or comma-separated; one of "
                             f"{', '.join(DTYPE_TOLERANCES)}); default: "
                             f"{','.join(DEFAULT_DTYPES)}")
    parser.add_argument("--drawn", type=int, default=0, metavar="N",
                        help="also run N drawn cases (default 0)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the first drawn case; case i has seed S + i (default 0)")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="run only this case (repeatable, or comma-separated): a built-in "
                             "name or drawn-<kind>-<seed>; default: every built-in case")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="report"))
    parser.add_argument("--strict-conventions", action="store_true",
                        help="count 'convention differs' as a failure (exit status 1)")
    parser.add_argument("--hvp", action="store_true",
                        help="also judge impl.hvp(params, inputs, vector), the Hessian-vector "
                             "product, along each case's seeded direction: a second row per "
                             "case and dtype ('not expressible' without impl.hvp)")
    parser.add_argument("--export-golden", metavar="DIR",
                        help="write the cases named by --export to this new golden folder")
    parser.add_argument("--export", action="append", metavar="CASE",
                        help="a case to write to --export-golden (repeatable): a built-in "
                             "name or drawn-<kind>-<seed>")


def _dtypes(given: list[str] | None) -> list[str]:
    """The dtypes of ``--dtype`` (repeated and / or comma-separated), checked."""
    names = [name.strip() for value in (given or [",".join(DEFAULT_DTYPES)])
             for name in value.split(",") if name.strip()]
    return [resolve_tolerance(name)[0] for name in names]


def _cases(given: list[str] | None) -> list[str] | None:
    """The case names of ``--case`` (repeated and / or comma-separated); None: every case."""
    if given is None:
        return None
    return [name.strip() for value in given for name in value.split(",") if name.strip()]


def _usage_problem(args: argparse.Namespace) -> str | None:
    """Why the flags cannot run (None if they can), before any case runs."""
    if args.drawn < 0 or args.seed < 0:
        return f"--drawn and --seed: expected non-negative ints, got {args.drawn}, {args.seed}"
    if bool(args.export_golden) != bool(args.export):
        return "--export-golden DIR and --export CASE go together"
    out = args.export_golden
    if out and os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        return f"--export-golden {out}: exists and is not an empty folder (nothing was run)"
    try:
        _dtypes(args.dtype)
        if args.case is not None and not _cases(args.case):
            return f"--case: expected case names, got {args.case!r}"
        for name in _cases(args.case) or []:
            if parse_drawn_name(name) is None:     # a drawn case is drawn when it runs
                case_named(name)
        for name in args.export or []:
            case_named(name)
    except ValueError as error:
        return str(error)
    return None


def _export(out: str, names: list[str]) -> None:
    """Write the named cases to the golden folder ``out``; built-in cases by name (which
    ``golden.write`` accepts), drawn ones as Case objects."""
    cases = [case_named(name) for name in names]
    built_in = all(not name.startswith("drawn-") for name in names)
    write(out, cases=names if built_in else cases)


@contextlib.contextmanager
def _current_folder_first() -> Iterator[None]:
    """The current folder first on ``sys.path`` while the builder loads and runs (what
    ``python -m`` does), so that ``refimpl conform my_builders:build`` finds
    ``./my_builders.py``; ``sys.path`` is restored afterwards."""
    saved = list(sys.path)
    sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        sys.path[:] = saved


class ProgressBar:
    """A one-line progress bar on a terminal stream: rows done, percentage, elapsed time, an
    estimate of the time left, and the row running; plain text redrawn with a carriage
    return, cleared at the end. Silent when the stream is not a terminal."""

    WIDTH = 24

    def __init__(self, stream: object) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.active = bool(callable(isatty) and isatty())
        self.start = time.monotonic()
        self.done, self.total, self.label, self.shown = 0, 0, "", 0

    def __call__(self, done: int, total: int, label: str) -> None:
        """Show ``done`` of ``total`` rows, ``label`` running (clear the line at the end)."""
        self.done, self.total, self.label = done, total, label
        if not self.active:
            return
        if done >= total and not label:
            self.clear()
            return
        elapsed = time.monotonic() - self.start
        filled = self.WIDTH * done // max(total, 1)
        left = f", ~{_clock(elapsed / done * (total - done))} left" if done else ""
        counts = f"{done}/{total} {100 * done // max(total, 1)}% {_clock(elapsed)}{left}  {label}"
        bar = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
        # A line longer than the terminal would wrap and the carriage return would redraw
        # only its last part: the prefix, then the bar go first, the label is cut last.
        columns = shutil.get_terminal_size((80, 24)).columns - 1
        line = next((line for line in (f"refimpl conform {bar}{counts}", f"{bar}{counts}")
                     if len(line) <= columns), counts)
        self._write(line[:columns])

    def clear(self) -> None:
        """Erase the bar (before any other output)."""
        if self.active and self.shown:
            self._write("")

    def _write(self, line: str) -> None:
        self.stream.write("\r" + line.ljust(self.shown) + ("\r" if not line else ""))
        self.stream.flush()
        self.shown = len(line)


def _clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour)."""
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def run_conform(args: argparse.Namespace) -> int:
    """Run ``refimpl conform``: print the table (or the JSON), write the JSON and the golden
    export if asked.

    ``args`` holds the flags of :func:`add_conform_arguments`.

    Returns
    -------
    int
        The exit status: 0 when the run is ok (no fail, some pass); 1 when a case failed
        (or nothing passed, or a file could not be written); 2 for a usage error (a builder
        that does not import or is not callable, an unknown case or dtype); 130 when
        interrupted (Ctrl-C).
    """
    with _current_folder_first():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """:func:`run_conform` with the current folder on ``sys.path``."""
    problem = _usage_problem(args)
    try:
        build = load_builder(args.builder)
    except ValueError as error:
        problem = problem or str(error)
    if problem:
        print(f"refimpl conform: {problem}", file=sys.stderr)
        return 2
    if args.json and args.json != "-":
        check_destination(args.json)   # before the work, not after it
    progress = ProgressBar(sys.stderr)
    try:
        report = conform(build, dtypes=_dtypes(args.dtype), cases=_cases(args.case),
                         drawn=args.drawn, seed=args.seed,
                         strict_conventions=args.strict_conventions, progress=progress,
                         hvp=args.hvp)
    except ValueError as error:        # e.g. an unknown drawn kind in --case
        progress.clear()
        print(f"refimpl conform: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.clear()
        at = f" at {progress.label}" if progress.label else ""
        print(f"refimpl conform: interrupted (KeyboardInterrupt){at}, after {progress.done} of "
              f"{progress.total} rows; no table, report or export written", file=sys.stderr)
        return 130
    if args.json == "-":
        sys.stdout.write(report.to_json())
    else:
        print(report.table())
        if args.json:
            write_text_atomically(args.json, report.to_json())
    if args.export_golden:
        try:
            _export(args.export_golden, args.export)
        except OutputError as error:
            print(f"refimpl conform: --export-golden {error}", file=sys.stderr)
            return 1
        except (FileExistsError, GoldenError, ValueError, TypeError) as error:
            print(f"refimpl conform: --export-golden: {error}", file=sys.stderr)
            return 2
        print(f"refimpl conform: wrote {', '.join(args.export)} to {args.export_golden}",
              file=sys.stderr)
    return 0 if report.ok else 1
