"""Verifying a golden folder against a recomputation by this refimpl.

What verify trusts: only this refimpl's catalogue. SHA256SUMS and the manifest are checksums,
not signatures - whoever can change a file can re-hash it - so every file is also recomputed
and compared by value, every manifest field is rebuilt from the catalogue and compared, the
files must be exactly the NPY bytes refimpl writes for their values, and the folder must be a
plain tree (no links, no extra files). The one thing a consistent rewrite can still do is
declare a subset (``generator.command`` with --case flags and the matching cases): verify passes
it and lists every catalogue case it does not hold.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._version import __version__
from ..cases import all_cases
from ..cases.rebuild import rebuild_case
from ..comparison import DTYPE_TOLERANCES, compare_tensor
from .format import (
    CHECKSUMS,
    COMMAND,
    MANIFEST,
    GoldenError,
    _case_tensors,
    _checksums_text,
    _command,
    _File,
    _file_name,
    _golden_array,
    _json_value,
    _manifest_header,
    _npy_bytes,
    _sha256,
)
from .install import _interrupted_backups
from .read import (
    LINK_REFUSED,
    GoldenCase,
    _load_npy_bytes,
    _read_plain,
    _safe_relative,
    read_manifest,
)
from .steps import file_key, record


@dataclass(frozen=True)
class VerifyEntry:
    """One check of :func:`verify`.

    Attributes
    ----------
    case : str
        The case, "" for folder-level files (manifest.json, SHA256SUMS).
    file : str
        The path relative to the golden folder.
    ok : bool
        Whether the check passed.
    message : str
        What was checked, or why it failed.
    """

    case: str
    file: str
    ok: bool
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """Everything :func:`verify` checked in one folder.

    Attributes
    ----------
    folder : str
        The folder, as the caller spelt it.
    entries : tuple of VerifyEntry
        Every check, in order: the folder's files, the manifest header, then each case.
    absent : tuple of str
        Catalogue cases a declared subset (written with ``--case``) does not hold.
    """

    folder: str
    entries: tuple[VerifyEntry, ...] = field(default=())
    absent: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True only if there are entries and every one passed."""
        return bool(self.entries) and all(entry.ok for entry in self.entries)

    @property
    def failures(self) -> tuple[VerifyEntry, ...]:
        """The failed entries."""
        return tuple(entry for entry in self.entries if not entry.ok)

    def __str__(self) -> str:
        """One line per entry, then a summary line."""
        lines = []
        for entry in self.entries:
            where = f"{entry.case}: " if entry.case else ""
            lines.append(f"{'ok  ' if entry.ok else 'FAIL'}  {where}{entry.file}: "
                         f"{entry.message}")
        cases = sorted({entry.case for entry in self.entries if entry.case} - set(self.absent))
        failed_cases = sorted({entry.case or "(folder)" for entry in self.failures})
        lines.append(
            f"refimpl verify {self.folder}: {'OK' if self.ok else 'FAILED'} - {len(cases)} "
            f"cases, {len(self.entries)} checks, {len(self.failures)} failed"
            + (f" (in {', '.join(failed_cases)})" if failed_cases else "")
            + (f"; a --case subset: {len(self.absent)} catalogue cases not in it"
               if self.absent else ""))
        return "\n".join(lines)


def _read_checksums(root: Path) -> tuple[dict[str, str], str, list[VerifyEntry]]:
    """SHA256SUMS as ``{path: sha256}``, its text, and a failed entry per malformed line."""
    path = root / CHECKSUMS
    try:
        text = _read_plain(path).decode("utf-8")
    except FileNotFoundError:
        return {}, "", [VerifyEntry("", CHECKSUMS, False, "missing")]
    except GoldenError as error:
        return {}, "", [VerifyEntry("", CHECKSUMS, False, str(error).replace(f"{path}: ", ""))]
    except (OSError, UnicodeDecodeError) as error:
        return {}, "", [VerifyEntry("", CHECKSUMS, False, f"cannot be read ({error})")]
    sums: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^([0-9a-f]{64}) [ *](.+)$", line)
        if not match:
            problems.append(VerifyEntry("", CHECKSUMS, False,
                                        f"line {number} is not '<sha256>  <path>': {line!r:.80}"))
            continue
        if match.group(2) in sums:
            problems.append(VerifyEntry("", CHECKSUMS, False,
                                        f"line {number} lists {match.group(2)!r} a second time"))
        sums[match.group(2)] = match.group(1)
    return sums, text, problems


