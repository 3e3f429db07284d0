"""Tests of refimpl/testing/cases/models.py and refimpl/testing/second_order.py: every case's
model rebuilt from its configuration, its HVP expectation (a seeded direction and refimpl's
H v), the expectation's resolution floors, and the H v of a probe's documented alternatives.

The expectation is checked against the complex step of the case's *own* gradient function
(``case.loss_and_grads``, not the rebuilt model), so a rebuild that loses a penalty, an anchor
or a target cannot pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import assert_close
from refimpl.hessian import HVP_TOLERANCES, random_directions
from refimpl.testing.cases import Case, all_cases, get_case, probes
from refimpl.testing.cases.drawn import DRAWN_KINDS, drawn_case
from refimpl.testing.cases.models import case_model, describes_model, model_from_config
from refimpl.testing.comparison import DTYPE_TOLERANCES, RESOLVED_FRACTION
from refimpl.testing.second_order import (
    alternative_hvp,
    compare_hvp,
    direction_seed,
    has_hvp,
    hvp_evaluate,
    hvp_expectation,
    hvp_floors,
    hvp_loss_rounding,
)

CATALOGUE = {case.name: case for case in all_cases()}
#: One case of every kind and form the models module rebuilds.
KINDS = ["mlp-tanh-ce", "cnn-grouped-depthwise", "tied-soft-l2", "tied-hard-lasserre-transposed",
         "tied-soft-l1-transposed", "tied-anchored-l2sp", "tied-anchored-l1-weight-decay",
         "shared-transpose-chain", "probe-maxpool-tie-after-conv", "probe-l1-tie",
         "sequence-tied-lm", "sequence-rnn-classifier", "siamese-triplet-cnn",
         "siamese-contrastive-shared-tower", "microbatch-tied-soft", "microbatch-anchored",
         "microbatch-siamese-triplet"]
#: The complex step's tolerance of refimpl.hessian: two computations of one quantity.
EXACT = HVP_TOLERANCES["complex"]


def complex_step_hvp(case: Case, v: dict) -> dict:
    """``Im g(p + i h v) / h`` of the case's own gradient function (no rebuilt model)."""
    h = 1e-20
    _, grads = case.loss_and_grads({key: case.params[key] + 1j * h * v[key]
                                    for key in case.params})
    return {key: np.imag(value) / h for key, value in grads.items()}


# --- the model of a case -----------------------------------------------------------------------

def test_the_rebuilt_model_computes_every_catalogue_cases_loss_and_gradients():
    for case in CATALOGUE.values():
        model, data, splits, splits_b = case_model(case)
        if splits is None:
            loss, grads = ri.hessian.gradient_function(model, data)(case.params)
        else:
            loss, grads = ri.accumulated_loss_and_grads(model, case.params, data, splits,
                                                        splits_b=splits_b)
        expected_loss, expected = case.loss_and_grads(case.params)
        assert loss == pytest.approx(expected_loss, rel=1e-13, abs=1e-15), case.name
        for key in expected:
            assert_close(grads[key], expected[key], EXACT, f"{case.name} {key}")


def test_micro_batch_cases_are_rebuilt_on_the_joined_batch_with_their_splits():
    case = CATALOGUE["microbatch-tied-soft"]
    found = model_from_config(case.config, case.inputs)
    assert found.splits == case.config["micro_batches"]
    assert found.splits_b == case.config["micro_batches_b"]
    (xa, _), (xb, _) = found.data
    assert xa.shape[0] == sum(found.splits) and xb.shape[0] == sum(found.splits_b)


def test_a_configuration_that_names_no_model_is_refused():
    assert not describes_model({"input_shape": [2, 3]})
    assert not describes_model("model")
    with pytest.raises(ValueError, match="'model', 'pair', 'siamese', 'anchored'"):
        model_from_config({"input_shape": [2, 3]}, {})
    with pytest.raises(TypeError, match="config: expected a mapping"):
        model_from_config(["model"], {})


