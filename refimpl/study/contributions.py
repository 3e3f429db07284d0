"""Where a gradient comes from: the labelled terms a unique parameter's gradient is the sum of.

A shared parameter's gradient is a *sum* (Goodfellow, Bengio & Courville, section 7.9):

* a sharing map: one term per use (slot) of the parameter, a transposed use transposed back;
* inside a layer (:mod:`.splits`): one part per output position of a convolution, per time
  step of an RNN, per occurrence of an embedding row;
* a tied pair: each model's task-loss gradient plus the penalty's *pull* (soft mode), or the
  two models' gradients of one shared array (hard mode); an anchored model: task plus pull;
* a Siamese network and accumulated micro-batches: :mod:`.forms`, one term per branch, per
  micro-batch.

Every term is computed by the model's own forward and backward passes on its **untied twin**:
the same layers without the sharing map, each slot given its unique parameter's value (read
transposed where the slot reads it transposed), and every layer of :data:`LAYER_SPLITS`
replaced by its unshared form. The twin has the same loss at the same point, so its per-slot
(per-position, per-step, per-occurrence) gradients are the terms, and their sum is the
gradient :meth:`~refimpl.nn.Sequential.loss_and_grads` returns up to the rounding of a
different summation order (``tests/test_contributions.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..nn import Sequential
from ..tying import AnchoredModel, TiedPair
from .splits import LAYER_SPLITS, LayerSplit, Parts

__all__ = ["Term", "Contributions", "model_contributions", "pair_contributions",
           "anchored_contributions"]

Params = dict[str, np.ndarray]
#: ``gradients(twin, twin_params, twin_x) -> twin grads``: the twin's backward pass (from a
#: loss, or from an upstream gradient for a Siamese tower).
TwinGradients = Callable[[Sequential, Params, np.ndarray], Params]


class Term(NamedTuple):
    """One labelled term of a unique parameter's gradient, in the parameter's layout.

    Attributes
    ----------
    label : str
        What the term is, for a reader: ``"dec.weight (transposed back)"``, ``"A: fc1.weight"``,
        ``"pull (l2 penalty)"``.
    role : str
        ``"task"`` (a model's loss through one use) or ``"pull"`` (a tying penalty).
    model : str
        ``"model"``, ``"model_a"`` or ``"model_b"`` for a task term; ``"penalty"`` for a pull.
    slot : str or None
        The slot of that model the term flows through (None for a pull).
    transposed : bool
        Whether the slot reads the parameter transposed (the term is transposed back).
    gradient : ndarray
        The term, with the unique parameter's shape.
    parts : Parts or None
        The term split over the uses inside one layer: a convolution's positions, an RNN's
        time steps, an embedding's occurrences (None for a layer used once).
    branch : str or None
        The Siamese branch (``"anchor"``, ``"x1"``, ...) the term flows through.
    micro_batch : int or None
        The micro-batch the term comes from (already weighted by its share).
    """

    label: str
    role: str
    model: str
    slot: str | None
    transposed: bool
    gradient: np.ndarray
    parts: Parts | None = None
    branch: str | None = None
    micro_batch: int | None = None


class Contributions(NamedTuple):
    """A unique parameter's gradient and the terms that sum to it.

    ``gradient`` is what the model's (or pair's) ``loss_and_grads`` returns; ``terms`` come
    from the untied twin, in the order of the model's layers (model A before model B, the pull
    last).
    """

    name: str
    gradient: np.ndarray
    terms: tuple[Term, ...]

    def total(self) -> np.ndarray:
        """The sum of the terms, in order (equal to ``gradient`` up to rounding)."""
        total = np.zeros_like(self.gradient)
        for term in self.terms:
            total = total + term.gradient
        return total


def _twin(model: Sequential, x: np.ndarray
          ) -> tuple[Sequential, dict[str, LayerSplit], np.ndarray]:
    """The untied twin of ``model`` (no sharing map, split layers), the splits by layer, and
    the twin's input."""
    layers, splits, shape, twin_x = [], {}, tuple(np.shape(x)), x
    for layer in model.layers:
        split = LAYER_SPLITS.get(type(layer))
        if split is not None:
            splits[layer.name] = split(layer, shape, x)
            layers.append(splits[layer.name].layer)
            if splits[layer.name].input is not None:
                twin_x = splits[layer.name].input(x)
        else:
            layers.append(layer)
        shape = layer.output_shape(shape)
    return Sequential(layers, loss=model.loss_spec), splits, twin_x


def _swap_back(array: np.ndarray, transposed: bool) -> np.ndarray:
    """A transposed use's gradient in the unique parameter's layout (its last two axes)."""
    return np.swapaxes(array, -1, -2) if transposed else array


def _local(values: Mapping[str, np.ndarray], layer_name: str) -> Params:
    """The entries of one layer, keyed by their local names."""
    return {key.split(".", 1)[1]: value for key, value in values.items()
            if key.split(".", 1)[0] == layer_name}