def _tree(root: Path) -> tuple[set[str], list[VerifyEntry]]:
    """Every regular file below ``root`` (relative POSIX paths), and a failure for every
    symbolic link (never followed) and every other non-file, non-folder entry."""
    files: set[str] = set()
    problems: list[VerifyEntry] = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as found:
            entries = sorted(found, key=lambda entry: entry.name)
        for entry in entries:
            relative = prefix + entry.name
            if entry.is_symlink():
                problems.append(VerifyEntry("", relative, False, LINK_REFUSED))
            elif entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), relative + "/")
            elif entry.is_file(follow_symlinks=False):
                files.add(relative)
            else:
                problems.append(VerifyEntry("", relative, False,
                                            "neither a regular file nor a folder"))

    walk(root, "")
    return files, problems


def _json_kind(value: Any) -> str:
    """The JSON type of a parsed value: Python's ``2 == 2.0 == True`` hides it."""
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, np.integer)):
        return "integer"
    if isinstance(value, (float, np.floating)):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _same_json(found: Any, expected: Any) -> bool:
    """Whether a manifest value equals what this refimpl writes *as JSON*: equal values of the
    same JSON types all the way down, so that a shape ``[5.0, 3]`` or a ``schema_version``
    ``2.0`` (refused by typed readers) differs from ``[5, 3]`` and ``2``."""
    if _json_kind(found) != _json_kind(expected):
        return False
    if isinstance(expected, Mapping):
        return set(found) == set(expected) and all(_same_json(found[key], expected[key])
                                                   for key in expected)
    if isinstance(expected, (list, tuple)):
        return len(found) == len(expected) and all(
            _same_json(a, b) for a, b in zip(found, expected, strict=True))
    return bool(found == expected)


def _differs(field_name: str, found: Any, expected: Any) -> str:
    """A message: the manifest's ``field_name`` differs from what this refimpl writes."""
    return (f"{field_name} {json.dumps(found, sort_keys=True)[:120]} differs from what this "
            f"refimpl writes ({json.dumps(expected, sort_keys=True)[:120]})")


def _verify_file(root: Path, case_name: str, entry: Mapping[str, Any],
                 expected: Mapping[tuple[Any, Any], _File]
                 ) -> tuple[VerifyEntry, np.ndarray | None]:
    """Check one file against its manifest entry and against refimpl's own ``_File``."""
    relative = str(entry.get("path"))
    detail, stored = "", None
    try:
        path = _safe_relative(entry.get("path"), root, f"case {case_name!r}")
        data = _read_plain(path, root)
    except FileNotFoundError:
        problems = ["missing"]
    except GoldenError as error:
        problems = [str(error)]
    except OSError as error:
        problems = [f"cannot be read ({error})"]
    else:
        problems, detail, stored = _file_problems(path, data, entry, expected)
    if problems:
        return VerifyEntry(case_name, relative, False, "; ".join(problems)), stored
    return VerifyEntry(case_name, relative, True, f"SHA-256 ok, {detail}"), stored


