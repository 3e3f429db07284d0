"""Tests of refimpl/cli/conform.py: `refimpl conform MODULE:FUNCTION`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refimpl import cli
from refimpl.cli.conform import ProgressBar
from refimpl.testing import golden
from refimpl.testing.cases import all_cases

BUILDERS = textwrap.dedent('''
    """Builders for the command-line tests: refimpl itself, and planted faults."""
    import json

    from refimpl.testing import NotExpressible
    from refimpl.testing.cases import all_cases
    from refimpl.testing.cases.drawn import drawn_case

    CATALOGUE = {json.dumps(case.config, sort_keys=True): case for case in all_cases()}

    def _case(config):
        if "drawn" in config:
            return drawn_case(config["drawn"]["seed"], config["drawn"]["kind"])
        return CATALOGUE[json.dumps(config, sort_keys=True)]

    def reference(config, dtype):
        case = _case(config)
        return lambda params, inputs: case.evaluate(params, inputs)

    def negated(config, dtype):
        case = _case(config)
        def impl(params, inputs):
            loss, grads, outputs = case.evaluate(params, inputs)
            return loss, {name: -g for name, g in grads.items()}, outputs
        return impl

    def mlp_only(config, dtype):
        if "model" not in config or "Conv2D" in json.dumps(config):
            raise NotExpressible("only dense models")
        return reference(config, dtype)

    def exits(config, dtype):
        def impl(params, inputs):
            raise SystemExit(0)
        return impl

    def interrupted_on_pairs(config, dtype):
        if "pair" in config:
            raise KeyboardInterrupt
        return reference(config, dtype)

    NOT_CALLABLE = 3
''')


@pytest.fixture
def builders(tmp_path, monkeypatch):
    """A module ``cli_builders`` on sys.path with the builders above."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "cli_builders.py").write_text(BUILDERS, encoding="utf-8")
    (folder / "cli_broken.py").write_text("raise ImportError('no framework here')\n",
                                          encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    yield "cli_builders"
    for name in ("cli_builders", "cli_broken"):
        sys.modules.pop(name, None)


FEW = ["--case", "mlp-tanh-ce", "--case", "tied-soft-l2"]


def test_a_correct_builder_passes_with_status_0(builders, capsys):
    assert cli.main(["conform", f"{builders}:reference", *FEW]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"refimpl conform {builders}:reference: dtypes float64, float32; no "
                        f"drawn cases (seed 0)")
    assert [line.split()[:3] for line in lines[2:-1]] == [
        ["mlp-tanh-ce", "float64", "pass"], ["mlp-tanh-ce", "float32", "pass"],
        ["tied-soft-l2", "float64", "pass"], ["tied-soft-l2", "float32", "pass"]]
    assert lines[-1].endswith(": ok")


def test_every_built_in_case_runs_by_default(builders, capsys):
    assert cli.main(["conform", f"{builders}:reference", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    for case in all_cases():
        assert f"\n{case.name} " in out


def test_a_wrong_builder_fails_with_status_1(builders, capsys):
    assert cli.main(["conform", f"{builders}:negated", *FEW]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and out.splitlines()[-1].endswith("FAILED")


def test_not_expressible_everywhere_is_not_ok(builders, capsys):
    assert cli.main(["conform", f"{builders}:mlp_only", "--case", "cnn-relu-maxpool"]) == 1
    assert "not expressible  " in capsys.readouterr().out
    assert cli.main(["conform", f"{builders}:mlp_only", "--case", "cnn-relu-maxpool",
                     "--case", "mlp-tanh-ce"]) == 0


def test_drawn_cases_are_named_by_seed_and_rerun_by_name(builders, capsys):
    assert cli.main(["conform", f"{builders}:reference", "--case", "mlp-tanh-ce",
                     "--drawn", "3", "--seed", "40", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "3 drawn case(s), seeds 40..42" in out.splitlines()[0]
    drawn = [line.split()[0] for line in out.splitlines() if line.startswith("drawn-")]
    assert [int(name.rsplit("-", 1)[1]) for name in drawn] == [40, 41, 42]
    assert cli.main(["conform", f"{builders}:reference", "--case", drawn[1]]) == 0
    rerun = capsys.readouterr().out
    assert [line.split()[0] for line in rerun.splitlines()[2:-1]] == [drawn[1]] * 2


def test_json_is_written_and_can_replace_the_table(builders, tmp_path, capsys):
    path = tmp_path / "report.json"
    assert cli.main(["conform", f"{builders}:negated", *FEW, "--dtype", "float64",
                     "--json", str(path)]) == 1
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["ok"] is False and document["dtypes"] == ["float64"]
    assert [row["outcome"] for row in document["rows"]] == ["fail", "fail"]
    assert "mlp-tanh-ce" in capsys.readouterr().out
    assert cli.main(["conform", f"{builders}:reference", *FEW, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_dtypes_repeat_or_separate_by_commas(builders, capsys):
    assert cli.main(["conform", f"{builders}:reference", "--case", "mlp-tanh-ce",
                     "--dtype", "float32,tf32", "--dtype", "float64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[2:-1]] == ["float32", "tf32", "float64"]


def _usage_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(("spec", "message"), [
    ("cli_builders", "expected MODULE:FUNCTION"),
    ("cli_missing_module:build", "module 'cli_missing_module' does not import: "
                                 "ModuleNotFoundError"),
    ("cli_broken:build", "module 'cli_broken' does not import: ImportError: no framework here"),
    ("cli_builders:nothing", "'cli_builders' has no attribute 'nothing'"),
    ("cli_builders:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
])
def test_a_builder_that_cannot_be_loaded_is_a_one_line_usage_error(builders, capsys, spec,
                                                                   message):
    line = _usage_error(capsys, ["conform", spec])
    assert line.startswith("refimpl conform: builder") and message in line


@pytest.mark.parametrize(("flags", "message"), [
    (["--case", "no-such-case"], "unknown case 'no-such-case'"),
    (["--case", "tied-sof-l2"], "unknown case 'tied-sof-l2' (did you mean 'tied-soft-l2'"),
    (["--case", "drawn-rnn-1"], "unknown drawn kind 'rnn'"),
    (["--dtype", "float16"], "dtype: expected one of"),
    (["--drawn", "-1"], "--drawn and --seed: expected non-negative ints"),
    (["--export", "mlp-tanh-ce"], "--export-golden DIR and --export CASE go together"),
    (["--export-golden", "out"], "--export-golden DIR and --export CASE go together"),
])
def test_bad_flags_are_one_line_usage_errors(builders, capsys, flags, message):
    assert message in _usage_error(capsys, ["conform", f"{builders}:reference", *flags])


def test_a_built_in_case_is_exported_to_a_golden_folder(builders, tmp_path, capsys):
    out = tmp_path / "golden"
    assert cli.main(["conform", f"{builders}:reference", "--case", "mlp-tanh-ce",
                     "--export-golden", str(out), "--export", "cnn-relu-maxpool"]) == 0
    assert "wrote cnn-relu-maxpool" in capsys.readouterr().err
    assert list(golden.read_manifest(out)["cases"]) == ["cnn-relu-maxpool"]
    assert golden.verify(out).ok


def test_an_export_into_a_non_empty_folder_is_refused_before_the_run(builders, tmp_path,
                                                                     capsys):
    (tmp_path / "taken.txt").write_text("mine", encoding="utf-8")
    line = _usage_error(capsys, ["conform", f"{builders}:reference", "--export-golden",
                                 str(tmp_path), "--export", "mlp-tanh-ce"])
    assert "exists and is not an empty folder" in line
    assert (tmp_path / "taken.txt").read_text(encoding="utf-8") == "mine"


def test_a_drawn_case_is_exported_once_golden_write_takes_cases(builders, tmp_path, capsys):
    out = tmp_path / "golden"
    status = cli.main(["conform", f"{builders}:reference", "--case", "mlp-tanh-ce",
                       "--export-golden", str(out), "--export", "drawn-mlp-7"])
    if status == 2 and "unknown case(s)" in capsys.readouterr().err:
        pytest.skip("golden.write does not take Case objects yet (the probes helper's change)")
    assert status == 0
    manifest = golden.read_manifest(out)
    assert list(manifest["cases"]) == ["drawn-mlp-7"]
    assert manifest["cases"]["drawn-mlp-7"]["config"]["seed"] == 7


def test_case_names_separate_by_commas(builders, capsys):
    assert cli.main(["conform", f"{builders}:reference", "--case", "mlp-tanh-ce,tied-soft-l2",
                     "--case", "drawn-mlp-7", "--dtype", "float64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:-1]] == ["mlp-tanh-ce", "tied-soft-l2",
                                                          "drawn-mlp-7"]
    assert "unknown case 'nope'" in _usage_error(capsys, [
        "conform", f"{builders}:reference", "--case", "mlp-tanh-ce,nope"])
    assert "--case: expected case names" in _usage_error(capsys, [
        "conform", f"{builders}:reference", "--case", ","])


def test_a_builder_module_in_the_current_folder_is_found(tmp_path, monkeypatch, capsys):
    (tmp_path / "here_builders.py").write_text(BUILDERS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    try:
        assert cli.main(["conform", "here_builders:reference", "--case", "mlp-tanh-ce"]) == 0
    finally:
        sys.modules.pop("here_builders", None)
    assert sys.path == path_before                     # as python -m, for the run only
    assert capsys.readouterr().out.splitlines()[-1].endswith(": ok")


def test_sys_exit_in_an_implementation_fails_its_rows_instead_of_ending_the_run(builders,
                                                                                 capsys):
    # Before: `refimpl conform` ended with status 0 and no output.
    assert cli.main(["conform", f"{builders}:exits", *FEW]) == 1
    out = capsys.readouterr().out
    assert out.count("impl raised SystemExit: 0") == 4
    assert out.splitlines()[-1].endswith("FAILED")


def test_ctrl_c_stops_the_run_with_status_130_and_says_where(builders, tmp_path, capsys):
    path = tmp_path / "report.json"
    assert cli.main(["conform", f"{builders}:interrupted_on_pairs", *FEW,
                     "--json", str(path)]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and not path.exists()
    assert captured.err.strip() == (
        "refimpl conform: interrupted (KeyboardInterrupt) at tied-soft-l2 [float64], after 2 "
        "of 4 rows; no table, report or export written")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


def test_a_killed_runs_json_temporary_is_removed_by_the_next_run(builders, tmp_path, capsys):
    dead = tmp_path / f".refimpl-{_dead_pid()}-k1ll3d_x.json"     # a SIGKILLed writer's
    live = tmp_path / f".refimpl-{os.getppid()}-w0rk1ng.json"      # a live writer's
    old = tmp_path / ".refimpl-abc123.json"                         # no pid: not judged
    for leftover in (dead, live, old):
        leftover.write_text("{", encoding="utf-8")
    path = tmp_path / "report.json"
    assert cli.main(["conform", f"{builders}:reference", "--case", "mlp-tanh-ce",
                     "--json", str(path)]) == 0
    assert json.loads(path.read_text(encoding="utf-8"))["ok"] is True
    assert not dead.exists() and live.exists() and old.exists()
    assert sorted(entry.name for entry in tmp_path.iterdir() if entry.is_file()) == sorted(
        [live.name, old.name, "report.json"])


def test_the_json_records_refimpl_and_the_builders_framework(builders, tmp_path, capsys):
    folder = tmp_path / "framework"
    folder.mkdir()
    (folder / "numpy_builders.py").write_text(
        BUILDERS + "\nFRAMEWORK = 'numpy'\n", encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        assert cli.main(["conform", "numpy_builders:reference", "--case", "mlp-tanh-ce",
                         "--json", "-"]) == 0
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("numpy_builders", None)
    document = json.loads(capsys.readouterr().out)
    assert document["framework"] == {"name": "numpy", "version": np.__version__}
    assert document["refimpl"] == __import__("refimpl").__version__


def test_no_progress_on_a_stream_that_is_not_a_terminal(builders, capsys):
    assert cli.main(["conform", f"{builders}:reference", *FEW]) == 0
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_rows_time_and_the_row_running_then_clears(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = _Terminal()
    bar = ProgressBar(stream)
    bar(0, 4, "mlp-tanh-ce [float64]")
    bar(2, 4, "tied-soft-l2 [float64]")
    bar(4, 4, "")
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert frames[0].startswith("refimpl conform [........................] 0/4 0% 0:00  "
                                "mlp-tanh-ce [float64]")
    assert frames[1].startswith("refimpl conform [############............] 2/4 50% 0:00, "
                                "~0:00 left  tied-soft-l2 [float64]")
    assert frames[-1] == "" and frames[-2].strip() == ""           # cleared at the end
    assert "\n" not in text
    monkeypatch.setenv("COLUMNS", "70")      # a narrow terminal: the bar goes, never wraps
    narrow = _Terminal()
    ProgressBar(narrow)(1, 4, "siamese-contrastive-shared-tower [float64]")
    assert narrow.getvalue() == ("\r1/4 25% 0:00, ~0:00 left  siamese-contrastive-shared-tower "
                                 "[float64]")
    monkeypatch.setenv("COLUMNS", "30")
    narrower = _Terminal()
    ProgressBar(narrower)(1, 4, "siamese-contrastive-shared-tower [float64]")
    assert narrower.getvalue() == "\r1/4 25% 0:00, ~0:00 left  sia"
    quiet = io.StringIO()
    ProgressBar(quiet)(1, 4, "x")
    assert quiet.getvalue() == ""
