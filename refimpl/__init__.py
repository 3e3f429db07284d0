"""refimpl: reference neural-network gradients in pure NumPy.

Every gradient is an explicit formula, checked against numerical differentiation.
"""

from . import nn
from .gradcheck import GradcheckReport, check_gradients, check_vjp
from .model import CNN, MLP, ParameterCount, Sequential, ShareSource, transposed
from .optim import SGD, train
from .tying import AnchoredModel, TiedPair

__version__ = "0.1.0"

__all__ = [
    "nn", "Sequential", "MLP", "CNN", "ShareSource", "transposed", "ParameterCount",
    "TiedPair", "AnchoredModel", "SGD", "train",
    "check_gradients", "check_vjp", "GradcheckReport", "__version__",
]
