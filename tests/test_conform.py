"""Tests of refimpl/testing/conform.py: the conformance engine, its outcomes and its report;
and of the report names of refimpl/testing/oracle.py.

The promise of each verdict path (docs/conformance.md, "What each outcome promises") is kept by
the test named there; a planted wrong implementation of each kind must get the outcome the
page promises."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
from planted_conventions import PLANTED, VARIANTS
from planted_conventions import builder as planted_builder

from refimpl import TiedPair
from refimpl.nn import MLP
from refimpl.testing import (
    ConformanceReport,
    NotExpressible,
    assert_matches_oracle,
    compare_with_oracle,
    conform,
)
from refimpl.testing.cases import Case, all_cases, get_case, probes
from refimpl.testing.cases.drawn import drawn_cases
from refimpl.testing.conform import (
    OUTCOMES,
    ConformanceRow,
    conform_case,
    framework_of,
    load_builder,
)

CATALOGUE = all_cases()
DRAWN = drawn_cases(6, seed=11)
SMALL = ["mlp-tanh-ce", "cnn-relu-maxpool", "tied-soft-l2", "shared-tied-autoencoder"]


def _key(config) -> str:
    return json.dumps(config, sort_keys=True)


REFERENCES = {_key(case.config): case for case in [*CATALOGUE, *DRAWN]}


def reference_build(config, dtype):
    """refimpl itself as the implementation: the case's own reference at the handed-over
    point and data (so a float32 run computes in float64 from float32-rounded values); for a
    step case also its trajectory (the step capability)."""
    case = REFERENCES[_key(config)]
    impl = lambda params, inputs: case.evaluate(params, inputs)   # noqa: E731
    if case.kind == "steps":
        def train_steps(params, batches):
            run = case.trajectory(params, batches)
            return {"params": run.params, "losses": list(run.losses),
                    "grad_norms": list(run.grad_norms)}
        impl.train_steps = train_steps
    return impl


def planted(fault):
    """A builder whose implementation is the reference with ``fault(grads)`` applied."""
    def build(config, dtype):
        impl = reference_build(config, dtype)

        def faulty(params, inputs):
            loss, grads, outputs = impl(params, inputs)
            return loss, fault(dict(grads)), outputs
        return faulty
    return build


def _scaled(grads):
    return {name: g * (1 + 1e-6) for name, g in grads.items()}


# --- the outcomes --------------------------------------------------------------------------------

#: The probes no float32 or TF32 implementation can decide (``resolved_in: ["float64"]``).
FLOAT64_PROBES = {"probe-leaky-relu-slope-float64", "probe-softplus-above-20",
                  "probe-l2-lambda-float64"}


#: A case of each kind and the probes only float64 decides: the default tier's sample of the
#: catalogue for the reference's run (the slow tier runs every case).
SAMPLE = sorted({case.kind: case.name for case in reversed(CATALOGUE)}.values()) + \
    sorted(FLOAT64_PROBES)


def _the_reference_passes(cases) -> None:
    report = conform(reference_build, cases=cases, dtypes=("float64", "float32", "tf32"),
                     drawn=6, seed=11)
    assert report.ok, report.table()
    assert len(report.rows) == 3 * (len(cases or CATALOGUE) + 6)
    assert {row.outcome for row in report.rows if row.dtype == "float64"} == {"pass"}
    undecided = {row.case for row in report.rows if row.dtype == "float32"
                 and row.outcome == "inconclusive"}
    assert undecided == FLOAT64_PROBES
    assert {row.outcome for row in report.rows if row.dtype == "float32"
            and row.case not in undecided} == {"pass"}
    # TF32's floor (10-bit products) leaves some tensors unresolved: never a fail, though.
    assert {row.outcome for row in report.rows if row.dtype == "tf32"} <= {"pass",
                                                                             "inconclusive"}
    assert all(row.worst < 1 for row in report.rows)
    assert all(row.worst == 0 for row in report.rows if row.dtype == "float64")
    assert [row.case for row in report.rows[-18::3]] == [case.name for case in DRAWN]


def test_the_reference_passes_a_case_of_each_kind_in_every_dtype():
    assert {get_case(name).kind for name in SAMPLE} == {case.kind for case in CATALOGUE}
    _the_reference_passes(SAMPLE)


@pytest.mark.slow
def test_the_reference_passes_every_case_in_every_dtype():
    _the_reference_passes(None)


def test_a_negated_gradient_fails_every_case_and_dtype():
    def negate(grads):
        name = next(iter(grads))
        grads[name] = -grads[name]
        return grads

    report = conform(planted(negate), cases=SMALL, drawn=2, seed=11)
    assert not report.ok and len(report.failed) == len(report.rows) == 12
    for row in report.rows:
        assert row.outcome == "fail" and row.worst > 1, row
        assert row.tensor.startswith("gradient") and "worst index" in row.detail
        assert row.detail.startswith(row.tensor)       # the detail explains the worst tensor


def test_a_gradient_off_by_one_part_in_a_million_fails_in_float64():
    report = conform(planted(_scaled), cases=SMALL, dtypes=["float64"])
    assert [row.outcome for row in report.rows] == ["fail"] * len(SMALL)
    assert all(1 < row.worst < math.inf for row in report.rows)
    assert all(row.detail.startswith(row.tensor) and "more)" in row.detail
               for row in report.rows)
    assert not report.ok


def test_a_missing_gradient_fails_and_is_named():
    def drop(grads):
        grads.pop(next(iter(grads)))
        return grads

    row = conform_case(planted(drop), get_case("mlp-tanh-ce"), "float32")
    assert row.outcome == "fail" and row.worst == math.inf
    assert "gradient 'fc1.weight': missing from grads" in row.detail


def test_not_expressible_from_build_or_impl_is_its_own_outcome():
    def build(config, dtype):
        if "Conv2D" in json.dumps(config):
            raise NotExpressible("no convolutions here")
        if "pair" in config:
            def impl(params, inputs):
                raise NotExpressible("no tied pairs either")
            return impl
        return reference_build(config, dtype)

    report = conform(build, cases=SMALL, dtypes=["float64"])
    outcomes = {row.case: (row.outcome, row.detail) for row in report.rows}
    assert outcomes["cnn-relu-maxpool"] == ("not expressible", "no convolutions here")
    assert outcomes["tied-soft-l2"] == ("not expressible", "no tied pairs either")
    assert outcomes["mlp-tanh-ce"][0] == "pass"
    assert report.ok                                # nothing failed and something passed


def test_a_run_in_which_nothing_passed_is_not_ok():
    def build(config, dtype):
        raise NotExpressible("nothing")

    report = conform(build, cases=SMALL)
    assert {row.outcome for row in report.rows} == {"not expressible"}
    assert not report.failed and not report.ok
    assert "NOT OK (nothing passed)" in report.summary()


def _line_of(text: str) -> int:
    """The line of this file that holds ``text`` (where a planted exception is raised)."""
    with open(__file__, encoding="utf-8") as handle:
        return next(number for number, line in enumerate(handle, 1) if text in line)


def test_exceptions_of_build_or_impl_are_failed_rows_and_the_run_goes_on():
    def build(config, dtype):
        if "Conv2D" in json.dumps(config):
            raise ValueError("cannot build this")
        if "pair" in config:
            return lambda params, inputs: 1 / 0
        if config["model"].get("share"):
            return 42
        return reference_build(config, dtype)

    report = conform(build, cases=SMALL, dtypes=["float64"])
    details = {row.case: (row.outcome, row.detail) for row in report.rows}
    assert details["cnn-relu-maxpool"][0] == "fail"
    assert details["cnn-relu-maxpool"][1].startswith(
        "build raised ValueError: cannot build this (at ")
    raise_line = _line_of('raise ValueError("cannot build this")')
    assert details["cnn-relu-maxpool"][1].endswith(f"test_conform.py:{raise_line} in build)")
    assert details["tied-soft-l2"][1].startswith(
        "impl raised ZeroDivisionError: division by zero (at ")
    lambda_line = _line_of("return lambda params, inputs: 1 / 0")
    assert details["tied-soft-l2"][1].endswith(f"test_conform.py:{lambda_line} in <lambda>)")
    assert details["shared-tied-autoencoder"] == (
        "fail", "build returned int, not a callable impl(params, inputs)")
    assert details["mlp-tanh-ce"][0] == "pass"
    assert not report.ok and len(report.failed) == 3


class _Stop(BaseException):
    """A BaseException of the builder's own (neither Exception nor KeyboardInterrupt)."""


