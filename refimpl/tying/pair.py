"""Two models whose matched parameters are tied by a penalty (soft) or shared (hard).

:class:`TiedPair` couples two :class:`~refimpl.nn.Sequential` models:

* ``mode="soft"``: ``total = L_A + L_B + Omega`` with ``Omega = sum over pairs p of
  lam_p * ||wA_p - wB_p||`` (the norm of the penalty, :mod:`.penalties`); ``params_a`` and
  ``params_b`` are separate dicts; a paired parameter of B may be read transposed
  (``pairs={"fc1.weight": transposed("dec.weight")}``, then the penalty is
  ``lam ||a - b^T||^2``).
* ``mode="hard"``: the limit ``lam -> infinity``; B *reads* each paired parameter from
  ``params_a`` (``params_b`` omits them), ``total = L_A + L_B`` and ``grads_a`` holds the
  *sum* of both models' gradients for each shared parameter (B's transposed back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._validate import (
    as_float_array,
    check_finite_result,
    check_keys,
    check_shape,
    no_fp_warnings,
)
from ..nn.sequential import ParameterCount, Sequential, ShareSource, as_share_source
from ._models import (
    Params,
    add_penalty_grads,
    check_lams,
    check_model,
    check_total,
    in_model,
    item,
    unique_parameter,
)
from .penalties import PENALTIES, penalty_by_name

__all__ = ["TiedPair", "TiedResult", "MODES"]

#: Key prefixes of the one flat dict that holds both models' parameters (:meth:`TiedPair.join`),
#: so that a pair is "a function of one parameter dict" for :func:`refimpl.check_gradients`.
PREFIX_A, PREFIX_B = "A:", "B:"

MODES = ("soft", "hard")


class _Pair(NamedTuple):
    name_a: str      # unique parameter of A
    name_b: str      # unique parameter of B
    transpose: bool  # B's parameter is matched (and, in hard mode, read) transposed
    lam: float       # soft mode strength (0 in hard mode, unused)


class TiedResult(NamedTuple):
    """Everything :meth:`TiedPair.evaluate` computes; ``total = loss_a + loss_b + penalty``."""

    total: Any
    loss_a: Any
    loss_b: Any
    penalty: Any
    grads_a: Params
    grads_b: Params


class TiedPair:
    """Two models whose matched parameters are tied (soft) or shared (hard).

    Parameters
    ----------
    model_a, model_b : refimpl.nn.sequential.Sequential
        Models with a loss (they may be the same object, or different architectures).
    pairs : dict or list
        ``{name_a: name_b}`` (or an iterable of ``(name_a, name_b)``) matching unique
        parameters of A with unique parameters of B of the same shape; ``name_b`` may be
        ``transposed(name)`` for a 2-D parameter matched with its transpose. Each parameter
        may appear in at most one pair.
    lam : float or dict of str to float, optional
        Soft mode only: the strength, one number >= 0 or ``{name_a: number}`` per pair.
    mode : {"soft", "hard"}
        ``"soft"`` (penalty) or ``"hard"`` (sharing: B reads the paired parameters from
        ``params_a``; ``params_b`` omits them).
    penalty : {"l2", "l1"}
        Squared L2 (default) or L1 (see :data:`~refimpl.tying.PENALTIES`).

    Raises
    ------
    TypeError, ValueError
        Naming the argument: a model without a loss, an unknown or shared parameter, a
        parameter paired twice, shapes that do not match, a missing or superfluous ``lam``.
    """

    def __init__(
        self,
        model_a: Sequential,
        model_b: Sequential,
        pairs: Mapping[str, str | ShareSource] | Iterable[tuple[str, str | ShareSource]],
        lam: float | Mapping[str, float] | None = None,
        mode: str = "soft",
        penalty: str = "l2",
    ) -> None:
        self.model_a = check_model(model_a, "model_a")
        self.model_b = check_model(model_b, "model_b")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        self.penalty_name = penalty_by_name(penalty).name
        items = _pair_items(pairs)
        lams = _check_mode_lam(lam, mode, [name_a for name_a, _ in items])
        self.pairs: tuple[_Pair, ...] = _check_pairs(self.model_a, self.model_b, items, lams)
        self._lam_given = lam

    # --- parameters ------------------------------------------------------------------------

    def shared_b(self) -> dict[str, tuple[str, bool]]:
        """Hard mode: ``{name_b: (name_a, transpose)}``, the parameters B reads from A
        (empty in soft mode)."""
        if self.mode != "hard":
            return {}
        return {pair.name_b: (pair.name_a, pair.transpose) for pair in self.pairs}

    def parameter_shapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """Shapes of the keys of ``params_a`` and ``params_b`` (hard mode: B without the
        shared ones)."""
        shared = self.shared_b()
        shapes_b = {name: shape for name, shape in self.model_b.parameter_shapes().items()
                    if name not in shared}
        return self.model_a.parameter_shapes(), shapes_b

    def parameter_count(self) -> ParameterCount:
        """Memory of the pair: unique scalars stored, scalars used by both models' layers,
        bytes stored. Soft mode stores both models in full (``unique`` is the sum of two
        separate models'); hard mode stores each shared parameter once."""
        count_a, count_b = self.model_a.parameter_count(), self.model_b.parameter_count()
        saved = 0
        if self.mode == "hard":
            shapes_b = self.model_b.parameter_shapes()
            saved = sum(int(np.prod(shapes_b[pair.name_b])) for pair in self.pairs)
        unique = count_a.unique + count_b.unique - saved
        return ParameterCount(unique, count_a.uses + count_b.uses, 8 * unique)

    def init(self, seed: int) -> tuple[Params, Params]:
        """Fresh parameters: ``model_a.init(seed)`` and ``model_b.init(seed + 1)`` (hard mode:
        without B's shared parameters)."""
        params_a = self.model_a.init(seed)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected a non-negative int, got {seed!r}")
        shared = self.shared_b()
        params_b = {key: value for key, value in self.model_b.init(int(seed) + 1).items()
                    if key not in shared}
        return params_a, params_b

    def check_params(self, params_a: Mapping[str, Any],
                     params_b: Mapping[str, Any]) -> tuple[Params, Params]:
        """Validate both dicts (exact keys and shapes, numeric, finite) and return them as
        float64 / complex128 arrays."""
        params_a = self.model_a.check_params(params_a, "params_a")
        if not isinstance(params_b, Mapping):
            raise TypeError(f"params_b: expected a dict of arrays, got {type(params_b).__name__}")
        shared = self.shared_b()
        duplicated = [key for key in params_b if key in shared]
        if duplicated:
            sources = ", ".join(f"{key!r} <- params_a[{shared[key][0]!r}]" for key in duplicated)
            raise ValueError(
                f"params_b: holds {duplicated}, which hard sharing reads from params_a "
                f"({sources}); remove them from params_b (a second copy would silently diverge)")
        expected = self.parameter_shapes()[1]
        check_keys(params_b, expected, what="params_b")
        checked_b = {}
        for key in params_b:   # in the caller's order: the gradients come back in it
            array = as_float_array(params_b[key], f"params_b[{key!r}]")
            check_shape(array, expected[key], f"params_b[{key!r}]")
            checked_b[key] = array
        return params_a, checked_b

    def _full_b(self, params_a: Params, params_b: Params) -> Params:
        """B's complete unique-parameter dict: in hard mode the shared entries are views of
        A's arrays (transposed where paired transposed)."""
        full = dict(params_b)
        for name_b, (name_a, transpose) in self.shared_b().items():
            full[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        return {key: full[key] for key in self.model_b.parameter_shapes()}

    # --- penalty, loss, gradients ----------------------------------------------------------

    def _penalty(self, params_a: Params, params_b: Params) -> tuple[Any, Params, Params]:
        penalty = PENALTIES[self.penalty_name]
        total: Any = 0.0
        grads_a: Params = {}
        grads_b: Params = {}
        with no_fp_warnings():
            for pair in self.pairs:
                b = params_b[pair.name_b]
                value, cache = penalty.forward(params_a[pair.name_a],
                                               b.T if pair.transpose else b, pair.lam)
                grad_a, grad_b = penalty.backward(1.0, cache)
                total = total + value
                # The inputs are finite; lam (a - b)^2 can still overflow, and so can the sum.
                for result, what in ((total, "value"), (grad_a, "gradient")):
                    check_finite_result(result, lambda p=pair, w=what: (
                        f"penalty {self.penalty_name!r} between model_a's {p.name_a!r} and "
                        f"model_b's {p.name_b!r}: {w}"))
                grads_a[pair.name_a] = grad_a
                # lam ||a - b^T||^2: the gradient with respect to b is the transpose of the one
                # with respect to b^T.
                grads_b[pair.name_b] = grad_b.T if pair.transpose else grad_b
        return total, grads_a, grads_b

    def penalty(self, params_a: Mapping[str, Any],
                params_b: Mapping[str, Any]) -> tuple[Any, Params, Params]:
        """The penalty ``Omega`` alone: ``(value, grads_a, grads_b)``, the gradient dicts
        keyed by the paired parameters only. Hard mode: ``(0.0, {}, {})``."""
        params_a, params_b = self.check_params(params_a, params_b)
        if self.mode == "hard":
            return 0.0, {}, {}
        value, grads_a, grads_b = self._penalty(params_a, params_b)
        return item(value), grads_a, grads_b

    def distance(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any]) -> float:
        """``sqrt(sum over pairs ||wA - wB||^2)``, the Euclidean distance between the paired
        parameters (0.0 in hard mode, where they are one array)."""
        params_a, params_b = self.check_params(params_a, params_b)
        if self.mode == "hard":
            return 0.0
        total = 0.0
        for pair in self.pairs:
            b = params_b[pair.name_b]
            difference = (params_a[pair.name_a] - (b.T if pair.transpose else b)).real
            total += float((difference * difference).sum())
        return math.sqrt(total)

    def evaluate(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                 batch_a: tuple[Any, Any], batch_b: tuple[Any, Any]) -> TiedResult:
        """The one computation of a pair: both losses, the penalty and the gradients.

        :meth:`loss_and_grads` and :meth:`joined_loss_and_grads` return views of this result.

        Parameters
        ----------
        params_a, params_b : dict of str to ndarray
            As :meth:`check_params` accepts them.
        batch_a, batch_b : (x, y)
            Each model's inputs and targets.

        Returns
        -------
        TiedResult
            ``total = loss_a + loss_b + penalty`` and the gradients of ``total``.
        """
        params_a, params_b = self.check_params(params_a, params_b)
        xa, ya = _check_batch(batch_a, "batch_a")
        xb, yb = _check_batch(batch_b, "batch_b")
        loss_a, grads_a = in_model("model_a", self.model_a.loss_and_grads, params_a, xa, ya)
        loss_b, grads_full_b = in_model("model_b", self.model_b.loss_and_grads,
                                         self._full_b(params_a, params_b), xb, yb)
        if self.mode == "hard":
            shared = self.shared_b()
            grads_b = {key: grads_full_b[key] for key in params_b}
            # One array, two models using it: its gradient is the sum over both uses, B's
            # transposed back to A's layout.
            add_penalty_grads(grads_a, {
                name_a: grads_full_b[name_b].T if transpose else grads_full_b[name_b]
                for name_b, (name_a, transpose) in shared.items()}, "model_a's ")
            penalty: Any = 0.0
        else:
            grads_b = grads_full_b
            penalty, penalty_a, penalty_b = self._penalty(params_a, params_b)
            penalty = item(penalty)
            add_penalty_grads(grads_a, penalty_a, "model_a's ")
            add_penalty_grads(grads_b, penalty_b, "model_b's ")
        grads_a = {key: np.ascontiguousarray(grads_a[key]) for key in params_a}
        grads_b = {key: np.ascontiguousarray(grads_b[key]) for key in params_b}
        total = check_total(loss_a + loss_b + penalty, "total (loss_a + loss_b + penalty)")
        return TiedResult(total, loss_a, loss_b, penalty, grads_a, grads_b)

    def loss_and_grads(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                       batch_a: tuple[Any, Any], batch_b: tuple[Any, Any]
                       ) -> tuple[Any, Params, Params]:
        """``(total, grads_a, grads_b)`` with ``total = L_A + L_B + Omega`` (a Python float;
        complex under the complex step). ``grads_a`` / ``grads_b`` have exactly the keys of
        ``params_a`` / ``params_b``; in hard mode ``grads_a`` of a shared parameter is the sum
        of both models' gradients."""
        result = self.evaluate(params_a, params_b, batch_a, batch_b)
        return result.total, result.grads_a, result.grads_b

    def forward(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any],
                x_a: Any, x_b: Any) -> tuple[np.ndarray, np.ndarray]:
        """Both models' outputs (B reading the shared parameters from A in hard mode)."""
        params_a, params_b = self.check_params(params_a, params_b)
        return (in_model("model_a", self.model_a.forward, params_a, x_a),
                in_model("model_b", self.model_b.forward, self._full_b(params_a, params_b),
                          x_b))

    # --- one flat dict (for check_gradients and the optimizer) -------------------------------

    def join(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any]) -> Params:
        """Both dicts as one flat dict ``{"A:<name>": ..., "B:<name>": ...}`` (A's keys first).

        Parameters
        ----------
        params_a, params_b : dict of str to ndarray
            The parameters (or gradients) of model A and model B.

        Returns
        -------
        dict of str to ndarray
            The same values under the keys ``PREFIX_A + name`` and ``PREFIX_B + name``.
        """
        joined = {PREFIX_A + key: value for key, value in params_a.items()}
        joined.update({PREFIX_B + key: value for key, value in params_b.items()})
        return joined

    def split(self, joined: Mapping[str, Any], name: str = "params") -> tuple[Params, Params]:
        """Inverse of :meth:`join`: ``(params_a, params_b)`` of one flat dict.

        Parameters
        ----------
        joined : dict of str to ndarray
            Keys ``"A:<name>"`` and ``"B:<name>"``.
        name : str
            The argument's name in error messages.

        Raises
        ------
        TypeError
            If ``joined`` is not a mapping.
        ValueError
            For a key without an ``"A:"`` / ``"B:"`` prefix.
        """
        if not isinstance(joined, Mapping):
            raise TypeError(f"{name}: expected a dict of arrays, got {type(joined).__name__}")
        params_a, params_b = {}, {}
        for key, value in joined.items():
            if isinstance(key, str) and key.startswith(PREFIX_A):
                params_a[key[len(PREFIX_A):]] = value
            elif isinstance(key, str) and key.startswith(PREFIX_B):
                params_b[key[len(PREFIX_B):]] = value
            else:
                raise ValueError(f"{name}: key {key!r} has neither the prefix {PREFIX_A!r} nor "
                                 f"{PREFIX_B!r}")
        return params_a, params_b

    def joined_loss_and_grads(self, joined: Mapping[str, Any], batch_a: tuple[Any, Any],
                              batch_b: tuple[Any, Any]) -> tuple[Any, Params]:
        """:meth:`loss_and_grads` as a function of one flat dict: ``(total, joined_grads)``,
        ``joined_grads`` keyed in the order of ``joined``."""
        params_a, params_b = self.split(joined)
        total, grads_a, grads_b = self.loss_and_grads(params_a, params_b, batch_a, batch_b)
        grads = self.join(grads_a, grads_b)
        return total, {key: grads[key] for key in joined}   # in the caller's order

    # --- configuration ----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the same pair."""
        return {
            "model_a": self.model_a.config(),
            "model_b": self.model_b.config(),
            "pairs": [{"a": pair.name_a, "b": pair.name_b, "transpose": pair.transpose}
                      for pair in self.pairs],
            "lam": None if self.mode == "hard" else {p.name_a: p.lam for p in self.pairs},
            "mode": self.mode,
            "penalty": self.penalty_name,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TiedPair:
        """Inverse of :meth:`config`. A missing, unknown or malformed key is a ``TypeError`` /
        ``ValueError`` naming it."""
        check_keys(config, ["model_a", "model_b", "pairs"], ["lam", "mode", "penalty"],
                   what="config")
        pairs_config = config["pairs"]
        if not isinstance(pairs_config, (list, tuple)):
            raise TypeError(f"config['pairs']: expected a list of {{'a': name, 'b': name, "
                            f"'transpose': bool}}, got {type(pairs_config).__name__}")
        pairs = []
        for index, pair in enumerate(pairs_config):
            where = f"config['pairs'][{index}]"
            check_keys(pair, ["a", "b"], ["transpose"], what=where)
            transpose = pair.get("transpose", False)
            if not isinstance(transpose, bool):
                raise TypeError(f"{where}['transpose']: expected a bool, got {transpose!r}")
            pairs.append((pair["a"], ShareSource(pair["b"], transpose)))
        return cls(Sequential.from_config(config["model_a"], "config['model_a']"),
                   Sequential.from_config(config["model_b"], "config['model_b']"), pairs,
                   lam=config.get("lam"), mode=config.get("mode", "soft"),
                   penalty=config.get("penalty", "l2"))

    def __repr__(self) -> str:
        pairs = "{" + ", ".join(
            f"{p.name_a!r}: " + (f"transposed({p.name_b!r})" if p.transpose else repr(p.name_b))
            for p in self.pairs) + "}"
        lam = "" if self.mode == "hard" else f", lam={self._lam_given!r}"
        return (f"TiedPair({self.model_a!r}, {self.model_b!r}, pairs={pairs}{lam}, "
                f"mode={self.mode!r}, penalty={self.penalty_name!r})")


def _check_batch(batch: Any, name: str) -> tuple[Any, Any]:
    """``(x, y)`` of a batch given as a pair, or a ``TypeError`` naming ``name``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{name}: expected a pair (x, y), got {type(batch).__name__}")
    return batch[0], batch[1]


def _pair_items(pairs: Any) -> list[tuple[Any, Any]]:
    """``pairs`` (a mapping or an iterable of 2-tuples) as a non-empty list of items."""
    if isinstance(pairs, Mapping):
        items = list(pairs.items())
    elif isinstance(pairs, Iterable) and not isinstance(pairs, (str, bytes)):
        items = []
        for index, pair in enumerate(pairs):
            if isinstance(pair, ShareSource) or not isinstance(pair, (tuple, list)) \
                    or len(pair) != 2:
                raise TypeError(f"pairs[{index}]: expected a pair (name_a, name_b), got "
                                f"{pair!r}")
            items.append((pair[0], pair[1]))
    else:
        raise TypeError(f"pairs: expected {{name_a: name_b}} or a list of (name_a, name_b), "
                        f"got {type(pairs).__name__}")
    if not items:
        raise ValueError("pairs: expected at least one pair of parameters")
    return items


def _check_mode_lam(lam: Any, mode: str, names_a: list[str]) -> dict[str, float]:
    """The strength of each pair: soft mode needs ``lam``; hard mode (``lam -> infinity``)
    refuses one."""
    if mode == "hard":
        if lam is not None:
            raise ValueError(f"lam: hard sharing has no strength (the parameters are "
                             f"equal; the limit lam -> infinity), got lam={lam!r}")
        return dict.fromkeys(names_a, 0.0)
    if lam is None:
        raise ValueError("lam: soft tying needs a strength lam >= 0 (a number, or "
                         "{name_a: number} per pair)")
    return check_lams(lam, names_a, "pair")


def _check_pairs(model_a: Sequential, model_b: Sequential, items: list[tuple[Any, Any]],
                 lams: dict[str, float]) -> tuple[_Pair, ...]:
    """Each item a pair of unique parameters of matching shapes, each parameter paired once."""
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    checked = []
    for name_a, given in items:
        source = as_share_source(given, f"pairs[{name_a!r}]", "a parameter name of model_b")
        shape_a = unique_parameter(model_a, name_a, "model_a")
        shape_b = unique_parameter(model_b, source.name, "model_b")
        for name, seen, role in ((name_a, seen_a, "model_a"), (source.name, seen_b, "model_b")):
            if name in seen:
                raise ValueError(f"pairs: {role}'s parameter {name!r} is paired twice")
            seen.add(name)
        read = source.read_shape(shape_b, f"pairs[{name_a!r}]", "paired")
        if shape_a != read:
            kind = "transposed " if source.transpose else ""
            raise ValueError(f"pairs[{name_a!r}]: shape {shape_a} of model_a's {name_a!r} does "
                             f"not match the {kind}shape {read} of model_b's {source.name!r}")
        checked.append(_Pair(name_a, source.name, source.transpose, lams[name_a]))
    return tuple(checked)
