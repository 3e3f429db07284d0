"""Tests of refimpl/study/contributions.py: the labelled terms of every gradient."""

from __future__ import annotations

import doctest
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import MLP, AnchoredModel, TiedPair, nn, transposed
from refimpl.cli.explain import case_contributions
from refimpl.study import (
    Contributions,
    Term,
    anchored_contributions,
    microbatch_contributions,
    model_contributions,
    pair_contributions,
    row_summary,
    siamese_contributions,
    summarize,
)
from refimpl.study import contributions as contributions_module
from refimpl.study import forms as forms_module
from refimpl.testing import strategies as rs
from refimpl.testing.cases import Case, all_cases, get_case
from refimpl.testing.cases.sequence import sequence_case
from refimpl.testing.cases.tied import pair_case

EPS = np.finfo(np.float64).eps
#: ``||sum of terms - gradient|| <= SUM_RTOL * sum_i size(term_i)``, where a term's size is
#: the sum of its parts' magnitudes when it has parts, else its norm (``_summands_size``).
#: The terms come from the untied twin, whose forward and backward passes add the same
#: products in another order (a convolution's positions one by one instead of in one matrix
#: product), so the sum agrees with ``loss_and_grads`` to the rounding of those sums: a few
#: eps relative to the size of the summands (a convolution's positions can cancel to a term
#: 1000 times smaller than they are), not to the (possibly cancelling) total. Because a
#: convolution's twin is a locally connected layer, every activation *above* it is computed
#: in another order too, so even an unshared parameter's single term (a later Dense bias)
#: differs from the gradient by the forward pass's rounding carried through the layers, a few
#: tens of eps for the small drawn CNNs, hence 64 eps. A dropped term or a use not
#: transposed back is wrong by the size of a term, ~1e13 times more.
SUM_RTOL = 64 * EPS


def contributions_of(case: Case) -> dict[str, Contributions]:
    """The contributions of a drawn or built-in case, from its configuration (the same
    dispatch ``refimpl explain`` uses)."""
    return case_contributions(case)


def _summands_size(term: Term) -> float:
    """The size of the products a term adds: the sum of its parts' magnitudes when it has
    parts (a convolution's positions, which may cancel to a term far smaller than they are),
    else the term's norm."""
    if term.parts is not None:
        return float(np.abs(term.parts.gradients).sum())
    return float(np.linalg.norm(term.gradient))


def assert_terms_sum_to_gradients(case: Case) -> dict[str, Contributions]:
    _, grads = case.loss_and_grads(case.params)
    found = contributions_of(case)
    assert list(found) == list(grads)
    for name, contributions in found.items():
        if case.kind != "microbatch":
            assert np.array_equal(contributions.gradient, grads[name])
        # micro-batches: `gradient` is the full batch's, `grads` the accumulated step's, and
        # the terms must sum to the step's gradient (below).
        assert contributions.terms, name
        scale = sum(_summands_size(term) for term in contributions.terms)
        error = np.linalg.norm(contributions.total() - grads[name])
        assert error <= SUM_RTOL * scale, (name, error, scale)
        for term in contributions.terms:
            assert term.gradient.shape == grads[name].shape
            if term.parts is not None:
                grid = len(term.parts.axes)
                trailing = grads[name].shape[1 if term.parts.rows is not None else 0:]
                assert term.parts.gradients.shape[grid:] == trailing
                parts_error = np.linalg.norm(term.parts.total(grads[name].shape)
                                             - term.gradient)
                assert parts_error <= SUM_RTOL * np.abs(term.parts.gradients).sum()
    return found


@settings(max_examples=50)
@given(rs.cases())
def test_terms_sum_to_the_gradient_of_every_drawn_model(case):
    assert_terms_sum_to_gradients(case)


