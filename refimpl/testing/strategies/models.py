"""Strategies for dense models: MLPs, sharing maps and MLPs that share, tied pairs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import strategies as st

from ..._validate import check_int, check_tolerance
from ...nn import (
    Sequential,
    ShareSource,
)
from ...nn.builders import ACTIVATIONS, LOSSES, MLP
from ...tying import MODES, PENALTIES, TiedPair
from ._checks import _bools, _choices, _flag, _optional_bool, _positive, _range


def _mlp_sizes(draw, in_features, out_features, min_hidden, max_hidden, min_width, max_width):
    """Drawn layer sizes ``[D, hidden..., K]`` (fixed ends where given)."""
    depth = draw(st.integers(min_hidden, max_hidden))
    widths = st.integers(min_width, max_width)
    first = in_features if in_features is not None else draw(widths)
    hidden = [draw(widths) for _ in range(depth)]
    last = out_features if out_features is not None else draw(widths)
    return [first, *hidden, last]


def mlps(*, min_hidden: int = 0, max_hidden: int = 2, min_width: int = 1, max_width: int = 6,
         activations: Iterable[str] | None = None, losses: Iterable[str] | None = None,
         bias: bool | None = None, in_features: int | None = None,
         out_features: int | None = None):
    """``Sequential`` MLPs (:func:`refimpl.MLP`).

    A cross-entropy MLP has at least 2 classes unless ``out_features=1`` is asked for (with
    one class every gradient is exactly zero).

    Parameters
    ----------
    min_hidden, max_hidden : int
        Number of hidden layers (0: a single dense layer).
    min_width, max_width : int
        Range of every drawn layer size.
    activations : iterable of str, optional
        Names to draw from (default all: relu, leaky_relu, tanh, sigmoid, softplus,
        identity).
    losses : iterable of str, optional
        "cross_entropy" and / or "mse" (default both).
    bias : bool, optional
        Dense layers with biases; None draws it.
    in_features, out_features : int, optional
        Fix the first and last layer sizes (D and K).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.nn.Sequential`.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(mlps(max_hidden=1, activations=["tanh"], losses=["mse"]))
    ... def test(model):
    ...     assert model.loss_spec.config()["type"] == "MSE"
    >>> test()
    """
    min_hidden, max_hidden = _range(min_hidden, max_hidden, "min_hidden", "max_hidden")
    min_width, max_width = _range(min_width, max_width, "min_width", "max_width", 1)
    activations = _choices(activations, "activations", ACTIVATIONS)
    losses = _choices(losses, "losses", LOSSES)
    bias = _optional_bool(bias, "bias")
    if in_features is not None:
        in_features = check_int(in_features, "in_features", 1)
    if out_features is not None:
        out_features = check_int(out_features, "out_features", 1)

    @st.composite
    def draw_mlp(draw):
        loss = draw(st.sampled_from(losses))
        sizes = _mlp_sizes(draw, in_features, out_features, min_hidden, max_hidden, min_width,
                           max_width)
        if loss == "cross_entropy" and out_features is None and sizes[-1] < 2:
            # One class: the softmax is constantly 1 and every gradient exactly zero.
            sizes[-1] = draw(st.integers(2, max(2, max_width)))
        return MLP(sizes, activation=draw(st.sampled_from(activations)), loss=loss,
                   bias=_flag(draw, bias))

    return draw_mlp()


# --- sharing and tying ---------------------------------------------------------------------------

def _candidates(shapes_from: Mapping[str, tuple[int, ...]],
                shapes_to: Mapping[str, tuple[int, ...]], transposed: bool,
                weights_only: bool) -> list[tuple[str, str, bool]]:
    """``(slot, source, transposed)`` for every pair of parameters whose shapes match."""
    found = []
    for slot, shape in shapes_from.items():
        if weights_only and not slot.endswith("weight"):
            continue
        for source, source_shape in shapes_to.items():
            if weights_only and not source.endswith("weight"):
                continue
            if source_shape == shape:
                found.append((slot, source, False))
            if transposed and len(shape) == 2 and source_shape == shape[::-1] \
                    and shape[0] != shape[1]:
                found.append((slot, source, True))
    return found


def sharing_maps(model: Sequential, *, min_size: int = 1, max_size: int | None = None,
                 transposed: bool = True, weights_only: bool = False):
    """``share={slot: source}`` maps valid for ``model`` (which must not share already).

    A slot is shared onto an *earlier* parameter of matching shape (as is, or transposed for
    2-D parameters when ``transposed``); sources are never shared themselves, so there are no
    chains and no cycles.

    Parameters
    ----------
    model : refimpl.nn.Sequential
        An unshared model.
    min_size, max_size : int
        Range of the number of shared slots (default ``max_size``: every shareable slot).
    transposed : bool
        Also share a 2-D parameter onto a transposed one.
    weights_only : bool
        Never share a bias.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of ``dict[str, ShareSource]``, for ``Sequential(..., share=...)``.

    Raises
    ------
    ValueError
        When ``model`` already shares, or has fewer than ``min_size`` shareable slots.

    Examples
    --------
    >>> from hypothesis import given
    >>> from refimpl import MLP
    >>> @given(sharing_maps(MLP([3, 4, 4, 4, 2])))
    ... def test(share):
    ...     assert set(share) <= {"fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
    >>> test()
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model: expected a Sequential, got {type(model).__name__}")
    if model.share:
        raise ValueError(f"model: already shares {sorted(model.share)}; pass the unshared model")
    min_size = check_int(min_size, "min_size", 0)
    _bools(transposed=transposed, weights_only=weights_only)
    slots = list(model.slot_uses())
    shapes = model.parameter_shapes()
    # Only earlier sources: a slot's candidates are the parameters before it.
    candidates = [c for c in _candidates(shapes, shapes, transposed, weights_only)
                  if slots.index(c[1]) < slots.index(c[0])]
    shareable = sorted({slot for slot, _, _ in candidates}, key=slots.index)
    if len(shareable) < min_size:
        raise ValueError(f"model: only {len(shareable)} slot(s) can be shared ({shareable}), "
                         f"min_size={min_size}")
    if max_size is None:
        max_size = len(shareable)
    max_size = check_int(max_size, "max_size", 0)
    if min_size > max_size:
        raise ValueError(f"min_size, max_size: expected min_size <= max_size, got {min_size} > "
                         f"{max_size}")

    @st.composite
    def draw_map(draw):
        count = draw(st.integers(min_size, min(max_size, len(shareable))))
        chosen = set(draw(st.permutations(shareable))[:count])
        share: dict[str, ShareSource] = {}
        # In model order, each chosen slot reads an earlier parameter that is not shared
        # itself (so no chains): the earliest parameter of each shape class (up to a
        # transpose) is never shareable, hence always such a source — any subset works.
        for slot in (slot for slot in slots if slot in chosen):
            options = [(source, t) for s, source, t in candidates
                       if s == slot and source not in share]
            source, transpose = draw(st.sampled_from(options))
            share[slot] = ShareSource(source, transpose)
        return share

    return draw_map()


def shared_mlps(*, min_shared: int = 1, transposed: bool = True, max_width: int = 5,
                activations: Iterable[str] | None = None, losses: Iterable[str] | None = None,
                weights_only: bool = False):
    """MLPs with a non-empty sharing map.

    Sizes are drawn ``[d, w, w, ..., w, out]`` with ``out == d`` sometimes (an autoencoder
    shape, whose last weight ``(d, w)`` can be the first one ``(w, d)`` transposed), so there
    is always something to share.

    Parameters
    ----------
    min_shared : int
        Shared slots at least.
    transposed : bool
        Also share a weight onto a transposed one.
    max_width : int
        Largest drawn layer size.
    activations, losses : iterable of str, optional
        Names to draw from (default all).
    weights_only : bool
        Never share a bias.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.nn.Sequential` with a non-empty ``share``.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(shared_mlps())
    ... def test(model):
    ...     assert model.share and model.parameter_count().uses > model.parameter_count().unique
    >>> test()
    """
    min_shared = check_int(min_shared, "min_shared", 1)
    max_width = check_int(max_width, "max_width", 1)
    activations = _choices(activations, "activations", ACTIVATIONS)
    losses = _choices(losses, "losses", LOSSES)
    _bools(transposed=transposed, weights_only=weights_only)

    @st.composite
    def draw_shared(draw):
        d = draw(st.integers(1, max_width))
        w = draw(st.integers(1, max_width))
        # hidden - 1 repeated (w, w) weights: all but the first can be shared onto it.
        hidden = draw(st.integers(min_shared + 2, min_shared + 3))
        out = d if (transposed and draw(st.booleans())) else draw(st.integers(1, max_width))
        sizes = [d] + [w] * hidden + [out]
        activation = draw(st.sampled_from(activations))
        loss = draw(st.sampled_from(losses))
        if loss == "cross_entropy" and out < 2:
            # One class: every gradient exactly zero. Widen the output to 2 classes.
            sizes[-1] = 2
        share = draw(sharing_maps(MLP(sizes, activation=activation, loss=loss),
                                  min_size=min_shared, transposed=transposed,
                                  weights_only=weights_only))
        return MLP(sizes, activation=activation, loss=loss, share=share)

    return draw_shared()


def tied_pairs(*, modes: Iterable[str] | None = None, penalties: Iterable[str] | None = None,
               min_pairs: int = 1, max_lam: float = 2.0, min_lam: float = 1e-3,
               transposed: bool = True,
               weights_only: bool = False, max_width: int = 5,
               activations: Iterable[str] | None = None):
    """``TiedPair`` of two MLPs with at least ``min_pairs`` matched parameters.

    Model B starts with A's first layer shape (its ``fc1`` can be paired with A's), and is
    sometimes an autoencoder ``[d, h, d]`` (MSE) whose decoder weight matches A's first weight
    transposed.

    Parameters
    ----------
    modes : iterable of str, optional
        "soft" and / or "hard" (default both).
    penalties : iterable of str, optional
        "l2" and / or "l1" (default both).
    min_pairs : int
        Matched parameters at least: 1 or 2 (fc1 weight and bias; 1 with ``weights_only``).
    max_lam, min_lam : float
        The strength of each soft pair is drawn as 0 or in [min_lam, max_lam] (never
        subnormal or tiny: float32 would flush it to zero); ``max_lam = 0`` draws only 0.
    transposed : bool
        Also pair a 2-D parameter with a transposed one.
    weights_only : bool
        Never pair a bias.
    max_width : int
        Largest drawn layer size.
    activations : iterable of str, optional
        Activation names to draw from (default all); both models use the same one.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.TiedPair`.

    Raises
    ------
    ValueError
        If ``min_pairs`` exceeds what is guaranteed (2, or 1 with ``weights_only``), or
        ``0 < max_lam < min_lam`` (and, with ``TypeError``, for any other bad override).

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(tied_pairs(modes=["hard"]))
    ... def test(pair):
    ...     assert pair.mode == "hard" and pair.shared_b()
    >>> test()
    """
    modes = _choices(modes, "modes", MODES)
    penalties = _choices(penalties, "penalties", PENALTIES)
    min_pairs = check_int(min_pairs, "min_pairs", 1)
    if min_pairs > 1 and weights_only:
        raise ValueError("min_pairs: with weights_only only one weight pair is guaranteed; "
                         f"got min_pairs={min_pairs}")
    if min_pairs > 2:
        raise ValueError(f"min_pairs: at most 2 pairs are guaranteed (fc1 weight and bias), got "
                         f"{min_pairs}")
    max_lam = check_tolerance(max_lam, "max_lam")
    min_lam = _positive(min_lam, "min_lam")
    if 0 < max_lam < min_lam:
        raise ValueError(f"min_lam, max_lam: expected max_lam = 0 or >= min_lam, got "
                         f"{max_lam} < {min_lam}")
    max_width = check_int(max_width, "max_width", 1)
    activations = _choices(activations, "activations", ACTIVATIONS)
    _bools(transposed=transposed, weights_only=weights_only)
    # Zero (no tying) or at least min_lam: a subnormal or tiny strength underflows in float32
    # and tests nothing.
    strengths = st.just(0.0) | (st.floats(min_lam, max_lam) if max_lam >= min_lam
                                and max_lam > 0 else st.nothing())

    @st.composite
    def draw_pair(draw):
        activation = draw(st.sampled_from(activations))
        model_a = draw(mlps(max_width=max_width, min_hidden=0, max_hidden=2,
                            activations=[activation], bias=True))
        model_b = _draw_model_b(draw, model_a, activation, max_width, transposed)
        candidates = _candidates(model_a.parameter_shapes(), model_b.parameter_shapes(),
                                 transposed, weights_only)
        chosen = _draw_ties(draw, candidates, min_pairs)
        mode = draw(st.sampled_from(modes))
        lam = {name_a: draw(strengths) for name_a, _ in chosen} if mode == "soft" else None
        return TiedPair(model_a, model_b, chosen, lam=lam, mode=mode,
                        penalty=draw(st.sampled_from(penalties)))

    return draw_pair()


def _draw_model_b(draw: Any, model_a: Sequential, activation: str, max_width: int,
                  transposed: bool) -> Sequential:
    """Model B of a pair: A's first layer shape, then an autoencoder or free sizes."""
    d, h = model_a.layers[0].in_features, model_a.layers[0].out_features
    if transposed and draw(st.booleans()):
        return MLP([d, h, d], activation=activation, loss="mse")
    rest = draw(st.lists(st.integers(1, max_width), min_size=0, max_size=2))
    sizes_b = [d, h, *rest]
    loss_b = draw(st.sampled_from(sorted(LOSSES)))
    if loss_b == "cross_entropy" and sizes_b[-1] < 2:
        loss_b = "mse"          # one class: B's loss would have zero gradients
    return MLP(sizes_b, activation=activation, loss=loss_b)


def _draw_ties(draw: Any, candidates: list[tuple[str, str, bool]], min_pairs: int
               ) -> list[tuple[str, ShareSource]]:
    """``(name in A, source in B)`` ties, each parameter in at most one: the fc1 pairs first
    (they always exist), then others at random."""
    order = draw(st.permutations(candidates))
    chosen, used_a, used_b = [], set(), set()
    guaranteed = [c for c in candidates if c[0] == c[1] and c[0].startswith("fc1.")
                  and not c[2]][:min_pairs]
    for name_a, name_b, transpose in guaranteed + list(order):
        if name_a in used_a or name_b in used_b:
            continue
        if len(chosen) >= min_pairs and not draw(st.booleans()):
            continue
        chosen.append((name_a, ShareSource(name_b, transpose)))
        used_a.add(name_a)
        used_b.add(name_b)
    return chosen
