"""Hessian-vector products and Jacobian-vector products of every model kind.

The per-operation pieces (each op's ``*_jvp`` and ``*_backward_jvp``, the R-operator of a
``Sequential`` and of a ``Siamese`` model) live in :mod:`refimpl.nn`, the penalties' in
:mod:`refimpl.tying.penalties`; this module composes them for the model kinds above ``nn``
(tied pairs, anchored models) and for micro-batch accumulation:

* ``Sequential`` (shared or not, sequence models): :meth:`refimpl.nn.Sequential.hvp`;
* ``Siamese``: :meth:`refimpl.nn.Siamese.hvp`, the sum over the branches;
* ``AnchoredModel``: the model's ``H v`` plus the penalty's, ``2 lam v`` on each anchored
  parameter for ``"l2"`` (0 for ``"l1"``);
* ``TiedPair``, soft: ``H_A v_A`` and ``H_B v_B`` plus the penalty's block
  ``2 lam [[I, -I], [-I, I]]`` on each pair: ``+2 lam (vA - vB)`` for A's parameter,
  ``-2 lam (vA - vB)`` for B's (B's read transposed when paired transposed; 0 for ``"l1"``);
* ``TiedPair``, hard: B reads each shared parameter from A (and ``v`` with it), so B's ``H v``
  of a shared parameter is added to A's (transposed back), as its gradient is;
* micro-batches (``splits``): ``sum_i (n_i / N) H_i v`` over the micro-batches, each model of a
  pair weighted by its own batch, a penalty's term added once per step: the full batch's
  ``H v`` (the loss is a mean over the batch, see :mod:`refimpl.microbatch`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._validate import as_float_array, check_keys, check_shape, no_fp_warnings
from ..microbatch import accumulated_loss_and_grads, split_indices
from ..nn import Sequential, Siamese
from ..tying import AnchoredModel, TiedPair
from ..tying.penalties import (
    PENALTIES,
    anchored_penalty_backward,
    anchored_penalty_backward_jvp,
    anchored_penalty_forward,
    anchored_penalty_jvp,
)

__all__ = ["hvp", "jvp", "loss_grads_and_hvp", "JVPResult", "HVPResult", "gradient_function",
           "random_directions", "MODEL_KINDS"]

Params = dict[str, np.ndarray]

#: The model kinds :func:`hvp` and :func:`jvp` take.
MODEL_KINDS = (Sequential, TiedPair, AnchoredModel, Siamese)


class HVPResult(NamedTuple):
    """What :func:`loss_grads_and_hvp` computes: the loss, its gradient and ``H v``, the two
    dicts keyed like ``params``."""

    loss: Any
    grads: Params
    hvp: Params


class JVPResult(NamedTuple):
    """What :func:`jvp` computes, in one forward-mode pass.

    Attributes
    ----------
    loss, loss_dot : float
        The loss (with a penalty: the total) and its directional derivative ``<grad, v>``.
    outputs, outputs_dot : dict of str to ndarray
        The forward outputs and their directional derivatives, named as the cases name them:
        ``"out"`` (one model), ``"out_a"`` / ``"out_b"`` (a pair), ``"out_<branch>"`` (a
        Siamese model), ``"<name>.<i>"`` for micro-batch ``i``.
    """

    loss: Any
    loss_dot: Any
    outputs: dict[str, np.ndarray]
    outputs_dot: dict[str, np.ndarray]


# --- arguments -----------------------------------------------------------------------------------

def _check_model(model: Any) -> None:
    if not isinstance(model, MODEL_KINDS):
        raise TypeError(f"model: expected a refimpl Sequential, TiedPair, AnchoredModel or "
                        f"Siamese, got {type(model).__name__}")


def _check_direction(v: Any, params: Mapping[str, Any]) -> Params:
    """``v`` keyed exactly like ``params`` (in params' order), each entry a finite real array
    of its parameter's shape."""
    check_keys(v, list(params), what="v (a direction: the keys of params)")
    checked = {}
    for key in params:
        array = as_float_array(v[key], f"v[{key!r}]", allow_complex=False)
        check_shape(array, np.shape(params[key]), f"v[{key!r}]")
        checked[key] = array
    return checked


def _pair_data(data: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``((xa, ya), (xb, yb))``, or a ``TypeError`` naming ``data``."""
    if (not isinstance(data, (tuple, list)) or len(data) != 2
            or not all(isinstance(batch, (tuple, list)) and len(batch) == 2 for batch in data)):
        raise TypeError(f"data: a TiedPair takes ((xa, ya), (xb, yb)), got "
                        f"{type(data).__name__} {data!r:.80}")
    return tuple(data[0]), tuple(data[1])


def _model_data(data: Any) -> tuple[Any, Any]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data: expected (x, y), got {type(data).__name__} {data!r:.80}")
    return data[0], data[1]


def _siamese_data(model: Siamese, data: Any) -> tuple[tuple[Any, ...], Any]:
    """The branch inputs and ``y`` (None for the triplet loss) of a Siamese model's data."""
    branches, needs_y = model.loss_spec.branches, model.loss_spec.needs_target
    expected = ", ".join(model.branch_names) + (", y" if needs_y else "")
    if not isinstance(data, (tuple, list)) or len(data) != branches + needs_y:
        raise TypeError(f"data: a Siamese model with {type(model.loss_spec).__name__} takes "
                        f"({expected}), got {type(data).__name__} of length "
                        f"{len(data) if isinstance(data, (tuple, list)) else '-'}")
    return tuple(data[:branches]), (data[branches] if needs_y else None)


def _check_splits(model: Any, splits: Any, splits_b: Any) -> None:
    if splits is None and splits_b is not None:
        raise TypeError("splits_b: given without splits (the micro-batches of the first batch)")
    if splits is not None and isinstance(model, TiedPair) and splits_b is None:
        raise TypeError("splits_b: a TiedPair needs the micro-batches of model B's batch too")
    if splits_b is not None and not isinstance(model, TiedPair):
        raise TypeError(f"splits_b: only a TiedPair takes a second split, got a "
                        f"{type(model).__name__}")


# --- micro-batches ---------------------------------------------------------------------------

def _micro_batches(batch: tuple[Any, ...], splits: Any, name: str, split_name: str
                   ) -> list[tuple[float, tuple[Any, ...]]]:
    """``[(n_i / N, micro-batch i), ...]``; the batch's arrays share their leading size."""
    arrays = [np.asarray(value) for value in batch]
    sizes = {array.shape[0] if array.ndim else None for array in arrays}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"{name}: every array must have the batch size along axis 0, got "
                         f"shapes {[array.shape for array in arrays]}")
    size = sizes.pop()
    return [(indices.size / size, tuple(array[indices] for array in arrays))
            for indices in split_indices(splits, size, split_name)]


def _accumulate(step: Callable[..., tuple], batch: tuple[Any, ...], splits: Any,
                name: str = "data", split_name: str = "splits") -> tuple:
    """``sum_i (n_i / N) step(micro-batch i)`` entry by entry, for ``step`` returning a tuple
    of scalars and dicts of arrays (the loss, gradients, ``H v``, ...)."""
    total: list[Any] = []
    for weight, micro in _micro_batches(batch, splits, name, split_name):
        terms = step(micro)
        if not total:
            total = [_scaled(term, weight) for term in terms]
        else:
            total = [_added(sum_, _scaled(term, weight)) for sum_, term in zip(total, terms,
                                                                               strict=True)]
    return tuple(total)


def _scaled(term: Any, weight: float) -> Any:
    if isinstance(term, dict):
        return {key: weight * value for key, value in term.items()}
    return weight * term


def _added(first: Any, second: Any) -> Any:
    if isinstance(first, dict):
        return {key: first[key] + second[key] for key in first}
    return first + second


# --- one model, with its micro-batches ---------------------------------------------------------

def _sequential_terms(model: Sequential, params: Params, v: Params, batch: tuple[Any, Any],
                      splits: Any, name: str = "data", split_name: str = "splits") -> tuple:
    """``(loss, grads, H v)`` of one ``Sequential``, accumulated over ``splits`` if given."""
    if splits is None:
        return model.hvp(params, *batch, v)
    return _accumulate(lambda micro: model.hvp(params, *micro, v), batch, splits, name,
                       split_name)


def _sequential_jvp_terms(model: Sequential, params: Params, v: Params, batch: tuple[Any, Any],
                          splits: Any, output: str, name: str = "data",
                          split_name: str = "splits") -> tuple:
    """``(loss, loss_dot, outputs, outputs_dot)`` of one ``Sequential``; per micro-batch
    outputs named ``"<output>.<i>"``."""
    if splits is None:
        loss, loss_dot, out, out_dot = model.loss_jvp(params, *batch, v)
        return loss, loss_dot, {output: out}, {output: out_dot}
    loss, loss_dot = 0.0, 0.0
    outputs, outputs_dot = {}, {}
    for i, (weight, micro) in enumerate(_micro_batches(batch, splits, name, split_name)):
        micro_loss, micro_dot, out, out_dot = model.loss_jvp(params, *micro, v)
        loss, loss_dot = loss + weight * micro_loss, loss_dot + weight * micro_dot
        outputs[f"{output}.{i}"], outputs_dot[f"{output}.{i}"] = out, out_dot
    return loss, loss_dot, outputs, outputs_dot


def _siamese_terms(model: Siamese, params: Params, v: Params, data: Any, splits: Any) -> tuple:
    inputs, y = _siamese_data(model, data)
    batch = inputs if y is None else (*inputs, y)
    branches = len(inputs)

    def step(micro):
        return model.hvp(params, *micro[:branches], v=v,
                         y=micro[branches] if len(micro) > branches else None)
    return step(batch) if splits is None else _accumulate(step, batch, splits)


def _siamese_jvp_terms(model: Siamese, params: Params, v: Params, data: Any,
                       splits: Any) -> tuple:
    inputs, y = _siamese_data(model, data)
    batch = inputs if y is None else (*inputs, y)
    branches = len(inputs)
    micro_batches = [(1.0, batch)] if splits is None else _micro_batches(batch, splits, "data",
                                                                          "splits")
    loss, loss_dot = 0.0, 0.0
    outputs, outputs_dot = {}, {}
    for i, (weight, micro) in enumerate(micro_batches):
        embeddings, embeddings_dot, micro_loss, micro_dot = model.jvp(
            params, *micro[:branches], v=v, y=micro[branches] if len(micro) > branches else None)
        loss, loss_dot = loss + weight * micro_loss, loss_dot + weight * micro_dot
        suffix = "" if splits is None else f".{i}"
        for branch, out, out_dot in zip(model.branch_names, embeddings, embeddings_dot,
                                        strict=True):
            outputs[f"out_{branch}{suffix}"] = out
            outputs_dot[f"out_{branch}{suffix}"] = out_dot
    return loss, loss_dot, outputs, outputs_dot


# --- penalties ---------------------------------------------------------------------------------

def _anchored_penalty(model: AnchoredModel, params: Params, v: Params) -> tuple:
    """``(value, value_dot, grads, H v)`` of the anchored penalty, keyed by the anchored
    names: ``H v = 2 lam v`` ("l2") or 0 ("l1")."""
    value: Any = 0.0
    value_dot: Any = 0.0
    grads, hvp = {}, {}
    for name in model.names:
        term, cache = anchored_penalty_forward(params[name], model.reference[name],
                                               model.lams[name], model.penalty_name)
        term_dot, tangent_cache = anchored_penalty_jvp(v[name], cache)
        value, value_dot = value + term, value_dot + term_dot
        grads[name] = anchored_penalty_backward(1.0, cache)
        hvp[name] = anchored_penalty_backward_jvp(1.0, 0.0, cache, tangent_cache)
    return value, value_dot, grads, hvp


def _pair_penalty(pair: TiedPair, params_a: Params, params_b: Params, v_a: Params,
                  v_b: Params) -> tuple:
    """Soft tying: ``(value, value_dot, grads_a, grads_b, hvp_a, hvp_b)`` keyed by the paired
    names. The squared L2 penalty's Hessian is ``2 lam [[I, -I], [-I, I]]``: ``+2 lam (vA -
    vB)`` for A, ``-2 lam (vA - vB)`` for B (transposed back for a transposed pair)."""
    penalty = PENALTIES[pair.penalty_name]
    value: Any = 0.0
    value_dot: Any = 0.0
    grads_a, grads_b, hvp_a, hvp_b = {}, {}, {}, {}
    for tie in pair.pairs:
        b, b_dot = params_b[tie.name_b], v_b[tie.name_b]
        if tie.transpose:
            b, b_dot = b.T, b_dot.T
        term, cache = penalty.forward(params_a[tie.name_a], b, tie.lam)
        term_dot, tangent_cache = penalty.jvp(v_a[tie.name_a], b_dot, cache)
        value, value_dot = value + term, value_dot + term_dot
        grad_a, grad_b = penalty.backward(1.0, cache)
        hvp_of_a, hvp_of_b = penalty.backward_jvp(1.0, 0.0, cache, tangent_cache)
        grads_a[tie.name_a], hvp_a[tie.name_a] = grad_a, hvp_of_a
        grads_b[tie.name_b] = grad_b.T if tie.transpose else grad_b
        hvp_b[tie.name_b] = hvp_of_b.T if tie.transpose else hvp_of_b
    return value, value_dot, grads_a, grads_b, hvp_a, hvp_b


def _add(into: Params, extra: Params) -> None:
    for key, value in extra.items():
        into[key] = into[key] + value


# --- a tied pair -------------------------------------------------------------------------------

def _pair_parts(pair: TiedPair, params: Mapping[str, Any], v: Params) -> tuple:
    """The checked parameters and directions of both models, B's complete with what it reads
    from A in hard mode (the direction reaches B's shared slots the way A's parameters do)."""
    params_a, params_b = pair.check_params(*pair.split(params))
    v_a, v_b = pair.split(v, "v")
    full_b, v_full_b = dict(params_b), dict(v_b)
    for name_b, (name_a, transpose) in pair.shared_b().items():
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        v_full_b[name_b] = v_a[name_a].T if transpose else v_a[name_a]
    order_b = list(pair.model_b.parameter_shapes())
    return (params_a, params_b, v_a, v_b, {key: full_b[key] for key in order_b},
            {key: v_full_b[key] for key in order_b})


def _merge_shared(pair: TiedPair, into_a: Params, from_b: Params) -> None:
    """Hard mode: B's entry of each shared parameter added to A's (transposed back), removed
    from B's: one array, two models using it."""
    for name_b, (name_a, transpose) in pair.shared_b().items():
        value = from_b.pop(name_b)
        into_a[name_a] = into_a[name_a] + (value.T if transpose else value)


def _pair_terms(pair: TiedPair, params: Mapping[str, Any], v: Params, data: Any, splits: Any,
                splits_b: Any) -> tuple:
    batch_a, batch_b = _pair_data(data)
    params_a, params_b, v_a, v_b, full_b, v_full_b = _pair_parts(pair, params, v)
    loss_a, grads_a, hvp_a = _sequential_terms(pair.model_a, params_a, v_a, batch_a, splits,
                                               "data[0]")
    loss_b, grads_b, hvp_b = _sequential_terms(pair.model_b, full_b, v_full_b, batch_b,
                                               splits_b, "data[1]", "splits_b")
    total = loss_a + loss_b
    if pair.mode == "hard":
        _merge_shared(pair, grads_a, grads_b)
        _merge_shared(pair, hvp_a, hvp_b)
    else:   # the penalty depends on the parameters only: once per step
        value, _, pen_grads_a, pen_grads_b, pen_hvp_a, pen_hvp_b = _pair_penalty(
            pair, params_a, params_b, v_a, v_b)
        total = total + value
        for into, extra in ((grads_a, pen_grads_a), (grads_b, pen_grads_b),
                            (hvp_a, pen_hvp_a), (hvp_b, pen_hvp_b)):
            _add(into, extra)
    grads, hvp = pair.join(grads_a, grads_b), pair.join(hvp_a, hvp_b)
    return total, {key: grads[key] for key in params}, {key: hvp[key] for key in params}


def _pair_jvp_terms(pair: TiedPair, params: Mapping[str, Any], v: Params, data: Any,
                    splits: Any, splits_b: Any) -> tuple:
    batch_a, batch_b = _pair_data(data)
    params_a, params_b, v_a, v_b, full_b, v_full_b = _pair_parts(pair, params, v)
    loss_a, dot_a, outputs, outputs_dot = _sequential_jvp_terms(
        pair.model_a, params_a, v_a, batch_a, splits, "out_a", "data[0]")
    loss_b, dot_b, outputs_b, outputs_dot_b = _sequential_jvp_terms(
        pair.model_b, full_b, v_full_b, batch_b, splits_b, "out_b", "data[1]", "splits_b")
    outputs.update(outputs_b)
    outputs_dot.update(outputs_dot_b)
    loss, loss_dot = loss_a + loss_b, dot_a + dot_b
    if pair.mode == "soft":
        value, value_dot, *_ = _pair_penalty(pair, params_a, params_b, v_a, v_b)
        loss, loss_dot = loss + value, loss_dot + value_dot
    return loss, loss_dot, outputs, outputs_dot


# --- the public functions -------------------------------------------------------------------------

@no_fp_warnings()
def loss_grads_and_hvp(model: Any, params: Mapping[str, Any], data: Any, v: Mapping[str, Any],
                       *, splits: Any = None, splits_b: Any = None) -> HVPResult:
    """The loss, its gradient and its Hessian-vector product ``H v``, in one pass.

    Parameters and rules as :func:`hvp`.

    Returns
    -------
    HVPResult
        ``(loss, grads, hvp)``; ``grads`` and ``hvp`` keyed exactly like ``params``, in its
        order.
    """
    _check_model(model)
    _check_splits(model, splits, splits_b)
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    v = _check_direction(v, params)
    if isinstance(model, TiedPair):
        loss, grads, hvp_ = _pair_terms(model, params, v, data, splits, splits_b)
    elif isinstance(model, Siamese):
        loss, grads, hvp_ = _siamese_terms(model, model.check_params(params), v, data, splits)
    elif isinstance(model, AnchoredModel):
        checked = model.model.check_params(params)
        loss, grads, hvp_ = _sequential_terms(model.model, checked, v, _model_data(data),
                                              splits)
        value, _, penalty_grads, penalty_hvp = _anchored_penalty(model, checked, v)
        loss = loss + value   # once per step, never per micro-batch
        grads, hvp_ = dict(grads), dict(hvp_)
        _add(grads, penalty_grads)
        _add(hvp_, penalty_hvp)
    else:
        loss, grads, hvp_ = _sequential_terms(model, model.check_params(params), v,
                                              _model_data(data), splits)
    loss = loss.item() if isinstance(loss, np.ndarray | np.generic) else loss
    return HVPResult(loss, {key: grads[key] for key in params}, {key: hvp_[key] for key in params})


def hvp(model: Any, params: Mapping[str, Any], data: Any, v: Mapping[str, Any], *,
        splits: Any = None, splits_b: Any = None) -> Params:
    """The Hessian-vector product ``H v`` of a model's loss, explicit (the R-operator).

    Pearlmutter's R-operator: the forward-mode derivative of the explicit backward pass along
    ``v``, written out per operation (each op's ``*_backward_jvp`` in :mod:`refimpl.nn`), so
    ``H v`` costs about two gradients and is exact to rounding (no differences, no step).

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.TiedPair, refimpl.AnchoredModel or refimpl.Siamese
        With a loss.
    params : dict of str to ndarray
        The point: the model's unique parameters (a ``TiedPair``: the joined dict, keys
        ``"A:<name>"`` / ``"B:<name>"``).
    data : tuple
        ``(x, y)`` (``Sequential``, ``AnchoredModel``); ``((xa, ya), (xb, yb))``
        (``TiedPair``); ``(anchor, positive, negative)`` or ``(x1, x2, y)`` (``Siamese``).
    v : dict of str to ndarray
        The direction: exactly the keys and shapes of ``params``, finite and real.
    splits : sequence, optional
        Micro-batch sizes or index lists (:func:`refimpl.microbatch.split_indices`; for a
        pair, of A's batch): ``H v`` accumulated as :func:`refimpl.accumulated_loss_and_grads`
        accumulates the gradient, a penalty's term once.
    splits_b : sequence, optional
        For a ``TiedPair`` with ``splits`` only, and then required: B's micro-batches.

    Returns
    -------
    dict of str to ndarray
        ``H v``, keyed and shaped like ``params``, in its order.

    Raises
    ------
    TypeError, ValueError
        Naming the argument: a model of another kind, data of the wrong form, a direction
        whose keys or shapes differ from ``params``, splits that do not partition the batch;
        and the model's own checks of ``params`` and ``data``.

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> model = ri.MLP([3, 4, 2])
    >>> params = model.init(seed=0)
    >>> x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> v = {key: np.ones_like(value) for key, value in params.items()}
    >>> hv = ri.hvp(model, params, (x, y), v)
    >>> sorted(hv) == sorted(params)
    True
    """
    return loss_grads_and_hvp(model, params, data, v, splits=splits, splits_b=splits_b).hvp


@no_fp_warnings()
def jvp(model: Any, params: Mapping[str, Any], data: Any, v: Mapping[str, Any], *,
        splits: Any = None, splits_b: Any = None) -> JVPResult:
    """The directional derivatives of a model's outputs and loss along ``v`` (forward mode).

    The first half of the R-operator: every operation's ``*_jvp`` in order (tangents of the
    parameters; the data are fixed). ``loss_dot`` equals ``<grad, v>`` up to rounding, but is
    computed forward, never from the gradient.

    Parameters
    ----------
    model, params, data, v, splits, splits_b
        As :func:`hvp`.

    Returns
    -------
    JVPResult
        ``(loss, loss_dot, outputs, outputs_dot)``; the outputs named ``"out"``,
        ``"out_a"`` / ``"out_b"``, ``"out_<branch>"``, and ``"<name>.<i>"`` per micro-batch.
    """
    _check_model(model)
    _check_splits(model, splits, splits_b)
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    v = _check_direction(v, params)
    if isinstance(model, TiedPair):
        loss, loss_dot, outputs, outputs_dot = _pair_jvp_terms(model, params, v, data, splits,
                                                               splits_b)
    elif isinstance(model, Siamese):
        loss, loss_dot, outputs, outputs_dot = _siamese_jvp_terms(
            model, model.check_params(params), v, data, splits)
    elif isinstance(model, AnchoredModel):
        checked = model.model.check_params(params)
        loss, loss_dot, outputs, outputs_dot = _sequential_jvp_terms(
            model.model, checked, v, _model_data(data), splits, "out")
        value, value_dot, _, _ = _anchored_penalty(model, checked, v)
        loss, loss_dot = loss + value, loss_dot + value_dot
    else:
        loss, loss_dot, outputs, outputs_dot = _sequential_jvp_terms(
            model, model.check_params(params), v, _model_data(data), splits, "out")
    return JVPResult(_scalar(loss), _scalar(loss_dot), outputs, outputs_dot)


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.ndarray | np.generic) else value


