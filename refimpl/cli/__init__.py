"""The ``refimpl`` command: one module per sub-command, each with an
``add_<command>_arguments(parser)`` and a ``run_<command>(args) -> int`` (the exit status).

- ``check`` (:mod:`.check`): every built-in case through the gradient checker;
- ``golden``, ``verify`` (:mod:`.golden`): golden test vectors on disk;
- ``demo`` (:mod:`.demo`): the parameter-tying experiment;
- ``memory`` (:mod:`.memory`): unique parameters against parameter uses;
- ``conform`` (:mod:`.conform`): another implementation's builder over every case and dtype;
- ``explain``, ``steps`` (:mod:`.explain`, :mod:`.steps`): where a gradient comes from, and
  the errors of numerical derivatives against the step size.

Only this package parses arguments or prints; everything below it returns values or raises.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from .._validate import did_you_mean
from .._version import __version__
from . import check, conform, demo, explain, golden, memory, steps

#: (sub-command, module, one-line help).
SUBCOMMANDS: tuple[tuple[str, ModuleType, str], ...] = (
    ("check", check, "verify every built-in model's gradients numerically"),
    ("golden", golden,
     "write golden test vectors (.npy, manifest.json, SHA256SUMS) for every built-in case"),
    ("verify", golden, "recompute every case of a golden folder and check every file"),
    ("demo", demo,
     "the parameter-tying experiment: a lambda sweep and hard sharing, and the Lasserre variant"),
    ("memory", memory,
     "unique parameters vs parameter uses and bytes, with and without sharing"),
    ("conform", conform,
     "run a builder build(config, dtype) -> impl over every case and dtype; one table"),
    ("explain", explain,
     "where every gradient comes from: each use, output position, task and tying pull"),
    ("steps", steps,
     "errors of forward, central, Richardson and complex-step derivatives, h = 1e-1..1e-300"),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``refimpl`` parser: one sub-parser per entry of :data:`SUBCOMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        Each sub-command's namespace carries its ``run_<command>`` as ``handler`` and its
        sub-parser as ``command_parser``.
    """
    parser = argparse.ArgumentParser(
        prog="refimpl", description="Reference neural-network gradients, checked numerically.")
    parser.add_argument("--version", action="version", version=f"refimpl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in SUBCOMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        getattr(module, f"add_{name}_arguments")(sub)
        # The sub-parser rides along: its usage is the one a user of the command needs.
        sub.set_defaults(handler=getattr(module, f"run_{name}"), command_parser=sub)
    return parser


def _parse(parser: argparse.ArgumentParser, arguments: list[str]) -> argparse.Namespace:
    """``parser.parse_args(arguments)``, with the usage errors a user can act on.

    An unknown command gets the closest command names; an unknown option or extra argument is
    reported by the *sub-command's* parser (its usage, not the top-level one) with the closest
    option names. Both exit with status 2, as argparse does.
    """
    first = arguments[0]
    names = [name for name, _, _ in SUBCOMMANDS]
    if not first.startswith("-") and first not in names:
        parser.error(f"unknown command {first!r}{did_you_mean(first, names)}; the commands "
                     f"are {', '.join(names)}")
    args, extras = parser.parse_known_args(arguments)
    if extras:
        sub = args.command_parser
        options = [option for action in sub._actions for option in action.option_strings]
        unknown = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-")]
        hints = [(option, did_you_mean(option, options)) for option in unknown]
        hints = [(option, hint) for option, hint in hints if hint]
        message = f"unrecognized arguments: {' '.join(extras)}"
        if len(unknown) == 1 and hints:
            message += hints[0][1]
        elif hints:
            message += "".join(f"; {option}{hint}" for option, hint in hints)
        sub.error(message)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    A bare ``refimpl`` prints the usage and the list of commands on stderr (status 2: no
    command was given, which is a usage error). An unknown command or option is a usage error
    too, with the closest names ("did you mean") and the sub-command's usage. An ``OSError``
    (including :class:`refimpl._io.OutputError`) is printed as one line naming the path and
    the reason, never as a traceback; a reader that closes the pipe early (``refimpl explain
    CASE | head``) ends the command quietly, with status 141 as for SIGPIPE.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 1 a failed check or an error of the environment (a path
        that cannot be written, a full disk), 2 a usage error, 130 an interruption, 141 a
        closed pipe.
    """
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        parser.print_help(sys.stderr)
        return 2
    args = _parse(parser, arguments)
    try:
        status = int(args.handler(args))
        sys.stdout.flush()   # a closed pipe shows here, not in Python's flush at exit
        return status
    except BrokenPipeError:
        # The reader went away (``refimpl explain CASE | head``): what it wanted was printed.
        # Say nothing, and point stdout at /dev/null so that the flush at exit cannot fail
        # and print (the recipe of the Python documentation's "Note on SIGPIPE"). The
        # status is the shell's for a process ended by SIGPIPE.
        _silence_stdout()
        return 128 + 13
    except OSError as error:   # refimpl._io.OutputError included: it names the user's path
        print(f"refimpl {args.command}: {_describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"refimpl {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point the process's standard output at ``os.devnull`` (when it is the real one)."""
    if sys.stdout is not sys.__stdout__:
        return   # a replaced stream (a test's capture): nothing is flushed at exit
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _describe_os_error(error: OSError) -> str:
    """``'<path>: <reason>'``, or the reason alone when the error names no path."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


if __name__ == "__main__":
    sys.exit(main())