def _file_problems(path: Path, data: bytes, entry: Mapping[str, Any],
                   expected: Mapping[tuple[Any, Any], _File]
                   ) -> tuple[list[str], str, np.ndarray | None]:
    """Problems of a file's bytes ``data`` against its manifest entry and the recomputation;
    also a detail for a passing file and the stored array (None if it could not be loaded)."""
    problems = []
    digest = _sha256(data)
    if digest != entry.get("sha256"):
        problems.append(f"SHA-256 {digest[:16]}... differs from the manifest's "
                        f"{str(entry.get('sha256'))[:16]}... (the file changed)")
    key = file_key(entry)
    want = expected.get(key)
    if want is None:
        problems.append(f"this refimpl computes no {key[0]} named {key[1]!r}"
                        f"{f' at step {key[2]!r}' if len(key) > 2 else ''} for the case")
        return problems, "", None
    if set(entry) != set(want.entry):
        problems.append(f"manifest fields {sorted(entry)}, this refimpl writes "
                        f"{sorted(want.entry)}")
    for name in ("path", "shape", "dtype", "bytes", "floors", "step", "still"):
        if not _same_json(entry.get(name), want.entry.get(name)):
            problems.append(_differs(f"manifest {name}", entry.get(name),
                                     want.entry.get(name)))
    if not _same_json(entry.get("bytes"), len(data)):
        problems.append(f"{len(data)} bytes, the manifest says {entry.get('bytes')!r}")
    try:
        stored = _load_npy_bytes(data, path, entry.get("dtype"), entry.get("shape"))
    except GoldenError as error:
        problems.append(str(error).replace(f"{path}: ", ""))
        return problems, "", None
    # Anything but the exact bytes refimpl writes for these values (bytes after the data, a
    # rewritten header) is a changed file even where the values compare equal.
    if data != _npy_bytes(stored):
        problems.append("not the NPY 1.0 bytes refimpl writes for its values (extra bytes or "
                        "a rewritten header)")
    value_problems, detail = _value_problems(key, want.array, stored)
    return problems + value_problems + _scalar_problems(entry, stored), detail, stored


def _value_problems(key: tuple[Any, Any], reference: np.ndarray, stored: np.ndarray
                    ) -> tuple[list[str], str]:
    """The stored values against the recomputed ``reference`` (integers exactly, floats by
    the float64 comparison rule), and a detail for a passing file."""
    if reference.dtype != stored.dtype or reference.shape != stored.shape:
        return [f"dtype {stored.dtype.str} shape {stored.shape}, this refimpl computes "
                f"{reference.dtype.str} {reference.shape}"], ""
    if reference.dtype.kind == "i":
        if not np.array_equal(reference, stored):
            return ["integer values differ from the recomputed ones"], "integer values equal"
        return [], "integer values equal"
    comparison = compare_tensor(str(key[0]), str(key[1]), reference, stored,
                                DTYPE_TOLERANCES["float64"])
    problems = [] if comparison.ok else [f"recomputed values differ: {comparison.describe()}"]
    return problems, f"max relative error {comparison.relative_error:.1e} against the recomputation"


def _scalar_problems(entry: Mapping[str, Any], stored: np.ndarray) -> list[str]:
    """A 0-d float file's value and hex against those its manifest entry repeats."""
    if stored.ndim != 0 or stored.dtype.kind != "f":
        return []
    written = _json_value(float(stored))
    return [f"the manifest's {name} {entry.get(name)!r} differs from the file's value "
            f"({written[name]!r})" for name in ("value", "hex")
            if not _same_json(entry.get(name), written[name])]