def random_directions(params: Mapping[str, Any], count: int, seed: int) -> list[Params]:
    """``count`` seeded standard-normal directions over every parameter: from one
    ``numpy.random.default_rng(seed)``, direction by direction, each parameter in the order of
    ``params`` (the directions :func:`refimpl.hessian.check_hvp` draws).

    Examples
    --------
    >>> import numpy as np
    >>> [v] = random_directions({"w": np.zeros((2, 3))}, 1, seed=0)
    >>> v["w"].shape
    (2, 3)
    """
    rng = np.random.default_rng(seed)
    return [{key: rng.standard_normal(np.shape(value)) for key, value in params.items()}
            for _ in range(count)]


def gradient_function(model: Any, data: Any, *, splits: Any = None, splits_b: Any = None
                      ) -> Callable[[Mapping[str, Any]], tuple[Any, Params]]:
    """``f(params) -> (loss, grads)`` of a model kind on fixed data: the explicit gradient
    whose complex step :func:`refimpl.hessian.check_hvp` takes (it accepts complex
    parameters).

    Parameters
    ----------
    model, data, splits, splits_b
        As :func:`hvp`.

    Returns
    -------
    callable
    """
    _check_model(model)
    _check_splits(model, splits, splits_b)
    if splits is not None:
        return lambda p: accumulated_loss_and_grads(model, p, data, splits, splits_b=splits_b)
    if isinstance(model, TiedPair):
        batch_a, batch_b = _pair_data(data)
        return lambda p: model.joined_loss_and_grads(p, batch_a, batch_b)
    if isinstance(model, Siamese):
        inputs, y = _siamese_data(model, data)
        return lambda p: model.loss_and_grads(p, *inputs, y=y)
    x, y = _model_data(data)
    return lambda p: model.loss_and_grads(p, x, y)
