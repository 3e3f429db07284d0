"""Tests of the optional hvp capability in conformance runs (refimpl/testing/conform.py,
refimpl/cli/conform.py, the pytest plugin's --refimpl-hvp): HVP rows of their own, opt-in, a
default run unchanged, "not expressible" without impl.hvp, failures named, and a probe's HVP
row judged like its gradient row."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

import refimpl as ri
from refimpl import cli, nn
from refimpl.testing import NotExpressible, conform
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.drawn import drawn_cases
from refimpl.testing.cases.models import case_model
from refimpl.testing.conform import CHECKS, conform_case

pytest_plugins = ["pytester"]
#: The plugin is registered as refimpl's pytest11 entry point once installed; else named.
PLUGIN = () if any(entry.value == "refimpl.testing.pytest_plugin"
                   for entry in entry_points(group="pytest11")) \
    else ("-p", "refimpl.testing.pytest_plugin")

CATALOGUE = all_cases()
DRAWN = drawn_cases(2, seed=21)
REFERENCES = {json.dumps(case.config, sort_keys=True): case for case in [*CATALOGUE, *DRAWN]}
FEW = ["mlp-tanh-ce", "tied-soft-l2", "shared-tied-autoencoder", "microbatch-siamese-triplet"]


def _case(config):
    return REFERENCES[json.dumps(config, sort_keys=True)]


def _hvp_of(case):
    def hvp(params, inputs, vector):
        model, data, splits, splits_b = case_model(dataclasses.replace(case, inputs=inputs))
        return ri.hvp(model, params, data, vector, splits=splits, splits_b=splits_b)
    return hvp


def reference_build(config, dtype, fault=None):
    """refimpl itself, gradient and hvp (``fault`` applied to the products)."""
    case = _case(config)

    def impl(params, inputs):
        return case.evaluate(params, inputs)

    def hvp(params, inputs, vector):
        products = _hvp_of(case)(params, inputs, vector)
        return products if fault is None else fault(products)
    impl.hvp = hvp
    return impl


def gradients_only(config, dtype):
    case = _case(config)
    return lambda params, inputs: case.evaluate(params, inputs)


def test_a_default_run_has_gradient_rows_only_and_its_table_is_unchanged():
    report = conform(reference_build, cases=FEW, dtypes=["float64"])
    assert [row.check for row in report.rows] == ["gradient"] * len(FEW)
    assert not report.hvp and report.to_dict()["hvp"] is False
    header, columns, *body = report.table().splitlines()
    assert columns.split() == ["case", "dtype", "outcome", "worst/limit", "tensor", "time",
                               "detail"]
    assert "Hessian" not in header and not any("hvp" in line for line in body)
    assert report.summary().startswith(f"{len(FEW)} rows: ")


def test_hvp_rows_follow_each_gradient_row_and_pass_for_refimpl_itself():
    report = conform(reference_build, cases=FEW, dtypes=["float64", "float32"], drawn=1,
                     seed=21, hvp=True)
    assert [(row.case, row.dtype, row.check) for row in report.rows] == [
        (case, dtype, check) for case in [*FEW, DRAWN[0].name]
        for dtype in ("float64", "float32") for check in CHECKS]
    assert report.ok and report.counts()["pass"] == len(report.rows)
    hvp_rows = [row for row in report.rows if row.check == "hvp"]
    assert all(row.tensor.startswith("hvp '") and "tensors match" in row.detail
               for row in hvp_rows)
    assert report.summary().startswith(f"{len(report.rows)} rows ({len(hvp_rows)} gradient, "
                                       f"{len(hvp_rows)} hvp): ")
    table = report.table().splitlines()
    assert table[0].endswith("gradients and Hessian-vector products")
    assert table[1].split()[:3] == ["case", "dtype", "check"]
    document = json.loads(report.to_json())
    assert document["hvp"] is True and [row["check"] for row in document["rows"]][:2] == [
        "gradient", "hvp"]


def test_without_impl_hvp_the_hvp_rows_are_not_expressible():
    report = conform(gradients_only, cases=["mlp-tanh-ce"], dtypes=["float64"], hvp=True)
    gradient, hvp = report.rows
    assert gradient.outcome == "pass" and hvp.outcome == "not expressible"
    assert "no hvp(params, inputs, vector)" in hvp.detail
    assert report.ok      # a builder without the capability still conforms


@pytest.mark.parametrize("fault", [lambda hv: {k: -v for k, v in hv.items()},
                                   lambda hv: {k: v * (1 + 1e-6) for k, v in hv.items()},
                                   lambda hv: {k: v for k, v in list(hv.items())[1:]}])
def test_a_wrong_hvp_fails_its_own_row_and_leaves_the_gradient_row_alone(fault):
    report = conform(lambda config, dtype: reference_build(config, dtype, fault),
                     cases=["shared-tied-autoencoder"], dtypes=["float64"], hvp=True)
    gradient, hvp = report.rows
    assert gradient.outcome == "pass"
    assert hvp.outcome == "fail" and hvp.tensor.startswith("hvp '") and not report.ok
    assert "FAIL" in report.table() and hvp.detail in report.table()


def test_exceptions_of_impl_hvp_are_failed_rows_and_not_expressible_is_its_own_outcome():
    def raising(kind):
        def build(config, dtype):
            impl = gradients_only(config, dtype)

            def hvp(params, inputs, vector):
                raise kind("no second order here")
            impl.hvp = hvp
            return impl
        return build

    [_, row] = conform(raising(RuntimeError), cases=["mlp-tanh-ce"], dtypes=["float64"],
                       hvp=True).rows
    assert row.outcome == "fail"
    assert row.detail.startswith("impl.hvp raised RuntimeError: no second order here (at ")
    [_, row] = conform(raising(NotExpressible), cases=["mlp-tanh-ce"], dtypes=["float64"],
                       hvp=True).rows
    assert (row.outcome, row.detail) == ("not expressible", "no second order here")

    def unbuildable(config, dtype):
        raise NotExpressible("nothing at all")
    report = conform(unbuildable, cases=["mlp-tanh-ce"], dtypes=["float64"], hvp=True)
    assert [row.outcome for row in report.rows] == ["not expressible"] * 2


def _leaky_as_identity(config, dtype):
    """JAX's rule at a leaky ReLU's kink, slope 1, in the gradients and the products alike."""
    case = _case(config)
    model = case_model(case).model
    identity = nn.Sequential([nn.Identity() if isinstance(layer, nn.LeakyReLU) else layer
                              for layer in model.layers], loss=model.loss_spec)

    def impl(params, inputs):
        return (*identity.loss_and_grads(params, inputs["x"], inputs["y"]),
                {"out": identity.forward(params, inputs["x"])})

    def hvp(params, inputs, vector):
        return ri.hvp(identity, params, (inputs["x"], inputs["y"]), vector)
    impl.hvp = hvp
    return impl


def test_a_probes_hvp_row_is_judged_like_its_gradient_row():
    report = conform(_leaky_as_identity, cases=["probe-leaky-relu-at-zero"],
                     dtypes=["float64"], hvp=True)
    gradient, hvp = report.rows
    assert gradient.outcome == hvp.outcome == "convention differs", report.table()
    assert hvp.detail.startswith("leaky_relu'(0) = 1 (the positive side's slope, JAX): every "
                                 "product matches refimpl's H v")
    strict = conform(_leaky_as_identity, cases=["probe-leaky-relu-at-zero"],
                     dtypes=["float64"], hvp=True, strict_conventions=True)
    assert [row.check for row in strict.failed] == ["gradient", "hvp"]


def test_a_probes_hvp_that_follows_no_documented_rule_fails():
    report = conform(lambda config, dtype: reference_build(
        config, dtype, lambda hv: {k: 1.5 * v for k, v in hv.items()}),
        cases=["probe-leaky-relu-at-zero", "probe-l1-tie"], dtypes=["float64"], hvp=True)
    assert [row.outcome for row in report.rows] == ["pass", "fail", "pass", "fail"]


def test_a_probe_float32_cannot_decide_is_inconclusive_for_its_products_too():
    report = conform(reference_build, cases=["probe-softplus-above-20"], dtypes=["float32"],
                     hvp=True)
    assert [row.outcome for row in report.rows] == ["inconclusive", "inconclusive"]
    assert "only float64 resolves it" in report.rows[1].detail
    assert report.rows[1].detail.endswith("products match)")


def test_conform_case_checks_its_check():
    case = get_case("mlp-tanh-ce")
    row = conform_case(reference_build, case, "float64", check="hvp")
    assert (row.check, row.outcome) == ("hvp", "pass")
    with pytest.raises(ValueError, match="check: expected one of"):
        conform_case(reference_build, case, "float64", check="jvp")
    hand_made = dataclasses.replace(case, config={"inputs": case.config["inputs"]})
    with pytest.raises(ValueError, match="no Hessian-vector expectation"):
        conform_case(reference_build, hand_made, "float64", check="hvp")
    with pytest.raises(TypeError, match="hvp: expected True or False"):
        conform(reference_build, cases=["mlp-tanh-ce"], hvp="yes")


def test_a_case_without_an_expectation_gets_no_hvp_row_and_progress_counts_the_rest():
    case = get_case("mlp-tanh-ce")
    hand_made = dataclasses.replace(case, name="hand-made",
                                    config={"inputs": case.config["inputs"]})
    REFERENCES[json.dumps(hand_made.config, sort_keys=True)] = hand_made
    seen = []
    report = conform(reference_build, cases=[hand_made, "mlp-tanh-ce"], dtypes=["float64"],
                     hvp=True, progress=lambda done, total, label: seen.append(
                         (done, total, label)))
    assert [(row.case, row.check) for row in report.rows] == [
        ("hand-made", "gradient"), ("mlp-tanh-ce", "gradient"), ("mlp-tanh-ce", "hvp")]
    assert seen == [(0, 3, "hand-made [float64]"), (1, 3, "mlp-tanh-ce [float64]"),
                    (2, 3, "mlp-tanh-ce [float64] hvp"), (3, 3, "")]


BUILDERS = textwrap.dedent('''
    """refimpl itself with its hvp, for the command-line test."""
    import json

    import refimpl as ri
    from refimpl.testing.cases import all_cases
    from refimpl.testing.cases.models import model_from_config

    CATALOGUE = {json.dumps(case.config, sort_keys=True): case for case in all_cases()}

    def reference(config, dtype):
        case = CATALOGUE[json.dumps(config, sort_keys=True)]
        impl = lambda params, inputs: case.evaluate(params, inputs)
        def hvp(params, inputs, vector):
            model, data, splits, splits_b = model_from_config(config, inputs)
            return ri.hvp(model, params, data, vector, splits=splits, splits_b=splits_b)
        impl.hvp = hvp
        return impl
''')


def test_the_command_line_flag(tmp_path, monkeypatch, capsys):
    (tmp_path / "hvp_builders.py").write_text(BUILDERS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        status = cli.main(["conform", "hvp_builders:reference", "--case", "tied-hard",
                           "--dtype", "float64", "--hvp", "--json", str(tmp_path / "r.json")])
    finally:
        sys.modules.pop("hvp_builders", None)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "2 rows (1 gradient, 1 hvp): 2 pass" in out
    document = json.loads((tmp_path / "r.json").read_text())
    assert [(row["check"], row["outcome"]) for row in document["rows"]] == [
        ("gradient", "pass"), ("hvp", "pass")]


def test_the_pytest_plugin_option(pytester):
    pytester.makepyfile(hvp_plugin_builders=BUILDERS)
    pytester.syspathinsert()
    result = pytester.runpytest(*PLUGIN, "--refimpl-build=hvp_plugin_builders:reference",
                                "--refimpl-case=shared-tied-autoencoder",
                                "--refimpl-dtypes=float64", "--refimpl-hvp", "-p",
                                "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*error*")
