"""Contributions of sharing across a model's calls: per Siamese branch, per micro-batch.

* A Siamese network uses its tower once per branch. Its untied twin is one copy of the tower
  per branch: the metric loss's backward pass gives each branch's embedding gradient, which is
  pulled back through that branch's copy alone (:meth:`~refimpl.nn.Sequential.vjp` on the
  tower's own untied twin, so a tower that shares inside itself, or a convolutional tower,
  keeps its per-slot terms and per-position parts within each branch).
* Gradient accumulation splits a batch of ``N`` into micro-batches of sizes ``n_i``; the
  step's gradient is ``sum_i (n_i / N) grad L_i`` (each micro-batch weighted by its share)
  plus a tying or anchoring penalty's pull counted *once*. Each micro-batch's terms are the
  single-batch contributions on that micro-batch, weighted by its share; the penalty is one
  term of its own. Their sum is the full-batch gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._validate import as_float_array
from ..microbatch import split_indices
from ..nn import Sequential, Siamese
from ..tying import AnchoredModel, TiedPair
from .contributions import (
    Contributions,
    Params,
    Term,
    TwinGradients,
    add_pulls,
    anchored_pulls,
    assemble,
    from_loss,
    merge_terms,
    pair_pulls,
    pair_task_terms,
    task_terms,
)

__all__ = ["siamese_contributions", "microbatch_contributions"]


def _from_upstream(dout: np.ndarray) -> TwinGradients:
    """The twin's gradients of ``<out, dout>``: a tower pulled back from its embeddings."""
    return lambda twin, params, x: twin.vjp(params, x, dout)[2]


def _branch_terms(model: Siamese, params: Params, arrays: Sequence[np.ndarray], target: Any
                  ) -> dict[str, list[Term]]:
    """Every tower parameter's terms, branch by branch, each through its own tower copy."""
    embeddings = model.forward(params, *arrays)
    _, cache = model.loss_spec.forward(embeddings, target)
    douts = model.loss_spec.backward(1.0, cache)      # dL / d embedding of every branch
    return merge_terms(*(task_terms(model.tower, params, x, _from_upstream(dout), "model",
                                    f"{branch}: ", branch=branch)
                         for branch, x, dout in zip(model.branch_names, arrays, douts,
                                                    strict=True)))


def siamese_contributions(model: Siamese, params: Mapping[str, Any], *inputs: Any,
                          y: Any = None) -> dict[str, Contributions]:
    """The terms of every tower parameter's gradient: one per branch (and per slot of the
    tower, and per position of a convolution inside it).

    Parameters
    ----------
    model : refimpl.nn.Siamese
    params : dict of str to ndarray
        The tower's unique parameters.
    *inputs : ndarray
        ``anchor, positive, negative`` (triplet) or ``x1, x2`` (contrastive).
    y : array_like, shape (N,), optional
        Contrastive only: 1 similar pair, 0 dissimilar.

    Returns
    -------
    dict of str to Contributions
        Keyed like ``params``: the gradient ``model.loss_and_grads`` returns and its terms,
        labelled ``"<branch>: <slot>"`` (``branch`` set), in the order of the branches.

    Raises
    ------
    TypeError, ValueError
        As :meth:`~refimpl.nn.Siamese.loss_and_grads`.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl import nn
    >>> tower = nn.Sequential([nn.Dense("fc", 3, 2), nn.Tanh()])
    >>> model = nn.Siamese(tower, nn.TripletMarginLoss(margin=2.0))
    >>> a, p, n = np.random.default_rng(0).standard_normal((3, 4, 3))
    >>> found = siamese_contributions(model, model.init(0), a, p, n)
    >>> [term.label for term in found["fc.weight"].terms]
    ['anchor: fc.weight', 'positive: fc.weight', 'negative: fc.weight']
    """
    if not isinstance(model, Siamese):
        raise TypeError(f"model: expected a refimpl Siamese, got {type(model).__name__}")
    _, grads = model.loss_and_grads(params, *inputs, y=y)   # validates everything first
    params = model.check_params(params)
    arrays = [as_float_array(x, name) for name, x in zip(model.branch_names, inputs,
                                                         strict=True)]
    target = model.loss_spec.check_target(y, arrays[0].shape[0])
    return assemble(grads, _branch_terms(model, params, arrays, target))


def _weighted(terms: Mapping[str, list[Term]], share: float, index: int, sizes: str
              ) -> dict[str, list[Term]]:
    """Every term of micro-batch ``index`` times its share ``n_i / N``, labelled with it."""
    return {name: [term._replace(
        label=f"mb{index} ({sizes}) {term.label}", gradient=share * term.gradient,
        parts=None if term.parts is None else term.parts.scaled(share), micro_batch=index)
        for term in found] for name, found in terms.items()}


def _accumulate(terms_of: Any, arrays: Sequence[Any], splits: Any, name: str
                ) -> dict[str, list[Term]]:
    """``terms_of(micro-batch arrays)`` of every micro-batch, weighted by ``n_i / N``; the
    micro-batches are :func:`refimpl.microbatch.split_indices`'s (sizes or index lists)."""
    batch_size = int(np.shape(arrays[0])[0])
    pieces = split_indices(splits, batch_size, name)
    # n_i / N, never 1 / M: the mean over the batch is the share-weighted sum of the
    # micro-batch means.
    return merge_terms(*(_weighted(terms_of(tuple(np.asarray(array)[rows] for array in arrays)),
                                   len(rows) / batch_size, index, f"{len(rows)}/{batch_size}")
                         for index, rows in enumerate(pieces)))