@st.composite
def drawn_sequence_cases(draw):
    """A drawn embedding model, RNN or (tied or untied) language model on drawn data.

    Built here from the model strategies rather than taken from ``rs.sequence_cases()``,
    whose rejection step (``unresolved_tensors``) fails on some (N, T, K) outputs: any point
    is fine for a sum that holds everywhere."""
    model = draw(st.one_of(rs.embedding_models(), rs.rnns(), rs.tied_lms(tied=None)))
    seed = draw(st.integers(0, 2**16))
    batch, steps = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    first = model.layers[0]
    if isinstance(first, nn.Embedding):
        x = rng.integers(0, first.num_embeddings, size=(batch, steps)).astype(np.int64)
    else:
        x = rng.standard_normal((batch, steps, first.input_size))
    out_shape = model.output_shape(x.shape)
    y = rng.integers(0, out_shape[-1], size=out_shape[:-1]).astype(np.int64)
    return sequence_case("drawn-sequence", model, x, y, seed % 1000)


@settings(max_examples=30, deadline=None)
@given(st.one_of(drawn_sequence_cases(), rs.siamese_cases(), rs.microbatch_cases()))
def test_terms_sum_to_the_gradient_of_every_drawn_sequence_siamese_and_microbatch_case(case):
    found = assert_terms_sum_to_gradients(case)
    if case.kind == "siamese":
        branches = 3 if "anchor" in case.inputs else 2
        assert all(len(c.terms) % branches == 0 for c in found.values())


#: Layers that use their parameters several times: their terms have parts.
SPLIT_LAYERS = ("Conv2D", "RNN", "Embedding")


# A step case's first step is a gradient case of its base kind, already among these.
@pytest.mark.parametrize("case", [case for case in all_cases() if case.kind != "steps"],
                         ids=lambda case: case.name)
def test_terms_sum_to_the_gradient_of_every_built_in_case(case):
    found = assert_terms_sum_to_gradients(case)
    uses = sum(len(c.terms) for c in found.values())
    if case.kind in ("shared", "tied", "siamese", "microbatch"):
        assert uses > len(found)   # something is shared or pulled: some parameter has 2 terms
    with_parts = [t for c in found.values() for t in c.terms if t.parts is not None]
    layer_types = re.findall(r'"type": "(\w+)"', json.dumps(case.config))
    assert bool(with_parts) == any(kind in SPLIT_LAYERS for kind in layer_types)


def _slot_derivative(model, params, x, y, slot, direction, h=1e-30):
    """d loss / d (slot alone) along ``direction`` by the complex step on the untied twin's
    *forward* pass (no backward): every other slot keeps its unique parameter's value."""
    twin = nn.Sequential(model.layers, loss=model.loss_spec)
    slot_params = {}
    for name, (root, transpose) in model.slot_uses().items():
        slot_params[name] = params[root].T if transpose else params[root]
    slot_params[slot] = slot_params[slot] + 1j * h * direction
    return twin.loss(slot_params, x, y).imag / h


@settings(max_examples=30)
@given(rs.shared_mlps(), st.integers(0, 2**32 - 1))
def test_each_use_is_the_derivative_through_that_slot_alone(model, seed):
    rng = np.random.default_rng(seed)
    params = model.init(seed % 1000)
    x = rng.standard_normal((3, model.layers[0].in_features))
    out = model.output_shape(x.shape)
    y = (rng.integers(0, out[1], 3) if model.loss_spec.config()["type"] ==
         "SoftmaxCrossEntropy" else rng.standard_normal(out))
    found = model_contributions(model, params, x, y)
    # The mean over the batch can cancel: rounding is relative to the per-example summands.
    per_example = [model_contributions(model, params, x[n:n + 1], y[n:n + 1])
                   for n in range(3)]
    for name, contributions in found.items():
        for index, term in enumerate(contributions.terms):
            slot_shape = model.slot_uses()[term.slot]
            direction = rng.standard_normal(term.gradient.shape)   # in the parameter's layout
            in_slot = direction.T if slot_shape[1] else direction
            expected = _slot_derivative(model, params, x, y, term.slot, in_slot)
            got = float(np.sum(term.gradient * direction))
            scale = sum(float(np.sum(np.abs(example[name].terms[index].gradient * direction)))
                        for example in per_example) / 3
            assert abs(got - expected) <= 1e-12 * max(scale, 1e-300), (term.label, got, expected)