def _verify_case(root: Path, case: Any, entry: Mapping[str, Any]) -> list[VerifyEntry]:
    """Every manifest field and file of one case against its recomputation."""
    results = []
    files, want = record(case)
    expected = {file_key(file.entry): file for file in files}
    where = f"cases.{case.name}"
    if set(entry) != set(want):
        results.append(VerifyEntry(case.name, MANIFEST, False,
                                   f"{where} has the fields {sorted(entry)}; this refimpl "
                                   f"writes {sorted(want)}"))
    for name, value in want.items():
        if name not in ("files", "loss") and not _same_json(entry.get(name), value):
            results.append(VerifyEntry(case.name, MANIFEST, False,
                                       _differs(f"{where}.{name}", entry.get(name), value)))
    listed = [file_key(f) for f in entry["files"]]
    for key, file in expected.items():
        if key not in listed:
            step = f" at step {key[2]}" if len(key) > 2 else ""
            results.append(VerifyEntry(case.name, file.entry["path"], False,
                                       f"the manifest lists no file for {key[0]} {key[1]!r}"
                                       f"{step}"))
    if len(set(listed)) != len(listed):
        results.append(VerifyEntry(case.name, MANIFEST, False,
                                   f"{where}.files lists a file twice"))
    elif [key for key in listed if key in expected] != [key for key in expected
                                                        if key in listed]:
        results.append(VerifyEntry(case.name, MANIFEST, False,
                                   f"{where}.files is not in the order refimpl writes"))
    stored = {}
    for file_entry in entry["files"]:
        verdict, array = _verify_file(root, case.name, file_entry, expected)
        results.append(verdict)
        stored[file_key(file_entry)] = array
    loss = stored.get(("loss", "loss"))
    if loss is not None and loss.ndim == 0 and not _same_json(entry.get("loss"),
                                                              _json_value(float(loss))):
        results.append(VerifyEntry(case.name, MANIFEST, False,
                                   _differs(f"{where}.loss (against {case.name}/loss.npy)",
                                            entry.get("loss"), _json_value(float(loss)))))
    return results


def _verify_header(manifest: Mapping[str, Any], catalogue: list[str]) -> list[VerifyEntry]:
    """Every manifest field outside ``cases``, rebuilt from the catalogue and compared."""
    results = []
    cases = manifest["cases"]
    order = manifest.get("case_order")
    if not isinstance(order, list) or len(set(map(str, order))) != len(order) \
            or set(map(str, order)) != set(cases):
        results.append(VerifyEntry("", MANIFEST, False,
                                   f"case_order {str(order)[:120]} does not list every case of "
                                   f"the manifest exactly once"))
        order = list(cases)
    known = [name for name in catalogue if name in cases]
    if [name for name in order if name in catalogue] != known:
        results.append(VerifyEntry("", MANIFEST, False,
                                   "case_order is not the catalogue's order"))
    generator = manifest.get("generator")
    command = generator.get("command") if isinstance(generator, Mapping) else None
    subset = command != COMMAND
    want = _manifest_header(_command(order if subset else None), order)
    if set(manifest) != set(want) | {"cases"}:
        results.append(VerifyEntry("", MANIFEST, False,
                                   f"top-level fields {sorted(manifest)}; this refimpl writes "
                                   f"{sorted(set(want) | {'cases'})}"))
    for name, value in want.items():
        if name not in ("generator", "case_order") and not _same_json(manifest.get(name),
                                                                      value):
            results.append(VerifyEntry("", MANIFEST, False,
                                       _differs(name, manifest.get(name), value)))
    if not isinstance(generator, Mapping) or set(generator) != set(want["generator"]):
        results.append(VerifyEntry("", MANIFEST, False,
                                   _differs("generator", generator, want["generator"])))
        return results
    return (results + _generator_entries(generator, want["generator"])
            + _absent_entries(catalogue, cases, subset, command))


def _generator_entries(generator: Mapping[str, Any], want: Mapping[str, Any]
                       ) -> list[VerifyEntry]:
    """The manifest's ``generator`` (command, seed, versions) against what this refimpl
    writes; other versions are noted, not failed (values are compared within tolerances)."""
    results = []
    for name in ("command", "seed"):
        if not _same_json(generator[name], want[name]):
            results.append(VerifyEntry("", MANIFEST, False,
                                       _differs(f"generator.{name}", generator[name],
                                                want[name])))
    versions = (generator["refimpl"], generator["numpy"])
    if not all(isinstance(version, str) for version in versions):
        results.append(VerifyEntry("", MANIFEST, False,
                                   f"generator versions {versions} are not strings"))
    elif versions != (__version__, np.__version__):
        results.append(VerifyEntry("", MANIFEST, True,
                                   f"written by refimpl {versions[0]} with NumPy {versions[1]};"
                                   f" this is refimpl {__version__} with NumPy "
                                   f"{np.__version__} (values compared within the float64 "
                                   f"tolerances)"))
    return results


