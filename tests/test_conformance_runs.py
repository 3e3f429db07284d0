"""Conformance runs of the shipped adapters (refimpl.testing.conform over refimpl.adapters).

PyTorch over every catalogue case (convention probes included) in float64 and float32 and ten
drawn cases; JAX over every catalogue case in float64. No row may fail; every row passes
except the convention differences listed in :data:`EXPECTED_CONVENTIONS`, each named by
``probes.diagnose`` as written there. An unexpected convention difference, an expected one
that does not show, an inconclusive or a not-expressible row all fail the test. Each
framework's test is skipped, visibly, without that framework.
"""

from __future__ import annotations

import math

import pytest

from refimpl.testing.cases import all_cases
from refimpl.testing.conform import ConformanceReport, ConformanceRow, conform

#: (framework, case, dtype) -> what ``diagnose`` says the framework does (its sentence up to
#: "; refimpl:"): PyTorch's softplus is linear above its threshold 20; JAX's leaky ReLU takes
#: the slope 1 at 0, and ``jnp.abs`` the derivative 1 at 0.
EXPECTED_CONVENTIONS = {
    ("torch", "probe-softplus-above-20", "float64"):
        "softplus'(20.5): implementation ~ 1 (PyTorch's threshold=20 (softplus = x, "
        "derivative 1, above 20))",
    ("jax", "probe-leaky-relu-at-zero", "float64"):
        "leaky_relu'(0): implementation ~ 1 (leaky_relu'(0) != negative_slope)",
    ("jax", "probe-l1-tie", "float64"):
        "subgradient of |a - b| at 0 (in units of lam): implementation ~ 1 (a non-zero "
        "subgradient of |a - b| at a == b)",
}


def problems(framework: str, report: ConformanceReport) -> list[str]:
    """Every way ``report`` departs from "all pass, except the expected conventions"."""
    expected = {(case, dtype): named for (name, case, dtype), named
                in EXPECTED_CONVENTIONS.items() if name == framework}
    found = []
    for row in report.rows:
        wanted = expected.pop((row.case, row.dtype), None)
        if wanted is None and row.outcome != "pass":
            found.append(f"{row.case} {row.dtype}: {row.outcome}: {row.detail}")
        elif wanted is not None and (row.outcome != "convention differs"
                                     or row.detail.split("; refimpl:")[0] != wanted):
            found.append(f"{row.case} {row.dtype}: expected the convention {wanted!r}, got "
                         f"{row.outcome}: {row.detail}")
    found += [f"{case} {dtype}: expected the convention {named!r}, but the case did not run"
              for (case, dtype), named in expected.items()]
    return found


def _assert_complete(report: ConformanceReport, dtypes: tuple[str, ...], drawn: int) -> None:
    names = [case.name for case in all_cases()]
    assert [(row.case, row.dtype) for row in report.rows[:len(names) * len(dtypes)]] == \
        [(name, dtype) for name in names for dtype in dtypes]
    assert len(report.rows) == (len(names) + drawn) * len(dtypes)
    assert report.ok, report.summary()


def test_pytorch_conforms_in_float64_and_float32():
    pytest.importorskip("torch")
    from refimpl.adapters.torch import build

    dtypes = ("float64", "float32")
    report = conform(build, dtypes=dtypes, drawn=10, seed=1)
    _assert_complete(report, dtypes, drawn=10)
    assert problems("torch", report) == [], report.table()


def test_jax_conforms_in_float64():
    pytest.importorskip("jax")
    from refimpl.adapters.jax import build

    report = conform(build, dtypes=("float64",))
    _assert_complete(report, ("float64",), drawn=0)
    assert problems("jax", report) == [], report.table()


def _row(case: str, outcome: str, detail: str) -> ConformanceRow:
    return ConformanceRow(case, "probe", "float64", outcome, math.nan, "", 0.0, detail)


def test_the_expected_list_is_checked_both_ways():
    # The check's negative controls: a convention difference not in the list, an expected
    # one reported as a pass or with another convention, and one whose case did not run.
    leaky = EXPECTED_CONVENTIONS["jax", "probe-leaky-relu-at-zero", "float64"]
    rows = (_row("probe-relu-at-zero", "convention differs", "relu'(0): implementation ~ 1"),
            _row("probe-leaky-relu-at-zero", "convention differs",
                 leaky + "; refimpl: leaky_relu'(0) = negative_slope"),
            _row("probe-l1-tie", "pass", "11 tensors match"))
    found = problems("jax", ConformanceReport(rows, "b", ("float64",), 0, 0))
    assert [line.split(":")[0] for line in found] == [
        "probe-relu-at-zero float64", "probe-l1-tie float64"]
    other_value = _row("probe-leaky-relu-at-zero", "convention differs",
                       "leaky_relu'(0): implementation ~ 0.5 (leaky_relu'(0) != "
                       "negative_slope); refimpl: leaky_relu'(0) = negative_slope")
    found = problems("jax", ConformanceReport((other_value,), "b", ("float64",), 0, 0))
    assert len(found) == 2 and "~ 0.5" in found[0] and "did not run" in found[1]
    assert problems("torch", ConformanceReport((), "b", ("float64",), 0, 0)) == [
        f"probe-softplus-above-20 float64: expected the convention "
        f"{EXPECTED_CONVENTIONS['torch', 'probe-softplus-above-20', 'float64']!r}, but the "
        f"case did not run"]
