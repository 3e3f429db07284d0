"""Assertions that check *another* implementation's loss and gradients against refimpl.

The implementation protocol
---------------------------
An implementation under test is any callable::

    impl(params, inputs) -> (loss, grads)            # or (loss, grads, outputs)

- ``params``: ``dict[str, np.ndarray]`` keyed like a PyTorch ``state_dict``
  (``"fc1.weight"`` of shape ``(out, in)``, ...); tied pairs use the prefixes ``"A:"`` / ``"B:"``.
  Fresh copies, cast to the ``dtype`` under test (float arrays only); the callable may keep
  or modify them.
- ``inputs``: ``dict[str, np.ndarray]``: ``{"x": ..., "y": ...}`` for one model (``x`` batch
  first, ``(N, D)`` or ``(N, C, H, W)``; ``y`` int64 class labels for cross-entropy, float
  targets for MSE), ``{"xa", "ya", "xb", "yb"}`` for a tied pair. Float inputs are cast to the
  ``dtype`` under test; integer labels stay int64.
- returns ``loss``: a number (Python float, NumPy scalar or 0-d / 1-element array) and
  ``grads``: a mapping with exactly the keys of ``params``, each array of its parameter's
  shape. Optionally a third element ``outputs``, a mapping such as ``{"out": logits}``,
  compared with the reference's forward outputs.

Everything must be NumPy: a PyTorch user returns ``loss.item()`` and
``{name: p.grad.detach().cpu().numpy() for name, p in module.named_parameters()}``.

The comparison rule (tolerances live in :data:`DTYPE_TOLERANCES`, nowhere else)
-------------------------------------------------------------------------------
Every compared tensor (the loss, each gradient, each output) gets one of three verdicts:
**pass**, **fail** or **inconclusive**. With ``r`` the reference and ``c`` the
implementation's value, both as float64::

    scale = max_i |r_i|                                   # the reference tensor's scale
    limit = rtol * scale + floor + atol                   # atol: 0 unless the caller passes one
    fail          iff  max_i |c_i - r_i| > limit
    inconclusive  iff  not fail and limit >= scale / 3
    pass          otherwise

except that a reference that is exactly zero with a zero floor (structurally zero: zero at
every perturbed point too, e.g. behind a dead ReLU) is compared exactly: pass iff the candidate
is exactly zero. A report's verdict is "fail" if any tensor failed, else "inconclusive" if
any was, else "pass"; ``report.ok`` is True only for "pass". Inconclusive is never a pass:
the assertions raise on it unless the caller passes ``allow_inconclusive=True``.

``floor`` is the tensor's **resolution floor** at this point for this dtype: how finely any
implementation computing in that dtype can reproduce it. It is derived from the point, not a
constant (:mod:`refimpl.resolution`, where the model is written down): with refimpl's own
float64 reference, the largest change of the tensor over the point rounded to the hand-over
dtype and ``FLOOR_PERTURBATIONS = 4`` points whose every float parameter and input (targets and
anchors included, labels not) is scaled by ``1 + c u s`` (``c = 2``, ``s = +-1`` from a fixed
seed, ``u`` the dtype's unit roundoff: 2**-53, 2**-24, 2**-11 for TF32's product inputs), and
of the loss and its upstream derivative ``dL/dout`` off by ``c u`` times the size of their
terms (for cross-entropy ``1 + max|logit|`` per example: ``log_norm`` carries the largest
logit; float32's ``u`` for TF32, whose softmax and loss are float32) propagated through the
backward pass; times ``FLOOR_SAFETY = 4``. The backward-error model: a correct implementation
returns at best the exact result at a point perturbed by a few units of roundoff.

Why a third: a passing tensor must be told apart from its half, its double, its negation and
zero even when the candidate itself is off by up to ``limit``. Halving moves the worst entry
by ``scale / 2``, so the halved candidate is off by at least ``scale / 2 - limit / 2``, which
exceeds ``limit`` only when ``limit < scale / 3``. Above that the dtype cannot resolve the
tensor at this point: near a fit (gradients ~1e-8, float32 rounding ~1e-7) no implementation
can be judged, and the answer is "inconclusive", never a pass. What to do then: draw another
point (farther from a fit, away from kinks and saturation), or compare in float64.

The scale is the *reference's* largest entry, never the candidate's (the reference is the
trusted side: the tolerance must not depend on the values under test), and it is per tensor
rather than per entry: a gradient entry that is ~0 is computed to an absolute accuracy of
about ``eps * scale`` by any implementation, so an entry-wise relative error would blow up
there without meaning anything. ``rtol`` / ``atol`` overrides (finite, >= 0) add to the floor:
no override can turn an unresolvable tensor into a pass. There is no default ``atol``: a
constant absolute term is what let a near-fit tensor with every gradient negated pass.

Why these defaults
~~~~~~~~~~~~~~~~~~
``float64`` (rtol 1e-10): two correct float64 implementations differ only by summation order
(BLAS blocking, a different reduction tree). A length-``n`` sum accumulates at most ~``n * u``
relative rounding (``u = 1.1e-16``), typically ``sqrt(n) * u``; over several layers and
``n`` up to ~1e5 that stays below ~1e-11. 1e-10 leaves one order of margin, yet it is ~1000
times tighter than anything a float32 intermediate (``u = 6e-8``) or a wrong formula can pass.

``float32`` (rtol 1e-5): unit roundoff ``u = 6.0e-8``; with the same reasoning a few layers
of sums of tens to hundreds of terms give ~1e-6, plus the rounding of the inputs and
parameters to float32 (the reference is computed at the exact float64 values). Observed on the
built-in cases with an independent float32 implementation (``tests/independent_numpy.py``):
at most 3.0e-6, on a bias gradient of scale 0.014 summed from cancelling O(1) terms; typically
~2e-7. (float64 against float64: at most 3.4e-15.)

``tf32`` (rtol 1e-2): NVIDIA TF32 tensor cores round the *inputs* of every matrix product
and convolution to a 10-bit mantissa (``u = 2**-11 = 4.9e-4``) and accumulate in float32;
each product then carries ~1e-3 relative error, which compounds over the layers of the
forward and the backward pass (observed: 4e-4 to 3.6e-3 on the built-in cases with a simulated
TF32 — float32 with every product's inputs rounded to 10 mantissa bits). Use it for
``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``.

The floor's constants (``c = 2``, ``K = 4``, safety 4) were measured, over drawn cases and
points near a fit built from them, against an independent float32 / simulated-TF32
implementation: where the floor dominates the limit, the implementation's error was at most
1.3 (float32) and 1.5 (TF32) times the raw perturbation spread (99th percentile 0.71 / 0.60),
so safety 4 leaves a factor of ~3; on the catalogue's ordinary points the largest TF32 floor
is 0.14 of its tensor's scale, so a floor several times larger would start to make ordinary
TF32 points inconclusive. Cost: 5 extra float64 evaluations of the reference and 4
vector-Jacobian products per comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import check_seed, check_tolerance
from .gradcheck import Tolerance
from .resolution import HAND_OVER_DTYPE, resolution_floors, tensors_of

__all__ = [
    "DTYPE_TOLERANCES", "Tolerance", "Implementation", "TensorComparison", "ComparisonReport",
    "compare_tensor", "compare_with_oracle", "assert_matches_oracle", "compare_with_golden",
    "assert_matches_golden", "resolve_tolerance", "case_floors", "unresolved_tensors", "VERDICTS",
    "RESOLVED_FRACTION",
]

#: Default tolerances per dtype of the implementation under test: the one place they are set.
#: Rule: ``limit = rtol * max|oracle| + floor + atol`` per tensor (module docstring).
DTYPE_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-10, atol=0.0),
    "float32": Tolerance(rtol=1e-5, atol=0.0),
    "tf32": Tolerance(rtol=1e-2, atol=0.0),
}

#: A tensor is resolved (can pass) only when its tolerance is below this fraction of its
#: scale; at or above it the verdict is "inconclusive" (module docstring).
RESOLVED_FRACTION = 1.0 / 3.0

#: Implementation protocol: ``impl(params, inputs) -> (loss, grads)`` or
#: ``(loss, grads, outputs)`` (see the module docstring).
Implementation = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], tuple[Any, ...]]


def resolve_tolerance(dtype: Any = "float64", rtol: float | None = None,
                      atol: float | None = None) -> tuple[str, Tolerance]:
    """The dtype name and the tolerance for it, with optional overrides.

    ``dtype``: "float64", "float32", "tf32", or ``np.float64`` / ``np.float32``. ``rtol`` and
    ``atol`` (None: the default of :data:`DTYPE_TOLERANCES`) must be finite and >= 0.
    """
    name = dtype if isinstance(dtype, str) else None
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    if name not in DTYPE_TOLERANCES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_TOLERANCES)}, got {dtype!r}")
    default = DTYPE_TOLERANCES[name]
    return name, Tolerance(default.rtol if rtol is None else check_tolerance(rtol, "rtol"),
                           default.atol if atol is None else check_tolerance(atol, "atol"))


#: The three verdicts of a compared tensor (and of a report: fail wins over inconclusive).
VERDICTS = ("pass", "fail", "inconclusive")


@dataclass(frozen=True)
class TensorComparison:
    """One compared tensor: the loss (role "loss"), a gradient, or a forward output."""

    role: str                       # "loss" | "gradient" | "output"
    name: str
    shape: tuple[int, ...]
    ok: bool                        # verdict == "pass"
    max_abs_error: float
    scale: float                    # max |reference|
    limit: float                    # rtol * scale + floor + atol
    worst_index: tuple[int, ...]
    actual: float                   # the implementation's value at the worst index
    expected: float                 # the reference value there
    problem: str = ""               # a structural problem (missing, shape, dtype, non-finite)
    verdict: str = "fail"           # "pass" | "fail" | "inconclusive"
    floor: float = 0.0              # the resolution floor of this tensor at this point

    @property
    def label(self) -> str:
        return "loss" if self.role == "loss" else f"{self.role} {self.name!r}"

    @property
    def relative_error(self) -> float:
        if self.scale > 0:
            return self.max_abs_error / self.scale
        return 0.0 if self.max_abs_error == 0 else math.inf

    def describe(self) -> str:
        if self.problem:
            return f"{self.label}: {self.problem}"
        values = (f"worst index {self.worst_index}: implementation {self.actual!r}, oracle "
                  f"{self.expected!r}; max abs error {self.max_abs_error:.3e}")
        if self.verdict == "inconclusive":
            return (f"{self.label} shape {self.shape}: inconclusive: the tolerance "
                    f"{self.limit:.3e} (resolution floor {self.floor:.3e}) is not below a "
                    f"third of the oracle's scale max|oracle| {self.scale:.3e}: at this point "
                    f"this dtype cannot resolve the tensor, so no implementation can be judged "
                    f"on it ({values})")
        sign = "<=" if self.ok else ">"
        return (f"{self.label} shape {self.shape}: {values} {sign} tolerance {self.limit:.3e} "
                f"(scale max|oracle| {self.scale:.3e}, resolution floor {self.floor:.3e}, "
                f"relative error {self.relative_error:.3e})")


def _structural(role: str, name: str, shape: tuple[int, ...], problem: str) -> TensorComparison:
    nan = float("nan")
    return TensorComparison(role, name, tuple(shape), False, nan, nan, nan, (), nan, nan, problem,
                            "fail")


def _verdict(max_error: float, scale: float, floor: float, limit: float) -> str:
    """The rule of the module docstring, in one place."""
    if max_error > limit:
        return "fail"
    if scale == 0.0 and floor == 0.0:
        # Structurally zero (zero at every perturbed point too): judged exactly.
        return "pass" if max_error == 0.0 else "fail"
    if limit >= scale * RESOLVED_FRACTION:
        return "inconclusive"
    return "pass"


def compare_tensor(role: str, name: str, expected: Any, actual: Any, tolerance: Tolerance,
                   *, require_float64: bool = False, floor: float = 0.0) -> TensorComparison:
    """Compare one tensor by the module's rule; never raises on a mismatch, reports it.

    ``floor``: the tensor's resolution floor at the point (:mod:`refimpl.resolution`); 0
    when both sides are float64 values of the same computation (golden verification).
    """
    floor = check_tolerance(floor, "floor")
    reference = np.asarray(expected)
    shape = tuple(reference.shape)
    try:
        candidate = np.asarray(actual)
    except Exception as error:  # noqa: BLE001 - anything a foreign implementation returns
        return _structural(role, name, shape, f"could not be converted to an array ({error})")
    if candidate.dtype.kind not in "fiu":
        return _structural(role, name, shape, f"expected a real floating-point array, got "
                                              f"dtype {candidate.dtype}")
    if require_float64 and candidate.dtype != np.float64:
        return _structural(role, name, shape, f"expected dtype float64 for a float64 "
                                              f"implementation, got {candidate.dtype} "
                                              f"(precision already lost)")
    if role == "loss" and candidate.size == 1:
        candidate = candidate.reshape(shape)
    if tuple(candidate.shape) != shape:
        hint = " (transposed?)" if tuple(candidate.shape) == shape[::-1] and len(shape) > 1 \
            else ""
        return _structural(role, name, shape, f"expected shape {shape}, got "
                                              f"{tuple(candidate.shape)}{hint}")
    candidate = candidate.astype(np.float64)
    reference = reference.astype(np.float64)
    if not np.isfinite(candidate).all():
        bad = np.argwhere(~np.isfinite(candidate))
        index = tuple(int(i) for i in bad[0]) if bad.size else ()
        return _structural(role, name, shape, f"{len(bad) or 1} non-finite value(s), first at "
                                              f"index {index}: {candidate[index]!r}")
    error = np.abs(candidate - reference)
    scale = float(np.max(np.abs(reference), initial=0.0))
    limit = tolerance.rtol * scale + floor + tolerance.atol
    if error.size:
        flat = int(np.argmax(error))
        worst = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
        max_error = float(error.reshape(-1)[flat])
        actual_value = float(candidate.reshape(-1)[flat])
        expected_value = float(reference.reshape(-1)[flat])
    else:
        worst, max_error, actual_value, expected_value = (), 0.0, 0.0, 0.0
    verdict = _verdict(max_error, scale, floor, limit)
    return TensorComparison(role, name, shape, verdict == "pass", max_error, scale, limit,
                            worst, actual_value, expected_value, "", verdict, floor)


@dataclass(frozen=True)
class ComparisonReport:
    """Result of comparing one case: one :class:`TensorComparison` per tensor, a
    :attr:`verdict` ("pass" / "fail" / "inconclusive") and ``ok`` (verdict == "pass")."""

    case: str
    dtype: str
    tolerance: Tolerance
    rows: tuple[TensorComparison, ...]
    problems: tuple[str, ...] = ()  # problems not tied to one tensor (bad return value)

    @property
    def verdict(self) -> str:
        """"fail" if anything failed, else "inconclusive" if any tensor was, else "pass"."""
        if self.problems or any(row.verdict == "fail" for row in self.rows):
            return "fail"
        if any(row.verdict == "inconclusive" for row in self.rows):
            return "inconclusive"
        return "pass"

    @property
    def ok(self) -> bool:
        """True only when every tensor passed: inconclusive is never a pass."""
        return self.verdict == "pass"

    @property
    def failures(self) -> tuple[TensorComparison, ...]:
        bad = [row for row in self.rows if row.verdict == "fail"]
        # Structural problems first, then the largest relative error first.
        return tuple(sorted(bad, key=lambda row: (not row.problem, -_sort_key(row))))

    @property
    def inconclusive(self) -> tuple[TensorComparison, ...]:
        return tuple(row for row in self.rows if row.verdict == "inconclusive")

    def __str__(self) -> str:
        rule = (f"dtype {self.dtype}: fail iff max|impl - oracle| > rtol * max|oracle| + floor "
                f"+ atol per tensor, rtol={self.tolerance.rtol:g}, atol={self.tolerance.atol:g}")
        if self.verdict == "pass":
            return (f"case {self.case!r} matches the oracle ({rule}); {len(self.rows)} tensors "
                    f"compared, worst relative error "
                    f"{max((r.relative_error for r in self.rows), default=0.0):.3e}")
        if self.verdict == "fail":
            lines = [f"case {self.case!r}: the implementation does not match the oracle "
                     f"({rule})"]
            lines += [f"  {problem}" for problem in self.problems]
            lines += [f"  {row.describe()}" for row in self.failures]
        else:
            lines = [f"case {self.case!r}: inconclusive ({rule}): "
                     f"{len(self.inconclusive)} tensor(s) lie below what {self.dtype} can "
                     f"resolve at this point (tolerance >= max|oracle| / 3); nothing else "
                     f"failed, but no implementation can be judged on them. Draw another point "
                     f"(e.g. one farther from a fit), or compare in float64"]
        lines += [f"  {row.describe()}" for row in self.inconclusive]
        passed = [row.label for row in self.rows if row.verdict == "pass"]
        if passed:
            lines.append(f"  matching: {', '.join(passed)}")
        return "\n".join(lines)


def _sort_key(row: TensorComparison) -> float:
    value = row.relative_error
    return value if math.isfinite(value) else math.inf


# --- running an implementation -----------------------------------------------------------------

def _hand_over(arrays: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Fresh copies for the implementation; float arrays cast to the dtype under test."""
    target = HAND_OVER_DTYPE[dtype]
    return {name: np.array(value, dtype=target if np.asarray(value).dtype.kind == "f"
                           else np.asarray(value).dtype)
            for name, value in arrays.items()}