def _absent_entries(catalogue: list[str], cases: Mapping[str, Any], subset: bool,
                    command: Any) -> list[VerifyEntry]:
    """Catalogue cases the folder lacks: noted for a declared subset, failed otherwise."""
    results = []
    for name in catalogue:
        if name in cases:
            continue
        if subset:
            results.append(VerifyEntry(name, "-", True,
                                       f"{ABSENT} (written with --case: "
                                       f"{len(cases)} of the {len(catalogue)} catalogue "
                                       f"cases); nothing to compare"))
        else:
            results.append(VerifyEntry(name, f"{name}/", False,
                                       f"missing: the manifest's command {command!r} writes "
                                       f"every catalogue case, and this folder has no {name!r}"))
    return results


ABSENT = "not in this golden folder"


def verify(golden_dir: str | os.PathLike) -> VerifyReport:
    """Recompute every case of a golden folder and compare it with what this refimpl writes.

    Every file is compared by SHA-256, by its exact NPY bytes and by value, and every
    manifest field is rebuilt from the catalogue and compared.

    Parameters
    ----------
    golden_dir : str or os.PathLike
        The golden folder (written by ``refimpl golden --out DIR``).

    Returns
    -------
    VerifyReport
        One entry per check; ``report.ok`` only if every entry passed. Never raises for a
        bad folder: every problem is an entry of the report naming the file.
    """
    root = Path(golden_dir)
    folder = str(golden_dir)
    if not root.is_dir():
        return VerifyReport(folder, (VerifyEntry("", folder, False, _not_a_folder(root, folder)),))
    try:
        manifest = read_manifest(root)
        manifest_sum = _sha256(_read_plain(root / MANIFEST))
    except (GoldenError, OSError) as error:
        return VerifyReport(folder, (VerifyEntry("", MANIFEST, False,
                                                 str(error).replace(f"{root / MANIFEST}: ", "")),))
    files_on_disk, entries = _tree(root)
    listed = {str(f.get("path")): f.get("sha256") for entry in manifest["cases"].values()
              for f in entry["files"]}
    entries += _checksum_entries(root, manifest, manifest_sum, listed)
    for path in sorted(files_on_disk - set(listed) - {MANIFEST, CHECKSUMS}):
        entries.append(VerifyEntry("", path, False, "unexpected file (not in the manifest)"))
    entries += _verify_cases(root, manifest)
    absent = tuple(entry.case for entry in entries
                   if entry.ok and entry.message.startswith(ABSENT))
    return VerifyReport(folder, tuple(entries), absent)


def _not_a_folder(root: Path, folder: str) -> str:
    """Why ``root`` (spelt ``folder`` by the user) cannot be verified, naming a copy an
    interrupted write set aside."""
    backups = _interrupted_backups(root)
    if backups and not os.path.lexists(root):
        return (f"missing; an interrupted 'refimpl golden --force' set the previous copy "
                f"aside as {backups[-1]}: run 'refimpl golden --out {folder} --force' to "
                f"put it back and replace it")
    return "not a folder"


