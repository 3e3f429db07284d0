"""Tests of refimpl/testing/cases/sequence.py: the sequence cases (embeddings, a tied language
model and its untied twin, RNNs), checked numerically, against their untied twins, and
against PyTorch in float64."""

from __future__ import annotations

import json

import numpy as np
import pytest

import refimpl as ri
from refimpl.nn import Sequential
from refimpl.testing.cases import sequence
from refimpl.testing.oracle import assert_matches_oracle, unresolved_tensors

CASES = sequence.cases()
BY_NAME = {case.name: case for case in CASES}
IDS = [case.name for case in CASES]

def test_names_kinds_configs_and_dtypes():
    assert IDS == ["sequence-tied-lm", "sequence-untied-lm", "sequence-embedding-repeats",
                   "sequence-rnn-classifier", "sequence-rnn-labelling", "sequence-rnn-relu"]
    for case in CASES:
        assert case.kind == "sequence" and case.evaluate is not None
        json.dumps(case.config, allow_nan=False)
        assert all(c.isalnum() or c == "-" for c in case.name)
        assert case.inputs["y"].dtype == np.int64
        assert case.inputs["x"].dtype in (np.int64, np.float64)
        assert all(value.dtype == np.float64 for value in case.params.values())
        rebuilt = Sequential.from_config(case.config["model"])
        assert rebuilt.config() == case.config["model"]


def test_cases_are_deterministic():
    for first, second in zip(CASES, sequence.cases(), strict=True):
        assert first.config == second.config
        for group in ("params", "inputs"):
            for key, value in getattr(first, group).items():
                np.testing.assert_array_equal(value, getattr(second, group)[key])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_gradient_has_a_nonzero_entry(case):
    _, grads = case.loss_and_grads(case.params)
    assert list(grads) == list(case.params)
    for name, grad in grads.items():
        assert np.any(grad != 0), f"{case.name}: {name}"


