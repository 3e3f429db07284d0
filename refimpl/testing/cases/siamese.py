"""Built-in Siamese cases: one tower on two (contrastive) or three (triplet) inputs.

Inputs: ``anchor``, ``positive``, ``negative`` (triplet) or ``x1``, ``x2`` and int64 pair labels
``y`` (N,) (contrastive: 1 similar, 0 dissimilar), each branch input batch first as the tower
takes it. Outputs: the embeddings of every branch, ``out_<input>`` (N, D) (``out_anchor``,
``out_x1``, ...). Parameters: the tower's, once; each gradient is the sum over the branches.

The margin of each case is placed relative to the point: "every branch active" cases have every
triplet's hinge ``margin + d(a, p) - d(a, n)`` (every dissimilar pair's ``margin - d``) at least
:data:`ACTIVE_GAP` above 0, so every branch carries gradient from every row; "near margin" cases
have one row at exactly :data:`NEAR_GAP` from its kink (the hinge, or the margin of the squared
hinge), on the active side, and every other row at least that far from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...nn import (
    ContrastiveLoss,
    Conv2D,
    Dense,
    Flatten,
    MetricLoss,
    Sequential,
    Siamese,
    Tanh,
    TripletMarginLoss,
)
from ...nn.activations import Sigmoid, Softplus
from . import Case, describe_inputs, resolved_share

#: In "every branch active" cases, every row's hinge is at least this far inside.
ACTIVE_GAP = 0.1
#: In "near margin" cases, one row is exactly this far from its kink (and no row closer).
NEAR_GAP = 0.03


def input_names(model: Siamese) -> tuple[str, ...]:
    """The case's input names: the branch names, then ``"y"`` for the contrastive loss."""
    return model.branch_names + (("y",) if model.loss_spec.needs_target else ())


def _call(model: Siamese, data: dict[str, np.ndarray]) -> tuple[tuple[Any, ...], Any]:
    """The branch inputs and the labels (or None) of ``data``."""
    arrays = tuple(data[name] for name in model.branch_names)
    return arrays, data["y"] if model.loss_spec.needs_target else None