def _run_and_compare(impl: Any, case_name: str, params: Mapping[str, np.ndarray],
                     inputs: Mapping[str, np.ndarray], expected_loss: Any,
                     expected_grads: Mapping[str, np.ndarray],
                     expected_outputs: Mapping[str, np.ndarray], dtype: str,
                     tolerance: Tolerance, floors: Mapping[tuple[str, str], float]
                     ) -> ComparisonReport:
    if not callable(impl):
        raise TypeError(f"impl: expected a callable impl(params, inputs) -> (loss, grads), got "
                        f"{impl!r}")
    result = impl(_hand_over(params, dtype), _hand_over(inputs, dtype))

    def bad_return(message: str) -> ComparisonReport:
        return ComparisonReport(case_name, dtype, tolerance, (), (message,))

    if not isinstance(result, tuple) or len(result) not in (2, 3):
        return bad_return(f"impl returned {type(result).__name__}; expected a tuple "
                          f"(loss, grads) or (loss, grads, outputs)")
    loss, grads = result[0], result[1]
    outputs = result[2] if len(result) == 3 else None
    if not isinstance(grads, Mapping):
        return bad_return(f"impl returned grads of type {type(grads).__name__}; expected a "
                          f"dict {{parameter name: array}}")
    float64 = dtype == "float64"
    rows = []
    loss_array = np.asarray(expected_loss, dtype=np.float64)
    try:
        actual_loss = np.asarray(loss)
    except Exception:  # noqa: BLE001
        actual_loss = None
    if actual_loss is None or actual_loss.size != 1:
        rows.append(_structural("loss", "loss", (), f"expected one number, got {loss!r:.80}"))
    else:
        # A Python float is float64 already; a NumPy/torch scalar shows its own dtype.
        rows.append(compare_tensor("loss", "loss", loss_array, actual_loss, tolerance,
                                   require_float64=float64 and not isinstance(loss, float),
                                   floor=floors[("loss", "loss")]))
    problems = []
    missing = [name for name in expected_grads if name not in grads]
    extra = [name for name in grads if name not in expected_grads]
    if extra:
        problems.append(f"unexpected gradient(s) {sorted(map(str, extra))}; the parameters are "
                        f"{list(expected_grads)}")
    for name, reference in expected_grads.items():
        if name in missing:
            rows.append(_structural("gradient", name, np.shape(reference), "missing from grads"))
            continue
        rows.append(compare_tensor("gradient", name, reference, grads[name], tolerance,
                                   require_float64=float64, floor=floors[("gradient", name)]))
    if outputs is not None:
        if not isinstance(outputs, Mapping):
            problems.append(f"impl returned outputs of type {type(outputs).__name__}; expected "
                            f"a dict such as {{'out': array}}")
        else:
            unknown = [name for name in outputs if name not in expected_outputs]
            if unknown:
                problems.append(f"unexpected output(s) {sorted(map(str, unknown))}; the "
                                f"reference has {list(expected_outputs)}")
            for name, value in outputs.items():
                if name in expected_outputs:
                    rows.append(compare_tensor("output", name, expected_outputs[name], value,
                                               tolerance, require_float64=float64,
                                               floor=floors[("output", name)]))
    return ComparisonReport(case_name, dtype, tolerance, tuple(rows), tuple(problems))


