"""Strategies for Siamese models and accumulated micro-batches: drawn towers, metric losses,
data and margins; drawn micro-batch splits; whole Siamese and micro-batch cases.

Towers are MLPs with smooth activations (tanh, sigmoid, softplus, identity: the metric
losses have kinks of their own, kept away from by construction, and a drawn ReLU tower would
need the bias construction of :mod:`.kink_free` on every branch at once). A tower ends with a
Dense layer without bias or with an activation: distances are translation invariant, so the
bias of a final Dense layer would have a gradient of exactly 0, which no dtype can judge.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from ..._validate import check_int
from ...nn import MLP, ContrastiveLoss, Siamese, TripletMarginLoss
from ...nn.activations import Sigmoid, Softplus, Tanh
from ...nn.sequential import Sequential
from ...tying import TiedPair
from ..cases import Case
from ..cases.microbatch import microbatch_case
from ..cases.siamese import input_names, kink_distances, siamese_case
from ..oracle import unresolved_tensors
from ._checks import _bools, _choices, _positive, _range
from .drawn_cases import RESOLVED_IN
from .drawn_cases import cases as drawn_cases

__all__ = ["SMOOTH_ACTIVATIONS", "METRIC_LOSSES", "siamese_models", "siamese_cases",
           "micro_batch_splits", "microbatch_cases"]

#: The activations of drawn towers (no kinks).
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "identity")
#: The metric losses by name.
METRIC_LOSSES = {"triplet": TripletMarginLoss, "contrastive": ContrastiveLoss}
_FINAL = {"tanh": Tanh, "sigmoid": Sigmoid, "softplus": Softplus}
_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def siamese_models(*, losses: Iterable[str] | None = None,
                   activations: Iterable[str] | None = None, max_hidden: int = 2,
                   max_width: int = 5, margin: float | None = 1.0):
    """``Siamese`` models: a drawn MLP tower and a metric loss.

    Parameters
    ----------
    losses : iterable of str, optional
        "triplet" and / or "contrastive" (default both).
    activations : iterable of str, optional
        A subset of :data:`SMOOTH_ACTIVATIONS` (default all).
    max_hidden, max_width : int
        Hidden layers (0 to ``max_hidden``) and the largest layer size.
    margin : float, optional
        The loss's margin (> 0); None draws it in [0.1, 3].

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.nn.Siamese`.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(siamese_models(losses=["triplet"]))
    ... def test(model):
    ...     assert model.loss_spec.branches == 3
    >>> test()
    """
    losses = _choices(losses, "losses", METRIC_LOSSES)
    activations = _choices(activations, "activations", SMOOTH_ACTIVATIONS)
    max_hidden = check_int(max_hidden, "max_hidden", 0)
    max_width = check_int(max_width, "max_width", 1)
    margins = st.floats(0.1, 3.0) if margin is None else st.just(_positive(margin, "margin"))

    @st.composite
    def draw_model(draw):
        widths = st.integers(1, max_width)
        sizes = [draw(widths) for _ in range(draw(st.integers(0, max_hidden)) + 1)]
        sizes.append(draw(st.integers(min(2, max_width), max_width)))   # the embedding D
        activation = draw(st.sampled_from(activations))
        ends_with_activation = activation in _FINAL and draw(st.booleans())
        tower = MLP(sizes, activation=activation, loss=None)
        layers = list(tower.layers)
        if ends_with_activation:
            layers.append(_FINAL[activation]())
        else:   # the final Dense without bias
            last = layers[-1]
            layers[-1] = type(last)(last.name, last.in_features, last.out_features, bias=False)
        loss = METRIC_LOSSES[draw(st.sampled_from(losses))]
        eps = draw(st.sampled_from([1e-6, 0.0]))
        return Siamese(Sequential(layers), loss(margin=draw(margins), eps=eps))

    return draw_model()


def _siamese_data(rng: np.random.Generator, model: Siamese, size: int) -> dict[str, np.ndarray]:
    """Standard-normal branch inputs; contrastive: random labels, similar pairs nearby."""
    features = model.tower.layers[0].in_features
    inputs = {name: rng.standard_normal((size, features)) for name in model.branch_names}
    if model.loss_spec.needs_target:
        y = (rng.random(size) < 0.5).astype(np.int64)
        nearby = inputs["x1"] + 0.3 * rng.standard_normal((size, features))
        inputs["x2"] = np.where(y[:, None] == 1, nearby, inputs["x2"])
        inputs["y"] = y
    return inputs


def siamese_cases(*, losses: Iterable[str] | None = None,
                  activations: Iterable[str] | None = None, min_batch: int = 1,
                  max_batch: int = 4, gap: float = 0.05):
    """Whole Siamese cases (kind "siamese"), every row at least ``gap`` from its kink.

    The margin is placed relative to the drawn point: one drawn row is put at a drawn distance
    in ``(gap, max(1, 2 gap)]`` inside its hinge (so some branch carries gradient), and the
    draw is rejected if another row then lies within ``gap`` of its kink, if every gradient
    is 0, or if a tensor cannot be judged in float32 (:data:`RESOLVED_IN`).

    Parameters
    ----------
    losses, activations
        As for :func:`siamese_models`.
    min_batch, max_batch : int
        Range of the batch size N.
    gap : float
        The distance of every row from the triplet hinge / the contrastive margin; > 0.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.testing.cases.Case`.
    """
    models = siamese_models(losses=losses, activations=activations)
    min_batch, max_batch = _range(min_batch, max_batch, "min_batch", "max_batch", 1)
    gap = _positive(gap, "gap")

    @st.composite
    def draw_case(draw):
        drawn = draw(models)
        size = draw(st.integers(min_batch, max_batch))
        seed = draw(_SEEDS)
        rng = np.random.default_rng(seed)
        params = drawn.init(seed % 2**31)
        inputs = _siamese_data(rng, drawn, size)
        z = kink_distances(drawn, params, inputs, margin=0.0)   # each row's kink distance - margin
        finite = z[np.isfinite(z)]
        if finite.size:
            # One row (among those a positive margin can reach) a drawn distance inside.
            reachable = finite[finite < gap]
            offset = draw(st.floats(gap * (1 + 1e-6), max(1.0, 2 * gap)))  # >= gap, rounded
            margin = offset - float(draw(st.sampled_from(sorted(reachable.tolist())))) \
                if reachable.size else offset
            drawn = Siamese(drawn.tower, type(drawn.loss_spec)(margin=margin,
                                                               eps=drawn.loss_spec.eps))
            placed = kink_distances(drawn, params, inputs)
            if np.min(np.abs(placed[np.isfinite(placed)])) < gap:
                reject()
        first = inputs[drawn.branch_names[0]]
        config = {"siamese": drawn.config(), "input_shape": list(first.shape),
                  "inputs": list(input_names(drawn))}
        case = siamese_case("drawn-siamese", drawn, params, inputs, config)
        if not _tests_something(case):
            reject()
        return case

    return draw_case()


def micro_batch_splits(batch_size: int, *, min_count: int = 1, max_count: int | None = None,
                       index_lists: bool | None = False):
    """Splits of a batch of ``batch_size`` into micro-batches, for
    :func:`refimpl.accumulated_loss_and_grads`.

    Parameters
    ----------
    batch_size : int
        N, >= 1.
    min_count, max_count : int
        Range of the number M of micro-batches (default ``max_count``: N; each >= 1 example).
    index_lists : bool, optional
        False: sizes ``[n_1, ..., n_M]`` (contiguous micro-batches); True: index lists, a
        random partition of ``range(N)``; None draws either.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of ``list[int]`` or ``list[list[int]]``.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(micro_batch_splits(5, min_count=2))
    ... def test(sizes):
    ...     assert sum(sizes) == 5 and len(sizes) >= 2
    >>> test()
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    max_count = batch_size if max_count is None else max_count
    min_count, max_count = _range(min_count, max_count, "min_count", "max_count", 1)
    if min_count > batch_size:
        raise ValueError(f"min_count: at most batch_size={batch_size} micro-batches of >= 1 "
                         f"example, got min_count={min_count}")
    if index_lists is not None:
        _bools(index_lists=index_lists)

    @st.composite
    def draw_split(draw):
        count = draw(st.integers(min_count, min(max_count, batch_size)))
        # count - 1 distinct cut points in 1..N-1: a uniform composition of N into count parts.
        cuts = sorted(draw(st.sets(st.integers(1, batch_size - 1), min_size=count - 1,
                                   max_size=count - 1))) if count > 1 else []
        edges = [0, *cuts, batch_size]
        sizes = [end - start for start, end in zip(edges, edges[1:], strict=False)]
        as_lists = draw(st.booleans()) if index_lists is None else index_lists
        if not as_lists:
            return sizes
        order = draw(st.permutations(range(batch_size)))
        return [list(order[start:end]) for start, end in zip(edges, edges[1:], strict=False)]

    return draw_split()


