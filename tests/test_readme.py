"""The README's Python examples run as printed (those that are complete programs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
# Fragments, not programs: the protocol signature, the PyTorch example (tested in
# tests/test_testing.py when torch is installed) and loops over a user's own builder.
FRAGMENT_MARKERS = ("impl(params, inputs) ->", "import torch", "build_my_impl")
PROGRAMS = [block for block in BLOCKS if not any(m in block for m in FRAGMENT_MARKERS)]


def test_the_readme_has_runnable_examples():
    assert len(PROGRAMS) >= 5


@pytest.mark.parametrize("source", PROGRAMS, ids=[f"block{i}" for i in range(len(PROGRAMS))])
def test_readme_example_runs(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # examples may write files (a golden folder)
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})
