"""Built-in MLP cases: several shapes, every activation, both losses."""

from __future__ import annotations

import numpy as np

from ...nn import MLP, Sequential
from . import Case, describe_inputs, resolved_share

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
    return model_case_at(name, kind, model, params, x, y, {"seed": seed, **(extra_config or {})})


def model_case_at(name: str, kind: str, model: Sequential, params: dict[str, np.ndarray],
                  x: np.ndarray, y: np.ndarray, extra_config: dict | None = None) -> Case:
    """The case of ``model`` at the given point ``params`` and data ``x`` (batch first), ``y``
    (int64 labels or float targets); its config is ``{"model", "input_shape", "inputs",
    "resolved_share", **extra_config}``."""
    config = {"model": model.config(), "input_shape": list(x.shape),
              "resolved_share": resolved_share(model), **(extra_config or {})}
    inputs = {"x": x, "y": y}
    config["inputs"] = describe_inputs(inputs)
    return Case(
        name=name, kind=kind, config=config, params=params, inputs=inputs,
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