def test_sys_exit_or_any_base_exception_in_build_or_impl_is_a_failed_row():
    # Before: SystemExit went through, ending the run (and `refimpl conform`) with status 0 and
    # no output, and any calling script with it.
    def build(config, dtype):
        if "Conv2D" in json.dumps(config):
            sys.exit()
        if "pair" in config:
            def impl(params, inputs):
                sys.exit(3)
            return impl
        if config["model"].get("share"):
            raise _Stop("stop here")
        return reference_build(config, dtype)

    report = conform(build, cases=SMALL, dtypes=["float64"])
    details = {row.case: (row.outcome, row.detail) for row in report.rows}
    assert details["cnn-relu-maxpool"][0] == "fail"
    assert details["cnn-relu-maxpool"][1].startswith("build raised SystemExit (at ")
    assert "a SystemExit (sys.exit()) inside the builder's code is a failure of this case" in \
        details["cnn-relu-maxpool"][1]
    assert details["tied-soft-l2"][1].startswith("impl raised SystemExit: 3 (at ")
    assert details["shared-tied-autoencoder"][1].startswith(
        f"build raised {__name__}._Stop: stop here (at ")
    assert details["mlp-tanh-ce"][0] == "pass"
    assert not report.ok and len(report.failed) == 3


def test_keyboard_interrupt_stops_the_run():
    def build(config, dtype):
        def impl(params, inputs):
            raise KeyboardInterrupt
        return impl

    with pytest.raises(KeyboardInterrupt):
        conform(build, cases=["mlp-tanh-ce"])
    with pytest.raises(KeyboardInterrupt):
        conform_case(build, get_case("mlp-tanh-ce"))


