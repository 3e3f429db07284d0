"""Golden test vectors: every built-in case as ``.npy`` files any language can read.

``refimpl golden --out DIR`` writes, for every case of :func:`refimpl.testing.cases.all_cases`::

    DIR/manifest.json              what everything is (see below)
    DIR/SHA256SUMS                 `cd DIR && sha256sum -c SHA256SUMS` checks every file
    DIR/<case>/input.<name>.npy    x, y (or xa, ya, xb, yb for a tied pair)
    DIR/<case>/parameter.<name>.npy  the point: every unique parameter
    DIR/<case>/output.<name>.npy   the forward outputs (e.g. output.out.npy, the logits)
    DIR/<case>/loss.npy            the loss, a 0-d array
    DIR/<case>/gradient.<name>.npy dLoss/d<name>, shaped like parameter.<name>.npy

File format: NPY version 1.0, little-endian float64 (``<f8``) or int64 (``<i8``), C order,
never pickled. ``<name>`` is the parameter name (``fc1.weight``) with every character other
than ``A-Z a-z 0-9 . _ - ~`` percent-encoded (``A:fc1.weight`` -> ``A%3Afc1.weight``); the
manifest maps each file to its name anyway.

``manifest.json`` (sorted keys, no NaN/Inf) holds the schema version, the refimpl and NumPy
versions, the generating command, the comparison rule and default tolerances per dtype, and
per case: kind, model configuration (``Sequential.from_config`` rebuilds it; enough for any
other implementation to build the same model), seed, layouts and conventions, the loss as
a decimal and as ``float.hex()``, and every file with role, name, shape, dtype, size and
SHA-256.

Writes are all-or-nothing and reproducible: everything is written (and fsynced) into a
temporary sibling folder ``.DIR.tmp-<pid>-<random>``, then switched into place; an existing
non-empty folder is refused unless ``force=True``, and even then it is replaced only after the
new folder is complete (and only if it is a golden folder). On Linux the switch is one
``renameat2(RENAME_EXCHANGE)``, so DIR always exists; writers of one folder take turns (a lock
on its parent folder), and each removes what killed writers left behind, or puts back an old
copy an interrupted replacement had set aside (the crash states are listed at
:func:`_install`). Two runs with the same refimpl and NumPy give byte-identical files.

``refimpl verify DIR`` trusts nothing in DIR: it recomputes every case and compares every file
by SHA-256, by its exact NPY bytes and by value (the float64 rule of :mod:`refimpl.testing`),
rebuilds every manifest field from the catalogue, and fails on extra files and on symbolic
links (a golden folder is a plain tree; DIR itself may be a link). ``.npy`` headers are
checked before anything is loaded, so an object (pickle) array is refused without ever being
unpickled. A folder written with ``--case`` passes and says which catalogue cases it lacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:
    import fcntl
except ImportError:   # not POSIX: writers are told apart by the pid in their names
    fcntl = None  # type: ignore[assignment]

from .._io import OutputError
from .._version import __version__
from ..nn.base import LAYER_TYPES
from ..nn.losses import LOSS_TYPES
from .cases import all_cases
from .comparison import DTYPE_TOLERANCES, RESOLVED_FRACTION, compare_tensor
from .resolution import case_floors

__all__ = [
    "write", "verify", "read_manifest", "select_cases", "load_case", "load_npy",
    "GoldenCase", "GoldenError", "VerifyReport", "VerifyEntry", "SCHEMA_VERSION", "FORMAT",
]

FORMAT = "refimpl-golden"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
COMMAND = "refimpl golden --out DIR"

#: The only array dtypes a golden folder may hold (little-endian, fixed width, no objects).
ALLOWED_DTYPES = {"<f8": np.dtype("<f8"), "<i8": np.dtype("<i8")}

#: Order of the files of a case in the manifest.
ROLES = ("input", "parameter", "output", "loss", "gradient")

COMPARISON_RULE = (
    "per compared tensor (loss, gradient, output), with scale = max_i |expected_i|, "
    "floor = the file entry's floors[dtype] (how finely any implementation in that dtype can "
    "resolve the tensor at this point) and limit = rtol * scale + floor: FAIL if "
    "max_i |actual_i - expected_i| > limit; otherwise, if expected and floor are both exactly "
    "zero, PASS only when actual is exactly zero; otherwise INCONCLUSIVE (never a pass: no "
    "implementation can be judged there in that dtype) if limit >= scale * "
    f"{RESOLVED_FRACTION:.17g}; otherwise PASS")

#: Significant digits of a stored floor: a floor is a rounding-error estimate, so three digits
#: say all it means, and a last-bit difference in the recomputation cannot change them.
FLOOR_DIGITS = 3

#: Layouts and conventions shared by every case (per-case notes are added from the layer and
#: loss types a case uses).
CONVENTIONS = {
    "arrays": "batch first: dense inputs (N, D), images (N, C, H, W) (NCHW); C order",
    "parameter_names": "'<layer>.weight' / '<layer>.bias' as in a PyTorch state_dict; the "
                       "two models of a tied pair are prefixed 'A:' and 'B:'",
    "dense": "weight (out_features, in_features), bias (out_features,): "
             "y = x @ weight.T + bias (torch.nn.Linear)",
    "conv2d": "weight (out_channels, in_channels / groups, kH, kW), cross-correlation, output "
              "size floor((H + 2 padding - dilation (k - 1) - 1) / stride) + 1 "
              "(torch.nn.Conv2d)",
    "losses": "SoftmaxCrossEntropy: int64 class labels y (N,), mean over the batch "
              "(torch.nn.CrossEntropyLoss()); MSE: mean over all elements "
              "(torch.nn.MSELoss())",
    "loss": "loss.npy is the total scalar loss the gradients differentiate (for a tied pair "
            "L_A + L_B + penalty)",
    "sharing": "a shared slot is not stored: only unique parameters have files, and the "
               "gradient of a unique parameter is the sum over all its uses (a transposed "
               "use's gradient transposed back)",
    "gradients": "gradient.<name>.npy = dLoss/d<name>, the shape of parameter.<name>.npy",
}


class GoldenError(ValueError):
    """A golden folder (or one of its files) is missing, malformed or unsafe; names the file."""


# --- writing ----------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    """NPY 1.0 bytes of ``array`` (already <f8 or <i8, C order); deterministic for a NumPy."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def _golden_array(value: Any, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        target = ALLOWED_DTYPES["<f8"]
    elif array.dtype.kind in "iu":
        target = ALLOWED_DTYPES["<i8"]
    else:
        raise GoldenError(f"{what}: cannot store dtype {array.dtype} (only real floats and "
                          f"integers)")
    # np.array, not np.ascontiguousarray: the latter turns a 0-d loss into shape (1,).
    array = np.array(array, dtype=target, order="C")
    if target.kind == "f" and not np.isfinite(array).all():
        raise GoldenError(f"{what}: holds NaN or Inf; golden values must be finite")
    return array


