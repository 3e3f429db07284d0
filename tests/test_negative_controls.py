"""Negative controls: deliberately wrong implementations the oracle kit must reject, each with
a message naming what is wrong, and a correct independent implementation it must accept.

The wrong implementations are ``independent_numpy`` with one bug switched on:

- a transposed dense weight gradient,
- the tying penalty's gradient missing its factor 2,
- a shared parameter's gradient overwritten by each use instead of summed,
- a convolution padded off by one (p + 1 before, p - 1 after: same output size),
- a float32 intermediate in a float64 pipeline.

Each is checked on a model built here (so the control does not depend on what the catalogue
holds) and on catalogue cases of a golden folder where the bug changes the result: one case of
each kind per bug in the default tier, every such case in the slow tier (``-m slow``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from independent_numpy import BUGS, make_impl

from refimpl import MLP
from refimpl.nn import CNN
from refimpl.testing import (
    assert_matches_golden,
    assert_matches_oracle,
    compare_with_oracle,
    golden,
)
from refimpl.testing.cases import all_cases, get_case
from refimpl.tying import AnchoredModel, TiedPair


def _data(model, batch: int, input_shape: tuple[int, ...], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape))
    out = model.output_shape(x.shape)
    if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
        return {"x": x, "y": rng.integers(0, out[1], size=batch)}
    return {"x": x, "y": rng.standard_normal(out)}


def _rejected(config: dict, model: Any, inputs: dict, bug: str, **options) -> str:
    """Assert that the bugged implementation is rejected and the correct one accepted;
    return the rejection message."""
    assert_matches_oracle(make_impl(config, **options), model, inputs=inputs,
                          **({"dtype": options["dtype"]} if "dtype" in options else {}))
    with pytest.raises(AssertionError) as info:
        assert_matches_oracle(make_impl(config, bugs={bug}, **options), model, inputs=inputs,
                              **({"dtype": options["dtype"]} if "dtype" in options else {}))
    return str(info.value)


def test_transposed_dense_weight_gradient_is_rejected():
    # Square weights: the transposed gradient has the right shape, only its values betray it.
    square = MLP([4, 4, 4], activation="tanh")
    message = _rejected({"model": square.config()}, square, _data(square, 5, (4,)),
                        "transposed_dense_gradient")
    assert "gradient 'fc1.weight' shape (4, 4): worst index" in message
    assert "gradient 'fc2.weight' shape (4, 4): worst index" in message
    assert "> tolerance" in message and "matching: loss, gradient 'fc1.bias'" in message
    # Otherwise the shape already gives it away, with a hint.
    wide = MLP([3, 5, 2], activation="tanh")
    message = _rejected({"model": wide.config()}, wide, _data(wide, 5, (3,)),
                        "transposed_dense_gradient")
    assert "gradient 'fc1.weight': expected shape (5, 3), got (3, 5) (transposed?)" in message


def test_penalty_missing_its_factor_two_is_rejected():
    model_a, model_b = MLP([3, 4, 2], activation="tanh"), MLP([3, 4, 3], activation="tanh")
    pair = TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"},
                    lam=0.5)
    inputs = {**{k + "a": v for k, v in _data(model_a, 4, (3,), seed=1).items()},
              **{k + "b": v for k, v in _data(model_b, 3, (3,), seed=2).items()}}
    message = _rejected({"pair": pair.config()}, pair, inputs, "penalty_without_factor_2")
    for name in ("A:fc1.weight", "A:fc1.bias", "B:fc1.weight", "B:fc1.bias"):
        assert f"gradient {name!r} shape" in message
    assert "gradient 'A:fc2.weight'" in message.split("matching:")[1]   # untied: unaffected

    anchored = AnchoredModel(model_a, lam=0.3)
    message = _rejected({"anchored": anchored.config()}, anchored, _data(model_a, 4, (3,)),
                        "penalty_without_factor_2")
    assert "gradient 'fc1.weight' shape" in message


def test_shared_gradient_overwritten_instead_of_summed_is_rejected():
    repeated = MLP([3, 4, 4, 4, 2], activation="tanh",
                   share={"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias"})
    message = _rejected({"model": repeated.config()}, repeated, _data(repeated, 5, (3,)),
                        "shared_gradient_overwritten")
    assert "gradient 'fc2.weight' shape (4, 4)" in message
    assert "gradient 'fc2.bias' shape (4,)" in message
    assert "fc1.weight" in message.split("matching:")[1]

    classifier_a, classifier_b = MLP([3, 4, 2]), MLP([3, 4, 3])
    hard = TiedPair(classifier_a, classifier_b, {"fc1.weight": "fc1.weight"}, mode="hard")
    inputs = {**{k + "a": v for k, v in _data(classifier_a, 4, (3,), seed=1).items()},
              **{k + "b": v for k, v in _data(classifier_b, 3, (3,), seed=2).items()}}
    message = _rejected({"pair": hard.config()}, hard, inputs, "shared_gradient_overwritten")
    assert "gradient 'A:fc1.weight' shape (4, 3)" in message


def test_convolution_padding_off_by_one_is_rejected():
    cnn = CNN((2, 6, 5), [{"out_channels": 3, "kernel_size": 3, "padding": 1}], [4])
    message = _rejected({"model": cnn.config()}, cnn, _data(cnn, 3, (2, 6, 5)),
                        "conv_padding_off_by_one")
    assert "gradient 'conv1.weight' shape (3, 2, 3, 3): worst index" in message
    assert "output 'out' shape (3, 4)" in message
    # A geometry with padding in one axis only, strided and dilated, rounding down.
    odd = CNN((1, 9, 7), [{"out_channels": 2, "kernel_size": (3, 2), "stride": 2,
                           "padding": (2, 0), "dilation": (2, 1)}], [3], pool=None)
    message = _rejected({"model": odd.config()}, odd, _data(odd, 2, (1, 9, 7)),
                        "conv_padding_off_by_one")
    assert "gradient 'conv1.weight'" in message


def test_float32_intermediate_is_rejected_at_float64_only():
    model = MLP([4, 6, 3], activation="tanh")
    inputs = _data(model, 5, (4,))
    message = _rejected({"model": model.config()}, model, inputs, "float32_intermediate")
    assert "dtype float64" in message and "rtol=1e-10" in message
    bugged = make_impl({"model": model.config()}, bugs={"float32_intermediate"})
    report = compare_with_oracle(bugged, model, inputs=inputs)
    worst = max(row.relative_error for row in report.rows)
    assert 1e-10 < worst < 1e-5           # float32 rounding: wrong for float64, right for float32
    assert compare_with_oracle(bugged, model, inputs=inputs, dtype="float32").ok


# --- every applicable catalogue case, through a golden folder ----------------------------------

def _layers(config: Any) -> list[dict]:
    """Every layer configuration in a (nested) case configuration."""
    found = []
    if isinstance(config, dict):
        if "layers" in config:
            found += [layer for layer in config["layers"] if isinstance(layer, dict)]
        for value in config.values():
            found += _layers(value)
    return found


def _pad_of(layer: dict) -> int:
    padding = layer.get("padding", 0)
    return max(padding) if isinstance(padding, list) else padding


def _applies(bug: str, config: dict) -> bool:
    """Whether ``bug`` changes a case's result (read from its configuration alone)."""
    if bug == "micro_batches_unweighted":
        sizes = config.get("micro_batches", [])
        return len(set(sizes) | set(config.get("micro_batches_b", sizes))) > 1
    if bug == "penalty_per_micro_batch":
        pair = config.get("base", {}).get("pair", {})
        return len(config.get("micro_batches", [])) > 1 and pair.get("mode") == "soft" and \
            any(lam > 0 for lam in (pair.get("lam") or {}).values())
    if "base" in config:                  # micro-batches: the bugs of their base case
        return _applies(bug, config["base"])
    layers = _layers(config)
    pair = config.get("pair", {})
    anchored = config.get("anchored", {})
    if bug == "transposed_dense_gradient":
        return any(layer["type"] == "Dense" for layer in layers)
    if bug == "penalty_without_factor_2":
        soft_l2 = pair.get("mode") == "soft" and pair.get("penalty") == "l2" and \
            any(lam > 0 for lam in (pair.get("lam") or {}).values())
        anchored_l2 = anchored.get("penalty") == "l2" and \
            any(lam > 0 for lam in anchored.get("lam", {}).values())
        return soft_l2 or anchored_l2
    if bug == "shared_gradient_overwritten":
        shares = any(model.get("share") for model in (config.get("model", {}),
                                                      pair.get("model_a", {}),
                                                      pair.get("model_b", {})))
        # a Siamese tower is shared by its branches
        return shares or pair.get("mode") == "hard" or "siamese" in config
    if bug == "conv_padding_off_by_one":
        return any(layer["type"] in ("Conv2D", "LocallyConnected2D") and _pad_of(layer) >= 1
                   for layer in layers)
    return bug == "float32_intermediate"