def test_a_foreign_not_expressible_class_gets_a_hint():
    class NotExpressible(Exception):          # the builder's own, not refimpl's
        pass

    def build(config, dtype):
        raise NotExpressible("no such layer here")

    row = conform_case(build, get_case("mlp-tanh-ce"))
    assert row.outcome == "fail"
    assert row.detail.startswith(f"build raised {__name__}.test_a_foreign_not_expressible_"
                                 f"class_gets_a_hint.<locals>.NotExpressible: no such layer")
    assert "raise refimpl.testing.NotExpressible" in row.detail


def test_the_location_is_the_builders_own_frame_not_a_librarys_or_refimpls():
    model = MLP([4, 8, 3], activation="tanh", loss="cross_entropy")

    def build(config, dtype):
        def impl(params, inputs):
            if inputs["x"].shape[0] == 5:
                np.linalg.inv(np.zeros((2, 2)))                   # raises inside numpy
            x = inputs["x"][:, :2]
            return model.loss_and_grads(params, x, inputs["y"])   # raises inside refimpl
        return impl

    numpy_row = conform_case(build, get_case("mlp-tanh-ce"))
    assert "LinAlgError" in numpy_row.detail
    assert numpy_row.detail.endswith(
        f"test_conform.py:{_line_of('# raises inside numpy')} in impl)")
    refimpl_row = conform_case(build, get_case("mlp-batch1-one-feature"))
    assert refimpl_row.detail.startswith("impl raised ValueError: ")
    assert refimpl_row.detail.endswith(
        f"test_conform.py:{_line_of('# raises inside refimpl')} in impl)")