def _as_case(case_or_model: Any, params: Mapping[str, Any] | None,
             inputs: Mapping[str, Any] | None, seed: int) -> Any:
    """A :class:`refimpl.cases.Case` from a case, a case name, or a model + data."""
    from .cases import Case, get_case

    if isinstance(case_or_model, str):
        case = get_case(case_or_model)
    elif isinstance(case_or_model, Case):
        case = case_or_model
    else:
        return _case_from_model(case_or_model, params, inputs, seed)
    if params is not None or inputs is not None:
        raise ValueError("params, inputs: a catalogue case carries its own point and data; "
                         "pass a model instead to choose them")
    return case


def _case_from_model(model: Any, params: Mapping[str, Any] | None,
                     inputs: Mapping[str, Any] | None, seed: int) -> Any:
    """A Case for a model with ``loss_and_grads(params, x, y)`` (``Sequential``,
    ``AnchoredModel``) or for a ``TiedPair`` (``joined_loss_and_grads``)."""
    from .cases import Case

    if inputs is None or not isinstance(inputs, Mapping):
        raise TypeError("inputs: with a model, pass the data as a dict such as "
                        "{'x': x, 'y': y}")
    data = {name: np.asarray(value) for name, value in inputs.items()}
    config = model.config() if hasattr(model, "config") else {}
    if hasattr(model, "joined_loss_and_grads"):          # a TiedPair
        expected = {"xa", "ya", "xb", "yb"}
        if set(data) != expected:
            raise ValueError(f"inputs: a TiedPair takes exactly {sorted(expected)}, got "
                             f"{sorted(data)}")
        joined = model.join(*model.init(seed)) if params is None else dict(params)
        batch_a, batch_b = (data["xa"], data["ya"]), (data["xb"], data["yb"])

        def pair_loss_and_grads(p: Mapping[str, Any]) -> tuple[Any, dict]:
            return model.joined_loss_and_grads(p, batch_a, batch_b)

        def pair_outputs(p: Mapping[str, Any]) -> dict[str, np.ndarray]:
            out_a, out_b = model.forward(*model.split(p), data["xa"], data["xb"])
            return {"out_a": out_a, "out_b": out_b}

        def pair_evaluate(p: Mapping[str, Any], at: Mapping[str, np.ndarray]) -> tuple:
            loss, grads = model.joined_loss_and_grads(p, (at["xa"], at["ya"]),
                                                      (at["xb"], at["yb"]))
            out_a, out_b = model.forward(*model.split(p), at["xa"], at["xb"])
            return loss, grads, {"out_a": out_a, "out_b": out_b}

        pair_loss_and_grads(joined)  # validates everything before the impl runs
        return Case(name="tied-pair", kind="tied", config={"pair": config},
                    params={k: np.asarray(v) for k, v in joined.items()}, inputs=data,
                    loss_and_grads=pair_loss_and_grads, outputs=pair_outputs,
                    evaluate=pair_evaluate)
    if not (hasattr(model, "loss_and_grads") and hasattr(model, "init")
            or hasattr(model, "model")):
        raise TypeError(f"case_or_model: expected a refimpl.cases.Case, a case name, a "
                        f"Sequential, an AnchoredModel or a TiedPair, got "
                        f"{type(model).__name__}")
    if set(data) != {"x", "y"}:
        raise ValueError(f"inputs: a single model takes exactly {{'x', 'y'}}, got "
                         f"{sorted(data)}")
    x, y = data["x"], data["y"]
    network = model if hasattr(model, "forward") else model.model  # AnchoredModel wraps one
    if params is None:
        params = network.init(seed)
    params = {name: np.asarray(value) for name, value in params.items()}
    model.loss_and_grads(params, x, y)  # validates everything before the impl runs
    if "model" not in config:            # a Sequential's configuration: wrap it as cases do
        config = {"model": config}
    return Case(name="model", kind="model", config=config, params=params,
                inputs={"x": x, "y": y},
                loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
                outputs=lambda p: {"out": network.forward(p, x)},
                evaluate=lambda p, at: (*model.loss_and_grads(p, at["x"], at["y"]),
                                        {"out": network.forward(p, at["x"])}))


