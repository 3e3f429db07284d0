"""Tests of compare_hvp_with_oracle / assert_hvp_matches_oracle (refimpl/testing/oracle.py) and
refimpl/testing/second_order.py's compare_hvp: an implementation's Hessian-vector product
against refimpl's along the case's direction, one row per parameter, by the comparison rule
with the products' own floors; the planted errors of second order (a missing cross term
between two uses, a penalty's Hessian dropped, a transposed block) fail it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import refimpl as ri
from refimpl import nn
from refimpl.testing import assert_hvp_matches_oracle, compare_hvp_with_oracle
from refimpl.testing.cases import get_case
from refimpl.testing.cases.models import case_model
from refimpl.testing.second_order import hvp_expectation


def refimpl_hvp(case):
    """refimpl itself as the implementation's hvp, at the handed-over point, data and
    direction (a float32 run computes in float64 from float32-rounded values)."""
    def hvp(params, inputs, vector):
        model, data, splits, splits_b = case_model(dataclasses.replace(case, inputs=inputs))
        return ri.hvp(model, params, data, vector, splits=splits, splits_b=splits_b)
    return hvp


class WithHVP:
    """An implementation object: the gradient protocol and an hvp method."""

    def __init__(self, hvp):
        self._hvp = hvp

    def __call__(self, params, inputs):
        raise AssertionError("compare_hvp_with_oracle runs impl.hvp only")

    def hvp(self, params, inputs, vector):
        return self._hvp(params, inputs, vector)


CASES = ["mlp-relu-ce", "cnn-tanh-strided-avgpool", "tied-soft-lasserre", "tied-hard-cnn",
         "tied-anchored-l2sp", "shared-deep-tied-autoencoder", "sequence-rnn-labelling",
         "siamese-triplet-near-margin", "microbatch-tied-hard", "probe-maxpool-tie-after-conv"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_refimpls_own_hvp_passes_as_a_callable_and_as_a_method(name, dtype):
    case = get_case(name)
    report = assert_hvp_matches_oracle(refimpl_hvp(case), case, dtype=dtype)
    assert [row.label for row in report.rows] == [f"hvp {key!r}" for key in case.params]
    assert compare_hvp_with_oracle(WithHVP(refimpl_hvp(case)), name, dtype=dtype).ok


def _twin(model):
    twin = nn.Sequential(model.layers, loss=model.loss_spec)
    uses = model.slot_uses()

    def slots(values):
        return {slot: values[root].T if transpose else values[root]
                for slot, (root, transpose) in uses.items()}
    return twin, uses, slots


def per_use_hvp(case, cross_terms=True, transpose_back=True):
    """H v of a shared model from its unshared twin, each use's block summed onto its root;
    ``cross_terms=False`` gives each use only its own perturbation (the planted error "a
    missing cross term between two uses"), ``transpose_back=False`` forgets to transpose a
    transposed use's block back."""
    def hvp(params, inputs, vector):
        model = case_model(case).model
        twin, uses, slots = _twin(model)
        twin_params, twin_v = slots(params), slots(vector)
        result = {}
        for slot, (root, transpose) in uses.items():
            direction = dict(twin_v)
            if not cross_terms:
                for other, (other_root, _) in uses.items():
                    if other != slot and other_root == root:
                        direction[other] = np.zeros_like(direction[other])
            block = twin.hvp(twin_params, inputs["x"], inputs["y"], direction)[2][slot]
            block = block.T if transpose and transpose_back else block
            result[root] = result[root] + block if root in result else block
        return {key: result[key] for key in params}
    return hvp


def test_the_twins_per_use_sum_is_right_and_a_missing_cross_term_fails():
    case = get_case("shared-tied-autoencoder")
    assert assert_hvp_matches_oracle(per_use_hvp(case), case).ok
    report = compare_hvp_with_oracle(per_use_hvp(case, cross_terms=False), case)
    assert report.verdict == "fail"
    assert [row.name for row in report.failures] == ["enc.weight"], str(report)
    with pytest.raises(AssertionError, match="hvp 'enc.weight'"):
        assert_hvp_matches_oracle(per_use_hvp(case, cross_terms=False), case)


def test_a_transposed_block_not_transposed_back_fails():
    model = nn.Sequential([nn.Dense("enc", 4, 4), nn.Tanh(), nn.Dense("dec", 4, 4), nn.Tanh(),
                           nn.Dense("out", 4, 3)], loss=nn.SoftmaxCrossEntropy(),
                          share={"dec.weight": nn.transposed("enc.weight")})
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((5, 4)), "y": rng.integers(0, 3, 5)}
    wrong = compare_hvp_with_oracle(lambda p, i, v: _untransposed(model, p, i, v), model,
                                    inputs=inputs)
    assert wrong.verdict == "fail" and wrong.failures[0].name == "enc.weight", str(wrong)