# --- the expectation -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", KINDS)
def test_the_expectation_is_the_complex_step_of_the_cases_own_gradient(name):
    case = CATALOGUE[name]
    expected = hvp_expectation(case)
    numerical = complex_step_hvp(case, expected.direction)
    assert list(expected.hvp) == list(case.params)
    for key in case.params:
        assert_close(expected.hvp[key], numerical[key], EXACT, f"{name} {key}")


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_drawn_cases_of_every_kind_have_an_expectation_too(kind):
    case = drawn_case(3, kind)
    assert has_hvp(case)
    expected = hvp_expectation(case)
    numerical = complex_step_hvp(case, expected.direction)
    for key in case.params:
        assert_close(expected.hvp[key], numerical[key], EXACT, f"{case.name} {key}")


def test_the_direction_is_seeded_by_the_cases_seed_or_zero():
    case = CATALOGUE["tied-soft-l2"]
    assert direction_seed(case) == case.config["seed"] == 100
    direction = hvp_expectation(case).direction
    [drawn] = random_directions(case.params, 1, 100)
    assert list(direction) == list(case.params)
    for key in direction:
        np.testing.assert_array_equal(direction[key], drawn[key])
    assert direction_seed(CATALOGUE["probe-relu-at-zero"]) == 0     # a probe has no seed
    assert direction_seed(dataclasses.replace(case, config={**case.config, "seed": True})) == 0


def test_the_expectation_is_computed_once_and_a_replaced_case_computes_its_own():
    case = get_case("mlp-tanh-ce")
    first = hvp_expectation(case)
    assert hvp_expectation(case) is first
    moved = {key: value + 0.5 for key, value in case.params.items()}
    other = hvp_expectation(dataclasses.replace(case, params=moved))
    assert other is not first
    assert not np.allclose(other.hvp["fc1.weight"], first.hvp["fc1.weight"])


def test_a_case_without_a_model_has_no_expectation():
    case = get_case("mlp-tanh-ce")
    hand_made = dataclasses.replace(case, config={"inputs": case.config["inputs"]})
    assert has_hvp(case) and not has_hvp(hand_made) and not has_hvp("mlp-tanh-ce")
    with pytest.raises(ValueError, match="no Hessian-vector expectation"):
        hvp_expectation(hand_made)
    with pytest.raises(TypeError, match="refimpl.testing.cases.Case"):
        hvp_expectation("mlp-tanh-ce")


# --- the floors ----------------------------------------------------------------------------------

def _limit(reference, floor, dtype):
    return DTYPE_TOLERANCES[dtype].rtol * np.abs(reference).max(initial=0.0) + floor


def test_float64_resolves_every_catalogue_product_so_a_wrong_one_fails():
    """A wrong H v is never inconclusive in float64: every product's limit is below a third
    of its scale (or the product is exactly zero and compared exactly), and its half, its
    negation, zero and a 1e-6 relative error fail every case."""
    tolerance = DTYPE_TOLERANCES["float64"]
    for case in CATALOGUE.values():
        expected = hvp_expectation(case)
        floors = hvp_floors(case, "float64")
        for key, reference in expected.hvp.items():
            floor, scale = floors[("hvp", key)], np.abs(reference).max(initial=0.0)
            assert (scale == 0 and floor == 0) or \
                _limit(reference, floor, "float64") < RESOLVED_FRACTION * scale, (case.name, key)
        wrongs = [{key: factor * value for key, value in expected.hvp.items()}
                  for factor in (0.5, -1.0, 0.0, 1 + 1e-6)]
        for wrong in wrongs:
            report = compare_hvp(lambda *_, w=wrong: w, case.name, case.params, case.inputs,
                                 expected.direction, expected.hvp, "float64", tolerance, floors)
            exact_zero = all(not np.any(value) for value in expected.hvp.values())
            assert report.verdict == ("pass" if exact_zero else "fail"), (case.name, report)


