"""Tests of refimpl/testing/cases/siamese.py and cases/microbatch.py (and their strategies).

Every case's gradient is checked numerically; each Siamese case has the placement it claims
(every row inside its hinge, or one row NEAR_GAP from its kink); each micro-batch case's
step equals the full-batch result of its model rebuilt from the configuration; an
implementation that receives the micro-batches passes, and the two classic accumulation bugs
(weights 1/M, a penalty per micro-batch) fail. The golden folder of both modules is written,
verified and read back.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import refimpl as ri
from refimpl.nn import Siamese
from refimpl.testing import (
    assert_matches_golden,
    compare_with_oracle,
    unresolved_tensors,
)
from refimpl.testing import cases as catalogue
from refimpl.testing.cases import microbatch, siamese
from refimpl.testing.cases.microbatch import join_inputs
from refimpl.testing.golden import read_manifest, verify, write
from refimpl.testing.strategies.siamese import microbatch_cases, siamese_cases

SIAMESE = siamese.cases()
MICRO = microbatch.cases()


def test_names_kinds_and_inputs():
    names = [case.name for case in SIAMESE + MICRO]
    assert len(set(names)) == len(names)
    assert {case.kind for case in SIAMESE} == {"siamese"}
    assert {case.kind for case in MICRO} == {"microbatch"}
    for case in SIAMESE:
        assert list(case.inputs) == list(case.config["inputs"])
        assert set(case.outputs(case.params)) == set(case.config["outputs"])


@pytest.mark.parametrize("case", SIAMESE + MICRO, ids=lambda case: case.name)
@pytest.mark.parametrize("method", ["complex", "central"])
def test_every_case_matches_numerical_derivatives(case, method):
    report = ri.check_gradients(case.loss_and_grads, case.params, method=method)
    assert report.ok, report
    _, grads = case.loss_and_grads(case.params)
    assert all(np.abs(grad).max() > 1e-4 for grad in grads.values())   # none structurally 0


@pytest.mark.parametrize("case", SIAMESE + MICRO, ids=lambda case: case.name)
def test_every_case_can_be_judged_in_float32(case):
    assert unresolved_tensors(case, "float32") == []


@pytest.mark.parametrize("case", SIAMESE, ids=lambda case: case.name)
def test_siamese_outputs_are_the_tower_on_each_branch(case):
    model = Siamese.from_config(case.config["siamese"])
    outputs = case.outputs(case.params)
    for name in model.branch_names:
        assert np.array_equal(outputs[f"out_{name}"],
                              model.tower.forward(case.params, case.inputs[name]))


def placement(case):
    model = Siamese.from_config(case.config["siamese"])
    distances = siamese.kink_distances(model, case.params, case.inputs)
    return model, distances[np.isfinite(distances)]


@pytest.mark.parametrize("case", [c for c in SIAMESE if c.config["placement"] == "active"],
                         ids=lambda case: case.name)
def test_every_branch_active_cases_have_every_row_inside_its_hinge(case):
    model, distances = placement(case)
    assert distances.size and np.all(distances >= siamese.ACTIVE_GAP)
    # so every branch input carries gradient in every row
    embeddings = model.forward(case.params, *(case.inputs[n] for n in model.branch_names))
    y = case.inputs.get("y")
    _, cache = model.loss_spec.forward(embeddings, None if y is None else y.astype(float))
    for dout in model.loss_spec.backward(1.0, cache):
        assert np.all(np.abs(dout).sum(axis=1) > 0)


@pytest.mark.parametrize("case", [c for c in SIAMESE if c.config["placement"] == "near"],
                         ids=lambda case: case.name)
def test_near_margin_cases_have_one_row_near_its_kink_and_none_on_it(case):
    _, distances = placement(case)
    closest = distances[np.argmin(np.abs(distances))]
    assert abs(closest - siamese.NEAR_GAP) <= 1e-12          # active side, not on the kink
    assert np.sum(np.abs(distances) < 2 * siamese.NEAR_GAP) == 1
    assert np.any(distances < 0)                              # and a row on the other side


# --- micro-batch cases --------------------------------------------------------------------------

def full_batch(case):
    """The base model's own full-batch (loss, grads), from the configuration and the joined
    micro-batches: independent of refimpl.microbatch."""
    base, kind = case.config["base"], case.config["base_kind"]
    count = len(case.config["micro_batches"])
    names = sorted({key.rsplit(".", 1)[0] for key in case.inputs})
    data = join_inputs(case.inputs, names, count)
    if kind == "tied":
        pair = ri.TiedPair.from_config(base["pair"])
        target_b = data["yb"] if "yb" in data else data["xb"]
        return pair.joined_loss_and_grads(case.params, (data["xa"], data["ya"]),
                                          (data["xb"], target_b))
    if kind == "siamese":
        model = Siamese.from_config(base["siamese"])
        return model.loss_and_grads(case.params, *(data[n] for n in model.branch_names),
                                    y=data.get("y"))
    if kind == "anchored":
        model = ri.AnchoredModel(ri.Sequential.from_config(base["anchored"]["model"]),
                                 lam=base["anchored"]["lam"], names=base["anchored"]["names"],
                                 penalty=base["anchored"]["penalty"])
        return model.loss_and_grads(case.params, data["x"], data["y"])
    return ri.Sequential.from_config(base["model"]).loss_and_grads(case.params, data["x"],
                                                                   data["y"])


def expected_outputs(case):
    """Every micro-batch's forward outputs, from the base model rebuilt from the config."""
    base, kind = case.config["base"], case.config["base_kind"]
    expected = {}
    for i in range(len(case.config["micro_batches"])):
        if kind == "tied":
            pair = ri.TiedPair.from_config(base["pair"])
            out_a, out_b = pair.forward(*pair.split(case.params), case.inputs[f"xa.{i}"],
                                        case.inputs[f"xb.{i}"])
            expected.update({f"out_a.{i}": out_a, f"out_b.{i}": out_b})
        elif kind == "siamese":
            model = Siamese.from_config(base["siamese"])
            outs = model.forward(case.params, *(case.inputs[f"{n}.{i}"]
                                                for n in model.branch_names))
            expected.update({f"out_{n}.{i}": out for n, out in zip(model.branch_names, outs,
                                                                    strict=True)})
        else:
            model = ri.Sequential.from_config(base.get("anchored", base)["model"])
            expected[f"out.{i}"] = model.forward(case.params, case.inputs[f"x.{i}"])
    return expected


