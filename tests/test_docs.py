"""Every example of the README and of the documentation pages runs, so none can go stale.

Per page (``README.md`` and each ``docs/*.md``), in one fresh temporary folder, top to bottom:

- every ```python block runs, in ONE namespace per page: a page is read top to bottom, so its
  later blocks may use names defined by earlier ones (the tutorial builds on its first model).
  A block whose first line is ``# A fragment: ...`` is skipped (it needs code the reader
  supplies), and a block that imports torch or jax runs in a test of its own, skipped visibly
  when that framework is not installed;
- every ``refimpl ...`` command of a ```sh block runs as ``python -m refimpl ...`` with this
  tree on ``PYTHONPATH`` (the pip install before it on a fresh machine is not repeated) and
  must exit with status 0; ``(cd DIR && sha256sum -c SHA256SUMS)`` runs where ``sha256sum``
  exists. The other commands a page shows (pip, pytest, sphinx-build, the benchmarks) are
  listed in ``NOT_RUN``; any other command fails the test, so a typo cannot hide an example;
- a plain ``` block (no language) is a transcript, a table or a file listing and does not run,
  except a transcript whose first line is ``$ refimpl ...``: the command runs, and every other
  non-empty line of the block must appear in its output, in order.

Blocks in other languages (C++, Rust) are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "# A fragment:"
TRANSCRIPT = "$ refimpl "
# Commands a page shows but this test does not run: installing, the whole test suite, the
# docs build and the benchmarks (run by hand, never as timed tests).
NOT_RUN = ("python -m pip install", "python -m pytest", "HYPOTHESIS_PROFILE=", "sphinx-build",
           "python benchmarks/", "python tests/oracle_stress.py")
# At least this many examples run (so that a parser that finds nothing cannot pass).
MIN_PYTHON_BLOCKS = 30
MIN_COMMANDS = 10


class Block(NamedTuple):
    language: str     # "python", "sh", "" (a transcript or listing), "cpp", ...
    source: str
    line: int         # of the opening fence, 1-based


def _blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, in order (MyST directives included)."""
    blocks, language, start, lines = [], None, 0, []
    for number, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if language is None and text.startswith("```"):
            language, start, lines = text[3:].strip(), number, []
        elif language is not None and text.strip() == "```":
            blocks.append(Block(language, "\n".join(lines) + "\n", start))
            language = None
        elif language is not None:
            lines.append(text)
    assert language is None, f"{page}: the block opened at line {start} is never closed"
    return blocks


def _framework(block: Block) -> str | None:
    """The optional framework (torch or jax) a python block imports at top level, if any."""
    found = re.search(r"^import (torch|jax)\b", block.source, re.M)
    return found.group(1) if block.language == "python" and found else None


def _runs_here(block: Block) -> bool:
    return (block.language == "python" and not block.source.startswith(FRAGMENT)
            and not _framework(block))


def _shell_steps(source: str) -> list[list[str]]:
    """The commands of a ```sh block that this test runs, as argument lists."""
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
                steps.append([sys.executable, "-m", "refimpl", *shlex.split(part)[1:]])
            else:
                assert part.startswith(NOT_RUN), f"a command this test does not know: {part!r}"
    return steps


def _run_refimpl(step: list[str], folder: Path) -> subprocess.CompletedProcess:
    # The package under test is this tree's, as for the in-process examples.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(step, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


def _run_page(page: Path, folder: Path) -> int:
    """Run every example of ``page`` in ``folder``; the number of examples run."""
    namespace = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for block in _blocks(page):
        where = f"{page.relative_to(ROOT)}:{block.line}"
        if _runs_here(block):
            exec(compile(block.source, where, "exec"), namespace)
            ran += 1
        elif block.language == "sh":
            for step in _shell_steps(block.source):
                if step[0] == "sha256sum-check":
                    if shutil.which("sha256sum") is None:
                        continue
                    result = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"],
                                            cwd=folder / step[1], capture_output=True, text=True)
                else:
                    result = _run_refimpl(step, folder)
                assert result.returncode == 0, (where, step, result.stdout[-2000:],
                                                result.stderr[-2000:])
                ran += 1
        elif block.language == "" and block.source.startswith(TRANSCRIPT):
            _check_transcript(block, where, folder)
            ran += 1
    return ran


def _check_transcript(block: Block, where: str, folder: Path) -> None:
    """The transcript's command exits 0 and prints every shown line, in order."""
    command, *shown = block.source.splitlines()
    step = [sys.executable, "-m", "refimpl", *shlex.split(command[len(TRANSCRIPT):])]
    result = _run_refimpl(step, folder)
    assert result.returncode == 0, (where, step, result.stderr[-2000:])
    printed = iter(line.rstrip() for line in result.stdout.splitlines())
    for line in filter(None, (line.rstrip() for line in shown)):
        assert any(out == line for out in printed), (where, "not printed (in order):", line,
                                                     result.stdout)


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_examples_run_in_order_in_one_folder(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_page(page, tmp_path)


def test_the_pages_have_enough_runnable_examples():
    blocks = {page.name: _blocks(page) for page in PAGES}
    python = sum(_runs_here(block) for page in blocks.values() for block in page)
    commands = sum(len(_shell_steps(block.source)) if block.language == "sh"
                   else block.language == "" and block.source.startswith(TRANSCRIPT)
                   for page in blocks.values() for block in page)
    assert python >= MIN_PYTHON_BLOCKS, python
    assert commands >= MIN_COMMANDS, commands
    readme = blocks["README.md"]
    assert sum(_runs_here(block) for block in readme) >= 1
    readme_steps = [step for block in readme if block.language == "sh"
                    for step in _shell_steps(block.source)]
    assert [sys.executable, "-m", "refimpl", "check"] in readme_steps
    # Every page except the index and the API reference shows runnable code.
    for name, page in blocks.items():
        if name not in ("index.md", "api.md"):
            assert any(_runs_here(block) or block.language == "sh"
                       or block.source.startswith(TRANSCRIPT) for block in page), name


FRAMEWORK_BLOCKS = [(page, block) for page in PAGES for block in _blocks(page)
                    if _framework(block)]


def test_there_are_pytorch_and_jax_examples():
    assert {_framework(block) for _, block in FRAMEWORK_BLOCKS} == {"torch", "jax"}


@pytest.mark.parametrize("page, block", FRAMEWORK_BLOCKS,
                         ids=[f"{page.name}:{block.line}" for page, block in FRAMEWORK_BLOCKS])
def test_framework_example(page, block, tmp_path, monkeypatch):
    framework = _framework(block)
    pytest.importorskip(framework, reason=f"the example needs {framework}")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.source, f"{page.relative_to(ROOT)}:{block.line}", "exec"),
         {"__name__": f"docs_{page.stem}_{framework}"})
