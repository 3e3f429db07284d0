"""The resolution floor: how finely a dtype can resolve each reference tensor at one point.

The model
---------
The comparison rule that uses the floor is written in :mod:`refimpl.testing.comparison`. A
correct implementation computing in a dtype with unit roundoff ``u`` returns, at best, the
exact result at a point whose parameters and inputs are perturbed by a few units of roundoff
(the backward-error model of sums and products: ``fl(sum a_i b_i) = sum a_i b_i (1 + d_i)``,
``|d_i| <= n u``). So the reference's own sensitivity to such perturbations bounds how well
*any* implementation in that dtype can reproduce each tensor there. With refimpl's float64
reference ``ref = f(p, x)`` (loss, gradients, outputs)::

    floor[tensor] = FLOOR_SAFETY * max over the points q of  max_i |f(q)_i - ref_i|

over ``FLOOR_PERTURBATIONS`` perturbed points ``(p (1 + c u s), x (1 + c u s'))`` — every float
parameter and every float input (MSE targets and anchors included; integer labels untouched),
``c = FLOOR_ROUNDOFF_UNITS``, ``s`` independent random signs from a fixed seed — plus the point
rounded to the hand-over dtype (exactly what the implementation receives). ``u`` is
:data:`UNIT_ROUNDOFF` ``[dtype]``: 2**-53 (float64), 2**-24 (float32), 2**-11 (tf32: tensor
cores round every product input to a 10-bit mantissa).

What the perturbation does not see: rounding *inside* the computation. The one that matters is
absorption at the loss: a softmax saturated towards one-hot gives ``p - onehot`` of absolute
accuracy ~``u (1 + max|z|)`` whatever its value, and ``max z + log(sum exp(z - max z))`` loses
everything below ``u max|z|`` (a loss of 3.6e-6 at logits ~3000 is 0 in float32); a
perturbation of the logits changes ``exp(-30)`` only relatively. :func:`loss_rounding` adds it:
``dL/dout`` off by ``c u`` times the magnitude of its terms, pushed through the model's
backward pass, and the loss off by as much (for MSE ``mean(2 |r| d + d**2)``, quadratic near a
fit); ``FLOOR_PERTURBATIONS`` draws, alternately with random signs per entry and
(cross-entropy) with one sign per example times the probabilities — the error of the shared
``log_norm`` moves all of an example's probabilities together, which random signs miss when
``dout @ W`` cancels over nearly equal rows of ``W``. Saturated hidden activations (``1 -
tanh(z)**2`` at large ``z``): no rejection in the 1,000-case stress run was due to them (their
gradients are small where their rounding is large). A ReLU pre-activation within a few ``u`` of
its kink makes the reference jump between perturbed points: the floor then says, correctly,
that the dtype cannot tell on which side the implementation lands.

Exact points (the convention probes)
------------------------------------
A probe (:mod:`refimpl.testing.cases.probes`) sits *on* a kink on purpose: a ReLU
pre-activation of exactly 0, two tied maxima, an L1 pair with ``a == b``. Perturbing the
arrays that build the kink would cross it and make the floor say "inconclusive" for a point
every dtype computes exactly. Such a case lists those arrays in ``config["exact"]``: their
entries are small dyadic rationals, exactly representable in float32 and in TF32's 10-bit
mantissa, and every sum and product up to the kink is exact in any order, so no dtype rounds
them. The floor then rounds them to the hand-over dtype (a no-op, checked by
``tests/test_probes.py``) and does not perturb them; every other array (the layers after the
kink, the targets) is perturbed as above, and the loss rounding is added as above: what the
dtype actually rounds.

``FLOOR_SAFETY`` was chosen from the measured ratio "error of an independent float32 /
simulated-TF32 implementation over the raw spread" where the floor dominates the limit (at
most 1.3 / 1.5; ``tests/oracle_stress.py``), and is pinned by ``tests/test_resolution.py``.

Cost: ``FLOOR_PERTURBATIONS + 1`` extra float64 evaluations of the reference, and
``FLOOR_PERTURBATIONS`` vector-Jacobian products, per comparison. :func:`case_floors`
remembers what it derived (a pure function of its arguments), so that comparing with the same
case again, or verifying a golden folder again, costs one evaluation of the reference.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .._validate import check_seed
from ..nn import Sequential
from ..tying import TiedPair

__all__ = ["UNIT_ROUNDOFF", "ELEMENTWISE_ROUNDOFF", "FLOOR_PERTURBATIONS", "FLOOR_ROUNDOFF_UNITS",
           "FLOOR_SAFETY", "loss_rounding", "Evaluate", "tensors_of", "rounded_to", "perturbed",
           "resolution_floors", "case_floors", "FLOORS_REMEMBERED"]

#: Unit roundoff of the arithmetic of each dtype under test (TF32: its 10-bit product inputs).
UNIT_ROUNDOFF: dict[str, float] = {"float64": 2.0 ** -53, "float32": 2.0 ** -24,
                                   "tf32": 2.0 ** -11}

#: Unit roundoff of the element-wise arithmetic (activations, softmax, the loss): TF32 rounds
#: only the inputs of products; everything else is float32.
ELEMENTWISE_ROUNDOFF: dict[str, float] = {"float64": 2.0 ** -53, "float32": 2.0 ** -24,
                                          "tf32": 2.0 ** -24}

#: K: perturbed points evaluated (besides the point rounded to the hand-over dtype).
FLOOR_PERTURBATIONS = 4

#: c: every parameter and input entry is scaled by ``1 + c u s``, ``s = +-1``.
FLOOR_ROUNDOFF_UNITS = 2.0

#: safety: the floor is this multiple of the largest change seen over the perturbed points.
FLOOR_SAFETY = 4.0

#: NumPy dtype in which an implementation receives params and float inputs.
HAND_OVER_DTYPE = {"float64": np.float64, "float32": np.float32, "tf32": np.float32}

#: ``evaluate(params, inputs) -> (loss, grads, outputs)``, refimpl's float64 reference as a
#: function of the point *and* the data.
Evaluate = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
                    tuple[Any, Mapping[str, np.ndarray], Mapping[str, np.ndarray]]]

Key = tuple[str, str]


def tensors_of(result: tuple[Any, Mapping[str, Any], Mapping[str, Any]]
               ) -> Iterator[tuple[Key, np.ndarray]]:
    """``((role, name), float64 array)`` for the loss, each gradient and each output."""
    loss, grads, outputs = result
    yield ("loss", "loss"), np.asarray(loss, dtype=np.float64)
    for name, value in grads.items():
        yield ("gradient", name), np.asarray(value, dtype=np.float64)
    for name, value in outputs.items():
        yield ("output", name), np.asarray(value, dtype=np.float64)


def _is_float(value: Any) -> bool:
    """Whether ``value`` is a real float array (the perturbations move those only)."""
    return np.asarray(value).dtype.kind == "f"


def rounded_to(arrays: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """Float arrays rounded to the hand-over dtype and back to float64; others as they are."""
    target = HAND_OVER_DTYPE[dtype]
    return {name: np.asarray(value).astype(target).astype(np.float64) if _is_float(value)
            else np.asarray(value) for name, value in arrays.items()}


def perturbed(arrays: Mapping[str, Any], relative: float, rng: np.random.Generator,
              exact: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Every float array times ``1 + relative * s`` entry-wise, ``s = +-1`` at random (a zero
    stays zero, as it does in floating point); integer arrays (labels) and the arrays named in
    ``exact`` (computed exactly in every dtype: module docstring) untouched."""
    exact = set(exact)
    result = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if _is_float(array) and name not in exact:
            signs = np.where(rng.random(array.shape) < 0.5, -1.0, 1.0)
            result[name] = array.astype(np.float64) * (1.0 + relative * signs)
        else:
            result[name] = array
    return result


