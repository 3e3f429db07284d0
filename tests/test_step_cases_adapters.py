"""The adapters' step capability (slow tier: the frameworks): ``train_steps`` with torch.optim
and clip_grad_norm_'s halves (refimpl/adapters/torch.py), with optax
(refimpl/adapters/jax.py), against every step case and probe of the catalogue, and what each
framework cannot express.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from refimpl import SGD, Adam, AdamW, ClipGradNorm
from refimpl.testing import compare_with_oracle, conform
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.step_probes import step_alternatives
from refimpl.testing.cases.steps import with_optimizer

pytestmark = pytest.mark.slow

STEP_CASES = [case for case in all_cases() if case.kind == "steps"]


def _builder(framework):
    module = pytest.importorskip(f"refimpl.adapters.{framework}", exc_type=ImportError)
    return module.build


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_every_step_case_and_probe_passes_in_float64_and_float32(framework):
    if framework == "jax":
        pytest.importorskip("optax")
    report = conform(_builder(framework), cases=STEP_CASES, dtypes=["float64", "float32"])
    assert {row.outcome for row in report.rows} == {"pass"}, report.table()


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_gradient_protocol_still_runs_on_a_step_cases_first_step(framework):
    for name in ("steps-tied-lm-adamw-clip", "steps-micro-batches-adam-clip"):
        case = get_case(name)
        assert compare_with_oracle(_builder(framework)(case.config, "float64"), case).ok


@pytest.mark.parametrize("framework, optimizer, clip, reason", [
    ("torch", Adam(lr=0.01, eps_root=1e-8), None, "no eps_root"),
    ("torch", Adam(lr=0.01, bias_correction=False), None, "always corrects"),
    ("torch", SGD(lr=0.1), ClipGradNorm(0.1, eps=0.0), "total_norm + 1e-6"),
    ("jax", Adam(lr=0.01, amsgrad=True), None, "maximum of the bias-corrected"),
    ("jax", SGD(lr=0.1, momentum=0.9, dampening=0.5), None, "no dampening"),
    ("jax", AdamW(lr=0.01, bias_correction=False), None, "always corrects"),
])
def test_what_a_framework_cannot_express_is_not_expressible(framework, optimizer, clip, reason):
    if framework == "jax":
        pytest.importorskip("optax")
    case = with_optimizer(get_case("steps-tied-soft-adam"), optimizer, clip, name="custom")
    row, = conform(_builder(framework), cases=[case], dtypes=["float64"]).rows
    assert row.outcome == "not expressible" and reason in row.detail, row.detail


def test_optax_clipping_without_an_epsilon_is_the_alternative_rule_of_the_clip_probe():
    # eps = 0 is optax's own clip_by_global_norm; the adapter uses it and matches refimpl's
    # trajectory with that rule, which is the clip probe's documented alternative.
    pytest.importorskip("optax")
    probe = get_case("probe-steps-clip-eps")
    alternative, = step_alternatives(probe)
    row, = conform(_builder("jax"), cases=[alternative.case], dtypes=["float64"]).rows
    assert row.outcome == "pass", row.detail


def test_the_jax_adapter_follows_the_alternative_when_told_and_conform_names_it():
    # The same clipping handed to the probe's configuration: a builder that always clips the
    # optax way is "convention differs" on the probe, naming optax's rule.
    pytest.importorskip("optax")
    build = _builder("jax")

    def optax_clipping(config, dtype):
        steps = config["steps"]
        if steps["clip"] is not None:
            steps["clip"] = {**steps["clip"], "eps": 0.0}
        return build(config, dtype)

    row, = conform(optax_clipping, cases=["probe-steps-clip-eps"], dtypes=["float64"]).rows
    assert row.outcome == "convention differs", row.detail
    assert "optax.clip_by_global_norm" in row.detail


def test_refimpl_conform_runs_the_step_cases_from_the_command_line():
    pytest.importorskip("torch")
    names = ",".join(case.name for case in STEP_CASES[:3])
    result = subprocess.run(
        [sys.executable, "-m", "refimpl", "conform", "refimpl.adapters.torch:build", "--case",
         names, "--dtype", "float64"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 rows: 3 pass" in result.stdout
