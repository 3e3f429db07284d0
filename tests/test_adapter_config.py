"""The framework-neutral plan of a case config (refimpl/adapters/_config.py): no framework
needed. The plan's semantics are checked end to end by the adapter tests; here, the parts a
framework would hide: resolved sharing chains, hard ties, penalty terms, and clear errors."""

from __future__ import annotations

import copy
import doctest

import pytest

from refimpl.adapters import _config
from refimpl.adapters._config import Run, Term, Use, plan_case
from refimpl.testing import NotExpressible
from refimpl.testing.cases import all_cases, get_case


def _uses(plan, run=0):
    return {f"{i}.{local}": use for i, step in enumerate(plan.runs[run].model.layers)
            for local, use in step.params.items()}


@pytest.mark.parametrize("case", all_cases(), ids=lambda case: case.name)
def test_the_parameters_are_exactly_the_case_params(case):
    plan = plan_case(case.config)
    assert sorted(plan.parameters) == sorted(case.params)
    read = {use.key for run in plan.runs for step in run.model.layers
            for use in step.params.values()}
    assert read == set(case.params)          # every parameter is read, and nothing else


def test_a_sharing_chain_composes_its_transposes():
    plan = plan_case(get_case("shared-transpose-chain").config)
    uses = _uses(plan)
    # layers: fc1 0, fc2 2, fc3 4, fc4 6, fc5 8
    assert uses["4.weight"] == Use("fc2.weight", True)        # fc3 = fc2^T
    assert uses["6.weight"] == Use("fc2.weight", False)       # fc4 = fc3^T = fc2
    assert uses["4.bias"] == Use("fc2.bias", False)           # fc3.bias -> fc4.bias -> fc2.bias
    assert uses["6.bias"] == Use("fc2.bias", False)


def test_a_hard_transposed_pair_reads_model_a():
    plan = plan_case(get_case("tied-hard-lasserre-transposed").config)
    assert _uses(plan, 1)["2.weight"] == Use("A:fc1.weight", True)   # B's dec = A's fc1^T
    assert plan.terms == () and plan.penalty is None
    assert "B:dec.weight" not in plan.parameters
    assert plan.runs[1] == Run(plan.runs[1].model, "xb", ("yb", "xb"), "out_b")


def test_a_hard_tie_composes_with_a_transposed_share_inside_b():
    config = copy.deepcopy(get_case("tied-hard-lasserre-transposed").config)
    model_b = config["pair"]["model_b"]
    model_b["layers"][0]["out_features"] = 4       # enc (4, 4), dec (4, 4): enc = dec^T
    model_b["layers"][2]["in_features"] = 4
    model_b["share"] = {"enc.weight": {"source": "dec.weight", "transpose": True}}
    uses = _uses(plan_case(config), 1)
    assert uses["0.weight"] == Use("A:fc1.weight", False)      # (fc1^T)^T
    assert uses["2.weight"] == Use("A:fc1.weight", True)


def test_soft_terms_carry_lam_per_pair_and_the_transpose():
    plan = plan_case(get_case("tied-soft-l1-transposed").config)
    assert plan.penalty == "l1"
    assert plan.terms == (Term("A:fc1.weight", "B:dec.weight", True, 0.25, False),)
    plan = plan_case(get_case("tied-soft-l2-same-architecture").config)
    assert [term.lam for term in plan.terms] == [0.5, 0.05, 2.0, 0.0, 0.1]


def test_anchored_terms_read_their_reference_from_the_inputs():
    plan = plan_case(get_case("tied-anchored-l1-weight-decay").config)
    assert plan.penalty == "l1"
    assert plan.terms == (Term("fc1.weight", "w0:fc1.weight", False, 0.1, True),
                          Term("fc2.weight", "w0:fc2.weight", False, 0.05, True))


def test_unknown_top_level_keys_are_ignored():
    config = {**get_case("mlp-relu-ce").config, "convention": {"name": "x"},
              "inputs": {}, "resolved_share": {}}
    assert plan_case(config) == plan_case(get_case("mlp-relu-ce").config)


def test_what_the_adapters_do_not_express_is_not_expressible(monkeypatch):
    with pytest.raises(NotExpressible, match="one of the keys"):
        plan_case({"siamese": {}})
    monkeypatch.delitem(_config.LAYER_FIELDS, "Conv2D")
    with pytest.raises(NotExpressible, match="Conv2D"):
        plan_case(get_case("cnn-relu-maxpool").config)


@pytest.mark.parametrize("edit, error, message", [
    (lambda c: c["model"]["layers"][0].update(type="Dense3"), ValueError, "unknown layer type"),
    (lambda c: c["model"]["layers"][0].pop("in_features"), ValueError, "missing"),
    (lambda c: c["model"]["layers"][0].update(colour=1), ValueError, "unexpected"),
    (lambda c: c["model"].update(share={"fc9.weight": {"source": "fc1.weight"}}), ValueError,
     "unknown slot 'fc9.weight'"),
    (lambda c: c["model"].update(share={"fc1.weight": {"source": "fc2.weight"},
                                        "fc2.weight": {"source": "fc1.weight"}}),
     ValueError, "cycle"),
    (lambda c: c["model"].update(share={"fc2.weight": {"source": "fc1.weight",
                                                       "transpose": 1}}),
     TypeError, "transpose"),
    (lambda c: c["model"].update(loss={"type": "Hinge"}), NotExpressible, "Hinge"),
    (lambda c: c.update(pair={}), ValueError, "one of the keys"),
])
def test_malformed_configs_are_clear_errors(edit, error, message):
    config = copy.deepcopy(get_case("mlp-relu-ce").config)
    edit(config)
    with pytest.raises(error, match=message):
        plan_case(config)


def test_malformed_pairs_are_clear_errors():
    config = copy.deepcopy(get_case("tied-soft-l2").config)
    config["pair"]["lam"] = {"fc1.weight": 0.3}
    with pytest.raises(ValueError, match=r"missing \['fc1.bias'\]"):
        plan_case(config)
    config["pair"]["lam"] = -1.0
    with pytest.raises(ValueError, match="lam"):
        plan_case(config)
    config = copy.deepcopy(get_case("tied-hard").config)
    config["pair"]["lam"] = 0.1
    with pytest.raises(ValueError, match="hard tying has no strength"):
        plan_case(config)
    config["pair"]["lam"] = None
    config["pair"]["pairs"][0]["b"] = "fc9.weight"
    with pytest.raises(ValueError, match="fc9.weight"):
        plan_case(config)


def test_the_docstring_example_runs():
    assert doctest.testmod(_config).failed == 0