def test_tied_autoencoder_has_the_encoder_use_and_the_decoder_use_transposed_back():
    model = nn.Sequential([nn.Dense("enc", 4, 3), nn.Tanh(), nn.Dense("dec", 3, 4)],
                          loss=nn.MSE(), share={"dec.weight": transposed("enc.weight")})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4))
    params = model.init(1)
    found = model_contributions(model, params, x, x)
    encoder, decoder = found["enc.weight"].terms
    assert (encoder.slot, encoder.transposed) == ("enc.weight", False)
    assert (decoder.slot, decoder.transposed) == ("dec.weight", True)
    assert decoder.label == "dec.weight (transposed back)"
    # The decoder's use by hand: dec reads W.T, so out = h @ (W.T).T = h @ W, and with
    # MSE = mean((out - x)^2): dL/dW[i, j] = sum_n h[n, i] * 2 (out - x)[n, j] / (N * D).
    h = np.tanh(x @ params["enc.weight"].T + params["enc.bias"])   # (N, 3)
    out = h @ params["enc.weight"] + params["dec.bias"]             # (N, 4)
    by_hand = h.T @ (2 * (out - x) / out.size)                      # (3, 4), enc's layout
    np.testing.assert_allclose(decoder.gradient, by_hand, rtol=1e-13, atol=0)