@pytest.mark.parametrize("method", ["complex", "central"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_numerical_differentiation(case, method):
    report = ri.check_gradients(case.loss_and_grads, case.params, method=method)
    assert report.ok, report


def test_tied_lm_stores_one_table_and_sums_both_uses():
    tied, untied = BY_NAME["sequence-tied-lm"], BY_NAME["sequence-untied-lm"]
    assert tied.config["model"]["share"] == {"out.weight": {"source": "embed.weight",
                                                            "transpose": False}}
    assert "out.weight" not in tied.params and "out.weight" in untied.params
    assert tied.inputs["x"].shape == tied.inputs["y"].shape == (3, 5)
    # the next token at every position: labels are the inputs shifted by one step
    np.testing.assert_array_equal(tied.inputs["y"][:, :-1], tied.inputs["x"][:, 1:])
    # the untied twin at the same values (its out.weight = the embedding) ...
    at_tie = {**tied.params, "out.weight": tied.params["embed.weight"]}
    loss, grads = tied.loss_and_grads(tied.params)
    twin_model = Sequential.from_config(untied.config["model"])
    twin_loss, twin = twin_model.loss_and_grads(at_tie, untied.inputs["x"], untied.inputs["y"])
    assert loss == pytest.approx(twin_loss, rel=1e-14)
    # ... gives the tied gradient as the embedding's scatter-add plus the output layer's
    np.testing.assert_allclose(grads["embed.weight"],
                               twin["embed.weight"] + twin["out.weight"], rtol=1e-12,
                               atol=1e-15)
    for name in tied.params:
        if name != "embed.weight":
            np.testing.assert_allclose(grads[name], twin[name], rtol=1e-12, atol=1e-15)


def test_repeated_indices_accumulate():
    case = BY_NAME["sequence-embedding-repeats"]
    x = case.inputs["x"]
    counts = np.bincount(x.ravel(), minlength=4)
    assert counts.tolist() == [3, 1, 6, 2]          # row 2 named six times
    model = Sequential.from_config(case.config["model"])
    _, grads = case.loss_and_grads(case.params)
    # the gradient of the table is the sum over positions of the per-position gradients
    total = np.zeros_like(grads["embed.weight"])
    for n in range(x.shape[0]):
        for t in range(x.shape[1]):
            weight = np.zeros(x.shape)
            weight[n, t] = 1.0
            out = model.forward(case.params, x)
            dout = _cross_entropy_dout(out, case.inputs["y"]) * weight[..., None]
            _, _, position_grads = model.vjp(case.params, x, dout)
            assert not np.delete(position_grads["embed.weight"], x[n, t], axis=0).any()
            total += position_grads["embed.weight"]
    np.testing.assert_allclose(grads["embed.weight"], total, rtol=1e-12, atol=1e-16)


def _cross_entropy_dout(logits, labels):
    """d(mean cross-entropy over the positions)/dlogits, written directly."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    onehot = np.eye(logits.shape[-1])[labels]
    return (probabilities - onehot) / labels.size


def test_relu_case_is_away_from_the_kink():
    case = BY_NAME["sequence-rnn-relu"]
    model = Sequential.from_config(case.config["model"])
    _, caches = model._forward(case.params, case.inputs["x"])
    pre = caches[0].pre
    assert np.abs(pre).min() > 0.03 and (pre > 0).reshape(-1, pre.shape[-1]).any(axis=0).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_case_is_resolvable_in_float32(case):
    assert unresolved_tensors(case, "float32") == []


# --- PyTorch (nn.Embedding, nn.RNN, a weight-tied nn.Linear), float64 ---------------------------

def torch_impl(config):
    """An implementation of the protocol from the case's layer configs, in PyTorch."""
    torch = pytest.importorskip("torch")

    def impl(params, inputs):
        tensors = {k: torch.from_numpy(v).requires_grad_(True) for k, v in params.items()}
        share = {slot: source["source"] for slot, source in config["share"].items()}
        read = lambda name: tensors[share.get(name, name)]  # noqa: E731
        out = torch.from_numpy(inputs["x"])
        for layer in config["layers"]:
            kind, name = layer["type"], layer.get("name")
            if kind == "Embedding":
                out = torch.nn.functional.embedding(out, read(f"{name}.weight"))
            elif kind == "RNN":
                out = _torch_rnn(torch, layer, out, read)
            elif kind == "Dense":
                out = torch.nn.functional.linear(out, read(f"{name}.weight"),
                                                 read(f"{name}.bias"))
            elif kind == "LastStep":
                out = out[:, -1]
            elif kind == "Tanh":
                out = torch.tanh(out)
        labels = torch.from_numpy(inputs["y"])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                                 labels.reshape(-1))
        loss.backward()
        return loss.item(), {k: t.grad.numpy() for k, t in tensors.items()}, {
            "out": out.detach().numpy()}

    return impl


def _torch_rnn(torch, layer, x, read):
    module = torch.nn.RNN(layer["input_size"], layer["hidden_size"],
                          nonlinearity=layer["nonlinearity"], bias=layer["bias"],
                          batch_first=True).double()
    # the module's parameters replaced by ours, so that their gradients reach our tensors
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if layer["bias"] else [])
    weights = {f"{n}_l0": read(f"{layer['name']}.{n}") for n in names}
    return torch.func.functional_call(module, weights, (x,))[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pytorch_agrees_with_the_oracle_in_float64(case):
    report = assert_matches_oracle(torch_impl(case.config["model"]), case, rtol=1e-10,
                                   atol=0.0)
    assert report.ok


# --- the strategies: drawn sequence cases -------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from refimpl.testing.strategies import sequence as ss  # noqa: E402

DRAWN = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.filter_too_much])


