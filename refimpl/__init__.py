"""refimpl: reference neural-network gradients in pure NumPy.

Every gradient is an explicit formula, checked against numerical differentiation. This module
is the small, stable face of the package; the layers below it, each importing only from the
layers under it:

- :mod:`refimpl.cli`: the ``refimpl`` command (the only layer that parses or prints);
- :mod:`refimpl.adapters`: builders that express every case in PyTorch or JAX (optional);
- :mod:`refimpl.testing`: the oracle kit (comparison rule, golden vectors, strategies, cases,
  conformance runs);
- :mod:`refimpl.optim`: reference optimizers (PyTorch's SGD, Adam, AdamW), clipping and
  training steps over every model kind;
- :mod:`refimpl.hessian`: explicit Hessian-vector and Jacobian-vector products of every model
  kind (the R-operator), checked against the complex step of the gradient;
- :mod:`refimpl.microbatch`, :mod:`refimpl.modelcheck`: accumulated micro-batch gradients,
  the fast full gradient check of a model, tied pair or anchored model;
- :mod:`refimpl.tying`, :mod:`refimpl.gradcheck`: parameter tying, the numerical gradient
  checker;
- :mod:`refimpl.nn`: the operations (forward/backward pairs), ``Sequential`` and its sharing
  map, the MLP and CNN builders.

Examples
--------
>>> import numpy as np
>>> import refimpl as ri
>>> model = ri.MLP([3, 4, 2])
>>> params = model.init(seed=0)
>>> x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
>>> ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params).ok
True
"""

from . import nn
from ._version import __version__
from .gradcheck import GradcheckReport, check_gradients, check_vjp
from .hessian import check_hvp, hvp, jvp
from .microbatch import accumulated_loss_and_grads
from .modelcheck import check_model_gradients
from .nn import CNN, MLP, ParameterCount, Sequential, ShareSource, Siamese, transposed
from .optim import (
    SGD,
    Adam,
    AdamW,
    ClipGradNorm,
    MicroBatches,
    Trajectory,
    clip_grad_norm,
    optimizer_from_config,
    train,
    train_step,
    train_steps,
)
from .study import (
    anchored_contributions,
    microbatch_contributions,
    model_contributions,
    pair_contributions,
    siamese_contributions,
    study_steps,
)
from .tying import AnchoredModel, TiedPair

__all__ = [
    "nn", "Sequential", "MLP", "CNN", "ShareSource", "transposed", "ParameterCount",
    "TiedPair", "AnchoredModel", "SGD", "train",
    "Adam", "AdamW", "clip_grad_norm", "ClipGradNorm", "train_step", "train_steps",
    "Trajectory", "MicroBatches", "optimizer_from_config",
    "Siamese", "accumulated_loss_and_grads",
    "check_gradients", "check_vjp", "GradcheckReport", "__version__",
    "check_model_gradients",
    "model_contributions", "pair_contributions", "anchored_contributions", "study_steps",
    "siamese_contributions", "microbatch_contributions",
    "hvp", "jvp", "check_hvp",
]
