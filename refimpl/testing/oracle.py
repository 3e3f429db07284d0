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
  first, ``(N, D)``, ``(N, C, H, W)``, ``(N, T, D)`` or int64 token indices ``(N, T)``; ``y``
  int64 class labels ``(N,)`` or ``(N, T)`` for cross-entropy, float targets for MSE),
  ``{"xa", "ya", "xb", "yb"}`` for a tied pair, without ``"yb"`` when model
  B is an autoencoder (its target is its input ``xb``); a Siamese case's branch inputs
  ``{"anchor", "positive", "negative"}`` or ``{"x1", "x2", "y"}`` (int64 similarity labels);
  a micro-batch case's ``"<name>.<i>"``, micro-batch ``i`` of ``<name>``. An anchored model
  (:class:`refimpl.tying.AnchoredModel`, ``config["anchored"]["reference"] == "inputs"``)
  also receives its fixed reference weights as ``"w0:<name>"``, one per anchored parameter,
  shaped like it (``"zero"``: none, the anchors are 0, weight decay). Every case describes
  its inputs as data in ``case.config["inputs"]`` (and the golden manifest in
  ``cases.<name>.inputs``): ``{name: {"shape": [...], "dtype": "float64" | "int64",
  "role": ...}}`` with role "features", "token indices", "labels", "similarity labels",
  "targets", "features and targets" (the autoencoder's ``xb``) or "reference weights"
  (``w0:<name>``). Float inputs are cast to the
  ``dtype`` under test; integer labels stay int64.
- ``case.config`` also gives ``"resolved_share"``: every shared slot with the unique
  parameter it finally reads and the composed transpose (``{slot: {"source", "transpose"}}``;
  for a pair ``{"model_a": ..., "model_b": ...}``), so a builder need not follow chains.
- returns ``loss``: a number (Python float, NumPy scalar or 0-d / 1-element array) and
  ``grads``: a mapping with exactly the keys of ``params``, each array of its parameter's
  shape. Optionally a third element ``outputs``, a mapping such as ``{"out": logits}``,
  compared with the reference's forward outputs.

Everything must be NumPy: a PyTorch user returns ``loss.item()`` and
``{name: p.grad.detach().cpu().numpy() for name, p in module.named_parameters()}``.

Second order (optional): an implementation may also have a method ``hvp(params, inputs,
vector) -> {name: array}``, the Hessian of its loss times ``vector`` (keyed like ``params``,
handed over like them), judged by :func:`compare_hvp_with_oracle` /
:func:`assert_hvp_matches_oracle` along the case's seeded direction
(:mod:`refimpl.testing.second_order`), by :func:`compare_with_golden` along a golden folder's
stored direction, and by a conformance run with ``hvp=True``.

The comparison rule, its tolerances and the three verdicts live in
:mod:`refimpl.testing.comparison`; the resolution floor in :mod:`refimpl.testing.resolution`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_seed
from ..tying import AnchoredModel
from . import golden
from .cases import Case, describe_inputs, get_case, probes, resolved_share
from .cases.drawn import unresolved_tensors
from .cases.rebuild import rebuild_case
from .cases.tied import anchored_case_at, tied_case
from .comparison import (
    ComparisonReport,
    Implementation,
    TensorComparison,
    Tolerance,
    _structural,
    compare_tensor,
    resolve_tolerance,
)
from .diagnosis import diagnose
from .resolution import HAND_OVER_DTYPE, case_floors
from .second_order import compare_hvp, hvp_evaluate, hvp_expectation, hvp_floors, hvp_function

__all__ = [
    "Implementation", "compare_with_oracle", "assert_matches_oracle", "compare_with_golden",
    "assert_matches_golden", "unresolved_tensors", "compare_hvp_with_oracle",
    "assert_hvp_matches_oracle",
]

# --- running an implementation -----------------------------------------------------------------

def _hand_over(arrays: Mapping[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Fresh copies for the implementation; float arrays cast to the dtype under test."""
    target = HAND_OVER_DTYPE[dtype]
    return {name: np.array(value, dtype=target if np.asarray(value).dtype.kind == "f"
                           else np.asarray(value).dtype)
            for name, value in arrays.items()}


def _run_and_compare(impl: Any, case_name: str, params: Mapping[str, np.ndarray],
                     inputs: Mapping[str, np.ndarray], reference: tuple[Any, Any, Any],
                     dtype: str, tolerance: Tolerance, floors: Mapping[tuple[str, str], float],
                     case: Case | None = None) -> ComparisonReport:
    """Run ``impl`` on fresh copies of the point and compare what it returns with the
    float64 ``reference`` ``(loss, grads, outputs)``, one row per tensor; failing gradients
    are diagnosed from the contributions of ``case`` (:mod:`.diagnosis`) when given."""
    if not callable(impl):
        raise TypeError(f"impl: expected a callable impl(params, inputs) -> (loss, grads), got "
                        f"{impl!r}")
    result = impl(_hand_over(params, dtype), _hand_over(inputs, dtype))
    problem = _return_problem(result)
    if problem:
        return ComparisonReport(case_name, dtype, tolerance, (), (problem,))
    expected_loss, expected_grads, expected_outputs = reference
    judge = _Judge(tolerance, floors, dtype == "float64")
    grad_rows, grad_problems = _gradient_rows(result[1], expected_grads, judge)
    output_rows, output_problems = _output_rows(result[2] if len(result) == 3 else None,
                                                expected_outputs, judge)
    rows = (_loss_row(result[0], expected_loss, judge), *grad_rows, *output_rows)
    diagnoses = () if case is None else diagnose(case, grad_rows, result[1], expected_grads,
                                                 tolerance)
    return ComparisonReport(case_name, dtype, tolerance, rows, (*grad_problems, *output_problems),
                            diagnoses)


def _return_problem(result: Any) -> str | None:
    """Why ``impl``'s return value is not ``(loss, grads[, outputs])`` (None if it is)."""
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        return (f"impl returned {type(result).__name__}; expected a tuple (loss, grads) or "
                f"(loss, grads, outputs)")
    if not isinstance(result[1], Mapping):
        return (f"impl returned grads of type {type(result[1]).__name__}; expected a dict "
                f"{{parameter name: array}}")
    return None


class _Judge(NamedTuple):
    """What every row of one comparison shares: the tolerance, the floors, the dtype."""

    tolerance: Tolerance
    floors: Mapping[tuple[str, str], float]
    float64: bool

    def row(self, role: str, name: str, reference: Any, actual: Any,
            require_float64: bool | None = None) -> TensorComparison:
        """One tensor against its reference, with its own resolution floor."""
        return compare_tensor(role, name, reference, actual, self.tolerance,
                              require_float64=self.float64 if require_float64 is None
                              else require_float64, floor=self.floors[(role, name)])


def _loss_row(loss: Any, expected_loss: Any, judge: _Judge) -> TensorComparison:
    """The returned loss (one number) against the reference loss."""
    try:
        actual_loss = np.asarray(loss)
    except Exception:  # noqa: BLE001
        actual_loss = None
    if actual_loss is None or actual_loss.size != 1:
        return _structural("loss", "loss", (), f"expected one number, got {loss!r:.80}")
    # A Python float is float64 already; a NumPy/torch scalar shows its own dtype.
    return judge.row("loss", "loss", np.asarray(expected_loss, dtype=np.float64), actual_loss,
                     require_float64=judge.float64 and not isinstance(loss, float))


def _gradient_rows(grads: Mapping[str, Any], expected_grads: Mapping[str, np.ndarray],
                   judge: _Judge) -> tuple[list[TensorComparison], list[str]]:
    """A row per parameter (a missing gradient fails its row) and the unexpected names."""
    problems = []
    extra = [name for name in grads if name not in expected_grads]
    if extra:
        problems.append(f"unexpected gradient(s) {sorted(map(str, extra))}; the parameters are "
                        f"{list(expected_grads)}")
    rows = [judge.row("gradient", name, reference, grads[name]) if name in grads else
            _structural("gradient", name, np.shape(reference), "missing from grads")
            for name, reference in expected_grads.items()]
    return rows, problems


def _output_rows(outputs: Any, expected_outputs: Mapping[str, np.ndarray], judge: _Judge
                 ) -> tuple[list[TensorComparison], list[str]]:
    """A row per returned output the reference has, and what is wrong with the rest."""
    if outputs is None:
        return [], []
    if not isinstance(outputs, Mapping):
        return [], [f"impl returned outputs of type {type(outputs).__name__}; expected a dict "
                    f"such as {{'out': array}}"]
    unknown = [name for name in outputs if name not in expected_outputs]
    problems = [f"unexpected output(s) {sorted(map(str, unknown))}; the reference has "
                f"{list(expected_outputs)}"] if unknown else []
    rows = [judge.row("output", name, expected_outputs[name], value)
            for name, value in outputs.items() if name in expected_outputs]
    return rows, problems


def _as_case(case_or_model: Any, params: Mapping[str, Any] | None,
             inputs: Mapping[str, Any] | None, seed: int) -> Any:
    """A :class:`refimpl.testing.cases.Case` from a case, a case name, or a model + data."""
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
    if inputs is None or not isinstance(inputs, Mapping):
        raise TypeError("inputs: with a model, pass the data as a dict such as "
                        "{'x': x, 'y': y}")
    data = {name: np.asarray(value) for name, value in inputs.items()}
    config = model.config() if hasattr(model, "config") else {}
    if hasattr(model, "joined_loss_and_grads"):          # a TiedPair
        return _case_from_pair(model, params, data, config, seed)
    if not (hasattr(model, "loss_and_grads") and hasattr(model, "init")
            or hasattr(model, "model")):
        raise TypeError(f"case_or_model: expected a refimpl.testing.cases.Case, a case name, a "
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
    if isinstance(model, AnchoredModel):  # configured and fed like the catalogue's
        return anchored_case_at(_model_name(model), model, params, x, y, kind="model")
    if "model" not in config:            # a Sequential's configuration: wrap it as cases do
        config = {"model": config}
    config = {**config, "resolved_share": resolved_share(network),
              "inputs": describe_inputs(data)}
    return Case(name=_model_name(model), kind="model", config=config, params=params,
                inputs={"x": x, "y": y},
                loss_and_grads=lambda p: model.loss_and_grads(p, x, y),
                outputs=lambda p: {"out": network.forward(p, x)},
                evaluate=lambda p, at: (*model.loss_and_grads(p, at["x"], at["y"]),
                                        {"out": network.forward(p, at["x"])}))


def _model_name(model: Any) -> str:
    """The default report name of a model: its type and its parameterised layers, e.g.
    ``"Sequential(fc1, fc2)"``, ``"TiedPair(fc1, fc2 | enc, dec)"``."""
    def layers(network: Any) -> str:
        names = dict.fromkeys(key.split(".")[0] for key in network.parameter_shapes())
        return ", ".join(names)

    if hasattr(model, "model_a"):
        return f"{type(model).__name__}({layers(model.model_a)} | {layers(model.model_b)})"
    network = model if hasattr(model, "forward") else model.model
    return f"{type(model).__name__}({layers(network)})"


def _check_name(name: Any) -> None:
    """A report name is a non-empty str (None: the case's or the model's own name)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name: expected a non-empty str or None, got {name!r}")


def _case_from_pair(pair: Any, params: Mapping[str, Any] | None,
                    data: dict[str, np.ndarray], config: Any, seed: int) -> Case:
    """A Case for a ``TiedPair`` and its data ``{"xa", "ya", "xb", "yb"}``."""
    expected = {"xa", "ya", "xb", "yb"}
    if set(data) != expected:
        raise ValueError(f"inputs: a TiedPair takes exactly {sorted(expected)}, got "
                         f"{sorted(data)}")
    joined = pair.join(*pair.init(seed)) if params is None else dict(params)
    case = tied_case(_model_name(pair), pair, {k: np.asarray(v) for k, v in joined.items()}, data,
                     {"pair": config})
    case.loss_and_grads(joined)  # validates everything before the impl runs
    return case


def compare_with_oracle(impl: Implementation, case_or_model: Any,
                        params: Mapping[str, Any] | None = None,
                        inputs: Mapping[str, Any] | None = None, *, dtype: Any = "float64",
                        rtol: float | None = None, atol: float | None = None, seed: int = 0,
                        outputs: bool = True, name: str | None = None) -> ComparisonReport:
    """Like :func:`assert_matches_oracle` but returns the report (whatever its verdict).

    The parameters are those of :func:`assert_matches_oracle` (without
    ``allow_inconclusive``).

    Returns
    -------
    ComparisonReport
        One row per compared tensor; ``report.verdict`` is "pass", "fail" or
        "inconclusive".
    """
    dtype_name, tolerance = resolve_tolerance(dtype, rtol, atol)
    seed = check_seed(seed, "seed")
    _check_name(name)
    case = _as_case(case_or_model, params, inputs, seed)
    loss, grads = case.loss_and_grads(case.params)
    expected_outputs = case.outputs(case.params)
    floors = case_floors(case, dtype_name, (loss, grads, expected_outputs))
    report = _run_and_compare(impl, name or case.name, case.params, case.inputs,
                              (loss, grads, expected_outputs if outputs else {}), dtype_name,
                              tolerance, floors, case)
    return dataclasses.replace(report, unresolved=probes.unresolved(case, dtype_name))


def _raise_unless_pass(reports: list[ComparisonReport], allow_inconclusive: bool,
                       header: str) -> None:
    """AssertionError on any failure, and on an inconclusive verdict unless allowed."""
    __tracebackhide__ = True   # pytest: the user's test line, not this helper, is the failure
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
                          allow_inconclusive: bool = False,
                          name: str | None = None) -> ComparisonReport:
    """Assert that ``impl`` computes refimpl's loss, gradients (and outputs) for a case.

    Parameters
    ----------
    impl : callable
        ``impl(params, inputs) -> (loss, grads)`` or ``(loss, grads, outputs)`` (the
        protocol of the module docstring).
    case_or_model : refimpl.testing.cases.Case, str, refimpl.nn.Sequential or refimpl.TiedPair
        A :class:`refimpl.testing.cases.Case`, the name of a built-in case
        (``"mlp-tanh-ce"``; see ``refimpl.testing.cases.all_cases()``), a ``Sequential`` or
        a ``TiedPair``.
    params : mapping of str to array_like, optional
        For a model only: the point (default ``model.init(seed)``; for a pair, keys
        prefixed ``"A:"`` / ``"B:"``).
    inputs : mapping of str to array_like, optional
        For a model only, and then required: ``{"x", "y"}`` (``x`` of shape (N, D) or
        (N, C, H, W)), or ``{"xa", "ya", "xb", "yb"}`` for a pair.
    dtype : str
        The precision ``impl`` computes in: "float64", "float32" or "tf32". Params and
        float inputs are handed over in that dtype (float32 for "tf32"); the reference is
        always refimpl's float64 result at the exact values.
    rtol, atol : float, optional
        Override :data:`DTYPE_TOLERANCES` ``[dtype]`` (finite, >= 0). They add to the
        resolution floor, never replace it: no override turns an unresolvable tensor into
        a pass.
    seed : int
        Seed of ``model.init`` when ``params`` is not given.
    outputs : bool
        Also compare forward outputs when ``impl`` returns them.
    allow_inconclusive : bool
        Return the report (``report.verdict == "inconclusive"``) instead of raising when
        some tensor cannot be resolved at this point in this dtype.
    name : str, optional
        The report's name (``report.case``, and the first words of its message). Default:
        the case's name, or for a model its type and parameterised layers, e.g.
        ``"Sequential(fc1, fc2)"`` or ``"TiedPair(fc1, fc2 | enc, dec)"``; pass your own
        to tell the reports of several models apart.

    Returns
    -------
    ComparisonReport
        When every tensor passes (or, with ``allow_inconclusive``, none fails).

    Raises
    ------
    AssertionError
        Naming the case, each failing tensor, its worst index, both values and the error
        against the tolerance; or, when nothing failed but some tensor is inconclusive,
        naming those tensors, their scale and floor, and what to do (another point, or
        float64).

    Examples
    --------
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
    __tracebackhide__ = True   # pytest: the user's test line, not this helper, is the failure
    report = compare_with_oracle(impl, case_or_model, params, inputs, dtype=dtype, rtol=rtol,
                                 atol=atol, seed=seed, outputs=outputs, name=name)
    _raise_unless_pass([report], allow_inconclusive, "")
    return report


# --- Hessian-vector products ---------------------------------------------------------------------

def compare_hvp_with_oracle(impl: Any, case_or_model: Any,
                            params: Mapping[str, Any] | None = None,
                            inputs: Mapping[str, Any] | None = None, *, dtype: Any = "float64",
                            rtol: float | None = None, atol: float | None = None,
                            seed: int = 0, direction: Mapping[str, Any] | None = None,
                            name: str | None = None) -> ComparisonReport:
    """Like :func:`assert_hvp_matches_oracle` but returns the report (whatever its verdict).

    The parameters are those of :func:`assert_hvp_matches_oracle` (without
    ``allow_inconclusive``).

    Returns
    -------
    ComparisonReport
        One row per parameter (role ``"hvp"``); ``report.verdict`` is "pass", "fail" or
        "inconclusive".
    """
    dtype_name, tolerance = resolve_tolerance(dtype, rtol, atol)
    seed = check_seed(seed, "seed")
    _check_name(name)
    hvp = hvp_function(impl)
    if hvp is None:
        if not callable(impl):
            raise TypeError(f"impl: expected an implementation with a method hvp(params, "
                            f"inputs, vector) or such a callable, got {impl!r}")
        hvp = impl
    case = _as_case(case_or_model, params, inputs, seed)
    if direction is None:
        expected = hvp_expectation(case)
        direction, reference = expected.direction, expected.hvp
    else:
        if not isinstance(direction, Mapping):
            raise TypeError(f"direction: expected a dict keyed like params, got "
                            f"{type(direction).__name__}")
        reference = hvp_evaluate(case.config)(case.params, case.inputs, direction)
        direction = {key: np.asarray(direction[key], dtype=np.float64) for key in case.params}
    floors = hvp_floors(case, dtype_name, reference, direction)
    return compare_hvp(hvp, name or case.name, case.params, case.inputs, direction, reference,
                       dtype_name, tolerance, floors)


def assert_hvp_matches_oracle(impl: Any, case_or_model: Any,
                              params: Mapping[str, Any] | None = None,
                              inputs: Mapping[str, Any] | None = None, *,
                              dtype: Any = "float64", rtol: float | None = None,
                              atol: float | None = None, seed: int = 0,
                              direction: Mapping[str, Any] | None = None,
                              allow_inconclusive: bool = False,
                              name: str | None = None) -> ComparisonReport:
    """Assert that an implementation's Hessian-vector product is refimpl's, for a case.

    The case's seeded direction ``v`` and refimpl's ``H v`` along it
    (:func:`refimpl.testing.second_order.hvp_expectation`) against ``impl.hvp(params,
    inputs, v)``, one row per parameter, by the comparison rule with the products' own
    resolution floors (:func:`refimpl.testing.second_order.hvp_floors`).

    Parameters
    ----------
    impl : object or callable
        An implementation with a method ``hvp(params, inputs, vector) -> {name: array}`` (the
        loss's Hessian times ``vector``, keyed like ``params``), or that callable itself.
        ``params``, ``inputs`` and ``vector`` are fresh copies in the dtype under test.
    case_or_model, params, inputs, dtype, rtol, atol, seed, allow_inconclusive, name
        As for :func:`assert_matches_oracle`.
    direction : mapping of str to array_like, optional
        Your own direction (keyed like the case's params) instead of the case's seeded one.

    Returns
    -------
    ComparisonReport
        When every product passes (or, with ``allow_inconclusive``, none fails).

    Raises
    ------
    AssertionError
        Naming the case and every failing product, its worst index, both values and the
        limit; or the products the dtype cannot resolve at this point.
    ValueError
        For a case whose configuration describes no refimpl model (no expectation).

    Examples
    --------
    >>> import numpy as np
    >>> import refimpl as ri
    >>> from refimpl.testing import assert_hvp_matches_oracle
    >>> model = ri.MLP([3, 4, 2], activation="tanh")
    >>> x, y = np.ones((5, 3)), np.array([0, 1, 1, 0, 1])
    >>> def hvp(params, inputs, vector):     # refimpl itself stands in for yours
    ...     return ri.hvp(model, params, (inputs["x"], inputs["y"]), vector)
    >>> assert_hvp_matches_oracle(hvp, model, inputs={"x": x, "y": y}).ok
    True
    """
    __tracebackhide__ = True   # pytest: the user's test line, not this helper, is the failure
    report = compare_hvp_with_oracle(impl, case_or_model, params, inputs, dtype=dtype,
                                     rtol=rtol, atol=atol, seed=seed, direction=direction,
                                     name=name)
    _raise_unless_pass([report], allow_inconclusive, "")
    return report


# --- golden folders -----------------------------------------------------------------------------

def compare_with_golden(impl: Implementation, golden_dir: Any,
                        case: str | Iterable[str] | None = None, *, dtype: Any = "float64",
                        rtol: float | None = None, atol: float | None = None,
                        outputs: bool = True) -> list[ComparisonReport]:
    """Like :func:`assert_matches_golden` but returns one report per case.

    The reference is the stored float64 result; when ``impl`` has an ``hvp(params, inputs,
    vector)`` and the folder stores the case's direction and ``H v`` (schema 3), the report also
    holds one row per parameter (role ``"hvp"``) judging ``impl.hvp`` along the stored
    direction. The resolution floors are computed by rebuilding the case from refimpl alone
    (``refimpl.testing.cases.rebuild.rebuild_case(name, config)``: the catalogue's, or a drawn
    case from its stored seed), whose point and data must equal the stored ones. The folder is
    not trusted (:func:`refimpl.testing.golden.check_stored_case`): ``SHA256SUMS`` must agree
    with the manifest, the folder must hold every tensor of the rebuilt case and nothing else,
    and every stored value must equal the rebuilt case's (the float64 rule), so that every
    tensor of the case is compared with ``impl``'s.

    A step case (manifest ``kind`` "steps") runs ``impl.train_steps(params, batches)``
    instead, and is judged against the stored trajectory by the trajectory rule
    (:mod:`refimpl.testing.trajectory`; the floors derived from the rebuilt case): its report
    is a :class:`refimpl.testing.trajectory.TrajectoryReport` (``verdict``, ``ok`` and the
    first step where the implementation diverges). With ``case=None`` an ``impl`` without
    ``train_steps`` is judged on the gradient cases only; a step case named in ``case`` raises
    :class:`refimpl.testing.NotExpressible` for it.

    Returns
    -------
    list of ComparisonReport or TrajectoryReport
        One per selected case, in the order of ``case`` (the manifest's for None).

    Raises
    ------
    ValueError
        When a stored case cannot be rebuilt here, or its point or data differ from the
        rebuilt case's (the folder was written by another refimpl, and its floors cannot be
        derived here).
    refimpl.testing.golden.GoldenError
        When the folder or one of its files is missing, malformed or unsafe, when
        ``SHA256SUMS`` disagrees with the manifest, or when a stored tensor is missing or
        differs from the rebuilt case's.
    """

    dtype_name, tolerance = resolve_tolerance(dtype, rtol, atol)
    manifest = golden.read_manifest(golden_dir)
    names = golden.select_cases(manifest, case)
    if case is None and not callable(getattr(impl, "train_steps", None)):
        # every case the implementation can be judged on: without the step capability, the
        # gradient cases (a step case named in ``case`` is not expressible for it instead)
        names = [name for name in names if manifest["cases"][name].get("kind") != "steps"]
    reports = []
    for name in names:
        if manifest["cases"][name].get("kind") == "steps":   # an implementation's train_steps
            reports.append(golden.compare_steps_with_golden(
                impl, golden_dir, name, manifest=manifest, dtype=dtype_name, rtol=rtol,
                atol=atol))
            continue
        data = golden.load_case(golden_dir, name, manifest=manifest)
        rebuilt = rebuild_case(name, manifest["cases"][name].get("config", {}))
        if rebuilt is None:
            raise ValueError(f"golden_dir: case {name!r} is neither in refimpl's catalogue "
                             f"nor rebuilt by a registered rebuilder "
                             f"(refimpl.testing.cases.rebuild.REBUILDERS), so its resolution "
                             f"floors cannot be derived")
        _check_same_point(name, rebuilt, data)
        # The stored values must be the rebuilt case's, every one of them: a folder
        # rewritten consistently (values and hashes) or missing an entry is refused here.
        golden.check_stored_case(golden_dir, data, rebuilt, manifest)
        floors = case_floors(rebuilt, dtype_name)
        report = _run_and_compare(
            impl, name, data.params, data.inputs,
            (data.loss, data.grads, data.outputs if outputs else {}), dtype_name, tolerance,
            floors, rebuilt)
        hvp = hvp_function(impl)
        if hvp is not None and data.hvp:      # the stored direction and H v, judged too
            products = compare_hvp(hvp, name, data.params, data.inputs, data.direction,
                                   data.hvp, dtype_name, tolerance,
                                   hvp_floors(rebuilt, dtype_name, data.hvp, data.direction))
            report = dataclasses.replace(report, rows=report.rows + products.rows,
                                         problems=report.problems + products.problems)
        reports.append(dataclasses.replace(report,
                                           unresolved=probes.unresolved(rebuilt, dtype_name)))
    return reports


def _check_same_point(name: str, case: Any, data: Any) -> None:
    """Refuse a stored case whose point or data differ from the catalogue case of that name."""
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

    Every file is checked against its SHA-256 in the manifest and in ``SHA256SUMS`` and read
    without pickle before ``impl`` runs, and every stored tensor against refimpl's
    recomputation of the case (:func:`compare_with_golden`). The reference is the stored
    float64 result, the resolution floors those of the catalogue case.

    Parameters
    ----------
    impl : callable
        The implementation (protocol of the module docstring).
    golden_dir : str or os.PathLike
        A folder written by ``refimpl golden --out DIR``.
    case : str or iterable of str, optional
        One case by name, several, or all (None: every gradient case, and the step cases when
        ``impl`` has ``train_steps``; :func:`compare_with_golden`).
    dtype, rtol, atol, outputs, allow_inconclusive
        As for :func:`assert_matches_oracle`.

    Returns
    -------
    list of ComparisonReport
        One per case, when none fails (nor, unless allowed, is inconclusive).

    Raises
    ------
    AssertionError
        Counting and describing the cases that do not match.

    Examples
    --------
    One implementation per model configuration::

        from refimpl.testing import golden
        from refimpl.testing import assert_matches_golden
        manifest = golden.read_manifest("golden")
        for name, entry in manifest["cases"].items():
            if entry["kind"] == "mlp":
                assert_matches_golden(build_my_impl(entry["config"]), "golden", case=name)
    """
    __tracebackhide__ = True   # pytest: the user's test line, not this helper, is the failure
    reports = compare_with_golden(impl, golden_dir, case, dtype=dtype, rtol=rtol, atol=atol,
                                  outputs=outputs)
    counted = [report for report in reports if report.verdict == "fail"
               or (report.verdict == "inconclusive" and not allow_inconclusive)]
    header = (f"{len(counted)} of {len(reports)} golden case(s) in {str(golden_dir)!r} do not "
              f"match:\n")
    _raise_unless_pass(reports, allow_inconclusive, header)
    return reports
