"""Built-in tied-pair cases: soft (L2, L1, per-pair strengths), hard, transposed, a CNN pair,
and the anchored penalty (L2-SP, L1 weight decay).

A pair's two parameter dicts are one flat dict with keys ``"A:<name>"`` / ``"B:<name>"``
(:meth:`refimpl.tying.TiedPair.join`), so that the case is a function of one parameter dict.
In hard mode the ``"B:"`` keys omit the shared parameters (B reads them from A).

The L1 penalty has a kink at ``a == b`` (and the L1 weight decay at ``w == 0``): those cases
place every paired entry at least 0.1 away from it by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...nn import CNN, MLP, Sequential, transposed
from ...nn.activations import Tanh
from ...nn.dense import Dense
from ...nn.losses import MSE
from ...tying import AnchoredModel, TiedPair
from . import Case, describe_inputs, resolved_share

#: Entries of a difference that must stay away from the L1 kink are at least this large.
KINK_MARGIN = 0.1


def _away_from(center: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``center`` plus offsets of random sign and size in [KINK_MARGIN, 0.5]: every entry
    differs from ``center`` by at least ``KINK_MARGIN``."""
    sizes = rng.uniform(KINK_MARGIN, 0.5, size=center.shape)
    signs = np.where(rng.random(center.shape) < 0.5, -1.0, 1.0)
    return center + signs * sizes