def _members(config: Mapping[str, Any], params: Mapping[str, Any], inputs: Mapping[str, Any]
             ) -> list[tuple[Any, Mapping[str, Any], Any, Any, Callable[[str], tuple[str, bool]]]]:
    """``(model, its params, x, y, where each of its gradients goes)`` for every model with a
    loss in a case's configuration; empty when the configuration names none (a Siamese
    model's metric loss: its rounding is not modelled). A micro-batch case (``{"base": ...}``)
    is its base case on the joined batch: the step's gradient is the full batch's."""
    if isinstance(config.get("base"), Mapping):
        return _members(config["base"], params, _joined_micro_batches(inputs))
    if "pair" in config:
        pair = TiedPair.from_config(config["pair"])
        params_a, params_b = pair.split(params)
        shared = pair.shared_b()
        full_b = dict(params_b)
        for name_b, (name_a, transpose) in shared.items():
            full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        full_b = {name: full_b[name] for name in pair.model_b.parameter_shapes()}
        target_b = inputs["yb"] if "yb" in inputs else inputs["xb"]   # autoencoder: y is x
        return [(pair.model_a, params_a, inputs["xa"], inputs["ya"], lambda n: (f"A:{n}", False)),
                (pair.model_b, full_b, inputs["xb"], target_b,
                 lambda n: (f"A:{shared[n][0]}", shared[n][1]) if n in shared
                 else (f"B:{n}", False))]
    model_config = config.get("anchored", config).get("model")
    if not isinstance(model_config, Mapping) or "x" not in inputs or "y" not in inputs:
        return []
    model = Sequential.from_config(model_config)
    return [(model, params, inputs["x"], inputs["y"], lambda n: (n, False))]


