"""The README's examples run top to bottom, in order, in one fresh folder.

Every ```python block runs (in its own namespace) except those that say they are fragments
(first line ``# A fragment: ...``) and the PyTorch example, which runs in a test of its own
that is skipped (visibly) when torch is not installed; every ``refimpl ...`` command of a
```sh block runs as ``python -m refimpl ...`` (after the ``pip install`` that precedes it on a
fresh machine) and must exit with status 0;
``(cd DIR && sha256sum -c SHA256SUMS)`` runs where ``sha256sum`` exists. Blocks without a
language are transcripts and file listings, not examples.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = re.findall(r"```(python|sh)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
FRAGMENT = "# A fragment:"


def _shell_steps(source: str) -> list[list[str]]:
    """The commands of a ```sh block that an example runs, as argument lists."""
    steps = []
    for line in source.splitlines():
        line = line.split("  #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("(cd ") and "sha256sum -c" in line:
            folder = line[len("(cd "):].split("&&")[0].strip()
            steps.append(["sha256sum-check", folder])
            continue
        for part in (piece.strip() for piece in line.split("&&")):
            if part.startswith("refimpl "):
                steps.append([sys.executable, "-m", "refimpl", *shlex.split(part)[1:]])
    return steps


def test_the_readme_has_examples_of_both_kinds():
    kinds = {kind for kind, _ in BLOCKS}
    assert kinds == {"python", "sh"}
    assert sum(kind == "python" and not source.startswith(FRAGMENT)
               for kind, source in BLOCKS) >= 5
    assert any(step[:3] == [sys.executable, "-m", "refimpl"]
               for kind, source in BLOCKS if kind == "sh" for step in _shell_steps(source))


def test_readme_examples_run_in_order_in_one_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for index, (kind, source) in enumerate(BLOCKS):
        if kind == "python":
            if source.startswith(FRAGMENT) or "import torch" in source:
                continue
            exec(compile(source, f"{README}:block{index}", "exec"),
                 {"__name__": "readme_example"})
            ran += 1
            continue
        for step in _shell_steps(source):
            if step[0] == "sha256sum-check":
                if shutil.which("sha256sum") is None:
                    continue
                result = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"],
                                        cwd=tmp_path / step[1], capture_output=True, text=True)
            else:
                # The package under test is this tree's, as for the in-process examples.
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
                result = subprocess.run(step, cwd=tmp_path, env=env, capture_output=True,
                                        text=True, timeout=600)
            assert result.returncode == 0, (step, result.stdout[-2000:], result.stderr[-2000:])
            ran += 1
    assert ran >= 8


def test_readme_pytorch_example(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="the README's PyTorch example needs torch")
    (source,) = [source for kind, source in BLOCKS if "import torch" in source]
    monkeypatch.chdir(tmp_path)
    exec(compile(source, f"{README}:torch", "exec"), {"__name__": "readme_example"})