def _batch(model: Sequential, input_shape: tuple[int, ...], batch: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch ``(x, y)`` for ``model`` from ``rng``: standard-normal x, labels or targets."""
    x = rng.standard_normal((batch, *input_shape))
    out_shape = model.output_shape(x.shape)
    if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
        return x, rng.integers(0, out_shape[1], size=batch).astype(np.int64)
    return x, rng.standard_normal(out_shape)


def pair_case(name: str, pair: TiedPair, input_a: tuple[int, ...], input_b: tuple[int, ...],
              batch_a: int, batch_b: int, seed: int, autoencoder_b: bool = False,
              away_from_kink: bool = False) -> Case:
    """A case for a :class:`TiedPair`: ``pair.init(seed)``, standard-normal inputs, labels or
    targets from ``seed``. ``autoencoder_b``: B's target is its input (unlabelled data).
    ``away_from_kink``: B's paired parameters are moved to differ from A's by at least
    :data:`KINK_MARGIN` in every entry (for the L1 penalty)."""
    rng = np.random.default_rng(seed)
    params_a, params_b = pair.init(seed)
    if away_from_kink:
        for p in pair.pairs:
            a = params_a[p.name_a]
            params_b[p.name_b] = _away_from(a.T if p.transpose else a, rng)
    xa, ya = _batch(pair.model_a, input_a, batch_a, rng)
    if autoencoder_b:
        inputs = {"xa": xa, "ya": ya, "xb": rng.standard_normal((batch_b, *input_b))}
    else:
        xb, yb = _batch(pair.model_b, input_b, batch_b, rng)
        inputs = {"xa": xa, "ya": ya, "xb": xb, "yb": yb}
    config = {"pair": pair.config(), "input_shape_a": [batch_a, *input_a],
              "input_shape_b": [batch_b, *input_b], "seed": seed,
              "params": "keys 'A:<name>' for model_a, 'B:<name>' for model_b",
              "target_b": "xb (autoencoder)" if autoencoder_b else "yb",
              "resolved_share": {"model_a": resolved_share(pair.model_a),
                                 "model_b": resolved_share(pair.model_b)}}
    return tied_case(name, pair, pair.join(params_a, params_b), inputs, config)


def _batches(data: dict[str, np.ndarray]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``(xa, ya), (xb, yb)``; without ``yb``, B is an autoencoder whose target is its input
    (one array, so a perturbation of the data moves both)."""
    return (data["xa"], data["ya"]), (data["xb"], data["yb"] if "yb" in data else data["xb"])


def _outputs(pair: TiedPair, joined: dict[str, Any], data: dict[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
    out_a, out_b = pair.forward(*pair.split(joined), data["xa"], data["xb"])
    return {"out_a": out_a, "out_b": out_b}


def tied_case(name: str, pair: TiedPair, params: dict[str, np.ndarray],
              inputs: dict[str, np.ndarray], config: dict[str, Any], kind: str = "tied") -> Case:
    """The :class:`Case` of ``pair`` at the joined ``params`` (``"A:"`` / ``"B:"`` keys) on
    ``inputs`` ``{"xa", "ya", "xb", "yb"}`` (no ``"yb"``: B is an autoencoder): its loss and
    gradients, outputs ``{"out_a", "out_b"}`` and the same at perturbed data (``evaluate``).
    ``config`` gains ``"inputs"``, the inputs described as data."""
    def evaluate(joined: dict[str, Any], data: dict[str, np.ndarray]) -> tuple:
        return (*pair.joined_loss_and_grads(joined, *_batches(data)),
                _outputs(pair, joined, data))

    config = {**config, "inputs": describe_inputs(inputs)}
    return Case(name=name, kind=kind, config=config, params=params, inputs=inputs,
                loss_and_grads=lambda joined: pair.joined_loss_and_grads(joined,
                                                                         *_batches(inputs)),
                outputs=lambda joined: _outputs(pair, joined, inputs), evaluate=evaluate)


def anchored_case(name: str, anchored: AnchoredModel, input_shape: tuple[int, ...], batch: int,
                  seed: int, reference_given: bool) -> Case:
    """A case for an :class:`AnchoredModel` at a point at least :data:`KINK_MARGIN` away from
    its reference in every entry; ``reference_given``: the reference arrays are inputs
    ``"w0:<name>"`` (``anchored.config()["reference"] == "inputs"``), else the reference is
    zero (weight decay)."""
    if reference_given != (anchored.reference_mode == "inputs"):
        raise ValueError(f"reference_given: {reference_given} does not match the model's "
                         f"reference mode {anchored.reference_mode!r}")
    rng = np.random.default_rng(seed)
    params = anchored.model.init(seed)
    for key in anchored.names:
        params[key] = _away_from(anchored.reference[key], rng)
    x, y = _batch(anchored.model, input_shape, batch, rng)
    return anchored_case_at(name, anchored, params, x, y, {
        "input_shape": [batch, *input_shape], "seed": seed,
        "reference": "inputs 'w0:<name>'" if reference_given else "zero (weight decay)"})


def anchored_case_at(name: str, anchored: AnchoredModel, params: dict[str, np.ndarray],
                     x: np.ndarray, y: np.ndarray, extra_config: dict[str, Any] | None = None,
                     kind: str = "tied") -> Case:
    """The case of ``anchored`` at ``params`` on ``x``, ``y``, configured ``{"anchored": ...,
    **extra_config, "resolved_share", "inputs"}``; with ``reference == "inputs"`` the reference
    weights are inputs ``"w0:<name>"`` (data: the floors perturb them like any input)."""
    given = anchored.reference_mode == "inputs"
    inputs = {"x": x, "y": y}
    if given:
        inputs.update({f"w0:{key}": np.asarray(anchored.reference[key])
                       for key in anchored.names})
    config = {"anchored": anchored.config(), **(extra_config or {}),
              "resolved_share": resolved_share(anchored.model), "inputs": describe_inputs(inputs)}

    def evaluate(p: dict[str, Any], data: dict[str, np.ndarray]) -> tuple:
        model = anchored
        if given:     # the anchors are data the implementation receives
            model = AnchoredModel.from_config(
                anchored.config(),
                reference={key: data[f"w0:{key}"] for key in anchored.names})
        loss, grads = model.loss_and_grads(p, data["x"], data["y"])
        return loss, grads, {"out": anchored.model.forward(p, data["x"])}

    return Case(
        name=name, kind=kind, config=config, params=params, inputs=inputs,
        loss_and_grads=lambda p: anchored.loss_and_grads(p, x, y),
        outputs=lambda p: {"out": anchored.model.forward(p, x)}, evaluate=evaluate,
    )


def _autoencoder(features: int, code: int) -> Sequential:
    """An autoencoder ``[d, h, d]`` (MSE), model B of the Lasserre-style pairs."""
    return Sequential([Dense("enc", features, code), Tanh(), Dense("dec", code, features)],
                      loss=MSE())


def cases() -> list[Case]:
    """The cases with two tied models (soft / hard, L2 / L1) and an anchored model."""
    classifier_a = MLP([4, 6, 3], activation="tanh")
    classifier_b = MLP([4, 6, 2], activation="sigmoid")
    deep_a = MLP([3, 5, 5, 2], activation="tanh")
    both_layers = {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias",
                   "fc2.weight": "fc2.weight", "fc2.bias": "fc2.bias"}
    first_layer = {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"}
    autoencoder = _autoencoder(4, 6)
    lasserre = {"fc1.weight": "enc.weight", "fc1.bias": "enc.bias"}
    cnn_a = CNN((1, 5, 5), [2], [3], activation="tanh", pool=None)
    cnn_b = CNN((1, 5, 5), [2], [4], activation="softplus", pool=None)
    conv_layer = {"conv1.weight": "conv1.weight", "conv1.bias": "conv1.bias"}
    pretrained = MLP([4, 6, 3], activation="tanh").init(99)

    return [
        pair_case("tied-soft-l2", TiedPair(classifier_a, classifier_b, first_layer, lam=0.3),
                  (4,), (4,), 5, 4, seed=100),
        pair_case("tied-soft-l2-same-architecture",
                  TiedPair(deep_a, deep_a, {**both_layers, "fc3.weight": "fc3.weight"},
                           lam={"fc1.weight": 0.5, "fc1.bias": 0.05, "fc2.weight": 2.0,
                                "fc2.bias": 0.0, "fc3.weight": 0.1}),
                  (3,), (3,), 6, 3, seed=101),
        pair_case("tied-soft-l1",
                  TiedPair(classifier_a, classifier_b, first_layer,
                           lam={"fc1.weight": 0.2, "fc1.bias": 0.7}, penalty="l1"),
                  (4,), (4,), 5, 4, seed=102, away_from_kink=True),
        pair_case("tied-hard", TiedPair(classifier_a, classifier_b, first_layer, mode="hard"),
                  (4,), (4,), 5, 4, seed=103),
        pair_case("tied-soft-lasserre", TiedPair(classifier_a, autoencoder, lasserre, lam=0.4),
                  (4,), (4,), 5, 7, seed=104, autoencoder_b=True),
        pair_case("tied-hard-lasserre-transposed",
                  TiedPair(classifier_a, autoencoder, {"fc1.weight": transposed("dec.weight")},
                           mode="hard"),
                  (4,), (4,), 5, 7, seed=105, autoencoder_b=True),
        pair_case("tied-soft-l1-transposed",
                  TiedPair(classifier_a, autoencoder, {"fc1.weight": transposed("dec.weight")},
                           lam=0.25, penalty="l1"),
                  (4,), (4,), 5, 7, seed=106, autoencoder_b=True, away_from_kink=True),
        pair_case("tied-soft-cnn", TiedPair(cnn_a, cnn_b, conv_layer, lam=0.5),
                  (1, 5, 5), (1, 5, 5), 3, 2, seed=107),
        pair_case("tied-hard-cnn", TiedPair(cnn_a, cnn_b, conv_layer, mode="hard"),
                  (1, 5, 5), (1, 5, 5), 3, 2, seed=108),
        anchored_case("tied-anchored-l2sp",
                      AnchoredModel(classifier_a, lam=0.3, reference=pretrained),
                      (4,), 5, seed=109, reference_given=True),
        anchored_case("tied-anchored-l1-weight-decay",
                      AnchoredModel(classifier_a, lam={"fc1.weight": 0.1, "fc2.weight": 0.05},
                                    names=["fc1.weight", "fc2.weight"], penalty="l1"),
                      (4,), 5, seed=110, reference_given=False),
    ]