def _model_of(case: Case) -> Any:
    """The model of a drawn single-batch case, rebuilt from its configuration."""
    if "pair" in case.config:
        return TiedPair.from_config(case.config["pair"])
    if "siamese" in case.config:
        return Siamese.from_config(case.config["siamese"])
    return Sequential.from_config(case.config["model"])


def microbatch_cases(*, kinds: Iterable[str] | None = None, max_batch: int = 4):
    """Whole micro-batch cases (kind "microbatch", the catalogue's hand-over: inputs
    ``"<name>.<i>"``): a drawn case of ``kinds`` split into drawn micro-batches (sizes).

    Parameters
    ----------
    kinds : iterable of str, optional
        Base kinds among "mlp", "shared", "tied", "siamese" (default all); the single-model
        kinds are drawn kink-free.
    max_batch : int
        Largest batch size (>= 2; the batch is at least 2, so that it can be split).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.testing.cases.Case`.
    """
    kinds = _choices(kinds, "kinds", ("mlp", "shared", "tied", "siamese"))
    max_batch = check_int(max_batch, "max_batch", 2)
    bases = []
    if set(kinds) - {"siamese"}:
        bases.append(drawn_cases(kinds=[k for k in kinds if k != "siamese"], kink_free=True,
                                 min_batch=2, max_batch=max_batch))
    if "siamese" in kinds:
        bases.append(siamese_cases(min_batch=2, max_batch=max_batch))

    @st.composite
    def draw_case(draw):
        base = draw(st.one_of(bases))
        model = _model_of(base)
        if isinstance(model, TiedPair):
            size_a, size_b = len(base.inputs["xa"]), len(base.inputs["xb"])
            count = draw(st.integers(1, min(size_a, size_b)))
            sizes = draw(micro_batch_splits(size_a, min_count=count, max_count=count))
            sizes_b = draw(micro_batch_splits(size_b, min_count=count, max_count=count))
            return microbatch_case("drawn-microbatch", base, model, sizes, sizes_b)
        size = len(next(iter(base.inputs.values())))
        return microbatch_case("drawn-microbatch", base, model, draw(micro_batch_splits(size)))

    return draw_case()


def _tests_something(case: Case) -> bool:
    """Some gradient is non-zero and every tensor can be judged in :data:`RESOLVED_IN`."""
    _, grads = case.loss_and_grads(case.params)
    if not any(np.any(grad != 0) for grad in grads.values()):
        return False
    return not unresolved_tensors(case, RESOLVED_IN)
