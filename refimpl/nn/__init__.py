"""Operations as forward/backward pairs of free functions, with thin layer specs; beside each
pair its second-order pair, ``*_jvp`` (forward mode) and ``*_backward_jvp`` (the R-operator of
the backward pass), which :mod:`refimpl.hessian` composes.

``Sequential`` (with its sharing map) lives here too, and the :func:`MLP` / :func:`CNN`
builders, since the public contract spells them ``nn.Sequential`` and ``nn.MLP``: ``nn``
imports nothing above it.
"""

from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .base import Layer, ParameterFreeLayer
from .builders import CNN, MLP
from .conv import Conv2D
from .dense import Dense
from .embedding import Embedding
from .locally_connected import LocallyConnected2D
from .losses import MSE, Loss, SoftmaxCrossEntropy
from .metric_losses import ContrastiveLoss, MetricLoss, TripletMarginLoss
from .pool import AvgPool2D, Flatten, MaxPool2D
from .recurrent import RNN, LastStep, UnrolledRNN
from .sequential import ParameterCount, Sequential, ShareSource, transposed
from .siamese import Siamese

__all__ = [
    "Layer", "ParameterFreeLayer", "Dense", "Embedding", "RNN", "LastStep", "UnrolledRNN",
    "Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "Flatten",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Identity",
    "Loss", "SoftmaxCrossEntropy", "MSE",
    "Sequential", "MLP", "CNN", "transposed", "ShareSource", "ParameterCount",
    "MetricLoss", "TripletMarginLoss", "ContrastiveLoss", "Siamese",
]

