"""Tests of refimpl/cli: main and `refimpl check` (other sub-commands: their modules' tests)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from test_io import read_only_folder

import refimpl.cli as cli
from refimpl.nn import MLP
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.mlp import model_case


def _check_passes(argv: list[str], cases: list, capsys) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["case", "method", "parameter"]
    assert f"{len(cases)} cases" in lines[-1] and " 0 failed" in lines[-1]
    for case in cases:
        assert case.name in out
    assert "FAIL" not in out


def test_check_passes_a_built_in_case_of_each_kind(capsys):
    # Every catalogue case's gradients are checked numerically in the default tier by
    # tests/test_gradcheck_fast.py and tests/test_siamese_cases.py; the command on all of them
    # is the slow tier's.
    kinds: dict[str, object] = {}
    for case in all_cases():
        kinds.setdefault(case.kind, case)
    cases = list(kinds.values())
    _check_passes(["check", *(f"--case={case.name}" for case in cases)], cases, capsys)


@pytest.mark.slow
def test_check_passes_every_built_in_case(capsys):
    _check_passes(["check"], all_cases(), capsys)


def test_check_writes_the_same_results_as_json(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text("old contents")
    assert cli.main(["check", "--json", str(path), "--case", "mlp-tanh-ce"]) == 0
    document = json.loads(path.read_text())
    assert document["ok"] is True
    assert {row["case"] for row in document["rows"]} == {"mlp-tanh-ce"}
    assert {row["method"] for row in document["rows"]} == {"complex", "central"}
    assert all(row["ok"] for row in document["rows"])
    assert os.listdir(tmp_path) == ["report.json"]   # no temporary file left behind
    printed = capsys.readouterr().out
    assert document["summary"] in printed


def broken_case():
    """A case whose gradient has a flipped sign for one bias: check must fail it."""
    model = MLP([3, 4, 2])
    case = model_case("broken", "mlp", model, (3,), 4, seed=0)

    def wrong(params):
        loss, grads = case.loss_and_grads(params)
        return loss, {**grads, "fc2.bias": -grads["fc2.bias"]}

    return replace(case, loss_and_grads=wrong)


def test_check_exits_1_and_names_the_failing_case(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli.check, "all_cases", lambda: all_cases()[:1] + [broken_case()])
    path = tmp_path / "r.json"
    assert cli.main(["check", "--json", str(path)]) == 1
    out = capsys.readouterr().out
    assert "failing cases: broken" in out
    assert "FAIL (mismatch)" in out
    document = json.loads(path.read_text())
    assert document["ok"] is False
    failing = {(row["case"], row["parameter"]) for row in document["rows"] if not row["ok"]}
    assert failing == {("broken", "fc2.bias")}


def test_check_rejects_an_unknown_case(capsys):
    assert cli.main(["check", "--case", "no-such-case"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_large_cases_are_checked_along_directions(monkeypatch, capsys):
    big = model_case("big", "mlp", MLP([40, 60, 5]), (40,), 3, seed=1)
    assert big.parameter_total() > cli.check.FULL_CHECK_LIMIT
    monkeypatch.setattr(cli.check, "all_cases", lambda: [big])
    assert cli.main(["check", "--json", "-"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["rows"]) == 2 * cli.check.DIRECTIONS
    assert {row["mode"] for row in document["rows"]} == {"directional"}


def test_cli_without_a_command_lists_the_commands(capsys):
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: refimpl")
    for name, _, help_text in cli.SUBCOMMANDS:
        assert name in captured.err
        assert " ".join(help_text.split()[:3]) in " ".join(captured.err.split())


def test_check_list_prints_every_case_name(capsys):
    assert cli.main(["check", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [case.name for case in all_cases()]


def _run_module(*argv: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "refimpl", *argv], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_python_dash_m_runs_the_command_line():
    listed = _run_module("check", "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [case.name for case in all_cases()]
    bare = _run_module()
    assert bare.returncode == 2 and "usage: refimpl" in bare.stderr
    assert _run_module("--version").stdout.startswith("refimpl ")


def _json_help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex("--json PATH") + len("--json PATH")   # the option's line, not usage
    return text[start:].split(" --", 1)[0]


def test_json_help_describes_dash_alike(capsys):
    check, memory, demo = (_json_help(name, capsys) for name in ("check", "memory", "demo"))
    assert "'-' writes the JSON to stdout instead of the table" in check
    assert check.replace("results", "counts") == memory
    assert demo == check


# --- errors: one line naming the user's path, never a traceback -----------------------------

def _one_line_error(capsys, argv, status=1) -> str:
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts its work (paths must be checked before it)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(cli.check, "check_case", refuse)
    monkeypatch.setattr("refimpl.cli.memory.memory_examples", refuse)
    monkeypatch.setattr("refimpl.cli.demo.sweep", refuse)


@pytest.mark.parametrize("command", [["check"], ["memory"], ["demo", "--quick"]])
def test_json_into_a_missing_folder_names_it_before_the_work(command, tmp_path, capsys,
                                                             no_work):
    path = tmp_path / "no" / "dir" / "r.json"
    line = _one_line_error(capsys, [*command, "--json", str(path)])
    assert line == f"refimpl {command[0]}: {path}: No such file or directory"


@pytest.mark.parametrize("command", [["check"], ["memory"], ["demo", "--quick"]])
def test_json_onto_a_folder_names_it(command, tmp_path, capsys, no_work):
    line = _one_line_error(capsys, [*command, "--json", str(tmp_path)])
    assert line == f"refimpl {command[0]}: {tmp_path}: Is a directory"


def test_demo_plot_into_a_missing_folder_fails_before_the_sweep(tmp_path, capsys, no_work):
    path = tmp_path / "no" / "dir" / "p.png"
    line = _one_line_error(capsys, ["demo", "--quick", "--plot", str(path)])
    assert line == f"refimpl demo: {path}: No such file or directory"


@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_check_json_on_a_refusing_file_system_names_the_path(number, tmp_path, capsys,
                                                            monkeypatch):
    path = tmp_path / "r.json"
    real_replace = os.replace

    def refuse(source, target, *args, **kwargs):
        if str(target) == str(path):
            raise OSError(number, os.strerror(number), source)   # the temporary's name
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    line = _one_line_error(capsys, ["check", "--case", "mlp-tanh-ce", "--json", str(path)])
    assert line == f"refimpl check: {path}: {os.strerror(number)}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS])
def test_memory_json_in_a_folder_that_takes_no_file(number, tmp_path, capsys, monkeypatch,
                                                    no_work):
    def refuse(*args, **kwargs):
        raise OSError(number, os.strerror(number), str(tmp_path / ".refimpl-x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    path = tmp_path / "m.json"
    line = _one_line_error(capsys, ["memory", "--json", str(path)])
    assert line == f"refimpl memory: {path}: {os.strerror(number)}"


@pytest.mark.parametrize("argv, expected", [
    (["memory"], "LocallyConnected2D"),
    # One seed of a few steps: the demo's own tables are tests/test_demo.py's.
    (["demo", "--quick", "--seeds", "1", "--steps", "10"], "hard sharing"),
])
def test_registered_sub_commands_run_through_main(argv, expected, capsys):
    assert cli.main(argv) == 0
    assert expected in capsys.readouterr().out


#: The positional arguments (or required options) each sub-command needs to parse.
REQUIRED_ARGUMENTS = {"golden": ["--out", "x"], "verify": ["x"], "conform": ["m:f"]}


def test_every_registered_sub_command_has_its_hooks():
    parser = cli.build_parser()
    for name, _, _ in cli.SUBCOMMANDS:
        args = parser.parse_args([name] + REQUIRED_ARGUMENTS.get(name, []))
        assert callable(args.handler)


def test_any_os_error_of_a_command_is_one_line(monkeypatch, capsys):
    def refused():
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/where")

    monkeypatch.setattr(cli.check, "all_cases", refused)
    line = _one_line_error(capsys, ["check"])
    assert line == "refimpl check: /some/where: Permission denied"


def test_check_json_into_a_read_only_folder_is_one_line(tmp_path, capsys, no_work):
    with read_only_folder(tmp_path / "read-only") as folder:
        path = folder / "r.json"
        line = _one_line_error(capsys, ["check", "--json", str(path)])
        assert line.startswith(f"refimpl check: {path}: ")


def test_central_differences_may_call_only_a_declared_kink_non_differentiable(capsys):
    kinked = [case.name for case in all_cases()
              if case.config.get("convention", {}).get("on_kink")]
    assert kinked == ["probe-relu-at-zero", "probe-leaky-relu-at-zero",
                      "probe-maxpool-tie-after-conv", "probe-l1-tie"]
    assert cli.main(["check", "--json", "-", *[f"--case={name}" for name in kinked]]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    excused = [row for row in rows if row["status"] == "kink (probe)"]
    assert excused and all(row["method"] == "central" for row in excused)
    assert all(row["status"] == "ok" for row in rows if row["method"] == "complex")
    relu = get_case("probe-relu-at-zero")
    undeclared = replace(relu, name="relu-kink-undeclared",
                         config={**relu.config,
                                 "convention": {**relu.config["convention"], "on_kink": False}})
    failed = [row for row in cli.check.check_case(undeclared, "central") if not row["ok"]]
    assert failed and all(row["status"] == "non-differentiable" for row in failed)
    # exact arrays alone (kept exact, not on a kink) excuse nothing
    plain = replace(relu, name="relu-kink-exact-only",
                    config={key: value for key, value in relu.config.items()
                            if key != "convention"})
    assert any(not row["ok"] for row in cli.check.check_case(plain, "central"))


def test_the_table_says_why_a_kink_row_passes(capsys):
    assert cli.main(["check", "--case=probe-relu-at-zero"]) == 0
    out = capsys.readouterr().out
    assert "pass (kink (probe))" in out and "FAIL" not in out


@pytest.mark.parametrize("method", ["complex", "central"])
def test_a_wrong_gradient_on_a_declared_kink_still_fails(method):
    relu = get_case("probe-relu-at-zero")

    def scaled(params):
        loss, grads = relu.loss_and_grads(params)
        return loss, {name: 1.5 * grad for name, grad in grads.items()}

    rows = cli.check.check_case(replace(relu, loss_and_grads=scaled), method)
    assert any(not row["ok"] for row in rows)
    assert all(row["status"] != "kink (probe)" for row in rows if not row["ok"])


# --- usage errors a user can act on: the closest names, the sub-command's usage -------------

@pytest.mark.parametrize("argv, usage, hint", [
    (["check", "--jsn", "r.json"], "usage: refimpl check ",
     "--jsn r.json (did you mean '--json'?)"),
    (["explain", "mlp-tanh-ce", "--plt=p.png"], "usage: refimpl explain ",
     "(did you mean '--plot'?)"),
    (["steps", "mlp-tanh-ce", "--per-decde", "2", "--jsn", "x"], "usage: refimpl steps ",
     "; --per-decde (did you mean '--per-decade'?); --jsn (did you mean '--json'?)"),
    (["golden", "--out", "g", "--forse"], "usage: refimpl golden ", "(did you mean '--force'?)"),
    (["chek", "--list"], "usage: refimpl [-h]", "unknown command 'chek' (did you mean 'check'?)"),
])
def test_an_unknown_option_shows_the_sub_command_usage_and_the_closest_names(argv, usage, hint,
                                                                             capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert hint in err.splitlines()[-1]


def test_an_unknown_option_far_from_every_name_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        cli.main(["check", "--zzzzzz"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "refimpl check: error: unrecognized arguments: --zzzzzz"


@pytest.mark.parametrize("argv, expected", [
    (["check", "--case", "mlp-tanh"], "refimpl check: unknown case 'mlp-tanh' (did you mean "
                                      "'mlp-tanh-ce'?); refimpl check --list names the"),
    (["check", "--case", "mlp-tanh-ce", "--case", "tied-sof-l2", "--case", "zzz"],
     "refimpl check: unknown cases 'tied-sof-l2' (did you mean 'tied-soft-l2'"),
    (["golden", "--out", "never-written", "--case", "sequence-tied"],
     "refimpl golden: --case: unknown case 'sequence-tied' (did you mean 'sequence-tied-lm' or "
     "'sequence-untied-lm'?)"),
])
def test_an_unknown_case_name_gets_the_closest_names(argv, expected, capsys, tmp_path,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected), err
    assert len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_get_case_offers_the_closest_names():
    with pytest.raises(ValueError, match=r"^case: unknown case 'cnn-relu-maxpol' \(did you mean "
                                         r"'cnn-relu-maxpool'\?\)"):
        get_case("cnn-relu-maxpol")


# --- a reader that closes the pipe early ----------------------------------------------------

class _ClosedPipe:
    """A stdout whose reader has gone away (``| head`` after its lines)."""

    def write(self, text):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def flush(self):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def test_a_closed_pipe_ends_the_command_quietly(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["explain", "mlp-tanh-ce"]) == 141
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_prints_nothing_from_a_real_process():
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen([sys.executable, "-m", "refimpl", "explain", "mlp-tanh-ce"],
                               cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()        # before the command prints: its first write breaks the pipe
    try:
        err = process.stderr.read().decode()
        status = process.wait(timeout=120)
    finally:
        process.kill()
        process.stderr.close()
    assert err == ""
    assert status == 141


def test_verify_fails_a_float_schema_version(tmp_path, capsys):
    """`refimpl verify` on a folder whose manifest says "schema_version": 3.0, every hash
    redone to match: exit status 1 naming the field (typed readers refuse the float)."""
    import hashlib

    from refimpl.testing import golden

    folder = golden.write(tmp_path / "one", cases=["mlp-tanh-ce"])
    assert cli.main(["verify", "--quiet", str(folder)]) == 0
    manifest_path = folder / golden.MANIFEST
    version = golden.SCHEMA_VERSION
    text = manifest_path.read_text().replace(f'"schema_version": {version},',
                                             f'"schema_version": {version}.0,')
    assert f'"schema_version": {version}.0' in text
    manifest_path.write_text(text)
    sums = folder / golden.CHECKSUMS
    lines = sums.read_text().splitlines()
    lines[0] = f"{hashlib.sha256(text.encode()).hexdigest()}  {golden.MANIFEST}"
    sums.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli.main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  manifest.json: schema_version {version}.0" in out and "FAILED" in out