def case_floors(case: Any, dtype: str, reference: Any = None) -> dict[tuple[str, str], float]:
    """The resolution floor of every tensor of a :class:`refimpl.cases.Case` for ``dtype``
    (:func:`refimpl.resolution.resolution_floors`; a case without ``evaluate`` perturbs its
    parameters only). ``reference``: ``(loss, grads, outputs)`` at the case's point, if known.
    """
    if case.evaluate is not None:
        evaluate, inputs = case.evaluate, case.inputs
    else:
        def evaluate(p: Mapping[str, Any], _: Mapping[str, Any]) -> tuple:
            return (*case.loss_and_grads(p), case.outputs(p))
        inputs = {}
    return resolution_floors(evaluate, case.params, inputs, dtype, reference=reference,
                             config=case.config if case.evaluate is not None else None)


def unresolved_tensors(case: Any, dtype: Any = "float32") -> list[str]:
    """Labels of the tensors of ``case`` on which no implementation in ``dtype`` can be judged
    with the default tolerance: those that :func:`compare_with_oracle` would call
    inconclusive even for a candidate equal to the reference (``rtol * scale + floor >=
    scale * RESOLVED_FRACTION``, except exactly zero references with a zero floor)."""
    dtype_name, tolerance = resolve_tolerance(dtype)
    loss, grads = case.loss_and_grads(case.params)
    outputs = case.outputs(case.params)
    floors = case_floors(case, dtype_name, (loss, grads, outputs))
    found = []
    for key, reference in tensors_of((loss, grads, outputs)):
        row = compare_tensor(key[0], key[1], reference, reference, tolerance, floor=floors[key])
        if row.verdict != "pass":
            found.append(row.label)
    return found


