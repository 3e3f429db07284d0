"""Step cases (refimpl/testing/cases/steps.py, step_probes.py), the trajectory rule
(refimpl/testing/trajectory.py), their conformance rows, golden entries and `refimpl check`.

The implementation under test here is refimpl's own trajectory handed back through the step
capability (``impl.train_steps``), changed by hand where a test needs a wrong one; the
frameworks' adapters and the planted bugs of public reports are in test_step_cases_adapters.py
and test_planted_steps.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from refimpl import SGD, Adam, ClipGradNorm, clip_grad_norm
from refimpl.cli import check
from refimpl.nn import MSE, Dense, ReLU, Sequential
from refimpl.optim import gradient_norm
from refimpl.testing import (
    DTYPE_TOLERANCES,
    NotExpressible,
    compare_with_golden,
    conform,
    golden,
)
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.mlp import model_case_at
from refimpl.testing.cases.step_probes import STEP_PROBE_ALTERNATIVES, step_alternatives
from refimpl.testing.cases.steps import MIN_STEPS, StepCase, step_case, with_optimizer
from refimpl.testing.conform import NO_STEPS
from refimpl.testing.trajectory import (
    RESULT_KEYS,
    assert_steps_match_oracle,
    compare_steps_with_oracle,
    compare_trajectory,
    reference_trajectory,
    trajectory_floors,
)

STEP_CASES = [case for case in all_cases() if case.kind == "steps"]
REGULAR = [case for case in STEP_CASES if "convention" not in case.config]
PROBES = [case for case in STEP_CASES if "convention" in case.config]
BY_CONFIG = {json.dumps(case.config, sort_keys=True): case for case in STEP_CASES}


def _result(trajectory):
    """A trajectory as ``train_steps`` returns it (fresh arrays)."""
    return {"params": [{k: np.array(v) for k, v in p.items()} for p in trajectory.params],
            "losses": [float(v) for v in trajectory.losses],
            "grad_norms": [float(v) for v in trajectory.grad_norms]}


class Steps:
    """refimpl's own steps through the step capability, found by the case's configuration
    (``change(result)`` makes it wrong)."""

    def __init__(self, config, change=None, case=None):
        self.case = case or BY_CONFIG[json.dumps(config, sort_keys=True)]
        self.change = change

    def __call__(self, params, inputs):
        return self.case.loss_and_grads(params)

    def train_steps(self, params, batches):
        result = _result(self.case.trajectory(params, batches))
        return self.change(result) if self.change else result


def builder(change=None):
    return lambda config, dtype: Steps(config, change)


# --- the catalogue ------------------------------------------------------------------------------

def test_the_catalogue_has_the_step_cases_the_issue_names():
    kinds = {case.name: (case.config["steps"]["case_kind"], case.config["steps"]["optimizer"]
                         ["name"], case.config["steps"]["clip"] is not None) for case in REGULAR}
    assert kinds["steps-tied-lm-adamw-clip"] == ("sequence", "adamw", True)
    assert kinds["steps-shared-autoencoder-sgd-decay"] == ("shared", "sgd", False)
    assert kinds["steps-tied-soft-adam"] == ("tied", "adam", False)
    assert kinds["steps-tied-hard-sgd-clip"] == ("tied", "sgd", True)
    assert "anchored" in get_case("steps-anchored-l2sp-adam-decay").config
    assert kinds["steps-micro-batches-adam-clip"] == ("microbatch", "adam", True)
    assert kinds["steps-siamese-triplet-adamw"][0] == "siamese"
    decay = get_case("steps-shared-autoencoder-sgd-decay").config
    assert decay["steps"]["optimizer"]["momentum"] > 0 and decay["steps"]["optimizer"][
        "weight_decay"] > 0 and decay["model"]["share"]
    assert {case.name for case in PROBES} == set(STEP_PROBE_ALTERNATIVES)


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda case: case.name)
def test_every_step_case_is_k_batches_of_its_base_case(case):
    assert isinstance(case, StepCase) and case.kind == "steps"
    assert case.count == case.config["steps"]["count"] >= MIN_STEPS
    assert case.batches[0] is case.inputs
    json.dumps(case.config, allow_nan=False)
    assert case.optimizer().config() == case.config["steps"]["optimizer"]
    clip = case.clip()
    assert (clip.config() if clip else None) == case.config["steps"]["clip"]
    for batch in case.batches[1:]:
        assert list(batch) == list(case.inputs)
        assert all(batch[k].shape == v.shape and batch[k].dtype == v.dtype
                   for k, v in case.inputs.items())
        assert any(not np.array_equal(batch[k], v) for k, v in case.inputs.items())


@pytest.mark.parametrize("case", REGULAR, ids=lambda case: case.name)
def test_the_reference_is_the_base_cases_own_loss_norm_clip_and_update(case):
    # The loop written from the base case's evaluate(params, inputs) (what every gradient
    # case is checked by) and the optimizer: train_steps with the case's batch forms must
    # give the same numbers, for every base kind (a pair's two batches, a Siamese triplet's
    # branches in order, micro-batches joined in order).
    optimizer, clip = case.optimizer(), case.clip()
    params, state = case.params, None
    expected = reference_trajectory(case)
    for k, batch in enumerate(case.batches):
        loss, grads, _ = case.evaluate(params, batch)
        if clip is None:
            norm = gradient_norm(grads)
        else:
            grads, norm = clip_grad_norm(grads, clip.max_norm, clip.norm_type, clip.eps)
        params, state = optimizer.step(params, grads, state)
        assert expected["losses"][k] == pytest.approx(float(loss), rel=1e-14, abs=0)
        assert expected["grad_norms"][k] == pytest.approx(norm, rel=1e-14, abs=0)
        for key, value in params.items():
            np.testing.assert_allclose(expected["params"][k][key], value, rtol=1e-14, atol=0)


def test_clipping_is_active_at_some_steps_and_idle_at_others():
    for name in ("steps-tied-lm-adamw-clip", "steps-micro-batches-adam-clip"):
        case = get_case(name)
        norms = np.array(reference_trajectory(case)["grad_norms"])
        clipped = norms > case.clip().max_norm
        assert clipped.any() and not clipped.all(), (name, norms)
    hard = get_case("steps-tied-hard-sgd-clip")
    assert (np.array(reference_trajectory(hard)["grad_norms"]) > hard.clip().max_norm).all()


# --- the trajectory rule ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_step_case_is_resolved_by_the_dtypes_conformance_runs_use(dtype):
    # refimpl's own trajectory passes against itself with every tensor resolved: no step of a
    # built-in case is inconclusive in float64 or float32.
    for case in STEP_CASES:
        reference = reference_trajectory(case)
        report = compare_trajectory(reference, case, dtype, start=case.params,
                                    reference=reference)
        assert report.verdict == "pass", (case.name, report.summary())


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, float("inf")])
def test_a_clip_by_any_norm_has_floors_and_its_own_trajectory_passes(norm_type):
    # The floor model moves every float hyper-parameter by a few units of roundoff, but not
    # the norm's order: a 1-norm moved below 1 is no norm at all (ClipGradNorm refuses it).
    base = get_case("steps-tied-hard-sgd-clip")
    case = with_optimizer(base, base.optimizer(),
                          ClipGradNorm(base.clip().max_norm, norm_type), name="custom")
    floors = trajectory_floors(case, "float32")
    assert len(floors) == case.count
    reference = reference_trajectory(case)
    report = compare_trajectory(reference, case, "float32", start=case.params,
                                reference=reference, floors=floors)
    assert report.verdict == "pass", report.summary()


def _halve_update(result, step, key, start):
    before = result["params"][step - 2][key] if step > 1 else start[key]
    after = result["params"][step - 1][key]
    result["params"][step - 1][key] = before + (after - before) / 2
    return result


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_step_with_half_its_update_fails_at_that_step_naming_the_parameter(dtype):
    case = get_case("steps-tied-soft-adam")
    report = compare_steps_with_oracle(
        Steps(case.config, lambda r: _halve_update(r, 2, "B:fc2.weight", case.params)), case,
        dtype=dtype)
    first = report.first_divergence()
    assert report.verdict == "fail" and (first.step, first.what) == (2, "parameter 'B:fc2.weight'")
    assert {row.step for row in report.failures} == {2}      # the later steps are untouched
    assert report.summary().startswith("diverges first at step 2 of 3: parameter 'B:fc2.weight'")
    with pytest.raises(AssertionError, match="diverges first at step 2 of 3"):
        assert_steps_match_oracle(Steps(case.config, lambda r: _halve_update(
            r, 2, "B:fc2.weight", case.params)), case, dtype=dtype)


def test_a_drift_from_step_2_on_is_reported_where_it_starts_not_where_it_is_largest():
    case = get_case("steps-tied-hard-sgd-clip")

    def drift(result):
        for k in range(1, case.count):            # steps 2 .. K, growing
            result["params"][k]["A:fc1.weight"] = result["params"][k]["A:fc1.weight"] + 1e-6 * k
        return result

    report = compare_steps_with_oracle(Steps(case.config, drift), case)
    assert [row.step for row in report.failures] == [2, 3, 4]
    assert report.first_divergence().label == "step 2: parameter 'A:fc1.weight'"
    assert report.worst()[1] == "step 2: parameter 'A:fc1.weight'"


def test_a_norm_counted_twice_and_a_loss_off_by_1e_8_fail_in_float64():
    case = get_case("steps-tied-lm-adamw-clip")

    def twice(result):
        result["grad_norms"][0] *= np.sqrt(2.0)
        return result

    def off(result):
        result["losses"][2] *= 1 + 1e-8
        return result

    report = compare_steps_with_oracle(Steps(case.config, twice), case)
    assert report.first_divergence().label == "step 1: gradient norm"
    report = compare_steps_with_oracle(Steps(case.config, off), case)
    assert report.first_divergence().label == "step 3: loss"
    assert compare_steps_with_oracle(Steps(case.config, off), case, dtype="float32").ok


def test_an_update_the_dtype_cannot_resolve_is_inconclusive_never_a_pass():
    # A learning rate of 1e-9 moves weights of size ~1 by ~1e-9: float32 (rtol 1e-5) cannot
    # tell that step from no step at all. Without the step's resolution the frozen candidate
    # would pass in float32; in float64 it fails.
    case = with_optimizer(get_case("steps-tied-soft-adam"), Adam(lr=1e-9))

    def frozen(params, batches):
        return {"params": [dict(params) for _ in batches],
                "losses": [float(v) for v in case.trajectory().losses],
                "grad_norms": [float(v) for v in case.trajectory().grad_norms]}

    impl = type("Frozen", (), {"train_steps": staticmethod(frozen)})()
    reference = reference_trajectory(case)
    assert compare_trajectory(reference, case, "float32", start=case.params).verdict \
        == "inconclusive"
    report = compare_steps_with_oracle(impl, case, dtype="float32")
    assert report.verdict == "inconclusive"
    assert "cannot resolve the update" in str(report)
    assert compare_steps_with_oracle(impl, case, dtype="float64").verdict == "fail"


def _dead_relu_case() -> StepCase:
    """Every ReLU unit dead: fc1's parameters and fc2's weight have exactly zero gradients,
    so SGD without decay leaves them unchanged; only fc2.bias moves."""
    model = Sequential([Dense("fc1", 3, 4), ReLU(), Dense("fc2", 4, 2)], loss=MSE())
    rng = np.random.default_rng(7)
    params = model.init(7)
    params["fc1.bias"] = np.full(4, -50.0)
    batches = [(rng.standard_normal((5, 3)), rng.standard_normal((5, 2))) for _ in range(3)]
    base = model_case_at("dead-relu-steps", "mlp", model, params, *batches[0])
    return step_case("dead-relu-steps", base, model, [{"x": x, "y": y} for x, y in batches[1:]],
                     SGD(lr=0.1, momentum=0.5))


def test_a_structurally_zero_update_must_come_back_bit_for_bit():
    case = _dead_relu_case()
    floors = trajectory_floors(case, "float32")
    assert all(step.still == {"fc1.weight", "fc1.bias", "fc2.weight"} for step in floors)

    def nudged(result):          # within rtol * |p|, but a parameter no step may move
        result["params"][1]["fc1.weight"] = result["params"][1]["fc1.weight"] * (1 + 1e-13)
        return result

    assert compare_steps_with_oracle(Steps(None, case=case), case, dtype="float32").ok
    report = compare_steps_with_oracle(Steps(None, nudged, case), case, dtype="float32")
    first = report.first_divergence()
    assert (first.step, first.what) == (2, "parameter 'fc1.weight'")
    assert "bit for bit" in first.describe()


@pytest.mark.parametrize("change, message", [
    (lambda r: [r], "train_steps returned list"),
    (lambda r: {"params": r["params"], "losses": r["losses"]}, "expected exactly"),
    (lambda r: {**r, "losses": r["losses"][:-1]}, "expected 3 entries"),
    (lambda r: {**r, "params": [{k: v for k, v in p.items() if k != "A:fc1.bias"}
                                for p in r["params"]]}, "missing"),
    (lambda r: {**r, "params": [{**p, "A:extra": p["A:fc1.bias"]} for p in r["params"]]},
     "unexpected parameter(s) ['A:extra']"),
    (lambda r: {**r, "params": [{k: v.astype(np.float32) for k, v in p.items()}
                                for p in r["params"]]}, "expected dtype float64"),
    (lambda r: {**r, "grad_norms": [np.nan, *r["grad_norms"][1:]]}, "non-finite"),
])
def test_a_malformed_trajectory_fails_saying_what_is_wrong(change, message):
    case = get_case("steps-tied-soft-adam")
    report = compare_steps_with_oracle(Steps(case.config, change), case)
    assert report.verdict == "fail"
    assert message in str(report), str(report)


def test_the_result_keys_and_a_missing_capability():
    assert RESULT_KEYS == ("params", "losses", "grad_norms")
    with pytest.raises(NotExpressible, match="no train_steps"):
        compare_steps_with_oracle(lambda params, inputs: None, "steps-tied-soft-adam")
    with pytest.raises(TypeError, match="expected a step case"):
        compare_steps_with_oracle(Steps(get_case("steps-tied-soft-adam").config), "mlp-tanh-ce")


# --- probes and conformance rows ------------------------------------------------------------------

@pytest.mark.parametrize("probe", PROBES, ids=lambda case: case.name)
def test_each_step_probe_tells_its_alternative_apart_exactly_where_it_says(probe):
    reference = reference_trajectory(probe)
    resolved = probe.config["convention"]["resolved_in"]
    alternatives = step_alternatives(probe)
    assert alternatives and all(alternative.convention for alternative in alternatives)
    for alternative in alternatives:
        assert alternative.case.params is probe.params
        theirs = reference_trajectory(alternative.case)
        for dtype in ("float64", "float32", "tf32"):
            report = compare_trajectory(theirs, probe, dtype, start=probe.params,
                                        reference=reference)
            assert (report.verdict == "fail") == (dtype in resolved), (dtype, report.summary())


def test_only_a_whole_trajectory_of_a_documented_rule_is_a_convention_difference():
    probe = get_case("probe-steps-adam-coupled-decay")
    decoupled = step_alternatives(probe)[0].case

    def following(result, wrong=False):
        theirs = _result(decoupled.trajectory())
        if wrong:
            theirs["losses"][2] += 1e-3
        return theirs

    rows = {name: conform(builder(change), cases=[probe], dtypes=["float64"]).rows[0]
            for name, change in (("refimpl", None), ("decoupled", following),
                                 ("decoupled, wrong loss", lambda r: following(r, True)))}
    assert rows["refimpl"].outcome == "pass"
    assert rows["decoupled"].outcome == "convention differs"
    assert rows["decoupled"].detail.startswith("decoupled weight decay")
    assert rows["decoupled, wrong loss"].outcome == "fail"
    assert rows["decoupled, wrong loss"].detail.startswith("diverges first at step 1 of 3")
    assert step_alternatives(get_case("steps-tied-soft-adam")) == []


def test_a_probe_outside_the_dtypes_that_resolve_it_is_inconclusive():
    row = conform(builder(), cases=["probe-steps-clip-eps"], dtypes=["tf32"]).rows[0]
    assert row.outcome == "inconclusive" and "only float64, float32 resolves it" in row.detail


def test_a_builder_without_train_steps_is_not_expressible_on_step_cases_only():
    def gradients_only(config, dtype):
        impl = Steps(config) if "steps" in config else None
        return (lambda params, inputs: impl.case.loss_and_grads(params)) if impl else (
            lambda params, inputs: get_case("mlp-tanh-ce").loss_and_grads(params))

    report = conform(gradients_only, cases=["mlp-tanh-ce", "steps-tied-soft-adam"],
                     dtypes=["float64"])
    assert [row.outcome for row in report.rows] == ["pass", "not expressible"]
    assert report.rows[1].detail == NO_STEPS and report.ok


def test_train_steps_raising_is_a_failed_row_naming_it_and_not_expressible_is_its_own():
    class Raising(Steps):
        def train_steps(self, params, batches):
            raise RuntimeError("optimizer exploded")

    class Refusing(Steps):
        def train_steps(self, params, batches):
            raise NotExpressible("no AdamW here")

    rows = [conform(lambda c, d, cls=cls: cls(c), cases=["steps-tied-soft-adam"],
                    dtypes=["float64"]).rows[0] for cls in (Raising, Refusing)]
    assert rows[0].outcome == "fail"
    assert "impl.train_steps raised RuntimeError: optimizer exploded" in rows[0].detail
    assert (rows[1].outcome, rows[1].detail) == ("not expressible", "no AdamW here")


# --- golden folders and refimpl check -------------------------------------------------------

@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "steps"
    golden.write(out, cases=["mlp-tanh-ce", "steps-tied-soft-adam", "probe-steps-clip-eps"])
    return out


def test_a_golden_step_case_holds_every_batch_and_the_trajectory(stepped):
    assert golden.verify(stepped).ok
    manifest = golden.read_manifest(stepped)
    assert manifest["schema_version"] == golden.SCHEMA_VERSION == 3
    assert "step<k>/grad_norm.npy" in manifest["conventions"]["steps"]
    case = get_case("steps-tied-soft-adam")
    entry = manifest["cases"][case.name]
    assert (entry["kind"], entry["steps"]) == ("steps", 3)
    assert entry["config"]["steps"] == case.config["steps"]
    data = golden.load_steps(stepped, case.name)
    expected = reference_trajectory(case)
    assert data.trajectory["losses"] == expected["losses"]
    for k, batch in enumerate(case.batches):
        assert all(np.array_equal(data.batches[k][key], value) for key, value in batch.items())
        assert all(np.array_equal(data.trajectory["params"][k][key], value)
                   for key, value in expected["params"][k].items())
    files = {f["path"]: f for f in entry["files"]}
    after = files[f"{case.name}/step2/parameter.A%3Afc1.weight.npy"]
    assert after["step"] == 2 and set(after["floors"]) == set(after["still"]) == set(
        DTYPE_TOLERANCES)
    assert "floors" not in files[f"{case.name}/step2/input.xa.npy"]
    with pytest.raises(ValueError, match="load_steps"):
        golden.load_case(stepped, case.name)


def test_verify_fails_a_changed_step_file_naming_it(stepped, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stepped, copy)
    path = copy / "steps-tied-soft-adam" / "step2" / "parameter.B%3Afc2.weight.npy"
    changed = np.load(path)
    changed[0, 0] += 1e-6
    np.save(path, changed)
    failures = {entry.file for entry in golden.verify(copy).failures}
    assert "steps-tied-soft-adam/step2/parameter.B%3Afc2.weight.npy" in failures


def test_compare_with_golden_runs_train_steps_on_step_cases(stepped):
    name = "steps-tied-soft-adam"
    config = get_case(name).config
    assert [r.verdict for r in compare_with_golden(Steps(config), stepped, case=[name])] \
        == ["pass"]
    wrong = Steps(config, lambda r: _halve_update(r, 3, "A:fc2.bias", get_case(name).params))
    report, = compare_with_golden(wrong, stepped, case=[name])
    assert report.first_divergence().label == "step 3: parameter 'A:fc2.bias'"
    plain = get_case("mlp-tanh-ce")
    gradients_only = lambda params, inputs: plain.loss_and_grads(params)   # noqa: E731
    assert [r.case for r in compare_with_golden(gradients_only, stepped)] == ["mlp-tanh-ce"]
    with pytest.raises(NotExpressible):
        compare_with_golden(gradients_only, stepped, case=[name])


def test_refimpl_check_checks_every_step_and_recomputes_the_trajectory(monkeypatch):
    case = get_case("probe-steps-clip-eps")
    complex_rows = check.check_step_case(case, "complex")
    assert [row["parameter"] for row in complex_rows] == [
        "step 1: fc.weight", "step 2: fc.weight", "step 3: fc.weight", "trajectory (3 steps)"]
    assert all(row["ok"] for row in complex_rows)
    assert len(check.check_step_case(case, "central")) == 3
    # a gradient formula off by 0.1%: every step's gradient row says so
    def scaled(params, inputs, evaluate=case.evaluate):
        loss, grads, outputs = evaluate(params, inputs)
        return loss, {key: 1.001 * value for key, value in grads.items()}, outputs

    broken = dataclasses.replace(case, evaluate=scaled)
    assert [row["ok"] for row in check.check_step_case(broken, "complex")[:3]] == [False] * 3
    # a reference whose step 2 is wrong: the recomputation from complex-step gradients says so
    real = check.reference_trajectory
    monkeypatch.setattr(check, "reference_trajectory", lambda c: _halve_update(
        real(c), 2, "fc.weight", c.params))
    row = check.check_step_case(case, "complex")[-1]
    assert not row["ok"] and "diverges first at step 2 of 3: parameter 'fc.weight'" \
        in row["status"]


def test_the_steps_of_a_case_can_be_rebuilt_with_another_optimizer():
    case = get_case("steps-tied-hard-sgd-clip")
    other = with_optimizer(case, Adam(lr=0.01), ClipGradNorm(2.0), name="other")
    assert other.name == "other" and other.batches is case.batches
    assert other.config["steps"]["optimizer"]["name"] == "adam"
    assert other.config["steps"]["clip"]["max_norm"] == 2.0
    with pytest.raises(ValueError, match="at least 3 steps"):
        step_case("short", dataclasses.replace(case), case.model, [case.batches[1]], Adam())
