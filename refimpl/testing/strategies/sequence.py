"""Strategies for sequence models: embeddings, RNNs, tied language models, whole cases.

Every drawn case is float32-resolvable (as :func:`refimpl.testing.strategies.cases`): some
gradient is non-zero and no tensor is below float32's resolution floor, else the draw is
rejected. Token indices are drawn from a small vocabulary and always repeat some row (when
there are two positions or more): the scatter-add of the embedding's gradient is the point.

``labels``: ``"last"`` models end with :class:`~refimpl.nn.LastStep` and have a label per
sequence ``(N,)`` (for a language model: the token after the sequence); ``"positions"``
models have a label per position ``(N, T)`` and the loss is the mean over all ``N * T``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from ..._validate import check_int
from ...nn import RNN, Dense, Embedding, LastStep, Sequential, SoftmaxCrossEntropy, Tanh
from ...nn.base import Layer
from ..cases import Case, describe_inputs, resolved_share
from ._checks import _choices, _optional_bool, _positive, _range
from .drawn_cases import _tests_something

__all__ = ["SEQUENCE_KINDS", "LABELS", "embedding_models", "rnns", "tied_lms",
           "sequence_cases"]

#: What :func:`sequence_cases` can draw.
SEQUENCE_KINDS = ("embedding", "rnn", "tied-lm")
#: Where the labels are: one per sequence, or one per position.
LABELS = ("last", "positions")
_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def _head(layers: list[Layer], labels: str, last: Dense, share=None) -> Sequential:
    """``layers`` then (LastStep for "last") then ``last``, cross-entropy."""
    middle = [LastStep()] if labels == "last" else []
    return Sequential([*layers, *middle, last], loss=SoftmaxCrossEntropy(), share=share)


def embedding_models(*, max_vocabulary: int = 6, max_dim: int = 4, max_classes: int = 4,
                     labels: Iterable[str] | None = None):
    """``Embedding("embed", V, D) -> Tanh -> [LastStep] -> Dense("fc", D, K)``.

    Parameters
    ----------
    max_vocabulary, max_dim, max_classes : int
        Upper bounds of V (>= 1), D (>= 1) and K (>= 2).
    labels : iterable of str, optional
        Any of :data:`LABELS` (default both).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.nn.Sequential`.
    """
    max_vocabulary = check_int(max_vocabulary, "max_vocabulary", 1)
    max_dim = check_int(max_dim, "max_dim", 1)
    max_classes = check_int(max_classes, "max_classes", 2)
    labels = _choices(labels, "labels", LABELS)

    @st.composite
    def draw(draw):
        vocabulary, dim = draw(st.integers(1, max_vocabulary)), draw(st.integers(1, max_dim))
        return _head([Embedding("embed", vocabulary, dim), Tanh()],
                     draw(st.sampled_from(labels)),
                     Dense("fc", dim, draw(st.integers(2, max_classes))))

    return draw()


def rnns(*, max_input: int = 3, max_hidden: int = 4, max_classes: int = 4,
         nonlinearities: Iterable[str] | None = None, bias: bool | None = None,
         labels: Iterable[str] | None = None):
    """``RNN("rnn", D, H) -> [LastStep] -> Dense("fc", H, K)``, float inputs (N, T, D).

    Parameters
    ----------
    max_input, max_hidden, max_classes : int
        Upper bounds of D, H (>= 1) and K (>= 2).
    nonlinearities : iterable of str, optional
        "tanh" and / or "relu" (default both).
    bias : bool, optional
        The RNN's biases; None draws it.
    labels : iterable of str, optional
        Any of :data:`LABELS` (default both).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.nn.Sequential`.
    """
    max_input = check_int(max_input, "max_input", 1)
    max_hidden = check_int(max_hidden, "max_hidden", 1)
    max_classes = check_int(max_classes, "max_classes", 2)
    nonlinearities = _choices(nonlinearities, "nonlinearities", ("tanh", "relu"))
    bias = _optional_bool(bias, "bias")
    labels = _choices(labels, "labels", LABELS)

    @st.composite
    def draw(draw):
        inputs, hidden = draw(st.integers(1, max_input)), draw(st.integers(1, max_hidden))
        rnn = RNN("rnn", inputs, hidden, nonlinearity=draw(st.sampled_from(nonlinearities)),
                  bias=draw(st.booleans()) if bias is None else bias)
        return _head([rnn], draw(st.sampled_from(labels)),
                     Dense("fc", hidden, draw(st.integers(2, max_classes))))

    return draw()


def tied_lms(*, max_vocabulary: int = 8, max_dim: int = 4, tied: bool | None = True,
             middles: Iterable[str] | None = None, labels: Iterable[str] | None = None):
    """Language models ``Embedding("embed", V, D) -> middle -> [LastStep] -> Dense("out", D,
    V)``, the output weight tied to the embedding (``share={"out.weight": "embed.weight"}``).

    Parameters
    ----------
    max_vocabulary, max_dim : int
        Upper bounds of V (>= 2) and D (>= 1).
    tied : bool, optional
        True (default) the tied model, False its untied twin, None draws it.
    middles : iterable of str, optional
        "rnn" (a tanh ``RNN("rnn", D, D)``) and / or "dense" (``Dense("mid", D, D) ->
        Tanh``); default both.
    labels : iterable of str, optional
        Any of :data:`LABELS` (default both).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.nn.Sequential`.
    """
    max_vocabulary = check_int(max_vocabulary, "max_vocabulary", 2)
    max_dim = check_int(max_dim, "max_dim", 1)
    tied = _optional_bool(tied, "tied")
    middles = _choices(middles, "middles", ("rnn", "dense"))
    labels = _choices(labels, "labels", LABELS)

    @st.composite
    def draw(draw):
        vocabulary, dim = draw(st.integers(2, max_vocabulary)), draw(st.integers(1, max_dim))
        middle = ([RNN("rnn", dim, dim)] if draw(st.sampled_from(middles)) == "rnn"
                  else [Dense("mid", dim, dim), Tanh()])
        is_tied = draw(st.booleans()) if tied is None else tied
        return _head([Embedding("embed", vocabulary, dim), *middle],
                     draw(st.sampled_from(labels)), Dense("out", dim, vocabulary),
                     share={"out.weight": "embed.weight"} if is_tied else None)

    return draw()


def _indices(rng: np.random.Generator, shape: tuple[int, int], vocabulary: int) -> np.ndarray:
    """Token ids with at least one repeated row when there are two positions or more."""
    tokens = rng.integers(0, vocabulary, size=shape)
    if tokens.size >= 2:
        flat = tokens.reshape(-1)
        first, second = rng.choice(flat.size, size=2, replace=False)
        flat[second] = flat[first]
    return tokens.astype(np.int64)


def _sequence_case(model: Sequential, seed: int, batch: int, steps: int) -> Case:
    """A drawn case of ``model`` at ``model.init(seed)`` with data from ``seed``."""
    rng = np.random.default_rng(seed)
    first = model.layers[0]
    if isinstance(first, Embedding):
        x = _indices(rng, (batch, steps), first.num_embeddings)
    else:
        x = rng.standard_normal((batch, steps, first.input_size))
    out_shape = model.output_shape(x.shape)
    y = rng.integers(0, out_shape[-1], size=out_shape[:-1]).astype(np.int64)
    config = {"model": model.config(), "input_shape": list(x.shape),
              "resolved_share": resolved_share(model), "inputs": describe_inputs({"x": x, "y": y})}
    return Case(name="drawn-sequence", kind="sequence", config=config, params=model.init(seed),
                inputs={"x": x, "y": y}, loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
                outputs=lambda p: {"out": model.forward(p, x)},
                evaluate=lambda p, data: (*model.loss_and_grads(p, data["x"], data["y"]),
                                          {"out": model.forward(p, data["x"])}))


def _near_relu_kink(model: Sequential, case: Case, margin: float) -> bool:
    """Whether a relu RNN's pre-activation lies within ``margin`` of 0 at the point."""
    first = model.layers[0]
    if not isinstance(first, RNN) or first.nonlinearity != "relu":
        return False
    _, cache = first.forward(case.inputs["x"], {k.split(".", 1)[1]: v
                                                for k, v in case.params.items()
                                                if k.startswith("rnn.")})
    return bool(np.abs(cache.pre).min() < margin)


def sequence_cases(*, kinds: Iterable[str] | None = None, labels: Iterable[str] | None = None,
                   min_batch: int = 1, max_batch: int = 3, min_steps: int = 1,
                   max_steps: int = 4, kink_margin: float = 1e-3):
    """Whole sequence cases (kind "sequence"), like a catalogue case.

    Parameters
    ----------
    kinds : iterable of str, optional
        Any of :data:`SEQUENCE_KINDS`: "embedding" (:func:`embedding_models`), "rnn"
        (:func:`rnns`), "tied-lm" (:func:`tied_lms`, tied or untied); default all.
    labels : iterable of str, optional
        Any of :data:`LABELS` (default both).
    min_batch, max_batch, min_steps, max_steps : int
        Ranges of N and T.
    kink_margin : float
        A relu RNN's pre-activations stay this far from 0 (draws nearer are rejected), so
        that central differences measure a derivative.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.testing.cases.Case`: ``x`` int64 (N, T) token ids (with a
        repeat) or float64 (N, T, D); ``y`` int64 (N,) or (N, T); ``model.init`` at a drawn
        seed (PyTorch's initialisations).

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> import refimpl
    >>> @settings(max_examples=5)
    ... @given(sequence_cases(kinds=["tied-lm"], labels=["last"]))
    ... def test(case):
    ...     assert refimpl.check_gradients(case.loss_and_grads, case.params).ok
    >>> test()
    """
    kinds = _choices(kinds, "kinds", SEQUENCE_KINDS)
    labels = _choices(labels, "labels", LABELS)
    min_batch, max_batch = _range(min_batch, max_batch, "min_batch", "max_batch", 1)
    min_steps, max_steps = _range(min_steps, max_steps, "min_steps", "max_steps", 1)
    kink_margin = _positive(kink_margin, "kink_margin")
    models = {"embedding": embedding_models(labels=labels), "rnn": rnns(labels=labels),
              "tied-lm": tied_lms(tied=None, labels=labels)}

    @st.composite
    def draw(draw):
        model = draw(models[draw(st.sampled_from(kinds))])
        case = _sequence_case(model, draw(_SEEDS), draw(st.integers(min_batch, max_batch)),
                              draw(st.integers(min_steps, max_steps)))
        if _near_relu_kink(model, case, kink_margin) or not _tests_something(case):
            reject()
        return case

    return draw()
