"""Operations as forward/backward pairs of free functions, with thin layer specs.

``nn.Sequential`` / ``nn.MLP`` are re-exported from :mod:`refimpl.model` for the public
contract's spelling; ``nn`` itself knows nothing of models.
"""

from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .base import Layer, ParameterFreeLayer
from .conv import Conv2D, LocallyConnected2D
from .dense import Dense
from .losses import MSE, Loss, SoftmaxCrossEntropy
from .pool import AvgPool2D, Flatten, MaxPool2D

__all__ = [
    "Layer", "ParameterFreeLayer", "Dense",
    "Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "Flatten",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Identity",
    "Loss", "SoftmaxCrossEntropy", "MSE",
    "Sequential", "MLP", "CNN", "transposed", "ShareSource",
]

from ..model import CNN, MLP, Sequential, ShareSource, transposed  # noqa: E402