def _file_stem(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _json_value(value: float) -> dict[str, Any]:
    return {"value": float(value), "hex": float(value).hex()}


def _doc_summary(cls: type) -> str | None:
    doc = cls.__doc__ or ""
    # dataclasses invent a docstring "Name(field, ...)" for classes without one.
    if not doc.strip() or doc.startswith(f"{cls.__name__}("):
        return None
    return " ".join(doc.strip().split("\n\n")[0].split())


def _types_in(config: Any) -> list[str]:
    """Every ``"type"`` value in a (nested) configuration, in order of first appearance."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            kind = node.get("type")
            if isinstance(kind, str) and kind not in found:
                found.append(kind)
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(config)
    return found


def _case_conventions(config: Mapping[str, Any]) -> dict[str, str]:
    """A one-line description of each layer / loss type the case's configuration uses."""

    notes = {}
    for kind in _types_in(config):
        cls = LAYER_TYPES.get(kind) or LOSS_TYPES.get(kind)
        summary = _doc_summary(cls) if cls is not None else None
        if summary:
            notes[kind] = summary
    return notes


def _normalised(config: Any) -> Any:
    """The configuration as JSON sees it (tuples become lists); raises on NaN/Inf."""
    return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))


def _tolerances_json() -> dict[str, dict[str, float]]:
    return {name: {"rtol": tol.rtol, "atol": tol.atol} for name, tol in DTYPE_TOLERANCES.items()}


class _Tensor(NamedTuple):
    role: str
    name: str
    array: np.ndarray


def _case_tensors(case: Any) -> list[_Tensor]:
    """Every array of a case in the fixed file order, computed by refimpl."""
    loss, grads = case.loss_and_grads(case.params)
    outputs = case.outputs(case.params)
    loss_array = np.asarray(loss)
    if loss_array.dtype.kind == "c" or any(np.asarray(g).dtype.kind == "c"
                                           for g in grads.values()):
        raise GoldenError(f"case {case.name!r}: complex results for real parameters")
    if list(grads) != list(case.params):
        raise GoldenError(f"case {case.name!r}: gradient keys {list(grads)} differ from the "
                          f"parameter keys {list(case.params)}")
    tensors = [_Tensor("input", name, value) for name, value in case.inputs.items()]
    tensors += [_Tensor("parameter", name, value) for name, value in case.params.items()]
    tensors += [_Tensor("output", name, value) for name, value in outputs.items()]
    tensors.append(_Tensor("loss", "loss", loss_array.reshape(())))
    tensors += [_Tensor("gradient", name, value) for name, value in grads.items()]
    return tensors


