"""Built-in MLP cases: several shapes, every activation, both losses."""

from __future__ import annotations

import numpy as np

from ...nn import MLP, Sequential
from . import Case

#: (name, sizes, activation, loss, batch). Small enough for a full complex-step check.
MLP_SPECS = (
    ("mlp-tanh-ce", (4, 8, 3), "tanh", "cross_entropy", 5),
    ("mlp-relu-ce", (5, 7, 6, 4), "relu", "cross_entropy", 6),
    ("mlp-leaky-relu-mse", (3, 6, 2), "leaky_relu", "mse", 4),
    ("mlp-sigmoid-mse", (4, 5, 5, 3), "sigmoid", "mse", 3),
    ("mlp-softplus-ce", (6, 4, 5), "softplus", "cross_entropy", 7),
    ("mlp-identity-mse", (2, 3, 2), "identity", "mse", 4),
    ("mlp-batch1-one-feature", (1, 3, 2), "tanh", "cross_entropy", 1),
    ("mlp-deep-relu-ce", (8, 16, 16, 16, 10), "relu", "cross_entropy", 16),
)


def model_case(name: str, kind: str, model: Sequential, input_shape: tuple[int, ...],
               batch: int, seed: int, extra_config: dict | None = None) -> Case:
    """A case for any single ``Sequential`` model: standard-normal inputs of shape
    ``(batch, *input_shape)``, labels (cross-entropy) or standard-normal targets (MSE), and
    ``model.init(seed)``, all from ``seed``.
    """
    rng = np.random.default_rng(seed)
    params = model.init(seed)
    x = rng.standard_normal((batch, *input_shape))
    out_shape = model.output_shape(x.shape)
    if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
        y = rng.integers(0, out_shape[1], size=batch).astype(np.int64)
    else:
        y = rng.standard_normal(out_shape)
    config = {"model": model.config(), "input_shape": [batch, *input_shape], "seed": seed,
              **(extra_config or {})}
    return Case(
        name=name, kind=kind, config=config, params=params, inputs={"x": x, "y": y},
        loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
        outputs=lambda p: {"out": model.forward(p, x)},
        evaluate=lambda p, data: (*model.loss_and_grads(p, data["x"], data["y"]),
                                  {"out": model.forward(p, data["x"])}),
    )


def cases() -> list[Case]:
    """The MLP cases of the catalogue."""
    return [model_case(name, "mlp", MLP(sizes, activation=activation, loss=loss), (sizes[0],),
                       batch, seed=index)
            for index, (name, sizes, activation, loss, batch) in enumerate(MLP_SPECS)]