def _batch_of(batch: Any, length: int, name: str, expected: str) -> tuple[Any, ...]:
    """``batch`` as a tuple of ``length`` items, or a ``TypeError`` naming ``name`` and the
    form ``(expected)`` the model takes."""
    if not isinstance(batch, (tuple, list)) or len(batch) != length:
        got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
               else type(batch).__name__)
        raise TypeError(f"{name}: expected ({expected}) for this model, got {got}")
    return tuple(batch)


def microbatch_contributions(model: Any, params: Mapping[str, Any], batch: Any, splits: Any,
                             *, splits_b: Any = None) -> dict[str, Contributions]:
    """The terms of the full-batch gradient as accumulated micro-batches: one per micro-batch
    (and per use inside it), each weighted by its share, and a penalty's pull once.

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.AnchoredModel, refimpl.TiedPair or refimpl.Siamese
    params : dict of str to ndarray
        The point (a pair's joined dict, ``"A:"`` / ``"B:"`` keys).
    batch : tuple
        ``(x, y)``; ``((xa, ya), (xb, yb))`` for a pair; the branch inputs (then ``y`` for a
        contrastive loss) for a Siamese model.
    splits : list of int, or list of lists of int
        The micro-batches (A's, for a pair), as :func:`refimpl.microbatch.split_indices`
        takes them: sizes of consecutive pieces adding up to the batch size, or index lists
        that partition the batch.
    splits_b : list, optional
        A pair's B micro-batches, likewise (required for a pair, refused otherwise).

    Returns
    -------
    dict of str to Contributions
        Keyed like ``params``: the *full-batch* gradient (``loss_and_grads`` on the whole
        batch, which the accumulated gradient equals) and its terms, labelled
        ``"mb<i> (<n_i>/<N>) ..."`` (``micro_batch`` set), the pull last.

    Raises
    ------
    TypeError, ValueError
        For another model, a batch of another form (``batch: expected (x, y) ...``), sizes
        that do not add up to the batch size, ``splits_b`` missing for a pair or given for
        another model; as the model's ``loss_and_grads`` for bad parameters or data.
    """
    if (splits_b is None) == isinstance(model, TiedPair):
        raise TypeError("splits_b: required for a TiedPair (B's micro-batches), refused for "
                        f"any other model, got {splits_b!r} for a {type(model).__name__}")
    if isinstance(model, TiedPair):
        return _pair(model, params, batch, splits, splits_b)
    if isinstance(model, Siamese):
        branches = model.loss_spec.branches
        batch = _batch_of(batch, branches + model.loss_spec.needs_target, "batch",
                          ", ".join(model.branch_names)
                          + (", y" if model.loss_spec.needs_target else ""))
        target = batch[branches] if model.loss_spec.needs_target else None
        _, grads = model.loss_and_grads(params, *batch[:branches], y=target)
        checked = model.check_params(params)
        arrays = [as_float_array(x, "batch") for x in batch[:branches]]
        if target is not None:
            arrays.append(np.asarray(target))

        def terms_of(micro: tuple) -> dict[str, list[Term]]:
            micro_y = model.loss_spec.check_target(micro[branches], len(micro[0])) \
                if target is not None else None
            return _branch_terms(model, checked, micro[:branches], micro_y)

        return assemble(grads, _accumulate(terms_of, arrays, splits, "splits"))
    task = model.model if isinstance(model, AnchoredModel) else model
    if not isinstance(task, Sequential):
        raise TypeError(f"model: expected a Sequential, AnchoredModel, TiedPair or Siamese, "
                        f"got {type(model).__name__}")
    x, y = _batch_of(batch, 2, "batch", "x, y")
    _, grads = model.loss_and_grads(params, x, y)
    checked = task.check_params(params)
    terms = _accumulate(lambda micro: task_terms(task, checked, micro[0], from_loss(micro[1]),
                                                 "model", ""), (x, y), splits, "splits")
    if isinstance(model, AnchoredModel):
        add_pulls(terms, anchored_pulls(model, checked))   # once per step
    return assemble(grads, terms)


def _pair(pair: TiedPair, params: Mapping[str, Any], batch: Any, splits: Any,
          splits_b: Any) -> dict[str, Contributions]:
    """A tied pair: each model's micro-batches weighted by their share of its own batch, the
    penalty's pull once."""
    batch_a, batch_b = _batch_of(batch, 2, "batch", "(xa, ya), (xb, yb)")
    xa, ya = _batch_of(batch_a, 2, "batch[0]", "xa, ya")
    xb, yb = _batch_of(batch_b, 2, "batch[1]", "xb, yb")
    params_a, params_b = pair.check_params(*pair.split(params))
    _, grads_a, grads_b = pair.loss_and_grads(params_a, params_b, (xa, ya), (xb, yb))

    def side(name: str) -> Any:
        return lambda micro: pair_task_terms(pair, params_a, params_b, name,
                                             np.asarray(micro[0]), from_loss(micro[1]))

    terms = merge_terms(_accumulate(side("A"), (xa, ya), splits, "splits"),
                        _accumulate(side("B"), (xb, yb), splits_b, "splits_b"))
    add_pulls(terms, pair_pulls(pair, params_a, params_b))   # once per step
    return assemble(pair.join(grads_a, grads_b), terms)