def _joined_micro_batches(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"<name>": the micro-batches "<name>.<i>" concatenated along axis 0 in order of i}``."""
    parts: dict[str, dict[int, Any]] = {}
    for key, value in inputs.items():
        name, _, index = key.rpartition(".")
        if name and index.isdigit():
            parts.setdefault(name, {})[int(index)] = value
    return {name: np.concatenate([pieces[i] for i in sorted(pieces)])
            for name, pieces in parts.items()}


def loss_rounding(config: Mapping[str, Any], params: Mapping[str, Any],
                  inputs: Mapping[str, Any], relative: float, rng: np.random.Generator,
                  normaliser: bool = False) -> dict[Key, np.ndarray]:
    """The change of the loss and the gradients when the loss's upstream derivative
    ``dL/dout`` is off by ``relative`` times the magnitude of its terms (module docstring).

    Cross-entropy: ``(softmax(z) - onehot) / P`` and the loss ``max z + log(sum exp(z -
    max z)) - z_y``, both resolved to ``relative (1 + max|z|)`` per label position (the log
    term is added to, or the probabilities computed from, a number of size ``max|z|``); the
    ``P`` positions are the rows of the logits ``(N, ..., K)`` flattened to ``(P, K)``, each
    an example of its own (the loss is the mean over them). MSE:
    ``2 (out - y) / size``, terms ``2 (|out| + |y|) / size``, and the loss off by
    ``mean(2 |r| d + d**2)``, ``d = relative (|out| + |y|)``. The change is propagated exactly
    through the model's backward pass (``Sequential.vjp``). Signs are random per entry, or,
    with ``normaliser``, per example for cross-entropy: the error of the shared ``log_norm``
    moves every probability of an example the same way.
    """
    changes: dict[Key, np.ndarray] = {}
    for model, member_params, x, y, route in _members(config, params, inputs):
        out = model.forward(member_params, x)
        if model.loss_spec.config()["type"] == "SoftmaxCrossEntropy":
            # log_norm = max z + log(sum exp(z - max z)) holds the O(|z|) max: the log term,
            # and exp(z - log_norm) with it, are resolved only to u (1 + max|z|) per position.
            rows = out.reshape(-1, out.shape[-1])                               # (P, K)
            terms = 1.0 + np.max(np.abs(rows), axis=1, keepdims=True)          # (P, 1)
            loss_change = relative * float(np.mean(terms))
            if normaliser:
                # log_norm off by e scales every probability of the position by (1 - e):
                # the changes share one sign per position (they do not cancel in dout @ W).
                shifted = np.exp(rows - np.max(rows, axis=1, keepdims=True))
                probabilities = shifted / shifted.sum(axis=1, keepdims=True)    # (P, K)
                signs = np.where(rng.random((rows.shape[0], 1)) < 0.5, -1.0, 1.0)
                change = relative * terms / rows.shape[0] * probabilities * signs
                _, _, grads = model.vjp(member_params, x, change.reshape(out.shape))
                _add(changes, loss_change, grads, route)
                continue
            magnitude = np.broadcast_to(terms / rows.shape[0], rows.shape).reshape(out.shape)
        else:
            # The residual r = out - y is off by delta = relative (|out| + |y|); the mean of
            # r**2 then by mean(2 |r| delta + delta**2): quadratic near a fit, where the
            # perturbed points' linear spread alone would underestimate it.
            terms = np.abs(out) + np.abs(np.asarray(y, dtype=np.float64))
            magnitude = 2.0 * terms / out.size
            residual = np.abs(out - np.asarray(y, dtype=np.float64))
            delta = relative * terms
            loss_change = float(np.mean(2.0 * residual * delta + delta ** 2))
        signs = np.where(rng.random(out.shape) < 0.5, -1.0, 1.0)
        _, _, grads = model.vjp(member_params, x, relative * magnitude * signs)
        _add(changes, loss_change, grads, route)
    return changes


def _add(changes: dict[Key, np.ndarray], loss_change: float, grads: Mapping[str, np.ndarray],
         route: Callable[[str], tuple[str, bool]]) -> None:
    """Accumulate one member model's changes under the case's keys (a pair's "A:"/"B:")."""
    key = ("loss", "loss")
    changes[key] = changes.get(key, np.zeros(())) + loss_change
    for name, change in grads.items():
        target, transpose = route(name)
        change = change.T if transpose else change
        key = ("gradient", target)
        changes[key] = changes[key] + change if key in changes else change


def resolution_floors(evaluate: Evaluate, params: Mapping[str, Any], inputs: Mapping[str, Any],
                      dtype: str, *, reference: Any = None, seed: int = 0,
                      config: Mapping[str, Any] | None = None,
                      exact: Iterable[str] = ()) -> dict[Key, float]:
    """The floor of every tensor ``evaluate`` returns (the model of the module docstring).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(params, inputs) -> (loss, grads, outputs)``, in float64.
    params, inputs : mapping of str to array_like
        The point and the data.
    dtype : str
        "float64", "float32" or "tf32".
    reference : tuple, optional
        ``evaluate(params, inputs)`` if already computed.
    seed : int
        Of the perturbation signs (the floor is deterministic for a given seed).
    config : mapping, optional
        The case's configuration (``{"model": ...}``, ``{"pair": ...}``,
        ``{"anchored": ...}``): adds :func:`loss_rounding`; None leaves it out.
    exact : iterable of str
        Names of params / inputs computed exactly in every dtype (module docstring, "Exact
        points"): rounded to the hand-over dtype, never perturbed.

    Returns
    -------
    dict
        ``{(role, name): floor}`` for the loss, every gradient and every output.

    Raises
    ------
    ValueError
        For an unknown ``dtype`` or a negative ``seed``.
    """
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype: expected one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    seed = check_seed(seed, "seed")
    rng = np.random.default_rng(seed)
    if reference is None:
        reference = evaluate(params, inputs)
    expected = dict(tensors_of(reference))
    relative = FLOOR_ROUNDOFF_UNITS * UNIT_ROUNDOFF[dtype]
    points = [(rounded_to(params, dtype), rounded_to(inputs, dtype))]
    exact = _check_exact(exact, params, inputs)
    points += [(perturbed(params, relative, rng, exact), perturbed(inputs, relative, rng, exact))
               for _ in range(FLOOR_PERTURBATIONS)]
    spread = dict.fromkeys(expected, 0.0)
    for point_params, point_inputs in points:
        for key, value in tensors_of(evaluate(point_params, point_inputs)):
            if key in spread and value.shape == expected[key].shape:
                change = np.abs(value - expected[key])
                spread[key] = max(spread[key], float(np.max(change, initial=0.0)))
    if config is not None:
        elementwise = FLOOR_ROUNDOFF_UNITS * ELEMENTWISE_ROUNDOFF[dtype]
        for k in range(FLOOR_PERTURBATIONS):
            for key, change in loss_rounding(config, params, inputs, elementwise, rng,
                                             normaliser=k % 2 == 1).items():
                if key in spread:
                    spread[key] = max(spread[key], float(np.max(np.abs(change), initial=0.0)))
    return {key: FLOOR_SAFETY * value for key, value in spread.items()}


def _check_exact(exact: Iterable[str], params: Mapping[str, Any], inputs: Mapping[str, Any]
                 ) -> list[str]:
    """``exact`` as a list of names of ``params`` / ``inputs``; a ``ValueError`` for any other
    name (a misspelt name would silently leave its array perturbed)."""
    if isinstance(exact, str):
        raise TypeError(f"exact: expected a list of array names, got the string {exact!r}")
    exact = list(exact)
    unknown = [name for name in exact if name not in params and name not in inputs]
    if unknown:
        raise ValueError(f"exact: {unknown} are neither params {sorted(params)} nor inputs "
                         f"{sorted(inputs)}")
    return exact


def case_floors(case: Any, dtype: str, reference: Any = None) -> dict[tuple[str, str], float]:
    """The resolution floor of every tensor of a case, for ``dtype``.

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        The case; one without ``evaluate`` has its parameters perturbed only. The arrays its
        ``config["exact"]`` names (a probe's kink) are not perturbed.
    dtype : str
        "float64", "float32" or "tf32".
    reference : tuple, optional
        ``(loss, grads, outputs)`` at the case's point, if known.

    Returns
    -------
    dict
        ``{(role, name): floor}``, as :func:`resolution_floors`.

    Raises
    ------
    ValueError
        For an unknown ``dtype``, or a name in ``config["exact"]`` that is neither a
        parameter nor an input.

    Notes
    -----
    The floors are a pure function of the configuration, the point, the data, the arrays
    computed exactly, the reference and the dtype: they are remembered for the last
    :data:`FLOORS_REMEMBERED` such arguments (keyed by a SHA-256 of their bytes), so that a
    case compared again, or a golden folder verified again, does not derive them again. The
    reference is part of the key: another reference at the same point (another
    implementation behind the same configuration) gets floors of its own.
    """
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype: expected one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    if case.evaluate is not None:
        evaluate, inputs = case.evaluate, case.inputs
    else:
        def evaluate(p: Mapping[str, Any], _: Mapping[str, Any]) -> tuple:
            return (*case.loss_and_grads(p), case.outputs(p))
        inputs = {}
    exact = [name for name in _check_exact(case.config.get("exact", ()), case.params,
                                           case.inputs) if name in case.params or name in inputs]
    if reference is None:
        reference = evaluate(case.params, inputs)
    key = _floors_key(case, dtype, exact, reference, case.evaluate is not None)
    if key in _FLOORS:
        _FLOORS.move_to_end(key)
        return dict(_FLOORS[key])
    floors = resolution_floors(evaluate, case.params, inputs, dtype, reference=reference,
                               config=case.config if case.evaluate is not None else None,
                               exact=exact)
    _FLOORS[key] = floors
    while len(_FLOORS) > FLOORS_REMEMBERED:
        _FLOORS.popitem(last=False)
    return dict(floors)


#: How many results of :func:`case_floors` are remembered (least recently used dropped).
FLOORS_REMEMBERED = 1024
_FLOORS: OrderedDict[str, dict[Key, float]] = OrderedDict()


def _floors_key(case: Any, dtype: str, exact: list[str], reference: Any,
                with_data: bool) -> str:
    """A SHA-256 of everything :func:`case_floors` depends on: the configuration (as JSON),
    the dtype, the exact arrays, whether the data is perturbed too, the point, the data and
    the reference (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256(json.dumps(case.config, sort_keys=True, default=repr).encode())
    digest.update(json.dumps([dtype, sorted(exact), with_data]).encode())
    arrays = [("params", name, value) for name, value in case.params.items()]
    arrays += [("inputs", name, value) for name, value in case.inputs.items()]
    arrays += [("reference", "/".join(key), value) for key, value in tensors_of(reference)]
    for label, name, value in arrays:
        array = np.ascontiguousarray(value)
        digest.update(f"{label}|{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
