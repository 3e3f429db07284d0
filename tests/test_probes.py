"""Tests of refimpl/testing/cases/probes.py: every convention probe passes refimpl's own rule
(an independent implementation, in float64, float32 and TF32), fails an implementation that
breaks exactly its convention, and `diagnose` names that convention."""

from __future__ import annotations

import dataclasses

import independent_numpy as ind
import numpy as np
import pytest
from planted_conventions import PLANTED, VARIANTS, planted

from refimpl.testing import (
    assert_matches_oracle,
    compare_with_golden,
    compare_with_oracle,
    golden,
)
from refimpl.testing.cases import get_case, probes
from refimpl.testing.resolution import case_floors

PROBES = {case.name: case for case in probes.cases()}


def test_every_probe_has_a_planted_implementation_or_a_documented_reason():
    assert set(PLANTED) | {"probe-dilated-window-fits"} == set(PROBES)
    assert probes.PROBE_ALTERNATIVES["probe-dilated-window-fits"] == ()
    assert set(probes.PROBE_ALTERNATIVES) == set(PROBES)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_convention_fails_and_is_named(name):
    case = PROBES[name]
    with planted(case) as impl:
        report = compare_with_oracle(impl, case)
        loss, grads, _ = impl(dict(case.params), dict(case.inputs))
    assert report.verdict == "fail", report
    message = probes.diagnose(case, loss, grads)
    assert message is not None and PLANTED[name].words in message, message
    assert message.startswith(case.config["convention"]["name"]) or "implementation ~" in message
    assert case.config["convention"]["refimpl_rule"] in message


#: Probes whose convention float32 can resolve (the other three differ by ~1e-8 relative: a
#: float64 probe, ``resolved_in: ["float64"]``, documented in docs/conventions.md).
FLOAT32_RESOLVED = sorted(name for name in PLANTED
                          if "float32" in PROBES[name].config["convention"]["resolved_in"])


def test_three_probes_are_resolved_in_float64_only():
    assert sorted(set(PLANTED) - set(FLOAT32_RESOLVED)) == [
        "probe-l2-lambda-float64", "probe-leaky-relu-slope-float64", "probe-softplus-above-20"]


@pytest.mark.parametrize("name", FLOAT32_RESOLVED)
def test_planted_convention_fails_in_float32(name):
    case = PROBES[name]
    with planted(case, dtype="float32") as impl:
        report = compare_with_oracle(impl, case, dtype="float32")
        loss, grads, _ = impl(dict(case.params), dict(case.inputs))
    assert report.verdict == "fail", report
    message = probes.diagnose(case, loss, grads)
    assert message is not None and PLANTED[name].words in message, message


@pytest.mark.parametrize("dtype", ["float64", "float32", "tf32"])
@pytest.mark.parametrize("name", sorted(PROBES))
def test_resolved_in_is_where_every_alternative_fails_refimpls_comparison(name, dtype):
    # A dtype resolves a probe iff refimpl's reference under every alternative rule, handed
    # in as an implementation's result, fails the ordinary comparison with refimpl's own.
    # (The comparison rule's own verdict: without the report's ``unresolved``, which is set
    # from ``resolved_in`` and would make this circular.)
    case = PROBES[name]
    verdicts = [dataclasses.replace(
        compare_with_oracle(lambda params, inputs, a=alternative: a.reference, case,
                            dtype=dtype), unresolved=None).verdict
                for alternative in probes.alternatives(case)]
    assert set(verdicts) <= {"pass", "fail"}, verdicts
    resolved = dtype in case.config["convention"]["resolved_in"]
    assert resolved == all(verdict == "fail" for verdict in verdicts), (resolved, verdicts)


@pytest.mark.parametrize("variant", sorted(VARIANTS), ids="-".join)
def test_other_values_of_a_family_are_read_off_and_flagged(variant):
    case = PROBES[variant[0]]
    with planted(case, variant[1]) as impl:
        report = compare_with_oracle(impl, case)
        loss, grads, _ = impl(dict(case.params), dict(case.inputs))
    assert report.verdict == "fail", report
    message = probes.diagnose(case, loss, grads)
    assert message is not None and VARIANTS[variant].words in message, message


