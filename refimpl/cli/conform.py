"""``refimpl conform MODULE:FUNCTION``: a builder ``build(config, dtype) -> impl`` over every
built-in case (convention probes included) and N drawn cases, per dtype
(:func:`refimpl.testing.conform`); one table, exit status 1 on any fail. Any case, drawn or
built-in, can also be written to a golden folder for an implementation in another language."""

from __future__ import annotations

import argparse
import os
import sys

from .._io import JSON_HELP, OutputError, check_destination, write_text_atomically
from ..testing.cases.drawn import case_named
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
                        help="run only this case (repeatable): a built-in name or "
                             "drawn-<kind>-<seed>; default: every built-in case")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="report"))
    parser.add_argument("--strict-conventions", action="store_true",
                        help="count 'convention differs' as a failure (exit status 1)")
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
        for name in [*(args.case or []), *(args.export or [])]:
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


def run_conform(args: argparse.Namespace) -> int:
    """Run ``refimpl conform``: print the table (or the JSON), write the JSON and the golden
    export if asked.

    ``args`` holds the flags of :func:`add_conform_arguments`.

    Returns
    -------
    int
        The exit status: 0 when the run is ok (no fail, some pass); 1 when a case failed
        (or nothing passed, or a file could not be written); 2 for a usage error (a builder
        that does not import or is not callable, an unknown case or dtype).
    """
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
    try:
        report = conform(build, dtypes=_dtypes(args.dtype), cases=args.case, drawn=args.drawn,
                         seed=args.seed, strict_conventions=args.strict_conventions)
    except ValueError as error:        # e.g. an unknown drawn kind in --case
        print(f"refimpl conform: {error}", file=sys.stderr)
        return 2
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