def test_a_builder_installed_among_the_libraries_is_still_located(tmp_path, monkeypatch):
    # Both the builder's package and the framework it calls live in the libraries' folder
    # (pip-installed): the builder's own frame is the location, not the framework's.
    conform_module = sys.modules["refimpl.testing.conform"]   # the name is the function's
    library = tmp_path / "site-packages"
    (library / "fake_builder_pkg").mkdir(parents=True)
    (library / "fake_builder_pkg" / "__init__.py").write_text("", encoding="utf-8")
    (library / "fake_builder_pkg" / "builders.py").write_text(
        "import fake_framework\n\ndef build(config, dtype):\n    def impl(params, inputs):\n"
        "        return fake_framework.explode()\n    return impl\n", encoding="utf-8")
    (library / "fake_framework.py").write_text(
        "def explode():\n    raise RuntimeError('inside the framework')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(library))
    monkeypatch.setattr(conform_module, "_LIBRARIES", (library.resolve(),))
    try:
        build = load_builder("fake_builder_pkg.builders:build")
        row = conform_case(build, get_case("mlp-tanh-ce"))
    finally:
        for name in ("fake_builder_pkg.builders", "fake_builder_pkg", "fake_framework"):
            sys.modules.pop(name, None)
    assert row.detail.startswith("impl raised RuntimeError: inside the framework (at ")
    assert row.detail.endswith("builders.py:5 in impl)"), row.detail


def test_a_builder_module_that_exits_at_import_is_a_load_error(tmp_path, monkeypatch):
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="does not import: SystemExit: 0"):
        load_builder("exits_at_import:build")
    sys.modules.pop("exits_at_import", None)


def test_progress_is_reported_before_each_row_and_at_the_end():
    seen = []
    conform(reference_build, cases=["mlp-tanh-ce", "tied-soft-l2"], drawn=1, seed=11,
            progress=lambda done, total, label: seen.append((done, total, label)))
    drawn = DRAWN[0].name
    assert seen == [(0, 6, "mlp-tanh-ce [float64]"), (1, 6, "mlp-tanh-ce [float32]"),
                    (2, 6, "tied-soft-l2 [float64]"), (3, 6, "tied-soft-l2 [float32]"),
                    (4, 6, f"{drawn} [float64]"), (5, 6, f"{drawn} [float32]"), (6, 6, "")]
    with pytest.raises(TypeError, match="progress: expected a callable"):
        conform(reference_build, cases=["mlp-tanh-ce"], progress="bar")


def test_refimpls_own_exceptions_are_raised_not_blamed_on_the_implementation():
    good = get_case("mlp-tanh-ce")

    def broken(params):
        raise RuntimeError("a bug in the reference")

    case = Case("broken", "mlp", good.config, good.params, good.inputs, broken, good.outputs)
    with pytest.raises(RuntimeError, match="a bug in the reference"):
        conform_case(reference_build, case)


def _fit_case() -> Case:
    """Targets equal to the outputs up to 1e-9: every gradient far below float32's floor."""
    model = MLP([2, 3, 2], activation="tanh", loss="mse")
    rng = np.random.default_rng(0)
    params, x = model.init(0), rng.standard_normal((3, 2))
    y = model.forward(params, x) + 1e-9 * rng.standard_normal((3, 2))
    return Case("near-a-fit", "mlp", {"model": model.config()}, params, {"x": x, "y": y},
                lambda p: model.loss_and_grads(p, x, y), lambda p: {"out": model.forward(p, x)},
                lambda p, d: (*model.loss_and_grads(p, d["x"], d["y"]),
                              {"out": model.forward(p, d["x"])}))


def test_an_unresolvable_case_is_inconclusive_never_a_pass():
    case = _fit_case()

    def build(config, dtype):
        return lambda params, inputs: case.evaluate(params, inputs)

    report = conform(build, cases=[case])
    outcomes = {row.dtype: row for row in report.rows}
    assert outcomes["float64"].outcome == "pass"
    assert outcomes["float32"].outcome == "inconclusive"
    assert "unresolved in this dtype: loss, gradient 'fc1.weight'" in outcomes["float32"].detail
    only_float32 = conform(build, cases=[case], dtypes=["float32"])
    assert not only_float32.ok and not only_float32.failed


