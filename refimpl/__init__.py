"""refimpl: reference neural-network gradients in pure NumPy.

Every gradient is an explicit formula, checked against numerical differentiation.
"""

from . import nn
from .gradcheck import GradcheckReport, check_gradients
from .model import MLP, ParameterCount, Sequential, ShareSource, transposed

__version__ = "0.1.0"

__all__ = [
    "nn", "Sequential", "MLP", "ShareSource", "transposed", "ParameterCount",
    "check_gradients", "GradcheckReport", "__version__",
]
