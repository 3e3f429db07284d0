"""Accumulated micro-batches: the step's loss and gradient from micro-batch gradients.

Gradient accumulation splits a batch of ``N`` examples into micro-batches of sizes
``n_1 + ... + n_M = N``, runs forward and backward on each, and adds the gradients before
one optimizer step. For a loss that is the *mean over the batch* the step gradient is the
full-batch gradient exactly when each micro-batch's gradient is weighted by its share of the
batch::

    L = (1/N) sum_n l_n = sum_i (n_i / N) L_i,      L_i = (1/n_i) sum_{n in i} l_n
    grad L = sum_i (n_i / N) grad L_i

(not ``1/M``: with unequal micro-batches the mean of the micro-batch means is another loss).
A term that does not depend on the data — a tying or anchoring penalty — belongs to the
*step*: it is added once, not once per micro-batch (``M`` times too strong).

:func:`accumulated_loss_and_grads` does this for every model kind:

* any model with ``loss_and_grads(params, x, y)`` (``Sequential``, shared or not, and any
  other model of that shape) — ``batch = (x, y)``;
* :class:`refimpl.AnchoredModel` — ``batch = (x, y)``; the task loss accumulated, the
  penalty added once;
* :class:`refimpl.TiedPair` — ``params`` the joined dict (``"A:"`` / ``"B:"`` keys),
  ``batch = ((xa, ya), (xb, yb))``, ``splits`` for A's batch and ``splits_b`` for B's: each
  model's task loss weighted by its own share of its own batch (``n_A,i / N_A`` and
  ``n_B,i / N_B``), the penalty counted once; in hard mode the gradient of a shared
  parameter is the sum of both models' accumulated gradients;
* :class:`refimpl.Siamese` — ``batch = (anchor, positive, negative)`` or ``(x1, x2, y)``;
* any callable ``f(params, batch) -> (loss, grads)`` — ``batch`` a tuple or dict of arrays.

The assumption, for every kind: the loss is a *mean over the leading (batch) axis* of
every array of the batch, so that ``n_i / N`` is each micro-batch's exact share. That holds
for cross-entropy over ``(N, K)``, the metric losses, and MSE (a mean over ``N x K`` with
``K`` fixed). Cross-entropy over sequences ``(N, T, K)`` averages over ``N x T`` positions:
with sequences of one length ``T`` the share of a micro-batch is still ``n_i T / (N T) =
n_i / N``; with padded or unequal-length sequences it is not, and this function does not
apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._validate import check_int, check_keys, check_scalar, no_fp_warnings
from .nn import Siamese
from .tying import AnchoredModel, TiedPair

__all__ = ["accumulated_loss_and_grads", "split_indices"]

Params = dict[str, np.ndarray]


def split_indices(splits: Any, batch_size: int, name: str = "splits") -> list[np.ndarray]:
    """The micro-batches of a batch of ``batch_size`` examples, as index arrays.

    Parameters
    ----------
    splits : sequence of int, or sequence of sequences of int
        Micro-batch sizes ``[n_1, ..., n_M]`` (each >= 1, summing to ``batch_size``: the
        contiguous pieces ``[0, n_1)``, ``[n_1, n_1 + n_2)``, ...), or index lists that
        partition ``range(batch_size)`` (every index exactly once, none empty).
    batch_size : int
        ``N``, >= 1.
    name : str
        The argument's name in messages.

    Returns
    -------
    list of ndarray of int64
        One index array per micro-batch.

    Raises
    ------
    TypeError, ValueError
        Naming ``name``: a size that is not an int (2.5 is not truncated), sizes that do not
        sum to ``N`` (none is dropped or padded) or are < 1, index lists that miss an index,
        repeat one, lie outside ``[0, N)`` or are empty, a mix of the two forms.

    Examples
    --------
    >>> [i.tolist() for i in split_indices([2, 1], 3)]
    [[0, 1], [2]]
    >>> [i.tolist() for i in split_indices([[2, 0], [1]], 3)]
    [[2, 0], [1]]
    """
    batch_size = check_int(batch_size, f"{name}: batch size", 1)
    if isinstance(splits, (str, bytes, Mapping)) or not isinstance(splits, (Sequence,
                                                                          np.ndarray)):
        raise TypeError(f"{name}: expected micro-batch sizes [n_1, ...] or index lists "
                        f"[[i, ...], ...], got {type(splits).__name__}")
    if len(splits) == 0:
        raise ValueError(f"{name}: expected at least one micro-batch, got none")
    if all(isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))
           for item in splits):
        return _from_sizes([int(size) for size in splits], batch_size, name)
    if all(np.ndim(item) == 0 for item in splits):
        # Sizes, one of them not an int: 2.5 would be truncated, True counted as 1.
        index, bad = next((index, item) for index, item in enumerate(splits)
                          if isinstance(item, (bool, np.bool_))
                          or not isinstance(item, (int, np.integer)))
        raise TypeError(f"{name}[{index}]: expected an integer micro-batch size, got "
                        f"{type(bad).__name__} {bad!r}")
    return _from_index_lists(splits, batch_size, name)


def _from_sizes(sizes: list[int], batch_size: int, name: str) -> list[np.ndarray]:
    if min(sizes) < 1:
        raise ValueError(f"{name}: every micro-batch size must be >= 1, got {sizes}")
    if sum(sizes) != batch_size:
        raise ValueError(f"{name}: micro-batch sizes {sizes} sum to {sum(sizes)}; they must "
                         f"partition the batch of {batch_size}")
    ends = np.cumsum(sizes)
    return [np.arange(end - size, end, dtype=np.int64) for size, end in zip(sizes, ends,
                                                                            strict=True)]


def _from_index_lists(splits: Sequence[Any], batch_size: int, name: str) -> list[np.ndarray]:
    pieces = []
    for index, item in enumerate(splits):
        array = np.asarray(item)
        if array.ndim != 1 or array.dtype.kind not in "iu" or array.size == 0:
            raise TypeError(f"{name}[{index}]: expected a non-empty list of integer indices (or "
                            f"give every micro-batch as a size), got {item!r:.80}")
        pieces.append(array.astype(np.int64))
    joined = np.concatenate(pieces)
    outside = joined[(joined < 0) | (joined >= batch_size)]
    if outside.size:
        raise ValueError(f"{name}: index {int(outside[0])} is outside the batch [0, "
                         f"{batch_size})")
    counts = np.bincount(joined, minlength=batch_size)
    if (counts != 1).any():
        repeated = np.flatnonzero(counts > 1).tolist()
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"{name}: the micro-batches do not partition the batch of "
                         f"{batch_size}: repeated indices {repeated}, missing {missing}")
    return pieces


def _leading_size(arrays: Sequence[Any], name: str) -> int:
    """The common leading-axis size of ``arrays`` (the batch size N)."""
    sizes = [np.shape(array)[0] if np.ndim(array) else None for array in arrays]
    if None in sizes or len(set(sizes)) != 1:
        raise ValueError(f"{name}: every array must have the batch size along axis 0, got "
                         f"shapes {[np.shape(array) for array in arrays]}")
    return sizes[0]


def _take(batch: Any, indices: np.ndarray) -> Any:
    """The micro-batch of ``batch`` (a tuple or dict of arrays) at ``indices`` (new arrays)."""
    if isinstance(batch, Mapping):
        return {key: np.asarray(value)[indices] for key, value in batch.items()}
    return tuple(np.asarray(value)[indices] for value in batch)


def _accumulate(step: Callable[[Any], tuple[Any, Params]], batch: Any, splits: Any,
                name: str = "batch", split_name: str = "splits") -> tuple[Any, Params]:
    """``sum_i (n_i / N) step(micro-batch i)``: the loss and every gradient."""
    values = list(batch.values()) if isinstance(batch, Mapping) else list(batch)
    if not values:
        raise ValueError(f"{name}: expected at least one array in the batch")
    batch_size = _leading_size(values, name)
    total: Any = 0.0
    grads: Params = {}
    for indices in split_indices(splits, batch_size, split_name):
        weight = indices.size / batch_size           # n_i / N: the micro-batch's share
        loss, micro_grads = _loss_and_grads(step(_take(batch, indices)))
        total = total + weight * loss
        for key, grad in micro_grads.items():
            grads[key] = grads[key] + weight * grad if key in grads else weight * grad
    return total, grads


def _loss_and_grads(result: Any) -> tuple[Any, Mapping[str, Any]]:
    """A micro-batch's ``(loss, grads)``, or a ``TypeError`` saying what the model (a callable
    ``f(params, batch)``, most likely) returned instead."""
    what = "model: f(params, micro-batch) must return (loss, grads)"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = (f"a {type(result).__name__} of {len(result)} items" +
               (" (return the first two: (loss, grads))" if len(result) > 2 else "")
               if isinstance(result, (tuple, list)) else f"{type(result).__name__} "
               f"{result!r:.60}")
        raise TypeError(f"{what}, got {got}")
    loss, grads = result
    check_scalar(loss, f"{what}: loss")
    if not isinstance(grads, Mapping):
        raise TypeError(f"{what}: grads: expected a dict of arrays keyed like params, got "
                        f"{type(grads).__name__}")
    return loss, grads


def _as_batch(batch: Any, length: int | None, name: str, what: str) -> tuple[Any, ...]:
    if not isinstance(batch, (tuple, list)) or (length is not None and len(batch) != length):
        raise TypeError(f"{name}: expected {what}, got {type(batch).__name__}")
    return tuple(batch)


def _pair(pair: TiedPair, params: Mapping[str, Any], batch: Any, splits: Any,
          splits_b: Any) -> tuple[Any, Params]:
    """A tied pair: each model's task loss accumulated over its own micro-batches, the
    penalty (soft mode) once; hard mode: a shared parameter's gradient sums both models'."""
    if splits_b is None:
        raise TypeError("splits_b: a TiedPair needs the micro-batches of model B's batch too")
    batch_a, batch_b = _as_batch(batch, 2, "batch", "((xa, ya), (xb, yb))")
    batch_a = _as_batch(batch_a, 2, "batch[0]", "(xa, ya)")
    batch_b = _as_batch(batch_b, 2, "batch[1]", "(xb, yb)")
    params_a, params_b = pair.check_params(*pair.split(params))
    full_b = dict(params_b)
    for name_b, (name_a, transpose) in pair.shared_b().items():   # B reads A's array
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
    loss_a, grads_a = _accumulate(lambda micro: pair.model_a.loss_and_grads(params_a, *micro),
                                  batch_a, splits, "batch[0]")
    loss_b, grads_b = _accumulate(lambda micro: pair.model_b.loss_and_grads(full_b, *micro),
                                  batch_b, splits_b, "batch[1]", "splits_b")
    for name_b, (name_a, transpose) in pair.shared_b().items():
        shared = grads_b.pop(name_b)
        grads_a[name_a] = grads_a[name_a] + (shared.T if transpose else shared)
    # The penalty depends on the parameters only: once per step, never per micro-batch.
    penalty, penalty_a, penalty_b = pair.penalty(params_a, params_b)
    for grads, extra in ((grads_a, penalty_a), (grads_b, penalty_b)):
        for key, grad in extra.items():
            grads[key] = grads[key] + grad
    joined = pair.join(grads_a, grads_b)
    return loss_a + loss_b + penalty, {key: joined[key] for key in params}


@no_fp_warnings()
def accumulated_loss_and_grads(model: Any, params: Mapping[str, Any], batch: Any, splits: Any,
                               *, splits_b: Any = None) -> tuple[Any, Params]:
    """The step's loss and gradient, accumulated over micro-batches (module docstring).

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.TiedPair, refimpl.AnchoredModel, refimpl.Siamese or callable
        A model with ``loss_and_grads(params, x, y)`` (``Sequential``), an
        ``AnchoredModel``, a ``TiedPair``, a ``Siamese``, or a callable
        ``f(params, batch) -> (loss, grads)`` whose loss is a mean over the batch axis.
    params : dict of str to ndarray
        The point (for a ``TiedPair`` the joined dict, keys ``"A:"`` / ``"B:"``).
    batch : tuple or dict of arrays
        ``(x, y)``; ``((xa, ya), (xb, yb))`` for a pair; the branch inputs (and ``y``) for a
        Siamese model; for a callable, any tuple or dict of arrays with the batch along axis
        0 (``f`` receives the micro-batch in the same form).
    splits : sequence
        Micro-batch sizes or index lists (:func:`split_indices`); for a pair, of A's batch.
    splits_b : sequence, optional
        For a ``TiedPair`` only, and then required: the micro-batches of B's batch.

    Returns
    -------
    loss : float or complex
        ``sum_i (n_i / N) L_i`` (+ the penalty once): the full-batch loss.
    grads : dict of str to ndarray
        Keyed like ``params``: the full-batch gradient.

    Raises
    ------
    TypeError, ValueError
        Naming the argument: splits that do not partition the batch, arrays whose batch
        sizes differ, ``splits_b`` missing for a pair or given for another model, a callable
        that does not return ``(loss, grads)`` (a scalar and a dict keyed like ``params``).

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> model = ri.MLP([3, 4, 2])
    >>> params = model.init(seed=0)
    >>> x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> loss, grads = accumulated_loss_and_grads(model, params, (x, y), [2, 3])
    >>> full_loss, full_grads = model.loss_and_grads(params, x, y)
    >>> bool(np.isclose(loss, full_loss, rtol=1e-14))
    True
    """
    if isinstance(model, TiedPair):
        return _pair(model, params, batch, splits, splits_b)
    if splits_b is not None:
        raise TypeError(f"splits_b: only a TiedPair takes a second split, got a "
                        f"{type(model).__name__}")
    if isinstance(model, AnchoredModel):
        checked = model.model.check_params(params)
        loss, grads = _accumulate(lambda micro: model.model.loss_and_grads(checked, *micro),
                                  _as_batch(batch, 2, "batch", "(x, y)"), splits, "batch")
        penalty, penalty_grads = model.penalty(checked)   # once per step
        for key, grad in penalty_grads.items():
            grads[key] = grads[key] + grad
        return loss + penalty, {key: grads[key] for key in checked}
    if isinstance(model, Siamese):
        branches = model.loss_spec.branches
        needs_y = model.loss_spec.needs_target
        arrays = _as_batch(batch, branches + needs_y, "batch",
                           f"the {branches} branch inputs" + (" and y" if needs_y else ""))
        step = (lambda m: model.loss_and_grads(params, *m[:branches], y=m[branches])) \
            if needs_y else (lambda m: model.loss_and_grads(params, *m))
        return _ordered(_accumulate(step, arrays, splits, "batch"), params)
    if hasattr(model, "loss_and_grads"):
        arrays = _as_batch(batch, 2, "batch", "(x, y)")
        return _ordered(_accumulate(lambda m: model.loss_and_grads(params, *m), arrays, splits,
                                    "batch"), params)
    if callable(model):
        if not isinstance(batch, (tuple, list, Mapping)):
            raise TypeError(f"batch: expected a tuple or dict of arrays, got "
                            f"{type(batch).__name__}")
        return _ordered(_accumulate(lambda m: model(params, m), batch, splits, "batch"), params)
    raise TypeError(f"model: expected a model with loss_and_grads, a TiedPair or a callable "
                    f"f(params, batch), got {type(model).__name__}")


def _ordered(result: tuple[Any, Params], params: Mapping[str, Any]) -> tuple[Any, Params]:
    """The gradients keyed exactly like ``params``, in its order (as every model returns
    them); a callable that returned other keys is a ``ValueError``."""
    loss, grads = result
    check_keys(grads, list(params), what="grads (returned for a micro-batch)")
    return loss, {key: grads[key] for key in params}