def _file_name(role: str, name: str) -> str:
    return "loss.npy" if role == "loss" else f"{role}.{_file_stem(name)}.npy"


_CASE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class _File(NamedTuple):
    """One file of a case as refimpl writes it: its manifest entry, array and NPY bytes."""

    entry: dict[str, Any]
    array: np.ndarray
    data: bytes


def _case_files(case: Any) -> list[_File]:
    """Every file of one case, computed (nothing written), in manifest order."""
    if not _CASE_NAME.match(case.name):
        raise GoldenError(f"case {case.name!r}: a golden case name must match [a-z0-9-]+")
    files: list[_File] = []
    seen: dict[str, str] = {}
    floors = {dtype: case_floors(case, dtype) for dtype in DTYPE_TOLERANCES}
    for tensor in _case_tensors(case):
        array = _golden_array(tensor.array, f"case {case.name!r}, {tensor.role} "
                                            f"{tensor.name!r}")
        file_name = _file_name(tensor.role, tensor.name)
        # Case-insensitive file systems (macOS, Windows) must not merge two files.
        if file_name.lower() in seen:
            raise GoldenError(f"case {case.name!r}: {tensor.name!r} and {seen[file_name.lower()]!r}"
                              f" map to the same file name {file_name!r}")
        seen[file_name.lower()] = tensor.name
        data = _npy_bytes(array)
        entry = {
            "path": f"{case.name}/{file_name}", "role": tensor.role, "name": tensor.name,
            "shape": list(array.shape), "dtype": array.dtype.str, "bytes": len(data),
            "sha256": _sha256(data),
        }
        if array.ndim == 0 and array.dtype.kind == "f":
            entry.update(_json_value(array.item()))
        if tensor.role in ("output", "loss", "gradient"):
            key = (tensor.role, tensor.name)
            entry["floors"] = {dtype: float(f"{by_tensor[key]:.{FLOOR_DIGITS}g}")
                               for dtype, by_tensor in floors.items()}
        files.append(_File(entry, array, data))
    return files


def _case_entry(case: Any, files: list[_File]) -> dict[str, Any]:
    """The manifest entry of one case whose files are ``files``."""
    loss = next(file.array.item() for file in files if file.entry["role"] == "loss")
    config = _normalised(case.config)
    return {
        "kind": case.kind,
        "config": config,
        "seed": config.get("seed") if isinstance(config, Mapping) else None,
        "conventions": _case_conventions(config),
        "tolerances": _tolerances_json(),
        "loss": _json_value(loss),
        "inputs": list(case.inputs),
        "parameters": list(case.params),
        "files": [file.entry for file in files],
    }


def _write_case(case: Any, folder: Path) -> dict[str, Any]:
    """Write one case's files into ``folder / case.name``; return its manifest entry."""
    files = _case_files(case)
    case_folder = folder / case.name
    case_folder.mkdir()
    for file in files:
        with open(folder / file.entry["path"], "xb") as handle:
            handle.write(file.data)
            handle.flush()
            os.fsync(handle.fileno())
    return _case_entry(case, files)


def _command(case_names: list[str] | None) -> str:
    """The generating command: every case, or a selection named by ``--case`` flags."""
    return COMMAND + "".join(f" --case {name}" for name in case_names or ())


