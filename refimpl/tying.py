"""Parameter tying: norm penalties between matched parameters, and pairs of tied models.

Goodfellow, Bengio & Courville, *Deep Learning*, section 7.9. Two models A and B do related
tasks; instead of forcing parameters to be equal (sharing, :mod:`refimpl.nn`), a penalty
pulls matched parameters together:

    Omega(wA, wB) = sum over pairs p of  lam_p * ||wA_p - wB_p||      (a norm per penalty)

Penalties (``penalty=``), as forward/backward pairs of free functions over one matched pair of
arrays ``a``, ``b`` of one shape ``S`` (exact shapes, nothing broadcast):

``"l2"`` (squared L2, the default)
    ``lam * sum (a - b)^2``; gradients ``+2 lam (a - b)`` for ``a`` and ``-2 lam (a - b)``
    for ``b``.
``"l1"``
    ``lam * sum |a - b|``; subgradients ``+lam sign(a - b)`` and ``-lam sign(a - b)`` with
    ``sign(0) = 0`` (PyTorch's ``torch.sign``). ``|d|`` is written ``sign(Re d) * d``: the sign is
    a constant mask, so the complex step differentiates it exactly away from ``a == b``.

An *anchored* penalty pulls one model towards a fixed reference ``w0`` (no gradient flows
into ``w0``): weight decay is ``w0 = 0``, transfer learning's L2-SP is ``w0`` = pretrained
weights (:class:`AnchoredModel`). Squared L2 weight decay ``lam ||w||^2`` has gradient
``2 lam w``: PyTorch's ``weight_decay = 2 lam``.

:class:`TiedPair` couples two :class:`~refimpl.nn.Sequential` models:

* ``mode="soft"``: ``total = L_A + L_B + Omega``; ``params_a`` and ``params_b`` are separate
  dicts; a paired parameter of B may be read transposed (``pairs={"fc1.weight":
  transposed("dec.weight")}``, then the penalty is ``lam ||a - b^T||^2``).
* ``mode="hard"``: the limit ``lam -> infinity``; B *reads* each paired parameter from
  ``params_a`` (``params_b`` omits them), ``total = L_A + L_B`` and ``grads_a`` holds the
  *sum* of both models' gradients for each shared parameter (B's transposed back).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ._validate import (
    as_float_array,
    check_array,
    check_cache,
    check_finite_result,
    check_keys,
    check_real,
    check_same_shape,
    check_scalar,
    check_shape,
    no_fp_warnings,
)
from .nn.sequential import ParameterCount, Sequential, ShareSource

__all__ = [
    "l2_penalty_forward", "l2_penalty_backward", "l1_penalty_forward", "l1_penalty_backward",
    "anchored_penalty_forward", "anchored_penalty_backward",
    "Penalty", "PENALTIES", "MODES", "check_lam",
    "TiedPair", "TiedResult", "AnchoredModel", "AnchoredResult",
    "join_params", "split_params",
]

Params = dict[str, np.ndarray]

#: Key prefixes of the one flat dict that holds both models' parameters (:func:`join_params`),
#: so that a pair is "a function of one parameter dict" for :func:`refimpl.check_gradients`.
PREFIX_A, PREFIX_B = "A:", "B:"

MODES = ("soft", "hard")


# --- penalties as forward/backward pairs ------------------------------------------------------

class L2PenaltyCache(NamedTuple):
    difference: np.ndarray  # (S) a - b
    lam: float


class L1PenaltyCache(NamedTuple):
    sign: np.ndarray  # (S) sign(Re(a - b)) in {-1, 0, 1}: the subgradient of |a - b|
    lam: float


def _check_penalty_arguments(a: Any, b: Any, lam: Any, who: str,
                             names: tuple[str, str] = ("a", "b")) -> tuple[Any, Any, float]:
    """Two numeric arrays of one shape exactly (nothing broadcast) and ``lam`` >= 0, finite;
    ``TypeError`` / ``ValueError`` naming the argument."""
    a = check_array(a, f"{who}: {names[0]}")
    b = check_array(b, f"{who}: {names[1]}")
    check_same_shape(a, b, (names[0], f"{who}: {names[1]}"))
    return a, b, check_lam(lam, f"{who}: lam")


def _check_penalty_backward(dvalue: Any, cache: Any, cache_types: tuple[type, ...],
                            who: str) -> None:
    check_scalar(dvalue, f"{who}: dvalue")
    if not isinstance(cache, cache_types):
        check_cache(cache, cache_types[0], f"{who}: cache")


def l2_penalty_forward(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L2PenaltyCache]:
    """Squared L2 distance ``lam * sum (a - b)^2``.

    - a, b: (S), one shape; lam: float >= 0
    - returns the value (0-d; complex under the complex step) and the cache.
    """
    return _l2_penalty(*_check_penalty_arguments(a, b, lam, "l2_penalty_forward"))


def _l2_penalty(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L2PenaltyCache]:
    difference = a - b                                  # (S)
    return lam * (difference * difference).sum(), L2PenaltyCache(difference, lam)


def l2_penalty_backward(dvalue: Any, cache: L2PenaltyCache) -> tuple[np.ndarray, np.ndarray]:
    """``(dvalue * 2 lam (a - b), -dvalue * 2 lam (a - b))``, each (S).

    d/da (a - b)^2 = 2 (a - b), and b enters with the opposite sign: the two gradients are
    exact negatives, so the penalty never moves the pair's mean ((a + b) / 2).
    """
    _check_penalty_backward(dvalue, cache, (L2PenaltyCache,), "l2_penalty_backward")
    grad_a = cache.difference * (2 * cache.lam * dvalue)
    return grad_a, -grad_a


def l1_penalty_forward(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L1PenaltyCache]:
    """L1 distance ``lam * sum |a - b|``, written ``lam * sum sign(Re(a - b)) * (a - b)``.

    - a, b: (S), one shape; lam: float >= 0
    - returns the value (0-d) and the cache.

    The sign is taken of the real part and used as a constant mask (never ``abs`` on a
    complex value), so the complex step sees the exact derivative where ``a != b``.
    """
    return _l1_penalty(*_check_penalty_arguments(a, b, lam, "l1_penalty_forward"))


def _l1_penalty(a: np.ndarray, b: np.ndarray, lam: float) -> tuple[Any, L1PenaltyCache]:
    difference = a - b                                  # (S)
    sign = np.sign(difference.real)                     # (S), constant: -1, 0 or +1
    return lam * (sign * difference).sum(), L1PenaltyCache(sign, lam)


def l1_penalty_backward(dvalue: Any, cache: L1PenaltyCache) -> tuple[np.ndarray, np.ndarray]:
    """``(dvalue * lam sign(a - b), -dvalue * lam sign(a - b))`` with ``sign(0) = 0``.

    At ``a == b`` the L1 norm has a kink; 0 is the subgradient PyTorch's ``sign`` gives.
    """
    _check_penalty_backward(dvalue, cache, (L1PenaltyCache,), "l1_penalty_backward")
    grad_a = cache.sign * (cache.lam * dvalue)
    return grad_a, -grad_a


class Penalty(NamedTuple):
    """A penalty by name: ``forward(a, b, lam) -> (value, cache)`` and
    ``backward(dvalue, cache) -> (grad_a, grad_b)``."""

    name: str
    forward: Callable[[np.ndarray, np.ndarray, float], tuple[Any, Any]]
    backward: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]


#: The penalties by their ``penalty=`` name.
PENALTIES: dict[str, Penalty] = {
    "l2": Penalty("l2", l2_penalty_forward, l2_penalty_backward),
    "l1": Penalty("l1", l1_penalty_forward, l1_penalty_backward),
}


def anchored_penalty_forward(
    w: np.ndarray, reference: np.ndarray, lam: float, penalty: str = "l2"
) -> tuple[Any, Any]:
    """One-sided penalty towards a fixed ``reference``: ``lam * ||w - reference||`` (the
    norm of ``penalty``). ``w``, ``reference``: (S). Returns the value and the cache."""
    core = _l1_penalty if _penalty(penalty).name == "l1" else _l2_penalty
    return core(*_check_penalty_arguments(w, reference, lam, "anchored_penalty_forward",
                                          ("w", "reference")))


def anchored_penalty_backward(dvalue: Any, cache: Any) -> np.ndarray:
    """Gradient with respect to ``w`` only (the reference is a constant): (S).

    Either cache type of :data:`PENALTIES` works; the reference's gradient is dropped.
    """
    _check_penalty_backward(dvalue, cache, (L2PenaltyCache, L1PenaltyCache),
                            "anchored_penalty_backward")
    backward = l1_penalty_backward if isinstance(cache, L1PenaltyCache) else l2_penalty_backward
    return backward(dvalue, cache)[0]


def _penalty(name: Any) -> Penalty:
    if not isinstance(name, str) or name not in PENALTIES:
        raise ValueError(f"penalty: unknown penalty {name!r}; expected one of {sorted(PENALTIES)}")
    return PENALTIES[name]


# --- validation helpers -----------------------------------------------------------------------

def check_lam(value: Any, name: str = "lam") -> float:
    """A penalty strength: a finite real number >= 0 (``TypeError`` / ``ValueError`` otherwise)."""
    return check_real(value, name, minimum=0)


def _check_lams(lam: Any, names: list[str], what: str) -> dict[str, float]:
    """``lam`` as a float for every name: one number for all, or ``{name: number}`` covering
    exactly ``names``."""
    if isinstance(lam, Mapping):
        check_keys(lam, names, what=f"lam (a per-{what} mapping)")
        return {key: check_lam(lam[key], f"lam[{key!r}]") for key in names}
    value = check_lam(lam)
    return dict.fromkeys(names, value)


def _check_batch(batch: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{name}: expected a pair (x, y), got {type(batch).__name__}")
    return batch[0], batch[1]


def _check_model(model: Any, name: str) -> Sequential:
    if not isinstance(model, Sequential):
        raise TypeError(f"{name}: expected a refimpl Sequential model, got {type(model).__name__}")
    if model.loss_spec is None:
        raise ValueError(f"{name}: the model needs a loss (built with loss=None)")
    return model


def _unique_parameter(model: Sequential, name: Any, role: str,
                      argument: str = "pairs") -> tuple[int, ...]:
    """Shape of the unique parameter ``name`` of ``model``, or a clear error naming
    ``argument``."""
    shapes = model.parameter_shapes()
    if isinstance(name, str) and name in shapes:
        return shapes[name]
    uses = model.slot_uses()
    if isinstance(name, str) and name in uses:
        root, transpose = uses[name]
        raise ValueError(f"{argument}: {name!r} is a shared slot of {role} (it reads "
                         f"{'transposed ' if transpose else ''}{root!r}); pair the unique "
                         f"parameter {root!r} instead")
    raise ValueError(f"{argument}: unknown parameter {name!r} of {role}; its parameters are "
                     f"{sorted(shapes)}")


def join_params(params_a: Mapping[str, Any], params_b: Mapping[str, Any]) -> Params:
    """One flat dict ``{"A:<name>": ..., "B:<name>": ...}`` (A's keys first)."""
    joined = {PREFIX_A + key: value for key, value in params_a.items()}
    joined.update({PREFIX_B + key: value for key, value in params_b.items()})
    return joined


def split_params(joined: Mapping[str, Any], name: str = "params") -> tuple[Params, Params]:
    """Inverse of :func:`join_params`; a key without an ``"A:"`` / ``"B:"`` prefix is a
    ``ValueError``."""
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


# --- two tied models --------------------------------------------------------------------------

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
    model_a, model_b: :class:`~refimpl.nn.Sequential` models with a loss (they may be the
        same object, or different architectures).
    pairs: ``{name_a: name_b}`` (or an iterable of ``(name_a, name_b)``) matching unique
        parameters of A with unique parameters of B of the same shape; ``name_b`` may be
        ``transposed(name)`` for a 2-D parameter matched with its transpose. Each parameter
        may appear in at most one pair.
    lam: soft mode only: the strength, one number >= 0 or ``{name_a: number}`` per pair.
    mode: ``"soft"`` (penalty) or ``"hard"`` (sharing: B reads the paired parameters from
        ``params_a``; ``params_b`` omits them).
    penalty: ``"l2"`` (squared L2, default) or ``"l1"`` (see :data:`PENALTIES`).
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
        self.model_a = _check_model(model_a, "model_a")
        self.model_b = _check_model(model_b, "model_b")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        self.penalty_name = _penalty(penalty).name

        items = self._pair_items(pairs)
        names_a = [name_a for name_a, _ in items]
        if mode == "soft":
            if lam is None:
                raise ValueError("lam: soft tying needs a strength lam >= 0 (a number, or "
                                 "{name_a: number} per pair)")
            lams = _check_lams(lam, names_a, "pair")
        else:
            if lam is not None:
                raise ValueError(f"lam: hard sharing has no strength (the parameters are "
                                 f"equal; the limit lam -> infinity), got lam={lam!r}")
            lams = dict.fromkeys(names_a, 0.0)

        self.pairs: tuple[_Pair, ...] = ()
        seen_a: set[str] = set()
        seen_b: set[str] = set()
        checked = []
        for name_a, source in items:
            if isinstance(source, str):
                source = ShareSource(source)
            if not isinstance(source, ShareSource):
                raise TypeError(f"pairs[{name_a!r}]: expected a parameter name of model_b or "
                                f"transposed(name), got {source!r}")
            shape_a = _unique_parameter(self.model_a, name_a, "model_a")
            shape_b = _unique_parameter(self.model_b, source.name, "model_b")
            if name_a in seen_a:
                raise ValueError(f"pairs: model_a's parameter {name_a!r} is paired twice")
            if source.name in seen_b:
                raise ValueError(f"pairs: model_b's parameter {source.name!r} is paired twice")
            seen_a.add(name_a)
            seen_b.add(source.name)
            if source.transpose:
                if len(shape_b) != 2:
                    raise ValueError(f"pairs[{name_a!r}]: only 2-D parameters can be paired "
                                     f"transposed; {source.name!r} has shape {shape_b}")
                shape_b = shape_b[::-1]
            if shape_a != shape_b:
                kind = "transposed " if source.transpose else ""
                raise ValueError(f"pairs[{name_a!r}]: shape {shape_a} of model_a's "
                                 f"{name_a!r} does not match the {kind}shape {shape_b} of "
                                 f"model_b's {source.name!r}")
            checked.append(_Pair(name_a, source.name, source.transpose, lams[name_a]))
        self.pairs = tuple(checked)
        self._lam_given = lam

    @staticmethod
    def _pair_items(pairs: Any) -> list[tuple[Any, Any]]:
        if isinstance(pairs, Mapping):
            items = list(pairs.items())
        elif isinstance(pairs, Iterable) and not isinstance(pairs, (str, bytes)):
            items = []
            for index, item in enumerate(pairs):
                if isinstance(item, ShareSource) or not isinstance(item, (tuple, list)) \
                        or len(item) != 2:
                    raise TypeError(f"pairs[{index}]: expected a pair (name_a, name_b), got "
                                    f"{item!r}")
                items.append((item[0], item[1]))
        else:
            raise TypeError(f"pairs: expected {{name_a: name_b}} or a list of (name_a, name_b), "
                            f"got {type(pairs).__name__}")
        if not items:
            raise ValueError("pairs: expected at least one pair of parameters")
        return items

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
        return _item(value), grads_a, grads_b

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
        """Both losses, the penalty and the gradients (see :meth:`loss_and_grads`)."""
        params_a, params_b = self.check_params(params_a, params_b)
        xa, ya = _check_batch(batch_a, "batch_a")
        xb, yb = _check_batch(batch_b, "batch_b")
        loss_a, grads_a = _in_model("model_a", self.model_a.loss_and_grads, params_a, xa, ya)
        loss_b, grads_full_b = _in_model("model_b", self.model_b.loss_and_grads,
                                         self._full_b(params_a, params_b), xb, yb)
        if self.mode == "hard":
            shared = self.shared_b()
            grads_b = {key: grads_full_b[key] for key in params_b}
            # One array, two models using it: its gradient is the sum over both uses, B's
            # transposed back to A's layout.
            _add_penalty_grads(grads_a, {
                name_a: grads_full_b[name_b].T if transpose else grads_full_b[name_b]
                for name_b, (name_a, transpose) in shared.items()}, "model_a's ")
            penalty: Any = 0.0
        else:
            grads_b = grads_full_b
            penalty, penalty_a, penalty_b = self._penalty(params_a, params_b)
            penalty = _item(penalty)
            _add_penalty_grads(grads_a, penalty_a, "model_a's ")
            _add_penalty_grads(grads_b, penalty_b, "model_b's ")
        grads_a = {key: np.ascontiguousarray(grads_a[key]) for key in params_a}
        grads_b = {key: np.ascontiguousarray(grads_b[key]) for key in params_b}
        total = _check_total(loss_a + loss_b + penalty, "total (loss_a + loss_b + penalty)")
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
        return (_in_model("model_a", self.model_a.forward, params_a, x_a),
                _in_model("model_b", self.model_b.forward, self._full_b(params_a, params_b),
                          x_b))

    # --- one flat dict (for check_gradients and the optimizer) -------------------------------

    def join(self, params_a: Mapping[str, Any], params_b: Mapping[str, Any]) -> Params:
        """``{"A:<name>": ..., "B:<name>": ...}``: both dicts as one (see :func:`join_params`)."""
        return join_params(params_a, params_b)

    def split(self, joined: Mapping[str, Any]) -> tuple[Params, Params]:
        return split_params(joined)

    def joined_loss_and_grads(self, joined: Mapping[str, Any], batch_a: tuple[Any, Any],
                              batch_b: tuple[Any, Any]) -> tuple[Any, Params]:
        """:meth:`loss_and_grads` as a function of one flat dict: ``(total, joined_grads)``,
        ``joined_grads`` keyed in the order of ``joined``."""
        params_a, params_b = split_params(joined)
        total, grads_a, grads_b = self.loss_and_grads(params_a, params_b, batch_a, batch_b)
        grads = join_params(grads_a, grads_b)
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


def _item(value: Any) -> Any:
    return value.item() if isinstance(value, np.ndarray | np.generic) else value


def _in_model(role: str, method: Callable[..., Any], *args: Any) -> Any:
    """``method(*args)`` of one model of a pair; its ``FloatingPointError`` (a layer that
    overflowed) gains the model's role, "model_a: layer 'fc1' (Dense): ..."."""
    try:
        return method(*args)
    except FloatingPointError as error:
        raise FloatingPointError(f"{role}: {error}") from None


def _add_penalty_grads(grads: Params, penalty_grads: Params, role: str) -> None:
    """``grads[key] += penalty_grads[key]`` (new arrays); finite terms can sum to inf."""
    with no_fp_warnings():
        for key, grad in penalty_grads.items():
            grads[key] = grads[key] + grad
            check_finite_result(grads[key], lambda name=key: (
                f"gradient of {role}{name!r} (loss + penalty)"))


def _check_total(total: Any, what: str) -> Any:
    with no_fp_warnings():
        check_finite_result(total, what)
    return total


# --- one model anchored to a reference --------------------------------------------------------

class AnchoredResult(NamedTuple):
    """``total = loss + penalty`` and the gradients of ``total``."""

    total: Any
    loss: Any
    penalty: Any
    grads: Params


class AnchoredModel:
    """One model with an anchored penalty: ``total = L(w) + sum over names lam_n ||w_n - w0_n||``.

    Parameters
    ----------
    model: a :class:`~refimpl.nn.Sequential` with a loss.
    lam: one number >= 0, or ``{name: number}`` per anchored parameter.
    reference: ``{name: array}`` (the fixed ``w0``, e.g. pretrained weights: L2-SP), or None
        for ``w0 = 0`` (weight decay). Copied at construction.
    names: the unique parameters to anchor (default: the keys of ``reference``, or every unique
        parameter when ``reference`` is None).
    penalty: ``"l2"`` (squared, default) or ``"l1"``.
    """

    def __init__(
        self,
        model: Sequential,
        lam: float | Mapping[str, float],
        reference: Mapping[str, Any] | None = None,
        names: Iterable[str] | None = None,
        penalty: str = "l2",
    ) -> None:
        self.model = _check_model(model, "model")
        self.penalty_name = _penalty(penalty).name
        shapes = model.parameter_shapes()
        if reference is not None and not isinstance(reference, Mapping):
            raise TypeError(f"reference: expected a dict of arrays or None, got "
                            f"{type(reference).__name__}")
        if names is None:
            names = list(reference) if reference is not None else list(shapes)
        else:
            if isinstance(names, str):
                raise TypeError(f"names: expected a list of parameter names, got the string "
                                f"{names!r}")
            names = list(names)
        if not names:
            raise ValueError("names: expected at least one parameter to anchor")
        for name in names:
            _unique_parameter(model, name, "model", "names")
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"names: {duplicated} anchored twice")
        self.names = tuple(names)
        self.lams = _check_lams(lam, list(self.names), "parameter")
        if reference is None:
            self.reference = {name: np.zeros(shapes[name]) for name in self.names}
        else:
            check_keys(reference, self.names, what="reference")
            self.reference = {}
            for name in self.names:
                array = np.array(as_float_array(reference[name], f"reference[{name!r}]",
                                                allow_complex=False))
                check_shape(array, shapes[name], f"reference[{name!r}]")
                array.setflags(write=False)
                self.reference[name] = array

    def penalty(self, params: Mapping[str, Any]) -> tuple[Any, Params]:
        """``(value, grads)`` of the anchored penalty alone, grads keyed by the anchored names."""
        params = self.model.check_params(params)
        value, grads = self._penalty(params)
        return _item(value), grads

    def _penalty(self, params: Params) -> tuple[Any, Params]:
        total: Any = 0.0
        grads: Params = {}
        with no_fp_warnings():
            for name in self.names:
                value, cache = anchored_penalty_forward(params[name], self.reference[name],
                                                        self.lams[name], self.penalty_name)
                total = total + value
                grads[name] = anchored_penalty_backward(1.0, cache)
                # The inputs are finite; lam (w - w0)^2 can still overflow, and so can the sum.
                for result, what in ((total, "value"), (grads[name], "gradient")):
                    check_finite_result(result, lambda n=name, w=what: (
                        f"penalty {self.penalty_name!r} anchoring {n!r}: {w}"))
        return total, grads

    def evaluate(self, params: Mapping[str, Any], x: Any, y: Any) -> AnchoredResult:
        params = self.model.check_params(params)
        loss, grads = _in_model("model", self.model.loss_and_grads, params, x, y)
        penalty, penalty_grads = self._penalty(params)
        penalty = _item(penalty)
        _add_penalty_grads(grads, penalty_grads, "")
        total = _check_total(loss + penalty, "total (loss + penalty)")
        return AnchoredResult(total, loss, penalty, grads)

    def loss_and_grads(self, params: Mapping[str, Any], x: Any, y: Any) -> tuple[Any, Params]:
        """``(loss + penalty, grads)``, grads keyed exactly like ``params``."""
        result = self.evaluate(params, x, y)
        return result.total, result.grads

    def parameter_count(self) -> ParameterCount:
        """The model's count (the reference is a constant, not a parameter)."""
        return self.model.parameter_count()

    def config(self) -> dict[str, Any]:
        """JSON-able description (the reference arrays are data, not configuration)."""
        return {"model": self.model.config(), "names": list(self.names), "lam": dict(self.lams),
                "penalty": self.penalty_name}

    def __repr__(self) -> str:
        return (f"AnchoredModel({self.model!r}, lam={self.lams!r}, names={list(self.names)}, "
                f"penalty={self.penalty_name!r})")