def test_the_floors_grow_with_the_dtypes_roundoff():
    for name in KINDS:
        case = CATALOGUE[name]
        floors = {dtype: hvp_floors(case, dtype) for dtype in ("float64", "float32", "tf32")}
        for key in floors["float64"]:
            assert 0 <= floors["float64"][key] <= floors["float32"][key] <= floors["tf32"][key]
        assert max(floors["float32"].values()) > 0


def test_a_softmax_that_is_exactly_one_hot_rounds_nothing():
    """At logits of 1e4 the probabilities are exactly one-hot in every dtype and H v exactly
    zero: the floors are zero, so the products are compared exactly (not inconclusive)."""
    case = CATALOGUE["probe-logits-1e4"]
    expected = hvp_expectation(case)
    assert all(not np.any(value) for value in expected.hvp.values())
    for dtype in ("float64", "float32", "tf32"):
        assert set(hvp_floors(case, dtype).values()) == {0.0}
    rng = np.random.default_rng(0)
    changes = hvp_loss_rounding(case.config, case.params, case.inputs, expected.direction,
                                "float32", rng)
    assert all(not np.any(change) for change in changes.values())
    ordinary = CATALOGUE["mlp-tanh-ce"]
    changes = hvp_loss_rounding(ordinary.config, ordinary.params, ordinary.inputs,
                                hvp_expectation(ordinary).direction, "float32", rng)
    assert all(np.any(change) for change in changes.values())


def _embeddings_rounded_per_branch(case, direction, ulps, rng):
    """The change of a Siamese model's H v when each branch's embedding and tangent come out
    of its own float32 tower ``ulps`` units of roundoff off (XLA's float32 sigmoid and tanh
    are up to 2 and 4 ulps off): written here from the metric loss's public passes and the
    tower's vector-Jacobian products, ``J_b^T (g_dot_b' - g_dot_b)`` plus the derivative
    along v of ``J_b^T (g_b' - g_b)`` (central differences of the tower's vjp)."""
    model, data, _, _ = case_model(case)
    branches = model.loss_spec.branches
    xs, target = data[:branches], (data[branches] if len(data) > branches else None)
    tower, loss = model.tower, model.loss_spec
    outs = [tower.jvp(case.params, x, direction) for x in xs]

    def derivatives(embeddings, tangents):
        _, cache = loss.forward(tuple(embeddings), target)
        _, tangent_cache = loss.jvp(tuple(tangents), cache)
        return loss.backward(1.0, cache), loss.backward_jvp(1.0, 0.0, cache, tangent_cache)

    def off(array):
        return array * (1 + ulps * 2.0 ** -24 * rng.choice([-1.0, 1.0], array.shape))

    g, g_dot = derivatives([e for e, _ in outs], [d for _, d in outs])
    g2, g_dot2 = derivatives([off(e) for e, _ in outs], [off(d) for _, d in outs])
    h = 1e-5
    change = {key: 0.0 for key in case.params}
    for x, a, b, a_dot, b_dot in zip(xs, g, g2, g_dot, g_dot2, strict=True):
        plus = tower.vjp({k: v + h * direction[k] for k, v in case.params.items()}, x, b - a)[2]
        minus = tower.vjp({k: v - h * direction[k] for k, v in case.params.items()}, x, b - a)[2]
        tangent = tower.vjp(case.params, x, b_dot - a_dot)[2]
        for key in change:
            change[key] = change[key] + (plus[key] - minus[key]) / (2 * h) + tangent[key]
    return change


@pytest.mark.parametrize("name", ["siamese-contrastive-all-active", "siamese-triplet-cnn"])
def test_a_siamese_models_floors_cover_each_branchs_own_rounding(name):
    """Each branch runs the tower on its own, so its rounding is its own: the branches' terms
    of H v (which cancel in a contrastive model) do not round together. An implementation whose
    branches' embeddings are each 2 ulps off (JAX's float32 towers are) stays within the
    float32 floors."""
    case = CATALOGUE[name]
    direction = hvp_expectation(case).direction
    floors = hvp_floors(case, "float32")
    rng = np.random.default_rng(5)
    for _ in range(8):
        change = _embeddings_rounded_per_branch(case, direction, 2.0, rng)
        for key in case.params:
            assert np.abs(change[key]).max() <= floors[("hvp", key)], key