def from_loss(y: Any) -> TwinGradients:
    """The twin's gradients of its loss on targets ``y``."""
    return lambda twin, params, x: twin.loss_and_grads(params, x, y)[1]


def task_terms(model: Sequential, params: Params, x: np.ndarray, gradients: TwinGradients,
               role: str, prefix: str, reads: Mapping[str, tuple[str, bool]] | None = None,
               branch: str | None = None) -> dict[str, list[Term]]:
    """The task terms of every unique parameter ``model`` reads, from its untied twin.

    ``gradients`` runs the twin's backward pass (:func:`from_loss`); ``reads`` maps a unique
    parameter of ``model`` to the unique parameter it stands for (and whether read
    transposed): hard tying, where model B reads model A's arrays.
    """
    reads = reads or {}
    twin, splits, twin_x = _twin(model, x)
    uses = model.slot_uses()
    slot_params = {slot: params[root].T if transposed else params[root]
                   for slot, (root, transposed) in uses.items()}
    twin_params = {slot: value for slot, value in slot_params.items()
                   if slot.split(".", 1)[0] not in splits}
    for layer_name, split in splits.items():
        for key, value in split.expand(_local(slot_params, layer_name)).items():
            twin_params[f"{layer_name}.{key}"] = value
    twin_grads = gradients(twin, twin_params, twin_x)
    parts_of = {name: split.parts(_local(twin_grads, name)) for name, split in splits.items()}
    terms: dict[str, list[Term]] = {}
    for slot, (root, transposed) in uses.items():
        layer_name, local = slot.split(".", 1)
        parts = parts_of[layer_name][local] if layer_name in splits else None
        gradient = (twin_grads[slot] if parts is None
                    else parts.total(slot_params[slot].shape))
        target, flip = reads.get(root, (root, False))
        flip = transposed ^ flip
        if flip and parts is not None:
            parts = parts.transposed()
        label = prefix + slot + (" (transposed back)" if flip else "")
        terms.setdefault(target, []).append(
            Term(label, "task", role, slot, flip, _swap_back(gradient, flip), parts, branch))
    return terms


def assemble(grads: Mapping[str, np.ndarray], terms: Mapping[str, list[Term]]
              ) -> dict[str, Contributions]:
    """One :class:`Contributions` per key of ``grads``, in its order."""
    return {name: Contributions(name, grad, tuple(terms.get(name, ())))
            for name, grad in grads.items()}


