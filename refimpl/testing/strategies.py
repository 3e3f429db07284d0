"""Public Hypothesis strategies: models, points, data and whole cases for property tests.

Import them into any test suite (Hypothesis is needed; refimpl itself does not need it)::

    from hypothesis import given
    from refimpl import strategies as rs
    from refimpl.testing import assert_matches_oracle

    @given(rs.cases(kinds=("mlp", "cnn"), kink_free=True))
    def test_my_implementation(case):
        assert_matches_oracle(my_impl_for(case.config), case)

What there is
-------------
=================================  ==========================================================
``arrays(shape, ...)``             float64 arrays; ``kink_free`` (|x - kink| >= margin) and
                                   ``distinct`` (no ties) by construction
``mlps(...)``                      ``Sequential`` MLPs (depth, widths, activations, losses)
``conv_geometries(...)``           :class:`ConvGeometry`: kernel, stride, padding, dilation,
                                   groups, and input sizes whose output size rounds down
``cnns(...)``                      :class:`ModelExample` (a CNN and its input shape)
``sharing_maps(model, ...)``       valid ``share={slot: source}`` maps for a model
``shared_mlps(...)``               MLPs with a non-empty sharing map (identity / transposed)
``tied_pairs(...)``                ``TiedPair`` of two MLPs (soft / hard, l2 / l1)
``parameters(model, ...)``         a parameter dict for a model (or a pair, "A:"/"B:" keys)
``batches(model, ...)``            ``{"x": ..., "y": ...}`` for a model
``points(model, ...)``             :class:`Point` (params and inputs), optionally kink-free
``cases(...)``                     a whole :class:`refimpl.testing.cases.Case`, ready for
                                   ``refimpl.testing.assert_matches_oracle`` or
                                   ``refimpl.check_gradients(case.loss_and_grads, case.params)``
=================================  ==========================================================

Every strategy takes keyword overrides (sizes, ranges, choices) and validates them when it is
*created*: a bad override is a ``ValueError`` / ``TypeError`` naming it, not a failure deep
inside a test.

Arrays are drawn from a NumPy generator seeded by Hypothesis (an integer that shrinks to 0),
not element by element: fast for arrays of thousands of entries, reproducible, and Hypothesis
still shrinks every size and choice.

Kink-free points, by construction
---------------------------------
``points(model, kink_free=True)`` (and ``cases(kink_free=True)``) return a point at which every
ReLU / LeakyReLU pre-activation is at least ``margin`` away from 0, without discarding
examples: layer by layer, each bias entry feeding a kinked activation is moved to the nearest
value at which none of the pre-activations it shifts lies within ``margin`` of the kink (the
forbidden set is a finite union of intervals, so such a value always exists). A kinked
activation directly on the input gets an input drawn with ``arrays(kink_free=True)``; a max
pool directly on the input gets ``distinct`` inputs. This needs every kinked activation to
follow a layer with its own (unshared) bias, so kink-free cases are built with biases and
never share or pair a bias. The L1 tying penalty's kink (``a == b``) is kept ``margin`` away
by construction too. Max pooling *after* a layer cannot be made tie-free by moving a bias (it
shifts a whole window at once); there a near-tie (two positive window values closer than
``margin * 1e-3`` but not equal) is rejected with ``hypothesis.reject()``, a measure-zero
event for continuous draws (none in 1,500 drawn kink-free CNN cases). Exact ties are kept:
they come from windows that read only zero padding, whose values are all the bias — one
function of the parameters, so whichever entry wins gets the same gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

try:
    from hypothesis import reject
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised only without Hypothesis
    raise ImportError(
        "refimpl.testing.strategies needs Hypothesis, an optional (test) dependency of refimpl: "
        "pip install hypothesis  (or pip install 'refimpl[test]')") from error

import numpy as np

from ..nn import (
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    LocallyConnected2D,
    MaxPool2D,
    Sequential,
    ShareSource,
)
from ..nn.builders import ACTIVATIONS, LOSSES, MLP
from ..tying import MODES, PENALTIES, TiedPair
from .cases import Case
from .oracle import unresolved_tensors

__all__ = [
    "arrays", "mlps", "ConvGeometry", "conv_geometries", "ModelExample", "cnns",
    "sharing_maps", "shared_mlps", "tied_pairs", "parameters", "batches", "Point", "points",
    "cases", "KINKED_ACTIVATIONS", "CASE_KINDS", "RESOLVED_IN",
]

#: Activation layer types with a kink, and where the kink is.
KINKED_ACTIVATIONS = {"ReLU": 0.0, "LeakyReLU": 0.0}

#: What :func:`cases` can draw.
CASE_KINDS = ("mlp", "cnn", "shared", "tied")

_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


# --- validation of overrides ---------------------------------------------------------------------

def _int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _range(low: Any, high: Any, name_low: str, name_high: str, minimum: int = 0
           ) -> tuple[int, int]:
    low, high = _int(low, name_low, minimum), _int(high, name_high, minimum)
    if low > high:
        raise ValueError(f"{name_low}, {name_high}: expected {name_low} <= {name_high}, got "
                         f"{low} > {high}")
    return low, high


def _positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {value}")
    return value


def _choices(values: Any, name: str, known: Iterable[str]) -> tuple[str, ...]:
    known = tuple(known)
    if values is None:
        return known
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if not values:
        raise ValueError(f"{name}: expected at least one of {list(known)}, got none")
    unknown = [value for value in values if value not in known]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; expected a subset of {list(known)}")
    return values


def _optional_bool(value: Any, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name}: expected True, False or None (draw), got {value!r}")
    return value


def _flag(draw: Any, value: bool | None) -> bool:
    return draw(st.booleans()) if value is None else value


# --- arrays --------------------------------------------------------------------------------------

def _draw_array(rng: np.random.Generator, shape: tuple[int, ...], scale: float,
                kink_free: bool, distinct: bool, kink: float, margin: float) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    if distinct:
        # Magnitudes in disjoint slots of width `gap`, each jittered inside its first half:
        # two values of one sign differ by >= gap / 2, of opposite signs by >= 2 * offset.
        gap = scale / max(size, 1)
        offset = margin if kink_free else 0.0
        slots = rng.permutation(size)
        magnitude = offset + (slots + 0.5 * rng.random(size)) * gap
        signs = np.where(rng.random(size) < 0.5, -1.0, 1.0)
        return (kink + signs * magnitude).reshape(shape)
    values = rng.standard_normal(shape) * scale
    if kink_free:
        # |v - kink| = margin + |normal|: never closer than margin, no value discarded.
        values = kink + np.where(values >= 0, 1.0, -1.0) * (margin + np.abs(values))
    return values


def arrays(shape: Sequence[int], *, scale: float = 1.0, kink_free: bool = False,
           distinct: bool = False, kink: float = 0.0, margin: float = 0.05):
    """Float64 arrays of a fixed ``shape``.

    - scale: standard deviation (``distinct``: the spread of the values)
    - kink_free: every value at least ``margin`` away from ``kink`` (by construction)
    - distinct: no two values closer than ``scale / (2 * size)`` (no ties, for max pooling)

    >>> from hypothesis import given
    >>> @given(arrays((2, 3), kink_free=True, margin=0.1))
    ... def test(x):
    ...     assert x.shape == (2, 3) and (abs(x) >= 0.1).all()
    >>> test()
    """
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(_int(size, "shape", 0) for size in shape)
    scale = _positive_float(scale, "scale")
    margin = _positive_float(margin, "margin", allow_zero=True)
    kink = float(kink)
    if not isinstance(kink_free, bool) or not isinstance(distinct, bool):
        raise TypeError("kink_free, distinct: expected bools")
    return _SEEDS.map(lambda seed: _draw_array(np.random.default_rng(seed), shape, scale,
                                               kink_free, distinct, kink, margin))


# --- MLPs ----------------------------------------------------------------------------------------

def _mlp_sizes(draw, in_features, out_features, min_hidden, max_hidden, min_width, max_width):
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

    - min_hidden, max_hidden: number of hidden layers (0: a single dense layer)
    - min_width, max_width: every drawn layer size; in_features / out_features fix the ends
    - activations: names to draw from (default all: relu, leaky_relu, tanh, sigmoid,
      softplus, identity); losses: "cross_entropy" and/or "mse"; bias: None draws it
    - a cross-entropy MLP has at least 2 classes unless ``out_features=1`` is asked for (with
      one class every gradient is exactly zero)

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
        in_features = _int(in_features, "in_features", 1)
    if out_features is not None:
        out_features = _int(out_features, "out_features", 1)

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


# --- convolution geometries and CNNs -------------------------------------------------------------

class ConvGeometry(NamedTuple):
    """A valid 2-D convolution geometry (pairs are (height, width))."""

    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def output_size(self) -> tuple[int, int]:
        """``floor((H + 2p - d(k - 1) - 1) / s) + 1`` per axis (PyTorch's formula)."""
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip((self.height, self.width), self.kernel_size,
                                        self.stride, self.padding, self.dilation, strict=True))

    def rounds_down(self) -> tuple[bool, bool]:
        """Per axis: does the output-size division leave a remainder (the last input rows are
        read by no window and must get a zero gradient)?"""
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) % s != 0
            for size, k, s, p, d in zip((self.height, self.width), self.kernel_size,
                                        self.stride, self.padding, self.dilation, strict=True))

    def conv_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``Conv2D(name, **geometry.conv_arguments())``."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "dilation": self.dilation, "groups": self.groups}


