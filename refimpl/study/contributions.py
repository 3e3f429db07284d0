"""Where a gradient comes from: the labelled terms a unique parameter's gradient is the sum of.

A shared parameter's gradient is a *sum* (Goodfellow, Bengio & Courville, section 7.9):

* a sharing map: one term per use (slot) of the parameter, a transposed use transposed back;
* a convolution: one term per output position (its kernel is used at every one);
* a tied pair: each model's task-loss gradient plus the penalty's *pull* (soft mode), or the
  two models' gradients of one shared array (hard mode); an anchored model: task plus pull.

Every term is computed by the model's own forward and backward passes on its **untied twin**:
the same layers without the sharing map, each slot given its unique parameter's value (read
transposed where the slot reads it transposed). A layer that shares inside itself is replaced
in the twin by its unshared form, found in :data:`LAYER_SPLITS`: a
:class:`~refimpl.nn.Conv2D` by the :class:`~refimpl.nn.LocallyConnected2D` layer with the
kernel copied at every output position, whose weight gradient keeps the positions apart. The
twin has the same loss at the same point, so its per-slot (per-position) gradients are the
terms, and their sum is the gradient :meth:`~refimpl.nn.Sequential.loss_and_grads` returns up
to the rounding of a different summation order (``tests/test_contributions.py``).

Other forms of sharing inside a layer (per time step of a recurrent layer, per branch of a
Siamese network, per occurrence of an embedding row) plug in as entries of
:data:`LAYER_SPLITS`; a split over the data (per micro-batch) would give a term
:class:`Parts` along a ``"micro-batch"`` axis in the same way.

Legend: ``Ho``, ``Wo`` output height and width of a convolution; ``F`` filters, ``Cg`` input
channels per group, ``kH``, ``kW`` kernel size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..nn import Conv2D, LocallyConnected2D, Sequential
from ..nn.base import Layer
from ..tying import AnchoredModel, TiedPair

__all__ = ["Parts", "Term", "Contributions", "LayerSplit", "LAYER_SPLITS",
           "model_contributions", "pair_contributions", "anchored_contributions",
           "ParameterSummary", "summarize"]

Params = dict[str, np.ndarray]


class Parts(NamedTuple):
    """A term split further over the uses of one parameter inside one layer.

    ``gradients`` has shape ``(*grid, *parameter shape)``; its sum over the grid axes is the
    term's gradient. For a convolution, ``axes == ("Ho", "Wo")`` and ``gradients[i, j]`` is
    the gradient of the kernel (or bias) through output position ``(i, j)`` alone.
    """

    axes: tuple[str, ...]
    gradients: np.ndarray


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
        The term split over the positions of a convolution (None for a layer used once).
    """

    label: str
    role: str
    model: str
    slot: str | None
    transposed: bool
    gradient: np.ndarray
    parts: Parts | None = None


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


class LayerSplit(NamedTuple):
    """How a layer that uses a parameter several times is replaced in the untied twin.

    Attributes
    ----------
    layer : Layer
        The unshared twin layer (same name, so the same slot names).
    expand : callable
        ``expand(local_params) -> twin_local_params``: the shared layer's parameters copied to
        every use.
    parts : callable
        ``parts(twin_local_grads) -> {local: Parts}``: the twin's gradients as parts of the
        shared layer's parameters.
    """

    layer: Layer
    expand: Callable[[Params], Params]
    parts: Callable[[Params], dict[str, Parts]]


def _split_convolution(layer: Conv2D, input_shape: tuple[int, ...]) -> LayerSplit:
    """A convolution as a locally connected layer with its kernel copied at every position."""
    twin = LocallyConnected2D(layer.name, layer.in_channels, layer.out_channels,
                              layer.kernel_size, input_size=tuple(input_shape[2:]),
                              stride=layer.stride, padding=layer.padding,
                              dilation=layer.dilation, groups=layer.groups, bias=layer.bias)
    out_h, out_w = twin.output_size

    def expand(local: Params) -> Params:
        # weight (F, Cg, kH, kW) -> (Ho, Wo, F, Cg, kH, kW); bias (F,) -> (F, Ho, Wo)
        copied = {"weight": np.broadcast_to(local["weight"],
                                            (out_h, out_w, *local["weight"].shape)).copy()}
        if "bias" in local:
            copied["bias"] = np.broadcast_to(local["bias"][:, None, None],
                                             (local["bias"].shape[0], out_h, out_w)).copy()
        return copied

    def parts(grads: Params) -> dict[str, Parts]:
        split = {}
        if "weight" in grads:
            split["weight"] = Parts(("Ho", "Wo"), grads["weight"])   # (Ho, Wo, F, Cg, kH, kW)
        if "bias" in grads:
            split["bias"] = Parts(("Ho", "Wo"), np.moveaxis(grads["bias"], 0, -1))  # (Ho, Wo, F)
        return split

    return LayerSplit(twin, expand, parts)


