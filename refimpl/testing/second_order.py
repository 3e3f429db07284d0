"""Second order in the oracle kit: every case's Hessian-vector expectation, its resolution
floors, and the comparison of an implementation's ``hvp`` with it.

The expectation
---------------
Every case whose configuration describes a refimpl model (:mod:`.cases.models`: every
catalogue, probe and drawn case, and every case built from a model) carries an HVP
expectation, computed on first use and kept with the case (:func:`hvp_expectation`; a case
that is never asked for one costs nothing):

* the **direction** ``v``: one seeded standard-normal direction over every parameter,
  ``refimpl.hessian.random_directions(case.params, 1, seed)[0]`` with ``seed`` the case's
  integer ``config["seed"]`` (0 for a case without one: the probes), keyed like
  ``case.params``;
* the **product** ``H v``: :func:`refimpl.hvp` of the case's model at its point, on its data
  (the full batch of a micro-batch case: the step's loss is the full batch's), keyed like
  ``case.params``. For a tied pair the Hessian is the joined parameters' (keys
  ``"A:<name>"`` / ``"B:<name>"``), the penalty's block included; for an anchored model the
  anchor's.

The implementation's side (the ``hvp`` capability)
---------------------------------------------------
An implementation may have, beside ``impl(params, inputs) -> (loss, grads[, outputs])``, a
method or attribute ``impl.hvp``::

    impl.hvp(params, inputs, vector) -> {name: array}

``params`` and ``inputs`` as the gradient protocol hands them over (fresh copies in the dtype
under test), ``vector`` keyed and shaped like ``params`` (also in that dtype); it returns the
Hessian of the *loss* ``impl`` returns (the step's loss: micro-batches weighted by ``n_i / N``,
a penalty once) times ``vector``, keyed like ``params``. :func:`compare_hvp` judges it.

The comparison rule and its floors
----------------------------------
Each returned product is one row (role ``"hvp"``) judged by the ordinary rule of
:mod:`refimpl.testing.comparison` (``limit = rtol * max|ref| + floor + atol``, pass /
fail / inconclusive, the dtype's tolerance), with a resolution floor derived like the
gradients' (:mod:`refimpl.testing.resolution`): refimpl's own float64 ``H v`` at the point,
data and direction rounded to the hand-over dtype, and at ``FLOOR_PERTURBATIONS`` points
whose every float parameter, input and direction entry is scaled by ``1 + c u s`` (the arrays
a probe computes exactly excepted; for a Siamese model also points where every branch has its
own perturbation, each branch's rounding being its own), plus the loss's rounding carried to
second order (:func:`hvp_loss_rounding`; for a metric loss every branch's embedding and every
intermediate of the loss rounded on its own): the largest change, times ``FLOOR_SAFETY``. In
float64 these floors are a few units of roundoff of ``H v``, far below a third of its scale,
so a wrong ``H v`` is never inconclusive there (``tests/test_hvp_cases.py`` checks every
catalogue case).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..hessian import loss_grads_and_hvp, random_directions
from ..hessian.branches import branch_products, vjp_derivative
from ..nn import Siamese
from .cases import Case
from .cases.models import describes_model, model_from_config
from .comparison import ComparisonReport, TensorComparison, Tolerance, _structural, compare_tensor
from .resolution import (
    ELEMENTWISE_ROUNDOFF,
    FLOOR_PERTURBATIONS,
    FLOOR_ROUNDOFF_UNITS,
    FLOOR_SAFETY,
    HAND_OVER_DTYPE,
    UNIT_ROUNDOFF,
    _check_exact,
    _members,
    perturbed,
    rounded_to,
)

__all__ = ["HVP_ROLE", "HVPExpectation", "has_hvp", "direction_seed", "hvp_direction",
           "hvp_evaluate", "hvp_expectation", "hvp_floors", "hvp_loss_rounding", "compare_hvp",
           "hvp_function", "alternative_hvp", "FLOORS_REMEMBERED"]

Params = dict[str, np.ndarray]
#: ``evaluate(params, inputs, vector) -> H v``: refimpl's float64 product as a function of the
#: point, the data and the direction.
HVPEvaluate = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], Params]

#: The role of a compared Hessian-vector product (a row's label: ``hvp 'fc1.weight'``).
HVP_ROLE = "hvp"

#: The private attribute a case keeps its computed expectation in (not a dataclass field: a
#: ``dataclasses.replace`` of a case computes its own).
_CACHE = "_hvp_expectation"


class HVPExpectation(NamedTuple):
    """A case's HVP expectation: the direction and refimpl's ``H v`` along it.

    Attributes
    ----------
    direction : dict of str to ndarray
        ``v``, keyed and shaped like the case's params.
    hvp : dict of str to ndarray
        ``H v``, keyed and shaped like the case's params.
    """

    direction: Params
    hvp: Params


def has_hvp(case: Any) -> bool:
    """Whether a case has an HVP expectation: its configuration describes a refimpl model
    (:func:`refimpl.testing.cases.models.describes_model`), and it is not a step case (kind
    "steps": a trajectory of optimizer steps, not one loss at one point)."""
    return (isinstance(case, Case) and case.kind != "steps"
            and describes_model(case.config))


def direction_seed(case: Case) -> int:
    """The seed of a case's direction: its integer ``config["seed"]``, else 0."""
    seed = case.config.get("seed") if isinstance(case.config, Mapping) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def hvp_direction(case: Case) -> Params:
    """A case's direction ``v``: ``random_directions(case.params, 1, direction_seed(case))``."""
    return random_directions(case.params, 1, direction_seed(case))[0]


