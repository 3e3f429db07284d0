"""Writing a golden folder: every case's files built in a temporary folder, then installed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..cases import Case, all_cases
from .format import (
    CHECKSUMS,
    FORMAT,
    MANIFEST,
    GoldenError,
    _checksums_text,
    _command,
    _manifest_header,
    _sha256,
)
from .install import _install, _naming_errors, _recover, _writer_lock
from .read import _looks_like_golden
from .steps import record


def _write_case(case: Any, folder: Path) -> dict[str, Any]:
    """Write one case's files into ``folder / case.name``; return its manifest entry."""
    files, entry = record(case)
    case_folder = folder / case.name
    case_folder.mkdir()
    for file in files:
        (folder / file.entry["path"]).parent.mkdir(exist_ok=True)   # a step case's step<k>/
        with open(folder / file.entry["path"], "xb") as handle:
            handle.write(file.data)
            handle.flush()
            os.fsync(handle.fileno())
    return entry


def _check_target(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder (unless ``force`` and golden)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise GoldenError(f"--out {out}: exists and is not a folder"
                          + (" (a symbolic link)" if out.is_symlink() else ""))
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"--out {out}: the folder exists and is not empty; pass "
                                  f"--force to replace it (nothing was written)")
        if not _looks_like_golden(out):
            raise GoldenError(f"--out {out}: --force replaces only a golden folder (one with a "
                              f"{MANIFEST} of format {FORMAT!r}); this one is not, so it was "
                              f"left alone: remove it yourself or choose another folder")


def write(out_dir: str | os.PathLike, force: bool = False,
          cases: str | Case | Iterable[str | Case] | None = None) -> Path:
    """Write the golden folder ``out_dir`` for every catalogue case (or the given ``cases``).

    All or nothing (:mod:`refimpl.testing.golden.install`); leftovers of interrupted earlier
    writes of ``out_dir`` are cleaned up first.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder to write; it must not exist, or be empty, or (with ``force``) be a golden
        folder.
    force : bool
        Replace an existing golden folder.
    cases : str, Case or iterable of them, optional
        Write only these cases: catalogue names, and :class:`refimpl.testing.cases.Case`
        objects written as they are (e.g. a drawn case, ``drawn-<kind>-<seed>``, to be run
        by another language). Catalogue cases come first in catalogue order, then the
        others in the order given. :func:`verify` rebuilds a case that is not in the
        catalogue from its ``config["seed"]`` with a registered rebuilder
        (:func:`refimpl.testing.cases.rebuild.rebuild_case`); one that nothing rebuilds fails
        verification ("cannot be verified").

    Returns
    -------
    pathlib.Path
        The folder's absolute path.

    Raises
    ------
    FileExistsError
        If ``out_dir`` exists and is not empty (unless ``force``).
    refimpl.testing.golden.GoldenError
        If ``out_dir`` is a file, contains the current folder, or is a non-empty folder
        that is not a golden folder (``force`` replaces only golden folders).
    ValueError
        For an unknown case name, or two cases of one name.
    TypeError
        For an entry of ``cases`` that is neither a name nor a ``Case``.
    refimpl._io.OutputError
        An ``OSError`` naming ``out_dir``, if the file system refuses (permission,
        read-only, full).
    """

    out = Path(out_dir)
    catalogue, selection = _selected(cases)
    # Every name is derived from the absolute, normalised path ("DIR/." and "." have no name
    # of their own); messages keep the user's spelling.
    target = Path(os.path.abspath(out))
    if Path(os.path.abspath(os.curdir)).is_relative_to(target):
        raise GoldenError(f"--out {out}: is the current folder or contains it; replacing it "
                          f"would leave this process (and your shell) in a deleted folder: "
                          f"choose a folder outside it")
    with contextlib.ExitStack() as stack:
        with _naming_errors(out):
            if os.path.lexists(target.parent) and not target.parent.is_dir():
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            target.parent.mkdir(parents=True, exist_ok=True)
            locked = stack.enter_context(_writer_lock(target.parent))
            _recover(target, locked)
        _check_target(out, force)
        with _naming_errors(out):
            _build_and_install(target, catalogue, _command(selection))
    return target


def _selected(cases: Any) -> tuple[list[Any], list[str] | None]:
    """The cases to write and the ``--case`` selection (None: the whole catalogue)."""
    catalogue = all_cases()
    if cases is None:
        return catalogue, None
    wanted = [cases] if isinstance(cases, str | Case) else list(cases)
    bad = [item for item in wanted if not isinstance(item, str | Case)]
    if bad:
        raise TypeError(f"cases: expected case names or refimpl.testing.cases.Case objects, "
                        f"got {bad[0]!r:.80}")
    names = [item for item in wanted if isinstance(item, str)]
    known = [case.name for case in catalogue]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"cases: unknown case(s) {unknown}; known: {known}")
    given: dict[str, Case] = {}
    for item in wanted:
        if isinstance(item, Case):
            if item.name in given or item.name in names:
                raise ValueError(f"cases: the case {item.name!r} is given twice")
            given[item.name] = item
    # catalogue order; a given Case with a catalogue name stands where the catalogue's would
    chosen = [given.pop(case.name, case) for case in catalogue
              if case.name in names or case.name in given]
    chosen += list(given.values())
    all_names = [case.name for case in chosen]
    return chosen, all_names


def _build_and_install(out: Path, catalogue: list[Any], command: str) -> None:
    """Write every case, the manifest and SHA256SUMS into a temporary sibling, then install it."""
    parent = out.absolute().parent
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)
        manifest = _manifest_header(command, [case.name for case in catalogue])
        manifest["cases"] = {case.name: _write_case(case, temporary) for case in catalogue}
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False,
                          ensure_ascii=True) + "\n"
        sums = _checksums_text(manifest, _sha256(text.encode("utf-8")))
        for name, content in ((MANIFEST, text), (CHECKSUMS, sums)):
            with open(temporary / name, "x", encoding="utf-8", newline="\n") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        _install(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

