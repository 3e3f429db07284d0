"""Tests of refimpl/cli/demo.py and refimpl/cli/tying_experiment.py: the quick demo runs and
prints its table; properties of the data and of the results (not timings)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import io
import itertools
import json
import os
import re
import sys
from unittest import mock

import numpy as np
import pytest

from refimpl.cli.demo import _plot, add_demo_arguments, run_demo, settings_from_args
from refimpl.cli.tying_experiment import (
    QUICK,
    DemoSettings,
    make_shifted_tasks,
    rotation,
    run_lasserre,
    run_shifted,
    sweep,
)

TINY = DemoSettings(seeds=2, steps=30, n_a=60, n_test=50)
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def parse(argv):
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    return parser.parse_args(argv)


def table_rows(text, header_start):
    """The data rows of the table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def numbers(row):
    """The (value, error) pairs of a row's ``v +- e`` cells."""
    return [(float(v), float(e)) for v, e in re.findall(r"([-+]?\d+\.\d+) \+- (\d+\.\d+)", row)]


@pytest.fixture(scope="module")
def quick_output():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = run_demo(parse(["--quick"]))
    return status, buffer.getvalue()


def test_quick_demo_prints_both_tables_with_every_strength(quick_output):
    status, text = quick_output
    assert status == 0
    assert f"{QUICK.seeds} seeds x {QUICK.steps} full-batch steps" in text
    assert "1. Shifted task" in text and "2. Lasserre variant" in text
    shifted = table_rows(text, "tying         lambda  B test accuracy")
    lasserre = table_rows(text, "tying         lambda  classifier test accuracy")
    labels = ["independent", "soft", "soft", "soft", "soft", "hard sharing"]
    lambdas = ["0", "0.001", "0.01", "0.1", "1", "inf"]
    for rows in (shifted, lasserre):
        assert [row.split("  ")[0].strip() for row in rows] == labels
        assert [re.split(r"\s{2,}", row)[1] for row in rows] == lambdas


def test_quick_demo_numbers_are_accuracies_gains_and_distances(quick_output):
    _, text = quick_output
    shifted = [numbers(row) for row in table_rows(text, "tying         lambda  B test acc")]
    lasserre = [numbers(row) for row in
                table_rows(text, "tying         lambda  classifier test accuracy")]
    for rows, accuracy_columns in ((shifted, (0, 2)), (lasserre, (0,))):
        for row in rows:
            for column in accuracy_columns:
                assert 0 <= row[column][0] <= 1
        assert rows[0][1] == (0.0, 0.0)            # gain of lambda = 0 over itself
        distances = [row[-1][0] for row in rows]
        assert distances[-1] == 0.0                  # hard sharing: one array
        # soft tying approaches hard sharing: the distance falls as lambda grows
        assert all(b < a for a, b in itertools.pairwise(distances[:-1]))


def test_sweep_results_structure_and_paired_gain():
    results = sweep(TINY)
    assert set(results) == {"shifted", "lasserre"}
    for rows in results.values():
        assert [row["lam"] for row in rows] == [0.0, *TINY.lams, "hard"]
        assert rows[0]["gain"] == 0.0 and rows[0]["gain_se"] == 0.0
    first = results["shifted"]
    mean_b = first[1]["b_accuracy"] - first[0]["b_accuracy"]
    assert first[1]["gain"] == pytest.approx(mean_b, abs=1e-12)  # mean of differences


def test_runs_are_deterministic():
    assert run_shifted(3, 0.1, TINY) == run_shifted(3, 0.1, TINY)
    assert run_lasserre(3, "hard", TINY) == run_lasserre(3, "hard", TINY)


def test_tasks_share_classes_and_b_is_a_rotated_shifted_copy():
    settings = DemoSettings(n_a=90, n_b_per_class=4, n_test=30, dim=6)
    tasks = make_shifted_tasks(5, settings)
    (xa, ya), (xat, yat), (xb, yb), (xbt, ybt) = tasks
    assert xa.shape == (90, 6) and xat.shape == xbt.shape == (30, 6) and xb.shape == (12, 6)
    assert np.bincount(yb).tolist() == [4, 4, 4]
    assert set(np.unique(ya)) <= {0, 1, 2} and ya.dtype == yb.dtype == np.int64
    again = make_shifted_tasks(5, settings)
    for first, second in zip(tasks, again, strict=True):
        np.testing.assert_array_equal(first[0], second[0])
    no_shift = make_shifted_tasks(5, DemoSettings(n_a=90, n_b_per_class=4, n_test=30, dim=6,
                                                  angle=0.0, shift=0.0))
    # without rotation and shift, B's held-out inputs come from A's distribution: the class
    # means estimated from the two held-out sets agree to sampling error
    assert np.allclose(no_shift.test_b[0].mean(axis=0), no_shift.test_a[0].mean(axis=0),
                       atol=1.0)


@pytest.mark.parametrize("dim, angle", [(2, 0.3), (5, 0.4), (10, 1.0)])
def test_rotation_is_a_proper_rotation_by_the_angle(dim, angle):
    turn = rotation(np.random.default_rng(0), dim, angle)
    np.testing.assert_allclose(turn.T @ turn, np.eye(dim), atol=1e-12)
    assert np.linalg.det(turn) == pytest.approx(1.0)
    # eigenvalues e^{+-i angle} for every plane (and 1 for an odd dimension's last axis)
    phases = np.sort(np.abs(np.angle(np.linalg.eigvals(turn))))
    expected = np.sort([angle] * (dim // 2 * 2) + [0.0] * (dim % 2))
    np.testing.assert_allclose(phases, expected, atol=1e-9)


def test_json_output(tmp_path, capsys):
    path = tmp_path / "demo.json"
    status = run_demo(parse(["--seeds", "1", "--steps", "5", "--lams", "0.5",
                             "--json", str(path)]))
    assert status == 0
    document = json.loads(path.read_text())
    assert document["settings"]["seeds"] == 1 and document["settings"]["lams"] == [0.5]
    assert [row["lam"] for row in document["results"]["shifted"]] == [0.0, 0.5, "hard"]
    assert "B test accuracy" in capsys.readouterr().out


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="matplotlib is installed")
def test_plot_without_matplotlib_is_a_clear_error(tmp_path, capsys):
    status = run_demo(parse(["--quick", "--plot", str(tmp_path / "demo.png")]))
    assert status == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "demo.png").exists()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (optional)")
