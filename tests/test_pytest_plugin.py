"""Tests of refimpl/testing/pytest_plugin.py: one pytest item per (case, dtype)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from refimpl.nn import MLP
from refimpl.testing.cases import Case, all_cases, probes

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
#: Installed (``pip install .``: the ``pytest11`` entry point of setup.cfg) the plugin loads
#: by itself, and a second ``-p`` of the same module is an error; run from a source tree
#: without installing, it is loaded by ``-p``.
PLUGIN = () if any(entry.value == "refimpl.testing.pytest_plugin"
                   for entry in entry_points(group="pytest11")) \
    else ("-p", "refimpl.testing.pytest_plugin")

BUILDERS = textwrap.dedent('''
    import json

    from refimpl.nn import Sequential
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
        impl = lambda params, inputs: case.evaluate(params, inputs)
        if case.kind == "steps":             # the step capability: refimpl's trajectory
            def train_steps(params, batches):
                run = case.trajectory(params, batches)
                return {"params": run.params, "losses": list(run.losses),
                        "grad_norms": list(run.grad_norms)}
            impl.train_steps = train_steps
        return impl

    def negated_in_float32(config, dtype):
        case = _case(config)
        def impl(params, inputs):
            loss, grads, outputs = case.evaluate(params, inputs)
            sign = -1.0 if dtype == "float32" else 1.0
            return loss, {name: sign * g for name, g in grads.items()}, outputs
        return impl

    def dense_only(config, dtype):
        if "Conv2D" in json.dumps(config):
            raise NotExpressible("no convolutions")
        return reference(config, dtype)

    def exits(config, dtype):
        def impl(params, inputs):
            raise SystemExit(0)
        return impl

    def relu_one_at_zero(config, dtype):
        """relu'(0) = 1 (a documented convention): refimpl's model with the ReLU replaced by
        the identity, exact at this probe's point (no negative pre-activation)."""
        if config.get("convention", {}).get("name") != "relu'(0)":
            return reference(config, dtype)
        layers = [dict(layer) for layer in config["model"]["layers"]]
        layers[1] = {"type": "Identity"}
        model = Sequential.from_config({**config["model"], "layers": layers})
        def impl(params, inputs):
            loss, grads = model.loss_and_grads(params, inputs["x"], inputs["y"])
            return loss, grads, {"out": model.forward(params, inputs["x"])}
        return impl
