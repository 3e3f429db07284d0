"""Every example of the README and of the documentation pages runs, and every output a page
shows is the real output of its command, so that none can go stale.

HOW A PAGE RUNS. Each page (``README.md`` and every ``docs/*.md``) runs top to bottom in one
fresh temporary folder:

- every ```python block runs, in ONE namespace per page (a page is read top to bottom, so its
  later blocks may use names defined by earlier ones). A block whose first line is
  ``# A fragment: ...`` does not run (it needs code the reader supplies). A block that imports
  torch or jax runs in a test of its own in the slow tier, skipped visibly when that framework
  is missing (the default tier compiles it);
- every ``refimpl ...`` command of a ```sh block runs and must exit with status 0;
  ``(cd DIR && sha256sum -c SHA256SUMS)`` runs where ``sha256sum`` exists. The other commands
  a page may show (pip, pytest, sphinx-build, the benchmarks) are listed in ``NOT_RUN``; any
  other command fails the test, so a typo cannot hide an example;
- a block without a language is a listing, a formula or a table and does not run, unless it
  is a sample (below). Blocks in other languages (C++, Rust) do not run.

SAMPLES: OUTPUT SHOWN ON A PAGE IS THE REAL OUTPUT. Two kinds, both blocks without a language:

- a block whose first line is ``$ refimpl ARGS`` is that command's sample: the command runs
  where the block stands (it must exit 0, and what it writes is there for the blocks below),
  and the block's other lines are what it prints on stdout;
- a block right after the line ``<!-- sample: printed by the block above -->`` is what the
  python block above it printed.

A sample is compared with the output line by line, both normalised the same way: trailing
spaces dropped; a run of two or more spaces counts as two (a table's columns are as wide as
their widest cell); a duration such as ``0.03s`` counts as ``<time>``. A sample line that is
exactly ``...`` stands for any number of output lines, none included: use it to shorten a long
table, and say so in the text. Nothing else is tolerated, except where the comment before the
block says ``<!-- sample: numbers to a factor of 10 -->`` (the rounding digits of an output
depend on the CPU's floating-point kernels): then every number of a line may be within a
factor of 10 of the output's, two numbers below 1e-14 count as equal, and every other
character must match. Options combine: ``<!-- sample: printed by the block above; numbers to a
factor of 10 -->``. An unknown option, or a marker not followed by a block without a
language, fails the test. To write a sample, run the command (or the page) and paste the
output: when a sample differs, the failure prints the whole real output.

TWO TIERS. The default tier (``python -m pytest``) runs every page with the commands called
in-process (``refimpl.cli.main``, the function behind ``python -m refimpl``), except the few
expensive commands of ``SLOW_TIER_ONLY``, which it only parses with the command's own parser
(an unknown option or command still fails). The slow tier (``python -m pytest -m slow``) runs
every page end to end, every command as ``python -m refimpl ...`` in a subprocess, and the
framework examples. A page that adds an expensive command (the whole catalogue, a training
run, a figure) lists it in ``SLOW_TIER_ONLY``; a later block of the page must then not read
its output, or the default tier fails.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from refimpl.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "# A fragment:"
TRANSCRIPT = "$ refimpl "
# Commands a page shows but this test does not run: installing, the whole test suite, the
# docs build and the benchmarks (run by hand, never as timed tests).
NOT_RUN = ("python -m pip install", "python -m pytest", "HYPOTHESIS_PROFILE=", "sphinx-build",
           "python benchmarks/", "python tests/oracle_stress.py")
# Commands run only by the slow tier (the default tier parses them): each costs seconds. A
# ```sh block holding one of them is slow-tier only as a whole (its other commands read what
# it writes).
SLOW_TIER_ONLY = {
    "refimpl check": "every built-in case through the checker, twice",
    "refimpl golden --out golden": "the golden files of every built-in case",
    "refimpl verify --quiet golden": "every built-in case recomputed",
}
# Besides those: every command that draws a figure (matplotlib; the figures' content is
# tested by tests/test_cli_plots.py).
SLOW_OPTIONS = ("--plot",)
MARKER = re.compile(r"^<!--\s*sample:\s*(.*?)\s*-->$")
PRINTED = "printed by the block above"
LOOSE = "numbers to a factor of 10"
OPTIONS = (PRINTED, LOOSE)
DURATION = re.compile(r"\b\d+\.\d+s\b")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# Two numbers below this (in magnitude) count as equal under LOOSE: both are rounding.
ROUNDING_LEVEL = 1e-14
# At least this many examples run (so that a parser that finds nothing cannot pass).
MIN_PYTHON_BLOCKS = 30
MIN_COMMANDS = 10
MIN_SAMPLES = 10


class Block(NamedTuple):
    language: str     # "python", "sh", "" (a transcript or listing), "cpp", ...
    source: str
    line: int         # of the opening fence, 1-based
    options: tuple[str, ...] | None   # of a "<!-- sample: ... -->" marker before it; else None


def _blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, in order (MyST directives included), each with
    the options of the sample marker on the last non-blank line before it."""
    blocks, language, start, lines, marker = [], None, 0, [], None
    previous = ""
    for number, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if language is None and text.startswith("```"):
            language, start, lines = text[3:].strip(), number, []
            found = MARKER.match(previous.strip())
            marker = tuple(o.strip() for o in found.group(1).split(";")) if found else None
        elif language is not None and text.strip() == "```":
            blocks.append(Block(language, "\n".join(lines) + "\n", start, marker))
            language = None
        elif language is not None:
            lines.append(text)
        if language is None and text.strip():
            previous = text
    assert language is None, f"{page}: the block opened at line {start} is never closed"
    return blocks