# --- convention probes ---------------------------------------------------------------------------

def _probe() -> Case:
    """A fake probe: a catalogue case with a "convention" entry in its config."""
    base = get_case("mlp-relu-ce")
    config = {**base.config, "convention": {"name": "relu'(0)", "refimpl_rule": "0"}}
    return Case("probe-fake", "mlp", config, base.params, base.inputs, base.loss_and_grads,
                base.outputs, base.evaluate)


def _probe_build(fault):
    base = get_case("mlp-relu-ce")

    def build(config, dtype):
        assert config["convention"]["name"] == "relu'(0)"

        def impl(params, inputs):
            loss, grads, outputs = base.evaluate(params, inputs)
            return loss, fault(dict(grads)), outputs
        return impl
    return build


def test_diagnose_writes_the_best_guess_and_never_grants_a_convention():
    # The old loophole: a diagnose that "recognised" the gradients made a wrong
    # implementation a convention difference. Now its sentence is a guess in a fail row.
    seen = []

    def diagnose(case, loss, grads):
        seen.append((case.name, loss, grads))
        return "relu'(0): implementation 1, refimpl 0"

    build = _probe_build(_scaled)
    cases = [_probe(), "mlp-tanh-ce"]
    report = conform(_mixed(build), cases=cases, dtypes=["float64"], diagnose=diagnose)
    row = report.rows[0]
    assert row.outcome == "fail" and row.worst > 1
    assert row.detail.endswith("; best guess: relu'(0): implementation 1, refimpl 0")
    # diagnose saw the implementation's own (faulty) gradients, from its one run
    assert len(seen) == 1 and seen[0][0] == "probe-fake"
    reference = get_case("mlp-relu-ce").loss_and_grads(get_case("mlp-relu-ce").params)[1]
    assert np.array_equal(seen[0][2]["fc1.weight"], reference["fc1.weight"] * (1 + 1e-6))
    assert not report.ok and report.rows[1].outcome == "pass"


def _mixed(probe_build):
    """The probe's builder for the probe, the reference for everything else."""
    def build(config, dtype):
        if "convention" in config:
            return probe_build(config, dtype)
        return reference_build(config, dtype)
    return build


def test_a_failed_probe_that_diagnose_does_not_recognise_is_a_fail():
    report = conform(_probe_build(_scaled), cases=[_probe()], dtypes=["float64"],
                     diagnose=lambda case, loss, grads: None)
    assert report.rows[0].outcome == "fail" and not report.ok
    assert "best guess" not in report.rows[0].detail


# --- "convention differs": the whole result against one documented alternative -----------

PROBES = {case.name: case for case in probes.cases()}
PLANTS = [(name, None, plant) for name, plant in PLANTED.items()] + \
    [(name, variant, plant) for (name, variant), plant in VARIANTS.items()]


@pytest.mark.parametrize(("name", "variant", "plant"), PLANTS,
                         ids=[f"{name}-{variant or 'main'}" for name, variant, _ in PLANTS])
def test_a_planted_rule_gets_the_promised_outcome(name, variant, plant):
    # Documented members (relu'(0) in {0.5, 1}, sign(0) = -1, an even tie split, ...): the
    # whole result of an implementation written without refimpl matches refimpl's alternative
    # reference. Bugs, losses of precision (TensorFlow's float32 slope, lam as float32),
    # non-finite values and values outside a family (relu'(0) = 7, mygrad's leaky'(0) = 0):
    # fail, with the best guess in the detail.
    row = conform_case(planted_builder(PROBES[name], variant), PROBES[name], "float64")
    assert row.outcome == plant.outcome, row.detail
    rule = PROBES[name].config["convention"]["refimpl_rule"]
    if plant.outcome == "convention differs":
        assert row.detail.endswith(f"one documented rule changed; refimpl: {rule}"), row.detail
    else:
        assert "; best guess: " in row.detail and plant.words in row.detail, row.detail