def compare_with_oracle(impl: Implementation, case_or_model: Any,
                        params: Mapping[str, Any] | None = None,
                        inputs: Mapping[str, Any] | None = None, *, dtype: Any = "float64",
                        rtol: float | None = None, atol: float | None = None, seed: int = 0,
                        outputs: bool = True) -> ComparisonReport:
    """Like :func:`assert_matches_oracle` but returns the report (whatever its verdict)
    instead of raising."""
    dtype_name, tolerance = resolve_tolerance(dtype, rtol, atol)
    seed = check_seed(seed, "seed")
    case = _as_case(case_or_model, params, inputs, seed)
    loss, grads = case.loss_and_grads(case.params)
    expected_outputs = case.outputs(case.params)
    floors = case_floors(case, dtype_name, (loss, grads, expected_outputs))
    return _run_and_compare(impl, case.name, case.params, case.inputs, loss, grads,
                            expected_outputs if outputs else {}, dtype_name, tolerance, floors)


def _raise_unless_pass(reports: list[ComparisonReport], allow_inconclusive: bool,
                       header: str) -> None:
    """AssertionError on any failure, and on an inconclusive verdict unless allowed."""
    if not isinstance(allow_inconclusive, bool):
        raise TypeError(f"allow_inconclusive: expected True or False, got "
                        f"{allow_inconclusive!r}")
    bad = [report for report in reports if report.verdict == "fail"
           or (report.verdict == "inconclusive" and not allow_inconclusive)]
    if bad:
        hint = ("" if all(report.verdict == "fail" for report in bad) else
                "\n(an inconclusive verdict is not a pass; pass allow_inconclusive=True to get "
                "the report back instead of this error)")
        raise AssertionError(header + "\n".join(str(report) for report in bad) + hint)