def _changes_result(bug: str, case: Any) -> bool:
    """Whether the bug moves some tensor by more than 1e-8 of its scale (100 times the float64
    tolerance), measured between the correct and the bugged independent implementation — not
    with the kit under test. (A configuration can call for a bug that the data hides: a dead
    ReLU in front of everything, a zero penalty strength.)"""
    good = make_impl(case.config)(case.params, case.inputs)
    try:
        bad = make_impl(case.config, bugs={bug})(case.params, case.inputs)
    except ValueError:       # e.g. a transposed gradient added to a penalty's: it crashes,
        return False         # there is no wrong value for the kit to judge
    pairs = [(good[0], bad[0])] + [(good[1][k], bad[1][k]) for k in good[1]] + \
        [(good[2][k], bad[2][k]) for k in good[2]]
    for expected, actual in pairs:
        expected, actual = np.asarray(expected), np.asarray(actual)
        if expected.shape != actual.shape:
            return True
        if np.abs(actual - expected).max(initial=0) > 1e-8 * np.abs(expected).max(initial=0):
            return True
    return False


# The gradient cases (a step case is judged by train_steps, which make_impl does not have).
CATALOGUE = [(bug, case.name) for bug in sorted(BUGS) for case in all_cases()
             if case.kind != "steps" and _applies(bug, case.config)
             and _changes_result(bug, case)]