def test_strict_conventions_fail_the_run():
    case = PROBES["probe-l1-tie"]

    def build(config, dtype):
        if "convention" in config:
            return planted_builder(case)(config, dtype)
        return reference_build(config, dtype)

    cases = [case, "mlp-tanh-ce"]
    lenient = conform(build, cases=cases, dtypes=["float64"])
    assert [row.outcome for row in lenient.rows] == ["convention differs", "pass"]
    assert lenient.ok and not lenient.failed
    strict = conform(build, cases=cases, dtypes=["float64"], strict_conventions=True)
    assert not strict.ok and [row.case for row in strict.failed] == ["probe-l1-tie"]
    assert "convention differences fail the run" in strict.header()
    assert strict.summary().endswith("FAILED")


def _doubled_loss(result):
    loss, grads, outputs = result
    return 2 * loss, grads, outputs


def _wrong_bias_gradient(result):
    loss, grads, outputs = result
    return loss, {**grads, "fc2.bias": grads["fc2.bias"] + 0.5}, outputs


def _negated_outputs(result):
    loss, grads, outputs = result
    return loss, grads, {name: -value for name, value in outputs.items()}


def _float32_arrays(result):
    loss, grads, outputs = result
    return (np.float32(loss), {name: g.astype(np.float32) for name, g in grads.items()},
            {name: o.astype(np.float32) for name, o in outputs.items()})


def _extra_key(result):
    loss, grads, outputs = result
    return loss, {**grads, "fc3.weight": np.zeros((2, 2))}, outputs


def _without_outputs_but_a_wrong_loss(result):
    return result[0] * 1.001, result[1]


@pytest.mark.parametrize("fault", [_doubled_loss, _wrong_bias_gradient, _negated_outputs,
                                   _float32_arrays, _extra_key,
                                   _without_outputs_but_a_wrong_loss])
def test_a_convention_with_anything_else_wrong_is_a_fail(fault):
    case = PROBES["probe-relu-at-zero"]
    follows = conform_case(planted_builder(case), case, "float64")
    assert follows.outcome == "convention differs", follows.detail     # the control
    row = conform_case(planted_builder(case, fault=fault), case, "float64")
    assert row.outcome == "fail", row.detail
    assert ("best guess: relu'(0): implementation ~ 1 (a documented value: the positive "
            "side's derivative)") in row.detail
    assert "the whole result does not match refimpl's with it: " in row.detail


def test_a_convention_in_float32_is_judged_at_float32s_limits():
    case = PROBES["probe-leaky-relu-at-zero"]
    row = conform_case(planted_builder(case), case, "float32")
    assert row.outcome == "convention differs", row.detail
    doubled = conform_case(planted_builder(case, fault=_doubled_loss), case, "float32")
    assert doubled.outcome == "fail"


@pytest.mark.parametrize("dtype", ["float32", "tf32"])
@pytest.mark.parametrize("name", sorted(FLOAT64_PROBES))
def test_a_probe_no_dtype_can_decide_is_inconclusive_never_pass(name, dtype):
    # The planted implementations of these probes are wrong (a threshold, a float32 slope or
    # lam) by ~1e-8 relative: within float32's tolerance, so "pass" would be a false pass.
    case = PROBES[name]
    row = conform_case(planted_builder(case), case, dtype)
    assert row.outcome == "inconclusive", row.detail
    assert "only float64 resolves it" in row.detail and "tensors match" in row.detail
    assert row.outcome == conform_case(reference_build, case, dtype).outcome
    broken = conform_case(planted_builder(case, fault=_negated_outputs), case, dtype)
    assert broken.outcome == "fail"          # a real failure stays a failure
    assert conform_case(planted_builder(case), case, "float64").outcome == PLANTED[name].outcome