@DRAWN
@given(case=ss.sequence_cases(labels=["last"]))
def test_drawn_cases_with_a_label_per_sequence_check_and_resolve(case):
    assert case.kind == "sequence" and case.inputs["y"].ndim == 1
    report = ri.check_gradients(case.loss_and_grads, case.params, method="complex")
    assert report.ok, report
    assert unresolved_tensors(case, "float32") == []
    x = case.inputs["x"]
    if x.dtype == np.int64 and x.size >= 2:      # token ids: some row is named twice
        assert len(np.unique(x)) < x.size


@DRAWN
@given(case=ss.sequence_cases(kinds=["rnn"], labels=["last"]))
def test_drawn_relu_rnns_are_kink_free_enough_for_central_differences(case):
    report = ri.check_gradients(case.loss_and_grads, case.params, method="central")
    assert report.ok, report


@settings(DRAWN, report_multiple_bugs=False)
@given(case=ss.sequence_cases(labels=["positions"]))
def test_drawn_cases_with_a_label_per_position_check_and_resolve(case):
    assert case.inputs["y"].shape == case.inputs["x"].shape[:2]
    assert ri.check_gradients(case.loss_and_grads, case.params, method="complex").ok
    assert unresolved_tensors(case, "float32") == []


@settings(max_examples=20, deadline=None)
@given(model=ss.tied_lms(labels=["last"], middles=["rnn"]))
def test_drawn_tied_lms_share_the_table(model):
    assert model.share["out.weight"].name == "embed.weight"
    assert model.share["out.weight"].transpose is False
    assert "out.weight" not in model.parameter_shapes()
    assert model.parameter_count().uses - model.parameter_count().unique == \
        model.layers[0].num_embeddings * model.layers[0].embedding_dim


@pytest.mark.parametrize("factory, kwargs, error, match", [
    (ss.sequence_cases, {"kinds": ["lstm"]}, ValueError, r"kinds: unknown \['lstm'\]"),
    (ss.sequence_cases, {"labels": []}, ValueError, "labels: expected at least one"),
    (ss.sequence_cases, {"min_steps": 3, "max_steps": 2}, ValueError, "min_steps, max_steps"),
    (ss.sequence_cases, {"kink_margin": 0}, ValueError, "kink_margin: expected a finite "
                                                        "number > 0"),
    (ss.tied_lms, {"max_vocabulary": 1}, ValueError, "max_vocabulary: expected an int >= 2"),
    (ss.tied_lms, {"tied": "yes"}, TypeError, "tied: expected True, False or None"),
    (ss.rnns, {"nonlinearities": ["gelu"]}, ValueError, "nonlinearities: unknown"),
    (ss.embedding_models, {"max_classes": 1}, ValueError, "max_classes: expected an int >= 2"),
])
def test_strategies_validate_their_overrides_when_created(factory, kwargs, error, match):
    with pytest.raises(error, match=match):
        factory(**kwargs)


def test_relu_draws_near_the_kink_are_recognised():
    from types import SimpleNamespace

    from refimpl.testing.strategies.sequence import _near_relu_kink
    relu = Sequential([ri.nn.RNN("rnn", 2, 3, nonlinearity="relu"), ri.nn.LastStep(),
                       ri.nn.Dense("fc", 3, 2)], loss=ri.nn.SoftmaxCrossEntropy())
    params = {**relu.init(0), "rnn.weight_hh": np.zeros((3, 3)),
              "rnn.bias_ih": np.full(3, 2e-4), "rnn.bias_hh": np.full(3, 3e-4)}
    case = SimpleNamespace(inputs={"x": np.zeros((2, 3, 2))}, params=params)  # pre = 5e-4
    assert _near_relu_kink(relu, case, 1e-3)
    assert not _near_relu_kink(relu, case, 1e-4)
    tanh = Sequential([ri.nn.RNN("rnn", 2, 3), ri.nn.LastStep(), ri.nn.Dense("fc", 3, 2)],
                      loss=ri.nn.SoftmaxCrossEntropy())
    assert not _near_relu_kink(tanh, case, 1e-3)
