"""Diagnoses (``refimpl/testing/diagnosis.py``): which sharing bug a failing gradient shows.

Each named bug is planted in a NumPy implementation written here (or in the independent
implementation of ``independent_numpy``, whose bugs are switched on by name), wrong in exactly
that way; the correct variant of the same code must pass first, so that the diagnosis is the
only thing under test. Then: nothing is offered for a gradient wrong in an unrelated way,
coinciding candidates are reported as such and not named, and the diagnosis reaches
``assert_matches_oracle``'s message and golden comparisons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import independent_numpy as ind
import numpy as np
import pytest

from refimpl import MLP, nn, transposed
from refimpl.study import Contributions, Term
from refimpl.testing import (
    ComparisonReport,
    Tolerance,
    assert_matches_oracle,
    compare_tensor,
    compare_with_golden,
    compare_with_oracle,
    conform,
    golden,
)
from refimpl.testing.cases import get_case
from refimpl.testing.cases.microbatch import microbatch_case
from refimpl.testing.cases.mlp import model_case_at
from refimpl.testing.diagnosis import BUGS, candidates, case_contributions, diagnose_gradient

Params = dict[str, np.ndarray]


# --- planted implementations ---------------------------------------------------------------

def _softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over every position (the last axis holds the classes)."""
    flat, labels = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(labels.size)
    d = np.exp(log_p)
    d[rows, labels] -= 1
    return float(-log_p[rows, labels].mean()), (d / labels.size).reshape(logits.shape)