def _outputs(model: Siamese, params: dict[str, Any], data: dict[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
    embeddings = model.forward(params, *_call(model, data)[0])
    return {f"out_{name}": out for name, out in zip(model.branch_names, embeddings, strict=True)}


def siamese_case(name: str, model: Siamese, params: dict[str, np.ndarray],
                 inputs: dict[str, np.ndarray], config: dict[str, Any],
                 kind: str = "siamese") -> Case:
    """The :class:`Case` of ``model`` at ``params`` on ``inputs`` (keys :func:`input_names`);
    ``config`` gains ``"resolved_share"`` (the tower's) and ``"inputs"`` (described as data)."""
    config = {**config, "resolved_share": resolved_share(model.tower),
              "inputs": describe_inputs(inputs)}
    def loss_and_grads(p: dict[str, Any], data: dict[str, np.ndarray]) -> tuple:
        arrays, y = _call(model, data)
        return model.loss_and_grads(p, *arrays, y=y)

    return Case(name=name, kind=kind, config=config, params=params, inputs=inputs,
                loss_and_grads=lambda p: loss_and_grads(p, inputs),
                outputs=lambda p: _outputs(model, p, inputs),
                evaluate=lambda p, data: (*loss_and_grads(p, data), _outputs(model, p, data)))


def kink_distances(model: Siamese, params: dict[str, Any], inputs: dict[str, np.ndarray],
                   margin: float | None = None) -> np.ndarray:
    """Per row, the signed distance from the loss's kink (> 0: active side): the triplet
    hinge ``margin + d(a, p) - d(a, n)``, or ``margin - d`` for a contrastive dissimilar pair
    (``+inf`` for a similar pair, whose term is smooth). ``margin`` overrides the model's."""
    spec = model.loss_spec
    margin = spec.margin if margin is None else margin
    embeddings = model.forward(params, *_call(model, inputs)[0])

    def distance(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        difference = u - v + spec.eps
        return np.sqrt((difference * difference).sum(axis=1))

    if isinstance(spec, TripletMarginLoss):
        anchor, positive, negative = embeddings
        return margin + distance(anchor, positive) - distance(anchor, negative)
    return np.where(inputs["y"] == 1, np.inf, margin - distance(*embeddings))


def _margin_for(model: Siamese, params: dict[str, Any], inputs: dict[str, np.ndarray],
                placement: str) -> float:
    """The margin that places the point as ``placement`` asks ("active": every row at least
    ACTIVE_GAP inside; "near": the row closest to the kink at NEAR_GAP inside)."""
    z = kink_distances(model, params, inputs, margin=0.0)     # the kink distance minus margin
    finite = z[np.isfinite(z)]
    if placement == "active":
        # Any margin above -min z puts every row inside; 1 (the default) when that suffices.
        return max(1.0, round(ACTIVE_GAP - float(finite.min()) + 0.05, 6))
    # near: the row whose -z is the margin's neighbour; choose margin = NEAR_GAP - z_k for the
    # k whose other rows then stay at least NEAR_GAP from the kink.
    for k in np.argsort(-finite):
        margin = NEAR_GAP - float(finite[k])
        others = np.delete(finite, k) + margin
        if margin > 0 and (others.size == 0 or np.min(np.abs(others)) >= NEAR_GAP):
            return margin
    raise ValueError("no row can be placed near the margin with the others away from it")


def build_case(name: str, tower: Sequential, loss_type: type[MetricLoss],
               input_shape: tuple[int, ...], batch: int, seed: int, placement: str,
               eps: float = 1e-6) -> Case:
    """A Siamese case: ``tower.init(seed)``, standard-normal branch inputs, labels
    alternating 1, 0, ... (contrastive), and the margin set by ``placement``."""
    rng = np.random.default_rng(seed)
    probe = Siamese(tower, loss_type(margin=1.0, eps=eps))
    params = probe.init(seed)
    inputs = {branch: rng.standard_normal((batch, *input_shape))
              for branch in probe.branch_names}
    if probe.loss_spec.needs_target:
        # A similar pair is its first input plus a small change: similar pairs are close.
        inputs["x2"] = np.where(np.arange(batch)[:, None] % 2 == 0,
                                inputs["x1"].reshape(batch, -1)
                                + 0.3 * rng.standard_normal((batch, int(np.prod(input_shape)))),
                                inputs["x2"].reshape(batch, -1)).reshape(inputs["x2"].shape)
        inputs["y"] = (np.arange(batch) % 2 == 0).astype(np.int64)
    model = Siamese(tower, loss_type(margin=_margin_for(probe, params, inputs, placement),
                                     eps=eps))
    config = {"siamese": model.config(), "input_shape": [batch, *input_shape], "seed": seed,
              "placement": placement,
              "outputs": [f"out_{branch}" for branch in model.branch_names]}
    return siamese_case(name, model, params, inputs, config)


def cases() -> list[Case]:
    """The Siamese cases of the catalogue."""
    # Distances are invariant under a common translation of the embeddings, so the bias of a
    # final Dense layer has a gradient of exactly 0 (a tensor no dtype can judge): the towers
    # end with a Dense layer without bias or with a non-linearity.
    mlp_tower = Sequential([Dense("fc1", 4, 6), Tanh(), Dense("fc2", 6, 3, bias=False)])
    sigmoid_tower = Sequential([Dense("fc1", 5, 4), Sigmoid(), Dense("fc2", 4, 4), Sigmoid()])
    # fc3 reuses fc2: a tower that shares inside itself, and again across the branches.
    shared_tower = Sequential([Dense("fc1", 3, 4), Tanh(), Dense("fc2", 4, 4), Tanh(),
                               Dense("fc3", 4, 4), Tanh()], share={"fc3.weight": "fc2.weight"})
    cnn_tower = Sequential([Conv2D("conv1", 1, 2, kernel_size=3), Softplus(), Flatten(),
                            Dense("fc1", 2 * 3 * 3, 3, bias=False)])
    return [
        build_case("siamese-triplet-all-active", mlp_tower, TripletMarginLoss, (4,), 5,
                   seed=300, placement="active"),
        build_case("siamese-triplet-near-margin", mlp_tower, TripletMarginLoss, (4,), 6,
                   seed=301, placement="near"),
        build_case("siamese-triplet-cnn", cnn_tower, TripletMarginLoss, (1, 5, 5), 3,
                   seed=302, placement="active"),
        build_case("siamese-contrastive-all-active", sigmoid_tower, ContrastiveLoss, (5,), 6,
                   seed=303, placement="active"),
        build_case("siamese-contrastive-near-margin", mlp_tower, ContrastiveLoss, (4,), 6,
                   seed=304, placement="near"),
        build_case("siamese-contrastive-shared-tower", shared_tower, ContrastiveLoss, (3,), 4,
                   seed=305, placement="active", eps=0.0),
    ]
