"""check_model_gradients: the full gradient check of a model, a tied pair or an anchored model,
through the fast path of :mod:`refimpl.gradcheck.fast`.

It sits above :mod:`refimpl.gradcheck` and :mod:`refimpl.tying` (it knows both) and below
:mod:`refimpl.testing`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._validate import as_float_array
from .gradcheck import check_gradients
from .gradcheck.copies import Chain
from .gradcheck.fast import PENALTY_TERMS, PenaltyTerm, check_chains
from .gradcheck.report import GradcheckReport
from .nn import Sequential
from .tying import AnchoredModel, TiedPair
from .tying.pair import PREFIX_A, PREFIX_B

__all__ = ["check_model_gradients"]


def check_model_gradients(
    model: Sequential | TiedPair | AnchoredModel,
    params: Mapping[str, Any],
    data: tuple[Any, Any],
    *,
    method: str = "complex",
    mode: str = "full",
    names: Iterable[str] | None = None,
    directions: int = 8,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> GradcheckReport:
    """Check a model's ``loss_and_grads`` against numerical derivatives, fast.

    The report is the one :func:`refimpl.check_gradients` gives for
    ``f = lambda p: model.loss_and_grads(p, x, y)`` (the same steps, comparison, kink probes
    and verdict; numerical derivatives equal to rounding), but in full mode every parameter's
    perturbed points are evaluated together, reusing the forward pass's structure
    (:mod:`refimpl.gradcheck.copies`): only forward evaluations of the model's own layers,
    never a backward formula. They are checked against the model's own loss along seeded
    random directions over every entry first (:mod:`refimpl.gradcheck.fast`); a
    disagreement falls back to the coordinate loop with a ``RuntimeWarning``. A model of a
    subclass, or one whose instance replaces a method (``model.loss = ...``), may compute
    another loss than its layers: it takes the coordinate loop of
    :func:`refimpl.check_gradients` on its own ``loss_and_grads``. Directional mode is
    :func:`refimpl.check_gradients`'s.

    Parameters
    ----------
    model : refimpl.Sequential, refimpl.TiedPair or refimpl.AnchoredModel
        With a loss.
    params : dict of str to array_like
        The point: the model's unique parameters; for a ``TiedPair`` the joined dict
        ``pair.join(params_a, params_b)`` (keys ``"A:<name>"``, ``"B:<name>"``).
    data : (x, y), or ((xa, ya), (xb, yb)) for a TiedPair
        Inputs, e.g. x (N, D) or (N, C, H, W), and targets (labels (N,) or outputs).
    method : {"complex", "central", "richardson"}
    mode : {"full", "directional"}
    names, directions, seed, rtol, atol
        As in :func:`refimpl.check_gradients`; in full mode ``seed`` also seeds the guard's
        directions.

    Returns
    -------
    refimpl.gradcheck.GradcheckReport

    Raises
    ------
    TypeError
        For a ``model`` of another type or ``data`` that is not a pair.
    TypeError, ValueError
        From the model, naming the argument, for bad parameters or data; and those of
        :func:`refimpl.check_gradients`.

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> model = ri.MLP([3, 4, 2])
    >>> x, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> ri.check_model_gradients(model, model.init(seed=0), (x, y)).ok
    True
    """
    options = {"method": method, "names": names, "seed": seed, "rtol": rtol, "atol": atol}
    if not _known(model):
        f, loss_fn = _own_functions(model, data)
        return check_gradients(f, params, mode=mode, directions=directions, loss_fn=loss_fn,
                               **options)
    f, loss_fn, chains, penalties, penalty_value = _problem(model, params, data)
    if mode != "full" or any(term.kind not in PENALTY_TERMS for term in penalties):
        return check_gradients(f, params, mode=mode, directions=directions, loss_fn=loss_fn,
                               **options)
    return check_chains(f, params, chains, penalties, penalty_value, loss_fn=loss_fn,
                        **options)


#: The model classes whose losses the fast path rebuilds from their layers, by exact type: a
#: subclass may compute another loss (or other gradients) than its layers.
FAST_CLASSES = (Sequential, TiedPair, AnchoredModel)


def _known(model: Any) -> bool:
    """Whether the fast path knows how ``model`` computes its loss: its class and the classes
    of the models inside it are exactly those of :data:`FAST_CLASSES`, and no instance
    replaces a method of its class (``model.loss = ...``)."""
    inner = ([model.model_a, model.model_b] if type(model) is TiedPair else
             [model.model] if type(model) is AnchoredModel else [])
    for part in (model, *inner):
        if type(part) not in FAST_CLASSES:
            return False
        if any(callable(getattr(type(part), attribute, None)) for attribute in vars(part)):
            return False
    return True


def _own_functions(model: Any, data: Any) -> tuple[Any, Any]:
    """``(f, loss_fn)`` of a model the fast path does not know, from its own methods: its
    ``loss_and_grads``, whose loss is the one checked (``loss_fn=None``)."""
    if isinstance(model, TiedPair):
        batch_a, batch_b = _pair_of(data, "data")
        return (lambda joined: model.joined_loss_and_grads(joined, batch_a, batch_b)), None
    if isinstance(model, (Sequential, AnchoredModel)):
        x, y = _pair_of(data, "data")
        return (lambda p: model.loss_and_grads(p, x, y)), None
    raise TypeError(f"model: expected a Sequential, TiedPair or AnchoredModel, got "
                    f"{type(model).__name__}")


def _pair_of(value: Any, name: str) -> tuple[Any, Any]:
    """``value`` as a pair, or a ``TypeError`` naming ``name``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: expected a pair, got {type(value).__name__} {value!r:.80}")
    return value[0], value[1]