def model_contributions(model: Sequential, params: Mapping[str, Any], x: Any, y: Any
                        ) -> dict[str, Contributions]:
    """The terms of every unique parameter's gradient of one model, one per use (slot).

    Parameters
    ----------
    model : refimpl.nn.Sequential
        A model with a loss, with or without a sharing map.
    params : dict of str to ndarray
        Its unique parameters.
    x : ndarray, shape (N, D) or (N, C, H, W)
    y : ndarray
        The targets of the model's loss.

    Returns
    -------
    dict of str to Contributions
        Keyed like ``params``: the gradient ``model.loss_and_grads`` returns and its terms,
        one per slot reading the parameter, with :class:`Parts` over the output positions for
        a convolution.

    Raises
    ------
    TypeError, ValueError
        As :meth:`~refimpl.nn.Sequential.loss_and_grads`, for a model without a loss or bad
        parameters or data.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl import nn, transposed
    >>> model = nn.Sequential([nn.Dense("enc", 3, 2), nn.Tanh(), nn.Dense("dec", 2, 3)],
    ...                       loss=nn.MSE(), share={"dec.weight": transposed("enc.weight")})
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> found = model_contributions(model, model.init(0), x, x)
    >>> [term.label for term in found["enc.weight"].terms]
    ['enc.weight', 'dec.weight (transposed back)']
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"model: expected a refimpl Sequential, got {type(model).__name__}")
    _, grads = model.loss_and_grads(params, x, y)   # validates params, x, y first
    params = model.check_params(params)
    terms = task_terms(model, params, np.asarray(x), from_loss(y), "model", "")
    return assemble(grads, terms)


def pair_contributions(pair: TiedPair, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                       batch_a: tuple[Any, Any], batch_b: tuple[Any, Any]
                       ) -> dict[str, Contributions]:
    """The terms of every gradient of a tied pair: each model's uses, and the penalty's pull.

    Soft mode: a paired parameter of A has A's task terms and the pull ``dOmega/dwA``; B's
    likewise. Hard mode: a shared parameter (stored in ``params_a``) has A's task terms and
    B's, B's read through the pairing (transposed back where paired transposed).

    Parameters
    ----------
    pair : refimpl.TiedPair
    params_a, params_b : dict of str to ndarray
        As :meth:`~refimpl.TiedPair.loss_and_grads` takes them.
    batch_a, batch_b : (x, y)
        Each model's data.

    Returns
    -------
    dict of str to Contributions
        Keyed ``"A:<name>"`` / ``"B:<name>"`` as :meth:`~refimpl.TiedPair.join` keys them; the
        gradients are those of :meth:`~refimpl.TiedPair.loss_and_grads`.

    Raises
    ------
    TypeError, ValueError
        As :meth:`~refimpl.TiedPair.loss_and_grads`.
    """
    if not isinstance(pair, TiedPair):
        raise TypeError(f"pair: expected a refimpl TiedPair, got {type(pair).__name__}")
    _, grads_a, grads_b = pair.loss_and_grads(params_a, params_b, batch_a, batch_b)
    params_a, params_b = pair.check_params(params_a, params_b)
    terms = merge_terms(
        pair_task_terms(pair, params_a, params_b, "A", np.asarray(batch_a[0]),
                        from_loss(batch_a[1])),
        pair_task_terms(pair, params_a, params_b, "B", np.asarray(batch_b[0]),
                        from_loss(batch_b[1])))
    add_pulls(terms, pair_pulls(pair, params_a, params_b))
    return assemble(pair.join(grads_a, grads_b), terms)


def anchored_contributions(anchored: AnchoredModel, params: Mapping[str, Any], x: Any, y: Any
                           ) -> dict[str, Contributions]:
    """The terms of an anchored model's gradients: the task's uses and the anchor's pull.

    Parameters
    ----------
    anchored : refimpl.AnchoredModel
    params : dict of str to ndarray
    x, y : ndarray
        The model's data.

    Returns
    -------
    dict of str to Contributions
        Keyed like ``params``; an anchored parameter's last term is the pull towards its
        reference.

    Raises
    ------
    TypeError, ValueError
        As :meth:`~refimpl.AnchoredModel.loss_and_grads`.
    """
    if not isinstance(anchored, AnchoredModel):
        raise TypeError(f"anchored: expected a refimpl AnchoredModel, got "
                        f"{type(anchored).__name__}")
    _, grads = anchored.loss_and_grads(params, x, y)
    params = anchored.model.check_params(params)
    terms = task_terms(anchored.model, params, np.asarray(x), from_loss(y), "model", "")
    add_pulls(terms, anchored_pulls(anchored, params))
    return assemble(grads, terms)




def pair_task_terms(pair: TiedPair, params_a: Params, params_b: Params, side: str,
                    x: np.ndarray, gradients: TwinGradients, tag: str = ""
                    ) -> dict[str, list[Term]]:
    """One model's task terms in a tied pair (``side`` "A" or "B"), keyed as
    :meth:`~refimpl.TiedPair.join` keys them (hard mode: B's uses of a shared array under A's
    key, transposed back where paired transposed); ``tag`` starts each label."""
    if side == "A":
        found = task_terms(pair.model_a, params_a, x, gradients, "model_a", tag + "A: ")
        return {f"A:{name}": terms for name, terms in found.items()}
    shared = pair.shared_b()
    full_b = dict(params_b)
    for name_b, (name_a, transpose) in shared.items():
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
    found = task_terms(pair.model_b, full_b, x, gradients, "model_b", tag + "B: ",
                       reads={name_b: (f"A:{name_a}", transpose)
                              for name_b, (name_a, transpose) in shared.items()})
    return {name if name.startswith("A:") else f"B:{name}": terms
            for name, terms in found.items()}


def merge_terms(*found: Mapping[str, list[Term]]) -> dict[str, list[Term]]:
    """Term lists of the same parameters appended in order."""
    merged: dict[str, list[Term]] = {}
    for terms in found:
        for name, listed in terms.items():
            merged.setdefault(name, []).extend(listed)
    return merged


def pair_pulls(pair: TiedPair, params_a: Params, params_b: Params) -> dict[str, Term]:
    """The penalty's pull on every paired parameter (none in hard mode), joined keys."""
    _, pull_a, pull_b = pair.penalty(params_a, params_b)   # ({}, {}) in hard mode
    label = f"pull ({pair.penalty_name} penalty)"
    return {prefix + name: Term(label, "pull", "penalty", None, False, pull)
            for prefix, pulls in (("A:", pull_a), ("B:", pull_b))
            for name, pull in pulls.items()}


def anchored_pulls(anchored: AnchoredModel, params: Params) -> dict[str, Term]:
    """The anchor's pull on every anchored parameter."""
    _, pulls = anchored.penalty(params)
    label = f"pull ({anchored.penalty_name} penalty)"
    return {name: Term(label, "pull", "penalty", None, False, pull)
            for name, pull in pulls.items()}


def add_pulls(terms: dict[str, list[Term]], pulls: Mapping[str, Term]) -> None:
    """Append every pull after its parameter's task terms (a penalty is its own term)."""
    for name, pull in pulls.items():
        terms.setdefault(name, []).append(pull)
