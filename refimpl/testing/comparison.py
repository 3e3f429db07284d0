"""The comparison rule: one tensor of an implementation against refimpl's reference,
with a verdict of pass, fail or inconclusive.

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
constant (:mod:`refimpl.testing.resolution`, where the model is written down): with refimpl's own
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_tolerance
from ..gradcheck import Tolerance

__all__ = [
    "DTYPE_TOLERANCES", "Tolerance", "Implementation", "TensorComparison", "ComparisonReport",
    "compare_tensor", "resolve_tolerance", "VERDICTS", "RESOLVED_FRACTION", "NotExpressible",
    "Diagnosis",
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

class NotExpressible(Exception):
    """Raised by a builder (``build(config, dtype) -> impl``) for a case its framework cannot
    express (e.g. grouped convolutions); a conformance run reports the case as "not
    expressible" with ``str(exc)`` as the reason, never as a pass or a fail."""


#: Implementation protocol: ``impl(params, inputs) -> (loss, grads)`` or
#: ``(loss, grads, outputs)`` (see the module docstring).
Implementation = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], tuple[Any, ...]]


def resolve_tolerance(dtype: Any = "float64", rtol: float | None = None,
                      atol: float | None = None) -> tuple[str, Tolerance]:
    """The dtype name and the tolerance for it, with optional overrides.

    Parameters
    ----------
    dtype : str or numpy dtype
        "float64", "float32", "tf32", or ``np.float64`` / ``np.float32``.
    rtol, atol : float, optional
        Overrides of :data:`DTYPE_TOLERANCES` ``[dtype]`` (None: the default); finite, >= 0.

    Returns
    -------
    tuple of (str, Tolerance)
        The dtype's name (a key of :data:`DTYPE_TOLERANCES`) and its tolerance.

    Raises
    ------
    ValueError
        For an unknown dtype, or a negative or non-finite override.
    TypeError
        For an override that is not a number.
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
        """``role`` and ``name``, e.g. ``gradient 'fc1.weight'``."""
        return "loss" if self.role == "loss" else f"{self.role} {self.name!r}"

    @property
    def relative_error(self) -> float:
        """``max_abs_error / scale``; 0 when both are zero, inf for an error at a zero scale."""
        if self.scale > 0:
            return self.max_abs_error / self.scale
        return 0.0 if self.max_abs_error == 0 else math.inf

    def describe(self) -> str:
        """One line: the tensor's problem, or its worst index, both values and the tolerance."""
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
    """A failed row for a tensor that could not be compared (missing, wrong shape or type)."""
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

    Parameters
    ----------
    role, name : str
        What the tensor is ("loss", "gradient" or "output") and its name.
    expected : array_like
        refimpl's float64 reference, of any shape.
    actual : array_like
        The implementation's value; must have the shape of ``expected`` (never broadcast).
    tolerance : Tolerance
        ``rtol`` and ``atol`` of the rule.
    require_float64 : bool
        Fail an ``actual`` that is not float64 (the implementation claims float64).
    floor : float
        The tensor's resolution floor at the point (:mod:`refimpl.testing.resolution`); 0
        when both sides are float64 values of the same computation (golden verification).

    Returns
    -------
    TensorComparison
        The row: verdict, worst index, both values there, error, scale, limit and floor, or
        the structural problem (shape, dtype, NaN / Inf) that failed it.
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
class Diagnosis:
    """What a failing gradient equals instead of the reference: a named bug of a shared,
    tied, recurrent, Siamese or micro-batch model (:mod:`refimpl.testing.diagnosis` finds it).

    Offered only when a documented candidate (a named combination of the gradient's labelled
    contributions) passes the comparison rule for that tensor, with its floor, and differs
    from the reference by that rule.

    Attributes
    ----------
    tensor : str
        The gradient's name (``"enc.weight"``, ``"A:fc1.weight"``).
    bug : str or None
        A key of :data:`refimpl.testing.diagnosis.BUGS` (``"use missing"``, ...); None when
        candidates of different bugs coincide at this point.
    message : str
        The sentence shown in the report, naming the tensor, the bug and the terms.
    terms : tuple of str
        The contributions the bug concerns (``("dec.weight^T",)``, ``("pull",)``).
    candidates : tuple of str
        Every candidate that fits, or that cannot be told apart from the one that fits: one
        for a named bug; several when they coincide at this point (then the message says so
        and names none of them as the bug).
    """

    tensor: str
    bug: str | None
    message: str
    terms: tuple[str, ...]
    candidates: tuple[str, ...]

    @property
    def named(self) -> bool:
        """True when exactly one candidate fits: the bug is named, not only narrowed down."""
        return len(self.candidates) == 1