@pytest.mark.parametrize("dtype", ["float64", "float32", "tf32"])
@pytest.mark.parametrize("name", sorted(PROBES))
def test_refimpl_rule_passes_every_probe(name, dtype):
    # ... in every dtype that resolves it; elsewhere every tensor matches and the verdict is
    # inconclusive (no implementation in that dtype can show which rule it follows).
    case = PROBES[name]
    report = compare_with_oracle(ind.make_impl(case.config, dtype=dtype), case, dtype=dtype)
    if dtype in probes.resolved_in(case):
        assert report.verdict == "pass", report
    else:
        assert report.verdict == "inconclusive" and not report.inconclusive, report
        assert all(row.verdict == "pass" for row in report.rows), report
    loss, grads, _ = ind.make_impl(case.config, dtype=dtype)(dict(case.params),
                                                           dict(case.inputs))
    assert probes.diagnose(case, loss, grads) is None


FLOAT64_ONLY = sorted(set(PLANTED) - set(FLOAT32_RESOLVED))


@pytest.mark.parametrize("dtype", ["float32", "tf32"])
@pytest.mark.parametrize("name", FLOAT64_ONLY)
def test_a_probe_the_dtype_cannot_decide_is_inconclusive_for_every_implementation(name, dtype):
    # compare_with_oracle and assert_matches_oracle, as conform: refimpl's rule and the
    # planted one (TensorFlow's float32 slope, softplus's threshold, lam as float32) both
    # match refimpl's reference within float32's tolerance, so neither is a pass.
    case = PROBES[name]
    with planted(case, dtype=dtype) as planted_impl:
        for impl in (ind.make_impl(case.config, dtype=dtype), planted_impl):
            report = compare_with_oracle(impl, case, dtype=dtype)
            assert report.verdict == "inconclusive" and not report.ok, report
            assert "only float64 resolves it" in str(report), report
            with pytest.raises(AssertionError, match="inconclusive"):
                assert_matches_oracle(impl, case, dtype=dtype)
            allowed = assert_matches_oracle(impl, case, dtype=dtype, allow_inconclusive=True)
            assert allowed.verdict == "inconclusive"
    # a wrong implementation still fails there, and the dtype that resolves it decides
    reference = ind.make_impl(case.config, dtype=dtype)

    def negated(params, inputs):
        loss, grads, outputs = reference(params, inputs)
        return loss, {key: -value for key, value in grads.items()}, outputs

    assert compare_with_oracle(negated, case, dtype=dtype).verdict == "fail"
    assert compare_with_oracle(ind.make_impl(case.config), case).verdict == "pass"
    with planted(case) as planted_impl:
        assert compare_with_oracle(planted_impl, case).verdict == "fail"


def test_a_golden_comparison_of_a_probe_the_dtype_cannot_decide_is_inconclusive(tmp_path):
    name = FLOAT64_ONLY[0]
    case = PROBES[name]
    folder = golden.write(tmp_path / "probe", cases=[name])
    [report] = compare_with_golden(ind.make_impl(case.config, dtype="float32"), folder,
                                   dtype="float32")
    assert report.verdict == "inconclusive" and "only float64 resolves it" in str(report)
    [report] = compare_with_golden(ind.make_impl(case.config), folder)
    assert report.verdict == "pass", report


def test_a_refused_exact_dilated_fit_is_an_error_not_a_pass():
    case = PROBES["probe-dilated-window-fits"]

    def refuses(params, inputs):
        raise ValueError("window larger than the input")   # mygrad's behaviour
    with pytest.raises(ValueError, match="window larger"):
        compare_with_oracle(refuses, case)


def test_diagnose_names_nothing_it_does_not_recognise():
    case = PROBES["probe-relu-at-zero"]
    loss, grads = case.loss_and_grads(case.params)
    rng = np.random.default_rng(0)
    scrambled = {key: rng.standard_normal(value.shape) for key, value in grads.items()}
    assert probes.diagnose(case, loss, scrambled) is None
    assert probes.diagnose(case, loss, {"fc1.weight": grads["fc1.weight"]}) is None
    wrong_shape = {**grads, "fc1.bias": np.zeros(5)}
    assert probes.diagnose(case, loss, wrong_shape) is None
    assert probes.diagnose(case, "not a number", scrambled) is None
    assert probes.diagnose(case, loss, {**grads, "fc1.bias": "text"}) is None
    assert probes.diagnose(case, float("nan"), grads) is None     # only the 1e4 probe names it
    assert probes.diagnose(get_case("mlp-tanh-ce"), loss, grads) is None
    other = PROBES["probe-dilated-window-fits"]
    assert probes.diagnose(other, *other.loss_and_grads(other.params)) is None


