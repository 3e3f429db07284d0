"""Whole drawn cases: a model, a point and refimpl's functions, like a catalogue case."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from ...nn import Sequential
from ...nn.builders import ACTIVATIONS
from ..cases import Case, describe_inputs, resolved_share
from ..cases.tied import tied_case
from ..oracle import unresolved_tensors
from ._checks import _bools, _choices, _positive, _range
from .convolution import cnns, conv_geometries
from .data import Point, points
from .models import mlps, shared_mlps, tied_pairs

#: What :func:`cases` can draw.
CASE_KINDS = ("mlp", "cnn", "shared", "tied")

def _model_case(kind: str, model: Sequential, input_shape: tuple[int, ...], point: Point) -> Case:
    """A drawn case of one model at ``point``."""
    x, y = point.inputs["x"], point.inputs["y"]
    config = {"model": model.config(), "input_shape": [x.shape[0], *input_shape],
              "resolved_share": resolved_share(model), "inputs": describe_inputs(point.inputs)}
    return Case(name=f"drawn-{kind}", kind=kind, config=config, params=point.params,
                inputs=point.inputs, loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
                outputs=lambda p: {"out": model.forward(p, x)},
                evaluate=lambda p, data: (*model.loss_and_grads(p, data["x"], data["y"]),
                                          {"out": model.forward(p, data["x"])}))


def _pair_case(pair: Any, point: Point) -> Case:
    """A drawn case of a tied pair at ``point`` (flat ``"A:"`` / ``"B:"`` parameters)."""
    resolved = {"model_a": resolved_share(pair.model_a), "model_b": resolved_share(pair.model_b)}
    return tied_case("drawn-tied", pair, point.params, point.inputs,
                     {"pair": pair.config(), "resolved_share": resolved})


def cases(*, kinds: Iterable[str] | None = None, kink_free: bool = False, margin: float = 0.05,
          min_batch: int = 1, max_batch: int = 3, activations: Iterable[str] | None = None,
          geometries=None):
    """Whole cases: a drawn model, point and data, with refimpl's functions.

    A drawn :class:`refimpl.testing.cases.Case` has the shape of a built-in catalogue case,
    so everything that takes a catalogue case takes these (``assert_matches_oracle``,
    ``check_gradients(case.loss_and_grads, case.params)``).

    Every drawn case tests something in float32: some gradient is non-zero and no tensor is
    below float32's resolution floor at the point (a float32 implementation is never judged
    "inconclusive" on it; see :mod:`refimpl.testing`). Cross-entropy models have >= 2
    classes and tying strengths are 0 or >= 1e-3 by construction; the rare remaining draws
    (a dead ReLU layer, a softmax saturated to float32 precision) are rejected.

    ``kink_free`` builds the point away from every kink (and then never shares or pairs a
    bias, and always uses biases). ``activations`` restricts the activations drawn;
    ``geometries`` the convolution geometries of "cnn" cases (default: kernels <= 3, strides
    <= 2, padding <= 1, dilation <= 2, groups <= 2 and <= 2 channels per group, so a full
    complex-step check stays fast).

    Parameters
    ----------
    kinds : iterable of str, optional
        Any of :data:`CASE_KINDS` ("mlp", "cnn", "shared", "tied"; default all).
    kink_free : bool
        Build the point away from every kink.
    margin : float
        The distance from every kink; > 0.
    min_batch, max_batch : int
        Range of the batch size N.
    activations : iterable of str, optional
        Activation names to draw from (default all).
    geometries : hypothesis.strategies.SearchStrategy, optional
        Of :class:`~refimpl.testing.strategies.ConvGeometry`, for "cnn" cases.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`refimpl.testing.cases.Case`.

    Examples
    --------
    >>> from hypothesis import given
    >>> import refimpl
    >>> @given(cases(kinds=["mlp", "shared"], kink_free=True))
    ... def test(case):
    ...     assert refimpl.check_gradients(case.loss_and_grads, case.params).ok
    >>> test()
    """
    kinds = _choices(kinds, "kinds", CASE_KINDS)
    _bools(kink_free=kink_free)
    margin = _positive(margin, "margin")
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
