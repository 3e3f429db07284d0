"""Built-in sequence cases: embeddings, a tied language model, recurrence over time.

Where sharing happens in practice: an embedding's rows shared by every position that names
them (repeated indices), a language model whose output layer is its input embedding (``share
{"out.weight": "embed.weight"}``, same (V, D) layout) next to its untied twin, and an RNN
whose weights are used at every time step (sequence classification through ``LastStep``,
sequence labelling through ``Dense`` and cross-entropy over ``(N, T, K)``, a relu RNN).

Inputs: ``x`` int64 token indices ``(N, T)`` for the models that start with an embedding,
float64 ``(N, T, D)`` otherwise; ``y`` int64 labels ``(N,)`` (classification) or ``(N, T)``
(a label per position; the loss is the mean over all ``N * T`` positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...nn import RNN, Dense, Embedding, LastStep, Sequential, SoftmaxCrossEntropy, Tanh
from . import Case, describe_inputs, resolved_share

#: Language-model sizes: vocabulary, embedding size (= the RNN's hidden size, so that the
#: output layer's (V, D) weight can be the embedding's), time steps, batch.
LM_SIZES = {"vocabulary": 11, "embedding_dim": 4, "steps": 5, "batch": 3}

#: Token ids of the repeated-indices case: row 2 is named six times, row 1 once, row 3 twice.
REPEATED_TOKENS = ((0, 2, 2, 1, 2, 0), (2, 3, 3, 2, 0, 2))


def sequence_case(name: str, model: Sequential, x: np.ndarray, y: np.ndarray, seed: int,
                  extra_config: dict[str, Any] | None = None) -> Case:
    """A case of one sequence model at ``model.init(seed)`` with the data ``x``, ``y``.

    Parameters
    ----------
    name : str
        The case's name.
    model : refimpl.nn.Sequential
        With a loss.
    x : ndarray
        int64 indices (N, T) or float64 (N, T, D).
    y : ndarray of int64
        Labels (N,) or (N, T).
    seed : int
        Of ``model.init``.
    extra_config : dict, optional
        Added to the configuration.

    Returns
    -------
    Case
        Of kind "sequence", with ``evaluate`` (the floor perturbs the float data too; integer
        indices and labels stay as they are).
    """
    config = {"model": model.config(), "input_shape": list(x.shape), "seed": seed,
              "resolved_share": resolved_share(model), **(extra_config or {}),
              "inputs": describe_inputs({"x": x, "y": y})}
    return Case(
        name=name, kind="sequence", config=config, params=model.init(seed),
        inputs={"x": x, "y": y},
        loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
        outputs=lambda p: {"out": model.forward(p, x)},
        evaluate=lambda p, data: (*model.loss_and_grads(p, data["x"], data["y"]),
                                  {"out": model.forward(p, data["x"])}),
    )


def language_model(tied: bool) -> Sequential:
    """``Embedding("embed", V, D) -> RNN("rnn", D, D) -> Dense("out", D, V)``, cross-entropy
    per position; ``tied``: the output weight is the embedding (``out.weight`` not stored)."""
    vocabulary, dim = LM_SIZES["vocabulary"], LM_SIZES["embedding_dim"]
    share = {"out.weight": "embed.weight"} if tied else None
    return Sequential([Embedding("embed", vocabulary, dim), RNN("rnn", dim, dim),
                       Dense("out", dim, vocabulary)], loss=SoftmaxCrossEntropy(), share=share)


def _next_tokens(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of token sequences: inputs (N, T) and the next token at each position."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, LM_SIZES["vocabulary"], size=(LM_SIZES["batch"],
                                                            LM_SIZES["steps"] + 1))
    return tokens[:, :-1], tokens[:, 1:]


def _float_sequences(seed: int, shape: tuple[int, int, int], classes: int,
                     per_position: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    labels_shape = shape[:2] if per_position else shape[:1]
    return x, rng.integers(0, classes, size=labels_shape).astype(np.int64)


def cases() -> list[Case]:
    """The sequence cases of the catalogue."""
    lm_x, lm_y = _next_tokens(300)
    repeated_x = np.array(REPEATED_TOKENS, dtype=np.int64)
    repeated_y = np.random.default_rng(302).integers(0, 3, size=repeated_x.shape)
    embedding_model = Sequential([Embedding("embed", 4, 3), Tanh(), Dense("fc", 3, 3)],
                                 loss=SoftmaxCrossEntropy())
    classifier = Sequential([RNN("rnn", 3, 5), LastStep(), Dense("fc", 5, 3)],
                            loss=SoftmaxCrossEntropy())
    labeller = Sequential([RNN("rnn", 2, 4), Dense("fc", 4, 3)], loss=SoftmaxCrossEntropy())
    relu = Sequential([RNN("rnn", 3, 6, nonlinearity="relu"), LastStep(), Dense("fc", 6, 3)],
                      loss=SoftmaxCrossEntropy())
    return [
        sequence_case("sequence-tied-lm", language_model(True), lm_x, lm_y, seed=300,
                      extra_config={"sizes": LM_SIZES}),
        sequence_case("sequence-untied-lm", language_model(False), lm_x, lm_y, seed=300,
                      extra_config={"sizes": LM_SIZES}),
        sequence_case("sequence-embedding-repeats", embedding_model, repeated_x,
                      repeated_y.astype(np.int64), seed=302),
        sequence_case("sequence-rnn-classifier", classifier,
                      *_float_sequences(303, (4, 6, 3), 3, False), seed=303),
        sequence_case("sequence-rnn-labelling", labeller,
                      *_float_sequences(304, (3, 5, 2), 3, True), seed=304),
        # seed 323: every pre-activation >= 0.03 from the kink, every hidden unit active
        sequence_case("sequence-rnn-relu", relu, *_float_sequences(323, (4, 5, 3), 3, False),
                      seed=323),
    ]