def _checksum_entries(root: Path, manifest: Mapping[str, Any], manifest_sum: str,
                      listed: Mapping[str, Any]) -> list[VerifyEntry]:
    """SHA256SUMS against the manifest's hash and file list, line by line and as text."""
    sums, sums_text, problems = _read_checksums(root)
    entries = list(problems)
    if not sums:
        return entries   # SHA256SUMS is missing or unreadable: already reported
    if sums.get(MANIFEST) != manifest_sum:
        # Nothing else records the manifest's hash: either file may be the changed one.
        entries.append(VerifyEntry("", MANIFEST, False,
                                   f"SHA-256 {manifest_sum[:16]}... differs from its line in "
                                   f"{CHECKSUMS} (one of the two changed)"))
        entries.append(VerifyEntry("", CHECKSUMS, False,
                                   f"its line for {MANIFEST} ({str(sums.get(MANIFEST))[:16]}...)"
                                   f" does not match {MANIFEST} (one of the two changed)"))
    else:
        entries.append(VerifyEntry("", MANIFEST, True, f"SHA-256 matches {CHECKSUMS}"))
    # SHA256SUMS and the manifest must agree line by line (sha256sum -c trusts the first).
    before = len(entries)
    for path in sorted(set(sums) - set(listed) - {MANIFEST}):
        entries.append(VerifyEntry("", CHECKSUMS, False,
                                   f"lists {path!r}, which the manifest does not"))
    for path, digest in listed.items():
        if sums.get(path) != digest:
            entries.append(VerifyEntry("", CHECKSUMS, False,
                                       f"its line for {path!r} ({str(sums.get(path))[:16]}"
                                       f"...) differs from the manifest's SHA-256 "
                                       f"({str(digest)[:16]}...)"))
    written = _checksums_text(manifest, manifest_sum)
    if len(entries) == before and not problems and written is not None \
            and sums_text != written:
        entries.append(VerifyEntry("", CHECKSUMS, False,
                                   "not the text refimpl writes for this manifest (line "
                                   "order or format)"))
    return entries


#: The verdict on a case that neither the catalogue nor a rebuilder can reproduce.
NOT_REBUILT = ("cannot be verified: no case of this name in this refimpl's catalogue, and no "
               "registered rebuilder (refimpl.testing.cases.rebuild.REBUILDERS) recognises its "
               "name")


def _rebuilt(name: str, entry: Any) -> Any:
    """A case outside the catalogue rebuilt from its stored ``config["seed"]`` (None if no
    rebuilder applies); the rebuilt case's manifest entry is then compared field by field."""
    config = entry.get("config") if isinstance(entry, Mapping) else None
    return rebuild_case(name, config if isinstance(config, Mapping) else {})


def _verify_cases(root: Path, manifest: Mapping[str, Any]) -> list[VerifyEntry]:
    """The manifest header, then every case in the manifest's order, against the catalogue."""
    catalogue = {case.name: case for case in all_cases()}
    entries = _verify_header(manifest, list(catalogue))
    order = manifest.get("case_order")
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(manifest["cases"]):
        order = list(manifest["cases"])
    for name in order:
        entry = manifest["cases"][name]
        try:
            case = catalogue.get(name) or _rebuilt(name, entry)
            if case is None:
                entries.append(VerifyEntry(name, MANIFEST, False, NOT_REBUILT))
                continue
            entries += _verify_case(root, case, entry)
        except Exception as error:  # noqa: BLE001 - one broken case must not hide the others
            entries.append(VerifyEntry(name, MANIFEST, False,
                                       f"could not be verified: {type(error).__name__}: {error}"))
    return entries


