"""refimpl: reference neural-network gradients in pure NumPy.

Every gradient is an explicit formula, checked against numerical differentiation.
"""

from . import nn
from ._version import __version__
from .gradcheck import GradcheckReport, check_gradients, check_vjp
from .nn import CNN, MLP, ParameterCount, Sequential, ShareSource, transposed
from .optim import SGD, train
from .tying import AnchoredModel, TiedPair

__all__ = [
    "nn", "Sequential", "MLP", "CNN", "ShareSource", "transposed", "ParameterCount",
    "TiedPair", "AnchoredModel", "SGD", "train",
    "check_gradients", "check_vjp", "GradcheckReport", "__version__",
]