def conv_geometries(*, max_kernel: int = 5, max_stride: int = 3, max_padding: int = 2,
                    max_dilation: int = 3, max_channels: int = 4, max_groups: int = 4,
                    max_size: int | None = None, rounds_down: bool | None = None,
                    square: bool | None = None):
    """Valid convolution geometries, built so that every one fits (no filtering).

    - max_kernel / max_stride / max_padding / max_dilation: per-axis ranges from 1 (0 for
      padding); max_channels: channels per group at most; max_groups: groups drawn in
      [1, max_groups], channels drawn as multiples of the groups
    - max_size: largest input height / width (default: the smallest size that lets every
      kernel and stride fit: ``max_dilation * (max_kernel - 1) + max_stride``)
    - rounds_down: True draws, on both axes, input sizes where the output-size division
      leaves a remainder (needs max_stride >= 2); False only exact divisions; None either
    - square: True gives equal height / width hyper-parameters, False may differ, None draws

    The input size is chosen last, as ``(Ho - 1) * s + d(k - 1) + 1 - 2p + r`` with the
    remainder ``r`` in [0, s - 1], so the output size is ``Ho`` and the division rounds down
    exactly when ``r > 0``.

    >>> from hypothesis import given
    >>> @given(conv_geometries(rounds_down=True))
    ... def test(g):
    ...     assert all(g.rounds_down()) and min(g.output_size()) >= 1
    >>> test()
    """
    max_kernel = _int(max_kernel, "max_kernel", 1)
    max_stride = _int(max_stride, "max_stride", 1)
    max_padding = _int(max_padding, "max_padding", 0)
    max_dilation = _int(max_dilation, "max_dilation", 1)
    max_channels = _int(max_channels, "max_channels", 1)
    max_groups = _int(max_groups, "max_groups", 1)
    rounds_down = _optional_bool(rounds_down, "rounds_down")
    square = _optional_bool(square, "square")
    smallest = max_dilation * (max_kernel - 1) + max_stride
    if max_size is None:
        max_size = smallest
    max_size = _int(max_size, "max_size", 1)
    if max_size < smallest:
        raise ValueError(f"max_size: expected >= max_dilation * (max_kernel - 1) + max_stride "
                         f"= {smallest} so that every drawn kernel and stride fits, got "
                         f"{max_size}")
    if rounds_down and max_stride < 2:
        raise ValueError("rounds_down: an output size can round down only with a stride >= 2; "
                         "got max_stride=1")
    low_stride = 2 if rounds_down else 1

    def axis(draw) -> tuple[int, int, int, int, int]:
        k = draw(st.integers(1, max_kernel))
        d = draw(st.integers(1, max_dilation)) if k > 1 else 1
        s = draw(st.integers(low_stride, max_stride))
        p = draw(st.integers(0, max_padding))
        if rounds_down is None:
            r = draw(st.integers(0, s - 1))
        else:
            r = draw(st.integers(1, s - 1)) if rounds_down else 0
        extent = d * (k - 1) + 1
        base = extent - 2 * p + r            # the input size for Ho = 1
        # Sizes base + m * s (m >= 0) within [1, max_size]: non-empty because
        # base <= extent + s - 1 <= max_size and consecutive sizes are s apart.
        m_low = max(0, -((base - 1) // s)) if base < 1 else 0
        m_high = (max_size - base) // s
        m = draw(st.integers(m_low, max(m_low, m_high)))
        return base + m * s, k, s, p, d

    @st.composite
    def draw_geometry(draw):
        groups = draw(st.integers(1, max_groups))
        in_channels = groups * draw(st.integers(1, max_channels))
        out_channels = groups * draw(st.integers(1, max_channels))
        height_axis = axis(draw)
        same = _flag(draw, square)
        width_axis = height_axis if same else axis(draw)
        return ConvGeometry(in_channels, out_channels, height_axis[0], width_axis[0],
                            (height_axis[1], width_axis[1]), (height_axis[2], width_axis[2]),
                            (height_axis[3], width_axis[3]), (height_axis[4], width_axis[4]),
                            groups)

    return draw_geometry()


class ModelExample(NamedTuple):
    """A model and the shape of one example (without the batch axis), e.g. (C, H, W)."""

    model: Sequential
    input_shape: tuple[int, ...]


def cnns(*, geometries=None, activations: Iterable[str] | None = None,
         pools: Iterable[str] | None = None, locally_connected: bool | None = False,
         losses: Iterable[str] | None = None, max_classes: int = 4, bias: bool | None = True):
    """:class:`ModelExample` CNNs: ``conv -> activation -> [pool] -> Flatten -> Dense``.

    - geometries: a strategy of :class:`ConvGeometry` (default ``conv_geometries()``)
    - activations: names (default all); pools: any of "max", "avg", "none" (default all;
      a pool is used only where a 2x2 window fits)
    - locally_connected: True uses ``LocallyConnected2D`` (the unshared twin), None draws
    - losses, max_classes: the dense head (cross-entropy: at least 2 classes); bias: conv /
      dense bias (None draws)

    >>> from hypothesis import given
    >>> @given(cnns(pools=["max"]))
    ... def test(example):
    ...     assert example.model.output_shape((2, *example.input_shape))[0] == 2
    >>> test()
    """

    geometries = conv_geometries() if geometries is None else geometries
    if not isinstance(geometries, st.SearchStrategy):
        raise TypeError(f"geometries: expected a Hypothesis strategy of ConvGeometry, got "
                        f"{geometries!r}")
    activations = _choices(activations, "activations", ACTIVATIONS)
    pools = _choices(pools, "pools", ("max", "avg", "none"))
    losses = _choices(losses, "losses", LOSSES)
    locally_connected = _optional_bool(locally_connected, "locally_connected")
    bias = _optional_bool(bias, "bias")
    max_classes = _int(max_classes, "max_classes", 1)

    @st.composite
    def draw_cnn(draw):
        geometry = draw(geometries)
        if not isinstance(geometry, ConvGeometry):
            raise TypeError(f"geometries: drew {geometry!r}, expected a ConvGeometry")
        with_bias = _flag(draw, bias)
        if _flag(draw, locally_connected):
            conv = LocallyConnected2D("conv1", **geometry.conv_arguments(),
                                      input_size=(geometry.height, geometry.width),
                                      bias=with_bias)
        else:
            conv = Conv2D("conv1", **geometry.conv_arguments(), bias=with_bias)
        layers = [conv, ACTIVATIONS[draw(st.sampled_from(activations))]()]
        out_h, out_w = geometry.output_size()
        pool = draw(st.sampled_from(pools))
        if pool != "none" and min(out_h, out_w) >= 2:
            layers.append(MaxPool2D(2) if pool == "max" else AvgPool2D(2))
        layers.append(Flatten())
        shape = (1, geometry.in_channels, geometry.height, geometry.width)
        for layer in layers:
            shape = layer.output_shape(shape)
        loss = draw(st.sampled_from(losses))
        # Cross-entropy over one class has every gradient exactly zero: at least 2 classes.
        fewest = 2 if loss == "cross_entropy" else 1
        layers.append(Dense("fc1", shape[1], draw(st.integers(fewest, max(fewest, max_classes))),
                            bias=with_bias))
        model = Sequential(layers, loss=LOSSES[loss]())
        return ModelExample(model, (geometry.in_channels, geometry.height, geometry.width))

    return draw_cnn()


# --- sharing and tying ---------------------------------------------------------------------------

def _candidates(shapes_from: Mapping[str, tuple[int, ...]],
                shapes_to: Mapping[str, tuple[int, ...]], transposed: bool,
                weights_only: bool) -> list[tuple[str, str, bool]]:
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
    chains and no cycles. ``weights_only`` never shares a bias. Raises ``ValueError`` at
    creation when ``model`` has fewer than ``min_size`` shareable slots.

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
    min_size = _int(min_size, "min_size", 0)
    if not isinstance(transposed, bool) or not isinstance(weights_only, bool):
        raise TypeError("transposed, weights_only: expected bools")
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
    max_size = _int(max_size, "max_size", 0)
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
    """MLPs with a non-empty sharing map. Sizes are drawn ``[d, w, w, ..., w, out]`` with
    ``out == d`` sometimes (an autoencoder shape, whose last weight ``(d, w)`` can be the
    first one ``(w, d)`` transposed), so there is always something to share.

    >>> from hypothesis import given
    >>> @given(shared_mlps())
    ... def test(model):
    ...     assert model.share and model.parameter_count().uses > model.parameter_count().unique
    >>> test()
    """
    min_shared = _int(min_shared, "min_shared", 1)
    max_width = _int(max_width, "max_width", 1)
    activations = _choices(activations, "activations", ACTIVATIONS)
    losses = _choices(losses, "losses", LOSSES)
    if not isinstance(transposed, bool) or not isinstance(weights_only, bool):
        raise TypeError("transposed, weights_only: expected bools")

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
    transposed. modes: "soft" / "hard" (default both); penalties: "l2" / "l1"; lam per pair
    drawn as 0 or in [min_lam, max_lam] (never subnormal or tiny: float32 would flush it to
    zero); weights_only never pairs a bias.

    >>> from hypothesis import given
    >>> @given(tied_pairs(modes=["hard"]))
    ... def test(pair):
    ...     assert pair.mode == "hard" and pair.shared_b()
    >>> test()
    """

    modes = _choices(modes, "modes", MODES)
    penalties = _choices(penalties, "penalties", PENALTIES)
    min_pairs = _int(min_pairs, "min_pairs", 1)
    if min_pairs > 1 and weights_only:
        raise ValueError("min_pairs: with weights_only only one weight pair is guaranteed; "
                         f"got min_pairs={min_pairs}")
    if min_pairs > 2:
        raise ValueError(f"min_pairs: at most 2 pairs are guaranteed (fc1 weight and bias), got "
                         f"{min_pairs}")
    max_lam = _positive_float(max_lam, "max_lam", allow_zero=True)
    min_lam = _positive_float(min_lam, "min_lam")
    if 0 < max_lam < min_lam:
        raise ValueError(f"min_lam, max_lam: expected max_lam = 0 or >= min_lam, got "
                         f"{max_lam} < {min_lam}")
    max_width = _int(max_width, "max_width", 1)
    activations = _choices(activations, "activations", ACTIVATIONS)
    if not isinstance(transposed, bool) or not isinstance(weights_only, bool):
        raise TypeError("transposed, weights_only: expected bools")

    @st.composite
    def draw_pair(draw):
        activation = draw(st.sampled_from(activations))
        model_a = draw(mlps(max_width=max_width, min_hidden=0, max_hidden=2,
                            activations=[activation], bias=True))
        d, h = model_a.layers[0].in_features, model_a.layers[0].out_features
        if transposed and draw(st.booleans()):
            model_b = MLP([d, h, d], activation=activation, loss="mse")
        else:
            rest = draw(st.lists(st.integers(1, max_width), min_size=0, max_size=2))
            sizes_b = [d, h, *rest]
            loss_b = draw(st.sampled_from(sorted(LOSSES)))
            if loss_b == "cross_entropy" and sizes_b[-1] < 2:
                loss_b = "mse"          # one class: B's loss would have zero gradients
            model_b = MLP(sizes_b, activation=activation, loss=loss_b)
        candidates = _candidates(model_a.parameter_shapes(), model_b.parameter_shapes(),
                                 transposed, weights_only)
        order = draw(st.permutations(candidates))
        chosen, used_a, used_b = [], set(), set()
        # Guarantee the fc1 pairs first (they always exist), then add others at random.
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
        mode = draw(st.sampled_from(modes))
        lam = None
        if mode == "soft":
            # Zero (no tying) or at least min_lam: a subnormal or tiny strength underflows
            # in float32 and tests nothing.
            strengths = st.floats(min_lam, max_lam) if max_lam >= min_lam and max_lam > 0 \
                else st.nothing()
            lam = {name_a: draw(st.just(0.0) | strengths) for name_a, _ in chosen}
        return TiedPair(model_a, model_b, chosen, lam=lam, mode=mode,
                        penalty=draw(st.sampled_from(penalties)))

    return draw_pair()


# --- parameters, batches, points -----------------------------------------------------------------

def _is_pair(model: Any) -> bool:
    return hasattr(model, "joined_loss_and_grads")


def _check_model(model: Any) -> Any:
    if not isinstance(model, Sequential) and not _is_pair(model):
        raise TypeError(f"model: expected a Sequential or a TiedPair, got "
                        f"{type(model).__name__}")
    return model


def _draw_parameters(rng: np.random.Generator, model: Any, scale: float | None, seed: int):
    if _is_pair(model):
        if scale is None:
            return model.join(*model.init(seed))
        shapes_a, shapes_b = model.parameter_shapes()
        return model.join({k: rng.standard_normal(s) * scale for k, s in shapes_a.items()},
                          {k: rng.standard_normal(s) * scale for k, s in shapes_b.items()})
    if scale is None:
        return model.init(seed)
    return {name: rng.standard_normal(shape) * scale
            for name, shape in model.parameter_shapes().items()}


def parameters(model: Any, *, scale: float | None = None):
    """A parameter dict for ``model``: ``model.init(seed)`` with a drawn seed (``scale=None``,
    the layers' own fan-in scaling), or standard-normal values times ``scale``. For a
    ``TiedPair``: one flat dict with ``"A:"`` / ``"B:"`` keys (``pair.join``).

    >>> from hypothesis import given
    >>> from refimpl import MLP
    >>> model = MLP([2, 3])
    >>> @given(parameters(model, scale=0.5))
    ... def test(params):
    ...     assert set(params) == {"fc1.weight", "fc1.bias"}
    >>> test()
    """
    model = _check_model(model)
    if scale is not None:
        scale = _positive_float(scale, "scale")
    return _SEEDS.map(lambda seed: _draw_parameters(np.random.default_rng(seed), model, scale,
                                                    seed))


def _infer_input_shape(model: Sequential, input_shape: Any) -> tuple[int, ...]:
    if input_shape is not None:
        shape = tuple(_int(size, "input_shape", 1) for size in input_shape)
        try:
            model.output_shape((1, *shape))
        except ValueError as error:
            raise ValueError(f"input_shape: {shape} does not fit the model: {error}") from None
        return shape
    first = model.layers[0]
    if hasattr(first, "in_features"):
        return (first.in_features,)
    if hasattr(first, "input_size") and hasattr(first, "in_channels"):
        return (first.in_channels, *first.input_size)
    raise ValueError(f"input_shape: cannot be inferred for a model starting with "
                     f"{type(first).__name__}; pass the shape of one example, e.g. (C, H, W)")


def _targets(rng: np.random.Generator, model: Sequential, x_shape: tuple[int, ...]) -> np.ndarray:
    out_shape = model.output_shape(x_shape)
    if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
        return rng.integers(0, out_shape[1], size=out_shape[0]).astype(np.int64)
    return rng.standard_normal(out_shape)


def _draw_x(rng: np.random.Generator, model: Sequential, shape: tuple[int, ...], kink_free: bool,
            margin: float) -> np.ndarray:
    first = type(model.layers[0]).__name__
    if kink_free and first == "MaxPool2D":
        return _draw_array(rng, shape, 1.0, False, True, 0.0, 0.0)
    if kink_free and first in KINKED_ACTIVATIONS:
        return _draw_array(rng, shape, 1.0, True, False, KINKED_ACTIVATIONS[first], margin)
    return rng.standard_normal(shape)


def batches(model: Sequential, *, input_shape: Sequence[int] | None = None, min_batch: int = 1,
            max_batch: int = 4, kink_free: bool = False, margin: float = 0.05):
    """``{"x": x, "y": y}`` for a ``Sequential`` with a loss: ``x`` standard normal of shape
    ``(N, *input_shape)``; ``y`` int64 labels (cross-entropy) or standard-normal targets
    (MSE). ``input_shape`` is inferred for a model starting with a dense or locally
    connected layer. ``kink_free`` keeps ``x`` away from a kink of the *first* layer (use
    :func:`points` for the whole model).

    >>> from hypothesis import given
    >>> from refimpl import MLP
    >>> @given(batches(MLP([3, 2]), max_batch=2))
    ... def test(batch):
    ...     assert batch["x"].shape[1:] == (3,) and batch["y"].dtype == "int64"
    >>> test()
    """
    if not isinstance(model, Sequential) or model.loss_spec is None:
        raise TypeError("model: expected a Sequential with a loss")
    shape = _infer_input_shape(model, input_shape)
    min_batch, max_batch = _range(min_batch, max_batch, "min_batch", "max_batch", 1)
    margin = _positive_float(margin, "margin")

    @st.composite
    def draw_batch(draw):
        size = draw(st.integers(min_batch, max_batch))
        rng = np.random.default_rng(draw(_SEEDS))
        x = _draw_x(rng, model, (size, *shape), kink_free, margin)
        return {"x": x, "y": _targets(rng, model, x.shape)}

    return draw_batch()


class Point(NamedTuple):
    """A point and its data: ``params`` (flat ``"A:"``/``"B:"`` keys for a pair) and
    ``inputs`` (``{"x", "y"}``, or ``{"xa", "ya", "xb", "yb"}`` for a pair)."""

    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]


def _nearest_allowed(current: float, shifted: np.ndarray, kink: float, margin: float) -> float:
    """The bias value nearest ``current`` such that every ``shifted + bias`` is at least
    ``margin`` away from ``kink`` (shifted: the pre-activations without this bias entry)."""
    centres = kink - shifted.reshape(-1)                    # bias values that hit the kink
    if centres.size == 0 or np.min(np.abs(current - centres)) >= margin:
        return current
    wide = margin * (1 + 1e-9) + 1e-12                      # strictly outside, after rounding
    candidates = np.concatenate([centres - wide, centres + wide])
    distance = np.abs(candidates[:, None] - centres[None, :]).min(axis=1)
    allowed = candidates[distance >= margin]
    return float(allowed[np.argmin(np.abs(allowed - current))])


def _make_kink_free(model: Sequential, params: dict[str, np.ndarray], x: np.ndarray,
                    margin: float) -> dict[str, np.ndarray]:
    """Move the biases feeding kinked activations (see the module docstring)."""
    params = {name: value.copy() for name, value in params.items()}
    uses = model.slot_uses()
    h = x
    for index, layer in enumerate(model.layers):
        following = model.layers[index + 1] if index + 1 < len(model.layers) else None
        kink = KINKED_ACTIVATIONS.get(type(following).__name__)
        local = model.layer_params(layer, params)
        if kink is not None and layer.name is not None:
            slot = f"{layer.name}.bias"
            if slot not in uses:
                raise ValueError(f"model: kink_free needs a bias in {layer.name!r}, which feeds "
                                 f"{type(following).__name__}")
            if uses[slot] != (slot, False):
                raise ValueError(f"model: kink_free cannot move the shared bias {slot!r} "
                                 f"(it reads {uses[slot][0]!r}); share weights only")
            bias = params[slot]
            without = layer.forward(h, {**local, "bias": np.zeros_like(bias)})[0]
            # The bias has the shape of out.shape[1 : 1 + bias.ndim] and is broadcast over the
            # batch and any trailing axes: gather, for each bias entry, what it shifts.
            moved = np.moveaxis(without, 0, bias.ndim).reshape(*bias.shape, -1)
            new_bias = bias.copy()
            for entry in np.ndindex(bias.shape):
                new_bias[entry] = _nearest_allowed(float(bias[entry]), moved[entry], kink, margin)
            params[slot] = new_bias
            local = model.layer_params(layer, params)
        elif kink is not None and index == 0:
            pass  # the kinked activation is first: the input was drawn kink-free
        elif kink is not None:
            raise ValueError(f"model: kink_free needs a layer with a bias before "
                             f"{type(following).__name__} (layer {index + 1})")
        h = layer.forward(h, local)[0]
    return params


def _has_pool_near_tie(model: Sequential, params: Mapping[str, np.ndarray], x: np.ndarray,
                       gap: float) -> bool:
    """True when a max-pool window (after the input layer) has two positive values closer
    than ``gap`` — the one kink moving a bias cannot remove."""
    h = x
    for index, layer in enumerate(model.layers):
        if type(layer).__name__ == "MaxPool2D" and index > 0:
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
            padded = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
            out_h = (padded.shape[2] - kh) // sh + 1
            out_w = (padded.shape[3] - kw) // sw + 1
            windows = np.stack([padded[:, :, i:i + sh * (out_h - 1) + 1:sh,
                                       j:j + sw * (out_w - 1) + 1:sw]
                                for i in range(kh) for j in range(kw)], axis=-1)
            ordered = np.sort(windows, axis=-1)
            top, second = ordered[..., -1], ordered[..., -2] if kh * kw > 1 else None
            # Exact ties are allowed: they come from windows that read only zero padding
            # (both values are the bias: one function of the parameters, one gradient).
            close = (second > 0) & (top - second < gap) & (top != second) \
                if second is not None else None
            if close is not None and np.any(close):
                return True
        h = layer.forward(h, model.layer_params(layer, params))[0]
    return False


def _draw_point(draw, model: Any, input_shape, min_batch, max_batch, kink_free, margin, scale
                ) -> Point:
    if _is_pair(model):
        return _draw_pair_point(draw, model, min_batch, max_batch, kink_free, margin, scale)
    seed = draw(_SEEDS)
    rng = np.random.default_rng(seed)
    shape = _infer_input_shape(model, input_shape)
    size = draw(st.integers(min_batch, max_batch))
    x = _draw_x(rng, model, (size, *shape), kink_free, margin)
    params = _draw_parameters(rng, model, scale, seed)
    if kink_free:
        params = _make_kink_free(model, params, x, margin)
        if _has_pool_near_tie(model, params, x, margin * 1e-3):
            reject()
    return Point(params, {"x": x, "y": _targets(rng, model, x.shape)})


def _kinked_biases(model: Sequential) -> dict[str, str]:
    """``{bias slot: problem}`` for the biases a kink-free point must move, with a problem
    text ("" when the bias can be moved). Raises nothing; see :func:`_kink_free_problems`."""
    uses = model.slot_uses()
    found = {}
    for index, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if kind not in KINKED_ACTIVATIONS or index == 0:
            continue
        before = model.layers[index - 1]
        slot = f"{before.name}.bias" if before.name is not None else None
        if slot is None or slot not in uses:
            found[f"layer {index - 1}"] = (f"{kind} (layer {index}) follows "
                                           f"{type(before).__name__} without a bias")
        elif uses[slot] != (slot, False):
            found[slot] = f"the bias {slot!r} feeding {kind} is shared (it reads " \
                          f"{uses[slot][0]!r})"
        else:
            found[slot] = ""
    return found


def _kink_free_problems(model: Any) -> list[str]:
    """Why a kink-free point cannot be built for ``model`` by moving biases (empty: it can)."""
    if not _is_pair(model):
        return [problem for problem in _kinked_biases(model).values() if problem]
    problems = []
    for tag, member in (("model_a", model.model_a), ("model_b", model.model_b)):
        problems += [f"{tag}: {p}" for p in _kinked_biases(member).values() if p]
    moving_a, moving_b = _kinked_biases(model.model_a), _kinked_biases(model.model_b)
    l1 = model.mode == "soft" and model.penalty_name == "l1"
    for tie in model.pairs:
        if (model.mode == "hard" or l1) and (tie.name_a in moving_a or tie.name_b in moving_b):
            problems.append(f"the paired bias {tie.name_a!r} / {tie.name_b!r} feeds a kinked "
                            f"activation and is {'shared' if model.mode == 'hard' else 'L1-tied'}"
                            f"; pair weights only")
    return problems


def _draw_pair_point(draw, pair, min_batch, max_batch, kink_free, margin, scale) -> Point:
    seed = draw(_SEEDS)
    rng = np.random.default_rng(seed)
    params_a, params_b = pair.split(_draw_parameters(rng, pair, scale, seed))
    inputs = {}
    for tag, model in (("a", pair.model_a), ("b", pair.model_b)):
        shape = _infer_input_shape(model, None)
        size = draw(st.integers(min_batch, max_batch))
        inputs[f"x{tag}"] = _draw_x(rng, model, (size, *shape), kink_free, margin)
        inputs[f"y{tag}"] = _targets(rng, model, inputs[f"x{tag}"].shape)
    if kink_free:
        if pair.mode == "soft" and pair.penalty_name == "l1":
            # Every paired difference a - b at least `margin` from the L1 kink at 0.
            for tie in pair.pairs:
                a = params_a[tie.name_a]
                b = a - _draw_array(rng, a.shape, 1.0, True, False, 0.0, margin)
                params_b[tie.name_b] = b.T if tie.transpose else b
        # Then the biases (none of them paired where that would undo the above).
        params_a = _make_kink_free(pair.model_a, params_a, inputs["xa"], margin)
        shared = pair.shared_b()
        full_b = dict(params_b)
        for name_b, (name_a, transpose) in shared.items():
            full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        full_b = {name: full_b[name] for name in pair.model_b.parameter_shapes()}
        full_b = _make_kink_free(pair.model_b, full_b, inputs["xb"], margin)
        params_b = {name: value for name, value in full_b.items() if name not in shared}
    return Point(pair.join(params_a, params_b), inputs)


def points(model: Any, *, input_shape: Sequence[int] | None = None, min_batch: int = 1,
           max_batch: int = 4, kink_free: bool = False, margin: float = 0.05,
           scale: float | None = None):
    """:class:`Point` (params and inputs) for a ``Sequential`` or a ``TiedPair``.

    - input_shape: one example's shape (inferred for dense / locally connected first layers;
      required for a convolution first layer); a pair's models must start with a dense layer
    - min_batch, max_batch: batch size range (each model of a pair draws its own)
    - kink_free: every ReLU / LeakyReLU pre-activation and every L1-tied difference at least
      ``margin`` from its kink, by construction (module docstring)
    - scale: parameters standard normal times ``scale``; None uses ``model.init``

    >>> from hypothesis import given
    >>> from refimpl import MLP
    >>> model = MLP([3, 5, 2], activation="relu")
    >>> @given(points(model, kink_free=True, margin=0.1))
    ... def test(point):
    ...     p, x = point.params, point.inputs["x"]
    ...     assert (abs(x @ p["fc1.weight"].T + p["fc1.bias"]) >= 0.1).all()
    >>> test()
    """
    model = _check_model(model)
    if _is_pair(model) and input_shape is not None:
        raise ValueError("input_shape: not used for a TiedPair (its models start with a dense "
                         "layer)")
    if not _is_pair(model):
        _infer_input_shape(model, input_shape)
    min_batch, max_batch = _range(min_batch, max_batch, "min_batch", "max_batch", 1)
    margin = _positive_float(margin, "margin")
    if not isinstance(kink_free, bool):
        raise TypeError(f"kink_free: expected a bool, got {kink_free!r}")
    if scale is not None:
        scale = _positive_float(scale, "scale")
    if kink_free:
        problems = _kink_free_problems(model)
        if problems:
            raise ValueError(f"model: kink_free moves the bias before each kinked activation, "
                             f"which is not possible here: {'; '.join(problems)}")

    @st.composite
    def draw_point(draw):
        return _draw_point(draw, model, input_shape, min_batch, max_batch, kink_free, margin,
                           scale)

    return draw_point()


# --- whole cases ---------------------------------------------------------------------------------

def _model_case(kind: str, model: Sequential, input_shape: tuple[int, ...], point: Point) -> Case:
    x, y = point.inputs["x"], point.inputs["y"]
    config = {"model": model.config(), "input_shape": [x.shape[0], *input_shape]}
    return Case(name=f"drawn-{kind}", kind=kind, config=config, params=point.params,
                inputs=point.inputs, loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
                outputs=lambda p: {"out": model.forward(p, x)},
                evaluate=lambda p, data: (*model.loss_and_grads(p, data["x"], data["y"]),
                                          {"out": model.forward(p, data["x"])}))


def _pair_case(pair: Any, point: Point) -> Case:
    data = point.inputs
    batch_a, batch_b = (data["xa"], data["ya"]), (data["xb"], data["yb"])

    def outputs(p):
        out_a, out_b = pair.forward(*pair.split(p), data["xa"], data["xb"])
        return {"out_a": out_a, "out_b": out_b}

    def evaluate(p, at):
        loss, grads = pair.joined_loss_and_grads(p, (at["xa"], at["ya"]), (at["xb"], at["yb"]))
        out_a, out_b = pair.forward(*pair.split(p), at["xa"], at["xb"])
        return loss, grads, {"out_a": out_a, "out_b": out_b}

    return Case(name="drawn-tied", kind="tied", config={"pair": pair.config()},
                params=point.params, inputs=data,
                loss_and_grads=lambda p: pair.joined_loss_and_grads(p, batch_a, batch_b),
                outputs=outputs, evaluate=evaluate)


def cases(*, kinds: Iterable[str] | None = None, kink_free: bool = False, margin: float = 0.05,
          min_batch: int = 1, max_batch: int = 3, activations: Iterable[str] | None = None,
          geometries=None):
    """Whole :class:`refimpl.testing.cases.Case` objects of the given ``kinds`` ("mlp", "cnn",
    "shared", "tied"; default all), with config, point, data and refimpl's functions — the
    same shape as the built-in catalogue, so everything that takes a catalogue case takes
    these (``assert_matches_oracle``, ``check_gradients(case.loss_and_grads, case.params)``).

    Every drawn case tests something in float32: some gradient is non-zero and no tensor is
    below float32's resolution floor at the point (a float32 implementation is never judged
    "inconclusive" on it; see :mod:`refimpl.testing`). Cross-entropy models have >= 2
    classes and tying strengths are 0 or >= 1e-3 by construction; the rare remaining draws
    (a dead ReLU layer, a softmax saturated to float32 precision) are rejected.

    ``kink_free`` builds the point away from every kink (and then never shares or pairs a
    bias, and always uses biases). ``activations`` restricts the activations drawn;
    ``geometries`` the convolution geometries of "cnn" cases (a strategy of
    :class:`ConvGeometry`; default: kernels <= 3, strides <= 2, padding <= 1, dilation <= 2,
    groups <= 2 and <= 2 channels per group, so a full complex-step check stays fast).

    >>> from hypothesis import given
    >>> import refimpl
    >>> @given(cases(kinds=["mlp", "shared"], kink_free=True))
    ... def test(case):
    ...     assert refimpl.check_gradients(case.loss_and_grads, case.params).ok
    >>> test()
    """
    kinds = _choices(kinds, "kinds", CASE_KINDS)
    if not isinstance(kink_free, bool):
        raise TypeError(f"kink_free: expected a bool, got {kink_free!r}")
    margin = _positive_float(margin, "margin")
    min_batch, max_batch = _range(min_batch, max_batch, "min_batch", "max_batch", 1)
    activations = _choices(activations, "activations", ACTIVATIONS)
    if geometries is None:
        # Small enough for a full complex-step check of every parameter in a test.
        geometries = conv_geometries(max_kernel=3, max_stride=2, max_padding=1, max_dilation=2,
                                     max_channels=2, max_groups=2)
    bias = True if kink_free else None
    # Built once: a strategy built inside every draw costs Hypothesis a source lookup each.
    model_strategies = {
        "mlp": mlps(activations=activations, bias=bias),
        "cnn": cnns(activations=activations, bias=bias, geometries=geometries),
        "shared": shared_mlps(activations=activations, weights_only=kink_free),
        "tied": tied_pairs(activations=activations, weights_only=kink_free),
    }

    @st.composite
    def draw_case(draw):
        kind = draw(st.sampled_from(kinds))
        drawn = draw(model_strategies[kind])
        if kind == "tied":
            point = draw(points(drawn, min_batch=min_batch, max_batch=max_batch,
                                kink_free=kink_free, margin=margin))
            case = _pair_case(drawn, point)
        else:
            model, shape = (drawn.model, drawn.input_shape) if kind == "cnn" else \
                (drawn, (drawn.layers[0].in_features,))
            point = draw(points(model, input_shape=shape, min_batch=min_batch,
                                max_batch=max_batch, kink_free=kink_free, margin=margin))
            case = _model_case(kind, model, shape, point)
        if not _tests_something(case):
            reject()
        return case

    return draw_case()


#: The dtype in which every drawn case is resolvable (see :func:`cases`).
RESOLVED_IN = "float32"


def _tests_something(case: Case) -> bool:
    """Some gradient is non-zero, and every tensor (loss, gradients, outputs) can be judged in
    :data:`RESOLVED_IN` (:func:`refimpl.testing.unresolved_tensors` is empty)."""
    _, grads = case.loss_and_grads(case.params)
    if not any(np.any(grad != 0) for grad in grads.values()):
        return False
    return not unresolved_tensors(case, RESOLVED_IN)
