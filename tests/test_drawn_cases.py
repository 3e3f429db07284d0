"""Tests of refimpl/testing/cases/drawn.py: drawn cases regenerated exactly from one seed."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import refimpl
from refimpl.nn import MLP
from refimpl.testing import unresolved_tensors
from refimpl.testing.cases import Case, drawn
from refimpl.testing.cases.drawn import (
    DRAWN_KINDS,
    case_named,
    drawn_case,
    drawn_cases,
    drawn_name,
)
from refimpl.testing.cases.rebuild import rebuild_case

SEEDS = range(12)


def _same(a: Case, b: Case) -> bool:
    """Same name, kind, config, point, data and reference loss and gradients (bit for bit)."""
    if (a.name, a.kind, a.config) != (b.name, b.kind, b.config):
        return False
    if list(a.params) != list(b.params) or list(a.inputs) != list(b.inputs):
        return False
    arrays_equal = all(np.array_equal(a.params[k], b.params[k]) for k in a.params) and all(
        np.array_equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    loss_a, grads_a = a.loss_and_grads(a.params)
    loss_b, grads_b = b.loss_and_grads(b.params)
    return arrays_equal and loss_a == loss_b and all(
        np.array_equal(grads_a[k], grads_b[k]) for k in grads_a)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seed_regenerates_its_case_exactly(seed):
    case = drawn_case(seed)
    assert case.name == f"drawn-{case.kind}-{seed}" == drawn_name(seed)
    assert case.config["seed"] == seed
    assert _same(case, drawn_case(seed))
    assert _same(case, drawn_case(seed, case.kind))        # naming the kind changes nothing
    assert _same(case, case_named(case.name))              # the name alone is enough


def test_different_seeds_give_different_cases():
    cases = [drawn_case(seed, "mlp") for seed in range(6)]
    first_weights = [case.params["fc1.weight"] for case in cases]
    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            a, b = first_weights[i], first_weights[j]
            assert a.shape != b.shape or not np.array_equal(a, b)


@pytest.mark.parametrize("kind", DRAWN_KINDS)
def test_every_kind_is_valid_resolvable_in_float32_and_correct(kind):
    for seed in range(5):
        case = drawn_case(seed, kind)
        assert case.kind == kind and case.name == f"drawn-{kind}-{seed}"
        json.dumps(case.config, allow_nan=False)           # JSON-able, as golden needs
        assert unresolved_tensors(case, "float32") == []
        loss, grads = case.loss_and_grads(case.params)
        assert list(grads) == list(case.params)
        assert any(np.any(grad != 0) for grad in grads.values())
        # evaluate (the same reference as a function of the data) agrees at the case's data
        loss_e, grads_e, outputs_e = case.evaluate(case.params, case.inputs)
        assert loss_e == loss and all(np.array_equal(grads_e[k], grads[k]) for k in grads)
        assert set(outputs_e) == set(case.outputs(case.params))
        report = refimpl.check_gradients(case.loss_and_grads, case.params, method="complex")
        assert report.ok, report


def test_the_draws_cover_every_kind_and_varied_models():
    assert set(DRAWN_KINDS) == {"mlp", "cnn", "shared", "tied", "sequence", "siamese",
                                "microbatch"}            # every kind of the catalogue but probes
    assert {drawn_name(seed).split("-")[1] for seed in range(30)} == set(DRAWN_KINDS)
    cases = drawn_cases(40, seed=0)
    assert {case.kind for case in cases} == set(DRAWN_KINDS)
    activations = {layer["type"] for case in cases if "model" in case.config
                   for layer in case.config["model"]["layers"]}
    assert {"ReLU", "Tanh", "Conv2D"} <= activations
    tied = [case for case in cases if case.kind == "tied"]
    assert {case.config["pair"]["mode"] for case in tied} == {"soft", "hard"}


def test_drawn_cases_counts_seeds_from_seed():
    assert [case.config["seed"] for case in drawn_cases(3, seed=7)] == [7, 8, 9]
    assert drawn_cases(0) == []


def _fit_case(offset: float) -> Case:
    """An MSE model whose targets are its outputs plus ``offset`` times noise: at 0 every
    gradient is exactly zero; at 1e-9 they are far below float32's resolution."""
    model = MLP([2, 3, 2], activation="tanh", loss="mse")
    rng = np.random.default_rng(0)
    params, x = model.init(0), rng.standard_normal((3, 2))
    y = model.forward(params, x) + offset * rng.standard_normal((3, 2))
    return Case("fit", "mlp", {"model": model.config(), "seed": 0}, params, {"x": x, "y": y},
                lambda p: model.loss_and_grads(p, x, y), lambda p: {"out": model.forward(p, x)},
                lambda p, d: (*model.loss_and_grads(p, d["x"], d["y"]),
                              {"out": model.forward(p, d["x"])}))


def _dead_case() -> Case:
    """A bias-free ReLU network whose hidden layer is dead on the batch: every gradient is
    exactly zero at every nearby point too, so every tensor "resolves" (zero floor, judged
    exactly) and only the all-zero check refuses it: it would check nothing."""
    model = MLP([2, 3, 2], activation="relu", loss="cross_entropy", bias=False)
    params = {"fc1.weight": -np.ones((3, 2)), "fc2.weight": np.ones((2, 3))}
    x, y = np.abs(np.random.default_rng(0).standard_normal((4, 2))) + 0.5, np.array([0, 1, 1, 0])
    return Case("dead", "mlp", {"model": model.config(), "seed": 0}, params, {"x": x, "y": y},
                lambda p: model.loss_and_grads(p, x, y), lambda p: {"out": model.forward(p, x)},
                lambda p, d: (*model.loss_and_grads(p, d["x"], d["y"]),
                              {"out": model.forward(p, d["x"])}))