def _manifest_header(command: str, case_order: list[str]) -> dict[str, Any]:
    """Everything in the manifest but the cases (so that verify can rebuild it)."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generator": {
            "refimpl": __version__, "numpy": np.__version__, "command": command,
            "seed": "each case is built by refimpl.testing.cases from its own fixed seed, "
                    "recorded as cases.<name>.seed (null when the case has none)",
        },
        "npy": {"version": "1.0", "dtypes": sorted(ALLOWED_DTYPES), "order": "C",
                "pickle": False},
        "comparison_rule": COMPARISON_RULE,
        "tolerances": _tolerances_json(),
        "conventions": CONVENTIONS,
        "case_order": list(case_order),
    }


def _looks_like_golden(folder: Path) -> bool:
    try:
        with open(folder / MANIFEST, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == FORMAT


def _check_target(out: Path, force: bool) -> None:
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


# --- replacing a folder atomically --------------------------------------------------------------
#
# A writer of DIR holds an exclusive lock (flock) on DIR's parent folder from before it looks
# at DIR until it has installed its copy and cleaned up, so writers of one folder run one after
# the other. It builds the new copy in `.DIR.tmp-<pid>-<random>` and installs it:
#
# * DIR absent or empty: one rename(2) (POSIX replaces an empty folder atomically).
# * DIR a golden folder (--force): on Linux, renameat2(RENAME_EXCHANGE) swaps the two names
#   atomically, then the temporary name (now the old copy) is removed. DIR always exists.
#   Elsewhere, or on a file system without the call, two renames: DIR -> `.DIR.old-<pid>-<r>`,
#   then the temporary -> DIR.
#
# Crash states (SIGKILL, power loss), and what the next writer of DIR does under the lock:
#
# * while building: DIR untouched (absent or the old copy); `.DIR.tmp-*` partial -> removed.
# * after the exchange, before the removal ends: DIR is the new copy; `.DIR.tmp-*` holds all or
#   part of the old one -> removed.
# * (two renames only) between them: DIR absent, `.DIR.old-*` the complete old copy -> renamed
#   back to DIR (verify reports DIR missing and names the backup until then). After the second
#   rename: DIR new, `.DIR.old-*` the old copy -> removed.
#
# Under the lock every `.DIR.tmp-*` / `.DIR.old-*` is a dead writer's: a live one holds the
# lock. Without flock (not POSIX) the pid in the name is checked instead, and a leftover of a
# live process is left alone.

_LOCKING = fcntl is not None


def _leftover_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(out.name)}\.(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # e.g. EPERM: the process exists
        return True
    return True


def _leftovers(out: Path, locked: bool) -> list[tuple[str, Path]]:
    """``(kind, path)`` of every leftover of a dead writer of ``out``, oldest first."""
    pattern = _leftover_pattern(out)
    parent = out.absolute().parent
    found = []
    for entry in os.scandir(parent):
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if not locked and _process_alive(int(match.group("pid"))):
            continue
        found.append((entry.stat(follow_symlinks=False).st_mtime, match.group("kind"),
                      parent / entry.name))
    return [(kind, path) for _, kind, path in sorted(found)]


def _empty_or_missing(folder: Path) -> bool:
    if not os.path.lexists(folder):
        return True
    return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())


def _recover(out: Path, locked: bool) -> None:
    """Undo what interrupted writers of ``out`` left: put back an old copy that was moved
    aside when ``out`` is missing, and remove every other leftover."""
    for kind, path in _leftovers(out, locked):
        if kind == "old" and _empty_or_missing(out) and _looks_like_golden(path):
            os.rename(path, out)
        else:
            shutil.rmtree(path)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system has no such call, so that the caller falls back."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):   # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                 _RENAME_EXCHANGE) == 0:
        return True
    number = ctypes.get_errno()
    if number in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(number, os.strerror(number), str(second))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _install(temporary: Path, out: Path) -> None:
    """Put the complete ``temporary`` folder in the place of ``out`` (see the crash states
    above); an old ``out`` survives any failure before the switch."""
    if _empty_or_missing(out):
        os.rename(temporary, out)
    elif _exchange(temporary, out):
        shutil.rmtree(temporary)   # the old copy, now under the temporary name
    else:
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-",
                                       dir=out.absolute().parent))
        try:
            os.rename(out, backup)     # replaces the empty folder mkdtemp made
        except BaseException:
            os.rmdir(backup)
            raise
        try:
            os.rename(temporary, out)
        except BaseException:
            os.rename(backup, out)
            raise
        shutil.rmtree(backup)


@contextlib.contextmanager
def _writer_lock(parent: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the folder ``parent`` (released when the process dies, so a
    killed writer never blocks the next one); yields whether a lock is held."""
    if not _LOCKING:
        yield False
        return
    descriptor = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)


def write(out_dir: str | os.PathLike, force: bool = False,
          cases: Iterable[str] | None = None) -> Path:
    """Write the golden folder ``out_dir`` for every catalogue case (or the named ``cases``).

    Raises ``FileExistsError`` if ``out_dir`` exists and is not empty (unless ``force``), and
    :class:`GoldenError` if it is a file, or if ``force`` is asked for a non-empty folder that
    is not a golden folder; :class:`refimpl._io.OutputError` (an ``OSError`` naming
    ``out_dir``) if the file system refuses (permission, read-only, full). Leftovers of
    interrupted earlier writes of ``out_dir`` are cleaned up first. Returns the folder's
    absolute path.
    """

    out = Path(out_dir)
    catalogue = all_cases()
    selection = None
    if cases is not None:
        wanted = [cases] if isinstance(cases, str) else list(cases)
        known = [case.name for case in catalogue]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"cases: unknown case(s) {unknown}; known: {known}")
        catalogue = [case for case in catalogue if case.name in wanted]
        selection = [case.name for case in catalogue]   # catalogue order, as case_order
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