#: Layer types that use their own parameters several times -> ``split(layer, input_shape)``
#: returning the :class:`LayerSplit` of their unshared twin. The plug-in point of further forms
#: of sharing (a recurrent layer's time steps, a Siamese network's branches, an embedding's
#: row occurrences).
LAYER_SPLITS: dict[type, Callable[[Any, tuple[int, ...]], LayerSplit]] = {
    Conv2D: _split_convolution,
}


def _twin(model: Sequential, x_shape: tuple[int, ...]) -> tuple[Sequential, dict[str, LayerSplit]]:
    """The untied twin of ``model`` (no sharing map, split layers) and the splits by layer."""
    layers, splits, shape = [], {}, tuple(x_shape)
    for layer in model.layers:
        split = LAYER_SPLITS.get(type(layer))
        if split is not None:
            splits[layer.name] = split(layer, shape)
            layers.append(splits[layer.name].layer)
        else:
            layers.append(layer)
        shape = layer.output_shape(shape)
    return Sequential(layers, loss=model.loss_spec), splits


def _swap_back(array: np.ndarray, transposed: bool) -> np.ndarray:
    """A transposed use's gradient in the unique parameter's layout (its last two axes)."""
    return np.swapaxes(array, -1, -2) if transposed else array


def _task_terms(model: Sequential, params: Params, x: np.ndarray, y: Any, role: str,
                prefix: str, reads: Mapping[str, tuple[str, bool]] | None = None
                ) -> dict[str, list[Term]]:
    """The task terms of every unique parameter ``model`` reads, from its untied twin.

    ``reads`` maps a unique parameter of ``model`` to the unique parameter it stands for
    (and whether read transposed): hard tying, where model B reads model A's arrays.
    """
    reads = reads or {}
    twin, splits = _twin(model, np.shape(x))
    uses = model.slot_uses()
    slot_params: Params = {}
    for slot, (root, transposed) in uses.items():
        slot_params[slot] = params[root].T if transposed else params[root]
    twin_params = dict(slot_params)
    for layer_name, split in splits.items():
        local = {key.split(".", 1)[1]: value for key, value in slot_params.items()
                 if key.split(".", 1)[0] == layer_name}
        for key, value in split.expand(local).items():
            twin_params[f"{layer_name}.{key}"] = value
    _, twin_grads = twin.loss_and_grads(twin_params, x, y)
    terms: dict[str, list[Term]] = {}
    for slot, (root, transposed) in uses.items():
        layer_name, local = slot.split(".", 1)
        parts = None
        if layer_name in splits:
            parts = splits[layer_name].parts({local: twin_grads[slot]})[local]
            grid = tuple(range(len(parts.axes)))
            gradient = parts.gradients.sum(axis=grid)
        else:
            gradient = twin_grads[slot]
        target, flip = reads.get(root, (root, False))
        flip = transposed ^ flip
        if flip and parts is not None:
            parts = Parts(parts.axes, _swap_back(parts.gradients, True))
        label = prefix + slot + (" (transposed back)" if flip else "")
        terms.setdefault(target, []).append(
            Term(label, "task", role, slot, flip, _swap_back(gradient, flip), parts))
    return terms


