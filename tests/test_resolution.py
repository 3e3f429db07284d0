"""Tests of the three verdicts and the resolution floor (refimpl/resolution.py and the rule in
refimpl/testing.py): no tensor below what the dtype can resolve is ever a pass.

The numbers of the documented tolerances are written here literally, never read from the
code under test.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from independent_numpy import make_impl
from oracle_stress import MUTATIONS, judge, model_of, near_fit

from refimpl import MLP
from refimpl.nn import Dense, Sequential, SoftmaxCrossEntropy, Tanh
from refimpl.testing import (
    assert_matches_golden,
    assert_matches_oracle,
    compare_tensor,
    compare_with_golden,
    compare_with_oracle,
    golden,
    oracle,
    resolution,
    resolve_tolerance,
)
from refimpl.testing import strategies as rs
from refimpl.testing.cases import Case, all_cases, get_case


def _near_fit_tanh_mse():
    """The 3-4-2 tanh MSE model of issue 9 near a fit: targets = its own output + 1e-8 noise,
    every gradient below 3.4e-8."""
    model = MLP([3, 4, 2], activation="tanh", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    params = model.init(0)
    y = model.forward(params, x) + 1e-8 * rng.standard_normal((5, 2))
    _, grads = model.loss_and_grads(params, x, y)
    assert max(np.abs(g).max() for g in grads.values()) < 3.4e-8
    return model, params, {"x": x, "y": y}


def _negated(model):
    def impl(params, inputs):
        params = {k: v.astype(np.float64) for k, v in params.items()}
        loss, grads = model.loss_and_grads(params, inputs["x"].astype(np.float64),
                                           inputs["y"].astype(np.float64))
        return loss, {k: -v for k, v in grads.items()}
    return impl


def test_negated_gradients_near_a_fit_are_never_a_pass():
    model, params, inputs = _near_fit_tanh_mse()
    impl = _negated(model)
    with pytest.raises(AssertionError) as info:
        assert_matches_oracle(impl, model, params, inputs, dtype="float32")
    message = str(info.value)
    assert "inconclusive" in message and "resolution floor" in message
    assert "Draw another point" in message and "float64" in message
    assert "gradient 'fc1.weight'" in message and "allow_inconclusive=True" in message
    report = assert_matches_oracle(impl, model, params, inputs, dtype="float32",
                                   allow_inconclusive=True)
    assert report.verdict == "inconclusive" and not report.ok
    assert {row.verdict for row in report.rows if row.role == "gradient"} == {"inconclusive"}
    # Overrides add to the floor, never remove it.
    for rtol, atol in ((0, 0), (1e-12, 0), (0.5, 1.0)):
        report = compare_with_oracle(impl, model, params, inputs, dtype="float32", rtol=rtol,
                                     atol=atol)
        assert report.verdict != "pass"
    # In float64 the same tensors are resolved, and the negation fails.
    report = compare_with_oracle(impl, model, params, inputs, dtype="float64")
    assert report.verdict == "fail"
    assert all(row.verdict == "fail" for row in report.rows if row.role == "gradient")


def test_fail_wins_over_inconclusive():
    model, params, inputs = _near_fit_tanh_mse()

    def wrong_loss(p, i):
        loss, grads = _negated(model)(p, i)
        return loss + 1.0, grads

    report = compare_with_oracle(wrong_loss, model, params, inputs, dtype="float32")
    assert report.verdict == "fail" and report.inconclusive
    with pytest.raises(AssertionError, match="does not match"):
        assert_matches_oracle(wrong_loss, model, params, inputs, dtype="float32",
                              allow_inconclusive=True)


# --- DTYPE_TOLERANCES pinned: a planted error just outside / inside the documented rtol ---------

@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5), ("tf32", 1e-2)])
def test_documented_rtol_per_dtype(dtype, rtol):
    reference = np.array([[0.75, -1.5], [0.25, 2.0]])       # scale 2.0
    tolerance = resolve_tolerance(dtype)[1]
    for factor, verdict in ((1.2, "fail"), (0.8, "pass")):
        candidate = reference.copy()
        candidate[1, 0] += factor * rtol * 2.0
        row = compare_tensor("gradient", "w", reference, candidate, tolerance)
        assert row.verdict == verdict, (factor, row.describe())


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_documented_rtol_on_a_case_whose_floor_is_negligible(dtype, rtol):
    case = get_case("mlp-identity-mse")
    loss, grads = case.loss_and_grads(case.params)
    name = "fc1.weight"
    scale = float(np.abs(grads[name]).max())

    def planted(factor):
        def impl(params, inputs):
            changed = {k: v.copy() for k, v in grads.items()}
            changed[name].flat[0] += factor * rtol * scale
            return loss, changed
        return impl

    inside = compare_with_oracle(planted(0.8), case, dtype=dtype)
    row = next(row for row in inside.rows if row.name == name)
    assert row.floor < 0.25 * rtol * scale          # small next to rtol * scale
    assert inside.verdict == "pass"
    assert compare_with_oracle(planted(1.3), case, dtype=dtype).verdict == "fail"


def test_floor_validation():
    with pytest.raises(ValueError, match="floor"):
        compare_tensor("gradient", "w", np.ones(2), np.ones(2), resolve_tolerance()[1],
                       floor=float("nan"))
    with pytest.raises(TypeError, match="seed"):
        resolution.resolution_floors(lambda p, i: (0.0, {}, {}), {}, {}, "float32", seed=0.5)
    with pytest.raises(ValueError, match="dtype"):
        resolution.resolution_floors(lambda p, i: (0.0, {}, {}), {}, {}, "float16")


# --- the floor's constants pinned by behaviour --------------------------------------------------

def _near_fit_points():
    """Near-fit points built from every catalogue MLP and shared case (deterministic)."""
    for case in all_cases():
        if case.kind in ("mlp", "shared", "cnn"):
            model = model_of(case.config)
            yield case.config, model, *near_fit(model, case.params, case.inputs, seed=7)


@settings(max_examples=150, derandomize=True, database=None)
@given(rs.cases(), st.integers(0, 2**16))
def test_correct_float32_is_never_rejected_near_a_fit_of_a_drawn_case(case, seed):
    """The floor is large enough: near a fit the floor is all that separates a correct float32
    implementation from a failure (with a floor 10 times smaller some of these fail)."""
    model = model_of(case.config)
    params, inputs = near_fit(model, case.params, case.inputs, seed=seed)
    report = compare_with_oracle(make_impl(case.config, "float32"), model, params, inputs,
                                 dtype="float32")
    assert report.verdict != "fail", str(report)


@pytest.mark.parametrize("dtype", ["float32", "tf32"])
def test_correct_implementation_is_never_rejected_near_a_fit(dtype):
    """The floor is large enough on near-fit points built from the catalogue."""
    verdicts = []
    for config, model, params, inputs in _near_fit_points():
        report = compare_with_oracle(make_impl(config, dtype), model, params, inputs,
                                     dtype=dtype)
        assert report.verdict != "fail", str(report)
        verdicts.append(report.verdict)
    assert "inconclusive" in verdicts        # the points are near a fit indeed


def test_near_fit_mutations_are_never_a_pass():
    tally: Counter = Counter()
    problems: list[str] = []
    for config, model, params, inputs in _near_fit_points():
        judge(config, model, params, inputs, "float32", tally, problems, "near-fit")
    assert not problems, problems[0]
    assert sum(tally[("float32", "near-fit", m, "fail")] for m in MUTATIONS) > 0


def test_ordinary_points_pass_in_tf32_with_room():
    """The floor is not too large: on the catalogue's ordinary points TF32's floors stay
    below a third of the scale (a floor 10 times larger makes cnn-relu-maxpool, whose
    largest floor is 0.14 of its scale, inconclusive)."""
    case = get_case("cnn-relu-maxpool")
    report = assert_matches_oracle(make_impl(case.config, "tf32"), case, dtype="tf32")
    assert report.verdict == "pass"
    assert max(row.floor / row.scale for row in report.rows) > 0.05


# --- golden folders: floors from the rebuilt catalogue case -------------------------------------

def test_golden_comparison_uses_the_catalogue_floors(tmp_path, monkeypatch):
    name = "mlp-tanh-ce"
    folder = golden.write(tmp_path / "golden", cases=[name])
    case = get_case(name)
    reports = assert_matches_golden(make_impl(case.config, "float32"), folder, case=name,
                                    dtype="float32")
    row = next(row for row in reports[0].rows if row.name == "fc1.weight")
    floors = compare_with_oracle(make_impl(case.config, "float32"), case, dtype="float32")
    assert row.floor == next(r.floor for r in floors.rows if r.name == "fc1.weight") > 0
    # A folder whose point is not the catalogue's: its floors cannot be derived.
    moved = Case(**{**case.__dict__, "params": {k: v + 1.0 for k, v in
                                                        case.params.items()}})
    monkeypatch.setattr(oracle, "rebuild_case", lambda *_: moved)
    with pytest.raises(ValueError, match="stored params differ from refimpl's catalogue"):
        compare_with_golden(make_impl(case.config, "float32"), folder, case=name,
                            dtype="float32")


# --- exact points (the convention probes) ------------------------------------------------------

def test_perturbed_leaves_exact_arrays_and_labels_alone():
    arrays = {"x": np.array([0.5, -0.25]), "w": np.array([1.5, 2.0]),
              "y": np.array([1, 0], dtype=np.int64)}
    moved = resolution.perturbed(arrays, 1e-3, np.random.default_rng(0), exact=["x"])
    assert np.array_equal(moved["x"], arrays["x"]) and np.array_equal(moved["y"], arrays["y"])
    assert np.all(moved["w"] != arrays["w"])
    assert np.allclose(moved["w"], arrays["w"], rtol=1.01e-3, atol=0)


def test_an_exact_name_that_is_neither_a_parameter_nor_an_input_is_refused():
    case = get_case("probe-relu-at-zero")
    with pytest.raises(ValueError, match=r"exact: \['fc1.weights'\] are neither params"):
        resolution.resolution_floors(case.evaluate, case.params, case.inputs, "float32",
                                     exact=["fc1.weights"])
    with pytest.raises(TypeError, match="exact: expected a list of array names"):
        resolution.resolution_floors(case.evaluate, case.params, case.inputs, "float32",
                                     exact="x")
    misspelt = Case(**{**case.__dict__, "config": {**case.config, "exact": ["X"]}})
    with pytest.raises(ValueError, match=r"exact: \['X'\]"):
        resolution.case_floors(misspelt, "float32")


def test_exact_arrays_are_still_rounded_to_the_hand_over_dtype():
    # declaring a non-representable array exact does not hide its rounding: 0.1 in float32
    case = get_case("probe-relu-at-zero")
    inputs = {**case.inputs, "x": case.inputs["x"] + 0.1}
    exact = resolution.resolution_floors(case.evaluate, case.params, inputs, "float32",
                                         exact=["x", "fc1.weight", "fc1.bias"])
    assert exact[("gradient", "fc2.weight")] > 0
    rounded_only = resolution.rounded_to(inputs, "float32")["x"]
    assert not np.array_equal(rounded_only, inputs["x"])


def test_a_probe_floor_perturbs_everything_after_the_kink():
    case = get_case("probe-relu-at-zero")
    floors = resolution.case_floors(case, "float32")
    # fc2 and the targets are perturbed: every tensor that depends on them has a floor
    for key in (("loss", "loss"), ("gradient", "fc2.weight"), ("gradient", "fc2.bias"),
                ("gradient", "fc1.bias"), ("output", "out")):
        assert floors[key] > 0, key


@pytest.mark.parametrize("normaliser", [False, True])
def test_loss_rounding_treats_every_label_position_as_an_example(normaliser):
    """Logits (N, T, K) with labels (N, T) are P = N T examples: the same rows as (P, K)
    logits of the flattened data give the same changes (the same random signs, drawn in the
    same order), the loss change the mean over the P positions of relative (1 + max|z|)."""
    model = Sequential([Dense("fc1", 3, 4), Tanh(), Dense("fc2", 4, 5)],
                       loss=SoftmaxCrossEntropy())
    params = model.init(7)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 3))
    y = rng.integers(0, 5, size=(2, 6)).astype(np.int64)
    config = {"model": model.config()}
    relative = 2.0 ** -24
    sequence = resolution.loss_rounding(config, params, {"x": x, "y": y}, relative,
                                        np.random.default_rng(0), normaliser=normaliser)
    flat = resolution.loss_rounding(config, params, {"x": x.reshape(12, 3), "y": y.reshape(12)},
                                    relative, np.random.default_rng(0), normaliser=normaliser)
    assert sequence.keys() == flat.keys()
    for key in flat:
        np.testing.assert_allclose(sequence[key], flat[key], rtol=1e-12, atol=0.0)
    logits = model.forward(params, x).reshape(12, 5)
    expected = relative * np.mean(1.0 + np.max(np.abs(logits), axis=1))
    assert sequence[("loss", "loss")] == pytest.approx(expected, rel=1e-12)


def test_micro_batch_floors_include_the_base_case_loss_rounding():
    case = get_case("microbatch-mlp")
    base = {"x": np.concatenate([case.inputs[f"x.{i}"] for i in range(3)]),
            "y": np.concatenate([case.inputs[f"y.{i}"] for i in range(3)])}
    joined = resolution.loss_rounding(case.config, case.params, case.inputs, 2.0 ** -24,
                                      np.random.default_rng(0))
    direct = resolution.loss_rounding(case.config["base"], case.params, base, 2.0 ** -24,
                                      np.random.default_rng(0))
    assert set(joined) == {("loss", "loss"), *(("gradient", name) for name in case.params)}
    for key in direct:
        np.testing.assert_array_equal(joined[key], direct[key])


# --- case_floors remembers its floors, keyed by everything they depend on ----------------------

def _derived(case, dtype, reference=None):
    """The floors derived from scratch (resolution_floors remembers nothing)."""
    return resolution.resolution_floors(case.evaluate, case.params, case.inputs, dtype,
                                        reference=reference, config=case.config)


def test_remembered_floors_are_the_derived_ones_for_the_same_arguments_only():
    case = get_case("mlp-tanh-ce")
    derived = _derived(case, "float32")
    assert resolution.case_floors(case, "float32") == derived
    remembered = resolution.case_floors(case, "float32")
    assert remembered == derived
    remembered[("loss", "loss")] = 1.0               # a copy: the caller cannot change them
    assert resolution.case_floors(case, "float32") == derived
    # Another dtype, another point, another reference at the point: floors of their own.
    assert resolution.case_floors(case, "tf32") == _derived(case, "tf32") != derived
    moved = Case(**{**case.__dict__, "params": {k: 1.5 * v for k, v in case.params.items()}})
    assert resolution.case_floors(moved, "float32") == _derived(moved, "float32") != derived
    loss, grads, outputs = case.evaluate(case.params, case.inputs)
    other = (loss, {k: 2.0 * v for k, v in grads.items()}, outputs)
    assert resolution.case_floors(case, "float32", other) == \
        _derived(case, "float32", other) != derived
    with pytest.raises(ValueError, match="dtype"):
        resolution.case_floors(case, "float16")