def assert_matches_oracle(impl: Implementation, case_or_model: Any,
                          params: Mapping[str, Any] | None = None,
                          inputs: Mapping[str, Any] | None = None, *, dtype: Any = "float64",
                          rtol: float | None = None, atol: float | None = None,
                          seed: int = 0, outputs: bool = True,
                          allow_inconclusive: bool = False) -> ComparisonReport:
    """Assert that ``impl`` computes refimpl's loss, gradients (and outputs) for a case.

    - impl: ``impl(params, inputs) -> (loss, grads)`` or ``(loss, grads, outputs)``
      (see the module docstring for the protocol).
    - case_or_model: a :class:`refimpl.cases.Case`, the name of a built-in case
      (``"mlp-tanh-ce"``; see ``refimpl.cases.all_cases()``), a ``Sequential`` or a
      ``TiedPair``. For a model pass ``inputs`` (``{"x", "y"}``, or ``{"xa", "ya", "xb",
      "yb"}`` for a pair) and optionally ``params`` (default ``model.init(seed)``; for a pair
      keys prefixed ``"A:"`` / ``"B:"``).
    - dtype: the precision ``impl`` computes in: "float64", "float32" or "tf32". Params and
      float inputs are handed over in that dtype (float32 for "tf32"); the reference is
      always refimpl's float64 result at the exact values.
    - rtol, atol: override :data:`DTYPE_TOLERANCES` ``[dtype]`` (finite, >= 0). They add to
      the resolution floor, never replace it: no override turns an unresolvable tensor into
      a pass.
    - outputs: also compare forward outputs when ``impl`` returns them.
    - allow_inconclusive: return the report (``report.verdict == "inconclusive"``) instead of
      raising when some tensor cannot be resolved at this point in this dtype.

    Returns the :class:`ComparisonReport` when every tensor passes. Raises ``AssertionError``
    naming the case, each failing tensor, its worst index, both values and the error against
    the tolerance; or, when nothing failed but some tensor is inconclusive, naming those
    tensors, their scale and floor, and what to do (another point, or float64).

    Example::

        >>> import numpy as np
        >>> from refimpl import MLP
        >>> from refimpl.testing import assert_matches_oracle
        >>> model = MLP([3, 4, 2], activation="tanh", loss="cross_entropy")
        >>> x, y = np.ones((5, 3)), np.array([0, 1, 1, 0, 1])
        >>> def impl(params, inputs):          # here refimpl itself stands in for yours
        ...     return model.loss_and_grads(params, inputs["x"], inputs["y"])
        >>> assert_matches_oracle(impl, model, inputs={"x": x, "y": y}).ok
        True
    """
    report = compare_with_oracle(impl, case_or_model, params, inputs, dtype=dtype, rtol=rtol,
                                 atol=atol, seed=seed, outputs=outputs)
    _raise_unless_pass([report], allow_inconclusive, "")
    return report


