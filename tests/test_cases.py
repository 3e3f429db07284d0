"""Tests of refimpl/cases: the catalogue behind `refimpl check` and `refimpl golden`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refimpl.testing.cases import CASE_MODULES, all_cases, get_case

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
    assert {case.kind for case in CASES} == {"mlp", "cnn", "tied", "shared", "sequence",
                                           "siamese", "microbatch"}
    assert CASE_MODULES[:4] == ("mlp", "cnn", "tied", "shared")
    for case in CASES:
        json.dumps(case.config, allow_nan=False)
        assert all(c.isalnum() or c == "-" for c in case.name)
        assert all(value.dtype in (np.float64, np.int64) for value in case.inputs.values())
        assert all(value.dtype == np.float64 for value in case.params.values())


def test_get_case():
    assert get_case(CASES[0].name).name == CASES[0].name
    with pytest.raises(ValueError, match="case: unknown case 'nope'"):
        get_case("nope")
