"""``refimpl golden --out DIR`` and ``refimpl verify DIR``: golden test vectors on disk
(:mod:`refimpl.testing.golden` does the work)."""

from __future__ import annotations

import argparse
import sys

from .._io import OutputError
from .._validate import did_you_mean
from ..testing.cases import all_cases
from ..testing.golden import CHECKSUMS, MANIFEST, GoldenError, read_manifest, verify, write


def add_golden_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--out``, ``--force`` and ``--case`` to the ``golden`` sub-parser."""
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to create (must not exist or be empty, unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing golden folder (only once the new one is "
                             "complete)")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="write only this case (repeatable); default: every case")


def run_golden(args: argparse.Namespace) -> int:
    """Run ``refimpl golden``: write the golden folder and say how to check it.

    ``args`` holds the flags of :func:`add_golden_arguments`.

    Returns
    -------
    int
        The exit status: 0 once written; 1 when ``--out`` cannot be written; 2 for a
        folder that exists (without ``--force``) or an unknown case.
    """
    selected = getattr(args, "case", None)
    if selected:
        known = [case.name for case in all_cases()]
        unknown = [name for name in selected if name not in known]
        if unknown:
            named = "; ".join(f"{name!r}{did_you_mean(name, known)}" for name in unknown)
            print(f"refimpl golden: --case: unknown case{'s' if len(unknown) > 1 else ''} "
                  f"{named}; refimpl check --list names the {len(known)} built-in cases",
                  file=sys.stderr)
            return 2
    try:
        out = write(args.out, force=bool(getattr(args, "force", False)), cases=selected)
    except OutputError as error:
        print(f"refimpl golden: --out {error}", file=sys.stderr)
        return 1
    except (FileExistsError, GoldenError, ValueError) as error:
        print(f"refimpl golden: {error}", file=sys.stderr)
        return 2
    manifest = read_manifest(out)
    files = sum(len(entry["files"]) for entry in manifest["cases"].values())
    print(f"refimpl golden: wrote {len(manifest['cases'])} cases, {files} .npy files, "
          f"{MANIFEST} and {CHECKSUMS} to {args.out}")
    print(f"check the files with: (cd {args.out} && sha256sum -c {CHECKSUMS}); "
          f"check the values with: refimpl verify {args.out}")
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``DIR`` and ``--quiet`` to the ``verify`` sub-parser."""
    parser.add_argument("dir", metavar="DIR", help="a folder written by refimpl golden")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the "
                                                             "summary line")


def run_verify(args: argparse.Namespace) -> int:
    """Run ``refimpl verify``: recompute every case of a golden folder and check every file.

    ``args`` holds the flags of :func:`add_verify_arguments` (``--quiet``: print only the
    failures and the summary line).

    Returns
    -------
    int
        The exit status: 0 when every file agrees, 1 otherwise.
    """
    report = verify(args.dir)
    if getattr(args, "quiet", False):
        lines = str(report).splitlines()
        shown = [line for line in lines[:-1] if line.startswith("FAIL")] + lines[-1:]
        print("\n".join(shown))
    else:
        print(report)
    return 0 if report.ok else 1