def test_unresolvable_or_all_zero_draws_are_redrawn_from_the_same_stream(monkeypatch):
    real_attempt = drawn._attempt
    dead = _dead_case()
    assert not any(np.any(g != 0) for g in dead.loss_and_grads(dead.params)[1].values())
    assert unresolved_tensors(dead, "float32") == []
    assert unresolved_tensors(_fit_case(1e-9), "float32")

    def run() -> tuple[Case, list[str]]:
        seen: list[str] = []
        planted = [_dead_case(), _fit_case(1e-9)]

        def attempt(kind, rng, name):
            case = real_attempt(kind, rng, name)      # consumes the stream as usual
            seen.append(case.name)
            return planted.pop(0) if planted else case

        monkeypatch.setattr(drawn, "_attempt", attempt)
        try:
            return drawn_case(3, "mlp"), seen
        finally:
            monkeypatch.setattr(drawn, "_attempt", real_attempt)

    first, seen = run()
    assert len(seen) == 3                    # both planted draws refused, the third kept
    assert first.name == "drawn-mlp-3" and unresolved_tensors(first, "float32") == []
    second, _ = run()
    assert _same(first, second)              # the redraw is reproducible too
    assert not _same(first, drawn_case(3, "mlp"))


def test_a_draw_that_never_resolves_is_an_error(monkeypatch):
    monkeypatch.setattr(drawn, "_attempt", lambda kind, rng, name: _fit_case(0.0))
    with pytest.raises(RuntimeError, match="seed 4: no resolvable mlp case"):
        drawn_case(4, "mlp")


def test_case_named_finds_built_in_cases_and_refuses_unknown_names():
    assert case_named("mlp-tanh-ce").name == "mlp-tanh-ce"
    with pytest.raises(ValueError, match="unknown case 'no-such-case'.*drawn-<kind>-<seed>"):
        case_named("no-such-case")
    with pytest.raises(ValueError, match="unknown drawn kind 'rnn'"):
        case_named("drawn-rnn-3")
    assert case_named("drawn-siamese-3").name == "drawn-siamese-3"


@pytest.mark.parametrize(("seed", "kind", "error", "message"), [
    (-1, None, ValueError, "seed"),
    (True, None, TypeError, "seed"),
    (1.5, None, TypeError, "seed"),
    (0, "rnn", ValueError, "kind: expected one of"),
])
def test_bad_arguments_are_named(seed, kind, error, message):
    with pytest.raises(error, match=message):
        drawn_case(seed, kind)


#: Digests of the point and data of drawn cases named before the sequence, Siamese and
#: micro-batch kinds were added (computed with that version): a golden folder holding one
#: rebuilds it by name, so a name must keep drawing the same case.
NAMED_BEFORE = {"drawn-mlp-7": "219cccb082763bb9f26fca0a983d47a6",
                "drawn-cnn-3": "7412994a0fea2809f25cafb84bea14b2",
                "drawn-shared-5": "0c9743e029718e37b7b7d7b7eb7658f1",
                "drawn-tied-11": "181a6f7be3a1cbfb8409ed1d85dd9080"}


@pytest.mark.parametrize("name", sorted(NAMED_BEFORE))
def test_a_name_drawn_before_new_kinds_were_added_draws_the_same_case(name):
    case = case_named(name)
    digest = hashlib.sha256()
    for arrays in (case.params, case.inputs):
        for key in sorted(arrays):
            digest.update(key.encode())
            digest.update(str(arrays[key].dtype).encode())
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    assert digest.hexdigest()[:32] == NAMED_BEFORE[name]


@pytest.mark.parametrize("kind", ["sequence", "siamese", "microbatch"])
def test_the_new_kinds_have_the_catalogues_configurations(kind):
    from_catalogue = {"sequence": "model", "siamese": "siamese", "microbatch": "base"}[kind]
    for seed in range(6):
        case = drawn_case(seed, kind)
        assert from_catalogue in case.config and case.config["drawn"] == {"kind": kind,
                                                                           "seed": seed}
        assert rebuild_case(case.name, case.config).config == case.config


def test_drawn_micro_batches_are_unequal_and_of_every_single_batch_kind():
    micro = [drawn_case(seed, "microbatch") for seed in range(12)]
    # unequal micro-batches (a 1/M weighting must show), from every single-batch kind
    assert all(len(set(case.config["micro_batches"])) > 1 for case in micro)
    assert {case.config["base_kind"] for case in micro} == {"mlp", "shared", "tied", "siamese"}


def test_drawn_sequences_cover_tokens_floats_and_tied_language_models():
    sequences = [drawn_case(seed, "sequence") for seed in range(30)]
    assert {case.inputs["x"].dtype.kind for case in sequences} == {"i", "f"}   # tokens, floats
    assert any(case.config["model"]["share"] for case in sequences)           # a tied LM
    assert {len(case.inputs["y"].shape) for case in sequences} == {1, 2}       # last, positions