@pytest.mark.parametrize("case", MICRO, ids=lambda case: case.name)
def test_micro_batch_outputs_are_every_micro_batch_forward(case):
    outputs, expected = case.outputs(case.params), expected_outputs(case)
    assert list(outputs) == list(expected)
    for key in expected:
        assert np.array_equal(outputs[key], expected[key]), key


@pytest.mark.parametrize("case", MICRO, ids=lambda case: case.name)
def test_micro_batch_cases_return_the_full_batch_step(case):
    loss, grads = case.loss_and_grads(case.params)
    expected_loss, expected_grads = full_batch(case)
    ri.gradcheck.assert_close(loss, expected_loss, name="loss")
    for key in expected_grads:
        ri.gradcheck.assert_close(grads[key], expected_grads[key], name=key)
    sizes = case.config["micro_batches"]
    assert len(set(sizes)) > 1                       # unequal: 1/M weights would differ
    first = "xa" if case.config["base_kind"] == "tied" else next(iter(case.inputs)).split(".")[0]
    assert [len(case.inputs[f"{first}.{i}"]) for i in range(len(sizes))] == sizes


def micro_batch_impl(case, weights="share", penalty_per_micro_batch=False):
    """An implementation as a C++ one would be written: it reads x.<i>, y.<i> and loops over
    the micro-batches (here with refimpl's model per micro-batch)."""
    kind, base = case.config["base_kind"], case.config["base"]
    sizes = case.config["micro_batches"]

    def impl(params, inputs):
        params = {k: v.astype(np.float64) for k, v in params.items()}
        total, grads = 0.0, dict.fromkeys(params, 0.0)
        if kind == "tied":
            pair = ri.TiedPair.from_config(base["pair"])
            params_a, params_b = pair.split(params)
            sizes_b = case.config["micro_batches_b"]
            for i in range(len(sizes)):
                w_a = sizes[i] / sum(sizes) if weights == "share" else 1 / len(sizes)
                w_b = sizes_b[i] / sum(sizes_b) if weights == "share" else 1 / len(sizes)
                la, ga = pair.model_a.loss_and_grads(params_a, inputs[f"xa.{i}"],
                                                     inputs[f"ya.{i}"])
                full_b = dict(params_b)
                for name_b, (name_a, t) in pair.shared_b().items():
                    full_b[name_b] = params_a[name_a].T if t else params_a[name_a]
                lb, gb = pair.model_b.loss_and_grads(full_b, inputs[f"xb.{i}"],
                                                     inputs[f"yb.{i}"])
                total += w_a * la + w_b * lb
                ga = {k: w_a * v for k, v in ga.items()}
                gb = {k: w_b * v for k, v in gb.items()}
                for name_b, (name_a, t) in pair.shared_b().items():   # hard: one array
                    shared = gb.pop(name_b)
                    ga[name_a] = ga[name_a] + (shared.T if t else shared)
                for k, v in pair.join(ga, gb).items():
                    grads[k] = grads[k] + v
                if penalty_per_micro_batch or i == 0:
                    value, pa, pb = pair.penalty(params_a, params_b)
                    total += value
                    for k, v in pair.join(pa, pb).items():
                        grads[k] = grads[k] + v
            return total, grads
        model = ri.Sequential.from_config(base["model"])
        for i, size in enumerate(sizes):
            w = size / sum(sizes) if weights == "share" else 1 / len(sizes)
            loss, g = model.loss_and_grads(params, inputs[f"x.{i}"], inputs[f"y.{i}"])
            total += w * loss
            grads = {k: grads[k] + w * g[k] for k in params}
        return total, grads

    return impl