# --- golden folders -----------------------------------------------------------------------------

def compare_with_golden(impl: Implementation, golden_dir: Any,
                        case: str | Iterable[str] | None = None, *, dtype: Any = "float64",
                        rtol: float | None = None, atol: float | None = None,
                        outputs: bool = True) -> list[ComparisonReport]:
    """Like :func:`assert_matches_golden` but returns one report per case.

    The reference is the stored float64 result; the resolution floors are computed by
    rebuilding the case from refimpl's catalogue (``refimpl.cases.get_case(name)``), whose
    point and data must equal the stored ones (else ``ValueError``: the folder was written by
    another catalogue, and its floors cannot be derived here).
    """
    from . import golden
    from .cases import get_case

    dtype_name, tolerance = resolve_tolerance(dtype, rtol, atol)
    manifest = golden.read_manifest(golden_dir)
    names = golden.select_cases(manifest, case)
    reports = []
    for name in names:
        data = golden.load_case(golden_dir, name, manifest=manifest)
        rebuilt = get_case(name)
        _check_same_point(name, rebuilt, data)
        floors = case_floors(rebuilt, dtype_name)
        reports.append(_run_and_compare(
            impl, name, data.params, data.inputs, data.loss, data.grads,
            data.outputs if outputs else {}, dtype_name, tolerance, floors))
    return reports


