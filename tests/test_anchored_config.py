"""Tests of AnchoredModel.config / AnchoredModel.from_config (refimpl/tying/anchored.py): the
configuration round-trips, records whether the anchors are inputs, and every bad key is a
clear error naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refimpl import MLP
from refimpl.testing.cases import get_case
from refimpl.tying import AnchoredModel

MODEL = MLP([3, 4, 2], activation="tanh")
REFERENCE = MODEL.init(5)


def _models():
    return [AnchoredModel(MODEL, lam=0.3, reference=REFERENCE),
            AnchoredModel(MODEL, lam={"fc1.weight": 0.1, "fc2.weight": 0.05},
                          names=["fc1.weight", "fc2.weight"], penalty="l1"),
            AnchoredModel(MODEL, lam=0.2, reference={"fc2.bias": np.ones(2)})]


@pytest.mark.parametrize("anchored", _models(), ids=["l2sp", "l1-decay", "one-anchor"])
def test_from_config_inverts_config_through_json(anchored):
    config = json.loads(json.dumps(anchored.config()))
    reference = None if config["reference"] == "zero" else dict(anchored.reference)
    rebuilt = AnchoredModel.from_config(config, reference=reference)
    assert rebuilt.config() == anchored.config()
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = np.array([0, 1, 1, 0])
    params = MODEL.init(1)
    loss, grads = anchored.loss_and_grads(params, x, y)
    loss_again, grads_again = rebuilt.loss_and_grads(params, x, y)
    assert loss_again == loss
    assert all(np.array_equal(grads[key], grads_again[key]) for key in grads)


def test_config_records_where_the_reference_comes_from():
    assert AnchoredModel(MODEL, lam=0.1).config()["reference"] == "zero"
    assert AnchoredModel(MODEL, lam=0.1, reference=REFERENCE).config()["reference"] == "inputs"
    assert set(AnchoredModel(MODEL, lam=0.1).config()) == {"model", "names", "lam", "penalty",
                                                          "reference"}


def test_the_catalogue_anchored_cases_carry_the_model_config():
    for name, mode in (("tied-anchored-l2sp", "inputs"),
                       ("tied-anchored-l1-weight-decay", "zero")):
        case = get_case(name)
        config = case.config["anchored"]
        assert config["reference"] == mode
        reference = ({key: case.inputs[f"w0:{key}"] for key in config["names"]}
                     if mode == "inputs" else None)
        model = AnchoredModel.from_config(config, reference=reference)
        assert model.config() == config
        loss, grads = model.loss_and_grads(case.params, case.inputs["x"], case.inputs["y"])
        expected_loss, expected = case.loss_and_grads(case.params)
        assert loss == expected_loss
        assert all(np.array_equal(grads[key], expected[key]) for key in expected)


def _good():
    return AnchoredModel(MODEL, lam=0.3, names=["fc1.weight"]).config()


def _without(key):
    def edit(config):
        del config[key]
        return config
    return edit


def _set(key, value):
    def edit(config):
        config[key] = value
        return config
    return edit


@pytest.mark.parametrize("edit, error, match", [
    (_without("model"), ValueError, r"config: missing \['model'\]"),
    (_without("names"), ValueError, r"config: missing \['names'\]"),
    (_without("lam"), ValueError, r"config: missing \['lam'\]"),
    (_set("extra", 1), ValueError, r"config: unexpected \['extra'\]"),
    (_set("names", "fc1.weight"), TypeError, r"config\['names'\]: expected a list"),
    (_set("names", ["fc9.weight"]), ValueError, r"names: unknown parameter 'fc9.weight'"),
    (_set("lam", -1.0), ValueError, "lam"),
    (_set("lam", {"fc2.weight": 0.1}), ValueError, r"lam \(a per-parameter mapping\)"),
    (_set("penalty", "l3"), ValueError, "l3"),
    (_set("penalty", 2), TypeError, r"config\['penalty'\]: expected 'l2' or 'l1', got 2"),
    (_set("reference", "given"), ValueError,
     r"config\['reference'\]: expected one of \['zero', 'inputs'\], got 'given'"),
    (_set("model", {"layers": 3}), TypeError, r"config\['model'\]\['layers'\]"),
    (_set("model", []), TypeError, r"config\['model'\]: expected a dict"),
])
def test_from_config_names_the_bad_key(edit, error, match):
    with pytest.raises(error, match=match):
        AnchoredModel.from_config(edit(_good()))


def test_from_config_checks_the_reference_against_the_mode():
    inputs_config = AnchoredModel(MODEL, lam=0.3, reference=REFERENCE).config()
    with pytest.raises(ValueError, match=r"reference: config\['reference'\] is 'inputs'"):
        AnchoredModel.from_config(inputs_config)
    with pytest.raises(ValueError, match=r"reference: config\['reference'\] is 'zero'"):
        AnchoredModel.from_config(_good(), reference=REFERENCE)
    with pytest.raises(ValueError, match=r"reference\['fc1.bias'\]"):
        AnchoredModel.from_config(inputs_config, reference={**REFERENCE,
                                                            "fc1.bias": np.zeros(7)})
    with pytest.raises(TypeError, match="anchored: expected a dict"):
        AnchoredModel.from_config("l2", what="anchored")


def test_from_config_keeps_penalty_and_reference_optional():
    config = _good()
    del config["penalty"], config["reference"]
    model = AnchoredModel.from_config(config)
    assert model.penalty_name == "l2" and model.config()["reference"] == "zero"