# The default tier takes the first applicable case of each kind (MLP, CNN, tied, shared,
# probe, sequence, Siamese, micro-batch) for each bug; the slow tier takes the others.
_KINDS = {case.name: case.kind for case in all_cases()}
_FIRST_OF_A_KIND = {(bug, _KINDS[name]): (bug, name) for bug, name in reversed(CATALOGUE)}
SAMPLE = [pair for pair in CATALOGUE if pair in _FIRST_OF_A_KIND.values()]
REST = [pair for pair in CATALOGUE if pair not in SAMPLE]


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    """A golden folder of the sampled cases."""
    return golden.write(tmp_path_factory.mktemp("golden") / "sample",
                        cases=sorted({name for _, name in SAMPLE}))


@pytest.fixture(scope="module")
def whole_golden_dir(tmp_path_factory):
    return golden.write(tmp_path_factory.mktemp("golden") / "vectors")


def _rejected_by_the_golden_case(folder, bug: str, name: str) -> None:
    config = golden.read_manifest(folder)["cases"][name]["config"]
    assert_matches_golden(make_impl(config), folder, case=name)
    with pytest.raises(AssertionError, match=f"case {name!r}: the implementation does not"):
        assert_matches_golden(make_impl(config, bugs={bug}), folder, case=name)


@pytest.mark.parametrize("bug, name", SAMPLE, ids=[f"{b}-{n}" for b, n in SAMPLE])
def test_an_applicable_golden_case_of_each_kind_rejects_the_bug(golden_dir, bug, name):
    _rejected_by_the_golden_case(golden_dir, bug, name)


@pytest.mark.slow
@pytest.mark.parametrize("bug, name", REST, ids=[f"{b}-{n}" for b, n in REST])
def test_every_applicable_golden_case_rejects_the_bug(whole_golden_dir, bug, name):
    _rejected_by_the_golden_case(whole_golden_dir, bug, name)


def test_the_sample_holds_a_case_of_every_kind_for_every_bug():
    assert sorted(SAMPLE + REST) == sorted(CATALOGUE)
    assert {(bug, _KINDS[name]) for bug, name in SAMPLE} == \
        {(bug, _KINDS[name]) for bug, name in CATALOGUE}
    assert len(SAMPLE) == len({(bug, _KINDS[name]) for bug, name in CATALOGUE})


@pytest.mark.parametrize("bug", ["micro_batches_unweighted", "penalty_per_micro_batch"])
def test_micro_batch_accumulation_bugs_are_rejected(bug):
    case = get_case("microbatch-tied-soft")
    assert_matches_oracle(make_impl(case.config), case)
    with pytest.raises(AssertionError, match="microbatch-tied-soft"):
        assert_matches_oracle(make_impl(case.config, bugs={bug}), case)


def test_every_bug_is_exercised_by_a_model_built_here():
    """The controls above cover every bug even when the catalogue has no case for it."""
    tested = {"transposed_dense_gradient", "penalty_without_factor_2",
              "shared_gradient_overwritten", "conv_padding_off_by_one", "float32_intermediate",
              "micro_batches_unweighted", "penalty_per_micro_batch"}
    assert tested == BUGS