def test_the_table_shows_a_convention_rows_whole_rule():
    case = PROBES["probe-softplus-above-20"]
    row = conform_case(planted_builder(case), case, "float64")
    assert row.outcome == "convention differs" and len(row.detail) > 150
    report = ConformanceReport((row,), "b", ("float64",), 0, 0)
    assert row.detail in report.table()
    cut = ConformanceRow("c", "mlp", "float64", "not expressible", math.nan, "", 0.0, "x" * 150)
    assert "x" * 97 + "..." in ConformanceReport((cut,), "b", ("float64",), 0, 0).table()


def test_diagnose_is_asked_only_about_failed_probes():
    def diagnose(case, loss, grads):
        raise AssertionError("diagnose called for a passing probe or a non-probe")

    report = conform(_mixed(_probe_build(lambda g: g)), cases=[_probe(), "mlp-tanh-ce"],
                     diagnose=diagnose)
    assert report.ok and {row.outcome for row in report.rows} == {"pass"}
    failing = conform(planted(_scaled), cases=["mlp-tanh-ce"], dtypes=["float64"],
                      diagnose=diagnose)
    assert failing.rows[0].outcome == "fail"


def test_the_implementation_runs_once_per_case_and_dtype():
    calls = []

    def build(config, dtype):
        impl = reference_build(config, dtype)

        def counted(params, inputs):
            calls.append(dtype)
            return impl(params, inputs)
        return counted

    conform(build, cases=SMALL, dtypes=["float64", "float32"])
    assert sorted(calls) == sorted(["float64", "float32"] * len(SMALL))


def test_build_gets_a_copy_of_the_config_and_the_dtype_name():
    seen = []

    def build(config, dtype):
        seen.append(dtype)
        config.clear()                  # a builder may do anything with its copy
        return reference_build(get_case("mlp-tanh-ce").config, dtype)

    report = conform(build, cases=["mlp-tanh-ce"], dtypes=[np.float32, "float64"])
    assert seen == ["float32", "float64"] and report.ok
    assert get_case("mlp-tanh-ce").config                     # the case's own is intact


# --- the report ----------------------------------------------------------------------------------

def test_the_table_and_json_state_what_was_run_and_every_row():
    report = conform(planted(_scaled), cases=["mlp-tanh-ce"], drawn=2, seed=11,
                     dtypes=["float64"])
    table = report.table()
    assert table.splitlines()[0] == (
        f"refimpl conform {__name__}:planted.<locals>.build: dtypes float64; 2 drawn "
        f"case(s), seeds 11..12 (rerun one with --case drawn-<kind>-<seed>)")
    assert "mlp-tanh-ce" in table and "FAIL" in table and "worst index" in table
    assert table.splitlines()[-1] == (
        "3 rows: 0 pass, 3 fail, 0 inconclusive, 0 not expressible, 0 convention differs: "
        "FAILED")
    document = json.loads(report.to_json())
    assert (document["builder"], document["dtypes"], document["drawn"], document["seed"],
            document["ok"]) == (f"{__name__}:planted.<locals>.build", ["float64"], 2, 11, False)
    assert [row["case"] for row in document["rows"]] == [row.case for row in report.rows]
    assert document["counts"] == {outcome: (3 if outcome == "fail" else 0)
                                  for outcome in OUTCOMES}


