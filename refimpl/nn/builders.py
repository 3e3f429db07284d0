"""Builders of common models: :func:`MLP` and :func:`CNN` return a :class:`Sequential`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .losses import MSE, Loss, SoftmaxCrossEntropy
from .pool import Flatten, MaxPool2D
from .sequential import Sequential, ShareSource

__all__ = ["MLP", "CNN", "ACTIVATIONS", "LOSSES"]


ACTIVATIONS = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid,
    "softplus": Softplus, "identity": Identity,
}
LOSSES = {"cross_entropy": SoftmaxCrossEntropy, "mse": MSE}


def MLP(
    sizes: Sequence[int],
    activation: str | Layer = "tanh",
    loss: str | Loss | None = "cross_entropy",
    bias: bool = True,
    share: Mapping[str, str | ShareSource] | None = None,
) -> Sequential:
    """A multilayer perceptron ``Dense("fc1", sizes[0], sizes[1]) -> activation -> ... ->
    Dense("fcL", sizes[-2], sizes[-1])`` (no activation after the last layer).

    Parameters
    ----------
    sizes : sequence of int
        ``[in, hidden..., out]``, at least two.
    activation : str or Layer
        A name (relu, leaky_relu, tanh, sigmoid, softplus, identity) or a parameter-free
        layer spec.
    loss : str, Loss or None
        ``"cross_entropy"``, ``"mse"``, a loss spec or None.
    bias : bool
        Whether the dense layers have a bias.
    share : dict, optional
        The sharing map of :class:`~refimpl.nn.Sequential`.

    Returns
    -------
    model : refimpl.nn.sequential.Sequential
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected at least two sizes (in, out), got {sizes}")
    activation = _by_name(activation, ACTIVATIONS, "activation")
    loss = _by_name(loss, LOSSES, "loss")
    layers: list[Layer] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        if index > 1:
            layers.append(activation)
        layers.append(Dense(f"fc{index}", fan_in, fan_out, bias=bias))
    return Sequential(layers, loss=loss, share=share)


def CNN(
    input_shape: Sequence[int],
    convs: Sequence[int | Mapping[str, Any]],
    dense: Sequence[int],
    activation: str | Layer = "relu",
    pool: int | Layer | None = 2,
    loss: str | Loss | None = "cross_entropy",
    share: Mapping[str, str | ShareSource] | None = None,
) -> Sequential:
    """A convolutional network::

        conv1 -> activation -> pool -> conv2 -> activation -> pool -> ... -> Flatten
              -> fc1 -> activation -> ... -> fcL          (no activation after fcL)

    Parameters
    ----------
    input_shape : (C, H, W)
        One example's shape (the batch axis is not included).
    convs : sequence of int or dict
        One entry per convolution, named ``conv1``, ``conv2``, ...: an int ``out_channels``
        (a 3x3 kernel with padding 1, which keeps H and W), or a dict of
        :class:`~refimpl.nn.Conv2D` keyword arguments (``out_channels`` and ``kernel_size``
        required; ``stride``, ``padding``, ``dilation``, ``groups``, ``bias`` optional).
        ``in_channels`` is always inferred.
    dense : sequence of int
        The sizes of the dense layers after flattening, named ``fc1``, ``fc2``, ...; the last
        is the output size. Their input size is inferred.
    activation : str or Layer
        A name (relu, leaky_relu, tanh, sigmoid, softplus, identity) or a parameter-free
        layer spec.
    pool : None, int or Layer
        None, an int ``k`` for ``MaxPool2D(k)``, or a pooling spec (``MaxPool2D`` /
        ``AvgPool2D``), used after every convolution's activation.
    loss, share
        As :func:`MLP`.

    Returns
    -------
    model : refimpl.nn.sequential.Sequential

    Raises
    ------
    ValueError
        Naming the layer, for a geometry that does not fit (a kernel or pool window larger
        than its input); naming the argument, for an unknown name or a bad size.

    Examples
    --------
    ``CNN((1, 12, 12), [4, {"out_channels": 6, "kernel_size": 3, "stride": 2, "padding": 1}],
    [16, 10])``: 12x12 -> conv1 12x12 -> pool 6x6 -> conv2 3x3 -> pool 1x1 -> Flatten (6)
    -> fc1 (16) -> fc2 (10).
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(
            isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0
            for size in input_shape):
        raise ValueError(f"input_shape: expected (C, H, W), three positive ints, got "
                         f"{input_shape!r}")
    convs, dense = list(convs), list(dense)
    if not dense:
        raise ValueError("dense: expected at least one dense layer size (the output size)")
    activation = _by_name(activation, ACTIVATIONS, "activation")
    if isinstance(pool, (int, np.integer)) and not isinstance(pool, bool):
        pool = MaxPool2D(int(pool))
    elif pool is not None and not isinstance(pool, Layer):
        raise TypeError(f"pool: expected None, an int window size or a pooling layer spec, "
                        f"got {pool!r}")
    loss = _by_name(loss, LOSSES, "loss")

    layers: list[Layer] = []
    shape: tuple[int, ...] = (1, *input_shape)   # a batch of one, to infer the sizes
    for index, conv in enumerate(convs, start=1):
        for block_layer in (_conv_layer(index, conv, shape[1]), activation, pool):
            if block_layer is not None:
                try:
                    shape = block_layer.output_shape(shape)
                except ValueError as error:
                    raise ValueError(f"convs[{index - 1}] (conv{index} block): {error}") from None
                layers.append(block_layer)
    layers.append(Flatten())
    shape = layers[-1].output_shape(shape)
    for index, size in enumerate(dense, start=1):
        if index > 1:
            layers.append(activation)
        layers.append(Dense(f"fc{index}", shape[1], size))
        shape = (1, size)
    return Sequential(layers, loss=loss, share=share)


def _by_name(value: Any, table: Mapping[str, type], argument: str) -> Any:
    """``table[value]()`` for a name, ``value`` itself otherwise (a spec, or None)."""
    if not isinstance(value, str):
        return value
    if value not in table:
        raise ValueError(f"{argument}: unknown name {value!r}; expected one of {sorted(table)}")
    return table[value]()


def _conv_layer(index: int, conv: Any, in_channels: int) -> Conv2D:
    """The ``index``-th convolution (1-based) of :func:`CNN` from its ``convs`` entry."""
    if isinstance(conv, (int, np.integer)) and not isinstance(conv, bool):
        conv = {"out_channels": int(conv), "kernel_size": 3, "padding": 1}
    if not isinstance(conv, Mapping):
        raise TypeError(f"convs[{index - 1}]: expected an int out_channels or a dict of "
                        f"Conv2D arguments, got {conv!r}")
    if "in_channels" in conv or "name" in conv:
        raise ValueError(f"convs[{index - 1}]: in_channels and name are inferred; got "
                         f"{sorted(conv)}")
    return Conv2D(f"conv{index}", in_channels, **conv)
