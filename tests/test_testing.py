"""Tests for refimpl/testing.py: the assertions that check another implementation.

The "other implementation" is ``independent_numpy`` (written in the tests from the documented
conventions, importing nothing of refimpl) and, when torch is installed, PyTorch itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from independent_numpy import make_impl

import refimpl
from refimpl import MLP
from refimpl.nn import Sequential, transposed
from refimpl.testing import (
    DTYPE_TOLERANCES,
    assert_matches_golden,
    assert_matches_oracle,
    compare_tensor,
    compare_with_golden,
    compare_with_oracle,
    golden,
    oracle,
    resolve_tolerance,
)
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.drawn import drawn_case
from refimpl.tying import AnchoredModel, TiedPair

CASES = all_cases()
CASE_IDS = [case.name for case in CASES]


KINDS = {case.name: case.kind for case in CASES}


def _first_two_and_one_of_each_kind() -> list[str]:
    names = CASE_IDS[:2]
    for case in CASES:
        if case.kind not in {KINDS[name] for name in names}:
            names.append(case.name)
    return names


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    """A golden folder of the first two catalogue cases and one case of each kind."""
    return golden.write(tmp_path_factory.mktemp("golden") / "sample",
                        cases=_first_two_and_one_of_each_kind())


@pytest.fixture(scope="module")
def whole_golden_dir(tmp_path_factory):
    return golden.write(tmp_path_factory.mktemp("golden") / "vectors")


# --- the complete example of docs/oracle-kit.md --------------------------------------------------

def my_loss_and_grads(params, inputs):
    """A two-layer tanh MLP with softmax cross-entropy, written from scratch in NumPy."""
    x, y = inputs["x"], inputs["y"]
    w1, b1 = params["fc1.weight"], params["fc1.bias"]          # (hidden, in), (hidden,)
    w2, b2 = params["fc2.weight"], params["fc2.bias"]          # (classes, hidden), (classes,)
    h = np.tanh(x @ w1.T + b1)
    z = h @ w2.T + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    dh = (dz @ w2) * (1 - h ** 2)
    grads = {"fc1.weight": dh.T @ x, "fc1.bias": dh.sum(axis=0),
             "fc2.weight": dz.T @ h, "fc2.bias": dz.sum(axis=0)}
    return loss, grads


def test_readme_example(tmp_path):
    # 1. Against a built-in case (sizes 4-8-3, tanh, cross-entropy):
    assert_matches_oracle(my_loss_and_grads, get_case("mlp-tanh-ce"))
    # 2. Against a model and data of your choice:
    model = MLP([3, 5, 2], activation="tanh", loss="cross_entropy")
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((8, 3)), "y": rng.integers(0, 2, size=8)}
    assert_matches_oracle(my_loss_and_grads, model, inputs=inputs)
    # 3. The same code run in float32 (params and x handed over as float32):
    assert_matches_oracle(my_loss_and_grads, model, inputs=inputs, dtype="float32")
    # 4. Against a golden folder (what a C++ or Rust test reads too):
    golden.write(tmp_path / "golden", cases=["mlp-tanh-ce"])
    assert_matches_golden(my_loss_and_grads, tmp_path / "golden", case="mlp-tanh-ce")

    # ... and the same code with a bug (the mean's 1/N forgotten) is rejected:
    def forgot_the_mean(params, inputs):
        loss, grads = my_loss_and_grads(params, inputs)
        return loss, {k: g * len(inputs["y"]) for k, g in grads.items()}

    with pytest.raises(AssertionError, match="gradient 'fc1.weight'"):
        assert_matches_oracle(forgot_the_mean, model, inputs=inputs)


@pytest.mark.slow
def test_pytorch_example():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):                     # parameter names = refimpl's names
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(4, 8)
            self.fc2 = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    def torch_impl(params, inputs, dtype=torch.float64):
        net = Net().to(dtype)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        logits = net(torch.from_numpy(inputs["x"]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(inputs["y"]))
        loss.backward()
        return (loss.item(),
                {k: p.grad.detach().cpu().numpy() for k, p in net.named_parameters()},
                {"out": logits.detach().cpu().numpy()})

    assert_matches_oracle(torch_impl, "mlp-tanh-ce")
    assert_matches_oracle(lambda p, i: torch_impl(p, i, torch.float32), "mlp-tanh-ce",
                          dtype="float32")


# --- an independent implementation is accepted on every case ----------------------------------

#: Built-in points where a ReLU pre-activation lies within TF32's resolution of the kink
#: (|z| / sum|terms| = 6e-4 and 7e-4 in two hidden layers of mlp-deep-relu-ce; u = 4.9e-4):
#: a TF32 implementation may land on either side, so those gradients are inconclusive.
TF32_INCONCLUSIVE = {"mlp-deep-relu-ce", "cnn-lenet-like-directional"}
#: The convention probes only float64 resolves (tests/test_probes.py).
FLOAT64_ONLY_PROBES = {"probe-l2-lambda-float64", "probe-leaky-relu-slope-float64",
                       "probe-softplus-above-20"}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_independent_implementation_matches_every_case(case):
    for dtype in DTYPE_TOLERANCES:
        # (a convention probe only float64 resolves is inconclusive in float32 and TF32 for
        # every implementation: tests/test_probes.py)
        expected = "inconclusive" if (dtype, case.name) in \
            {("tf32", name) for name in TF32_INCONCLUSIVE} \
            or (dtype != "float64" and case.name in FLOAT64_ONLY_PROBES) else "pass"
        report = assert_matches_oracle(make_impl(case.config, dtype), case, dtype=dtype,
                                       allow_inconclusive=expected == "inconclusive")
        assert report.verdict == expected, str(report)
        assert {row.role for row in report.rows} >= {"loss", "gradient", "output"}


def _matches_every_case_of(folder) -> None:
    manifest = golden.read_manifest(folder)
    for name, entry in manifest["cases"].items():
        if entry["kind"] == "steps":       # no train_steps here: tests/test_step_cases.py
            continue
        reports = assert_matches_golden(make_impl(entry["config"]), folder, case=name)
        assert [report.case for report in reports] == [name]


def test_independent_implementation_matches_a_golden_case_of_each_kind(golden_dir):
    # Every case through the oracle: test_independent_implementation_matches_every_case.
    kinds = {KINDS[name] for name in golden.read_manifest(golden_dir)["cases"]}
    assert kinds == set(KINDS.values())
    _matches_every_case_of(golden_dir)


@pytest.mark.slow
def test_independent_implementation_matches_every_golden_case(whole_golden_dir):
    _matches_every_case_of(whole_golden_dir)


def test_float32_is_rejected_at_float64_and_tf32_at_float32():
    """The three tolerance sets are distinct: each lower precision fails the tighter set."""
    case = get_case("mlp-tanh-ce")
    float32 = make_impl(case.config, "float32")

    def float32_claiming_float64(params, inputs):
        loss, grads, outputs = float32(params, inputs)
        return loss, {k: v.astype(np.float64) for k, v in grads.items()}, \
            {k: v.astype(np.float64) for k, v in outputs.items()}

    report = compare_with_oracle(float32_claiming_float64, case)
    assert not report.ok and all(not row.ok for row in report.rows if row.role == "gradient")
    report = compare_with_oracle(make_impl(case.config, "tf32"), case, dtype="float32")
    assert not report.ok
    assert compare_with_oracle(make_impl(case.config, "tf32"), case, dtype="tf32").ok


# --- the comparison rule ----------------------------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(DTYPE_TOLERANCES)),
       st.floats(-8, 0), st.integers(1, 30), st.floats(-12, 1), st.floats(-12, -1))
def test_compare_tensor_follows_the_documented_rule(seed, dtype, log_delta, size, log_floor,
                                                    log_atol):
    rng = np.random.default_rng(seed)
    reference = rng.standard_normal(size) * 10.0 ** rng.integers(-3, 3)
    candidate = reference.copy()
    index = int(rng.integers(size))
    candidate[index] += 10.0 ** log_delta * (1 + abs(reference).max())
    tolerance = resolve_tolerance(dtype, atol=10.0 ** log_atol)[1]
    floor = 10.0 ** log_floor
    row = compare_tensor("gradient", "w", reference, candidate, tolerance, floor=floor)
    error = np.abs(candidate - reference).max()
    scale = np.abs(reference).max()
    limit = tolerance.rtol * scale + floor + tolerance.atol
    expected = "fail" if error > limit else "inconclusive" if limit >= scale / 3 else "pass"
    assert row.verdict == expected and row.ok == (expected == "pass")
    assert row.worst_index == (index,) and row.limit == limit and row.floor == floor
    assert row.actual == candidate[index] and row.expected == reference[index]


def test_scale_is_the_reference_never_the_candidate():
    reference = np.array([1e-3, -2e-3])
    wild = np.array([1e3, -2e3])               # would widen its own tolerance if it set the scale
    assert not compare_tensor("gradient", "w", reference, wild, DTYPE_TOLERANCES["float32"]).ok
    # A structurally zero reference (zero floor) is compared exactly.
    zero = np.zeros(3)
    assert compare_tensor("gradient", "w", zero, zero, DTYPE_TOLERANCES["float64"]).ok
    row = compare_tensor("gradient", "w", zero, zero + 1e-300, DTYPE_TOLERANCES["float64"])
    assert row.verdict == "fail"
    # With a floor, a zero reference cannot be resolved: never a pass.
    row = compare_tensor("gradient", "w", zero, zero, DTYPE_TOLERANCES["float32"], floor=1e-9)
    assert row.verdict == "inconclusive" and not row.ok


def test_tolerance_overrides_and_dtype_names():
    assert resolve_tolerance("float64") == ("float64", DTYPE_TOLERANCES["float64"])
    assert resolve_tolerance(np.float32)[0] == "float32"
    name, tolerance = resolve_tolerance("tf32", rtol=0.5, atol=0)
    assert (name, tolerance.rtol, tolerance.atol) == ("tf32", 0.5, 0.0)
    case = get_case("mlp-tanh-ce")
    loose = make_impl(case.config, "tf32")
    assert not compare_with_oracle(loose, case, dtype="float32").ok
    assert compare_with_oracle(loose, case, dtype="float32", rtol=0.05).ok


@pytest.mark.parametrize("kwargs, error, match", [
    ({"dtype": "float16"}, ValueError, "dtype: expected one of"),
    ({"dtype": object()}, ValueError, "dtype"),
    ({"rtol": -1.0}, ValueError, "rtol: expected a finite non-negative"),
    ({"atol": float("nan")}, ValueError, "atol"),
    ({"rtol": True}, TypeError, "rtol"),
    ({"atol": "1e-3"}, TypeError, "atol"),
    ({"rtol": float("inf")}, ValueError, "rtol"),
    ({"atol": -1e-9}, ValueError, "atol"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"allow_inconclusive": "yes"}, TypeError, "allow_inconclusive"),
])
def test_bad_tolerance_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        assert_matches_oracle(my_loss_and_grads, "mlp-tanh-ce", **kwargs)


# --- failure messages -------------------------------------------------------------------------

def test_failure_names_case_parameter_index_values_and_tolerance():
    case = get_case("mlp-tanh-ce")

    def off_by_a_bit(params, inputs):
        loss, grads = case.loss_and_grads(params)
        grads = {k: v.copy() for k, v in grads.items()}
        grads["fc2.weight"][1, 2] += 1e-6
        return loss, grads

    with pytest.raises(AssertionError) as info:
        assert_matches_oracle(off_by_a_bit, case)
    message = str(info.value)
    expected = case.loss_and_grads(case.params)[1]["fc2.weight"][1, 2]
    assert "case 'mlp-tanh-ce'" in message
    assert "gradient 'fc2.weight'" in message and "worst index (1, 2)" in message
    assert repr(float(expected)) in message and repr(float(expected + 1e-6)) in message
    assert "> tolerance" in message and "rtol=1e-10" in message
    assert "matching: loss, gradient 'fc1.weight'" in message


@pytest.mark.parametrize("mutation, match", [
    (lambda loss, grads: (loss, {k: v for k, v in grads.items() if k != "fc1.bias"}),
     "gradient 'fc1.bias': missing from grads"),
    (lambda loss, grads: (loss, {**grads, "fc9.weight": grads["fc1.bias"]}),
     r"unexpected gradient\(s\) \['fc9.weight'\]"),
    (lambda loss, grads: (loss, {**grads, "fc1.weight": grads["fc1.weight"].T}),
     r"expected shape \(8, 4\), got \(4, 8\) \(transposed\?\)"),
    (lambda loss, grads: (loss, {**grads, "fc1.bias": grads["fc1.bias"] * np.nan}),
     "8 non-finite value"),
    (lambda loss, grads: (loss, {**grads, "fc1.bias": grads["fc1.bias"].astype(np.float32)}),
     "expected dtype float64 for a float64 implementation, got float32"),
    (lambda loss, grads: (np.float32(loss), grads),
     "loss: expected dtype float64 for a float64 implementation, got float32"),
    (lambda loss, grads: (np.array([loss, loss]), grads), "loss: expected one number"),
    (lambda loss, grads: (loss, list(grads.values())), "expected a dict"),
    (lambda loss, grads: loss, "expected a tuple"),
    (lambda loss, grads: (loss, {**grads, "fc1.bias": "text"}), "real floating-point"),
    (lambda loss, grads: (loss, grads, {"out": np.zeros((5, 3))}), "output 'out'"),
    (lambda loss, grads: (loss, grads, {"logits": np.zeros((5, 3))}),
     r"unexpected output\(s\) \['logits'\]"),
])
def test_structural_problems_are_named(mutation, match):
    case = get_case("mlp-tanh-ce")

    def impl(params, inputs):
        return mutation(*case.loss_and_grads(params))

    with pytest.raises(AssertionError, match=match):
        assert_matches_oracle(impl, case)


def test_bad_arguments():
    model = MLP([2, 2])
    inputs = {"x": np.ones((1, 2)), "y": np.array([0])}
    with pytest.raises(TypeError, match="impl: expected a callable"):
        assert_matches_oracle(None, "mlp-tanh-ce")
    with pytest.raises(ValueError, match="unknown case"):
        assert_matches_oracle(my_loss_and_grads, "no-such-case")
    with pytest.raises(ValueError, match="carries its own point"):
        assert_matches_oracle(my_loss_and_grads, "mlp-tanh-ce", inputs=inputs)
    with pytest.raises(TypeError, match="inputs: with a model"):
        assert_matches_oracle(my_loss_and_grads, model)
    with pytest.raises(ValueError, match="exactly \\{'x', 'y'\\}"):
        assert_matches_oracle(my_loss_and_grads, model, inputs={"x": inputs["x"]})
    with pytest.raises(TypeError, match="case_or_model: expected"):
        assert_matches_oracle(my_loss_and_grads, 42, inputs=inputs)
    with pytest.raises(ValueError, match="x"):          # the model's own validation
        assert_matches_oracle(my_loss_and_grads, model, inputs={"x": np.ones((1, 3)),
                                                                "y": np.array([0])})


# --- models, pairs, anchored models, shared models --------------------------------------------

def _data(rng, model, batch, features):
    x = rng.standard_normal((batch, features))
    if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
        return x, rng.integers(0, model.output_shape(x.shape)[1], size=batch)
    return x, rng.standard_normal(model.output_shape(x.shape))


def test_shared_model_and_explicit_params():
    model = Sequential([refimpl.nn.Dense("enc", 4, 3), refimpl.nn.Tanh(),
                        refimpl.nn.Dense("dec", 3, 4)], loss=refimpl.nn.MSE(),
                       share={"dec.weight": transposed("enc.weight")})
    rng = np.random.default_rng(1)
    x, y = _data(rng, model, 5, 4)
    params = {k: rng.standard_normal(v.shape) for k, v in model.init(0).items()}
    impl = make_impl({"model": model.config()})
    report = assert_matches_oracle(impl, model, params, {"x": x, "y": y})
    assert [row.name for row in report.rows if row.role == "gradient"] == list(params)


@pytest.mark.parametrize("mode, penalty", [("soft", "l2"), ("soft", "l1"), ("hard", "l2")])
def test_tied_pair(mode, penalty):
    model_a, model_b = MLP([3, 4, 2], activation="tanh"), MLP([3, 4, 5], activation="sigmoid")
    pairs = {"fc1.weight": "fc1.weight"}
    pair = TiedPair(model_a, model_b, pairs, lam=None if mode == "hard" else 0.3, mode=mode,
                    penalty=penalty)
    rng = np.random.default_rng(2)
    xa, ya = _data(rng, model_a, 4, 3)
    xb, yb = _data(rng, model_b, 3, 3)
    inputs = {"xa": xa, "ya": ya, "xb": xb, "yb": yb}
    report = assert_matches_oracle(make_impl({"pair": pair.config()}), pair, inputs=inputs)
    assert "A:fc1.weight" in {row.name for row in report.rows}
    with pytest.raises(ValueError, match="TiedPair takes exactly"):
        assert_matches_oracle(make_impl({"pair": pair.config()}), pair, inputs={"x": xa})


def test_anchored_model():
    model = MLP([3, 4, 2], activation="tanh")
    anchored = AnchoredModel(model, lam=0.2)
    rng = np.random.default_rng(3)
    x, y = _data(rng, model, 4, 3)
    assert_matches_oracle(make_impl({"anchored": anchored.config()}), anchored,
                          inputs={"x": x, "y": y})


def test_anchored_model_with_reference_inputs_hands_over_w0():
    model = MLP([3, 4, 2], activation="tanh")
    rng = np.random.default_rng(4)
    reference = {"fc1.weight": rng.standard_normal((4, 3))}
    anchored = AnchoredModel(model, lam=0.3, reference=reference)
    x, y = _data(rng, model, 4, 3)
    case = oracle._as_case(anchored, None, {"x": x, "y": y}, 0)
    assert case.config["anchored"] == anchored.config()
    assert case.config["inputs"]["w0:fc1.weight"]["role"] == "reference weights"
    seen = []

    def recording(params, inputs):
        seen.append(sorted(inputs))
        return make_impl(case.config)(params, inputs)

    report = assert_matches_oracle(recording, anchored, inputs={"x": x, "y": y})
    assert report.case == case.name and seen[0] == ["w0:fc1.weight", "x", "y"]
    np.testing.assert_array_equal(case.inputs["w0:fc1.weight"], reference["fc1.weight"])

    def weight_decay(params, inputs):          # ignores the anchor: pulls towards 0
        return make_impl(case.config)(params, {"x": inputs["x"], "y": inputs["y"]})

    with pytest.raises(AssertionError, match="fc1.weight"):
        assert_matches_oracle(weight_decay, anchored, inputs={"x": x, "y": y})


def test_compare_with_golden_rebuilds_drawn_cases(tmp_path):
    drawn = drawn_case(5, "mlp")
    folder = golden.write(tmp_path / "drawn", cases=[drawn])
    entry = golden.read_manifest(folder)["cases"][drawn.name]
    reports = compare_with_golden(make_impl(entry["config"]), folder, dtype="float32")
    assert [report.case for report in reports] == [drawn.name] and reports[0].ok
    wrong = compare_with_golden(make_impl(entry["config"], bugs={"transposed_dense_gradient"}),
                                folder)
    assert not wrong[0].ok
    handmade = dataclasses.replace(get_case("mlp-tanh-ce"), name="handmade-case")
    folder = golden.write(tmp_path / "handmade", cases=[handmade])
    with pytest.raises(ValueError, match="'handmade-case' is neither in refimpl's catalogue"):
        compare_with_golden(make_impl(handmade.config), folder)


def test_compare_with_golden_returns_one_report_per_case(golden_dir):
    name = CASE_IDS[0]
    entry = golden.read_manifest(golden_dir)["cases"][name]
    reports = compare_with_golden(make_impl(entry["config"]), golden_dir, case=[name])
    assert [r.case for r in reports] == [name] and reports[0].ok
    with pytest.raises(ValueError, match="unknown case"):
        compare_with_golden(my_loss_and_grads, golden_dir, case="no-such-case")


def test_golden_companion_reports_every_failing_case(golden_dir):
    names = CASE_IDS[:2]
    with pytest.raises(AssertionError) as info:
        assert_matches_golden(lambda p, i: (0.0, {k: np.zeros_like(v) for k, v in p.items()}),
                              golden_dir, case=names)
    message = str(info.value)
    assert message.startswith(f"2 of 2 golden case(s) in {str(golden_dir)!r}")
    assert all(f"case {name!r}" in message for name in names)


# --- the assertion helpers hide their own frames from pytest's tracebacks ----------------------

def _shown_files(excinfo: pytest.ExceptionInfo) -> list[str]:
    """The files of the traceback entries pytest shows for a failure (the filter drops the
    frames whose code sets ``__tracebackhide__``)."""
    return [str(entry.path) for entry in excinfo.traceback.filter(excinfo)]


def test_a_failing_assertion_helper_shows_the_callers_line_not_its_own(tmp_path):
    case = get_case("mlp-tanh-ce")

    def doubled(params, inputs):
        loss, grads = case.loss_and_grads(params)
        return loss, {name: 2 * grad for name, grad in grads.items()}

    folder = golden.write(tmp_path / "g", cases=[case.name])
    for check in (lambda: assert_matches_oracle(doubled, case),
                  lambda: assert_matches_golden(doubled, folder, case=case.name)):
        with pytest.raises(AssertionError, match="does not match") as caught:
            check()
        shown = _shown_files(caught)
        assert shown and all(path == __file__ for path in shown), shown
        # the frames are there, hidden: the full traceback still reaches oracle.py
        assert any(str(entry.path).endswith("oracle.py") for entry in caught.traceback)
