"""Built-in micro-batch cases: the implementation receives micro-batches and returns the step.

Each case is a single-batch case of another kind (a plain MLP, a shared model, a tied pair,
an anchored model, a Siamese model) whose batch arrives split into ``M`` micro-batches of
unequal sizes. The implementation must return the *step's* loss and gradient
(:func:`refimpl.accumulated_loss_and_grads`): each micro-batch's loss and gradient weighted
by its share ``n_i / N`` of its own batch, a tying or anchoring penalty added once per step
(never once per micro-batch) — which equals the full-batch loss and gradient.

How the micro-batches are handed over (what a C++ implementation reads from a golden folder)
--------------------------------------------------------------------------------------------
* Inputs ``"<name>.<i>"``: micro-batch ``i`` (``i = 0 .. M-1``, in order) of the input
  ``<name>`` of the single-batch case — ``x.0, y.0, x.1, y.1, ...`` for one model,
  ``xa.<i>, ya.<i>, xb.<i>, yb.<i>`` for a tied pair, ``anchor.<i>, positive.<i>,
  negative.<i>`` for a Siamese triplet — stored as ``input.x.0.npy`` and so on (a dot is
  kept as is in golden file names). Concatenating them along axis 0 in order gives the full
  batch.
* ``config["micro_batches"]``: the sizes ``[n_0, ..., n_{M-1}]`` (for a tied pair the sizes of
  A's micro-batches; ``config["micro_batches_b"]`` B's — the same ``M``).
* ``config["base"]``: the configuration of the single-batch case (``{"model": ...}``,
  ``{"pair": ...}``, ``{"anchored": ...}`` or ``{"siamese": ...}``, with its
  ``input_shape``), and ``config["base_kind"]`` its kind ("mlp", "shared", "tied",
  "anchored", "siamese").
* Parameters are those of the base case (a tied pair's ``"A:"`` / ``"B:"`` keys); the loss
  and gradients are the step's; the outputs are the forward outputs of every micro-batch,
  ``"<output>.<i>"`` (``out.0``, ``out_a.1``, ``out_anchor.2``, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...microbatch import accumulated_loss_and_grads, split_indices
from ...nn import MLP, Dense, Sequential, Siamese, Tanh, TripletMarginLoss
from ...tying import AnchoredModel, TiedPair
from . import Case, describe_inputs, resolved_share
from .mlp import model_case
from .siamese import build_case
from .tied import anchored_case, pair_case

__all__ = ["cases", "microbatch_case", "split_inputs", "join_inputs"]


def split_inputs(inputs: dict[str, np.ndarray], sizes: dict[str, list[int]]
                 ) -> dict[str, np.ndarray]:
    """``{"<name>.<i>": micro-batch i of inputs[name]}``; ``sizes[name]`` its sizes."""
    split = {}
    for name, value in inputs.items():
        ends = np.cumsum(sizes[name])
        for i, (size, end) in enumerate(zip(sizes[name], ends, strict=True)):
            split[f"{name}.{i}"] = value[end - size:end]
    return split


def join_inputs(data: dict[str, np.ndarray], names: list[str], count: int
                ) -> dict[str, np.ndarray]:
    """Inverse of :func:`split_inputs`: each name's ``count`` micro-batches concatenated."""
    return {name: np.concatenate([data[f"{name}.{i}"] for i in range(count)])
            for name in names}


def _resolved_share(model: Any) -> dict[str, Any]:
    """The resolved sharing map of the base case's model, keyed as the base kind keys it
    (a pair's per model)."""
    if isinstance(model, TiedPair):
        return {"model_a": resolved_share(model.model_a), "model_b": resolved_share(model.model_b)}
    if isinstance(model, AnchoredModel):
        return resolved_share(model.model)
    return resolved_share(model.tower if isinstance(model, Siamese) else model)


