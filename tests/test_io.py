"""Tests of refimpl/_io.py: output files are all-or-nothing, errors name the user's path."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from refimpl import _io


def _inject(monkeypatch, module, name: str, number: int, after: int = 0) -> list[int]:
    """Make ``module.name`` raise OSError(number) from its call number ``after`` (0-based)."""
    original = getattr(module, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise OSError(number, os.strerror(number), str(args[0]) if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)
    return calls


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    _io.write_text_atomically(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["out.json"]


def test_the_file_gets_the_mode_of_any_new_file(tmp_path):
    umask = os.umask(0o027)
    try:
        _io.write_text_atomically(str(tmp_path / "out.json"), "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("where, number, after", [
    ("mkstemp", errno.EACCES, 0), ("mkstemp", errno.EROFS, 0), ("mkstemp", errno.ENOSPC, 1),
    ("fsync", errno.ENOSPC, 0), ("replace", errno.EROFS, 0), ("replace", errno.EACCES, 0),
])
def test_a_refused_write_names_the_users_path_and_leaves_the_old_file(
        tmp_path, monkeypatch, where, number, after):
    path = tmp_path / "out.json"
    path.write_text("old")
    module = tempfile if where == "mkstemp" else os
    # mkstemp's call 0 is check_destination's probe, call 1 the temporary for the data.
    calls = _inject(monkeypatch, module, where, number, after)
    with pytest.raises(_io.OutputError) as raised:
        _io.write_text_atomically(str(path), "new")
    assert str(raised.value) == f"{path}: {os.strerror(number)}"
    assert raised.value.errno == number
    assert len(calls) == after + 1
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]    # the temporary was removed


def test_a_failure_while_writing_removes_the_temporary(tmp_path):
    path = tmp_path / "figure.png"
    with pytest.raises(RuntimeError, match="renderer"):
        with _io.atomic_output(str(path)) as temporary:
            assert temporary.endswith(".png")   # a writer picking the format by extension
            assert os.path.dirname(temporary) == str(tmp_path)
            with open(temporary, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("renderer crashed")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("make, reason", [
    (lambda base: base / "missing" / "out.json", errno.ENOENT),
    (lambda base: base, errno.EISDIR),
])
def test_check_destination_refuses_a_missing_folder_or_a_folder(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(_io.OutputError) as raised:
        _io.check_destination(str(path))
    assert str(raised.value) == f"{path}: {os.strerror(reason)}"


def test_check_destination_refuses_a_file_as_the_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "out.json"
    with pytest.raises(_io.OutputError, match="Not a directory"):
        _io.check_destination(str(path))


def test_check_destination_creates_nothing(tmp_path):
    _io.check_destination(str(tmp_path / "out.json"))
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` made to refuse new files for real: by its permission bits, or, for root
    (whom those do not stop), by the immutable attribute (``chattr +i``, ext2/3/4, XFS,
    btrfs); skips the test where neither works."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    try:
        if _takes_a_file(folder) and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)],
                                       capture_output=True).returncode == 0
        if _takes_a_file(folder):
            pytest.skip("no way to make a read-only folder here (root, no chattr +i)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def _takes_a_file(folder: Path) -> bool:
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(descriptor)
    os.unlink(probe)
    return True


def test_a_read_only_folder_is_refused(tmp_path):
    with read_only_folder(tmp_path / "read-only") as folder:
        with pytest.raises(_io.OutputError) as raised:
            _io.write_text_atomically(str(folder / "out.json"), "x")
        assert str(raised.value).startswith(f"{folder / 'out.json'}: ")
        assert raised.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        assert os.listdir(folder) == []
