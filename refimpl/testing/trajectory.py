"""Trajectories: ``K`` training steps of an implementation against refimpl's, step by step.

The step capability
-------------------
An implementation under test that runs training steps has a method::

    impl.train_steps(params, batches) -> {"params": [K dicts], "losses": [K numbers],
                                          "grad_norms": [K numbers]}

for a step case (:class:`refimpl.testing.cases.steps.StepCase`; its ``config["steps"]`` says
the optimizer, the clipping and ``K``): ``params`` the starting point and ``batches`` ``K``
input dicts keyed like a gradient case's inputs (both handed over in the dtype under test,
fresh copies); it returns, after every step ``k = 1 .. K``, the parameters (keyed exactly like
``params``), the loss at the start of the step and the total gradient norm before clipping,
as NumPy arrays and numbers (:mod:`refimpl.testing.cases.steps` writes the step out).

The comparison rule, extended to trajectories
---------------------------------------------
Every step ``k`` has ``2 + P`` tensors: its loss, its gradient norm, and each of the ``P``
parameters after the step. Each is judged by the ordinary rule of
:mod:`refimpl.testing.comparison` (``limit = rtol * max|reference| + floor + atol``, fail iff
the worst entry is off by more), with two additions that make a step, not only a parameter,
the thing judged:

* **the step must be resolved**: a parameter that passes is still "inconclusive" when its
  limit is not below a third of the step's update ``max|theta_k - theta_{k-1}|`` (the
  reference's): then the dtype cannot tell this step's update from its half, its double or no
  update at all (a learning rate far below the dtype's resolution of the parameter), whatever
  the parameter's own scale. A wrong step is never inconclusive in float64 (its floors are
  ~1e-16 of the parameters, its rtol 1e-10);
* **an update that is structurally zero** (zero in the reference and in every perturbed
  trajectory below: a parameter no loss term and no decay touches) must be exactly zero: the
  implementation's parameter after the step must equal its parameter before, bit for bit.

The floors grow with the step, and they are derived, not guessed: the resolution floor of
:mod:`refimpl.testing.resolution` applied to the whole trajectory. A correct implementation
computing in a dtype of unit roundoff ``u`` runs, at best, the exact steps from a point
perturbed by a few units of roundoff — and at every step its gradient, its stored parameters
and its optimizer state are rounded again. So refimpl runs its own float64 trajectory (the
loop of :func:`refimpl.train_steps` through the base case's ``evaluate``) once as it is and
``FLOOR_PERTURBATIONS + 1`` more times:

* once with everything rounded to the hand-over dtype: the starting point and every batch,
  the optimizer's and the clipping's hyper-parameters (``1 - beta2`` of a float32 ``beta2 =
  0.999`` is off by 1.3e-5 relative: a float32 optimizer that forms its bias corrections in
  float32 steps with it), and after every step the parameters and every state entry;
* ``FLOOR_PERTURBATIONS`` times with everything scaled by ``1 + c u s`` instead (``c =
  FLOOR_ROUNDOFF_UNITS``, ``s = +-1`` from a fixed seed): the starting point, every batch, every
  hyper-parameter, every step's gradient changed further by the loss rounding of
  :func:`refimpl.testing.resolution.loss_rounding` (``dL/dout`` off by ``c u`` times its
  terms), and after every step every parameter that the step changed and every state entry.

A parameter that a step leaves unchanged is not rounded again (``p - 0`` is ``p`` in any
dtype). The floor of each tensor of step ``k`` is ``FLOOR_SAFETY`` times the largest change of
that tensor over those trajectories from the unrounded one (never from a trajectory under
test, so that a wrong reference cannot widen its own floors): the propagation through the
later steps — Adam dividing a gradient entry near zero by its own root mean square, momentum
adding old errors to new ones — is measured, not assumed. In float64 the floors stay at a few
units of roundoff of each tensor; in float32 they grow with ``k`` as the perturbations grow
along the trajectory.

Where it diverges
-----------------
:class:`TrajectoryReport` keeps one row per (step, tensor); its failure message starts with
the **first step where the implementation diverges** and the tensor that shows it
(:meth:`TrajectoryReport.first_divergence`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..optim import ClipGradNorm, Optimizer, gradient_norm, optimizer_from_config
from .cases import Case, get_case
from .cases.steps import StepCase
from .comparison import (
    RESOLVED_FRACTION,
    NotExpressible,
    TensorComparison,
    Tolerance,
    _structural,
    compare_tensor,
    resolve_tolerance,
    verdict_of,
)
from .resolution import (
    ELEMENTWISE_ROUNDOFF,
    FLOOR_PERTURBATIONS,
    FLOOR_ROUNDOFF_UNITS,
    FLOOR_SAFETY,
    HAND_OVER_DTYPE,
    UNIT_ROUNDOFF,
    loss_rounding,
    perturbed,
    rounded_to,
)

__all__ = ["RESULT_KEYS", "StepRow", "TrajectoryReport", "reference_trajectory",
           "trajectory_floors", "compare_trajectory", "compare_steps_with_oracle",
           "assert_steps_match_oracle", "hand_over_batches", "as_step_case", "StepFloors"]

#: The keys of what ``impl.train_steps`` returns.
RESULT_KEYS = ("params", "losses", "grad_norms")

#: A trajectory as the protocol returns it: ``{"params": [K dicts], "losses": [K],
#: "grad_norms": [K]}``.
Result = dict[str, Any]
Key = tuple[str, str]


def as_step_case(case: Any) -> StepCase:
    """A :class:`StepCase` from a step case or the name of a built-in one."""
    if isinstance(case, str):
        case = get_case(case)
    if not isinstance(case, StepCase):
        kind = case.kind if isinstance(case, Case) else type(case).__name__
        raise TypeError(f"case: expected a step case (kind 'steps', e.g. "
                        f"'steps-tied-lm-adamw-clip'), got {kind!r}")
    return case


def reference_trajectory(case: StepCase) -> Result:
    """refimpl's trajectory of a step case (:func:`refimpl.train_steps`), as the protocol
    returns one: parameters after every step, the losses and the gradient norms, float64."""
    run = case.trajectory()
    return {"params": run.params, "losses": [float(v) for v in run.losses],
            "grad_norms": [float(v) for v in run.grad_norms]}


def hand_over_batches(batches: Sequence[Mapping[str, Any]], dtype: str
                      ) -> list[dict[str, np.ndarray]]:
    """Fresh copies of every batch, float arrays in the hand-over dtype, integers as int64."""
    target = HAND_OVER_DTYPE[dtype]
    return [{name: np.array(value, dtype=target if np.asarray(value).dtype.kind == "f"
                            else np.asarray(value).dtype)
             for name, value in batch.items()} for batch in batches]


# --- the floors ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepFloors:
    """The floors of one step: ``floors[(role, name)]`` for ``("loss", "loss")``,
    ``("norm", "grad_norm")`` and ``("parameter", name)``; ``still`` the parameters whose
    update at this step is structurally zero (zero in refimpl's unrounded trajectory and in
    every floor trajectory)."""

    floors: Mapping[Key, float]
    still: frozenset[str]


#: Float fields of a configuration that choose a formula rather than scale one: never moved
#: (a clipping by the 1-norm rounded to 0.9999999999999998 is not a near-1-norm, and
#: ``ClipGradNorm`` refuses a norm below 1).
EXACT_HYPER = frozenset({"norm_type"})


def _moved_hyper(config: Mapping[str, Any], move: Any) -> dict[str, Any]:
    """A hyper-parameter configuration with every float moved by ``move`` (booleans, names,
    ints and the fields of :data:`EXACT_HYPER` as they are)."""
    moved: dict[str, Any] = {}
    for key, value in config.items():
        if key in EXACT_HYPER:
            moved[key] = value
        elif isinstance(value, float):
            moved[key] = move(value)
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            moved[key] = [move(v) for v in value]
        else:
            moved[key] = value
    return moved


class _Rounding:
    """One floor trajectory's rounding: to the hand-over dtype (``rng`` None) or by ``1 + c u
    s`` with random signs. Each gradient is evaluated at a point moved by the products'
    roundoff (:data:`~refimpl.testing.resolution.UNIT_ROUNDOFF`: TF32's 10-bit product inputs);
    the hyper-parameters, the stored parameters and the optimizer's state by the storage's
    (:data:`~refimpl.testing.resolution.ELEMENTWISE_ROUNDOFF`: float32 for TF32)."""

    def __init__(self, dtype: str, rng: np.random.Generator | None, exact: bool = False
                 ) -> None:
        self.dtype, self.rng, self.exact = dtype, rng, exact
        self.products = FLOOR_ROUNDOFF_UNITS * UNIT_ROUNDOFF[dtype]
        self.storage = FLOOR_ROUNDOFF_UNITS * ELEMENTWISE_ROUNDOFF[dtype]

    def _sign(self) -> float:
        return 1.0 if self.rng.random() < 0.5 else -1.0

    def scalar(self, value: float) -> float:
        """A hyper-parameter as the dtype holds it."""
        if self.exact:
            return value
        if self.rng is None:
            return float(HAND_OVER_DTYPE[self.dtype](value))
        return value * (1.0 + self.storage * self._sign())

    def stored(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Arrays as the dtype stores them."""
        if self.exact:
            return {name: np.asarray(value) for name, value in arrays.items()}
        if self.rng is None:
            return rounded_to(arrays, self.dtype)
        return perturbed(arrays, self.storage, self.rng)

    def point(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Arrays as one gradient evaluation's products see them (a fresh rounding each time)."""
        if self.exact:
            return {name: np.asarray(value) for name, value in arrays.items()}
        if self.rng is None:
            return rounded_to(arrays, self.dtype)
        return perturbed(arrays, self.products, self.rng)

    def changed(self, new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
        """The parameters after a step, each entry the step changed stored again."""
        moved = self.stored(new)
        return {key: np.where(new[key] != old[key], moved[key], new[key]) for key in new}

    def state(self, state: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Every array of the optimizer's state stored; the step counts as they are."""
        return {key: {name: value if name == "step" else self.stored({"v": value})["v"]
                      for name, value in entry.items()} for key, entry in state.items()}


def _floor_trajectory(case: StepCase, rounding: _Rounding
                      ) -> tuple[dict[str, np.ndarray], list[dict], list[float], list[float]]:
    """One trajectory of the floor model (module docstring): ``(start, params after every
    step, losses, norms)``, computed in float64 through the base case's ``evaluate``."""
    steps = case.config["steps"]
    optimizer: Optimizer = optimizer_from_config(_moved_hyper(steps["optimizer"],
                                                              rounding.scalar))
    clip = (None if steps["clip"] is None else
            ClipGradNorm.from_config(_moved_hyper(steps["clip"], rounding.scalar)))
    params = start = rounding.stored(case.params)
    state = None
    trajectory, losses, norms = [], [], []
    for index, inputs in enumerate(case.batches):
        point, data = rounding.point(params), rounding.point(inputs)
        loss, grads, _ = case.evaluate(point, data)
        grads = {key: np.asarray(value, dtype=np.float64) for key, value in grads.items()}
        loss = float(loss)
        if rounding.rng is not None and not rounding.exact:
            changes = loss_rounding(case.config, point, data,
                                    FLOOR_ROUNDOFF_UNITS * ELEMENTWISE_ROUNDOFF[rounding.dtype],
                                    rounding.rng, normaliser=index % 2 == 1)
            for (role, name), change in changes.items():
                if role == "loss":
                    loss += float(change) * rounding._sign()
                elif name in grads:
                    grads[name] = grads[name] + change
        if clip is None:
            norm = gradient_norm(grads)
        else:
            grads, norm = clip.clip(grads)
        new, state = optimizer.step(params, grads, state)
        params, state = rounding.changed(new, params), rounding.state(state)
        trajectory.append(params)
        losses.append(loss)
        norms.append(norm)
    return start, trajectory, losses, norms


def _fingerprint(case: StepCase) -> str:
    """A digest of everything the floors depend on: the configuration (optimizer and clipping
    included), the start and every batch."""
    digest = hashlib.sha256(json.dumps(case.config, sort_keys=True).encode())
    for arrays in (case.params, *case.batches):
        for name, value in arrays.items():
            array = np.ascontiguousarray(value)
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


#: Floors already derived in this process, by (fingerprint, dtype, seed): a golden folder's
#: writing and verification, and a conformance run's rows, derive each case's once (a step
#: case's configuration describes its model, so equal fingerprints are equal floors).
_FLOORS: dict[tuple[str, str, int], tuple[StepFloors, ...]] = {}


def trajectory_floors(case: StepCase, dtype: str, seed: int = 0) -> list[StepFloors]:
    """The floor of every tensor of every step of a step case, for ``dtype`` (module
    docstring).

    The changes are measured from refimpl's own unrounded trajectory of the same loop, never
    from a trajectory under test: a wrong reference cannot widen its own floors.

    Parameters
    ----------
    case : StepCase
    dtype : str
        "float64", "float32" or "tf32".
    seed : int
        Of the perturbation signs (the floors are deterministic for a given seed).

    Returns
    -------
    list of StepFloors
        One per step, in order.
    """
    dtype, _ = resolve_tolerance(dtype)
    key = (_fingerprint(case), dtype, seed)
    if key not in _FLOORS:
        _FLOORS[key] = tuple(_derive_floors(case, dtype, seed))
    return list(_FLOORS[key])


def _derive_floors(case: StepCase, dtype: str, seed: int) -> list[StepFloors]:
    """:func:`trajectory_floors`, computed."""
    rng = np.random.default_rng(seed)
    _, exact, exact_losses, exact_norms = _floor_trajectory(case, _Rounding(dtype, None, True))
    runs = [_floor_trajectory(case, _Rounding(dtype, None))]
    runs += [_floor_trajectory(case, _Rounding(dtype, rng)) for _ in range(FLOOR_PERTURBATIONS)]
    result = []
    previous = {key: np.asarray(value, dtype=np.float64) for key, value in case.params.items()}
    for k, expected in enumerate(exact):
        spread = {("loss", "loss"): 0.0, ("norm", "grad_norm"): 0.0}
        spread.update({("parameter", key): 0.0 for key in expected})
        moved = {key: bool(np.any(expected[key] != previous[key])) for key in expected}
        for start, params, losses, norms in runs:
            spread["loss", "loss"] = max(spread["loss", "loss"], abs(losses[k] - exact_losses[k]))
            spread["norm", "grad_norm"] = max(spread["norm", "grad_norm"],
                                              abs(norms[k] - exact_norms[k]))
            before = params[k - 1] if k else start
            for key, value in expected.items():
                change = np.abs(params[k][key] - value)
                spread["parameter", key] = max(spread["parameter", key],
                                               float(np.max(change, initial=0.0)))
                moved[key] = moved[key] or bool(np.any(params[k][key] != before[key]))
        result.append(StepFloors(
            MappingProxyType({key: FLOOR_SAFETY * value for key, value in spread.items()}),
            frozenset(key for key, value in moved.items() if not value)))
        previous = expected
    return result


# --- one row per (step, tensor) ------------------------------------------------------------------

#: The label of each role in a trajectory report.
_ROLE_LABELS = {"loss": "loss", "norm": "gradient norm"}


@dataclass(frozen=True)
class StepRow:
    """One tensor of one step (1-based) against the reference.

    Attributes
    ----------
    step : int
        1 .. K (0 for a problem of the whole result).
    comparison : TensorComparison
        The ordinary comparison of the tensor (role "loss", "norm" or "parameter").
    update : float
        For a parameter, the reference's update at this step, ``max|theta_k - theta_{k-1}|``
        (nan for a loss or norm).
    reason : str
        Why a row that the ordinary rule passes is not a pass ("" otherwise).
    """

    step: int
    comparison: TensorComparison
    update: float = math.nan
    reason: str = ""

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    @property
    def what(self) -> str:
        """The tensor: "loss", "gradient norm" or "parameter 'fc1.weight'"."""
        role, name = self.comparison.role, self.comparison.name
        return _ROLE_LABELS.get(role) or f"{role} {name!r}"

    @property
    def label(self) -> str:
        """The step and the tensor, e.g. ``"step 2: parameter 'fc1.weight'"``."""
        return f"step {self.step}: {self.what}" if self.step else self.what

    def describe(self, with_step: bool = True) -> str:
        """One line: the tensor (and its step), its worst entry against the limit, or why it
        is not judged a pass."""
        row = self.comparison
        head = self.label if with_step else self.what
        if self.reason:
            return f"{head}: {self.reason}"
        if row.problem:
            return f"{head}: {row.problem}"
        if row.verdict == "inconclusive":
            return f"{head}: {row.describe().split(': ', 1)[1]}"
        sign = ">" if row.verdict == "fail" else "<="
        if row.shape == ():
            return (f"{head}: implementation {row.actual!r}, oracle {row.expected!r}; error "
                    f"{row.max_abs_error:.3e} {sign} limit {row.limit:.3e} (floor "
                    f"{row.floor:.3e})")
        update = (f", the step's update max|theta_k - theta_(k-1)| {self.update:.3e}"
                  if math.isfinite(self.update) else "")
        return (f"{head} shape {row.shape}: worst index {row.worst_index}: implementation "
                f"{row.actual!r}, oracle {row.expected!r}; max abs error "
                f"{row.max_abs_error:.3e} {sign} limit {row.limit:.3e} (scale max|oracle| "
                f"{row.scale:.3e}, floor {row.floor:.3e}{update})")

    def ratio(self) -> float:
        """``max abs error / limit`` (inf for a structural problem or an exact comparison
        that failed)."""
        row = self.comparison
        if row.problem or not math.isfinite(row.max_abs_error):
            return math.inf
        if row.limit > 0:
            return row.max_abs_error / row.limit
        return 0.0 if row.max_abs_error == 0 else math.inf


@dataclass(frozen=True)
class TrajectoryReport:
    """A trajectory compared step by step (module docstring).

    Attributes
    ----------
    case, dtype : str
    tolerance : refimpl.testing.comparison.Tolerance
    steps : int
        ``K``.
    rows : tuple of StepRow
        Step by step: the loss, the gradient norm, every parameter.
    problems : tuple of str
        What is wrong with the returned value as a whole (not a dict, ``K`` missing, ...).
    """

    case: str
    dtype: str
    tolerance: Tolerance
    steps: int
    rows: tuple[StepRow, ...]
    problems: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """"fail" if anything failed, else "inconclusive" if any row was, else "pass"."""
        return verdict_of(self.rows, self.problems)

    @property
    def ok(self) -> bool:
        """True only when every row passed."""
        return self.verdict == "pass"

    @property
    def failures(self) -> tuple[StepRow, ...]:
        """The failed rows, in step order (within a step, structural problems first, then the
        largest error relative to its limit)."""
        bad = [row for row in self.rows if row.verdict == "fail"]
        return tuple(sorted(bad, key=lambda row: (row.step, not row.comparison.problem,
                                                  -_finite(row.ratio()))))

    @property
    def inconclusive(self) -> tuple[StepRow, ...]:
        return tuple(row for row in self.rows if row.verdict == "inconclusive")

    def first_divergence(self) -> StepRow | None:
        """The worst failing row of the first step where a row fails (None when none does)."""
        failures = self.failures
        return failures[0] if failures else None

    def worst(self) -> tuple[float, str]:
        """``error / limit`` and the label of the row a one-line report names: for a failed
        trajectory the first divergence (:meth:`first_divergence`), else the largest ratio
        (inf for a problem of the whole result)."""
        if self.problems:
            return math.inf, ""
        if not self.rows:
            return math.nan, ""
        first = self.first_divergence()
        row = first if first is not None else max(self.rows, key=lambda r: _finite(r.ratio()))
        return row.ratio(), row.label

    def summary(self) -> str:
        """The first step where the implementation diverges and the tensor, or the verdict."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return self.problems[0] + more
        first = self.first_divergence()
        if first is not None:
            others = len(self.failures) - 1
            steps = sorted({row.step for row in self.failures})
            more = (f" (and {others} more failing tensor(s), at steps "
                    f"{', '.join(map(str, steps))})" if others else "")
            return (f"diverges first at step {first.step} of {self.steps}: "
                    f"{first.describe(with_step=False)}{more}")
        if self.verdict == "inconclusive":
            return ("unresolved in this dtype: "
                    + ", ".join(row.label for row in self.inconclusive))
        return f"{self.steps} steps, {len(self.rows)} tensors match"

    def __str__(self) -> str:
        rule = (f"dtype {self.dtype}: per step and tensor, fail iff max|impl - oracle| > rtol * "
                f"max|oracle| + floor + atol, rtol={self.tolerance.rtol:g}, "
                f"atol={self.tolerance.atol:g}; a parameter is resolved only when its limit is "
                f"below a third of the step's update")
        lines = [f"case {self.case!r} ({self.steps} steps): {self.verdict} ({rule})",
                 f"  {self.summary()}"]
        lines += [f"  {problem}" for problem in self.problems[1:]]
        lines += [f"  {row.describe()}" for row in self.failures[1:]]
        if self.verdict != "fail":
            lines += [f"  {row.describe()}" for row in self.inconclusive]
        return "\n".join(lines)


def _finite(value: float) -> float:
    return value if not math.isnan(value) else math.inf


# --- comparing ------------------------------------------------------------------------------------

def _sequence(value: Any, count: int, what: str) -> tuple[list[Any] | None, str]:
    """``value`` as a list of ``count`` items, or a problem."""
    if isinstance(value, Mapping) or isinstance(value, (str, bytes)):
        return None, f"{what}: expected a list of {count} (one per step), got a " \
                     f"{type(value).__name__}"
    try:
        items = list(value)
    except TypeError:
        return None, f"{what}: expected a list of {count} (one per step), got " \
                     f"{type(value).__name__}"
    if len(items) != count:
        return None, f"{what}: expected {count} entries (one per step), got {len(items)}"
    return items, ""


def compare_trajectory(result: Any, case: StepCase, dtype: str, *, start: Mapping[str, Any],
                       reference: Result | None = None,
                       floors: Sequence[StepFloors] | None = None,
                       rtol: float | None = None, atol: float | None = None) -> TrajectoryReport:
    """Judge what ``impl.train_steps`` returned against refimpl's trajectory (module
    docstring).

    Parameters
    ----------
    result : object
        What the implementation returned.
    case : StepCase
    dtype : str
        The dtype the implementation computed in.
    start : mapping
        The parameters handed to the implementation (the parameters "before step 1" of an
        update that is structurally zero).
    reference, floors : optional
        :func:`reference_trajectory` and :func:`trajectory_floors` of the case, if computed.
    rtol, atol : float, optional
        Overrides of the dtype's tolerance (added to the floors, never replacing them).

    Returns
    -------
    TrajectoryReport
    """
    dtype, tolerance = resolve_tolerance(dtype, rtol, atol)
    reference = reference_trajectory(case) if reference is None else reference
    floors = trajectory_floors(case, dtype) if floors is None else floors
    count = len(reference["params"])
    names = list(case.params)

    def report(rows: Sequence[StepRow] = (), problems: Sequence[str] = ()) -> TrajectoryReport:
        return TrajectoryReport(case.name, dtype, tolerance, count, tuple(rows), tuple(problems))

    if not isinstance(result, Mapping):
        return report(problems=[f"train_steps returned {type(result).__name__}; expected a "
                                f"dict {{'params': [{count} dicts], 'losses': [{count}], "
                                f"'grad_norms': [{count}]}}"])
    problems = []
    keys = [str(key) for key in result]
    if sorted(keys) != sorted(RESULT_KEYS):
        problems.append(f"train_steps returned the keys {sorted(keys)}; expected exactly "
                        f"{list(RESULT_KEYS)}")
    sequences = {}
    for key in RESULT_KEYS:
        if key in result:
            sequences[key], problem = _sequence(result[key], count, f"train_steps()[{key!r}]")
            if problem:
                problems.append(problem)
    if problems:
        return report(problems=problems)
    float64 = dtype == "float64"
    rows: list[StepRow] = []
    before: Mapping[str, Any] = start
    for k in range(count):
        step = k + 1
        floor = floors[k].floors
        for role, name, key in (("loss", "loss", "losses"), ("norm", "grad_norm", "grad_norms")):
            value = sequences[key][k]
            rows.append(StepRow(step, _scalar_row(role, name, reference[key][k], value,
                                                  tolerance, floor[role, name], float64)))
        params = sequences["params"][k]
        if not isinstance(params, Mapping):
            rows.append(StepRow(step, _structural(
                "parameter", "params", (), f"train_steps()['params'][{k}]: expected a dict "
                f"{{parameter name: array}}, got {type(params).__name__}")))
            before = {}
            continue
        extra = sorted(str(key) for key in params if key not in reference["params"][k])
        if extra:
            rows.append(StepRow(step, _structural(
                "parameter", "params", (), f"unexpected parameter(s) {extra} after step "
                f"{step}; the parameters are {names}")))
        for name in names:
            expected = reference["params"][k][name]
            if name not in params:
                rows.append(StepRow(step, _structural("parameter", name, np.shape(expected),
                                                      "missing")))
                continue
            previous = reference["params"][k - 1][name] if k else case.params[name]
            rows.append(_parameter_row(step, name, expected, previous, params[name],
                                       before.get(name), tolerance, floor["parameter", name],
                                       name in floors[k].still, float64))
        before = params
    return report(rows)


def _scalar_row(role: str, name: str, expected: float, actual: Any, tolerance: Tolerance,
                floor: float, float64: bool) -> TensorComparison:
    """A loss or a norm: one number (a Python float is float64 already)."""
    try:
        value = np.asarray(actual)
    except Exception:  # noqa: BLE001 - anything a foreign implementation returns
        value = None
    if value is None or value.size != 1:
        return _structural(role, name, (), f"expected one number, got {actual!r:.80}")
    return compare_tensor(role, name, np.asarray(expected, dtype=np.float64),
                          value.reshape(()), tolerance,
                          require_float64=float64 and not isinstance(actual, float), floor=floor)


def _parameter_row(step: int, name: str, expected: np.ndarray, previous: np.ndarray,
                   actual: Any, actual_before: Any, tolerance: Tolerance, floor: float,
                   still: bool, float64: bool) -> StepRow:
    """A parameter after a step: the ordinary rule, then the step's resolution (or, for a
    structurally zero update, the implementation's own parameter unchanged bit for bit)."""
    row = compare_tensor("parameter", name, expected, actual, tolerance,
                         require_float64=float64, floor=floor)
    update = float(np.max(np.abs(np.asarray(expected) - np.asarray(previous)), initial=0.0))
    if row.verdict == "fail" or row.problem:
        return StepRow(step, row, update)
    if still:
        same = actual_before is not None and np.shape(actual_before) == np.shape(actual) \
            and np.array_equal(np.asarray(actual), np.asarray(actual_before))
        if not same:
            return StepRow(step, dataclasses.replace(row, ok=False, verdict="fail"), update,
                           "the step changed it, but no loss term and no decay moves it at "
                           "this step (its update is exactly zero in refimpl and in every "
                           "perturbed trajectory): it must come back unchanged, bit for bit")
        return StepRow(step, row, update)
    if row.limit >= RESOLVED_FRACTION * update and row.verdict == "pass":
        return StepRow(step, dataclasses.replace(row, ok=False, verdict="inconclusive"), update,
                       f"inconclusive: the limit {row.limit:.3e} (resolution floor "
                       f"{row.floor:.3e}) is not below a third of the step's update "
                       f"max|theta_k - theta_(k-1)| {update:.3e}: this dtype cannot resolve "
                       f"the update at this step (max abs error {row.max_abs_error:.3e})")
    return StepRow(step, row, update)


def run_steps(impl: Any, case: StepCase, dtype: str) -> Any:
    """Hand the case's point and batches to ``impl.train_steps`` in ``dtype``; its return
    value. A missing capability is :class:`NotExpressible`."""
    train = getattr(impl, "train_steps", None)
    if not callable(train):
        raise NotExpressible("the implementation has no train_steps(params, batches) (the step "
                             "capability of the builder protocol)")
    target = HAND_OVER_DTYPE[dtype]
    params = {name: np.array(value, dtype=target) for name, value in case.params.items()}
    return train(params, hand_over_batches(case.batches, dtype))


def compare_steps_with_oracle(impl: Any, case: Any, *, dtype: Any = "float64",
                              rtol: float | None = None, atol: float | None = None
                              ) -> TrajectoryReport:
    """Run ``impl.train_steps`` on a step case and compare its trajectory with refimpl's.

    Parameters
    ----------
    impl : object
        With ``train_steps(params, batches)`` (module docstring).
    case : StepCase or str
        A step case or the name of a built-in one (``refimpl check --list``: ``steps-*``).
    dtype : str
        "float64", "float32" or "tf32": the params and float inputs are handed over in it.
    rtol, atol : float, optional
        Overrides of the dtype's tolerance, added to the derived floors.

    Returns
    -------
    TrajectoryReport

    Raises
    ------
    refimpl.testing.NotExpressible
        When ``impl`` has no ``train_steps``.
    """
    dtype_name, _ = resolve_tolerance(dtype, rtol, atol)
    case = as_step_case(case)
    start = {name: np.array(value, dtype=HAND_OVER_DTYPE[dtype_name]).astype(np.float64)
             for name, value in case.params.items()}
    result = run_steps(impl, case, dtype_name)
    return compare_trajectory(result, case, dtype_name, start=start, rtol=rtol, atol=atol)


def assert_steps_match_oracle(impl: Any, case: Any, *, dtype: Any = "float64",
                              rtol: float | None = None, atol: float | None = None,
                              allow_inconclusive: bool = False) -> TrajectoryReport:
    """Assert that ``impl.train_steps`` reproduces refimpl's trajectory of a step case.

    The parameters are those of :func:`compare_steps_with_oracle`, and
    ``allow_inconclusive`` as for :func:`refimpl.testing.assert_matches_oracle`.

    Raises
    ------
    AssertionError
        Naming the first step where the implementation diverges and the tensor, its worst
        entry and the limit; or, when nothing failed but some step is unresolved, saying so.

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> case = get_case("steps-tied-soft-adam")
    >>> class Mine:                 # refimpl itself stands in for your training loop
    ...     def train_steps(self, params, batches):
    ...         run = case.trajectory(params, batches)
    ...         return {"params": run.params, "losses": list(run.losses),
    ...                 "grad_norms": list(run.grad_norms)}
    >>> assert_steps_match_oracle(Mine(), case).ok
    True
    """
    __tracebackhide__ = True   # pytest: the user's test line, not this helper, is the failure
    report = compare_steps_with_oracle(impl, case, dtype=dtype, rtol=rtol, atol=atol)
    if report.verdict == "fail" or (report.verdict == "inconclusive" and not allow_inconclusive):
        raise AssertionError(str(report))
    return report
