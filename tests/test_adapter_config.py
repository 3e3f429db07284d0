"""The framework-neutral plan of a case config (refimpl/adapters/_config.py): no framework
needed. The plan's semantics are checked end to end by the adapter tests; here, the parts a
framework would hide: resolved sharing chains, hard ties, penalty terms, and clear errors."""

from __future__ import annotations

import copy
import doctest

import pytest

from refimpl.adapters import _config, _microbatches
from refimpl.adapters._config import Metric, Run, Term, Use, plan_case
from refimpl.adapters._microbatches import micro_batches
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
        plan_case({"graph": {}})
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


def test_a_siamese_plan_runs_the_tower_once_per_branch():
    plan = plan_case(get_case("siamese-contrastive-shared-tower").config)
    assert plan.kind == "siamese" and plan.terms == ()
    assert [(run.input, run.targets, run.output) for run in plan.runs] == \
        [("x1", (), "out_x1"), ("x2", (), "out_x2")]
    assert plan.runs[0].model == plan.runs[1].model and plan.runs[0].model.loss is None
    assert _uses(plan)["4.weight"] == Use("fc2.weight", False)     # fc3 shares fc2
    assert plan.metric == Metric("ContrastiveLoss", 1.0, 0.0, "y")
    triplet = plan_case(get_case("siamese-triplet-near-margin").config)
    assert [run.input for run in triplet.runs] == ["anchor", "positive", "negative"]
    assert triplet.metric == Metric("TripletMarginLoss",
                                    get_case("siamese-triplet-near-margin").config["siamese"]
                                    ["loss"]["margin"], 1e-6, None)


def test_a_micro_batch_plan_is_its_base_plan_with_the_sizes_of_each_run():
    case = get_case("microbatch-tied-hard")
    plan = plan_case(case.config)
    assert plan._replace(micro_batches=None) == plan_case(case.config["base"])
    assert plan.micro_batches == ((1, 2, 3), (2, 1, 1))        # A's batch, B's batch
    siamese = plan_case(get_case("microbatch-siamese-triplet").config)
    assert siamese.micro_batches == ((2, 4),) * 3 and siamese.metric is not None


def test_micro_batches_split_the_inputs_and_weigh_each_run_by_its_own_batch():
    case = get_case("microbatch-tied-soft")                     # A: [2, 3], B: [6, 1]
    batches = micro_batches(plan_case(case.config), case.inputs)
    assert [batch.weights for batch in batches] == [(2 / 5, 6 / 7), (3 / 5, 1 / 7)]
    assert [batch.suffix for batch in batches] == [".0", ".1"]
    assert sorted(batches[1].inputs) == ["xa", "xb", "ya", "yb"]
    assert batches[1].inputs["xb"] is case.inputs["xb.1"]
    whole = get_case("mlp-tanh-ce")
    assert micro_batches(plan_case(whole.config), whole.inputs) == \
        [(whole.inputs, (1.0,), "")]


def test_micro_batches_that_do_not_fit_are_clear_errors():
    case = get_case("microbatch-mlp")                           # sizes [3, 1, 3]
    plan = plan_case(case.config)
    inputs = {**case.inputs, "x.1": case.inputs["x.0"]}
    with pytest.raises(ValueError, match=r"inputs\['x.1'\]: expected micro-batch 1 of 1 "
                                         r"example\(s\) \(micro-batches \[3, 1, 3\]\), got "
                                         r"shape \(3, 4\)"):
        micro_batches(plan, inputs)
    inputs = {key: value for key, value in case.inputs.items() if key != "y.2"}
    with pytest.raises(ValueError, match=r"inputs: missing 'y.2' \(micro-batch 2 of 'y'\)"):
        micro_batches(plan, inputs)


@pytest.mark.parametrize("edit, error, message", [
    (lambda c: c.update(micro_batches_b=[3, 4]), ValueError, "only a tied pair"),
    (lambda c: c.update(micro_batches=[3, 0, 4]), ValueError,
     r"config\['micro_batches'\]\[1\]: expected a positive int"),
    (lambda c: c.update(micro_batches=[]), TypeError, "non-empty list of micro-batch sizes"),
    (lambda c: c.update(base={**c, "base": c["base"]}), ValueError,
     "a micro-batch case of a micro-batch case"),
])
def test_malformed_micro_batch_configs_are_clear_errors(edit, error, message):
    config = copy.deepcopy(get_case("microbatch-mlp").config)
    edit(config)
    with pytest.raises(error, match=message):
        plan_case(config)


def test_malformed_siamese_and_pair_micro_batch_configs_are_clear_errors():
    config = copy.deepcopy(get_case("microbatch-tied-soft").config)
    config["micro_batches_b"] = [7]
    with pytest.raises(ValueError, match=r"as many micro-batches as config\['micro_batches'\] "
                                         r"\(2: one step\), got 1"):
        plan_case(config)
    config = copy.deepcopy(get_case("siamese-triplet-all-active").config)
    config["siamese"]["tower"]["loss"] = {"type": "MSE"}
    with pytest.raises(ValueError, match="a Siamese tower has no loss"):
        plan_case(config)
    config["siamese"]["tower"]["loss"] = None
    config["siamese"]["loss"]["p"] = 1
    with pytest.raises(ValueError, match="p=2"):
        plan_case(config)
    config["siamese"]["loss"] = {"type": "CosineEmbeddingLoss"}
    with pytest.raises(ValueError, match="CosineEmbeddingLoss"):
        plan_case(config)


def test_the_docstring_examples_run():
    assert doctest.testmod(_config).failed == 0
    assert doctest.testmod(_microbatches).failed == 0