@pytest.mark.parametrize("name", ["microbatch-mlp", "microbatch-shared", "microbatch-tied-soft",
                                  "microbatch-tied-hard"])
def test_an_implementation_receiving_micro_batches_passes(name):
    case = next(c for c in MICRO if c.name == name)
    assert compare_with_oracle(micro_batch_impl(case), case).verdict == "pass"
    assert compare_with_oracle(micro_batch_impl(case), case, dtype="float32").verdict == "pass"


@pytest.mark.parametrize("name", ["microbatch-mlp", "microbatch-shared", "microbatch-tied-soft",
                                  "microbatch-tied-hard"])
def test_one_over_m_weights_fail(name):
    case = next(c for c in MICRO if c.name == name)
    report = compare_with_oracle(micro_batch_impl(case, weights="one over M"), case,
                                 dtype="float32")
    assert report.verdict == "fail", report


def test_a_penalty_counted_per_micro_batch_fails():
    case = next(c for c in MICRO if c.name == "microbatch-tied-soft")
    report = compare_with_oracle(micro_batch_impl(case, penalty_per_micro_batch=True), case,
                                 dtype="float32")
    assert report.verdict == "fail", report
    failed = {row.name for row in report.rows if row.verdict == "fail"}
    assert {"loss", "A:fc1.weight", "B:fc1.weight"} <= failed


def test_golden_folder_of_both_modules_is_written_verified_and_matched(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "CASE_MODULES", ("siamese", "microbatch"))
    out = write(tmp_path / "golden")
    assert verify(out).ok
    manifest = read_manifest(out)
    assert set(manifest["cases"]) == {case.name for case in SIAMESE + MICRO}
    files = {entry["path"] for entry in manifest["cases"]["microbatch-mlp"]["files"]}
    assert "microbatch-mlp/input.x.0.npy" in files and "microbatch-mlp/output.out.2.npy" in files
    case = next(c for c in MICRO if c.name == "microbatch-mlp")
    assert_matches_golden(micro_batch_impl(case), out, case="microbatch-mlp")