def microbatch_case(name: str, base: Case, model: Any, sizes: list[int],
                    sizes_b: list[int] | None = None) -> Case:
    """The micro-batch version of the single-batch case ``base`` of ``model``.

    ``sizes`` split every input of ``base`` (for a tied pair A's inputs ``xa``, ``ya``;
    ``sizes_b`` B's ``xb``, ``yb``). Every input of ``base`` must be batch data (an anchored
    base case without reference inputs: weight decay).
    """
    pair = isinstance(model, TiedPair)
    names = list(base.inputs)
    # Sizes that do not partition the batch would drop or invent examples without a word.
    split_indices(sizes, len(base.inputs["xa" if pair else names[0]]), "sizes")
    if pair:
        split_indices(sizes_b, len(base.inputs["xb"]), "sizes_b")
    per_input = {key: sizes_b if pair and key in ("xb", "yb") else sizes for key in names}
    count = len(sizes)
    inputs = split_inputs({key: base.inputs[key] for key in names}, per_input)

    def batch_of(full: dict[str, np.ndarray]) -> Any:
        if pair:
            target_b = full["yb"] if "yb" in full else full["xb"]   # autoencoder: y is x
            return (full["xa"], full["ya"]), (full["xb"], target_b)
        if isinstance(model, Siamese):
            return tuple(full[key] for key in names)
        return full["x"], full["y"]

    def evaluate(params: dict[str, Any], data: dict[str, np.ndarray]) -> tuple:
        full = join_inputs(data, names, count)
        loss, grads = accumulated_loss_and_grads(model, params, batch_of(full), sizes,
                                                 splits_b=sizes_b if pair else None)
        outputs = {}
        for i in range(count):
            micro = {key: data[f"{key}.{i}"] for key in names}
            outputs.update({f"{key}.{i}": value
                            for key, value in base.evaluate(params, micro)[2].items()})
        return loss, grads, outputs

    base_kind = ("tied" if pair else "anchored" if isinstance(model, AnchoredModel)
                 else "siamese" if isinstance(model, Siamese) else base.kind)
    config = {"base": base.config, "base_kind": base_kind, "micro_batches": list(sizes),
              **({"micro_batches_b": list(sizes_b)} if pair else {}),
              "inputs": describe_inputs(inputs), "resolved_share": _resolved_share(model),
              "inputs_note": "'<name>.<i>': micro-batch i of the base case's input <name>",
              "step": "loss and gradients of the step: sum over micro-batches of (n_i / N) "
                      "times the micro-batch's, each model of a pair weighted by its own "
                      "batch, a penalty added once"}
    return Case(name=name, kind="microbatch", config=config, params=base.params,
                inputs=inputs, loss_and_grads=lambda p: evaluate(p, inputs)[:2],
                outputs=lambda p: evaluate(p, inputs)[2], evaluate=evaluate)


def cases() -> list[Case]:
    """The micro-batch cases of the catalogue (unequal micro-batches: ``1/M`` weights fail)."""
    mlp = MLP([4, 6, 3], activation="tanh")
    shared = MLP([3, 5, 5, 5, 2], activation="tanh",
                 share={"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias"})
    pair = TiedPair(MLP([4, 6, 3], activation="tanh"),
                    MLP([4, 6, 2], activation="sigmoid", loss="mse"),
                    {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"}, lam=0.4)
    hard = TiedPair(MLP([4, 5, 3], activation="tanh"), MLP([4, 5, 2], activation="softplus"),
                    {"fc1.weight": "fc1.weight"}, mode="hard")
    anchored = AnchoredModel(MLP([4, 5, 3], activation="tanh"), lam=0.2)
    tower = Sequential([Dense("fc1", 4, 5), Tanh(), Dense("fc2", 5, 3), Tanh()])
    siamese_base = build_case("siamese-microbatch-base", tower, TripletMarginLoss, (4,), 6,
                              seed=406, placement="active")
    siamese = Siamese.from_config(siamese_base.config["siamese"])
    return [
        microbatch_case("microbatch-mlp", model_case("mlp-base", "mlp", mlp, (4,), 7, seed=400),
                        mlp, [3, 1, 3]),
        microbatch_case("microbatch-shared",
                        model_case("shared-base", "shared", shared, (3,), 5, seed=401),
                        shared, [1, 4]),
        microbatch_case("microbatch-tied-soft", pair_case("tied-base", pair, (4,), (4,), 5, 7,
                                                          seed=402), pair, [2, 3], [6, 1]),
        microbatch_case("microbatch-tied-hard", pair_case("tied-base", hard, (4,), (4,), 6, 4,
                                                          seed=403), hard, [1, 2, 3], [2, 1, 1]),
        microbatch_case("microbatch-anchored",
                        anchored_case("anchored-base", anchored, (4,), 5, seed=404,
                                      reference_given=False), anchored, [4, 1]),
        microbatch_case("microbatch-siamese-triplet", siamese_base, siamese, [2, 4]),
    ]
