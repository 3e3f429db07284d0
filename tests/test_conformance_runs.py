"""Conformance runs of the shipped adapters (refimpl.testing.conform over refimpl.adapters).

PyTorch over every catalogue case (convention probes included) in float64 and float32 and ten
drawn cases (every drawn kind); JAX over every catalogue case in float64 (slow tier: the
second, named tier, ``python -m pytest -m slow``). No row may fail; every row passes except
those listed in :data:`EXPECTED`: the convention differences (each a documented alternative
whose whole reference the framework's result matches, named as written there) and the probes
no float32 implementation can decide (inconclusive there). An unexpected convention
difference, an expected one that does not show, an inconclusive or a not-expressible row all
fail the test. Each framework's test is skipped, visibly, without that framework. The default
tier runs PyTorch on the listed probes alone.
"""

from __future__ import annotations

import math

import pytest

from refimpl.testing.cases import all_cases
from refimpl.testing.conform import ConformanceReport, ConformanceRow, conform

_MATCHES = ": the whole result matches refimpl's with this one documented rule changed"
_UNDECIDED = "only float64 resolves it"

#: (framework, case, dtype) -> (outcome, the detail up to "; refimpl:" for a convention
#: difference, a phrase of it for an inconclusive row): PyTorch's softplus is linear above its
#: threshold 20; JAX's leaky ReLU takes the slope 1 at 0, and ``jnp.abs`` the derivative 1 at
#: 0; in float32 the float64 hyper-parameter probes and the softplus probe cannot be decided.
EXPECTED = {
    ("torch", "probe-softplus-above-20", "float64"): (
        "convention differs",
        "softplus'(20.5) = 1 (PyTorch's threshold=20: softplus = x above 20)" + _MATCHES),
    ("jax", "probe-leaky-relu-at-zero", "float64"): (
        "convention differs", "leaky_relu'(0) = 1 (the positive side's slope, JAX)" + _MATCHES),
    ("jax", "probe-l1-tie", "float64"): (
        "convention differs",
        "subgradient of |a - b| at 0 (in units of lam) = 1 (sign(0) = +1, JAX's jnp.abs)"
        + _MATCHES),
    **{("torch", probe, "float32"): ("inconclusive", _UNDECIDED)
       for probe in ("probe-leaky-relu-slope-float64", "probe-softplus-above-20",
                     "probe-l2-lambda-float64")},
}


def problems(framework: str, report: ConformanceReport, every_case: bool = True) -> list[str]:
    """Every way ``report`` departs from "all pass, except the expected rows" (``every_case``
    False: a run of some cases, whose absent cases are not expected to show)."""
    expected = {(case, dtype): wanted for (name, case, dtype), wanted in EXPECTED.items()
                if name == framework}
    ran = {(row.case, row.dtype) for row in report.rows}
    cases = {row.case for row in report.rows}
    found = []
    for row in report.rows:
        wanted = expected.pop((row.case, row.dtype), None)
        if wanted is None:
            if row.outcome != "pass":
                found.append(f"{row.case} {row.dtype}: {row.outcome}: {row.detail}")
            continue
        outcome, text = wanted
        named = row.detail.split("; refimpl:")[0] == text if outcome == "convention differs" \
            else text in row.detail
        if row.outcome != outcome or not named:
            found.append(f"{row.case} {row.dtype}: expected {outcome} {text!r}, got "
                         f"{row.outcome}: {row.detail}")
    found += [f"{case} {dtype}: expected {outcome} {text!r}, but the case did not run"
              for (case, dtype), (outcome, text) in expected.items()
              if (case, dtype) not in ran and dtype in report.dtypes
              and (every_case or case in cases)]
    return found


def _assert_complete(report: ConformanceReport, dtypes: tuple[str, ...], drawn: int) -> None:
    names = [case.name for case in all_cases()]
    assert [(row.case, row.dtype) for row in report.rows[:len(names) * len(dtypes)]] == \
        [(name, dtype) for name, dtype in ((n, d) for n in names for d in dtypes)]
    assert len(report.rows) == (len(names) + drawn) * len(dtypes)
    assert report.ok, report.summary()


@pytest.mark.slow
def test_pytorch_conforms_in_float64_and_float32():
    pytest.importorskip("torch")
    from refimpl.adapters.torch import build

    dtypes = ("float64", "float32")
    report = conform(build, dtypes=dtypes, drawn=10, seed=1)
    _assert_complete(report, dtypes, drawn=10)
    assert problems("torch", report) == [], report.table()
    assert report.framework["name"] == "torch"


@pytest.mark.slow
def test_jax_conforms_in_float64():
    pytest.importorskip("jax")
    from refimpl.adapters.jax import build

    report = conform(build, dtypes=("float64",))
    _assert_complete(report, ("float64",), drawn=0)
    assert problems("jax", report) == [], report.table()
    assert report.framework["name"] == "jax"


def test_pytorch_on_its_listed_probes():
    pytest.importorskip("torch")
    from refimpl.adapters.torch import build

    report = conform(build, cases=["probe-softplus-above-20", "probe-l2-lambda-float64",
                                   "probe-relu-at-zero"])
    assert problems("torch", report, every_case=False) == [], report.table()
    assert [row.outcome for row in report.rows] == [
        "convention differs", "inconclusive", "pass", "inconclusive", "pass", "pass"]
    assert report.ok


def _row(case: str, outcome: str, detail: str) -> ConformanceRow:
    return ConformanceRow(case, "probe", "float64", outcome, math.nan, "", 0.0, detail)


def test_the_expected_list_is_checked_both_ways():
    # The check's negative controls: a convention difference not in the list, an expected
    # one reported as a pass or with another convention, and one whose case did not run.
    leaky = EXPECTED["jax", "probe-leaky-relu-at-zero", "float64"][1]
    rows = (_row("probe-relu-at-zero", "convention differs", "relu'(0) = 1 (...)"),
            _row("probe-leaky-relu-at-zero", "convention differs",
                 leaky + "; refimpl: leaky_relu'(0) = negative_slope"),
            _row("probe-l1-tie", "pass", "11 tensors match"))
    found = problems("jax", ConformanceReport(rows, "b", ("float64",), 0, 0))
    assert [line.split(":")[0] for line in found] == [
        "probe-relu-at-zero float64", "probe-l1-tie float64"]
    other_value = _row("probe-leaky-relu-at-zero", "convention differs",
                       "leaky_relu'(0) = 0.505 (the mean of both sides)" + _MATCHES +
                       "; refimpl: leaky_relu'(0) = negative_slope")
    found = problems("jax", ConformanceReport((other_value,), "b", ("float64",), 0, 0))
    assert len(found) == 2 and "0.505" in found[0] and "did not run" in found[1]
    torch = EXPECTED["torch", "probe-softplus-above-20", "float64"]
    assert problems("torch", ConformanceReport((), "b", ("float64",), 0, 0)) == [
        f"probe-softplus-above-20 float64: expected {torch[0]} {torch[1]!r}, but the case did "
        f"not run"]
    passed = _row("probe-softplus-above-20", "pass", "6 tensors match")
    float32 = ConformanceRow("probe-softplus-above-20", "probe", "float32", "pass", math.nan,
                             "", 0.0, "6 tensors match")
    found = problems("torch", ConformanceReport((passed, float32), "b", ("float64", "float32"),
                                                0, 0))
    assert [line.split(":")[0] for line in found] == [
        "probe-softplus-above-20 float64", "probe-softplus-above-20 float32",
        "probe-leaky-relu-slope-float64 float32", "probe-l2-lambda-float64 float32"]