def hvp_evaluate(config: Mapping[str, Any]) -> HVPEvaluate:
    """``evaluate(params, inputs, vector) -> H v`` of the model a case configuration
    describes, refimpl's float64 R-operator (:func:`refimpl.hessian.loss_grads_and_hvp`), as a
    function of the point, the data and the direction (the floors move all three).

    Raises
    ------
    ValueError
        For a configuration that describes no refimpl model.
    """
    if not describes_model(config):
        raise ValueError("case: its configuration describes no refimpl model ('model', "
                         "'pair', 'anchored', 'siamese' or 'base' with 'micro_batches'), so it "
                         "has no Hessian-vector expectation")

    def evaluate(params: Mapping[str, Any], inputs: Mapping[str, Any],
                 vector: Mapping[str, Any]) -> Params:
        model, data, splits, splits_b = model_from_config(config, inputs)
        return loss_grads_and_hvp(model, params, data, vector, splits=splits,
                                  splits_b=splits_b).hvp

    return evaluate


def hvp_expectation(case: Case) -> HVPExpectation:
    """A case's direction and refimpl's ``H v`` along it (module docstring), computed on the
    first call and kept with the case.

    Raises
    ------
    TypeError
        For anything but a :class:`refimpl.testing.cases.Case`.
    ValueError
        For a case whose configuration describes no refimpl model (:func:`has_hvp`).

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> case = get_case("shared-tied-autoencoder")
    >>> expected = hvp_expectation(case)
    >>> list(expected.hvp) == list(expected.direction) == list(case.params)
    True
    >>> hvp_expectation(case) is expected      # computed once, kept with the case
    True
    """
    if not isinstance(case, Case):
        raise TypeError(f"case: expected a refimpl.testing.cases.Case, got "
                        f"{type(case).__name__}")
    cached = getattr(case, _CACHE, None)
    if cached is None:
        direction = hvp_direction(case)
        cached = HVPExpectation(direction, hvp_evaluate(case.config)(case.params, case.inputs,
                                                                     direction))
        object.__setattr__(case, _CACHE, cached)
    return cached


# --- the floors ------------------------------------------------------------------------------