def check_stored_case(golden_dir: str | os.PathLike, stored: GoldenCase, case: Any,
                      manifest: Mapping[str, Any]) -> None:
    """Refuse a case read from a golden folder unless this refimpl reproduces it.

    What a comparison with a golden case relies on, beyond each file's SHA-256 in the
    manifest (:func:`~refimpl.testing.golden.load_case` checked those): ``SHA256SUMS``
    agrees with the manifest (its line for ``manifest.json`` and for every file of the case),
    the case holds exactly the tensors of ``case`` (none missing, none extra), and every stored
    tensor equals ``case``'s recomputation (integers exactly, floats by the float64 rule of
    :mod:`refimpl.testing`). A manifest and files rewritten consistently (negated gradients
    re-hashed, an entry dropped) are refused by the recomputation however the hashes were
    redone.

    Parameters
    ----------
    golden_dir : str or os.PathLike
        The golden folder.
    stored : GoldenCase
        The case as read from it.
    case : refimpl.testing.cases.Case
        The same case rebuilt by this refimpl (the catalogue's, or a registered rebuilder's).
    manifest : mapping
        The folder's manifest (:func:`~refimpl.testing.golden.read_manifest`).

    Raises
    ------
    refimpl.testing.golden.GoldenError
        Naming the file (``SHA256SUMS``, ``manifest.json`` or the tensor's file) and what
        differs.
    """
    root = Path(golden_dir)
    _check_checksums_of(root, manifest, stored.name)
    groups = {"input": stored.inputs, "parameter": stored.params, "output": stored.outputs,
              "loss": {"loss": np.asarray(stored.loss, dtype=np.float64)},
              "gradient": stored.grads, "direction": stored.direction, "hvp": stored.hvp}
    computed = _case_tensors(case)
    if manifest.get("schema_version") == 2:   # written before cases stored a direction and H v
        computed = [tensor for tensor in computed if tensor.role not in ("direction", "hvp")]
    wanted = {(tensor.role, tensor.name) for tensor in computed}
    held = {(role, name) for role, tensors in groups.items() for name in tensors}
    where = f"{root / MANIFEST}: case {stored.name!r}"
    missing, extra = sorted(wanted - held), sorted(held - wanted)
    if missing:
        raise GoldenError(f"{where} lists no file for {_tensors(missing)}, which this refimpl "
                          f"computes for the case; every tensor of the case is compared")
    if extra:
        raise GoldenError(f"{where} lists {_tensors(extra)}, which this refimpl does not "
                          f"compute for the case")
    for tensor in computed:
        value = groups[tensor.role][tensor.name]
        reference = _golden_array(tensor.array, f"case {stored.name!r}, {tensor.role} "
                                                f"{tensor.name!r}")
        problems, _ = _value_problems((tensor.role, tensor.name), reference, np.asarray(value))
        if problems:
            path = root / stored.name / _file_name(tensor.role, tensor.name)
            raise GoldenError(f"{path}: the stored {tensor.role} {tensor.name!r} is not this "
                              f"refimpl's for case {stored.name!r} ({'; '.join(problems)}); "
                              f"the folder was changed (refimpl verify {golden_dir} says "
                              f"where) or written by another refimpl")


def _tensors(keys: list[tuple[str, str]]) -> str:
    """``[(role, name), ...]`` for a message: "gradient 'fc1.weight', output 'out'"."""
    return ", ".join(f"{role} {name!r}" for role, name in keys)


def _check_checksums_of(root: Path, manifest: Mapping[str, Any], name: str) -> None:
    """``SHA256SUMS`` holds the manifest's SHA-256 and, for every file of case ``name``, the
    SHA-256 the manifest gives it; else a :class:`GoldenError` naming the file."""
    sums, _, problems = _read_checksums(root)
    if problems:
        raise GoldenError(f"{root / CHECKSUMS}: {problems[0].message}")
    manifest_sum = _sha256(_read_plain(root / MANIFEST))
    if sums.get(MANIFEST) != manifest_sum:
        raise GoldenError(f"{root / MANIFEST}: SHA-256 {manifest_sum[:16]}... differs from its "
                          f"line in {CHECKSUMS} ({str(sums.get(MANIFEST))[:16]}...): one of the "
                          f"two changed")
    for entry in manifest["cases"][name]["files"]:
        path, digest = str(entry.get("path")), entry.get("sha256")
        if sums.get(path) != digest:
            raise GoldenError(f"{root / CHECKSUMS}: its line for {path!r} "
                              f"({str(sums.get(path))[:16]}...) differs from the manifest's "
                              f"SHA-256 ({str(digest)[:16]}...): one of the two changed")
