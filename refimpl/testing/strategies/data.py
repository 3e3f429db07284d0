"""Strategies for values: arrays, parameters, batches, and whole points (params and data)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from ..._validate import check_int, check_tolerance
from ...nn import Sequential
from ._checks import _bools, _positive, _range
from .kink_free import (
    KINKED_ACTIVATIONS,
    _has_pool_near_tie,
    _is_pair,
    _kink_free_problems,
    _make_kink_free,
)

#: Seeds of the NumPy generator that draws an array: an integer that Hypothesis shrinks to 0.
_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def _draw_array(rng: np.random.Generator, shape: tuple[int, ...], scale: float,
                kink_free: bool, distinct: bool, kink: float, margin: float) -> np.ndarray:
    """The array :func:`arrays` draws from ``rng`` (see there for the arguments)."""
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
    """Float64 arrays of a fixed ``shape``, drawn from a NumPy generator Hypothesis seeds.

    Parameters
    ----------
    shape : int or sequence of int
        The shape of every array.
    scale : float
        Standard deviation (with ``distinct``: the spread of the values); > 0.
    kink_free : bool
        Every value at least ``margin`` away from ``kink`` (by construction).
    distinct : bool
        No two values closer than ``scale / (2 * size)`` (no ties, for max pooling).
    kink, margin : float
        Where the kink is, and how far every value stays from it.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of float64 ``np.ndarray`` of shape ``shape``.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(arrays((2, 3), kink_free=True, margin=0.1))
    ... def test(x):
    ...     assert x.shape == (2, 3) and (abs(x) >= 0.1).all()
    >>> test()
    """
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(check_int(size, "shape", 0) for size in shape)
    scale = _positive(scale, "scale")
    margin = check_tolerance(margin, "margin")
    kink = float(kink)
    _bools(kink_free=kink_free, distinct=distinct)
    return _SEEDS.map(lambda seed: _draw_array(np.random.default_rng(seed), shape, scale,
                                               kink_free, distinct, kink, margin))


def _check_model(model: Any) -> Any:
    """``model`` if it is a ``Sequential`` or a ``TiedPair``, else ``TypeError``."""
    if not isinstance(model, Sequential) and not _is_pair(model):
        raise TypeError(f"model: expected a Sequential or a TiedPair, got "
                        f"{type(model).__name__}")
    return model


def _draw_parameters(rng: np.random.Generator, model: Any, scale: float | None, seed: int):
    """Parameters for ``model`` from ``rng`` (``model.init(seed)`` when ``scale`` is None)."""
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
    """A parameter dict for ``model``.

    Parameters
    ----------
    model : refimpl.nn.Sequential or refimpl.TiedPair
        The model; for a pair, one flat dict with ``"A:"`` / ``"B:"`` keys (``pair.join``).
    scale : float, optional
        Standard-normal values times ``scale``; None (default) uses ``model.init(seed)`` with
        a drawn seed (the layers' own fan-in scaling).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of ``dict[str, np.ndarray]`` with the keys and shapes of ``model.parameter_shapes()``.

    Examples
    --------
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
        scale = _positive(scale, "scale")
    return _SEEDS.map(lambda seed: _draw_parameters(np.random.default_rng(seed), model, scale,
                                                    seed))


def _infer_input_shape(model: Sequential, input_shape: Any) -> tuple[int, ...]:
    """One example's shape: ``input_shape`` checked against the model, or inferred."""
    if input_shape is not None:
        shape = tuple(check_int(size, "input_shape", 1) for size in input_shape)
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
    """Labels ``(N,)`` (cross-entropy) or targets of the output's shape (MSE)."""
    out_shape = model.output_shape(x_shape)
    if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
        return rng.integers(0, out_shape[1], size=out_shape[0]).astype(np.int64)
    return rng.standard_normal(out_shape)


def _draw_x(rng: np.random.Generator, model: Sequential, shape: tuple[int, ...], kink_free: bool,
            margin: float) -> np.ndarray:
    """The input ``x``, kink-free or distinct where the first layer needs it."""
    first = type(model.layers[0]).__name__
    if kink_free and first == "MaxPool2D":
        return _draw_array(rng, shape, 1.0, False, True, 0.0, 0.0)
    if kink_free and first in KINKED_ACTIVATIONS:
        return _draw_array(rng, shape, 1.0, True, False, KINKED_ACTIVATIONS[first], margin)
    return rng.standard_normal(shape)


def batches(model: Sequential, *, input_shape: Sequence[int] | None = None, min_batch: int = 1,
            max_batch: int = 4, kink_free: bool = False, margin: float = 0.05):
    """A batch of data ``{"x": x, "y": y}`` for a ``Sequential`` with a loss.

    ``x`` is standard normal of shape ``(N, *input_shape)``; ``y`` int64 labels ``(N,)``
    (cross-entropy) or standard-normal targets of the output's shape (MSE).

    Parameters
    ----------
    model : refimpl.nn.Sequential
        A model with a loss.
    input_shape : sequence of int, optional
        One example's shape, e.g. ``(D,)`` or ``(C, H, W)``; inferred for a model starting
        with a dense or locally connected layer.
    min_batch, max_batch : int
        Range of the batch size N.
    kink_free : bool
        Keep ``x`` away from a kink of the *first* layer (use :func:`points` for the whole
        model).
    margin : float
        The distance from the kink.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of ``dict[str, np.ndarray]``.

    Examples
    --------
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
    margin = _positive(margin, "margin")

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



def _draw_point(draw, model: Any, input_shape, min_batch, max_batch, kink_free, margin, scale
                ) -> Point:
    """A :class:`Point` for one model (or a pair: :func:`_draw_pair_point`)."""
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



def _draw_pair_point(draw, pair, min_batch, max_batch, kink_free, margin, scale) -> Point:
    """A :class:`Point` for a tied pair, L1 differences and biases kink-free if asked."""
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
    """Points (parameters and data) for a ``Sequential`` or a ``TiedPair``.

    Parameters
    ----------
    model : refimpl.nn.Sequential or refimpl.TiedPair
        The model; a pair's models must start with a dense layer.
    input_shape : sequence of int, optional
        One example's shape (inferred for dense / locally connected first layers; required
        for a convolution first layer; not used for a pair).
    min_batch, max_batch : int
        Range of the batch size N (each model of a pair draws its own).
    kink_free : bool
        Every ReLU / LeakyReLU pre-activation and every L1-tied difference at least
        ``margin`` from its kink, by construction (see :mod:`refimpl.testing.strategies`).
    margin : float
        The distance from every kink; > 0.
    scale : float, optional
        Parameters standard normal times ``scale``; None uses ``model.init``.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`Point`.

    Raises
    ------
    ValueError
        With ``kink_free``, when a kinked activation does not follow a layer with its own
        unshared, unpaired bias (the construction moves that bias).

    Examples
    --------
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
    margin = _positive(margin, "margin")
    _bools(kink_free=kink_free)
    if scale is not None:
        scale = _positive(scale, "scale")
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

