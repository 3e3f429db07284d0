"""Tests of refimpl/cases: the catalogue behind `refimpl check` and `refimpl golden`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refimpl import MLP
from refimpl.testing.cases import CASE_MODULES, all_cases, describe_inputs, get_case
from refimpl.testing.cases.microbatch import microbatch_case
from refimpl.testing.cases.mlp import model_case

CASES = all_cases()


def test_every_case_is_deterministic():
    first, second = all_cases(), all_cases()
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name and a.config == b.config
        for key in a.params:
            assert np.array_equal(a.params[key], b.params[key])
        for key in a.inputs:
            assert np.array_equal(a.inputs[key], b.inputs[key])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_gradient_of_every_case_has_a_nonzero_entry(case):
    # A parameter whose gradient is exactly 0 (a dead ReLU in front of it) would pass any
    # check while checking nothing.
    _, grads = case.loss_and_grads(case.params)
    assert list(grads) == list(case.params)
    for name, grad in grads.items():
        assert np.any(grad != 0), f"{case.name}: gradient of {name} is identically zero"


def test_catalogue_names_kinds_and_configs():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)
    assert {case.kind for case in CASES} == {"mlp", "cnn", "tied", "shared", "probe", "sequence",
                                           "siamese", "microbatch", "steps"}
    assert CASE_MODULES == ("mlp", "cnn", "tied", "shared", "probes", "sequence", "siamese",
                            "microbatch", "steps", "step_probes")
    assert sum(case.kind == "probe" for case in CASES) == 14
    for case in CASES:
        json.dumps(case.config, allow_nan=False)
        assert all(c.isalnum() or c == "-" for c in case.name)
        assert all(value.dtype in (np.float64, np.int64) for value in case.inputs.values())
        assert all(value.dtype == np.float64 for value in case.params.values())


def test_get_case():
    assert get_case(CASES[0].name).name == CASES[0].name
    with pytest.raises(ValueError, match="case: unknown case 'nope'"):
        get_case("nope")


def test_get_case_builds_the_catalogues_case_and_a_fresh_one():
    # get_case builds the catalogue's modules only as far as the one holding the case: a case
    # from every stretch of the catalogue, its last one included.
    for case in [*CASES[::5], CASES[-1]]:
        found = get_case(case.name)
        assert found.name == case.name and found.kind == case.kind
        assert found.config == case.config
        for mine, theirs in ((found.params, case.params), (found.inputs, case.inputs)):
            assert list(mine) == list(theirs)
            assert all(np.array_equal(mine[key], theirs[key]) for key in theirs)
            assert all(mine[key] is not theirs[key] for key in theirs)
        assert get_case(case.name).params[next(iter(case.params))] is not \
            found.params[next(iter(case.params))]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_input_is_described_as_data(case):
    described = case.config["inputs"]
    assert list(described) == list(case.inputs)
    # a micro-batch "<name>.<i>" plays the role of <name>
    bases = {name: name.rsplit(".", 1)[0] if case.kind == "microbatch" else name
             for name in case.inputs}
    for name, value in case.inputs.items():
        entry, base = described[name], bases[name]
        assert entry["shape"] == list(value.shape) and entry["dtype"] == str(value.dtype)
        expected = ("reference weights" if name.startswith("w0:") else
                    "token indices" if base == "x" and value.dtype == np.int64 else
                    "similarity labels" if base == "y" and "x1" in bases.values() else
                    "labels" if value.dtype == np.int64 else
                    "features and targets" if base == "xb" and "yb" not in bases.values() else
                    "targets" if base in ("y", "ya", "yb") else "features")
        assert entry["role"] == expected, (name, entry)


def test_the_new_kinds_inputs_have_their_own_roles():
    roles = {case.name: {name: entry["role"] for name, entry in case.config["inputs"].items()}
             for case in CASES}
    assert roles["sequence-tied-lm"] == {"x": "token indices", "y": "labels"}
    assert roles["sequence-rnn-labelling"] == {"x": "features", "y": "labels"}
    assert roles["siamese-contrastive-all-active"] == {
        "x1": "features", "x2": "features", "y": "similarity labels"}
    assert set(roles["siamese-triplet-cnn"].values()) == {"features"}
    assert roles["microbatch-tied-soft"]["yb.1"] == "targets"
    assert roles["microbatch-mlp"] == {"x.0": "features", "y.0": "labels", "x.1": "features",
                                       "y.1": "labels", "x.2": "features", "y.2": "labels"}
    with pytest.raises(ValueError, match=r"unknown input name 'x\.a'"):
        describe_inputs({"x.a": np.zeros(2)})


def test_reference_weight_inputs_match_the_anchored_config():
    for case in CASES:
        anchored = case.config.get("anchored")
        references = [name[3:] for name in case.inputs if name.startswith("w0:")]
        if anchored is None:
            assert references == []
        elif anchored["reference"] == "inputs":
            assert references == anchored["names"]
            for name in references:
                assert case.inputs[f"w0:{name}"].shape == case.params[name].shape
        else:
            assert anchored["reference"] == "zero" and references == []


def test_sharing_chains_are_resolved_in_the_config():
    chain = get_case("shared-transpose-chain")
    assert chain.config["resolved_share"] == {
        "fc3.weight": {"source": "fc2.weight", "transpose": True},
        "fc4.weight": {"source": "fc2.weight", "transpose": False},   # (fc2^T)^T
        "fc4.bias": {"source": "fc2.bias", "transpose": False},
        "fc3.bias": {"source": "fc2.bias", "transpose": False}}      # fc3 -> fc4 -> fc2
    for case in CASES:
        resolved = case.config["resolved_share"]
        pair = "pair" in case.config or "pair" in case.config.get("base", {})
        members = resolved.values() if pair else [resolved]
        for member in members:
            for slot, use in member.items():
                assert use["source"] not in member, (case.name, slot)   # a root, not a slot


def test_a_micro_batch_case_refuses_sizes_that_do_not_partition_its_batch():
    model = MLP([4, 3, 2])
    base = model_case("base", "mlp", model, (4,), 5, seed=0)
    with pytest.raises(ValueError, match=r"^sizes: micro-batch sizes \[2, 2\] sum to 4"):
        microbatch_case("dropped", base, model, [2, 2])      # would drop an example
    with pytest.raises(TypeError, match=r"^sizes\[0\]: expected an integer micro-batch size"):
        microbatch_case("truncated", base, model, [2.5, 2.5])