@contextlib.contextmanager
def _naming_errors(out: Path) -> Iterator[None]:
    """Turn an ``OSError`` into :class:`OutputError` naming ``out`` (the user's path, not a
    temporary's)."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        number = error.errno if error.errno is not None else errno.EIO
        raise OutputError(number, error.strerror or os.strerror(number), str(out)) from None


def _build_and_install(out: Path, catalogue: list[Any], command: str) -> None:
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
        lines = [f"{_sha256(text.encode('utf-8'))}  {MANIFEST}"]
        for name in manifest["case_order"]:
            lines += [f"{entry['sha256']}  {entry['path']}"
                      for entry in manifest["cases"][name]["files"]]
        for name, content in ((MANIFEST, text), (CHECKSUMS, "\n".join(lines) + "\n")):
            with open(temporary / name, "x", encoding="utf-8", newline="\n") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        _install(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


# --- reading ----------------------------------------------------------------------------------

#: Why a symbolic link inside a golden folder is refused: the folder is a plain tree, and a
#: link would let the checked file be something other than the file that was hashed (or a
#: file outside the folder).
LINK_REFUSED = "a symbolic link; a golden folder is a plain tree and links are never followed"


def _safe_relative(path: Any, root: Path, what: str) -> Path:
    """``root / path`` for a manifest path that stays inside ``root`` (no '..', not absolute)."""
    if not isinstance(path, str) or not path:
        raise GoldenError(f"{what}: expected a relative file path, got {path!r}")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts) \
            or re.match(r"^[A-Za-z]:", path):
        raise GoldenError(f"{what}: unsafe path {path!r} (must stay inside the golden folder)")
    return root.joinpath(*parts)


def _read_plain(path: Path, root: Path | None = None) -> bytes:
    """The bytes of the regular file ``path``, refusing a symbolic link at ``path`` or at any
    folder between ``root`` and it (:class:`GoldenError`); ``FileNotFoundError`` if absent.

    The file is opened once (``O_NOFOLLOW``) and everything (hash, header, values) is taken
    from the bytes read, so that nothing can be swapped between the checks and the load.
    """
    if root is not None:
        current = root
        for part in path.relative_to(root).parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise GoldenError(f"{current}: {LINK_REFUSED}")
    if path.is_symlink():
        raise GoldenError(f"{path}: {LINK_REFUSED}")
    # O_NONBLOCK: opening a FIFO planted under a golden name must not hang the reader.
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:   # became a link after the check above
            raise GoldenError(f"{path}: {LINK_REFUSED}") from None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise GoldenError(f"{path}: not a regular file")
        return handle.read()


def read_manifest(golden_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``golden_dir/manifest.json``; :class:`GoldenError` names the file."""
    path = Path(golden_dir) / MANIFEST
    try:
        text = _read_plain(path).decode("utf-8")
    except FileNotFoundError:
        raise GoldenError(f"{path}: missing (not a golden folder?)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GoldenError(f"{path}: cannot be read ({error})") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise GoldenError(f"{path}: does not parse as JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise GoldenError(f"{path}: not a refimpl golden manifest (expected \"format\": "
                          f"\"{FORMAT}\")")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise GoldenError(f"{path}: schema_version {document.get('schema_version')!r}; this "
                          f"refimpl reads version {SCHEMA_VERSION}")
    cases = document.get("cases")
    if not isinstance(cases, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("files"), list)
            and all(isinstance(f, dict) for f in entry["files"]) for entry in cases.values()):
        raise GoldenError(f"{path}: \"cases\" must map case names to entries with a \"files\" "
                          f"list")
    for name in cases:
        if not isinstance(name, str) or not _CASE_NAME.match(name):
            raise GoldenError(f"{path}: invalid case name {name!r}")
    return document


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a golden manifest")


def select_cases(manifest: Mapping[str, Any], case: str | Iterable[str] | None) -> list[str]:
    """Case names of ``manifest`` selected by a name, an iterable of names, or None (all)."""
    available = list(manifest["cases"])
    if case is None:
        return available
    wanted = [case] if isinstance(case, str) else list(case)
    unknown = [name for name in wanted if name not in manifest["cases"]]
    if unknown:
        raise ValueError(f"case: unknown case(s) {unknown}; this golden folder has {available}")
    return wanted


