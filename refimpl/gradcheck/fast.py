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
The copies reuse the structure of the forward pass (slicing, folding, per-copy loss twins).
Before a parameter's fast derivatives are used, :data:`GUARD_COORDINATES` seeded coordinates
are also evaluated through the model's own loss, one perturbed point at a time, as the
coordinate loop does. If any differs by more than rounding (the method's default tolerance,
plus ``KINK_ROUNDING * eps * |loss| / h`` for the real differences) the fast derivatives are
discarded, a ``RuntimeWarning`` names the parameter, and the coordinate loop computes them:
a fast path that evaluates a different function costs time, never the verdict.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .arguments import GradFunction, Params
from .checker import _check
from .copies import Chain, ChainCopies
from .numerical import (
    EPS,
    KINK_ROUNDING,
    STEPS,
    _combine,
    _deltas,
    _Evaluator,
    _numerical_coordinate,
)
from .report import TOLERANCES, GradcheckReport, Tolerance

__all__ = ["check_chains", "PenaltyTerm", "GUARD_COORDINATES", "COPY_BUDGET",
           "PENALTY_TERMS"]

#: Coordinates per parameter evaluated both ways before the fast derivatives are trusted.
GUARD_COORDINATES = 3

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
        As in :func:`~refimpl.gradcheck.check_gradients` (full mode); ``seed`` picks the
        guard's coordinates.

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

    def __call__(self, name: str, evaluator: _Evaluator, grads: Params,
                 tolerance: Tolerance) -> np.ndarray | None:
        params = evaluator.params
        if params[name].size <= GUARD_COORDINATES:
            return None     # the guard would evaluate every coordinate the loop's way anyway
        if self.copies is None:
            self.copies = [ChainCopies(chain, params) for chain in self.chains]
            self.base = [float(np.asarray(chain.model.loss(
                {u: (params[n].T if t else params[n]) for u, (n, t) in chain.reads.items()},
                chain.x, chain.y)).real) for chain in self.chains]
        point = params[name].reshape(-1)
        deltas = [np.broadcast_to(delta, point.shape) for delta in _deltas(self.method, point)]
        flat = np.tile(np.arange(point.size), len(deltas))
        losses = self.losses(name, flat, np.concatenate(deltas), params)
        parts = np.split(losses.imag if self.method == "complex" else losses.real,
                         len(deltas))
        numerical = _combine(self.method, parts, point)
        if not self._guard(name, evaluator, grads, numerical):
            warnings.warn(f"the fast full check disagrees with the model's own loss on "
                          f"{name!r} at seeded coordinates; its derivatives are computed by "
                          f"the coordinate loop instead (please report this)", RuntimeWarning,
                          stacklevel=2)
            return None
        return numerical

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

    def _guard(self, name: str, evaluator: _Evaluator, grads: Params,
               numerical: np.ndarray) -> bool:
        """Seeded coordinates through the model's own loss agree with the fast ones."""
        params = evaluator.params
        point = params[name].reshape(-1)
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(point.size, size=min(GUARD_COORDINATES, point.size), replace=False)
        dtype = np.complex128 if self.method == "complex" else np.float64
        work = {key: value.astype(dtype) for key, value in params.items()}
        loop = np.array([_numerical_coordinate(self.method, evaluator, work, name, int(index),
                                               point[index]) for index in chosen])
        default = TOLERANCES[self.method]
        finite = loop[np.isfinite(loop)]
        scale = max(float(np.max(np.abs(grads[name]))),
                    float(np.max(np.abs(finite), initial=0.0)))
        limit = default.atol + default.rtol * scale
        if self.method != "complex":
            loss = abs(sum(self.base)) + abs(self.penalty_value)
            h = STEPS[self.method] * np.maximum(1.0, np.abs(point[chosen]))
            limit = limit + KINK_ROUNDING * EPS * max(1.0, loss) / h
        fast = numerical[chosen]
        agree = np.abs(fast - loop) <= limit
        # A perturbed point past an overflow is non-finite both ways: that agrees.
        agree |= ~np.isfinite(fast) & ~np.isfinite(loop)
        return bool(np.all(agree))