def test_plot_is_written_with_matplotlib(tmp_path):
    path = tmp_path / "demo.png"
    assert run_demo(parse(["--seeds", "1", "--steps", "5", "--plot", str(path)])) == 0
    assert path.stat().st_size > 0


@pytest.mark.parametrize("argv, field, value", [
    (["--seeds", "3"], "seeds", 3), (["--steps", "7"], "steps", 7),
    (["--lams", "0.5,0.05"], "lams", (0.05, 0.5)), (["--penalty", "l1"], "penalty", "l1"),
    (["--angle", "0.25"], "angle", 0.25), (["--shift", "0.75"], "shift", 0.75),
    (["--dim", "6"], "dim", 6), (["--noise", "2.5"], "noise", 2.5),
    (["--learning-rate", "0.05"], "learning_rate", 0.05),
    (["--momentum", "0.5"], "momentum", 0.5)])
def test_every_flag_reaches_the_settings(argv, field, value):
    assert getattr(QUICK, field) != value
    assert getattr(settings_from_args(parse(["--quick", *argv])), field) == value


@pytest.mark.parametrize("argv", [["--lams", "a,b"], ["--lams", "-1"], ["--lams", "0"],
                                  ["--seeds", "0"], ["--steps", "x"], ["--penalty", "l3"]])
def test_bad_arguments_are_refused_by_the_parser(argv):
    with pytest.raises(SystemExit):
        parse(argv)


@pytest.mark.parametrize("argv, match", [(["--noise", "0"], "--noise: expected a number > 0"),
                                         (["--momentum", "1"], "momentum: expected a finite"),
                                         (["--learning-rate", "0"], "lr: expected"),
                                         (["--angle", "nan"], "expected finite numbers")])
def test_bad_values_exit_with_status_2(argv, match, capsys):
    assert run_demo(parse(argv)) == 2
    assert match in capsys.readouterr().err


def test_a_strength_beyond_the_stability_limit_is_refused_before_training(capsys):
    # curvature 4 lam = 40; heavy ball with momentum 0.9 is stable only for lr * 40 < 3.8
    assert run_demo(parse(["--quick", "--lams", "10"])) == 2
    assert "lambda = 10 needs learning_rate < 2 (1 + momentum) / (4 lambda) = 0.095" in \
        capsys.readouterr().err


def test_a_diverging_run_is_reported_not_tabulated(capsys):
    assert run_demo(parse(["--seeds", "1", "--steps", "40", "--lams", "0.001",
                           "--learning-rate", "30"])) == 1
    captured = capsys.readouterr()
    assert "training did not decrease the objective" in captured.err
    assert "B test accuracy" not in captured.out


def test_l1_penalty_runs():
    results = sweep(DemoSettings(seeds=1, steps=20, n_a=60, n_test=50, penalty="l1",
                                 lams=(0.01,)))
    assert [row["lam"] for row in results["shifted"]] == [0.0, 0.01, "hard"]


def test_json_dash_prints_only_the_json(capsys):
    status = run_demo(parse(["--seeds", "1", "--steps", "5", "--lams", "0.5", "--json", "-"]))
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert [row["lam"] for row in document["results"]["lasserre"]] == [0.0, 0.5, "hard"]


def _fake_matplotlib(monkeypatch, save):
    """A stand-in for matplotlib (an optional extra, absent in CI) whose savefig is ``save``."""
    figure = mock.MagicMock()
    figure.savefig.side_effect = save
    axes = [mock.MagicMock(), mock.MagicMock()]
    for axis in axes:
        axis.plot.return_value = [mock.MagicMock()]
    pyplot = mock.MagicMock()
    pyplot.subplots.return_value = (figure, axes)
    matplotlib = mock.MagicMock()
    matplotlib.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    return figure


def test_plot_is_written_through_a_temporary_sibling(tmp_path, monkeypatch):
    targets = []

    def save(path):
        targets.append(path)
        with open(path, "wb") as handle:
            handle.write(b"png")

    _fake_matplotlib(monkeypatch, save)
    path = tmp_path / "p.png"
    _plot(sweep(TINY), str(path))
    assert targets and targets[0] != str(path) and targets[0].endswith(".png")
    assert os.path.dirname(targets[0]) == str(tmp_path)
    assert path.read_bytes() == b"png"
    assert os.listdir(tmp_path) == ["p.png"]


def test_a_plot_that_fails_half_way_leaves_nothing(tmp_path, monkeypatch):
    def save(path):
        with open(path, "wb") as handle:
            handle.write(b"half a png")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    figure = _fake_matplotlib(monkeypatch, save)
    path = tmp_path / "p.png"
    path.write_bytes(b"old plot")
    with pytest.raises(OSError, match=f"{path}: No space left on device"):
        _plot(sweep(TINY), str(path))
    assert path.read_bytes() == b"old plot"
    assert os.listdir(tmp_path) == ["p.png"]
    assert sys.modules["matplotlib.pyplot"].close.call_args.args == (figure,)
