"""The JAX adapter's sharded mode (refimpl/adapters/jax.py: ``sharded``) against the oracle.

Skipped, visibly, without JAX. A framework test: the slow tier (``-m slow``) as a whole. It
checks the pieces in this process (the batch padding, the placement's identity without a
mesh, the settings, what ``train_steps`` refuses before the worker is asked), then runs the
worker process with N host devices: the tied, shared, sequence, Siamese and micro-batch cases
and every step case in both dtypes, three devices, and the compiled computations holding the
collectives that make them data parallel.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow
jax = pytest.importorskip("jax")

from adapter_reference import assert_conforms  # noqa: E402

from refimpl import SGD, Adam, AdamW  # noqa: E402
from refimpl.adapters import jax as adapter  # noqa: E402
from refimpl.adapters import plan_case  # noqa: E402
from refimpl.adapters._workers import WorkerPool  # noqa: E402
from refimpl.testing import NotExpressible, conform  # noqa: E402
from refimpl.testing.cases import all_cases, get_case  # noqa: E402
from refimpl.testing.cases.steps import with_optimizer  # noqa: E402

SHARING = [case for case in all_cases()
           if case.kind in ("tied", "shared", "sequence", "siamese", "microbatch")]
STEP_CASES = [case for case in all_cases() if case.kind == "steps"]


def test_a_batch_is_padded_to_a_multiple_of_the_devices_with_its_first_example():
    x = np.arange(10).reshape(5, 2)
    padded = adapter._padded(x, 2)
    assert padded.shape == (6, 2)
    np.testing.assert_array_equal(padded[:5], x)
    np.testing.assert_array_equal(padded[5], x[0])
    assert adapter._padded(x, 5) is not None and adapter._padded(x, 5).shape == (5, 2)
    assert adapter._padded(x, 1).shape == (5, 2)


def test_without_a_mesh_nothing_is_placed():
    place = adapter._placement(plan_case(get_case("sequence-tied-lm").config), None)
    arrays = {"embed.weight": np.ones((3, 2))}
    assert place(arrays) is arrays and place(arrays, batch=True) is arrays


def test_the_sharded_builders_settings_are_checked_before_any_worker_starts(monkeypatch):
    config = get_case("mlp-tanh-ce").config
    with pytest.raises(NotExpressible, match="tf32 needs a GPU"):
        adapter.sharded(config, "tf32")
    monkeypatch.setenv(adapter.DEVICES_VARIABLE, "two")
    with pytest.raises(ValueError, match="REFIMPL_JAX_DEVICES: expected a positive integer"):
        adapter.sharded(config)
    with pytest.raises(ValueError, match="devices"):
        adapter.make_sharded_builder(devices=0)
    with pytest.raises(ValueError, match="params"):
        adapter.build_sharded(config, devices=2)({}, {})


def test_train_steps_refuses_before_the_worker_is_asked(monkeypatch):
    pytest.importorskip("optax")

    def no_worker(*arguments):
        raise AssertionError("the worker was asked")

    monkeypatch.setattr(adapter.ShardedImplementation, "_call", no_worker)
    case = get_case("steps-tied-soft-adam")
    with pytest.raises(ValueError, match="train_steps: this configuration has no 'steps'"):
        adapter.sharded(get_case("sequence-tied-lm").config).train_steps({}, [])
    impl = adapter.sharded(case.config)
    with pytest.raises(ValueError, match="params"):
        impl.train_steps({}, list(case.batches))
    with pytest.raises(ValueError, match="batches: expected a list of 3 input dicts"):
        impl.train_steps(case.params, list(case.batches[1:]))
    for optimizer, reason in ((Adam(lr=0.01, amsgrad=True), "maximum of the bias-corrected"),
                              (SGD(lr=0.1, momentum=0.9, dampening=0.5), "no dampening"),
                              (AdamW(lr=0.01, bias_correction=False), "always corrects")):
        custom = with_optimizer(case, optimizer, name="custom")
        row, = conform(adapter.sharded, cases=[custom], dtypes=["float64"]).rows
        assert row.outcome == "not expressible" and reason in row.detail, row.detail


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_step_case_passes_on_two_devices(dtype):
    pytest.importorskip("optax")
    report = conform(adapter.sharded, cases=STEP_CASES, dtypes=[dtype])
    assert {row.outcome for row in report.rows} == {"pass"}, report.table()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", SHARING, ids=[case.name for case in SHARING])
def test_every_sharing_case_matches_the_oracle_on_two_devices(case, dtype):
    assert_conforms(adapter.sharded, case, dtype)


@pytest.mark.slow
def test_three_devices():
    cases = ["sequence-tied-lm", "microbatch-siamese-triplet", "tied-hard-lasserre-transposed",
             "mlp-batch1-one-feature"]
    report = conform(adapter.make_sharded_builder(3), cases=cases, dtypes=["float64"])
    assert report.ok and report.counts()["pass"] == len(cases), report.table()
    pytest.importorskip("optax")
    steps = ["steps-tied-lm-adamw-clip", "steps-micro-batches-adam-clip"]
    report = conform(adapter.make_sharded_builder(3), cases=steps, dtypes=["float64"])
    assert report.ok and report.counts()["pass"] == len(steps), report.table()


@pytest.mark.slow
def test_the_computation_is_partitioned_over_the_devices():
    # The recording job compiles what run_sharded_job compiles and returns the optimised HLO:
    # the gradient of a replicated parameter over a split batch needs an all-reduce.
    case = get_case("sequence-tied-lm")
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    job = adapter.ShardedJob(plan_case(case.config), "float64", case.params, case.inputs, 2)
    with WorkerPool(1, environment={
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([tests, root])}) as pool:
        (loss, grads, _), texts = pool.call("distributed_jax_jobs:sharded_collectives", [job],
                                            timeout=600)[0]
    assert texts and any("all-reduce" in text for text in texts)
    assert any("num_partitions=2" in text for text in texts)
    expected_loss, expected = case.loss_and_grads(case.params)
    assert abs(loss - expected_loss) < 1e-12
    np.testing.assert_allclose(grads["embed.weight"], expected["embed.weight"], rtol=1e-9,
                               atol=1e-12)


@pytest.mark.slow
def test_the_training_steps_are_partitioned_over_the_devices():
    # Every computation of the steps (each step's gradient, each update) is compiled for two
    # partitions; the gradients' hold the all-reduce over the batch.
    pytest.importorskip("optax")
    case = get_case("steps-tied-lm-adamw-clip")
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    job = adapter.ShardedStepJob(plan_case(case.config), "float64", case.config["steps"],
                                 case.params, list(case.batches), 2)
    with WorkerPool(1, environment={
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([tests, root])}) as pool:
        result, texts = pool.call("distributed_jax_jobs:sharded_collectives", [job],
                                  timeout=600)[0]
    assert len(texts) >= 2 * case.count, len(texts)     # a gradient and an update per step
    assert all("num_partitions=2" in text for text in texts)
    assert any("all-reduce" in text for text in texts)
    expected = case.trajectory()
    np.testing.assert_allclose(result["params"][-1]["embed.weight"],
                               expected.params[-1]["embed.weight"], rtol=1e-9, atol=1e-12)
