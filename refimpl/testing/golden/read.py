"""Reading a golden folder safely: plain files only, headers checked before any load."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .format import (
    _CASE_NAME,
    ALLOWED_DTYPES,
    FORMAT,
    MANIFEST,
    READABLE_SCHEMAS,
    ROLES,
    SCHEMA_VERSION,
    GoldenError,
    _sha256,
)


def _looks_like_golden(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest of the golden format (nothing else is checked)."""
    try:
        with open(folder / MANIFEST, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == FORMAT


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
    """Parse and check ``golden_dir/manifest.json``.

    Parameters
    ----------
    golden_dir : str or os.PathLike
        A golden folder.

    Returns
    -------
    dict
        The manifest (format, schema version, generator, rule, tolerances, cases).

    Raises
    ------
    refimpl.testing.golden.GoldenError
        Naming the file, if it is missing, a link, not JSON (NaN / Infinity included), of
        another format or schema version (the integer :data:`SCHEMA_VERSION`; ``2.0`` is
        refused), or has malformed ``cases``.
    """
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
    version = document.get("schema_version")
    # The integer, not any number equal to it: 2.0 == 2 in Python, and a typed reader of
    # the format (serde, nlohmann::json's get<int>) refuses the float.
    if type(version) is not int or version not in READABLE_SCHEMAS:
        raise GoldenError(f"{path}: schema_version {version!r}; this refimpl reads versions "
                          f"{', '.join(map(str, READABLE_SCHEMAS))} (the JSON integer; it "
                          f"writes {SCHEMA_VERSION})")
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
    """Refuse ``NaN`` / ``Infinity`` while parsing a manifest."""
    raise ValueError(f"{name} is not allowed in a golden manifest")


def select_cases(manifest: Mapping[str, Any], case: str | Iterable[str] | None) -> list[str]:
    """Case names of ``manifest`` selected by a name, an iterable of names, or None (all).

    Raises
    ------
    ValueError
        For a name the manifest does not hold, listing those it does.
    """
    available = list(manifest["cases"])
    if case is None:
        return available
    wanted = [case] if isinstance(case, str) else list(case)
    unknown = [name for name in wanted if name not in manifest["cases"]]
    if unknown:
        raise ValueError(f"case: unknown case(s) {unknown}; this golden folder has {available}")
    return wanted


def _read_header(data: bytes, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of NPY ``data``, or a ``GoldenError`` naming ``path``."""
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
    """The array in NPY ``data``, loaded only after its header passed every check."""
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
    """Load a golden ``.npy`` safely.

    The header is read and checked *first* (dtype ``<f8`` or ``<i8``, C order, and
    ``dtype`` / ``shape`` if given); only then is the data read, with
    ``allow_pickle=False``.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    dtype : str, optional
        The dtype the header must declare (``"<f8"`` or ``"<i8"``).
    shape : iterable of int, optional
        The shape the header must declare.

    Returns
    -------
    np.ndarray
        The array.

    Raises
    ------
    refimpl.testing.golden.GoldenError
        For a symbolic link, an object (pickle) array (never loaded), another dtype or
        order, a header that differs from ``dtype`` / ``shape``, or a corrupt file.
    """
    path = Path(path)
    return _load_npy_bytes(_read_plain(path), path, dtype, shape)


@dataclass(frozen=True)
class GoldenCase:
    """One case read from a golden folder (every file checked against its SHA-256).

    Attributes
    ----------
    name, kind : str
        The case's name and kind ("mlp", "cnn", "tied", "shared").
    config : dict
        The model configuration (``Sequential.from_config`` rebuilds it).
    inputs, params, outputs, grads : dict of str to np.ndarray
        The data, the point, the forward outputs and the gradients (shaped like
        ``params``).
    loss : float
        The loss the gradients differentiate.
    direction, hvp : dict of str to np.ndarray
        The stored direction ``v`` and refimpl's ``H v`` along it, keyed like ``params``
        (empty for a case that stores none).
    """

    name: str
    kind: str
    config: dict[str, Any]
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    loss: float
    grads: dict[str, np.ndarray]
    direction: dict[str, np.ndarray] = field(default_factory=dict)
    hvp: dict[str, np.ndarray] = field(default_factory=dict)


def _case_entry(manifest: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The manifest's entry of the case ``name``; a ``ValueError`` naming the folder's cases
    when it holds none."""
    if name not in manifest["cases"]:
        raise ValueError(f"name: unknown case {name!r}; this golden folder has "
                         f"{list(manifest['cases'])}")
    return manifest["cases"][name]


def _checked_file(root: Path, entry: Mapping[str, Any], what: str) -> tuple[Path, bytes]:
    """The path and bytes of a manifest file entry, checked against its SHA-256."""
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
    """Read case ``name`` of a golden folder, checking every file's SHA-256 and header.

    Parameters
    ----------
    golden_dir : str or os.PathLike
        The golden folder.
    name : str
        The case.
    manifest : mapping, optional
        The folder's manifest, if already read (:func:`read_manifest`).

    Returns
    -------
    GoldenCase
        Every array of the case.

    Raises
    ------
    ValueError
        For a case the manifest does not hold.
    refimpl.testing.golden.GoldenError
        For a missing, changed, unsafe or malformed file (a symbolic link anywhere below
        ``golden_dir`` is refused).
    """
    root = Path(golden_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    entry = _case_entry(manifest, name)
    if entry.get("kind") == "steps":
        raise ValueError(f"name: case {name!r} is a step case (K batches and a trajectory); "
                         f"read it with refimpl.testing.golden.load_steps")
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
                      groups["gradient"], groups["direction"], groups["hvp"])

