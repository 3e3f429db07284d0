"""The adapters' impl.hvp (refimpl/adapters/torch.py: double backward; refimpl/adapters/jax.py:
jax.jvp of jax.grad) against every case's HVP expectation: both pass in float64 across the
catalogue and drawn cases, and a probe's HVP row follows its gradient row (slow tier; skipped,
visibly, without the framework)."""

from __future__ import annotations

import pytest

from refimpl.testing import conform
from refimpl.testing.cases import all_cases

pytestmark = pytest.mark.slow

#: The float64 rows each framework gets "convention differs" on: (case, check) -> the rule's
#: first words. PyTorch's softplus is linear above its threshold 20 (its second derivative
#: 0 there); JAX's leaky ReLU takes slope 1 at 0 and jnp.abs's subgradient at 0 is +1 (the L1
#: penalty's Hessian is 0 under both rules: its H v is refimpl's).
CONVENTIONS = {
    "torch": {("probe-softplus-above-20", "gradient"): "softplus'(20.5) = 1",
              ("probe-softplus-above-20", "hvp"): "softplus'(20.5) = 1"},
    "jax": {("probe-leaky-relu-at-zero", "gradient"): "leaky_relu'(0) = 1",
            ("probe-leaky-relu-at-zero", "hvp"): "leaky_relu'(0) = 1",
            ("probe-l1-tie", "gradient"): "subgradient of |a - b| at 0"},
}
#: The probes float32 cannot decide (resolved in float64 only).
FLOAT64_ONLY = {"probe-leaky-relu-slope-float64", "probe-softplus-above-20",
                "probe-l2-lambda-float64"}


def _build(framework):
    module = pytest.importorskip(f"refimpl.adapters.{framework}",
                                 reason=f"the {framework} adapter needs {framework}")
    return module.build


def _assert_float64(framework, report):
    assert not report.failed, report.table()
    differs = {(row.case, row.check): row.detail for row in report.rows
               if row.outcome == "convention differs"}
    assert set(differs) == set(CONVENTIONS[framework]), report.table()
    for key, rule in CONVENTIONS[framework].items():
        assert differs[key].startswith(rule), differs[key]
    others = {row.outcome for row in report.rows if (row.case, row.check) not in differs}
    assert others == {"pass"}, report.table()
    # every case with an HVP expectation (all but the step cases) has its hvp row
    gradient_rows = [row for row in report.rows if row.check == "gradient"]
    assert sum(row.check == "hvp" for row in report.rows) == sum(
        row.kind != "steps" for row in gradient_rows)


def _assert_float32(report):
    assert not report.failed, report.table()
    for row in report.rows:
        expected = "inconclusive" if row.case in FLOAT64_ONLY else None
        if row.outcome != "convention differs":
            assert row.outcome == (expected or "pass"), (row.case, row.check, row.detail)


#: Drawn cases chosen for what they hold: a linear Siamese tower with eps = 0, whose first
#: bias cancels in the branches' difference (an exactly zero product, compared exactly).
CHOSEN = ["drawn-siamese-59"]


def test_torch_double_backward_conforms_in_float64_and_float32():
    build = _build("torch")
    _assert_float64("torch", conform(build, dtypes=["float64"], drawn=7, seed=40, hvp=True))
    _assert_float32(conform(build, dtypes=["float32"], hvp=True))
    chosen = conform(build, dtypes=["float64", "float32"], cases=CHOSEN, hvp=True)
    assert {row.outcome for row in chosen.rows} == {"pass"}, chosen.table()


def test_jax_jvp_of_grad_conforms_in_float64_and_float32():
    build = _build("jax")
    _assert_float64("jax", conform(build, dtypes=["float64"], drawn=7, seed=40, hvp=True))
    # float32 where the floors of second order matter most: metric losses (each branch rounds
    # on its own, XLA's float32 sigmoid and tanh are 2 and 4 ulps off), softmax, micro-batches
    cases = [case.name for case in all_cases()
             if case.kind in ("siamese", "microbatch", "probe", "shared")]
    _assert_float32(conform(build, dtypes=["float32"], cases=cases, hvp=True))
    chosen = conform(build, dtypes=["float64", "float32"], cases=CHOSEN, hvp=True)
    assert {row.outcome for row in chosen.rows} == {"pass"}, chosen.table()