def _markers(page: Path) -> list[int]:
    """The line numbers of every sample marker of a page."""
    return [number for number, text in
            enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if MARKER.match(text.strip())]


def _framework(block: Block) -> str | None:
    """The optional framework (torch or jax) a python block imports at top level, if any."""
    found = re.search(r"^import (torch|jax)\b", block.source, re.M)
    return found.group(1) if block.language == "python" and found else None


def _runs_here(block: Block) -> bool:
    return (block.language == "python" and not block.source.startswith(FRAGMENT)
            and not _framework(block))


def _is_sample(block: Block) -> bool:
    return block.language == "" and (block.source.startswith(TRANSCRIPT)
                                     or block.options is not None)


def _shell_steps(source: str) -> list[list[str]]:
    """The commands of a ```sh block that this test runs: ``["refimpl", ARGS...]`` or
    ``["sha256sum-check", DIR]``."""
    steps = []
    for line in source.splitlines():
        line = line.split("  #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("(cd ") and "sha256sum -c" in line:
            steps.append(["sha256sum-check", line[len("(cd "):].split("&&")[0].strip()])
            continue
        for part in (piece.strip() for piece in line.split("&&")):
            if part.startswith("refimpl "):
                steps.append(shlex.split(part))
            else:
                assert part.startswith(NOT_RUN), f"a command this test does not know: {part!r}"
    return steps


def _slow_tier_only(step: list[str]) -> bool:
    return (" ".join(step) in SLOW_TIER_ONLY
            or any(option in step for option in SLOW_OPTIONS))


class Output(NamedTuple):
    status: int
    stdout: str
    stderr: str


def _in_process(step: list[str], folder: Path) -> Output:
    """``refimpl ARGS`` through ``refimpl.cli.main``, as ``python -m refimpl`` runs it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(step[1:])
        except SystemExit as exit_:   # argparse's usage errors
            status = exit_.code if isinstance(exit_.code, int) else 1
    return Output(status, out.getvalue(), err.getvalue())


def _subprocess(step: list[str], folder: Path) -> Output:
    """``refimpl ARGS`` as ``python -m refimpl ARGS``, with this tree's package."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "refimpl", *step[1:]], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=600)
    return Output(result.returncode, result.stdout, result.stderr)


Runner = Callable[[list[str], Path], Output]


def _normalise(line: str) -> str:
    return re.sub(r" {2,}", "  ", DURATION.sub("<time>", line.rstrip()))


def _same_numbers(shown: str, printed: str) -> bool:
    """``shown`` and ``printed`` alike but for their numbers, each within a factor of 10 (or
    both below the rounding level)."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", printed):
        return False
    for a, b in zip(NUMBER.findall(shown), NUMBER.findall(printed), strict=True):
        a, b = abs(float(a)), abs(float(b))
        if max(a, b) < ROUNDING_LEVEL:
            continue
        if min(a, b) == 0 or abs(math.log10(a / b)) > 1:
            return False
    return True


def _lines_match(shown: list[str], printed: list[str], loose: bool) -> bool:
    """Whether the sample's lines match the output's, ``...`` standing for any run of lines."""
    same = _same_numbers if loose else str.__eq__
    # matches[i][j]: shown[i:] matches printed[j:].
    matches = [[False] * (len(printed) + 1) for _ in range(len(shown) + 1)]
    matches[len(shown)][len(printed)] = True
    for i in range(len(shown) - 1, -1, -1):
        for j in range(len(printed), -1, -1):
            if shown[i] == "...":
                matches[i][j] = matches[i + 1][j] or (j < len(printed) and matches[i][j + 1])
            else:
                matches[i][j] = (j < len(printed) and same(shown[i], printed[j])
                                 and matches[i + 1][j + 1])
    return matches[0][0]


def _check_sample(block: Block, printed: str, where: str) -> None:
    shown = block.source.splitlines()
    if block.source.startswith(TRANSCRIPT):
        shown = shown[1:]
    loose = LOOSE in (block.options or ())
    if not _lines_match([_normalise(line) for line in shown],
                        [_normalise(line) for line in printed.splitlines()], loose):
        pytest.fail(f"{where}: the sample is not the real output. The real output:\n{printed}",
                    pytrace=False)


def _check_options(block: Block, where: str) -> None:
    unknown = set(block.options or ()) - set(OPTIONS)
    assert not unknown, (where, "unknown sample options", unknown, "known:", OPTIONS)
    assert block.language == "", (where, "a sample marker before a block with a language")
    assert (PRINTED in (block.options or ())) != block.source.startswith(TRANSCRIPT), (
        where, f"a sample is either '{TRANSCRIPT}...' or '{PRINTED}', exactly one of them")


def _sha256sum_check(folder: Path) -> None:
    if shutil.which("sha256sum") is not None:
        result = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=folder,
                                capture_output=True, text=True)
        assert result.returncode == 0, (folder, result.stdout[-2000:], result.stderr[-2000:])


def _run_page(page: Path, folder: Path, run: Runner, everything: bool) -> int:
    """Run every example of ``page`` in ``folder`` and compare its samples; the number of
    examples run. Without ``everything`` (the default tier) the commands of
    ``SLOW_TIER_ONLY`` are only parsed, and framework blocks only compiled."""
    namespace = {"__name__": "__main__"}   # as a script the reader runs
    printed, ran = None, 0
    for block in _blocks(page):
        where = f"{page.relative_to(ROOT)}:{block.line}"
        if _runs_here(block):
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                exec(compile(block.source, where, "exec"), namespace)
            printed, ran = captured.getvalue(), ran + 1
        elif _framework(block) and not everything:
            compile(block.source, where, "exec")
        elif block.language == "sh":
            steps = _shell_steps(block.source)
            if not everything and any(map(_slow_tier_only, steps)):
                for step in steps:
                    if step[0] == "refimpl":
                        build_parser().parse_args(step[1:])
                continue
            for step in steps:
                if step[0] == "sha256sum-check":
                    _sha256sum_check(folder / step[1])
                else:
                    result = run(step, folder)
                    assert result.status == 0, (where, step, result.stdout[-2000:],
                                                result.stderr[-2000:])
                ran += 1
        elif _is_sample(block):
            _check_options(block, where)
            if block.source.startswith(TRANSCRIPT):
                step = shlex.split(block.source.splitlines()[0][2:])
                if not everything and _slow_tier_only(step):
                    build_parser().parse_args(step[1:])
                    continue
                result = run(step, folder)
                assert result.status == 0, (where, step, result.stderr[-2000:])
                _check_sample(block, result.stdout, where)
            else:
                assert printed is not None, (where, "no python block above printed anything")
                _check_sample(block, printed, where)
            ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_examples_and_samples(page, tmp_path, monkeypatch):
    """The default tier: every page, commands in-process, the slowest only parsed."""
    monkeypatch.chdir(tmp_path)
    _run_page(page, tmp_path, _in_process, everything=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_end_to_end(page, tmp_path, monkeypatch):
    """The slow tier: every example of every page, every command as ``python -m refimpl``."""
    monkeypatch.chdir(tmp_path)
    _run_page(page, tmp_path, _subprocess, everything=True)


def test_the_pages_have_enough_runnable_examples():
    blocks = {page.name: _blocks(page) for page in PAGES}
    python = sum(_runs_here(block) for page in blocks.values() for block in page)
    commands = sum(len(_shell_steps(block.source)) if block.language == "sh"
                   else block.source.startswith(TRANSCRIPT) and block.language == ""
                   for page in blocks.values() for block in page)
    samples = sum(_is_sample(block) for page in blocks.values() for block in page)
    assert python >= MIN_PYTHON_BLOCKS, python
    assert commands >= MIN_COMMANDS, commands
    assert samples >= MIN_SAMPLES, samples
    readme = blocks["README.md"]
    assert sum(_runs_here(block) for block in readme) >= 1
    readme_steps = [step for block in readme if block.language == "sh"
                    for step in _shell_steps(block.source)]
    assert ["refimpl", "check"] in readme_steps
    # Every page except the index and the API reference shows runnable code.
    for name, page in blocks.items():
        if name not in ("index.md", "api.md"):
            assert any(_runs_here(block) or block.language == "sh" or _is_sample(block)
                       for block in page), name


def test_every_sample_marker_stands_before_a_sample():
    for page in PAGES:
        marked = {block.line for block in _blocks(page) if block.options is not None}
        for line in _markers(page):
            # The marker's block opens on the next non-blank line.
            lines = page.read_text(encoding="utf-8").splitlines()
            following = next(n for n in range(line + 1, len(lines) + 1) if lines[n - 1].strip())
            assert following in marked, f"{page.name}:{line}: a sample marker before no block"
            block = next(b for b in _blocks(page) if b.line == following)
            _check_options(block, f"{page.name}:{following}")


def test_every_slow_tier_command_is_on_a_page():
    """An entry of SLOW_TIER_ONLY that no page shows would be a stale exemption."""
    shown = {" ".join(step) for page in PAGES for block in _blocks(page)
             if block.language == "sh" for step in _shell_steps(block.source)}
    shown |= {block.source.splitlines()[0][2:] for page in PAGES for block in _blocks(page)
              if block.language == "" and block.source.startswith(TRANSCRIPT)}
    assert set(SLOW_TIER_ONLY) <= shown, set(SLOW_TIER_ONLY) - shown


# The comparison of samples: each rule, and each tolerance's limit, fails where it must.
def _sample(text: str, *options: str) -> Block:
    return Block("", text, 1, options or None)


def test_a_sample_must_match_line_by_line():
    printed = "a  b\nrow 1  0.25\nrow 2  0.50\nsummary\n"
    _check_sample(_sample("$ refimpl x\na  b\nrow 1  0.25\nrow 2  0.50\nsummary\n"), printed,
                  "here")
    for wrong in ("$ refimpl x\na  b\nrow 1  0.25\nrow 2  0.51\nsummary\n",   # a digit
                  "$ refimpl x\na  b\nrow 1  0.25\nsummary\n",                  # a row lost
                  "$ refimpl x\na  b\nrow 2  0.50\nrow 1  0.25\nsummary\n",   # order
                  "$ refimpl x\na  b\nrow 1  0.25\nrow 2  0.50\nsummary\nmore\n"):
        with pytest.raises(pytest.fail.Exception, match="the real output"):
            _check_sample(_sample(wrong), printed, "here")


def test_a_sample_elides_with_dots_and_ignores_widths_and_durations():
    printed = "case   time   detail\nmlp    0.01s  ok\ncnn    12.30s ok\nend: 2 rows\n"
    _check_sample(_sample("$ refimpl x\ncase  time  detail\n...\nend: 2 rows\n"), printed, "")
    _check_sample(_sample("$ refimpl x\ncase  time  detail\nmlp  0.00s  ok\n...\n"), printed,
                  "")
    _check_sample(_sample("x\n...\n", PRINTED), "x\n", "")       # "..." may stand for nothing
    with pytest.raises(pytest.fail.Exception):                   # "..." is not a wildcard
        _check_sample(_sample("$ refimpl x\n...\nend: 3 rows\n"), printed, "")
    with pytest.raises(pytest.fail.Exception):                   # one space is not two
        _check_sample(_sample("x y\n", PRINTED), "x  y\n", "")


def test_numbers_to_a_factor_of_ten():
    printed = "best h 3.2e-06 error 1.2e-10 complex 0.0e+00\n"
    _check_sample(_sample("best h 9.9e-06 error 2.0e-11 complex 2.2e-16\n", PRINTED, LOOSE),
                  printed, "")
    for wrong in ("best h 3.1e-07 error 1.2e-10 complex 0.0e+00\n",   # a factor 10.3 off
                  "best h 3.2e-06 error 1.2e-10 complex 1.0e-13\n",   # above the rounding
                  "best k 3.2e-06 error 1.2e-10 complex 0.0e+00\n"):  # a word
        with pytest.raises(pytest.fail.Exception):
            _check_sample(_sample(wrong, PRINTED, LOOSE), printed, "")
    with pytest.raises(pytest.fail.Exception):                        # exact by default
        _check_sample(_sample("best h 3.3e-06 error 1.2e-10 complex 0.0e+00\n", PRINTED),
                      printed, "")


def test_sample_markers_are_checked(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- sample: printed by the block abvoe -->\n```\nx\n```\n"
                    "<!-- sample: printed by the block above -->\n\n```python\nx = 1\n```\n",
                    encoding="utf-8")
    typo, python = _blocks(page)
    with pytest.raises(AssertionError, match="unknown sample options"):
        _check_options(typo, "page.md:2")
    with pytest.raises(AssertionError, match="a block with a language"):
        _check_options(python, "page.md:7")


FRAMEWORK_BLOCKS = [(page, block) for page in PAGES for block in _blocks(page)
                    if _framework(block)]


def test_there_are_pytorch_and_jax_examples():
    assert {_framework(block) for _, block in FRAMEWORK_BLOCKS} == {"torch", "jax"}


@pytest.mark.slow
@pytest.mark.parametrize("page, block", FRAMEWORK_BLOCKS,
                         ids=[f"{page.name}:{block.line}" for page, block in FRAMEWORK_BLOCKS])
def test_framework_example(page, block, tmp_path, monkeypatch):
    framework = _framework(block)
    pytest.importorskip(framework, reason=f"the example needs {framework}")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.source, f"{page.relative_to(ROOT)}:{block.line}", "exec"),
         {"__name__": f"docs_{page.stem}_{framework}"})