def test_diagnose_reads_an_intermediate_kink_derivative():
    # the split rule leaky'(0) = (1 + slope) / 2 lies on the same family: its value is read
    case = PROBES["probe-leaky-relu-at-zero"]
    ours = case.loss_and_grads(case.params)[1]
    theirs = probes.PROBE_ALTERNATIVES[case.name][0].at_theirs(case).loss_and_grads(case.params)[1]
    third = {key: ours[key] + (0.34 - 0.01) / 0.99 * (theirs[key] - ours[key]) for key in ours}
    message = probes.diagnose(case, 0.0, third)
    assert "leaky_relu'(0): implementation ~ 0.34 (not a documented value" in message
    half = {key: ours[key] + (0.505 - 0.01) / 0.99 * (theirs[key] - ours[key]) for key in ours}
    message = probes.diagnose(case, 0.0, half)
    assert "leaky_relu'(0): implementation ~ 0.505 (a documented value: the mean" in message


def test_probe_configs_name_their_convention():
    for name, case in PROBES.items():
        assert case.kind == "probe" and name.startswith("probe-")
        convention = case.config["convention"]
        assert set(convention) == {"name", "refimpl_rule", "isolates", "on_kink",
                                   "resolved_in"}
        assert isinstance(convention["on_kink"], bool)
        assert convention["resolved_in"] and \
            set(convention["resolved_in"]) <= {"float64", "float32", "tf32"}
        assert all(isinstance(convention[key], str) and convention[key]
                   for key in ("name", "refimpl_rule", "isolates"))
        assert ("model" in case.config) != ("pair" in case.config)


def _tf32(array):
    """Round to TF32's 10-bit mantissa (round to nearest)."""
    bits = np.asarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x1000) & ~np.uint32(0x1FFF)).view(np.float32).astype(np.float64)


def test_exact_arrays_are_exact_in_float32_and_tf32():
    kinked = [case for case in PROBES.values() if case.config["exact"]]
    assert {case.name for case in kinked} == {"probe-relu-at-zero", "probe-leaky-relu-at-zero",
                                              "probe-maxpool-tie-after-conv", "probe-l1-tie"}
    for case in kinked:
        for name in case.config["exact"]:
            array = {**case.params, **case.inputs}[name]
            assert np.array_equal(array.astype(np.float32).astype(np.float64), array), name
            assert np.array_equal(_tf32(array), array), name


@pytest.mark.parametrize("name", ["probe-relu-at-zero", "probe-leaky-relu-at-zero",
                                  "probe-maxpool-tie-after-conv", "probe-l1-tie"])
def test_the_kink_would_make_float32_inconclusive_without_the_exact_declaration(name):
    # perturbing the kink's arrays crosses it: the floor would swallow the tensor
    case = PROBES[name]
    declared = case_floors(case, "float32")
    undeclared = case_floors(
        type(case)(**{**case.__dict__, "config": {**case.config, "exact": []}}), "float32")
    loss, grads = case.loss_and_grads(case.params)
    crossed = [key for key, floor in undeclared.items()
               if key[0] == "gradient" and floor >= np.max(np.abs(grads[key[1]])) / 3]
    assert crossed, undeclared
    assert all(declared[key] < undeclared[key] for key in crossed)
    report = compare_with_oracle(ind.make_impl(case.config, dtype="float32"), case,
                                 dtype="float32")
    assert report.verdict == "pass"


def test_the_kinks_are_where_the_probes_say():
    relu = PROBES["probe-relu-at-zero"]
    z = relu.inputs["x"] @ relu.params["fc1.weight"].T + relu.params["fc1.bias"]
    assert np.all(z[:, 0] == 0) and np.all(z[:, 1] > 0)
    tie = PROBES["probe-maxpool-tie-after-conv"]
    x, w = tie.inputs["x"][0, 0, 0], tie.params["conv.weight"][0, 0, 0]
    assert x[0:2] @ w == x[1:3] @ w and not np.array_equal(x[0:2], x[1:3])
    pad = PROBES["probe-maxpool-neg-inf-padding"]
    assert np.all(pad.params["conv.weight"] * pad.inputs["x"] + pad.params["conv.bias"] < 0)
    l1 = PROBES["probe-l1-tie"]
    equal = l1.params["A:fc1.weight"] == l1.params["B:fc1.weight"]
    assert equal.sum() == 2
    softplus = PROBES["probe-softplus-above-20"]
    z = softplus.inputs["x"] @ softplus.params["fc1.weight"].T + softplus.params["fc1.bias"]
    assert np.all(z == 20.5)
    logits = PROBES["probe-logits-1e4"]
    out = logits.outputs(logits.params)["out"]
    assert np.max(np.abs(out)) == 10000.0