def verdict_of(rows: Iterable[Any], problems: Sequence[str] = (),
               unresolved: bool = False) -> str:
    """A report's verdict from its rows' (each with a ``verdict``): "fail" if there is a
    problem or a row failed, else "inconclusive" if a row was or the whole is ``unresolved``,
    else "pass"."""
    verdicts = {row.verdict for row in rows}
    if problems or "fail" in verdicts:
        return "fail"
    if unresolved or "inconclusive" in verdicts:
        return "inconclusive"
    return "pass"


@dataclass(frozen=True)
class ComparisonReport:
    """Result of comparing one case: one :class:`TensorComparison` per tensor, a
    :attr:`verdict` ("pass" / "fail" / "inconclusive") and ``ok`` (verdict == "pass").

    ``diagnoses``: for failing gradients of a model with shared, tied, recurrent, Siamese or
    micro-batch contributions, the named bug a documented candidate explains
    (:class:`Diagnosis`; empty when none fits); :attr:`diagnosis` is their text, also shown
    by ``str(report)``. A diagnosis never changes the verdict.

    ``unresolved``: why no implementation in this dtype can be judged on the case as a whole
    (a convention probe only float64 resolves: refimpl's rule and its documented alternatives
    agree within the dtype's tolerance), or None. A report that would pass is then
    "inconclusive", never a pass; a failure is still a failure."""

    case: str
    dtype: str
    tolerance: Tolerance
    rows: tuple[TensorComparison, ...]
    problems: tuple[str, ...] = ()  # problems not tied to one tensor (bad return value)
    diagnoses: tuple[Diagnosis, ...] = ()  # failing gradients a named candidate explains
    unresolved: str | None = None  # why this dtype cannot decide the case as a whole

    @property
    def diagnosis(self) -> str | None:
        """The diagnoses' messages joined by ``"; "``, or None when none was offered."""
        return "; ".join(item.message for item in self.diagnoses) or None

    @property
    def verdict(self) -> str:
        """"fail" if anything failed, else "inconclusive" if any tensor was or the dtype
        cannot decide the case (:attr:`unresolved`), else "pass"."""
        return verdict_of(self.rows, self.problems, bool(self.unresolved))

    @property
    def ok(self) -> bool:
        """True only when every tensor passed: inconclusive is never a pass."""
        return self.verdict == "pass"

    @property
    def failures(self) -> tuple[TensorComparison, ...]:
        """The rows whose verdict is fail."""
        bad = [row for row in self.rows if row.verdict == "fail"]
        # Structural problems first, then the largest relative error first.
        return tuple(sorted(bad, key=lambda row: (not row.problem, -_sort_key(row))))

    @property
    def inconclusive(self) -> tuple[TensorComparison, ...]:
        """The rows whose verdict is inconclusive."""
        return tuple(row for row in self.rows if row.verdict == "inconclusive")

    def __str__(self) -> str:
        """The verdict and the rule, then the failing or inconclusive tensors and the matching."""
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
            lines += [f"  diagnosis: {item.message}" for item in self.diagnoses]
        elif self.unresolved and not self.inconclusive:
            lines = [f"case {self.case!r}: inconclusive ({rule}): every tensor matches, but "
                     f"{self.unresolved}"]
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
    """A row's relative error as a sort key (a NaN counts as infinite: the worst)."""
    value = row.relative_error
    return value if math.isfinite(value) else math.inf