''')

FEW = ("--refimpl-case=mlp-tanh-ce", "--refimpl-case=cnn-relu-maxpool",
       "--refimpl-case=tied-soft-l2")


@pytest.fixture
def builders(pytester):
    pytester.makepyfile(plugin_builders=BUILDERS)
    pytester.syspathinsert()
    yield "plugin_builders"
    sys.modules.pop("plugin_builders", None)


def test_without_the_option_the_plugin_adds_nothing(pytester):
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = pytester.runpytest(*PLUGIN, "-q")
    result.assert_outcomes(passed=1)
    assert "refimpl-conform" not in result.stdout.str()


def test_importing_the_plugin_builds_no_case():
    code = ("import refimpl.testing.cases as c, refimpl.testing.cases.drawn as d\n"
            "calls = []\n"
            "c.all_cases = d.drawn_case = lambda *a: calls.append(a)\n"
            "import refimpl.testing.pytest_plugin\n"
            "print(len(calls))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "0"


def test_one_item_per_case_and_dtype_and_all_pass(pytester, builders):
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:reference",
                                "--refimpl-drawn=2", "--refimpl-seed=9", "-v")
    names = [case.name for case in all_cases()]
    # three probes only float64 can decide: inconclusive (skipped) in float32
    result.assert_outcomes(passed=2 * (len(names) + 2) - 3, skipped=3)
    out = result.stdout.str()
    for name in [*names[:3], names[-1]]:
        assert f"refimpl-conform::{name}[float64] PASSED" in out
        assert f"refimpl-conform::{name}[float32] PASSED" in out
    assert out.count("refimpl-conform::drawn-") == 4


def test_a_fault_fails_its_items_with_the_tensor_named(pytester, builders):
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:negated_in_float32",
                                *FEW)
    result.assert_outcomes(passed=3, failed=3)
    out = result.stdout.str()
    assert "FAILED refimpl-conform::mlp-tanh-ce[float32]" in out
    assert "mlp-tanh-ce [float32] with plugin_builders:negated_in_float32: fail: gradient" in out
    assert "refimpl/testing/conform.py" not in out          # the row, not a traceback


def test_not_expressible_is_skipped_with_its_reason(pytester, builders):
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:dense_only", *FEW, "-rs")
    result.assert_outcomes(passed=4, skipped=2)
    assert "not expressible: no convolutions" in result.stdout.str()
    assert result.ret == pytest.ExitCode.OK


def test_a_session_in_which_nothing_passed_is_not_ok(pytester, builders):
    # Before: every item skipped, and the session was green.
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:dense_only",
                                "--refimpl-case=cnn-relu-maxpool")
    result.assert_outcomes(passed=1, skipped=2)              # the plain test passes
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert ("refimpl: none of the 2 conformance item(s) of plugin_builders:dense_only passed"
            in result.stdout.str())
    deselected = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:dense_only",
                                    "--refimpl-case=cnn-relu-maxpool", "-k", "test_one")
    assert deselected.ret == pytest.ExitCode.OK              # no conformance item ran


def test_sys_exit_in_an_implementation_fails_its_items_and_the_session_goes_on(pytester,
                                                                                builders):
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:exits",
                                "--refimpl-case=mlp-tanh-ce,tied-soft-l2",
                                "--refimpl-dtypes=float64")
    result.assert_outcomes(failed=2)
    assert result.stdout.str().count("impl raised SystemExit: 0") >= 2


def _near_a_fit() -> Case:
    """Targets equal to the outputs up to 1e-9: every gradient far below float32's floor."""
    model = MLP([2, 3, 2], activation="tanh", loss="mse")
    rng = np.random.default_rng(0)
    params, x = model.init(0), rng.standard_normal((3, 2))
    y = model.forward(params, x) + 1e-9 * rng.standard_normal((3, 2))
    return Case("near-a-fit", "mlp", {"model": model.config(), "seed": 0}, params,
                {"x": x, "y": y}, lambda p: model.loss_and_grads(p, x, y),
                lambda p: {"out": model.forward(p, x)},
                lambda p, d: (*model.loss_and_grads(p, d["x"], d["y"]),
                              {"out": model.forward(p, d["x"])}))


def test_inconclusive_is_skipped_never_passed(pytester, builders, monkeypatch):
    case = _near_a_fit()
    monkeypatch.setattr(probes, "cases", lambda: [case])
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:reference",
                                "--refimpl-case=near-a-fit", "-rs")
    result.assert_outcomes(passed=1, skipped=1)            # float64 passes, float32 cannot
    assert "inconclusive: unresolved in this dtype: loss" in result.stdout.str()


def test_k_selects_cases_and_dtypes_are_chosen(pytester, builders):
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:reference",
                                "--refimpl-dtypes=tf32,float64", "-k",
                                "tied-soft-l2 and not architecture", "-v")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "tied-soft-l2[tf32] PASSED" in out and "tied-soft-l2[float64] PASSED" in out


@pytest.mark.parametrize(("option", "message"), [
    ("--refimpl-build=plugin_builders", "expected MODULE:FUNCTION"),
    ("--refimpl-build=plugin_builders:nothing", "has no attribute 'nothing'"),
    ("--refimpl-dtypes=float16", "dtype: expected one of"),
    ("--refimpl-drawn=-2", "--refimpl-drawn: expected a non-negative int"),
    ("--refimpl-case=no-such-case", "unknown case 'no-such-case'"),
])
def test_bad_options_are_usage_errors(pytester, builders, option, message):
    argv = [option] if option.startswith("--refimpl-build") else \
        [f"--refimpl-build={builders}:reference", option]
    result = pytester.runpytest(*PLUGIN, *argv)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.parametrize(("strict", "outcome"), [(False, {"xfailed": 1, "passed": 1}),
                                                 (True, {"failed": 1, "passed": 1})])
def test_a_convention_difference_is_an_xfail_unless_strict(pytester, builders, strict,
                                                          outcome):
    argv = [f"--refimpl-build={builders}:relu_one_at_zero",
            "--refimpl-case=probe-relu-at-zero,mlp-tanh-ce", "--refimpl-dtypes=float64", "-rx"]
    result = pytester.runpytest(*PLUGIN, *argv, *(["--refimpl-strict-conventions"] * strict))
    result.assert_outcomes(**outcome)
    assert "relu'(0) = 1 (the positive side's derivative): the whole result matches" in \
        result.stdout.str()


def test_a_run_of_convention_differences_alone_is_not_ok(pytester, builders):
    result = pytester.runpytest(*PLUGIN, f"--refimpl-build={builders}:relu_one_at_zero",
                                "--refimpl-case=probe-relu-at-zero", "--refimpl-dtypes=float64")
    result.assert_outcomes(xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.slow
def test_xdist_spreads_the_items_over_workers(pytester, builders, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(pytester.path)]))
    result = pytester.runpytest_subprocess(*PLUGIN, f"--refimpl-build={builders}:reference",
                                           *FEW, "--refimpl-drawn=3", "-n", "2", "-v")
    result.assert_outcomes(passed=12)
    out = result.stdout.str()
    workers = {line.split()[0] for line in out.splitlines() if "PASSED" in line}
    assert workers == {"[gw0]", "[gw1]"}, out


@pytest.mark.slow
def test_under_xdist_the_controller_applies_the_nothing_passed_rule(pytester, builders,
                                                                    monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(pytester.path)]))
    argv = [f"--refimpl-build={builders}:dense_only", "-n", "2"]
    skipped = pytester.runpytest_subprocess(*PLUGIN, *argv, "--refimpl-case=cnn-relu-maxpool")
    skipped.assert_outcomes(skipped=2)
    assert skipped.ret == pytest.ExitCode.TESTS_FAILED
    assert "refimpl: none of the 2 conformance item(s)" in skipped.stdout.str()
    mixed = pytester.runpytest_subprocess(*PLUGIN, *argv, *FEW)
    mixed.assert_outcomes(passed=4, skipped=2)
    assert mixed.ret == pytest.ExitCode.OK
