"""Atomic file output for the command line: a file is either absent, its old content, or its
complete new content, and nothing is left behind.

Every file is written to a temporary sibling (same folder, so that the final ``os.replace`` is
a rename within one file system, atomic on POSIX and Windows) and renamed over the target; on
any failure the temporary is removed. Errors are raised as :class:`OutputError`, an
``OSError`` that names the path the user gave (never the temporary's name) with the reason.

A process killed while it writes (SIGKILL, power loss) cannot remove its temporary; its name,
``.refimpl-<pid>-<random><suffix>``, carries the writer's process id, and the next atomic write
into the same folder removes every such temporary whose process no longer exists (a live
writer's, or another user's, is left alone), as ``refimpl golden`` removes the leftovers of
its dead writers.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import re
import tempfile
from collections.abc import Iterator

__all__ = ["JSON_HELP", "OutputError", "process_alive", "check_destination",
           "write_text_atomically", "atomic_output", "remove_stale_temporaries"]

#: Prefix of every temporary file this module creates (recognisable, hidden on POSIX); the
#: writer's process id and a dash follow it.
TEMPORARY_PREFIX = ".refimpl-"

#: The name of a temporary made by :func:`_temporary`: prefix, pid, mkstemp's random part,
#: the target's extension.
_TEMPORARY_NAME = re.compile(rf"^{re.escape(TEMPORARY_PREFIX)}(?P<pid>\d+)-[A-Za-z0-9_]+"
                             rf"(\.[A-Za-z0-9]+)?$")

#: The --json help of every sub-command that has one, so that they all describe '-' alike.
JSON_HELP = ("also write the {what} as JSON to PATH, written atomically (a temporary file "
             "renamed into place); '-' writes the JSON to stdout instead of the table")


class OutputError(OSError):
    """An output file cannot be written.

    ``str()`` is ``'<path>: <reason>'`` on one line, with the user's path, so that the command
    line can print it as it is.
    """

    def __init__(self, error_number: int, reason: str, path: str):
        super().__init__(error_number, reason, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _output_error(error: OSError, path: str) -> OutputError:
    """``error`` as an :class:`OutputError` naming the user's ``path``."""
    number = error.errno if error.errno is not None else errno_codes.EIO
    return OutputError(number, error.strerror or os.strerror(number), path)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process included; another user's counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):   # EPERM: it exists; a pid out of range: not ours
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporaries of dead writers in ``folder`` (module docstring).

    Parameters
    ----------
    folder : str
        A folder an atomic write is about to write into.

    Returns
    -------
    list of str
        The paths removed (a file another process removed first is skipped).
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if process_alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.unlink(entry.path)
            removed.append(entry.path)
    return removed


def _temporary(folder: str, suffix: str) -> str:
    """A new empty temporary file in ``folder`` named after this process (closed)."""
    descriptor, temporary = tempfile.mkstemp(dir=folder, suffix=suffix,
                                             prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-")
    os.close(descriptor)
    return temporary


def check_destination(path: str) -> None:
    """Check, before any long computation, that ``path`` can be written atomically.

    Its folder must exist and take a new file, and ``path`` itself must not be a folder.

    Parameters
    ----------
    path : str
        The output file the user named.

    Raises
    ------
    OutputError
        Naming ``path``, with the reason.
    """
    if os.path.isdir(path):
        raise OutputError(errno_codes.EISDIR, os.strerror(errno_codes.EISDIR), path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        number = errno_codes.ENOTDIR if os.path.exists(folder) else errno_codes.ENOENT
        raise OutputError(number, os.strerror(number), path)
    # The only reliable test of "may I create a file here" (permissions, read-only mounts,
    # ACLs, root) is to create one.
    try:
        probe = _temporary(folder, ".tmp")
    except OSError as error:
        raise _output_error(error, path) from None
    os.unlink(probe)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Write ``path`` through a temporary sibling renamed over it once the block succeeds.

    The temporary has ``path``'s extension, so that a writer choosing a format by extension
    (matplotlib's ``savefig``) picks the right one. On any failure the temporary is removed
    and ``path`` is untouched.

    Parameters
    ----------
    path : str
        The output file the user named.

    Yields
    ------
    str
        The temporary path to write.

    Raises
    ------
    OutputError
        Naming ``path``, for any ``OSError`` on the way.
    """
    check_destination(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(folder)
    suffix = os.path.splitext(path)[1] or ".tmp"
    try:
        temporary = _temporary(folder, suffix)
    except OSError as error:
        raise _output_error(error, path) from None
    try:
        # mkstemp makes the file private (0600); the output gets the mode any new file gets.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
    except OSError as error:
        _remove_quietly(temporary)
        raise _output_error(error, path) from None
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        raise _output_error(error, path) from None
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(path: str) -> None:
    """Remove ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Through a temporary sibling and a rename, so that ``path`` never holds a half-written
    file; the data is flushed to disk before the rename, so that a crash after it cannot
    leave an empty file under the final name.

    Parameters
    ----------
    path : str
        The output file the user named.
    text : str
        The whole content.

    Raises
    ------
    OutputError
        Naming ``path``, when it cannot be written.
    """
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
