"""Strategies for convolutions: valid geometries, and small CNNs built on them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from hypothesis import strategies as st

from ..._validate import check_int
from ...nn import (
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    LocallyConnected2D,
    MaxPool2D,
    Sequential,
)
from ...nn.builders import ACTIVATIONS, LOSSES
from ._checks import _choices, _flag, _optional_bool


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

    The input size is chosen last, as ``(Ho - 1) * s + d(k - 1) + 1 - 2p + r`` with the
    remainder ``r`` in [0, s - 1], so the output size is ``Ho`` and the division rounds down
    exactly when ``r > 0``.

    Parameters
    ----------
    max_kernel, max_stride, max_padding, max_dilation : int
        Per-axis ranges, from 1 (from 0 for the padding).
    max_channels : int
        Channels per group, at most.
    max_groups : int
        Groups are drawn in [1, max_groups]; channels as multiples of the groups.
    max_size : int, optional
        Largest input height / width (default: the smallest size that lets every kernel and
        stride fit, ``max_dilation * (max_kernel - 1) + max_stride``).
    rounds_down : bool, optional
        True draws, on both axes, input sizes where the output-size division leaves a
        remainder (needs ``max_stride >= 2``); False only exact divisions; None either.
    square : bool, optional
        True gives equal height / width hyper-parameters, False may differ, None draws.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`ConvGeometry`.

    Raises
    ------
    ValueError
        If ``max_size`` is too small for the largest kernel and stride, or
        ``rounds_down=True`` with ``max_stride=1`` (and, with ``TypeError``, for any other
        bad override, naming it).

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(conv_geometries(rounds_down=True))
    ... def test(g):
    ...     assert all(g.rounds_down()) and min(g.output_size()) >= 1
    >>> test()
    """
    max_kernel = check_int(max_kernel, "max_kernel", 1)
    max_stride = check_int(max_stride, "max_stride", 1)
    max_dilation = check_int(max_dilation, "max_dilation", 1)
    limits = _AxisLimits(max_kernel, max_stride, check_int(max_padding, "max_padding", 0),
                         max_dilation, _max_size(max_size, max_kernel, max_stride, max_dilation),
                         _optional_bool(rounds_down, "rounds_down"))
    max_channels = check_int(max_channels, "max_channels", 1)
    max_groups = check_int(max_groups, "max_groups", 1)
    square = _optional_bool(square, "square")
    if limits.rounds_down and limits.max_stride < 2:
        raise ValueError("rounds_down: an output size can round down only with a stride >= 2; "
                         "got max_stride=1")

    @st.composite
    def draw_geometry(draw):
        groups = draw(st.integers(1, max_groups))
        in_channels = groups * draw(st.integers(1, max_channels))
        out_channels = groups * draw(st.integers(1, max_channels))
        height_axis = _draw_axis(draw, limits)
        width_axis = height_axis if _flag(draw, square) else _draw_axis(draw, limits)
        return ConvGeometry(in_channels, out_channels, height_axis[0], width_axis[0],
                            (height_axis[1], width_axis[1]), (height_axis[2], width_axis[2]),
                            (height_axis[3], width_axis[3]), (height_axis[4], width_axis[4]),
                            groups)

    return draw_geometry()


class _AxisLimits(NamedTuple):
    """The checked per-axis overrides of :func:`conv_geometries`."""

    max_kernel: int
    max_stride: int
    max_padding: int
    max_dilation: int
    max_size: int
    rounds_down: bool | None


def _max_size(max_size: Any, max_kernel: int, max_stride: int, max_dilation: int) -> int:
    """The largest input size: at least what lets every drawn kernel and stride fit."""
    smallest = max_dilation * (max_kernel - 1) + max_stride
    if max_size is None:
        return smallest
    max_size = check_int(max_size, "max_size", 1)
    if max_size < smallest:
        raise ValueError(f"max_size: expected >= max_dilation * (max_kernel - 1) + max_stride "
                         f"= {smallest} so that every drawn kernel and stride fits, got "
                         f"{max_size}")
    return max_size


def _draw_axis(draw: Any, limits: _AxisLimits) -> tuple[int, int, int, int, int]:
    """One axis: ``(input size, kernel, stride, padding, dilation)``."""
    k = draw(st.integers(1, limits.max_kernel))
    d = draw(st.integers(1, limits.max_dilation)) if k > 1 else 1
    s = draw(st.integers(2 if limits.rounds_down else 1, limits.max_stride))
    p = draw(st.integers(0, limits.max_padding))
    if limits.rounds_down is None:
        r = draw(st.integers(0, s - 1))
    else:
        r = draw(st.integers(1, s - 1)) if limits.rounds_down else 0
    extent = d * (k - 1) + 1
    base = extent - 2 * p + r            # the input size for Ho = 1
    # Sizes base + m * s (m >= 0) within [1, max_size]: non-empty because
    # base <= extent + s - 1 <= max_size and consecutive sizes are s apart.
    m_low = max(0, -((base - 1) // s)) if base < 1 else 0
    m_high = (limits.max_size - base) // s
    m = draw(st.integers(m_low, max(m_low, m_high)))
    return base + m * s, k, s, p, d


class ModelExample(NamedTuple):
    """A model and the shape of one example (without the batch axis), e.g. (C, H, W)."""

    model: Sequential
    input_shape: tuple[int, ...]


def cnns(*, geometries=None, activations: Iterable[str] | None = None,
         pools: Iterable[str] | None = None, locally_connected: bool | None = False,
         losses: Iterable[str] | None = None, max_classes: int = 4, bias: bool | None = True):
    """CNNs ``conv -> activation -> [pool] -> Flatten -> Dense`` with their input shape.

    Parameters
    ----------
    geometries : hypothesis.strategies.SearchStrategy, optional
        Of :class:`ConvGeometry` (default ``conv_geometries()``).
    activations : iterable of str, optional
        Activation names (default all).
    pools : iterable of str, optional
        Any of "max", "avg", "none" (default all); a 2x2 pool is used only where it fits.
    locally_connected : bool, optional
        True uses ``LocallyConnected2D`` (the unshared twin), None draws.
    losses : iterable of str, optional
        Loss of the dense head (cross-entropy: at least 2 classes).
    max_classes : int
        Largest number of outputs K of the dense head.
    bias : bool, optional
        Conv and dense biases; None draws.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`ModelExample` (the model, and ``(C, H, W)`` of one example).

    Examples
    --------
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
    max_classes = check_int(max_classes, "max_classes", 1)

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
