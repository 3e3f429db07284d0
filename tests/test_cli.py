"""Tests of refimpl/cli.py: `refimpl check` (other sub-commands: their modules' tests)."""

from __future__ import annotations

import json
import os

import pytest

import refimpl.cli as cli
from refimpl.cases import all_cases
from refimpl.cases.mlp import model_case
from refimpl.model import MLP


def test_check_passes_every_built_in_case(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["case", "method", "parameter"]
    cases = all_cases()
    assert f"{len(cases)} cases" in lines[-1] and " 0 failed" in lines[-1]
    for case in cases:
        assert case.name in out
    assert "FAIL" not in out


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

    from dataclasses import replace
    return replace(case, loss_and_grads=wrong)


def test_check_exits_1_and_names_the_failing_case(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "all_cases", lambda: all_cases()[:1] + [broken_case()])
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
    assert big.parameter_total() > cli.FULL_CHECK_LIMIT
    monkeypatch.setattr(cli, "all_cases", lambda: [big])
    assert cli.main(["check", "--json", "-"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["rows"]) == 2 * cli.DIRECTIONS
    assert {row["mode"] for row in document["rows"]} == {"directional"}


def test_cli_without_a_command_prints_usage(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main([])
    assert raised.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["memory"], "LocallyConnected2D"),
    (["demo", "--quick"], "hard sharing"),
])
def test_registered_sub_commands_run_through_main(argv, expected, capsys):
    assert cli.main(argv) == 0
    assert expected in capsys.readouterr().out


def test_every_registered_sub_command_has_its_hooks():
    parser = cli.build_parser()
    for name, _, _ in cli.SUBCOMMANDS:
        args = parser.parse_args([name] + {"golden": ["--out", "x"], "verify": ["x"]}.get(name, []))
        assert callable(args.handler)