def _check_same_point(name: str, case: Any, data: Any) -> None:
    for label, stored, built in (("params", data.params, case.params),
                                 ("inputs", data.inputs, case.inputs)):
        same = set(stored) == set(built) and all(
            np.shape(stored[key]) == np.shape(built[key])
            and np.array_equal(stored[key], built[key]) for key in built)
        if not same:
            raise ValueError(f"golden_dir: case {name!r}: the stored {label} differ from "
                             f"refimpl's catalogue case of that name, so its resolution "
                             f"floors cannot be derived; regenerate the folder with this "
                             f"refimpl (refimpl golden)")


def assert_matches_golden(impl: Implementation, golden_dir: Any,
                          case: str | Iterable[str] | None = None, *, dtype: Any = "float64",
                          rtol: float | None = None, atol: float | None = None,
                          outputs: bool = True, allow_inconclusive: bool = False
                          ) -> list[ComparisonReport]:
    """Assert that ``impl`` reproduces the expected values stored in a golden folder.

    ``golden_dir`` is a folder written by ``refimpl golden --out DIR``; ``case`` selects one
    case by name, several (an iterable of names), or all (None). Every file is checked
    against its SHA-256 in the manifest and read without pickle before ``impl`` runs. The
    implementation protocol, ``dtype`` and tolerances are those of
    :func:`assert_matches_oracle` (``allow_inconclusive`` included); the reference is the
    stored float64 result, the resolution floors those of the catalogue case.

    Example (one implementation per model configuration)::

        from refimpl import golden
        from refimpl.testing import assert_matches_golden
        manifest = golden.read_manifest("golden")
        for name, entry in manifest["cases"].items():
            if entry["kind"] == "mlp":
                assert_matches_golden(build_my_impl(entry["config"]), "golden", case=name)
    """
    reports = compare_with_golden(impl, golden_dir, case, dtype=dtype, rtol=rtol, atol=atol,
                                  outputs=outputs)
    counted = [report for report in reports if report.verdict == "fail"
               or (report.verdict == "inconclusive" and not allow_inconclusive)]
    header = (f"{len(counted)} of {len(reports)} golden case(s) in {str(golden_dir)!r} do not "
              f"match:\n")
    _raise_unless_pass(reports, allow_inconclusive, header)
    return reports