def _chain(model: Sequential, params: Mapping[str, Any], x: Any, y: Any,
           reads: dict[str, tuple[str, bool]]) -> Chain:
    """A chain on checked data (the model's own checks first, so errors name the argument)."""
    model.loss(params, x, y)
    first = model.layers[0]
    # A first layer that takes indices (Embedding) keeps its int64 indices.
    x = (first.check_input(x, "x") if getattr(first, "takes_indices", False)
         else as_float_array(x, "x", allow_complex=False))
    return Chain(model, x, model.loss_spec.check_target(y, model.output_shape(x.shape)), reads)


def _problem(model: Any, params: Mapping[str, Any], data: Any) -> tuple:
    """``(f, loss_fn, chains, penalties, penalty value)`` of a model, pair or anchored model."""
    if isinstance(model, Sequential):
        x, y = _pair_of(data, "data")
        chain = _chain(model, params, x, y, {u: (u, False) for u in model.parameter_shapes()})
        return (lambda p: model.loss_and_grads(p, x, y), lambda p: model.loss(p, x, y),
                [chain], [], 0.0)
    if isinstance(model, AnchoredModel):
        x, y = _pair_of(data, "data")
        inner = model.model
        chain = _chain(inner, params, x, y, {u: (u, False) for u in inner.parameter_shapes()})
        penalties = [PenaltyTerm(model.penalty_name, model.lams[name], name, None, False,
                                 model.reference[name]) for name in model.names]
        return (lambda p: model.loss_and_grads(p, x, y),
                lambda p: model.loss_and_grads(p, x, y)[0], [chain], penalties,
                float(np.asarray(model.penalty(params)[0]).real))
    if isinstance(model, TiedPair):
        return _pair_problem(model, params, data)
    raise TypeError(f"model: expected a Sequential, TiedPair or AnchoredModel, got "
                    f"{type(model).__name__}")


def _pair_problem(pair: TiedPair, params: Mapping[str, Any], data: Any) -> tuple:
    """The chains of a tied pair: A, then B (reading A's parameters in hard mode)."""
    batch_a, batch_b = _pair_of(data, "data")
    xa, ya = _pair_of(batch_a, "data[0] (batch_a)")
    xb, yb = _pair_of(batch_b, "data[1] (batch_b)")
    params_a, params_b = pair.check_params(*pair.split(params))
    penalty_value = float(np.asarray(pair.penalty(params_a, params_b)[0]).real)
    joined = pair.join(params_a, params_b)
    shared = pair.shared_b()
    reads_a = {u: (PREFIX_A + u, False) for u in pair.model_a.parameter_shapes()}
    reads_b = {u: ((PREFIX_A + shared[u][0], shared[u][1]) if u in shared else
                   (PREFIX_B + u, False)) for u in pair.model_b.parameter_shapes()}
    full_b = {u: (joined[name].T if transpose else joined[name])
              for u, (name, transpose) in reads_b.items()}
    chains = [_chain(pair.model_a, params_a, xa, ya, reads_a),
              _chain(pair.model_b, full_b, xb, yb, reads_b)]
    penalties = [] if pair.mode == "hard" else [
        PenaltyTerm(pair.penalty_name, p.lam, PREFIX_A + p.name_a, PREFIX_B + p.name_b,
                    p.transpose) for p in pair.pairs]

    def f(joined: Mapping[str, Any]) -> tuple[Any, Any]:
        return pair.joined_loss_and_grads(joined, batch_a, batch_b)

    return f, lambda joined: f(joined)[0], chains, penalties, penalty_value
