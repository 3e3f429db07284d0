"""Tests of refimpl/cli/explain.py and refimpl/cli/steps.py (`refimpl explain`, `refimpl steps`)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import numpy as np
import pytest

import refimpl.cli as cli
from refimpl.cli.explain import TOP_ROWS, case_contributions
from refimpl.cli.steps import choose_direction
from refimpl.study import summarize
from refimpl.testing.cases import get_case

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_explain_tied_autoencoder_prints_one_row_per_parameter(capsys):
    assert cli.main(["explain", "shared-tied-autoencoder"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index("") + 1:]
    assert table[0].split()[:2] == ["parameter", "||gradient||"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert list(rows) == ["enc.weight", "enc.bias", "dec.bias"]
    assert "enc.weight" in rows["enc.weight"] and "dec.weight^T" in rows["enc.weight"]
    # The numbers are those of the study functions.
    found = case_contributions(get_case("shared-tied-autoencoder"))
    summary = summarize(found["enc.weight"])
    assert f"{summary.norm:.3g}" in rows["enc.weight"]
    assert f"{summary.cosines[0, 1]:+.3f}" in rows["enc.weight"]
    assert f"({summary.shares[1]:+.0%})" in rows["enc.weight"]


def test_explain_convolution_prints_a_map_over_positions(capsys):
    assert cli.main(["explain", "shared-cnn-kernel"]) == 0
    out = capsys.readouterr().out
    assert "conv1.weight, use conv2.weight: ||gradient|| at each output position " \
           "(Ho x Wo = 5 x 5)" in out
    found = case_contributions(get_case("shared-cnn-kernel"))
    term = found["conv1.weight"].terms[1]
    norm_00 = np.linalg.norm(term.parts.gradients[0, 0])
    block = out.split("use conv2.weight")[1].splitlines()
    assert block[1].split()[0] == f"{norm_00:.2e}"


def test_explain_tied_pair_prints_pull_over_task(capsys):
    assert cli.main(["explain", "tied-soft-lasserre"]) == 0
    out = capsys.readouterr().out
    found = case_contributions(get_case("tied-soft-lasserre"))
    ratio = summarize(found["A:fc1.weight"]).pull_to_task
    row = next(line for line in out.splitlines() if line.startswith("A:fc1.weight"))
    assert row.split()[-1] == f"{ratio:.3g}" and "pull" in row
    assert next(line for line in out.splitlines()
                if line.startswith("A:fc2.weight")).split()[-1] == "-"


def test_explain_json_to_stdout_and_to_a_file(tmp_path, capsys):
    assert cli.main(["explain", "tied-hard", "--json", "-"]) == 0
    document = json.loads(capsys.readouterr().out)
    path = tmp_path / "explain.json"
    assert cli.main(["explain", "tied-hard", "--json", str(path)]) == 0
    assert json.loads(path.read_text()) == document
    shared = next(p for p in document["parameters"] if p["name"] == "A:fc1.weight")
    assert [t["model"] for t in shared["terms"]] == ["model_a", "model_b"]
    assert sum(t["share"] for t in shared["terms"]) == pytest.approx(1, rel=1e-12)


def test_explain_config_file_rebuilds_the_case(tmp_path, capsys):
    for name in ("shared-tied-autoencoder", "tied-soft-lasserre"):
        case = get_case(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(case.config))
        assert cli.main(["explain", name]) == 0
        built_in = capsys.readouterr().out
        assert cli.main(["explain", "--config", str(path)]) == 0
        from_file = capsys.readouterr().out
        assert from_file.split("\n", 1)[1] == built_in.split("\n", 1)[1]


@pytest.mark.parametrize("arguments, message", [
    (["explain", "no-such-case"], "unknown case 'no-such-case'"),
    (["explain", "shared-tied-autoencodr"],
     "unknown case 'shared-tied-autoencodr' (did you mean 'shared-tied-autoencoder'"),
    (["explain"], "expected a built-in CASE or --config PATH"),
    (["steps", "mlp-tanh-ce", "--param", "fc1.weight", "--direction", "1"],
     "--direction: a random direction takes no --param or --index"),
    (["steps", "mlp-tanh-ce", "--index", "2"], "--index: needs --param NAME"),
    (["steps", "mlp-tanh-ce", "--param", "nope"], "name: unknown parameter 'nope'"),
    (["steps", "mlp-tanh-ce", "--per-decade", "0"], "per_decade"),
])
def test_bad_arguments_are_one_line_usage_errors(arguments, message, capsys):
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_explain_bad_config_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"layers": []}')
    assert cli.main(["explain", "--config", str(path)]) == 2
    assert "expected a key 'model', 'pair', 'siamese' or 'micro_batches'" in \
        capsys.readouterr().err
    path.write_text("{not json")
    assert cli.main(["explain", "--config", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_steps_prints_the_table_and_the_best_steps(capsys):
    assert cli.main(["steps", "mlp-tanh-ce", "--param", "fc1.weight", "--index", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "coordinate fc1.weight[3]" in lines[0]
    header = lines.index("h       forward  central  richardson  complex")
    rows = [line.split()[0] for line in lines[header + 1:lines.index("", header)]]
    assert rows[:3] == ["1e-01", "1e-02", "1e-03"] and rows[-1] == "1e-300"
    assert "1e-20" in rows and "1e-40" in rows and "1e-30" not in rows
    assert "best h for central" in out and "complex step: largest error" in out
    assert "does not converge" not in out


def test_steps_refuses_a_coordinate_whose_gradient_is_zero():
    case = get_case("mlp-tanh-ce")
    _, gradient = case.loss_and_grads(case.params)
    gradient["fc1.bias"] = np.zeros_like(gradient["fc1.bias"])
    args = argparse.Namespace(param="fc1.bias", index=1, direction=None)
    with pytest.raises(ValueError, match=r"--param fc1.bias --index 1: the gradient there is 0"):
        choose_direction(case, gradient, args)
    args.param = "fc1.weight"
    assert choose_direction(case, gradient, args)[0] == "coordinate fc1.weight[1] (flat index)"


def test_steps_json_has_every_step(tmp_path, capsys):
    path = tmp_path / "steps.json"
    assert cli.main(["steps", "shared-tied-autoencoder", "--direction", "3", "--json",
                     str(path)]) == 0
    document = json.loads(path.read_text())
    assert document["direction"] == "random unit direction (seed 3)"
    assert len(document["steps"]) == 4 * 299 + 1
    assert set(document["errors"]) == {"forward", "central", "richardson", "complex"}
    assert document["errors"]["forward"][-1] == 1.0


@pytest.mark.parametrize("command", [["explain", "shared-cnn-kernel"],
                                     ["steps", "mlp-tanh-ce", "--per-decade", "1"]])
def test_plot_without_matplotlib_is_a_one_line_error(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "figure.png"
    assert cli.main([*command, "--plot", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--plot needs matplotlib" in err
    assert "pip install 'refimpl[plot]'" in err and not path.exists()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (optional)")
@pytest.mark.parametrize("command", [["explain", "shared-cnn-kernel"],
                                     ["explain", "tied-soft-lasserre"],
                                     ["explain", "sequence-tied-lm"],
                                     ["explain", "sequence-rnn-classifier"],
                                     ["explain", "siamese-triplet-all-active"],
                                     ["explain", "microbatch-tied-soft"],
                                     ["steps", "mlp-tanh-ce", "--per-decade", "1"]])
def test_plot_is_a_png(command, tmp_path, capsys):
    path = tmp_path / "figure.png"
    assert cli.main([*command, "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {path}" in capsys.readouterr().out


def test_explain_tied_language_model_lists_the_rows_used_most(capsys):
    assert cli.main(["explain", "sequence-tied-lm"]) == 0
    out = capsys.readouterr().out
    case = get_case("sequence-tied-lm")
    tokens = case.inputs["x"]
    counts = np.bincount(tokens.reshape(-1), minlength=11)
    row = next(line for line in out.splitlines() if line.startswith("embed.weight "))
    assert "embed.weight" in row.split("  ", 1)[1] and "out.weight" in row
    head = (f"embed.weight, use embed.weight: {tokens.size} occurrences (N x T) of "
            f"{np.count_nonzero(counts)} of 11 rows; the {TOP_ROWS} rows with the largest "
            f"gradient")
    assert head in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head)) + 2
    table = [line.split() for line in lines[start:start + TOP_ROWS]]
    # Each listed row: its occurrences counted from the tokens, its gradient through the
    # embedding (the term's row), largest first.
    term = case_contributions(case)["embed.weight"].terms[0]
    norms = np.linalg.norm(term.gradient, axis=1)
    listed = [int(cells[0]) for cells in table]
    assert [int(cells[1]) for cells in table] == [int(counts[r]) for r in listed]
    assert [cells[2] for cells in table] == [f"{norms[r]:.3g}" for r in listed]
    assert list(norms[listed]) == sorted(norms[listed], reverse=True)
    assert min(norms[listed]) >= max(np.delete(norms, listed))


def test_explain_rnn_prints_the_norm_through_every_time_step(capsys):
    assert cli.main(["explain", "sequence-rnn-classifier"]) == 0
    out = capsys.readouterr().out
    term = case_contributions(get_case("sequence-rnn-classifier"))["rnn.weight_hh"].terms[0]
    head = "rnn.weight_hh, use rnn.weight_hh: ||gradient|| through each time step (T = 6; " \
           "step 0 reads h = 0: no W_hh there); they sum to the term"
    block = out.split(head)[1].splitlines()[1].split()
    norms = np.linalg.norm(term.parts.gradients.reshape(6, -1), axis=1)
    assert block == [item for t, value in enumerate(norms) for item in (f"t{t}:", f"{value:.2e}")]
    assert block[1] == "0.00e+00"


def test_explain_siamese_has_a_term_per_branch(capsys):
    assert cli.main(["explain", "siamese-triplet-all-active"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("fc1.weight"))
    summary = summarize(case_contributions(get_case("siamese-triplet-all-active"))["fc1.weight"])
    for branch, norm, share in zip(("anchor", "positive", "negative"), summary.norms,
                                   summary.shares, strict=True):
        assert f"{branch}:fc1.weight {norm:.3g} ({share:+.0%})" in row


def test_explain_micro_batches_have_a_term_each_and_the_pull_once(capsys):
    assert cli.main(["explain", "microbatch-tied-soft", "--json", "-"]) == 0
    document = json.loads(capsys.readouterr().out)
    shared = next(p for p in document["parameters"] if p["name"] == "A:fc1.weight")
    assert [(t["micro_batch"], t["role"]) for t in shared["terms"]] == \
        [(0, "task"), (1, "task"), (None, "pull")]
    assert shared["terms"][0]["label"] == "mb0 (2/5) A: fc1.weight"
    assert sum(t["share"] for t in shared["terms"]) == pytest.approx(1, rel=1e-12)
    assert cli.main(["explain", "microbatch-tied-soft"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("A:fc1.weight"))
    assert "mb0:A:fc1.weight" in row and "mb1:A:fc1.weight" in row and row.count("pull") == 1


def test_explain_json_lists_every_embedding_row_touched(capsys):
    assert cli.main(["explain", "sequence-tied-lm", "--json", "-"]) == 0
    document = json.loads(capsys.readouterr().out)
    embedding = next(p for p in document["parameters"] if p["name"] == "embed.weight")
    first, second = embedding["terms"]
    tokens = get_case("sequence-tied-lm").inputs["x"]
    assert first["positions"]["axes"] == ["N", "T"]
    assert np.shape(first["positions"]["norms"]) == tokens.shape
    rows = first["positions"]["rows"]
    assert sorted(r["row"] for r in rows) == sorted(set(tokens.reshape(-1).tolist()))
    assert sum(r["occurrences"] for r in rows) == tokens.size
    assert second["positions"] is None and second["slot"] == "out.weight"


@pytest.mark.parametrize("name", ["sequence-rnn-classifier", "sequence-rnn-labelling",
                                  "siamese-triplet-all-active", "siamese-contrastive-all-active",
                                  "microbatch-tied-soft", "microbatch-tied-hard",
                                  "microbatch-anchored", "microbatch-siamese-triplet"])
def test_explain_config_file_rebuilds_the_new_kinds(name, tmp_path, capsys):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(get_case(name).config))
    assert cli.main(["explain", name]) == 0
    built_in = capsys.readouterr().out
    assert cli.main(["explain", "--config", str(path)]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == built_in.split("\n", 1)[1]


def test_explain_config_of_an_embedding_model_draws_token_ids(tmp_path, capsys):
    case = get_case("sequence-tied-lm")
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(case.config))
    assert cli.main(["explain", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:9]]
    assert rows == list(case.params)
    assert "embed.weight, use embed.weight: 15 occurrences (N x T)" in out


@pytest.mark.parametrize("command", ["explain", "steps"])
def test_an_unknown_case_gets_the_closest_names(command, capsys):
    assert cli.main([command, "siamese-triplet-near"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"refimpl {command}: case: unknown case 'siamese-triplet-near' (did "
                          f"you mean 'siamese-triplet-near-margin'")
    assert len(err.splitlines()) == 1


def test_steps_says_which_methods_do_not_converge_at_a_kink(tmp_path, capsys):
    # probe-relu-at-zero sits on a ReLU kink: along direction 0 the forward difference sees
    # the side refimpl's convention takes, the central and Richardson ones the mean slope.
    path = tmp_path / "steps.json"
    assert cli.main(["steps", "probe-relu-at-zero", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "best h for forward" in out
    for method in ("central", "richardson"):
        assert f"best h for {method}" not in out
        line = next(line for line in out.splitlines() if line.startswith(method))
        assert "does not converge: its error never falls as h shrinks" in line
        assert "kink" in line
    document = json.loads(path.read_text())
    assert document["converges"] == {"forward": True, "central": False, "richardson": False,
                                     "complex": True}
    assert document["best_steps"]["central"] is None
    assert document["best_steps"]["forward"] > 0


def _config_error(tmp_path, capsys, config, command="explain") -> str:
    """The one line of stderr of ``refimpl <command> --config`` on ``config`` (status 2)."""
    path = tmp_path / "config.json"
    path.write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    assert cli.main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip().replace(str(path), "PATH")


@pytest.mark.parametrize("sizes, expected", [
    # microbatch-mlp: a batch of 7; [2.5, 2.5, 2] was truncated to [2, 2, 2] (an example
    # dropped), [2, 2] dropped three, [3, 3, 3] was refused: all three are refused alike.
    ([2.5, 2.5, 2], "config['micro_batches'][0]: expected an integer micro-batch size, got "
                    "float 2.5"),
    ([2, 2], "config['micro_batches']: micro-batch sizes [2, 2] sum to 4; they must partition "
             "the batch of 7"),
    ([3, 3, 3], "config['micro_batches']: micro-batch sizes [3, 3, 3] sum to 9; they must "
                "partition the batch of 7"),
    ("7", "config['micro_batches']: expected a list of micro-batch sizes [n_0, ...], got '7'"),
])
def test_config_micro_batch_sizes_that_do_not_partition_the_batch_are_refused(
        sizes, expected, tmp_path, capsys):
    config = {**get_case("microbatch-mlp").config, "micro_batches": sizes}
    assert _config_error(tmp_path, capsys, config) == f"refimpl explain: --config PATH: " \
                                                      f"{expected}"


def test_config_second_micro_batch_sizes_need_a_pair(tmp_path, capsys):
    config = {**get_case("microbatch-mlp").config, "micro_batches_b": [3, 4]}
    assert _config_error(tmp_path, capsys, config) == (
        "refimpl explain: --config PATH: config['micro_batches_b']: only a tied pair splits a "
        "second batch; this base is a Sequential")


def test_config_micro_batch_sizes_of_a_pair_are_checked_for_each_model(tmp_path, capsys):
    config = get_case("microbatch-tied-soft").config      # A: 5 examples, B: 7
    assert config["micro_batches"] == [2, 3] and config["micro_batches_b"] == [6, 1]
    line = _config_error(tmp_path, capsys, {**config, "micro_batches_b": [3, 3]}, "steps")
    assert line.endswith("config['micro_batches_b']: micro-batch sizes [3, 3] sum to 6; they "
                         "must partition the batch of 7")


@pytest.mark.parametrize("key, value, expected", [
    ("input_shape", [4.5, 4], "config['input_shape'][0]: expected a positive int, got float 4.5"),
    ("input_shape", ["5", 4], "config['input_shape'][0]: expected a positive int, got str '5'"),
    ("input_shape", 5, "config['input_shape']: expected an input shape [N, ...] (a list of "
                       "ints), got 5"),
    ("seed", 2.5, "config['seed']: expected a non-negative int, got float 2.5"),
    ("seed", "0", "config['seed']: expected a non-negative int, got str '0'"),
])
def test_config_shapes_and_seeds_must_be_integers(key, value, expected, tmp_path, capsys):
    config = {**get_case("mlp-tanh-ce").config, key: value}
    assert _config_error(tmp_path, capsys, config) == f"refimpl explain: --config PATH: " \
                                                      f"{expected}"


def test_config_shapes_of_a_pair_and_a_siamese_model_must_be_integers(tmp_path, capsys):
    pair = get_case("tied-soft-l2").config
    line = _config_error(tmp_path, capsys, {**pair, "input_shape_b": [3.0, 4]})
    assert line.endswith("config['input_shape_b'][0]: expected a positive int, got float 3.0")
    siamese = get_case("siamese-triplet-all-active").config
    line = _config_error(tmp_path, capsys, {**siamese, "seed": 1.0})
    assert line.endswith("config['seed']: expected a non-negative int, got float 1.0")


def test_config_that_is_not_utf8_is_named(tmp_path, capsys):
    text = json.dumps({**get_case("mlp-tanh-ce").config, "note": "caf\u00e9"},
                      ensure_ascii=False)
    line = _config_error(tmp_path, capsys, text.encode("latin-1"), "steps")
    offset = text.encode("latin-1").index(b"\xe9")
    assert line == (f"refimpl steps: --config PATH: not UTF-8 text (byte 0xe9 at offset "
                    f"{offset}); save the configuration as UTF-8 JSON")
    line = _config_error(tmp_path, capsys, text.encode("utf-16"))
    assert line.startswith("refimpl explain: --config PATH: not UTF-8 text (byte 0xff at offset 0)")