def test_the_framework_is_recorded_when_the_builder_module_names_it(monkeypatch):
    module = types.ModuleType("fake_framework_builders")
    module.FRAMEWORK = "numpy"                       # the version: the installed numpy's
    exec("def build(config, dtype):\n    raise ValueError('no')\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert framework_of(module.build) == {"name": "numpy", "version": np.__version__}
    module.FRAMEWORK_VERSION = "9.9"
    report = conform(module.build, cases=["mlp-tanh-ce"], dtypes=["float64"])
    assert report.header().startswith("refimpl conform fake_framework_builders:build (numpy "
                                      "9.9): ")
    document = json.loads(report.to_json())
    assert document["framework"] == {"name": "numpy", "version": "9.9"}
    assert document["refimpl"] == __import__("refimpl").__version__
    assert framework_of(reference_build) is None
    assert json.loads(conform(reference_build, cases=["mlp-tanh-ce"]).to_json())[
        "framework"] is None


def test_json_writes_non_finite_worst_errors_as_strings():
    def build(config, dtype):
        raise ValueError("no")

    document = json.loads(conform(build, cases=["mlp-tanh-ce"]).to_json())
    assert [row["worst"] for row in document["rows"]] == ["nan", "nan"]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"dtypes": ["float16"]}, ValueError, "dtype: expected one of"),
    ({"dtypes": []}, ValueError, "dtypes: expected at least one"),
    ({"drawn": -1}, ValueError, "drawn"),
    ({"seed": "7"}, TypeError, "seed"),
    ({"cases": ["no-such-case"]}, ValueError, "unknown case 'no-such-case'"),
    ({"strict_conventions": 1}, TypeError, "strict_conventions"),
])
def test_bad_arguments_are_refused_before_anything_runs(kwargs, error, message):
    calls = []

    def build(config, dtype):
        calls.append(config)
        return reference_build(config, dtype)

    with pytest.raises(error, match=message):
        conform(build, **kwargs)
    assert calls == []


def test_build_must_be_callable():
    with pytest.raises(TypeError, match="build: expected a callable"):
        conform("refimpl.adapters.torch:build")


def test_load_builder():
    assert load_builder(f"{__name__}:reference_build") is reference_build
    assert load_builder("refimpl.testing:conform") is conform
    for spec, message in [(__name__, "expected MODULE:FUNCTION"),
                          ("a:b:c", "expected MODULE:FUNCTION"),
                          ("no_such_module_xyz:build", "does not import: ModuleNotFoundError"),
                          (f"{__name__}:missing", "has no attribute 'missing'"),
                          (f"{__name__}:SMALL", "is not callable")]:
        with pytest.raises(ValueError, match=message):
            load_builder(spec)


def test_the_report_is_exported():
    assert isinstance(conform(reference_build, cases=["mlp-tanh-ce"]), ConformanceReport)


# --- report names (refimpl/testing/oracle.py) ----------------------------------------------------

def _mlp_and_data():
    model = MLP([3, 4, 2], activation="tanh", loss="cross_entropy")
    rng = np.random.default_rng(1)
    return model, {"x": rng.standard_normal((5, 3)), "y": np.array([0, 1, 1, 0, 1])}


def _model_impl(model):
    return lambda params, inputs: model.loss_and_grads(params, inputs["x"], inputs["y"])


def test_a_models_report_is_named_after_it_or_as_the_caller_says():
    model, data = _mlp_and_data()
    assert compare_with_oracle(_model_impl(model), model, inputs=data).case == \
        "Sequential(fc1, fc2)"
    named = compare_with_oracle(_model_impl(model), model, inputs=data, name="my-mlp")
    assert named.case == "my-mlp" and str(named).startswith("case 'my-mlp' matches")
    assert assert_matches_oracle(_model_impl(model), model, inputs=data, name="m2").case == "m2"
    case_impl = reference_build(get_case("mlp-tanh-ce").config, "float64")
    assert compare_with_oracle(case_impl, "mlp-tanh-ce").case == "mlp-tanh-ce"


def test_a_pairs_report_names_both_models():
    model_a, data = _mlp_and_data()
    model_b = MLP([3, 4, 2], activation="sigmoid", loss="cross_entropy")
    pair = TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight"}, lam=0.1)
    inputs = {"xa": data["x"], "ya": data["y"], "xb": data["x"], "yb": data["y"]}

    def impl(params, given):
        return pair.joined_loss_and_grads(params, (given["xa"], given["ya"]),
                                          (given["xb"], given["yb"]))

    assert compare_with_oracle(impl, pair, inputs=inputs).case == "TiedPair(fc1, fc2 | fc1, fc2)"


@pytest.mark.parametrize("name", ["", 3])
def test_a_bad_report_name_is_refused(name):
    model, data = _mlp_and_data()
    with pytest.raises(TypeError, match="name: expected a non-empty str"):
        compare_with_oracle(_model_impl(model), model, inputs=data, name=name)