def _read_header(data: bytes, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    handle = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(handle)
    except Exception as error:  # noqa: BLE001 - a corrupt header raises ValueError,
        # SyntaxError or tokenize.TokenError from NumPy's parser: all mean "not valid"
        raise GoldenError(f"{path}: not a valid .npy file ({type(error).__name__}: "
                          f"{error})") from None
    raise GoldenError(f"{path}: unsupported .npy format version {version}")


def _load_npy_bytes(data: bytes, path: Path, dtype: str | None,
                    shape: Iterable[int] | None) -> np.ndarray:
    header_shape, fortran_order, header_dtype = _read_header(data, path)
    if header_dtype.hasobject or header_dtype.str not in ALLOWED_DTYPES:
        raise GoldenError(f"{path}: dtype {header_dtype.str!r} refused (golden files hold only "
                          f"{sorted(ALLOWED_DTYPES)}; object arrays would need pickle and are "
                          f"never loaded)")
    if fortran_order:
        raise GoldenError(f"{path}: Fortran order refused (golden files are C order)")
    if dtype is not None and header_dtype.str != dtype:
        raise GoldenError(f"{path}: dtype {header_dtype.str!r}, the manifest says {dtype!r}")
    if shape is not None and tuple(header_shape) != tuple(shape):
        raise GoldenError(f"{path}: shape {tuple(header_shape)}, the manifest says "
                          f"{tuple(shape)}")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - e.g. a truncated data section
        raise GoldenError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None


def load_npy(path: str | os.PathLike, dtype: str | None = None,
             shape: Iterable[int] | None = None) -> np.ndarray:
    """Load a golden ``.npy`` safely: the header is read and checked *first* (dtype ``<f8``
    or ``<i8``, C order, and ``dtype`` / ``shape`` if given); only then is the data read, with
    ``allow_pickle=False``. An object (pickle) array is refused without being loaded, and so
    is a symbolic link (:class:`GoldenError`)."""
    path = Path(path)
    return _load_npy_bytes(_read_plain(path), path, dtype, shape)


@dataclass(frozen=True)
class GoldenCase:
    """One case read from a golden folder (every file checked against its SHA-256)."""

    name: str
    kind: str
    config: dict[str, Any]
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    loss: float
    grads: dict[str, np.ndarray]


def _checked_file(root: Path, entry: Mapping[str, Any], what: str) -> tuple[Path, bytes]:
    path = _safe_relative(entry.get("path"), root, what)
    try:
        data = _read_plain(path, root)
    except FileNotFoundError:
        raise GoldenError(f"{path}: missing ({what})") from None
    digest = _sha256(data)
    if digest != entry.get("sha256"):
        raise GoldenError(f"{path}: SHA-256 {digest} differs from the manifest's "
                          f"{entry.get('sha256')} (the file changed)")
    return path, data


def load_case(golden_dir: str | os.PathLike, name: str,
              manifest: Mapping[str, Any] | None = None) -> GoldenCase:
    """Read case ``name`` of a golden folder, checking every file's SHA-256 and header (a
    symbolic link anywhere below ``golden_dir`` is refused)."""
    root = Path(golden_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    if name not in manifest["cases"]:
        raise ValueError(f"name: unknown case {name!r}; this golden folder has "
                         f"{list(manifest['cases'])}")
    entry = manifest["cases"][name]
    groups: dict[str, dict[str, np.ndarray]] = {role: {} for role in ROLES}
    for file_entry in entry["files"]:
        role = file_entry.get("role")
        if role not in groups:
            raise GoldenError(f"{root / MANIFEST}: case {name!r}: unknown role {role!r}")
        path, data = _checked_file(root, file_entry, f"case {name!r}")
        groups[role][file_entry.get("name")] = _load_npy_bytes(
            data, path, file_entry.get("dtype"), file_entry.get("shape"))
    if "loss" not in groups["loss"]:
        raise GoldenError(f"{root / MANIFEST}: case {name!r} has no loss file")
    return GoldenCase(name, entry.get("kind", ""), entry.get("config", {}), groups["input"],
                      groups["parameter"], groups["output"], float(groups["loss"]["loss"]),
                      groups["gradient"])


# --- verifying --------------------------------------------------------------------------------
#
# What verify trusts: only this refimpl's catalogue. SHA256SUMS and the manifest are checksums,
# not signatures - whoever can change a file can re-hash it - so every file is also recomputed
# and compared by value, every manifest field is rebuilt from the catalogue and compared, the
# files must be exactly the NPY bytes refimpl writes for their values, and the folder must be a
# plain tree (no links, no extra files). The one thing a consistent rewrite can still do is
# declare a subset (`generator.command` with --case flags and the matching cases): verify passes
# it and lists every catalogue case it does not hold.

@dataclass(frozen=True)
class VerifyEntry:
    case: str   # "" for folder-level files (manifest.json, SHA256SUMS)
    file: str   # path relative to the golden folder
    ok: bool
    message: str


@dataclass(frozen=True)
class VerifyReport:
    folder: str
    entries: tuple[VerifyEntry, ...] = field(default=())
    #: Catalogue cases a declared subset (written with --case) does not hold.
    absent: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return bool(self.entries) and all(entry.ok for entry in self.entries)

    @property
    def failures(self) -> tuple[VerifyEntry, ...]:
        return tuple(entry for entry in self.entries if not entry.ok)

    def __str__(self) -> str:
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


def _differs(field_name: str, found: Any, expected: Any) -> str:
    return (f"{field_name} {json.dumps(found, sort_keys=True)[:120]} differs from what this "
            f"refimpl writes ({json.dumps(expected, sort_keys=True)[:120]})")


def _verify_file(root: Path, case_name: str, entry: Mapping[str, Any],
                 expected: Mapping[tuple[Any, Any], _File]
                 ) -> tuple[VerifyEntry, np.ndarray | None]:
    """Check one file against its manifest entry and against refimpl's own ``_File``."""
    relative = str(entry.get("path"))

    def result(problems: list[str], detail: str = "",
               stored: np.ndarray | None = None) -> tuple[VerifyEntry, np.ndarray | None]:
        if problems:
            return VerifyEntry(case_name, relative, False, "; ".join(problems)), stored
        return VerifyEntry(case_name, relative, True, f"SHA-256 ok, {detail}"), stored

    try:
        path = _safe_relative(entry.get("path"), root, f"case {case_name!r}")
        data = _read_plain(path, root)
    except FileNotFoundError:
        return result(["missing"])
    except GoldenError as error:
        return result([str(error)])
    except OSError as error:
        return result([f"cannot be read ({error})"])
    problems = []
    digest = _sha256(data)
    if digest != entry.get("sha256"):
        problems.append(f"SHA-256 {digest[:16]}... differs from the manifest's "
                        f"{str(entry.get('sha256'))[:16]}... (the file changed)")
    key = (entry.get("role"), entry.get("name"))
    want = expected.get(key)
    if want is None:
        problems.append(f"this refimpl computes no {key[0]} named {key[1]!r} for the case")
        return result(problems)
    if set(entry) != set(want.entry):
        problems.append(f"manifest fields {sorted(entry)}, this refimpl writes "
                        f"{sorted(want.entry)}")
    for name in ("path", "shape", "dtype", "bytes", "floors"):
        if entry.get(name) != want.entry.get(name):
            problems.append(_differs(f"manifest {name}", entry.get(name),
                                     want.entry.get(name)))
    if len(data) != entry.get("bytes"):
        problems.append(f"{len(data)} bytes, the manifest says {entry.get('bytes')!r}")
    try:
        stored = _load_npy_bytes(data, path, entry.get("dtype"), entry.get("shape"))
    except GoldenError as error:
        problems.append(str(error).replace(f"{path}: ", ""))
        return result(problems)
    # Anything but the exact bytes refimpl writes for these values (bytes after the data, a
    # rewritten header) is a changed file even where the values compare equal.
    if data != _npy_bytes(stored):
        problems.append("not the NPY 1.0 bytes refimpl writes for its values (extra bytes or "
                        "a rewritten header)")
    reference = want.array
    detail = ""
    if reference.dtype != stored.dtype or reference.shape != stored.shape:
        problems.append(f"dtype {stored.dtype.str} shape {stored.shape}, this refimpl computes "
                        f"{reference.dtype.str} {reference.shape}")
    elif reference.dtype.kind == "i":
        if not np.array_equal(reference, stored):
            problems.append("integer values differ from the recomputed ones")
        detail = "integer values equal"
    else:
        comparison = compare_tensor(str(key[0]), str(key[1]), reference, stored,
                                    DTYPE_TOLERANCES["float64"])
        if not comparison.ok:
            problems.append(f"recomputed values differ: {comparison.describe()}")
        detail = f"max relative error {comparison.relative_error:.1e} against the recomputation"
    if stored.ndim == 0 and stored.dtype.kind == "f":
        written = _json_value(float(stored))
        for name in ("value", "hex"):
            if entry.get(name) != written[name]:
                problems.append(f"the manifest's {name} {entry.get(name)!r} differs from the "
                                f"file's value ({written[name]!r})")
    return result(problems, detail, stored)


def _verify_case(root: Path, case: Any, entry: Mapping[str, Any]) -> list[VerifyEntry]:
    results = []
    files = _case_files(case)
    expected = {(file.entry["role"], file.entry["name"]): file for file in files}
    want = _case_entry(case, files)
    where = f"cases.{case.name}"
    if set(entry) != set(want):
        results.append(VerifyEntry(case.name, MANIFEST, False,
                                   f"{where} has the fields {sorted(entry)}; this refimpl "
                                   f"writes {sorted(want)}"))
    for name, value in want.items():
        if name not in ("files", "loss") and entry.get(name) != value:
            results.append(VerifyEntry(case.name, MANIFEST, False,
                                       _differs(f"{where}.{name}", entry.get(name), value)))
    listed = [(f.get("role"), f.get("name")) for f in entry["files"]]
    for role, name in expected:
        if (role, name) not in listed:
            results.append(VerifyEntry(case.name, f"{case.name}/{_file_name(role, name)}", False,
                                       f"the manifest lists no file for {role} {name!r}"))
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
        stored[(file_entry.get("role"), file_entry.get("name"))] = array
    loss = stored.get(("loss", "loss"))
    if loss is not None and loss.ndim == 0 and entry.get("loss") != _json_value(float(loss)):
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
        if name not in ("generator", "case_order") and manifest.get(name) != value:
            results.append(VerifyEntry("", MANIFEST, False,
                                       _differs(name, manifest.get(name), value)))
    if not isinstance(generator, Mapping) or set(generator) != set(want["generator"]):
        results.append(VerifyEntry("", MANIFEST, False,
                                   _differs("generator", generator, want["generator"])))
        return results
    for name in ("command", "seed"):
        if generator[name] != want["generator"][name]:
            results.append(VerifyEntry("", MANIFEST, False,
                                       _differs(f"generator.{name}", generator[name],
                                                want["generator"][name])))
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


def _interrupted_backups(folder: Path) -> list[str]:
    """Names of the old copies an interrupted ``golden --force`` may have set aside."""
    parent = folder.absolute().parent
    if not parent.is_dir():
        return []
    pattern = _leftover_pattern(folder)
    return sorted(name for name in os.listdir(parent)
                  if (match := pattern.match(name)) and match.group("kind") == "old")


def verify(golden_dir: str | os.PathLike) -> VerifyReport:
    """Recompute every case of a golden folder and compare every file (SHA-256, bytes, values)
    and every manifest field with what this refimpl writes.

    Never raises for a bad folder: every problem is an entry of the report naming the file.
    """

    root = Path(golden_dir)
    folder = str(golden_dir)
    if not root.is_dir():
        message = "not a folder"
        backups = _interrupted_backups(root)
        if backups and not os.path.lexists(root):
            message = (f"missing; an interrupted 'refimpl golden --force' set the previous copy "
                       f"aside as {backups[-1]}: run 'refimpl golden --out {folder} --force' to "
                       f"put it back and replace it")
        return VerifyReport(folder, (VerifyEntry("", folder, False, message),))
    try:
        manifest = read_manifest(root)
        manifest_sum = _sha256(_read_plain(root / MANIFEST))
    except (GoldenError, OSError) as error:
        return VerifyReport(folder, (VerifyEntry("", MANIFEST, False,
                                                 str(error).replace(f"{root / MANIFEST}: ", "")),))
    files_on_disk, entries = _tree(root)
    sums, sums_text, problems = _read_checksums(root)
    entries += problems
    if not sums:
        pass  # SHA256SUMS is missing or unreadable: already reported
    elif sums.get(MANIFEST) != manifest_sum:
        # Nothing else records the manifest's hash: either file may be the changed one.
        entries.append(VerifyEntry("", MANIFEST, False,
                                   f"SHA-256 {manifest_sum[:16]}... differs from its line in "
                                   f"{CHECKSUMS} (one of the two changed)"))
        entries.append(VerifyEntry("", CHECKSUMS, False,
                                   f"its line for {MANIFEST} ({str(sums.get(MANIFEST))[:16]}...)"
                                   f" does not match {MANIFEST} (one of the two changed)"))
    else:
        entries.append(VerifyEntry("", MANIFEST, True, f"SHA-256 matches {CHECKSUMS}"))
    listed = {str(f.get("path")): f.get("sha256") for entry in manifest["cases"].values()
              for f in entry["files"]}
    if sums:
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
    for path in sorted(files_on_disk - set(listed) - {MANIFEST, CHECKSUMS}):
        entries.append(VerifyEntry("", path, False, "unexpected file (not in the manifest)"))

    catalogue = {case.name: case for case in all_cases()}
    entries += _verify_header(manifest, list(catalogue))
    order = manifest.get("case_order")
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(manifest["cases"]):
        order = list(manifest["cases"])
    for name in order:
        entry = manifest["cases"][name]
        if name not in catalogue:
            entries.append(VerifyEntry(name, MANIFEST, False,
                                       "no case of this name in this refimpl's catalogue"))
            continue
        try:
            entries += _verify_case(root, catalogue[name], entry)
        except Exception as error:  # noqa: BLE001 - one broken case must not hide the others
            entries.append(VerifyEntry(name, MANIFEST, False,
                                       f"could not be verified: {type(error).__name__}: {error}"))
    absent = tuple(entry.case for entry in entries
                   if entry.ok and entry.message.startswith(ABSENT))
    return VerifyReport(folder, tuple(entries), absent)


def _checksums_text(manifest: Mapping[str, Any], manifest_sum: str) -> str | None:
    """The SHA256SUMS refimpl writes for ``manifest`` (None if the manifest is too broken)."""
    try:
        lines = [f"{manifest_sum}  {MANIFEST}"]
        for name in manifest["case_order"]:
            lines += [f"{entry['sha256']}  {entry['path']}"
                      for entry in manifest["cases"][name]["files"]]
    except (KeyError, TypeError):
        return None
    return "\n".join(lines) + "\n"