@settings(max_examples=20, deadline=None)
@given(case=microbatch_cases())
def test_drawn_micro_batch_cases_match_complex_step_and_the_full_batch(case):
    report = ri.check_gradients(case.loss_and_grads, case.params)
    assert report.ok, report
    loss, grads = case.loss_and_grads(case.params)
    expected_loss, expected_grads = full_batch(case)
    ri.gradcheck.assert_close(loss, expected_loss, name="loss")
    for key in expected_grads:
        ri.gradcheck.assert_close(grads[key], expected_grads[key], name=key)


# --- agreement with PyTorch on every Siamese case (float64, the oracle's rtol 1e-10) ----------

def torch_tower(torch, tower_config, params):
    """A torch module for the layers the Siamese cases use, loaded with ``params``."""
    modules = []
    for layer in tower_config["layers"]:
        kind = layer["type"]
        if kind == "Dense":
            module = torch.nn.Linear(layer["in_features"], layer["out_features"],
                                     bias=layer["bias"], dtype=torch.float64)
        elif kind == "Conv2D":
            module = torch.nn.Conv2d(layer["in_channels"], layer["out_channels"],
                                     tuple(layer["kernel_size"]), tuple(layer["stride"]),
                                     tuple(layer["padding"]), tuple(layer["dilation"]),
                                     layer["groups"], bias=layer["bias"], dtype=torch.float64)
        else:
            module = {"Tanh": torch.nn.Tanh, "Sigmoid": torch.nn.Sigmoid,
                      "Softplus": torch.nn.Softplus, "Flatten": torch.nn.Flatten}[kind]()
        modules.append((layer.get("name"), module))
    shared = {slot: source["source"] for slot, source in tower_config["share"].items()}
    tensors = {key: torch.tensor(value, requires_grad=True) for key, value in params.items()}
    for name, module in modules:
        for local in ("weight", "bias"):
            slot = f"{name}.{local}"
            if name is not None and getattr(module, local, None) is not None:
                delattr(module, local)
                setattr(module, local, tensors[shared.get(slot, slot)])
    return torch.nn.Sequential(*(module for _, module in modules)), tensors


@pytest.mark.slow
@pytest.mark.parametrize("case", SIAMESE, ids=lambda case: case.name)
def test_every_siamese_case_agrees_with_pytorch(case):
    torch = pytest.importorskip("torch")
    spec = case.config["siamese"]["loss"]

    def impl(params, inputs):
        tower, tensors = torch_tower(torch, case.config["siamese"]["tower"], params)
        if spec["type"] == "TripletMarginLoss":
            outs = [tower(torch.tensor(inputs[n])) for n in ("anchor", "positive", "negative")]
            loss = torch.nn.functional.triplet_margin_loss(*outs, margin=spec["margin"], p=2,
                                                           eps=spec["eps"])
            names = ("anchor", "positive", "negative")
        else:   # y d^2 + (1 - y) max(0, m - d)^2, mean, no 1/2
            outs = [tower(torch.tensor(inputs[n])) for n in ("x1", "x2")]
            d = torch.nn.functional.pairwise_distance(*outs, p=2, eps=spec["eps"])
            y = torch.tensor(inputs["y"], dtype=torch.float64)
            loss = (y * d ** 2 + (1 - y) * torch.clamp_min(spec["margin"] - d, 0) ** 2).mean()
            names = ("x1", "x2")
        loss.backward()
        return (loss.item(), {k: t.grad.numpy() for k, t in tensors.items()},
                {f"out_{n}": o.detach().numpy() for n, o in zip(names, outs, strict=True)})

    report = compare_with_oracle(impl, case, dtype="float64")
    assert report.verdict == "pass", report


@settings(max_examples=25, deadline=None)
@given(case=siamese_cases())
def test_drawn_siamese_cases_keep_away_from_kinks_and_resolve_in_float32(case):
    model = Siamese.from_config(case.config["siamese"])
    distances = siamese.kink_distances(model, case.params, case.inputs)
    assert np.all(np.abs(distances[np.isfinite(distances)]) >= 0.05)
    assert unresolved_tensors(case, "float32") == []