def hvp_loss_rounding(config: Mapping[str, Any], params: Mapping[str, Any],
                      inputs: Mapping[str, Any], vector: Mapping[str, Any], dtype: str,
                      rng: np.random.Generator, normaliser: bool = False
                      ) -> dict[str, np.ndarray]:
    """The change of ``H v`` when the loss's upstream derivative and its tangent are off by
    ``relative = FLOOR_ROUNDOFF_UNITS * ELEMENTWISE_ROUNDOFF[dtype]`` times the magnitude of
    their terms: :func:`refimpl.testing.resolution.loss_rounding` carried to second order.

    With ``z`` the model output, ``z_dot`` its tangent along ``v``, ``g = dL/dz`` and
    ``g_dot`` its tangent, ``H v = J^T g_dot + (dJ^T / dv) g``: an error ``e`` of ``g`` moves
    ``H v`` by the directional derivative of the vector-Jacobian product ``J^T e`` along ``v``
    (by the complex step), an error ``e_dot`` of ``g_dot`` by ``J^T e_dot``.

    * cross-entropy: ``g = (p - onehot) / P``, resolved to ``relative (1 + max|z|) / P`` per
      entry (``log_norm`` holds the largest logit), and ``g_dot = (p z_dot - p (p . z_dot)) /
      P`` to ``relative (1 + max|z|) (p |z_dot| + p |p . z_dot|) / P`` (the probabilities'
      relative error times the terms);
    * MSE: ``g = 2 (z - y) / size`` to ``relative 2 (|z| + |y|) / size``, ``g_dot = 2 z_dot /
      size`` to ``relative 2 |z_dot| / size``.

    Signs are random per entry, or with ``normaliser`` one per position (cross-entropy: the
    shared ``log_norm``'s error moves all of a position's probabilities together). A
    cross-entropy position whose every other logit lies below its largest by more than
    ``-log`` of the dtype's smallest subnormal has exactly one-hot probabilities in that dtype
    (``exp(0) = 1``, every other ``exp`` 0, ``log_norm`` the largest logit exactly): its
    softmax rounds nothing, and its Hessian ``diag(p) - p p^T`` is exactly 0.
    Keyed like ``params``; empty for a Siamese model's metric loss (:func:`_siamese_rounding`
    models it).
    """
    relative = FLOOR_ROUNDOFF_UNITS * ELEMENTWISE_ROUNDOFF[dtype]
    underflow = float(np.log(np.finfo(HAND_OVER_DTYPE[dtype]).smallest_subnormal))
    changes: dict[str, np.ndarray] = {}
    for model, member_params, x, y, route in _members(config, params, inputs):
        member_v = {}
        for name in member_params:
            key, transpose = route(name)
            member_v[name] = vector[key].T if transpose else vector[key]
        out, out_dot = model.jvp(member_params, x, member_v)
        if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
            rows = out.reshape(-1, out.shape[-1])                                # (P, K)
            rows_dot = out_dot.reshape(rows.shape)                               # (P, K)
            positions = rows.shape[0]
            shifted = np.exp(rows - np.max(rows, axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)        # (P, K)
            terms = 1.0 + np.max(np.abs(rows), axis=1, keepdims=True)           # (P, 1)
            gaps = np.sort(rows, axis=1)
            one_hot = (gaps[:, -2:-1] - gaps[:, -1:] < underflow) if rows.shape[1] > 1 \
                else np.ones((positions, 1), dtype=bool)                           # (P, 1)
            terms = np.where(one_hot, 0.0, terms)
            inner = np.sum(probabilities * rows_dot, axis=1, keepdims=True)     # (P, 1)
            gradient_size = np.broadcast_to(terms / positions, rows.shape)
            tangent_size = terms * probabilities * (np.abs(rows_dot) + np.abs(inner)) / positions
            if normaliser:
                signs = np.where(rng.random((positions, 1)) < 0.5, -1.0, 1.0)
                gradient_error = relative * gradient_size * probabilities * signs
                tangent_error = relative * tangent_size * signs
            else:
                gradient_error = relative * gradient_size * np.where(
                    rng.random(rows.shape) < 0.5, -1.0, 1.0)
                tangent_error = relative * tangent_size * np.where(
                    rng.random(rows.shape) < 0.5, -1.0, 1.0)
            gradient_error = gradient_error.reshape(out.shape)
            tangent_error = tangent_error.reshape(out.shape)
        else:
            target = np.asarray(y, dtype=np.float64)
            gradient_error = relative * 2.0 * (np.abs(out) + np.abs(target)) / out.size \
                * np.where(rng.random(out.shape) < 0.5, -1.0, 1.0)
            tangent_error = relative * 2.0 * np.abs(out_dot) / out.size \
                * np.where(rng.random(out.shape) < 0.5, -1.0, 1.0)
        through_gradient = vjp_derivative(model, member_params, x, gradient_error, member_v)
        _, _, through_tangent = model.vjp(member_params, x, tangent_error)
        for name in member_params:
            key, transpose = route(name)
            change = through_gradient[name] + through_tangent[name]
            change = change.T if transpose else change
            changes[key] = changes[key] + change if key in changes else change
    return changes


def _branch_hvp(model: Siamese, branch_params: list[Params], data: tuple,
                branch_vectors: list[Params]) -> Params:
    """``H v`` of a Siamese model whose branch ``b`` runs the tower at ``branch_params[b]``
    along ``branch_vectors[b]``: the sum of :func:`refimpl.hessian.branches.branch_products`."""
    total: Params = {}
    for product in branch_products(model, branch_params, data, branch_vectors):
        for key, value in product.items():
            total[key] = total[key] + value if key in total else value
    return total


#: Fields of a metric loss's caches that are not rounded values: labels and masks.
_NOT_ROUNDED = frozenset({"similar", "active"})


def _rounded_cache(cache: Any, relative: float, rng: np.random.Generator) -> Any:
    """A loss cache (nested ``NamedTuple``) with every float array, a label or a mask
    excepted, scaled by ``1 + relative s`` entry-wise (``s = +-1``): the rounding of each
    intermediate of the loss's computation."""
    if isinstance(cache, tuple) and hasattr(cache, "_fields"):
        return type(cache)(*(value if field in _NOT_ROUNDED else
                             _rounded_cache(value, relative, rng)
                             for field, value in zip(cache._fields, cache, strict=True)))
    if isinstance(cache, np.ndarray) and cache.dtype.kind == "f":
        return cache * (1.0 + relative * np.where(rng.random(cache.shape) < 0.5, -1.0, 1.0))
    return cache


def _siamese_rounding(model: Siamese, params: Mapping[str, Any], data: tuple,
                      vector: Mapping[str, Any], dtype: str, rng: np.random.Generator
                      ) -> Params:
    """The change of a Siamese model's ``H v`` when the metric loss is computed in ``dtype``:
    every branch's embedding and tangent off by ``relative = FLOOR_ROUNDOFF_UNITS *
    ELEMENTWISE_ROUNDOFF[dtype]`` (independently per branch: their roundings do not cancel in
    the difference ``e1 - e2``), then every intermediate of the loss (the difference, the
    distance, the slack, the tangent of the difference) off by as much; the changes of the
    loss's ``g`` and ``g_dot`` carried back through each branch's tower (``J^T`` of the tangent's
    change, the derivative along ``v`` of ``J^T`` of the gradient's)."""
    relative = FLOOR_ROUNDOFF_UNITS * ELEMENTWISE_ROUNDOFF[dtype]
    branches = model.loss_spec.branches
    xs, target = data[:branches], (data[branches] if len(data) > branches else None)
    tower, loss = model.tower, model.loss_spec
    vector = {key: np.asarray(vector[key], dtype=np.float64) for key in params}
    outs = [tower.jvp(params, x, vector) for x in xs]            # (e_b, e_dot_b), each (N, D)

    def moved(array: np.ndarray) -> np.ndarray:
        return array * (1.0 + relative * np.where(rng.random(array.shape) < 0.5, -1.0, 1.0))

    def derivatives(embeddings: list[np.ndarray], tangents: list[np.ndarray],
                    rounded: bool) -> tuple:
        _, cache = loss.forward(tuple(embeddings), target)
        _, tangent_cache = loss.jvp(tuple(tangents), cache)
        if rounded:
            cache = _rounded_cache(cache, relative, rng)
            tangent_cache = _rounded_cache(tangent_cache, relative, rng)
        return loss.backward(1.0, cache), loss.backward_jvp(1.0, 0.0, cache, tangent_cache)

    grads, grads_dot = derivatives([out for out, _ in outs], [dot for _, dot in outs], False)
    moved_grads, moved_dots = derivatives([moved(out) for out, _ in outs],
                                          [moved(dot) for _, dot in outs], True)
    changes: Params = {}
    for x, g, g_moved, dot, dot_moved in zip(xs, grads, moved_grads, grads_dot, moved_dots,
                                             strict=True):
        through_gradient = vjp_derivative(tower, dict(params), x, g_moved - g, vector)
        _, _, through_tangent = tower.vjp(params, x, dot_moved - dot)
        for key in params:
            change = through_gradient[key] + through_tangent[key]
            changes[key] = changes[key] + change if key in changes else change
    return changes


def hvp_floors(case: Case, dtype: str, reference: Mapping[str, Any] | None = None,
               direction: Mapping[str, Any] | None = None) -> dict[tuple[str, str], float]:
    """The resolution floor of every product ``H v`` of a case, for ``dtype`` (module
    docstring).

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        A case with an HVP expectation (:func:`has_hvp`); the arrays its ``config["exact"]``
        names are rounded, never perturbed.
    dtype : str
        "float64", "float32" or "tf32".
    reference : mapping, optional
        ``H v`` at the case's point along ``direction``, if known.
    direction : mapping, optional
        The direction (default: the case's, :func:`hvp_direction`).

    Returns
    -------
    dict
        ``{("hvp", name): floor}`` for every parameter.

    Raises
    ------
    ValueError
        For an unknown dtype, or a case without an HVP expectation.

    Notes
    -----
    The floors are a pure function of the configuration, the point, the data, the direction,
    the reference and the dtype, and they cost about ``2 FLOOR_PERTURBATIONS + 1`` products
    ``H v``: they are remembered for the last :data:`FLOORS_REMEMBERED` such arguments (keyed
    by a SHA-256 of their bytes), so that verifying a golden folder again does not recompute
    them.
    """
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype: expected one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    evaluate = hvp_evaluate(case.config)
    if direction is None:
        expectation = hvp_expectation(case)
        direction = expectation.direction
        reference = expectation.hvp if reference is None else reference
    if reference is None:
        reference = evaluate(case.params, case.inputs, direction)
    key = _floors_key(case, dtype, reference, direction)
    if key in _FLOORS:
        _FLOORS.move_to_end(key)
        return dict(_FLOORS[key])
    floors = _derived_floors(case, dtype, reference, direction, evaluate)
    _FLOORS[key] = floors
    while len(_FLOORS) > FLOORS_REMEMBERED:
        _FLOORS.popitem(last=False)
    return dict(floors)


#: How many results of :func:`hvp_floors` are remembered (least recently used dropped).
FLOORS_REMEMBERED = 1024
_FLOORS: OrderedDict[str, dict[tuple[str, str], float]] = OrderedDict()


def _floors_key(case: Case, dtype: str, reference: Mapping[str, Any],
                direction: Mapping[str, Any]) -> str:
    """A SHA-256 of everything the floors depend on: the configuration (as JSON), the point,
    the data, the reference, the direction (names, dtypes, shapes and bytes) and the dtype."""
    digest = hashlib.sha256(json.dumps(case.config, sort_keys=True, default=repr).encode())
    digest.update(dtype.encode())
    for label, arrays in (("params", case.params), ("inputs", case.inputs),
                          ("reference", reference), ("direction", direction)):
        digest.update(label.encode())
        for name, value in arrays.items():
            array = np.ascontiguousarray(value)
            digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _derived_floors(case: Case, dtype: str, reference: Mapping[str, Any],
                    direction: Mapping[str, Any], evaluate: HVPEvaluate
                    ) -> dict[tuple[str, str], float]:
    """:func:`hvp_floors`' derivation (module docstring), not remembered."""
    expected = {key: np.asarray(value, dtype=np.float64) for key, value in reference.items()}
    rng = np.random.default_rng(0)
    relative = FLOOR_ROUNDOFF_UNITS * UNIT_ROUNDOFF[dtype]
    exact = _check_exact(case.config.get("exact", ()), case.params, case.inputs)
    points = [(rounded_to(case.params, dtype), rounded_to(case.inputs, dtype),
               rounded_to(direction, dtype))]
    points += [(perturbed(case.params, relative, rng, exact),
                perturbed(case.inputs, relative, rng, exact),
                perturbed(direction, relative, rng)) for _ in range(FLOOR_PERTURBATIONS)]
    spread = dict.fromkeys(expected, 0.0)
    for point, data, vector in points:
        for key, value in evaluate(point, data, vector).items():
            change = np.abs(np.asarray(value, dtype=np.float64) - expected[key])
            spread[key] = max(spread[key], float(np.max(change, initial=0.0)))
    model = model_from_config(case.config, case.inputs).model
    # A product exactly zero at the point and at every point above is zero by the model's
    # structure (a bias that cancels in the difference of two Siamese branches): a backward
    # pass negates exactly, so it keeps a zero floor and is compared exactly, as a gradient's
    # structural zero is; the branch-by-branch rounding below would make it inconclusive.
    structural = {key for key, value in spread.items()
                  if value == 0.0 and not np.any(expected[key])}
    changes: list[Mapping[str, Any]] = []
    if isinstance(model, Siamese):
        # Every branch runs the tower on its own, so its rounding is its own: the branches'
        # terms of H v can cancel (a contrastive loss has dL/de1 = -dL/de2), which one
        # perturbation shared by the branches would keep exact. Each branch gets its own.
        branches = model.loss_spec.branches
        for _ in range(FLOOR_PERTURBATIONS):
            data = model_from_config(case.config,
                                     perturbed(case.inputs, relative, rng, exact)).data
            moved = _branch_hvp(model, [perturbed(case.params, relative, rng, exact)
                                        for _ in range(branches)], data,
                                [perturbed(direction, relative, rng) for _ in range(branches)])
            changes.append({key: np.asarray(value) - expected[key]
                            for key, value in moved.items()})
    for k in range(FLOOR_PERTURBATIONS):
        changes.append(_siamese_rounding(model, case.params, model_from_config(
            case.config, case.inputs).data, direction, dtype, rng)
            if isinstance(model, Siamese) else
            hvp_loss_rounding(case.config, case.params, case.inputs, direction, dtype, rng,
                              normaliser=k % 2 == 1))
    for change_of in changes:
        for key, change in change_of.items():
            if key in spread and key not in structural:
                spread[key] = max(spread[key], float(np.max(np.abs(change), initial=0.0)))
    return {(HVP_ROLE, key): FLOOR_SAFETY * value for key, value in spread.items()}


# --- judging an implementation's hvp -------------------------------------------------------------

def hvp_function(impl: Any) -> Callable[..., Any] | None:
    """The ``hvp`` of an implementation: its callable attribute ``hvp``, else None."""
    found = getattr(impl, "hvp", None)
    return found if callable(found) else None


def _hand_over(arrays: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """Fresh copies for the implementation; float arrays cast to the dtype under test."""
    target = HAND_OVER_DTYPE[dtype]
    return {name: np.array(value, dtype=target if np.asarray(value).dtype.kind == "f"
                           else np.asarray(value).dtype)
            for name, value in arrays.items()}


def compare_hvp(hvp: Callable[..., Any], case_name: str, params: Mapping[str, np.ndarray],
                inputs: Mapping[str, np.ndarray], direction: Mapping[str, np.ndarray],
                expected: Mapping[str, np.ndarray], dtype: str, tolerance: Tolerance,
                floors: Mapping[tuple[str, str], float]) -> ComparisonReport:
    """Run ``hvp(params, inputs, vector)`` on fresh copies in the dtype under test and judge
    every product against ``expected`` (one row per parameter, role ``"hvp"``).

    A return value that is not a mapping, an unexpected name, a missing, misshapen, non-finite
    or (in float64) non-float64 product fails; the rule is the ordinary one with the floors
    given (:func:`hvp_floors`). Exceptions of ``hvp`` propagate (a conformance run turns them
    into a failed row).
    """
    result = hvp(_hand_over(params, dtype), _hand_over(inputs, dtype),
                 _hand_over(direction, dtype))
    if not isinstance(result, Mapping):
        return ComparisonReport(case_name, dtype, tolerance, (), (
            f"impl.hvp returned {type(result).__name__}; expected a dict {{parameter name: "
            f"array}} (H times vector, keyed like params)",))
    problems = []
    extra = [name for name in result if name not in expected]
    if extra:
        problems.append(f"impl.hvp returned unexpected name(s) {sorted(map(str, extra))}; the "
                        f"parameters are {list(expected)}")
    rows: list[TensorComparison] = [
        compare_tensor(HVP_ROLE, name, reference, result[name], tolerance,
                       require_float64=dtype == "float64", floor=floors[(HVP_ROLE, name)])
        if name in result else
        _structural(HVP_ROLE, name, np.shape(reference), "missing from impl.hvp's result")
        for name, reference in expected.items()]
    return ComparisonReport(case_name, dtype, tolerance, tuple(rows), tuple(problems))


# --- a probe's documented alternatives ----------------------------------------------------------

def _reproduces(case: Case, reference: tuple[Any, Mapping[str, Any], Any]) -> bool:
    """Whether the model ``case.config`` describes computes ``reference``'s gradients (the
    float64 rule, no floor): true for an alternative that *is* another model (a layer or a
    hyper-parameter changed), false for a rule of the backward pass alone or a value between
    two rules, whose configuration is the probe's or an end point's."""
    model, data, splits, splits_b = model_from_config(case.config, case.inputs)
    _, grads, _ = loss_grads_and_hvp(model, case.params, data,
                                     {key: np.zeros_like(value)
                                      for key, value in case.params.items()},
                                     splits=splits, splits_b=splits_b)
    expected = reference[1]
    return set(grads) == set(expected) and all(
        compare_tensor("gradient", key, expected[key], grads[key],
                       Tolerance(rtol=1e-10, atol=0.0)).verdict == "pass" for key in expected)


def alternative_hvp(alternative: Any, direction: Mapping[str, Any]) -> Params | None:
    """refimpl's ``H v`` under a probe's documented alternative rule
    (:class:`refimpl.testing.cases.probes.Alternative`), along ``direction``; None when the
    rule has no ``H v`` of its own here.

    A rule that is another model — the probe's model with one layer or one hyper-parameter
    changed (the identity for an activation's derivative at its kink, zero padding before a
    pool, the other ``count_include_pad``, PyTorch's softplus threshold) — has that model's
    ``H v``, exact. A rule of the backward pass alone (a tie's share, a subgradient) or a
    value between two rules (the mean of both sides) is defined on the gradient only, with no
    Hessian of its own: None (the alternative's configuration does not reproduce its
    gradients, which is how it is told apart).
    """
    case = alternative.case
    if not describes_model(case.config) or not _reproduces(case, alternative.reference):
        return None
    return hvp_evaluate(case.config)(case.params, case.inputs, direction)