def _assemble(grads: Mapping[str, np.ndarray], terms: Mapping[str, list[Term]]
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
    terms = _task_terms(model, params, np.asarray(x), y, "model", "")
    return _assemble(grads, terms)


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
    shared = pair.shared_b()
    full_b = dict(params_b)
    for name_b, (name_a, transpose) in shared.items():
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
    terms_a = _task_terms(pair.model_a, params_a, np.asarray(batch_a[0]), batch_a[1],
                          "model_a", "A: ")
    terms_b = _task_terms(pair.model_b, full_b, np.asarray(batch_b[0]), batch_b[1], "model_b",
                          "B: ", reads={name_b: (f"A:{name_a}", transpose)
                                        for name_b, (name_a, transpose) in shared.items()})
    terms = {f"A:{name}": found for name, found in terms_a.items()}
    for name, found in terms_b.items():
        key = name if name.startswith("A:") else f"B:{name}"
        terms.setdefault(key, []).extend(found)
    _, pull_a, pull_b = pair.penalty(params_a, params_b)   # ({}, {}) in hard mode
    label = f"pull ({pair.penalty_name} penalty)"
    for prefix, pulls in (("A:", pull_a), ("B:", pull_b)):
        for name, pull in pulls.items():
            terms[prefix + name].append(Term(label, "pull", "penalty", None, False, pull))
    return _assemble(pair.join(grads_a, grads_b), terms)


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
    terms = _task_terms(anchored.model, params, np.asarray(x), y, "model", "")
    _, pulls = anchored.penalty(params)
    label = f"pull ({anchored.penalty_name} penalty)"
    for name, pull in pulls.items():
        terms[name].append(Term(label, "pull", "penalty", None, False, pull))
    return _assemble(grads, terms)


class ParameterSummary(NamedTuple):
    """The numbers ``refimpl explain`` prints for one unique parameter.

    Attributes
    ----------
    name : str
    norm : float
        ``||g||``, the Frobenius norm of the gradient.
    labels : tuple of str
        The terms' labels, in order.
    norms : tuple of float
        ``||t_i||`` of every term.
    shares : tuple of float
        ``<t_i, s> / ||s||^2`` with ``s`` the sum of the terms: the fraction of the gradient
        along its own direction that term ``i`` supplies. They sum to 1; a negative share is a
        term pulling against the total. NaN when the gradient is zero.
    cosines : ndarray, shape (T, T)
        ``<t_i, t_j> / (||t_i|| ||t_j||)`` between the terms (NaN for a zero term): near 1
        the uses agree, near -1 they fight.
    pull_to_task : float or None
        ``||pull|| / ||task||`` (the task terms summed) when the parameter is pulled by a
        penalty; None otherwise.
    """

    name: str
    norm: float
    labels: tuple[str, ...]
    norms: tuple[float, ...]
    shares: tuple[float, ...]
    cosines: np.ndarray
    pull_to_task: float | None


def _norm(array: np.ndarray) -> float:
    return float(np.sqrt(np.sum(array * array)))


def summarize(found: Contributions) -> ParameterSummary:
    """Norms, shares and cosines of one parameter's terms (real gradients).

    Parameters
    ----------
    found : Contributions
        As returned by :func:`model_contributions` (or the pair / anchored forms).

    Returns
    -------
    ParameterSummary
    """
    if not isinstance(found, Contributions):
        raise TypeError(f"found: expected Contributions, got {type(found).__name__}")
    terms = [term.gradient.ravel() for term in found.terms]
    total = found.total().ravel()
    norms = [_norm(term) for term in terms]
    square = float(total @ total)
    shares = tuple(float(term @ total) / square if square > 0 else float("nan")
                   for term in terms)
    cosines = np.full((len(terms), len(terms)), np.nan)
    for i, first in enumerate(terms):
        for j, second in enumerate(terms):
            if norms[i] > 0 and norms[j] > 0:
                cosines[i, j] = float(first @ second) / (norms[i] * norms[j])
    pull_to_task = None
    if any(term.role == "pull" for term in found.terms):
        task = sum((t.gradient for t in found.terms if t.role == "task"),
                   np.zeros_like(found.gradient))
        pull = sum((t.gradient for t in found.terms if t.role == "pull"),
                   np.zeros_like(found.gradient))
        task_norm = _norm(task)
        pull_to_task = _norm(pull) / task_norm if task_norm > 0 else float("inf")
    return ParameterSummary(found.name, _norm(found.gradient),
                            tuple(term.label for term in found.terms), tuple(norms), shares,
                            cosines, pull_to_task)
