"""Built-in CNN cases: conv -> ReLU/Tanh -> pool -> flatten -> dense, with strided, dilated,
grouped and padded convolutions, average pooling, and one locally connected model.

All but the last are small enough (<= 2000 parameters) for a full complex-step check; the
last is checked along random directions.
"""

from __future__ import annotations

from ...nn import (
    CNN,
    MSE,
    AvgPool2D,
    Dense,
    Flatten,
    LocallyConnected2D,
    MaxPool2D,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
    Tanh,
)
from . import Case
from .mlp import model_case


def _locally_connected() -> Sequential:
    """A locally connected CNN (unshared weights at every position) on 2x7x7 inputs."""
    # 2x7x7 -> LocallyConnected2D 3x3, stride 2 -> 3x3x3 -> ReLU -> max 2x2 stride 1 -> 2x2x3
    return Sequential(
        [LocallyConnected2D("local1", 2, 3, kernel_size=3, input_size=(7, 7), stride=2),
         ReLU(), MaxPool2D(2, stride=1), Flatten(), Dense("fc1", 12, 4)],
        loss=SoftmaxCrossEntropy(),
    )


def cases() -> list[Case]:
    """The CNN cases of the catalogue."""
    specs = [
        # (name, model, input_shape (C, H, W), batch)
        ("cnn-relu-maxpool",
         CNN((1, 6, 6), [3], [4]), (1, 6, 6), 4),
        ("cnn-batch1-one-channel",
         # Tanh: behind a single pooled unit a ReLU was dead at this point, which left every
         # convolution gradient exactly 0 and so checked nothing (tests/test_cases.py).
         CNN((1, 4, 4), [{"out_channels": 1, "kernel_size": 2}], [2], activation="tanh"),
         (1, 4, 4), 1),
        ("cnn-tanh-strided-avgpool",
         CNN((2, 9, 8), [{"out_channels": 3, "kernel_size": (3, 2), "stride": 2}], [5, 3],
             activation="tanh", pool=AvgPool2D(2)), (2, 9, 8), 3),
        ("cnn-dilated-padded-mse",
         CNN((1, 7, 7), [{"out_channels": 2, "kernel_size": 3, "dilation": 2, "padding": 2}],
             [3], pool=MaxPool2D(3, stride=2, padding=1), loss=MSE()), (1, 7, 7), 3),
        ("cnn-grouped-depthwise",
         CNN((4, 6, 6), [{"out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 2},
                         {"out_channels": 4, "kernel_size": 2, "groups": 4}],
             [3], activation=Tanh(), pool=None), (4, 6, 6), 2),
        ("cnn-two-blocks-round-down",
         # Every spatial step rounds down: 12 -> conv 3, stride 2: floor(9/2)+1 = 5 (input
         # row 11 unread) -> max 2: 2 (row 4 unread) -> conv 2, padding 1: 3 -> max 2: 1
         # (row 2 unread).
         CNN((2, 12, 12), [{"out_channels": 3, "kernel_size": 3, "stride": 2},
                           {"out_channels": 4, "kernel_size": 2, "padding": 1}], [4]),
         (2, 12, 12), 3),
        ("cnn-locally-connected", _locally_connected(), (2, 7, 7), 3),
        ("cnn-lenet-like-directional",
         CNN((3, 16, 16), [8, 16], [10]), (3, 16, 16), 4),
    ]
    return [model_case(name, "cnn", model, input_shape, batch, seed=100 + index)
            for index, (name, model, input_shape, batch) in enumerate(specs)]