def _untransposed(model, params, inputs, vector):
    twin, uses, slots = _twin(model)
    products = twin.hvp(slots(params), inputs["x"], inputs["y"], slots(vector))[2]
    result = {}
    for slot, (root, _) in uses.items():           # the transposed use's block kept as is
        result[root] = result[root] + products[slot] if root in result else products[slot]
    return result


def test_a_tying_penalty_dropped_from_the_hessian_fails():
    case = get_case("tied-soft-l2")
    untied = dataclasses.replace(case, config={**case.config, "pair": {
        **case.config["pair"], "lam": {key: 0.0 for key in case.config["pair"]["lam"]}}})
    report = compare_hvp_with_oracle(refimpl_hvp(untied), case)
    assert report.verdict == "fail"
    assert {row.name for row in report.failures} == {"A:fc1.weight", "A:fc1.bias",
                                                     "B:fc1.weight", "B:fc1.bias"}


def test_a_relative_error_of_a_millionth_fails_in_float64_not_in_float32():
    case = get_case("mlp-softplus-ce")

    def slightly_off(params, inputs, vector):
        return {key: value * (1 + 1e-6) for key, value in
                refimpl_hvp(case)(params, inputs, vector).items()}
    assert compare_hvp_with_oracle(slightly_off, case).verdict == "fail"
    assert compare_hvp_with_oracle(slightly_off, case, dtype="float32").ok


def _returning(value):
    return lambda params, inputs, vector: value(params, inputs, vector)


@pytest.mark.parametrize("fault, message", [
    (lambda hv: {k: v for k, v in hv.items() if k != "fc1.bias"}, "hvp 'fc1.bias': missing"),
    (lambda hv: {**hv, "fc9.weight": hv["fc1.bias"]}, "unexpected name(s) ['fc9.weight']"),
    (lambda hv: {**hv, "fc1.weight": hv["fc1.weight"].T}, "(transposed?)"),
    (lambda hv: {**hv, "fc2.bias": hv["fc2.bias"].astype(np.float32)},
     "expected dtype float64 for a float64 implementation"),
    (lambda hv: {**hv, "fc2.bias": hv["fc2.bias"] * np.nan}, "non-finite value(s)"),
    (lambda hv: list(hv.values()), "impl.hvp returned list"),
])
def test_a_malformed_product_fails_naming_what_is_wrong(fault, message):
    case = get_case("mlp-tanh-ce")
    report = compare_hvp_with_oracle(
        lambda params, inputs, vector: fault(refimpl_hvp(case)(params, inputs, vector)), case)
    assert report.verdict == "fail"
    assert message in str(report), str(report)


def test_the_implementation_gets_fresh_copies_in_the_dtype_under_test():
    case = get_case("tied-soft-l2")
    seen = {}

    def hvp(params, inputs, vector):
        seen.update(params=params, inputs=inputs, vector=vector)
        result = refimpl_hvp(case)(params, inputs, vector)
        for array in (*params.values(), *vector.values()):
            array[...] = 0           # the implementation may overwrite what it gets
        return result
    assert compare_hvp_with_oracle(hvp, case, dtype="float32").ok
    assert all(value.dtype == np.float32 for value in seen["vector"].values())
    assert seen["inputs"]["ya"].dtype == np.int64
    assert np.any(case.params["A:fc1.weight"]) and np.any(hvp_expectation(case).direction[
        "A:fc1.weight"])


def test_a_direction_of_ones_own_and_a_model_with_inputs():
    model = ri.MLP([3, 5, 2], activation="tanh")
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((6, 3)), "y": rng.integers(0, 2, 6)}
    params = model.init(4)
    direction = {key: np.ones_like(value) for key, value in params.items()}

    def hvp(p, i, v):
        return ri.hvp(model, p, (i["x"], i["y"]), v)
    report = assert_hvp_matches_oracle(hvp, model, params, inputs, direction=direction,
                                       name="mine")
    assert report.case == "mine" and report.ok

    def ignores_the_direction(p, i, v):
        return ri.hvp(model, p, (i["x"], i["y"]),
                      ri.hessian.random_directions(p, 1, 0)[0])
    assert compare_hvp_with_oracle(ignores_the_direction, model, params, inputs,
                                   direction=direction).verdict == "fail"


def test_bad_arguments_are_refused():
    case = get_case("mlp-tanh-ce")
    with pytest.raises(TypeError, match="impl: expected an implementation with a method hvp"):
        compare_hvp_with_oracle(42, case)
    with pytest.raises(TypeError, match="direction: expected a dict"):
        compare_hvp_with_oracle(refimpl_hvp(case), case, direction=[1.0])
    hand_made = dataclasses.replace(case, config={"inputs": case.config["inputs"]})
    with pytest.raises(ValueError, match="no Hessian-vector expectation"):
        compare_hvp_with_oracle(refimpl_hvp(case), hand_made)
    with pytest.raises(ValueError, match="dtype"):
        compare_hvp_with_oracle(refimpl_hvp(case), case, dtype="float16")