def test_convolution_positions_are_the_kernel_gradient_at_each_position():
    model = nn.Sequential([nn.Conv2D("conv", 1, 2, kernel_size=2), nn.Tanh(), nn.Flatten(),
                           nn.Dense("fc", 2 * 2 * 2, 2)], loss=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((3, 1, 3, 3)), np.array([0, 1, 1])
    params = model.init(2)
    term, = model_contributions(model, params, x, y)["conv.weight"].terms
    assert term.parts.axes == ("Ho", "Wo") and term.parts.gradients.shape == (2, 2, 2, 1, 2, 2)
    # Position (i, j) alone: the kernel read at that position only, by the complex step on a
    # forward pass written out here (conv output (i, j) = sum x[:, :, i:i+2, j:j+2] * w).
    def loss_with_kernel_at(position, kernel):
        pre = np.empty((3, 2, 2, 2), dtype=complex)
        for i in range(2):
            for j in range(2):
                w = kernel if (i, j) == position else params["conv.weight"]
                pre[:, :, i, j] = np.einsum("nchw,fchw->nf", x[:, :, i:i + 2, j:j + 2], w)
        hidden = np.tanh(pre + params["conv.bias"][:, None, None]).reshape(3, -1)
        logits = hidden @ params["fc.weight"].T + params["fc.bias"]
        shifted = logits - logits.real.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_softmax[np.arange(3), y].mean()
    for position in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        direction = rng.standard_normal(params["conv.weight"].shape)
        kernel = params["conv.weight"] + 1e-30j * direction
        expected = loss_with_kernel_at(position, kernel).imag / 1e-30
        got = np.sum(term.parts.gradients[position] * direction)
        assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("transpose", [False, True])
def test_soft_pair_has_each_task_and_the_pull(transpose):
    model_a = MLP([3, 4, 2])
    model_b = nn.Sequential([nn.Dense("enc", 3, 4), nn.Tanh(), nn.Dense("dec", 4, 3)],
                            loss=nn.MSE())
    pairs = {"fc1.weight": transposed("dec.weight") if transpose else "enc.weight"}
    pair = TiedPair(model_a, model_b, pairs, lam=0.7)
    rng = np.random.default_rng(3)
    params_a, params_b = pair.init(3)
    xa, xb = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    batch_a, batch_b = (xa, np.array([0, 1, 1, 0])), (xb, xb)
    found = pair_contributions(pair, params_a, params_b, batch_a, batch_b)
    task, pull = found["A:fc1.weight"].terms
    assert (task.role, task.model, pull.role) == ("task", "model_a", "pull")
    np.testing.assert_array_equal(task.gradient, model_a.loss_and_grads(params_a, *batch_a)[1]
                                  ["fc1.weight"])
    name_b = "dec.weight" if transpose else "enc.weight"
    b = params_b[name_b].T if transpose else params_b[name_b]
    np.testing.assert_allclose(pull.gradient, 2 * 0.7 * (params_a["fc1.weight"] - b),
                               rtol=1e-15)
    task_b, pull_b = found[f"B:{name_b}"].terms
    expected_pull_b = -2 * 0.7 * (params_a["fc1.weight"] - b)
    np.testing.assert_allclose(pull_b.gradient, expected_pull_b.T if transpose
                               else expected_pull_b, rtol=1e-15)
    summary = summarize(found["A:fc1.weight"])
    assert summary.pull_to_task == pytest.approx(
        np.linalg.norm(pull.gradient) / np.linalg.norm(task.gradient), rel=1e-14)


def test_hard_pair_has_both_models_uses_of_the_shared_array():
    model_a = MLP([3, 4, 2])
    model_b = nn.Sequential([nn.Dense("enc", 3, 4), nn.Tanh(), nn.Dense("dec", 4, 3)],
                            loss=nn.MSE())
    pair = TiedPair(model_a, model_b, {"fc1.weight": transposed("dec.weight")}, mode="hard")
    rng = np.random.default_rng(4)
    params_a, params_b = pair.init(4)
    xa, xb = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    found = pair_contributions(pair, params_a, params_b, (xa, np.array([0, 1, 1, 0])),
                               (xb, xb))
    assert "B:dec.weight" not in found
    from_a, from_b = found["A:fc1.weight"].terms
    assert (from_a.model, from_b.model, from_b.slot, from_b.transposed) == \
        ("model_a", "model_b", "dec.weight", True)
    full_b = {**params_b, "dec.weight": params_a["fc1.weight"].T}
    full_b = {key: full_b[key] for key in model_b.parameter_shapes()}
    np.testing.assert_array_equal(from_b.gradient,
                                  model_b.loss_and_grads(full_b, xb, xb)[1]["dec.weight"].T)


def test_anchored_model_has_task_and_pull():
    model = MLP([3, 4, 2])
    anchored = AnchoredModel(model, lam=0.2, names=["fc1.weight"])
    rng = np.random.default_rng(5)
    params, x, y = model.init(5), rng.standard_normal((4, 3)), np.array([0, 1, 1, 0])
    found = anchored_contributions(anchored, params, x, y)
    task, pull = found["fc1.weight"].terms
    np.testing.assert_allclose(pull.gradient, 2 * 0.2 * params["fc1.weight"], rtol=1e-15)
    assert [term.role for term in found["fc2.weight"].terms] == ["task"]


def test_summary_shares_and_cosines_by_hand():
    terms = (Term("a", "task", "model", "a", False, np.array([1.0, 0.0])),
             Term("b", "task", "model", "b", False, np.array([1.0, 1.0])))
    summary = summarize(Contributions("w", np.array([2.0, 1.0]), terms))
    # s = (2, 1), ||s||^2 = 5: shares <a, s> / 5 = 2/5 and <b, s> / 5 = 3/5.
    assert summary.shares == pytest.approx((0.4, 0.6), rel=1e-15)
    assert summary.norms == pytest.approx((1.0, np.sqrt(2)), rel=1e-15)
    assert summary.cosines[0, 1] == pytest.approx(1 / np.sqrt(2), rel=1e-15)
    assert summary.norm == pytest.approx(np.sqrt(5), rel=1e-15)
    assert summary.pull_to_task is None
    fighting = (Term("a", "task", "model", "a", False, np.array([3.0])),
                Term("pull", "pull", "penalty", None, False, np.array([-1.0])))
    summary = summarize(Contributions("w", np.array([2.0]), fighting))
    assert summary.shares == pytest.approx((1.5, -0.5), rel=1e-15)
    assert summary.cosines[0, 1] == -1.0
    assert summary.pull_to_task == pytest.approx(1 / 3, rel=1e-15)


def test_bad_arguments_are_clear_errors():
    model = MLP([2, 3])
    with pytest.raises(TypeError, match="model: expected a refimpl Sequential"):
        model_contributions("mlp", {}, np.zeros((1, 2)), np.array([0]))
    with pytest.raises(ValueError, match="params"):
        model_contributions(model, {"fc1.weight": np.zeros((3, 2))}, np.zeros((1, 2)),
                            np.array([0]))
    with pytest.raises(TypeError, match="pair: expected a refimpl TiedPair"):
        pair_contributions(model, {}, {}, (None, None), (None, None))
    with pytest.raises(TypeError, match="anchored: expected a refimpl AnchoredModel"):
        anchored_contributions(model, {}, None, None)
    with pytest.raises(TypeError, match="found: expected Contributions"):
        summarize({})


def test_inputs_are_not_mutated():
    model = nn.Sequential([nn.Dense("enc", 3, 2), nn.Tanh(), nn.Dense("dec", 2, 3)],
                          loss=nn.MSE(), share={"dec.weight": transposed("enc.weight")})
    params = model.init(0)
    copies = {key: value.copy() for key, value in params.items()}
    x = np.random.default_rng(0).standard_normal((2, 3))
    x_copy = x.copy()
    model_contributions(model, params, x, x)
    for key in params:
        np.testing.assert_array_equal(params[key], copies[key])
    np.testing.assert_array_equal(x, x_copy)


def test_hard_pair_through_a_tied_autoencoder_transposes_twice():
    # B's decoder reads B's encoder transposed, and B's encoder reads A's fc1 transposed: the
    # decoder's use is A's fc1 as it is (two transposes cancel).
    model_b = nn.Sequential([nn.Dense("enc", 3, 4), nn.Tanh(), nn.Dense("dec", 4, 3)],
                            loss=nn.MSE(), share={"dec.weight": transposed("enc.weight")})
    pair = TiedPair(MLP([4, 3, 2]), model_b, {"fc1.weight": transposed("enc.weight")},
                    mode="hard")
    case = pair_case("double-transpose", pair, (4,), (3,), 3, 4, seed=6, autoencoder_b=True)
    found = assert_terms_sum_to_gradients(case)
    labels = [(t.model, t.slot, t.transposed) for t in found["A:fc1.weight"].terms]
    assert labels == [("model_a", "fc1.weight", False), ("model_b", "enc.weight", True),
                      ("model_b", "dec.weight", False)]


# --- the new forms of sharing: each term by an independent route ------------------------


def test_rnn_step_parts_are_the_derivative_through_that_step_alone():
    case = get_case("sequence-rnn-classifier")
    model = nn.Sequential.from_config(case.config["model"])
    x, y = case.inputs["x"], case.inputs["y"]
    term, = model_contributions(model, case.params, x, y)["rnn.weight_hh"].terms
    steps = x.shape[1]
    assert term.parts.axes == ("T",) and term.parts.gradients.shape == (steps, 5, 5)
    # Step 0 reads h_{-1} = 0: W_hh is not used there.
    assert np.all(term.parts.gradients[0] == 0)
    rnn = model.layers[0]
    unrolled = nn.UnrolledRNN("rnn", rnn.input_size, rnn.hidden_size, steps)
    twin = nn.Sequential([unrolled, *model.layers[1:]], loss=model.loss_spec)
    rng = np.random.default_rng(7)
    for t in range(1, steps):
        # Only step t's copy of W_hh moves: the complex step on the forward pass alone.
        direction = rng.standard_normal((5, 5))
        params = unrolled.copies(case.params)
        params[f"rnn.weight_hh_{t}"] = params[f"rnn.weight_hh_{t}"] + 1e-30j * direction
        expected = twin.loss(params, x, y).imag / 1e-30
        got = np.sum(term.parts.gradients[t] * direction)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_embedding_occurrences_are_the_derivative_at_that_position_alone():
    case = get_case("sequence-embedding-repeats")
    model = nn.Sequential.from_config(case.config["model"])
    x, y = case.inputs["x"], case.inputs["y"]
    term, = model_contributions(model, case.params, x, y)["embed.weight"].terms
    assert term.parts.axes == ("N", "T")
    np.testing.assert_array_equal(term.parts.rows, x)
    # The rest of the model on the looked-up vectors; one position's vector moved alone.
    rest = nn.Sequential(model.layers[1:], loss=model.loss_spec)
    rest_params = {key: value for key, value in case.params.items() if key != "embed.weight"}
    looked_up = case.params["embed.weight"][x]                      # (N, T, D)
    rng = np.random.default_rng(8)
    for n, t in [(0, 1), (0, 2), (1, 0), (1, 5)]:
        direction = rng.standard_normal(looked_up.shape[-1])
        moved = looked_up.astype(complex)
        moved[n, t] += 1e-30j * direction
        expected = rest.loss(rest_params, moved, y).imag / 1e-30
        got = np.sum(term.parts.gradients[n, t] * direction)
        assert got == pytest.approx(expected, rel=1e-12)
    # Row 2 is named six times, row 1 once (REPEATED_TOKENS); row summary by hand.
    rows = row_summary(term, 4)
    counts = dict(zip(rows.rows.tolist(), rows.occurrences.tolist(), strict=True))
    assert counts == {0: 3, 1: 1, 2: 6, 3: 2}
    norms = np.linalg.norm(term.gradient, axis=1)
    assert rows.norms.tolist() == sorted(norms.tolist(), reverse=True)
    each = np.linalg.norm(term.parts.gradients, axis=-1)
    np.testing.assert_allclose(rows.occurrence_norms[rows.rows == 2], each[x == 2].sum(),
                               rtol=1e-14)
    assert row_summary(term, 4, top=2).rows.tolist() == rows.rows[:2].tolist()


def test_tied_language_model_has_the_embedding_occurrences_and_the_output_use():
    case = get_case("sequence-tied-lm")
    found = contributions_of(case)
    embedding, output = found["embed.weight"].terms
    assert (embedding.slot, output.slot) == ("embed.weight", "out.weight")
    assert embedding.parts.rows is not None and output.parts is None
    untied = get_case("sequence-untied-lm")   # same point, the output layer stored apart
    params = {**untied.params, "out.weight": case.params["embed.weight"]}
    _, grads = untied.loss_and_grads(params)
    np.testing.assert_allclose(output.gradient, grads["out.weight"], rtol=1e-13)
    np.testing.assert_allclose(embedding.gradient, grads["embed.weight"], rtol=1e-13)


def test_siamese_branch_is_the_derivative_through_that_branch_alone():
    case = get_case("siamese-triplet-all-active")
    model = nn.Siamese.from_config(case.config["siamese"])
    inputs = [case.inputs[name] for name in model.branch_names]
    found = siamese_contributions(model, case.params, *inputs)
    terms = found["fc1.weight"].terms
    assert [t.branch for t in terms] == ["anchor", "positive", "negative"]
    rng = np.random.default_rng(9)
    for index, term in enumerate(terms):
        direction = rng.standard_normal(term.gradient.shape)
        moved = {**case.params, "fc1.weight": case.params["fc1.weight"] + 1e-30j * direction}
        embeddings = [model.tower.forward(moved if i == index else case.params, x)
                      for i, x in enumerate(inputs)]
        value, _ = model.loss_spec.forward(tuple(embeddings), None)
        expected = np.asarray(value).imag / 1e-30
        assert np.sum(term.gradient * direction) == pytest.approx(expected, rel=1e-12)


def test_micro_batch_terms_are_each_micro_batch_gradient_times_its_share():
    model = MLP([3, 4, 2])
    rng = np.random.default_rng(10)
    params, x, y = model.init(10), rng.standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    found = microbatch_contributions(model, params, (x, y), [1, 4])
    first, second = found["fc1.weight"].terms
    assert (first.micro_batch, second.micro_batch) == (0, 1)
    # The model's own loss_and_grads on each micro-batch, weighted 1/5 and 4/5 (not 1/2).
    np.testing.assert_allclose(first.gradient,
                               0.2 * model.loss_and_grads(params, x[:1], y[:1])[1]["fc1.weight"],
                               rtol=1e-15)
    np.testing.assert_allclose(second.gradient,
                               0.8 * model.loss_and_grads(params, x[1:], y[1:])[1]["fc1.weight"],
                               rtol=1e-15)
    np.testing.assert_array_equal(found["fc1.weight"].gradient,
                                  model.loss_and_grads(params, x, y)[1]["fc1.weight"])


def test_a_tying_penalty_is_one_term_of_the_step_not_one_per_micro_batch():
    case = get_case("microbatch-tied-soft")
    found = contributions_of(case)
    terms = found["A:fc1.weight"].terms
    assert [t.role for t in terms] == ["task", "task", "pull"]
    pair = TiedPair.from_config(case.config["base"]["pair"])
    params_a, params_b = pair.split(case.params)
    np.testing.assert_allclose(terms[-1].gradient,
                               2 * 0.4 * (params_a["fc1.weight"] - params_b["fc1.weight"]),
                               rtol=1e-15)
    assert [t.micro_batch for t in found["B:fc1.weight"].terms] == [0, 1, None]


def test_bad_arguments_of_the_new_forms_are_clear_errors():
    model = MLP([2, 3])
    x, y = np.zeros((3, 2)), np.array([0, 1, 2])
    with pytest.raises(TypeError, match="model: expected a refimpl Siamese"):
        siamese_contributions(model, model.init(0), x, x)
    with pytest.raises(ValueError, match="splits: micro-batch sizes \\[1, 1\\] sum to 2; "
                                         "they must partition the batch of 3"):
        microbatch_contributions(model, model.init(0), (x, y), [1, 1])
    with pytest.raises(TypeError, match="splits\\[1\\]: expected an integer micro-batch size, "
                                        "got float 2.0"):
        microbatch_contributions(model, model.init(0), (x, y), [1, 2.0])
    with pytest.raises(TypeError, match="splits\\[0\\]: expected a non-empty list of "
                                        "integer indices \\(or give every micro-batch as a size"):
        microbatch_contributions(model, model.init(0), (x, y), [[0, 1.5], [2]])
    with pytest.raises(TypeError, match="splits_b: required for a TiedPair"):
        microbatch_contributions(TiedPair(MLP([2, 3]), MLP([2, 3]), {"fc1.weight": "fc1.weight"},
                                          lam=0.1),
                                 {}, ((x, y), (x, y)), [3])
    with pytest.raises(TypeError, match="splits_b: .* refused for any other model"):
        microbatch_contributions(model, model.init(0), (x, y), [3], splits_b=[3])


@pytest.mark.parametrize("model, batch, expected", [
    (MLP([2, 3]), (np.zeros((3, 2)), np.array([0, 1, 2]), np.zeros(3)),
     r"^batch: expected \(x, y\) for this model, got a tuple of 3"),
    (MLP([2, 3]), (np.zeros((3, 2)),), r"^batch: expected \(x, y\) for this model, got a tuple "
                                       r"of 1"),
    (MLP([2, 3]), np.zeros((3, 2)), r"^batch: expected \(x, y\) for this model, got ndarray"),
    (nn.Siamese(nn.Sequential([nn.Dense("fc", 2, 2)])), (np.zeros((3, 2)),) * 2,
     r"^batch: expected \(anchor, positive, negative\) for this model, got a tuple of 2"),
    (nn.Siamese(nn.Sequential([nn.Dense("fc", 2, 2)]), nn.ContrastiveLoss()),
     (np.zeros((3, 2)),) * 2, r"^batch: expected \(x1, x2, y\) for this model"),
])
def test_micro_batch_contributions_name_a_batch_of_the_wrong_arity(model, batch, expected):
    with pytest.raises(TypeError, match=expected):
        microbatch_contributions(model, model.init(0), batch, [1, 2])


def test_micro_batch_contributions_of_a_pair_name_the_wrong_arity():
    pair = TiedPair(MLP([2, 3]), MLP([2, 3]), {"fc1.weight": "fc1.weight"}, lam=0.1)
    x, y = np.zeros((3, 2)), np.array([0, 1, 2])
    with pytest.raises(TypeError, match=r"^batch: expected \(\(xa, ya\), \(xb, yb\)\) for "
                                        r"this model, got a tuple of 4"):
        microbatch_contributions(pair, pair.join(*pair.init(0)), (x, y, x, y), [3], splits_b=[3])
    with pytest.raises(TypeError, match=r"^batch\[1\]: expected \(xb, yb\) for this model, got "
                                        r"a tuple of 3"):
        microbatch_contributions(pair, pair.join(*pair.init(0)), ((x, y), (x, y, y)), [3],
                                 splits_b=[3])


def test_the_docstring_examples_run():
    for module in (contributions_module, forms_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
