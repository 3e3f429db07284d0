"""Replacing a folder all or nothing: the writers' lock, the atomic switch, the leftovers.

A writer of DIR holds an exclusive lock (flock) on DIR's parent folder from before it looks
at DIR until it has installed its copy and cleaned up, so writers of one folder run one after
the other. It builds the new copy in ``.DIR.tmp-<pid>-<random>`` and installs it:

* DIR absent or empty: one rename(2) (POSIX replaces an empty folder atomically).
* DIR a golden folder (--force): on Linux, renameat2(RENAME_EXCHANGE) swaps the two names
  atomically, then the temporary name (now the old copy) is removed. DIR always exists.
  Elsewhere, or on a file system without the call, two renames: DIR -> ``.DIR.old-<pid>-<r>``,
  then the temporary -> DIR.

Crash states (SIGKILL, power loss), and what the next writer of DIR does under the lock:

* while building: DIR untouched (absent or the old copy); ``.DIR.tmp-*`` partial -> removed.
* after the exchange, before the removal ends: DIR is the new copy; ``.DIR.tmp-*`` holds all or
  part of the old one -> removed.
* (two renames only) between them: DIR absent, ``.DIR.old-*`` the complete old copy -> renamed
  back to DIR (verify reports DIR missing and names the backup until then). After the second
  rename: DIR new, ``.DIR.old-*`` the old copy -> removed.

Under the lock every ``.DIR.tmp-*`` / ``.DIR.old-*`` is a dead writer's: a live one holds the
lock. Without flock (not POSIX) the pid in the name is checked instead, and a leftover of a
live process is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:   # not POSIX: writers are told apart by the pid in their names
    fcntl = None  # type: ignore[assignment]

from ..._io import OutputError, process_alive
from .read import _looks_like_golden

_LOCKING = fcntl is not None


def _leftover_pattern(out: Path) -> re.Pattern[str]:
    """The names a writer of ``out`` gives its temporary and set-aside folders."""
    return re.compile(rf"^\.{re.escape(out.name)}\.(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _leftovers(out: Path, locked: bool) -> list[tuple[str, Path]]:
    """``(kind, path)`` of every leftover of a dead writer of ``out``, oldest first."""
    pattern = _leftover_pattern(out)
    parent = out.absolute().parent
    found = []
    for entry in os.scandir(parent):
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if not locked and process_alive(int(match.group("pid"))):
            continue
        found.append((entry.stat(follow_symlinks=False).st_mtime, match.group("kind"),
                      parent / entry.name))
    return [(kind, path) for _, kind, path in sorted(found)]


def _empty_or_missing(folder: Path) -> bool:
    """Whether ``folder`` does not exist or is an empty real folder (not a link)."""
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
    """Put the complete ``temporary`` folder in the place of ``out`` (see the crash states in
    the module docstring); an old ``out`` survives any failure before the switch."""
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


def _interrupted_backups(folder: Path) -> list[str]:
    """Names of the old copies an interrupted ``golden --force`` may have set aside."""
    parent = folder.absolute().parent
    if not parent.is_dir():
        return []
    pattern = _leftover_pattern(folder)
    return sorted(name for name in os.listdir(parent)
                  if (match := pattern.match(name)) and match.group("kind") == "old")

