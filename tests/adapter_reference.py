"""Shared checks of the adapter tests (``test_adapter_torch.py``, ``test_adapter_jax.py``).

* :func:`assert_conforms`: the verdict an adapter must reach on a catalogue case — pass; in
  float32, inconclusive only on tensors the oracle itself calls unresolvable; on a probe
  (``config["convention"]``), a fail only when the conformance rule calls it "convention
  differs" (the whole result matches a documented alternative's reference; then the test is
  marked xfail with that rule: visible, never a pass).
* Hand-written NumPy forwards of the issue-13 layer configs (Embedding, RNN, LastStep, Dense
  on the last axis, cross-entropy over (..., K)), until refimpl's own layers exist, written
  from the promised configs and PyTorch's formulas without refimpl: :func:`sequence_cases`
  gives ``(name, config, params, inputs)``; :func:`numpy_loss` the float64 loss;
  :func:`numerical_grads` its central differences (h = 1e-6, error ~1e-9 relative here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from refimpl.adapters._config import CASE_KEYS
from refimpl.testing import NotExpressible, compare_with_oracle, unresolved_tensors
from refimpl.testing.conform import conform_case


def cast(arrays: dict, dtype: str) -> dict:
    """Fresh copies with float arrays in the dtype under test (float32 for "tf32")."""
    target = np.float64 if dtype == "float64" else np.float32
    return {key: np.array(value, dtype=target) if np.asarray(value).dtype.kind == "f"
            else np.array(value) for key, value in arrays.items()}


def assert_conforms(build: Any, case: Any, dtype: str) -> None:
    """``build(case.config, dtype)`` reaches the verdict its framework must reach. A case
    kind the adapters do not claim (no key of ``CASE_KEYS``: a kind added to the catalogue
    after them) may be not expressible: a visible skip with the reason, never a pass."""
    try:
        impl = build(case.config, dtype)
    except NotExpressible as error:
        if any(key in case.config for key in CASE_KEYS):
            raise
        pytest.skip(f"not expressible: {error}")
    report = compare_with_oracle(impl, case, dtype=dtype)
    if report.verdict == "pass":
        return
    if report.verdict == "inconclusive" and dtype != "float64":
        inconclusive = {row.label for row in report.rows if row.verdict == "inconclusive"}
        unresolvable = set(unresolved_tensors(case, dtype))
        assert inconclusive <= unresolvable, (inconclusive - unresolvable, str(report))
        return
    assert report.verdict == "fail" and "convention" in case.config, str(report)
    row = conform_case(lambda config, dtype_: impl, case, dtype)
    assert row.outcome == "convention differs", f"a probe failed:\n{row.detail}\n{report}"
    pytest.xfail(f"convention differs: {row.detail}")


def _dense(name: str, fan_in: int, fan_out: int) -> dict[str, Any]:
    return {"type": "Dense", "name": name, "in_features": fan_in, "out_features": fan_out,
            "bias": True}


def _rnn(name: str, size_in: int, hidden: int, nonlinearity: str, bias: bool) -> dict:
    return {"type": "RNN", "name": name, "input_size": size_in, "hidden_size": hidden,
            "nonlinearity": nonlinearity, "bias": bias}


def _embedding(name: str, vocabulary: int, dim: int) -> dict[str, Any]:
    return {"type": "Embedding", "name": name, "num_embeddings": vocabulary,
            "embedding_dim": dim}


CE, MSE = {"type": "SoftmaxCrossEntropy"}, {"type": "MSE"}


def _case(name: str, layers: list, loss: dict, share: dict, shapes: dict, x: np.ndarray,
          y: np.ndarray, rng: np.random.Generator) -> tuple:
    params = {key: rng.standard_normal(shape) * 0.7 for key, shape in shapes.items()}
    config = {"model": {"layers": layers, "loss": loss, "share": share}, "seed": 0}
    return name, config, params, {"x": x, "y": y}


def sequence_cases() -> list[tuple[str, dict, dict, dict]]:
    """Four small models built from the issue-13 configs, with their points and data."""
    rng = np.random.default_rng(1300)
    tied_lm = _case(
        "tied-language-model",
        [_embedding("embed", 7, 4), {"type": "Tanh"}, _dense("out", 4, 7)], CE,
        {"out.weight": {"source": "embed.weight", "transpose": False}},
        {"embed.weight": (7, 4), "out.bias": (7,)},
        np.array([[1, 3, 3], [6, 1, 0]]), np.array([[3, 3, 0], [2, 6, 1]]), rng)
    classifier = _case(
        "rnn-tanh-last-step",
        [_rnn("rnn", 3, 4, "tanh", True), {"type": "LastStep"}, _dense("fc", 4, 2)], CE, {},
        {"rnn.weight_ih": (4, 3), "rnn.weight_hh": (4, 4), "rnn.bias_ih": (4,),
         "rnn.bias_hh": (4,), "fc.weight": (2, 4), "fc.bias": (2,)},
        rng.standard_normal((2, 5, 3)), np.array([1, 0]), rng)
    labelling = _case(
        "rnn-relu-no-bias-labelling",
        [_rnn("rnn", 3, 4, "relu", False), _dense("fc", 4, 3)], CE, {},
        {"rnn.weight_ih": (4, 3), "rnn.weight_hh": (4, 4), "fc.weight": (3, 4),
         "fc.bias": (3,)},
        rng.standard_normal((2, 4, 3)), np.array([[0, 2, 1, 1], [2, 2, 0, 1]]), rng)
    repeated = _case(
        "embedding-repeated-rnn-mse",
        [_embedding("embed", 5, 3), _rnn("rnn", 3, 4, "tanh", True), {"type": "LastStep"},
         _dense("fc", 4, 2)], MSE, {},
        {"embed.weight": (5, 3), "rnn.weight_ih": (4, 3), "rnn.weight_hh": (4, 4),
         "rnn.bias_ih": (4,), "rnn.bias_hh": (4,), "fc.weight": (2, 4), "fc.bias": (2,)},
        np.array([[4, 4, 1, 4], [0, 1, 1, 1]]), rng.standard_normal((2, 2)), rng)
    return [tied_lm, classifier, labelling, repeated]


def _forward_layer(layer: dict, read: Any, x: np.ndarray) -> np.ndarray:
    kind = layer["type"]
    if kind == "Embedding":
        return read("weight")[x]                                    # S -> S + (D,)
    if kind == "Dense":
        return x @ read("weight").T + read("bias")                  # (..., F)
    if kind == "Tanh":
        return np.tanh(x)
    if kind == "LastStep":
        return x[:, -1]                                             # (N, T, H) -> (N, H)
    assert kind == "RNN", kind
    hidden = np.zeros((x.shape[0], layer["hidden_size"]))           # h0 = 0
    states = []
    for t in range(x.shape[1]):
        pre = x[:, t] @ read("weight_ih").T + hidden @ read("weight_hh").T
        if layer["bias"]:
            pre = pre + read("bias_ih") + read("bias_hh")
        hidden = np.tanh(pre) if layer["nonlinearity"] == "tanh" else np.maximum(pre, 0)
        states.append(hidden)
    return np.stack(states, axis=1)                                 # (N, T, H)


def numpy_forward(config: dict, params: dict, x: np.ndarray) -> np.ndarray:
    """The model output; shared slots read their (untransposed) source."""
    model = config["model"]
    share = {slot: entry["source"] for slot, entry in model["share"].items()}
    out = x
    for layer in model["layers"]:
        name = layer.get("name")
        out = _forward_layer(layer, lambda local, n=name: params[share.get(f"{n}.{local}",
                                                                          f"{n}.{local}")], out)
    return out


def numpy_loss(config: dict, params: dict, inputs: dict) -> float:
    """Cross-entropy (mean over every label position) or MSE (mean over every element)."""
    out = numpy_forward(config, params, inputs["x"])
    y = inputs["y"]
    if config["model"]["loss"]["type"] == "MSE":
        return float(np.mean((out - y) ** 2))
    logits = out.reshape(-1, out.shape[-1])
    top = logits.max(axis=1, keepdims=True)
    log_total = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    picked = logits[np.arange(len(logits)), y.reshape(-1)]
    return float(np.mean(log_total - picked))


def numerical_grads(config: dict, params: dict, inputs: dict, h: float = 1e-6) -> dict:
    """Central differences of :func:`numpy_loss`, entry by entry."""
    grads = {}
    for key, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            moved = {k: v.copy() for k, v in params.items()}
            moved[key][index] = value[index] + h
            up = numpy_loss(config, moved, inputs)
            moved[key][index] = value[index] - h
            grad[index] = (up - numpy_loss(config, moved, inputs)) / (2 * h)
        grads[key] = grad
    return grads
