"""Tests of refimpl/testing/conform.py: the conformance engine, its outcomes and its report;
and of the report names of refimpl/testing/oracle.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refimpl import TiedPair
from refimpl.nn import MLP
from refimpl.testing import (
    ConformanceReport,
    NotExpressible,
    assert_matches_oracle,
    compare_with_oracle,
    conform,
)
from refimpl.testing.cases import Case, all_cases, get_case
from refimpl.testing.cases.drawn import drawn_cases
from refimpl.testing.conform import OUTCOMES, conform_case, load_builder

CATALOGUE = all_cases()
DRAWN = drawn_cases(6, seed=11)
SMALL = ["mlp-tanh-ce", "cnn-relu-maxpool", "tied-soft-l2", "shared-tied-autoencoder"]


def _key(config) -> str:
    return json.dumps(config, sort_keys=True)


REFERENCES = {_key(case.config): case for case in [*CATALOGUE, *DRAWN]}


def reference_build(config, dtype):
    """refimpl itself as the implementation: the case's own reference at the handed-over
    point and data (so a float32 run computes in float64 from float32-rounded values)."""
    case = REFERENCES[_key(config)]
    return lambda params, inputs: case.evaluate(params, inputs)


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

def test_the_reference_passes_every_case_in_every_dtype():
    report = conform(reference_build, dtypes=("float64", "float32", "tf32"), drawn=6, seed=11)
    assert report.ok, report.table()
    assert len(report.rows) == 3 * (len(CATALOGUE) + 6)
    assert {row.outcome for row in report.rows if row.dtype != "tf32"} == {"pass"}
    # TF32's floor (10-bit products) leaves some tensors unresolved: never a fail, though.
    assert {row.outcome for row in report.rows if row.dtype == "tf32"} <= {"pass",
                                                                             "inconclusive"}
    assert all(row.worst < 1 for row in report.rows)
    assert all(row.worst == 0 for row in report.rows if row.dtype == "float64")
    assert [row.case for row in report.rows[-18::3]] == [case.name for case in DRAWN]


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
    assert details["cnn-relu-maxpool"] == ("fail", "build raised ValueError: cannot build this")
    assert details["tied-soft-l2"] == ("fail", "impl raised ZeroDivisionError: division by zero")
    assert details["shared-tied-autoencoder"] == (
        "fail", "build returned int, not a callable impl(params, inputs)")
    assert details["mlp-tanh-ce"][0] == "pass"
    assert not report.ok and len(report.failed) == 3


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


def test_a_failed_probe_that_diagnose_recognises_is_a_convention_difference():
    seen = []

    def diagnose(case, loss, grads):
        seen.append((case.name, loss, grads))
        return "relu'(0): implementation 1, refimpl 0"

    build = _probe_build(_scaled)
    cases = [_probe(), "mlp-tanh-ce"]
    report = conform(_mixed(build), cases=cases, dtypes=["float64"],
                     diagnose=diagnose)
    row = report.rows[0]
    assert row.outcome == "convention differs"
    assert row.detail == "relu'(0): implementation 1, refimpl 0" and row.worst > 1
    # diagnose saw the implementation's own (faulty) gradients, from its one run
    assert len(seen) == 1 and seen[0][0] == "probe-fake"
    reference = get_case("mlp-relu-ce").loss_and_grads(get_case("mlp-relu-ce").params)[1]
    assert np.array_equal(seen[0][2]["fc1.weight"], reference["fc1.weight"] * (1 + 1e-6))
    assert report.ok and report.rows[1].outcome == "pass"
    strict = conform(_mixed(build), cases=cases, dtypes=["float64"], diagnose=diagnose,
                     strict_conventions=True)
    assert not strict.ok and [r.case for r in strict.failed] == ["probe-fake"]
    assert "convention differences fail the run" in strict.header()


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
