"""The fast full check: every coordinate's numerical derivative from batched perturbed copies.

:func:`check_chains` returns the report :func:`~refimpl.gradcheck.check_gradients` would
return (the same comparison, the same kink probes, the same steps), for a loss that is a sum
of models' losses (:class:`~refimpl.gradcheck.copies.Chain`) and entry-wise penalties
(:class:`PenaltyTerm`). Only the numerical derivatives of full mode are computed differently:
all perturbed points of a parameter at once, through :class:`~refimpl.gradcheck.copies.
ChainCopies` (forward evaluations only). The public face is
:func:`refimpl.check_model_gradients`, which builds the chains of a model, a tied pair or an
anchored model.

The guard
---------
The copies reuse the structure of the forward pass (slicing, folding, per-copy loss twins),
so before a parameter's fast derivatives are used they are checked against the model's own
loss along :data:`GUARD_DIRECTIONS` seeded Gaussian directions ``v`` over *every* entry of
the parameter: the complex step of the model's own loss along ``v``,
``Im loss_fn(p + i h v) / h`` (one evaluation), against ``sum_i n_i v_i`` of the copies'
complex-step derivatives ``n``, by the complex step's default rule::

    |sum_i n_i v_i - Im loss_fn(p + i h v) / h|  <=  atol + rtol * max(sum_i |n_i v_i|, |own|)

A difference at any entry moves the left side by that difference times ``v_i`` (a standard
normal number): it is seen unless it is below the rule's limit, the rounding of the whole sum.
For the real differences the copies also give their complex-step derivatives (one more
batched pass, the same code in complex128), which are the ones compared; and once per check
the model's own loss is cross-checked for complex safety (:mod:`refimpl.gradcheck.safety`),
since the comparison goes through its complex step. On any disagreement (or a loss that is
not complex-safe, or that refuses complex parameters) the fast derivatives are discarded, a
``RuntimeWarning`` names the parameter, and the coordinate loop computes them: a fast path
that evaluates a different function costs time, never the verdict.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .arguments import GradFunction, Params
from .checker import _check
from .copies import Chain, ChainCopies
from .numerical import STEPS, _combine, _deltas, _Evaluator
from .report import TOLERANCES, GradcheckReport, Tolerance
from .safety import complex_safety, directional_derivative, safety_directions

__all__ = ["check_chains", "PenaltyTerm", "GUARD_DIRECTIONS", "COPY_BUDGET",
           "PENALTY_TERMS"]

#: Seeded directions per parameter along which the fast derivatives are compared with the
#: model's own loss before they are trusted. A parameter with at most this many entries takes
#: the coordinate loop: the guard would cost as many evaluations of the model's loss.
GUARD_DIRECTIONS = 2

#: Entries of the largest per-copy array times the copies evaluated at once: the chunk size
#: that keeps one chunk's arrays in cache (measured in benchmarks/bench_gradcheck.py).
COPY_BUDGET = 1 << 18


def _l2_term(difference: np.ndarray, lam: float) -> np.ndarray:
    """One entry of :func:`refimpl.tying.penalties.l2_penalty_forward`: ``lam d^2``."""
    return lam * (difference * difference)


def _l1_term(difference: np.ndarray, lam: float) -> np.ndarray:
    """One entry of the L1 penalty, ``lam sign(Re d) d`` (complex-step safe ``lam |d|``)."""
    return lam * (np.sign(difference.real) * difference)


#: The entry-wise terms of the known penalties, by name: the penalty is the sum of the terms
#: over the entries of ``d = a - b``.
PENALTY_TERMS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "l2": _l2_term, "l1": _l1_term}


class PenaltyTerm(NamedTuple):
    """``sum over entries of kind(first - second)`` with strength ``lam``.

    ``second`` is a checked parameter's name (read transposed when ``transpose``) or None,
    then ``reference`` is the fixed array.
    """

    kind: str
    lam: float
    first: str
    second: str | None
    transpose: bool = False
    reference: np.ndarray | None = None


def check_chains(
    f: GradFunction,
    params: Mapping[str, Any],
    chains: Sequence[Chain],
    penalties: Sequence[PenaltyTerm] = (),
    penalty_value: float = 0.0,
    *,
    loss_fn: Callable[[Params], Any],
    method: str = "complex",
    names: Any = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> GradcheckReport:
    """A full check of ``f`` whose loss is ``sum of the chains' losses + penalties``.

    Parameters
    ----------
    f : callable
        ``f(params) -> (loss, grads)``, the analytic gradients checked.
    params : dict of str to array_like
        The point.
    chains : sequence of Chain
        The models whose losses are summed (reading ``params`` as their ``reads`` say).
    penalties : sequence of PenaltyTerm
        Entry-wise penalties added to the total (names in :data:`PENALTY_TERMS`).
    penalty_value : float
        The penalties' sum at the point, as the model computes it.
    loss_fn : callable
        The model's own ``loss_fn(params) -> loss``: the guard and the kink probes.
    method, names, seed, rtol, atol
        As in :func:`~refimpl.gradcheck.check_gradients` (full mode); ``seed`` also seeds
        the guard's directions.

    Returns
    -------
    refimpl.gradcheck.GradcheckReport
        The report of ``check_gradients(f, params, mode="full", loss_fn=loss_fn, ...)``.
    """
    fast = _FastNumerical(chains, penalties, penalty_value, method, seed)
    return _check(f, params, method=method, mode="full", names=names, directions=1,
                  seed=seed, rtol=rtol, atol=atol, loss_fn=loss_fn, numerical=fast)


class _FastNumerical:
    """The :data:`~refimpl.gradcheck.checker.FullNumerical` of chains and penalties."""

    def __init__(self, chains: Sequence[Chain], penalties: Sequence[PenaltyTerm],
                 penalty_value: float, method: str, seed: int) -> None:
        self.chains, self.penalties = chains, penalties
        self.penalty_value, self.method, self.seed = penalty_value, method, seed
        self.copies: list[ChainCopies] | None = None
        self.base: list[float] = []
        self.own_loss_problem: str | None = None   # set once, for the real differences

    def __call__(self, name: str, evaluator: _Evaluator, grads: Params,
                 tolerance: Tolerance) -> np.ndarray | None:
        params = evaluator.params
        if params[name].size <= GUARD_DIRECTIONS:
            return None     # the guard would evaluate the model's loss as often as the loop
        if self.copies is None:
            self.copies = [ChainCopies(chain, params) for chain in self.chains]
            self.base = [float(np.asarray(chain.model.loss(
                {u: (params[n].T if t else params[n]) for u, (n, t) in chain.reads.items()},
                chain.x, chain.y)).real) for chain in self.chains]
            if self.method != "complex":
                self.own_loss_problem = _own_loss_problem(evaluator, grads, self.seed)
                if self.own_loss_problem:
                    warnings.warn(f"the fast full check cannot be verified through the "
                                  f"model's own loss ({self.own_loss_problem}); every "
                                  f"parameter takes the coordinate loop", RuntimeWarning,
                                  stacklevel=2)
        if self.own_loss_problem:
            return None
        numerical = self.derivatives(name, params, self.method)
        problem = self._guard(name, evaluator, numerical if self.method == "complex"
                              else self.derivatives(name, params, "complex"))
        if problem:
            warnings.warn(f"the fast full check disagrees with the model's own loss on "
                          f"{name!r} ({problem}); its derivatives are computed by the "
                          f"coordinate loop instead (please report this)", RuntimeWarning,
                          stacklevel=2)
            return None
        return numerical

    def derivatives(self, name: str, params: Params, method: str) -> np.ndarray:
        """The numerical derivatives (flat) of every coordinate of ``params[name]`` by
        ``method``, from the copies."""
        point = params[name].reshape(-1)
        deltas = [np.broadcast_to(delta, point.shape) for delta in _deltas(method, point)]
        flat = np.tile(np.arange(point.size), len(deltas))
        losses = self.losses(name, flat, np.concatenate(deltas), params)
        parts = np.split(losses.imag if method == "complex" else losses.real, len(deltas))
        return _combine(method, parts, point)

    def losses(self, name: str, flat: np.ndarray, deltas: np.ndarray,
               params: Params) -> np.ndarray:
        """The total loss at the copies ``params[name].flat[flat[k]] += deltas[k]``."""
        total = np.zeros(flat.size, dtype=deltas.dtype)
        for copies, base in zip(self.copies, self.base, strict=True):
            if not copies.uses(name):
                total = total + base
                continue
            step = max(1, COPY_BUDGET // copies.copy_size(name))
            chain_losses = np.concatenate([
                copies.losses(name, flat[start:start + step], deltas[start:start + step])
                for start in range(0, flat.size, step)])
            total = total + chain_losses
        return total + self._penalties(name, flat, deltas, params)

    def _penalties(self, name: str, flat: np.ndarray, deltas: np.ndarray,
                   params: Params) -> np.ndarray:
        """The penalties' sum at every copy: the point's value with the perturbed entry's
        term replaced (the other entries' terms do not change)."""
        total = np.full(flat.size, self.penalty_value, dtype=deltas.dtype)
        for term in self.penalties:
            if name not in (term.first, term.second):
                continue
            a = params[term.first]
            b = term.reference if term.second is None else params[term.second]
            b = b.T if term.transpose else b
            index = np.unravel_index(flat, params[name].shape)
            if name == term.second and term.transpose:
                index = index[::-1]     # the entry of b^T, in a's layout
            a_now, b_now = a[index], b[index]
            if name == term.first:
                a_new, b_new = a_now + deltas, b_now
            else:
                a_new, b_new = a_now, b_now + deltas
            entry = PENALTY_TERMS[term.kind]
            total = total + (entry(a_new - b_new, term.lam) - entry(a_now - b_now, term.lam))
        return total

    def _guard(self, name: str, evaluator: _Evaluator, derivatives: np.ndarray) -> str | None:
        """None when the copies' complex-step ``derivatives`` of ``name`` agree with the
        model's own loss along every guard direction, else what disagreed."""
        params = evaluator.params
        rng = np.random.default_rng((self.seed, list(params).index(name)))
        h = STEPS["complex"]
        rule = TOLERANCES["complex"]
        for _ in range(GUARD_DIRECTIONS):
            direction = rng.standard_normal(params[name].shape)
            terms = derivatives * direction.reshape(-1)
            fast = float(np.sum(terms))
            try:
                own = float(np.asarray(evaluator.along({name: direction}, 1j * h)).imag) / h
            except TypeError as error:     # the loss refuses complex parameters
                return f"its loss at complex parameters: {error}"
            scale = max(float(np.sum(np.abs(terms))), abs(own))
            if not (np.isfinite(fast) and np.isfinite(own)
                    and abs(fast - own) <= rule.atol + rule.rtol * scale):
                return (f"along a seeded random direction over all its entries, the copies "
                        f"give the derivative {fast:.17g}, the model's own loss {own:.17g}")
        return None


def _own_loss_problem(evaluator: _Evaluator, grads: Params, seed: int) -> str | None:
    """Why the model's own loss cannot vouch for the copies through its complex step (it is
    not complex-safe, or refuses complex parameters), or None; ``grads`` (the analytic
    gradients) give the scale of the comparison."""
    params = evaluator.params
    try:
        flagged, notes = complex_safety(evaluator, evaluator.at_point(),
                                        safety_directions(params, list(params), seed),
                                        directional_derivative(evaluator, grads))
    except TypeError as error:
        return f"its loss at complex parameters: {error}"
    return notes[0] if flagged else None