def _mse(out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    return float(((out - y) ** 2).mean()), 2 * (out - y) / out.size


LOSSES = {"SoftmaxCrossEntropy": _softmax_cross_entropy, "MSE": _mse}


def chain(model: Mapping[str, Any], *, drop: str | None = None, twice: str | None = None,
          untransposed: str | None = None) -> Callable[[Params, Any, Any], tuple]:
    """``run(params, x, y) -> (loss, grads)`` of a Dense/Tanh/Sigmoid model configuration
    with its sharing map, back-propagated by hand. The bugs, each on one slot's weight
    gradient: ``drop`` it, add it ``twice``, or add it ``untransposed`` (in the slot's
    layout although the slot reads its parameter transposed)."""
    share = model.get("share") or {}

    def resolve(slot: str) -> tuple[str, bool]:
        root, transpose = slot, False
        while root in share:
            transpose ^= bool(share[root]["transpose"])
            root = share[root]["source"]
        return root, transpose

    def run(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
        h, tape = x, []
        for layer in model["layers"]:
            if layer["type"] == "Dense":
                slot = f"{layer['name']}.weight"
                root, transpose = resolve(slot)
                weight = params[root].T if transpose else params[root]       # (out, in)
                bias, _ = resolve(f"{layer['name']}.bias")
                tape.append((slot, root, transpose, bias, h, weight))
                h = h @ weight.T + params[bias]
            else:
                h = np.tanh(h) if layer["type"] == "Tanh" else 1 / (1 + np.exp(-h))
                tape.append((layer["type"], h))
        loss, d = LOSSES[model["loss"]["type"]](h, y)
        grads = {name: np.zeros_like(value) for name, value in params.items()}
        for entry in reversed(tape):
            if len(entry) == 2:
                kind, out = entry
                d = d * (1 - out ** 2) if kind == "Tanh" else d * out * (1 - out)
                continue
            slot, root, transpose, bias, h_in, weight = entry
            d_weight = d.T @ h_in                                        # slot layout
            if transpose and slot != untransposed:
                d_weight = d_weight.T                                    # back to the root's
            if slot != drop:
                grads[root] += 2 * d_weight if slot == twice else d_weight
            grads[bias] += d.sum(axis=0)
            d = d @ weight
        return loss, grads

    return run


def model_impl(case_name: str, **bug: str) -> Callable[[Params, Mapping], tuple]:
    run = chain(get_case(case_name).config["model"], **bug)
    return lambda params, inputs: run(params, inputs["x"], inputs["y"])


def pair_impl(pair: Mapping[str, Any], pull_factor: float = 2.0) -> Callable:
    """A soft L2-tied pair: both models by :func:`chain`, the pull
    ``pull_factor * lam * (a - b)`` (2 is right; 0 forgets it, 1 halves it, -2 flips it)."""
    run_a, run_b = chain(pair["model_a"]), chain(pair["model_b"])

    def impl(params: Params, inputs: Mapping) -> tuple:
        params_a = {key[2:]: value for key, value in params.items() if key.startswith("A:")}
        params_b = {key[2:]: value for key, value in params.items() if key.startswith("B:")}
        loss_a, grads_a = run_a(params_a, inputs["xa"], inputs["ya"])
        loss_b, grads_b = run_b(params_b, inputs["xb"], inputs["yb"])
        loss = loss_a + loss_b
        for tie in pair["pairs"]:
            lam = pair["lam"][tie["a"]]
            diff = params_a[tie["a"]] - params_b[tie["b"]]
            loss += lam * float((diff ** 2).sum())
            grads_a[tie["a"]] = grads_a[tie["a"]] + pull_factor * lam * diff
            grads_b[tie["b"]] = grads_b[tie["b"]] - pull_factor * lam * diff
        return loss, {**{f"A:{k}": v for k, v in grads_a.items()},
                      **{f"B:{k}": v for k, v in grads_b.items()}}

    return impl


def rnn_classifier_impl(first_step: int = 0) -> Callable:
    """``sequence-rnn-classifier``: a tanh RNN, its last step, a dense layer, cross-entropy;
    back-propagation through time accumulates the weights' gradients over the steps
    ``T-1 .. first_step`` (1: the off-by-one loop bound that drops step 0)."""
    def impl(params: Params, inputs: Mapping) -> tuple:
        x, y = inputs["x"], inputs["y"]                                   # (N, T, D), (N,)
        w_ih, w_hh = params["rnn.weight_ih"], params["rnn.weight_hh"]
        hs = [np.zeros((x.shape[0], w_hh.shape[0]))]                     # h_{-1} = 0
        for t in range(x.shape[1]):
            hs.append(np.tanh(x[:, t] @ w_ih.T + hs[-1] @ w_hh.T + params["rnn.bias_ih"]
                              + params["rnn.bias_hh"]))
        loss, d = _softmax_cross_entropy(hs[-1] @ params["fc.weight"].T + params["fc.bias"], y)
        grads = {"fc.weight": d.T @ hs[-1], "fc.bias": d.sum(axis=0),
                 "rnn.weight_ih": np.zeros_like(w_ih), "rnn.weight_hh": np.zeros_like(w_hh)}
        d_bias = np.zeros(w_hh.shape[0])
        d_h = d @ params["fc.weight"]
        for t in reversed(range(first_step, x.shape[1])):
            d_pre = d_h * (1 - hs[t + 1] ** 2)
            grads["rnn.weight_ih"] += d_pre.T @ x[:, t]
            grads["rnn.weight_hh"] += d_pre.T @ hs[t]
            d_bias += d_pre.sum(axis=0)
            d_h = d_pre @ w_hh
        return loss, {**grads, "rnn.bias_ih": d_bias, "rnn.bias_hh": d_bias.copy()}

    return impl


def embedding_impl(assign: bool = False) -> Callable:
    """``sequence-embedding-repeats``: embedding, tanh, dense, cross-entropy per position; the
    table's gradient accumulated per occurrence (``np.add.at``), or with ``assign`` the bug
    ``dW[x] = d`` (a row named several times keeps one occurrence's gradient)."""
    def impl(params: Params, inputs: Mapping) -> tuple:
        x, y = inputs["x"], inputs["y"]                                   # (N, T) ints
        table, weight = params["embed.weight"], params["fc.weight"]
        h = np.tanh(table[x])                                             # (N, T, D)
        loss, d = _softmax_cross_entropy(h @ weight.T + params["fc.bias"], y)
        d_rows = ((d @ weight) * (1 - h ** 2)).reshape(-1, table.shape[1])   # (N*T, D)
        d_table = np.zeros_like(table)
        if assign:
            d_table[x.reshape(-1)] = d_rows
        else:
            np.add.at(d_table, x.reshape(-1), d_rows)
        flat_d, flat_h = d.reshape(-1, d.shape[-1]), h.reshape(-1, h.shape[-1])
        return loss, {"embed.weight": d_table, "fc.weight": flat_d.T @ flat_h,
                      "fc.bias": flat_d.sum(axis=0)}

    return impl


def siamese_impl(config: Mapping[str, Any], skip: str | None = None) -> Callable:
    """A Siamese model from the independent implementation's tower and metric loss, the
    tower's gradient summed over the branches except ``skip``."""
    settings = ind.Settings("float64", frozenset())
    tower, spec = ind.Network(config["tower"], settings), config["loss"]
    branches = ind.BRANCHES[spec["type"]]

    def impl(params: Params, inputs: Mapping) -> tuple:
        runs = [tower.forward(params, inputs[name]) for name in branches]
        loss, douts = ind._metric_loss(spec, [out for out, _ in runs], inputs.get("y"))
        grads: Params = {}
        for name, (_, backs), dout in zip(branches, runs, douts, strict=True):
            if name != skip:
                grads = tower.backward(backs, dout, grads)
        return float(loss), {name: grads[name] for name in params}

    return impl


def accumulation_impl(config: Mapping[str, Any], weights: str = "share",
                      skip: int | None = None) -> Callable:
    """An accumulation loop over the micro-batches ``"<name>.<i>"`` of a single-model case,
    each run by the independent implementation and weighted by its share ``n_i / N``, or by
    1 (``weights="one"``); ``skip`` leaves one micro-batch out."""
    base = ind.make_impl(config["base"])
    sizes = config["micro_batches"]

    def impl(params: Params, inputs: Mapping) -> tuple:
        loss, grads = 0.0, {name: np.zeros_like(value) for name, value in params.items()}
        for i, size in enumerate(sizes):
            if i == skip:
                continue
            part_loss, part_grads, _ = base(params, {"x": inputs[f"x.{i}"],
                                                     "y": inputs[f"y.{i}"]})
            weight = size / sum(sizes) if weights == "share" else 1.0
            loss += weight * part_loss
            for name, grad in part_grads.items():
                grads[name] = grads[name] + weight * grad
        return loss, grads

    return impl


# --- helpers -------------------------------------------------------------------------------

def _diagnosed(correct: Callable, wrong: Callable, case: Any) -> ComparisonReport:
    """The report of ``wrong`` on ``case``, after checking that ``correct`` (the same code
    without the bug) passes and that ``wrong`` fails."""
    assert compare_with_oracle(correct, case).ok
    report = compare_with_oracle(wrong, case)
    assert report.verdict == "fail"
    return report


def _only(report: ComparisonReport, tensor: str) -> Any:
    """The diagnosis of ``tensor`` (exactly one), which must be named."""
    found = [item for item in report.diagnoses if item.tensor == tensor]
    assert len(found) == 1, report
    assert found[0].named and found[0].bug in BUGS
    assert found[0].message in str(report)
    return found[0]


def _failing(report: ComparisonReport) -> set[str]:
    return {row.name for row in report.failures if row.role == "gradient"}


# --- one planted bug per diagnosis ---------------------------------------------------------

def test_use_missing_in_a_tied_autoencoder():
    report = _diagnosed(model_impl("shared-tied-autoencoder"),
                        model_impl("shared-tied-autoencoder", drop="dec.weight"),
                        "shared-tied-autoencoder")
    diagnosis = _only(report, "enc.weight")
    assert diagnosis.bug == "use missing" and diagnosis.terms == ("dec.weight^T",)
    assert diagnosis.message == ("gradient 'enc.weight' equals the use enc.weight alone; the "
                                 "use dec.weight^T is missing")
    assert _failing(report) == {"enc.weight"} and len(report.diagnoses) == 1


def test_a_gradient_assigned_by_each_use_names_the_uses_it_lost():
    # the independent implementation's bug: each use overwrites the last one; the backward
    # pass ends at fc2 itself, so fc3^T and fc4 are lost
    case = get_case("shared-transpose-chain")
    report = _diagnosed(ind.make_impl(case.config),
                        ind.make_impl(case.config, bugs={"shared_gradient_overwritten"}), case)
    diagnosis = _only(report, "fc2.weight")
    assert diagnosis.bug == "use missing" and diagnosis.terms == ("fc3.weight^T", "fc4.weight")
    assert "equals the use fc2.weight alone; the uses fc3.weight^T, fc4.weight are missing" \
        in diagnosis.message


def test_use_counted_twice():
    report = _diagnosed(model_impl("shared-repeated-layer"),
                        model_impl("shared-repeated-layer", twice="fc3.weight"),
                        "shared-repeated-layer")
    diagnosis = _only(report, "fc2.weight")
    assert diagnosis.bug == "use counted twice" and diagnosis.terms == ("fc3.weight",)
    assert "the use fc3.weight is counted twice" in diagnosis.message
    assert _failing(report) == {"fc2.weight"}


def test_transposed_use_not_transposed_back():
    report = _diagnosed(model_impl("shared-transpose-chain"),
                        model_impl("shared-transpose-chain", untransposed="fc3.weight"),
                        "shared-transpose-chain")
    diagnosis = _only(report, "fc2.weight")
    assert diagnosis.bug == "transposed use not transposed back"
    assert diagnosis.terms == ("fc3.weight^T",)
    assert "the transposed use fc3.weight^T is not transposed back" in diagnosis.message


@pytest.mark.parametrize("factor, bug", [(0.0, "pull missing"), (1.0, "pull halved"),
                                         (-2.0, "pull with the wrong sign")])
def test_the_pull_of_a_soft_tie(factor, bug):
    case = get_case("tied-soft-l2")
    report = _diagnosed(pair_impl(case.config["pair"]), pair_impl(case.config["pair"], factor),
                        case)
    tied = {"A:fc1.weight", "A:fc1.bias", "B:fc1.weight", "B:fc1.bias"}
    assert _failing(report) == tied
    for tensor in tied:
        diagnosis = _only(report, tensor)
        assert diagnosis.bug == bug and diagnosis.terms == ("pull",)


def test_pull_counted_once_per_micro_batch():
    case = get_case("microbatch-tied-soft")
    report = _diagnosed(ind.make_impl(case.config),
                        ind.make_impl(case.config, bugs={"penalty_per_micro_batch"}), case)
    diagnosis = _only(report, "A:fc1.weight")
    assert diagnosis.bug == "pull counted once per micro-batch"
    assert "added once per micro-batch (2 times) instead of once per step" in diagnosis.message
    assert {item.bug for item in report.diagnoses} == {"pull counted once per micro-batch"}


def test_rnn_time_step_dropped():
    report = _diagnosed(rnn_classifier_impl(), rnn_classifier_impl(first_step=1),
                        "sequence-rnn-classifier")
    for tensor in ("rnn.weight_ih", "rnn.bias_ih", "rnn.bias_hh"):
        diagnosis = _only(report, tensor)
        assert diagnosis.bug == "time step dropped"
        assert diagnosis.message == (f"gradient {tensor!r} equals the sum over the time steps "
                                     f"of {tensor} without step 0 (T = 6); the contribution of "
                                     f"time step 0 is dropped")
    # h_{-1} = 0: step 0 adds nothing to W_hh, whose gradient is right and not diagnosed
    assert "rnn.weight_hh" not in _failing(report)
    assert len(report.diagnoses) == 3


def test_siamese_branch_dropped():
    case = get_case("siamese-triplet-all-active")
    report = _diagnosed(siamese_impl(case.config["siamese"]),
                        siamese_impl(case.config["siamese"], skip="negative"), case)
    assert _failing(report) == {"fc1.weight", "fc1.bias", "fc2.weight"}
    for tensor in _failing(report):
        diagnosis = _only(report, tensor)
        assert diagnosis.bug == "branch dropped" and diagnosis.terms == ("negative",)
        assert diagnosis.message == (f"gradient {tensor!r} equals the sum over the branches "
                                     f"'anchor', 'positive'; the branch 'negative' is dropped")


def test_micro_batches_weighted_one_instead_of_their_share():
    case = get_case("microbatch-mlp")                      # sizes 3, 1, 3
    report = _diagnosed(accumulation_impl(case.config),
                        accumulation_impl(case.config, weights="one"), case)
    assert {item.bug for item in report.diagnoses} == {"micro-batches weighted 1"}
    assert "instead of its share n_i/N (3/7; 1/7; 3/7)" in _only(report, "fc1.weight").message
    assert {item.tensor for item in report.diagnoses} == _failing(report)


def test_micro_batches_weighted_one_over_m():
    case = get_case("microbatch-mlp")
    report = _diagnosed(ind.make_impl(case.config),
                        ind.make_impl(case.config, bugs={"micro_batches_unweighted"}), case)
    assert {item.bug for item in report.diagnoses} == {"micro-batches weighted 1/M"}
    assert "weighted 1/M = 1/3" in _only(report, "fc2.weight").message


def test_micro_batch_dropped():
    case = get_case("microbatch-mlp")
    report = _diagnosed(accumulation_impl(case.config), accumulation_impl(case.config, skip=2),
                        case)
    diagnosis = _only(report, "fc1.weight")
    assert diagnosis.bug == "micro-batch dropped" and diagnosis.terms == ("mb2",)
    assert diagnosis.message == ("gradient 'fc1.weight' equals the accumulated micro-batches "
                                 "0, 1 alone; micro-batch 2 (3/7) is dropped")


def test_embedding_occurrences_assigned_not_accumulated():
    report = _diagnosed(embedding_impl(), embedding_impl(assign=True),
                        "sequence-embedding-repeats")
    diagnosis = _only(report, "embed.weight")
    assert diagnosis.bug == "occurrences assigned, not accumulated"
    assert diagnosis.message == (
        "gradient 'embed.weight' equals embed.weight with each repeated row (rows 0, 2, 3) "
        "given its last occurrence's gradient alone; the occurrences of embed.weight are "
        "assigned, not accumulated (np.add.at)")
    assert _failing(report) == {"embed.weight"}


# --- nothing offered where nothing fits ----------------------------------------------------

def _reference_impl(case: Any, tensor: str, change: Callable[[np.ndarray], np.ndarray]
                    ) -> Callable:
    """refimpl's own loss and gradients with one gradient changed."""
    def impl(params: Params, inputs: Mapping) -> tuple:
        loss, grads = case.loss_and_grads(params)
        return loss, {**grads, tensor: change(np.array(grads[tensor]))}

    return impl


def _flip_largest(grad: np.ndarray) -> np.ndarray:
    index = np.unravel_index(np.argmax(np.abs(grad)), grad.shape)
    grad[index] = -grad[index]
    return grad


def _perturbed(grad: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(7).standard_normal(grad.shape)
    return grad + 0.05 * np.abs(grad).max() * noise


UNRELATED = {"one entry's sign": _flip_largest, "a random perturbation": _perturbed,
             "a factor 1.3": lambda grad: 1.3 * grad}


@pytest.mark.parametrize("name, tensor", [
    ("shared-tied-autoencoder", "enc.weight"), ("tied-soft-l2", "A:fc1.weight"),
    ("microbatch-tied-soft", "B:fc1.weight"), ("sequence-rnn-classifier", "rnn.weight_ih")])
@pytest.mark.parametrize("wrong", list(UNRELATED))
def test_no_diagnosis_when_no_candidate_fits(name, tensor, wrong):
    case = get_case(name)
    assert len(candidates(case_contributions(case)[tensor])) >= 3   # there were some to fit
    report = compare_with_oracle(_reference_impl(case, tensor, UNRELATED[wrong]), case)
    assert report.verdict == "fail" and _failing(report) == {tensor}
    assert report.diagnoses == () and report.diagnosis is None
    assert "diagnosis" not in str(report)


def test_coinciding_candidates_are_reported_as_such_and_not_named():
    # Two micro-batches holding the same examples: their terms are equal, so "micro-batch 0
    # dropped" and "micro-batch 1 dropped" are the same gradient (half the reference), and
    # 1/M is their share (that candidate is the reference itself).
    model = MLP([3, 4, 2], activation="tanh")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((2, 3)), np.array([0, 1])
    base = model_case_at("duplicated", "mlp", model, model.init(5), np.concatenate([x, x]),
                         np.concatenate([y, y]))
    case = microbatch_case("microbatch-duplicated", base, model, [2, 2])
    report = _diagnosed(accumulation_impl(case.config), accumulation_impl(case.config, skip=1),
                        case)
    assert report.diagnoses and {item.tensor for item in report.diagnoses} == _failing(report)
    for diagnosis in report.diagnoses:
        assert not diagnosis.named and diagnosis.bug == "micro-batch dropped"
        assert diagnosis.candidates == ("micro-batch 0 (2/4) is dropped",
                                        "micro-batch 1 (2/4) is dropped")
        assert "2 candidates that cannot be told apart at this point, so no single bug is " \
               "named" in diagnosis.message


# --- where diagnoses are shown -------------------------------------------------------------

def test_assert_matches_oracle_shows_the_diagnosis_after_the_failing_rows():
    case = get_case("shared-tied-autoencoder")
    with pytest.raises(AssertionError) as info:
        assert_matches_oracle(model_impl(case.name, drop="dec.weight"), case)
    lines = str(info.value).splitlines()
    assert lines[1].startswith("  gradient 'enc.weight' shape (3, 5)")
    assert lines[2] == ("  diagnosis: gradient 'enc.weight' equals the use enc.weight alone; "
                        "the use dec.weight^T is missing")


def test_a_model_passed_with_its_data_is_diagnosed_too():
    case = get_case("shared-tied-autoencoder")
    model = nn.Sequential([nn.Dense("enc", 5, 3), nn.Tanh(), nn.Dense("dec", 3, 5)],
                          loss=nn.MSE(), share={"dec.weight": transposed("enc.weight")})
    report = compare_with_oracle(model_impl(case.name, drop="dec.weight"), model,
                                 case.params, case.inputs)
    assert _only(report, "enc.weight").bug == "use missing"


def test_float32_implementation_is_diagnosed_with_float32_tolerances():
    run = chain(get_case("shared-tied-autoencoder").config["model"], drop="dec.weight")

    def impl(params, inputs):
        loss, grads = run({k: v.astype(np.float32) for k, v in params.items()},
                          inputs["x"].astype(np.float32), inputs["y"].astype(np.float32))
        return np.float32(loss), grads

    report = compare_with_oracle(impl, "shared-tied-autoencoder", dtype="float32")
    assert _only(report, "enc.weight").bug == "use missing"


def test_golden_comparison_is_diagnosed_through_the_rebuilt_case(tmp_path):
    folder = golden.write(tmp_path / "golden", cases=["shared-tied-autoencoder"])
    [report] = compare_with_golden(model_impl("shared-tied-autoencoder", drop="dec.weight"),
                                   folder)
    assert _only(report, "enc.weight").bug == "use missing"


def test_a_hand_made_case_without_a_model_configuration_is_not_diagnosed():
    case = get_case("shared-tied-autoencoder")
    hand_made = dataclasses.replace(case, config={"note": "written by hand"})
    report = compare_with_oracle(model_impl(case.name, drop="dec.weight"), hand_made)
    assert report.verdict == "fail" and report.diagnoses == ()


# --- the rules, on contributions made by hand ----------------------------------------------

#: A limit of exactly 1e-3 on every tensor below (no rtol, no floor): the rule in plain sight.
ABSOLUTE = Tolerance(rtol=0.0, atol=1e-3)


def _two_uses(first: np.ndarray, second: np.ndarray) -> Contributions:
    terms = tuple(Term(slot, "task", "model", slot, False, grad)
                  for slot, grad in (("fc1.weight", first), ("fc2.weight", second)))
    return Contributions("fc1.weight", first + second, terms)


def test_a_candidate_the_rule_cannot_tell_from_the_reference_is_never_offered():
    # fc2's use is 0.8 of the limit: "fc2 missing" is within the limit of the reference,
    # though it fits a gradient that fails (1.6 limits off, 0.8 from the candidate).
    first = np.random.default_rng(1).standard_normal((3, 2))
    small = np.full((3, 2), 0.8e-3)
    found = _two_uses(first, small)
    actual = found.gradient - 2 * small
    assert compare_tensor("gradient", "w", found.gradient, actual, ABSOLUTE).verdict == "fail"
    assert compare_tensor("gradient", "w", found.gradient - small, actual,
                          ABSOLUTE).verdict == "pass"
    assert diagnose_gradient("fc1.weight", actual, found.gradient, found, ABSOLUTE) is None
    # the same shape of bug with a use the rule resolves is named
    found = _two_uses(first, 10 * small)
    named = diagnose_gradient("fc1.weight", found.gradient - 10 * small, found.gradient, found,
                              ABSOLUTE)
    assert named.named and named.bug == "use missing" and named.terms == ("fc2.weight",)


def test_a_fit_within_reach_of_another_candidate_is_not_named():
    # The two uses differ by 0.9 of the limit: "fc1 missing" and "fc2 missing" cannot be told
    # apart, although the gradient (0.5 limits from the first) fits only the first.
    first = np.random.default_rng(2).standard_normal((2, 3))
    second = first + 0.9e-3
    found = _two_uses(first, second)
    actual = found.gradient - first + 0.5e-3
    diagnosis = diagnose_gradient("fc1.weight", actual, found.gradient, found, ABSOLUTE)
    assert not diagnosis.named and diagnosis.bug == "use missing"
    assert diagnosis.candidates == ("the use fc1.weight is missing",
                                    "the use fc2.weight is missing")
    # told apart (the uses differ by 3 limits), the same gradient is named
    found = _two_uses(first, first + 3e-3)
    named = diagnose_gradient("fc1.weight", found.gradient - first + 0.5e-3, found.gradient,
                              found, ABSOLUTE)
    assert named.named and named.terms == ("fc1.weight",)


def test_a_candidate_below_what_the_rule_resolves_does_not_fit():
    # "fc2 missing" leaves fc1's use, 0.2 of the limit: a zero gradient is within the limit
    # of it, but the rule calls that comparison inconclusive, never a fit.
    found = _two_uses(np.full((2, 2), 0.2e-3), np.random.default_rng(3).standard_normal((2, 2)))
    assert diagnose_gradient("fc1.weight", np.zeros((2, 2)), found.gradient, found,
                             ABSOLUTE) is None


def test_contributions_that_do_not_sum_to_the_reference_diagnose_nothing():
    # a reference from another model than the contributions describe
    found = _two_uses(*np.random.default_rng(4).standard_normal((2, 3, 3)))
    other = found.gradient + 0.5
    assert diagnose_gradient("fc1.weight", other - found.terms[1].gradient, other, found,
                             ABSOLUTE) is None


@pytest.mark.parametrize("offset, diagnosed", [(0.7, True), (1.5, False)])
def test_a_fit_is_judged_with_the_tensors_own_tolerance_and_floor(offset, diagnosed):
    # TF32: the floor of 'enc.weight' is about rtol * scale, so 0.7 of the whole limit is
    # beyond rtol * scale alone: the fit must count the floor, and stop at the limit.
    case = get_case("shared-tied-autoencoder")
    planted = model_impl(case.name, drop="dec.weight")
    candidate = planted(case.params, case.inputs)[1]["enc.weight"]      # float64
    [row] = [row for row in compare_with_oracle(planted, case, dtype="tf32").rows
             if row.name == "enc.weight"]
    limit = 1e-2 * np.abs(candidate).max() + row.floor
    assert row.floor > 0.5 * 1e-2 * np.abs(candidate).max()

    def impl(params, inputs):
        loss, grads = planted(params, inputs)
        grads["enc.weight"] = grads["enc.weight"] + np.float32(offset * limit) * (
            np.arange(grads["enc.weight"].size).reshape(grads["enc.weight"].shape) == 0)
        return loss, grads

    report = compare_with_oracle(impl, case, dtype="tf32")
    assert report.verdict == "fail"
    assert bool(report.diagnoses) == diagnosed


def test_a_failed_conform_row_carries_the_diagnosis():
    def build(config, dtype):
        return model_impl("shared-tied-autoencoder", drop="dec.weight")

    row, = conform(build, cases=["shared-tied-autoencoder"], dtypes=["float64"]).rows
    assert row.outcome == "fail"
    assert row.detail.endswith("; diagnosis: gradient 'enc.weight' equals the use enc.weight "
                               "alone; the use dec.weight^T is missing")