def test_a_structurally_zero_product_keeps_a_zero_floor():
    """A linear tower with a contrastive loss and eps = 0: the first bias cancels in e1 - e2,
    so its gradient and H v are exactly zero at every point; a backward pass negates exactly,
    so the floor stays zero (an exact comparison, as the gradients'), not inconclusive. The
    branch-by-branch rounding alone would give it a floor."""
    case = drawn_case(59, "siamese")
    assert case.config["siamese"]["loss"]["eps"] == 0.0
    expected = hvp_expectation(case)
    assert not np.any(expected.hvp["fc1.bias"])
    for dtype in ("float64", "float32"):
        floors = hvp_floors(case, dtype)
        assert floors[("hvp", "fc1.bias")] == 0.0
        assert floors[("hvp", "fc1.weight")] > 0
    model, data, _, _ = case_model(case)
    from refimpl.hessian.branches import branch_products
    from refimpl.testing.resolution import perturbed
    rng = np.random.default_rng(0)
    moved = branch_products(model, [perturbed(case.params, 2 ** -52, rng) for _ in range(2)],
                            data, [perturbed(expected.direction, 2 ** -52, rng)
                                   for _ in range(2)])
    assert np.any(moved[0]["fc1.bias"] + moved[1]["fc1.bias"])


def test_floors_are_remembered_and_equal_to_a_fresh_derivation():
    case = get_case("shared-tied-autoencoder")
    first = hvp_floors(case, "float32")
    again = hvp_floors(get_case("shared-tied-autoencoder"), "float32")
    assert again == first and again is not first
    from refimpl.testing import second_order
    expected = hvp_expectation(case)
    fresh = second_order._derived_floors(case, "float32", expected.hvp, expected.direction,
                                         hvp_evaluate(case.config))
    assert fresh == first


def test_hvp_floors_refuse_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype: expected one of"):
        hvp_floors(CATALOGUE["mlp-tanh-ce"], "float16")


# --- a probe's alternatives ----------------------------------------------------------------------

def _alternatives(name):
    return {alternative.describes: alternative for alternative in
            probes.alternatives(CATALOGUE[name])}


def test_an_alternative_that_is_another_model_has_that_models_hvp():
    case = CATALOGUE["probe-leaky-relu-at-zero"]
    direction = hvp_expectation(case).direction
    found = _alternatives("probe-leaky-relu-at-zero")
    [jax_rule] = [a for d, a in found.items() if d.startswith("leaky_relu'(0) = 1 ")]
    product = alternative_hvp(jax_rule, direction)
    identity = nn.Sequential([layer if not isinstance(layer, nn.LeakyReLU) else nn.Identity()
                              for layer in case_model(case).model.layers], loss=nn.MSE())
    expected = ri.hvp(identity, case.params, (case.inputs["x"], case.inputs["y"]), direction)
    for key in case.params:
        assert_close(product[key], expected[key], EXACT, key)
        assert not np.allclose(product[key], hvp_expectation(case).hvp[key]) or key == "fc2.bias"


def test_rules_of_the_backward_pass_alone_and_values_between_rules_have_no_hvp():
    direction = hvp_expectation(CATALOGUE["probe-leaky-relu-at-zero"]).direction
    [mean] = [a for d, a in _alternatives("probe-leaky-relu-at-zero").items()
              if "mean of both sides" in d]
    assert alternative_hvp(mean, direction) is None
    direction = hvp_expectation(CATALOGUE["probe-l1-tie"]).direction
    for alternative in _alternatives("probe-l1-tie").values():     # subgradients
        assert alternative_hvp(alternative, direction) is None
