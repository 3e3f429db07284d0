"""The JAX adapter (refimpl/adapters/jax.py) against the oracle, over every catalogue case.

Skipped, visibly, without JAX. float64 must pass everywhere; float32 must pass, or be
inconclusive only on tensors the oracle itself cannot resolve (never a fail). JAX's own
conventions at kinks (leaky ReLU and |x| at exactly 0) differ from refimpl's and are kept:
two tests pin them, so that a change on either side is seen. A framework test: the slow tier
(``-m slow``) as a whole.
"""

from __future__ import annotations

import doctest
import importlib
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow
jax = pytest.importorskip("jax")

from adapter_reference import (  # noqa: E402
    assert_conforms,
    cast,
    numerical_grads,
    numpy_forward,
    numpy_loss,
    sequence_cases,
)

from refimpl import TiedPair  # noqa: E402
from refimpl.adapters import jax as jax_adapter  # noqa: E402
from refimpl.adapters._microbatches import micro_batches  # noqa: E402
from refimpl.adapters.jax import build  # noqa: E402
from refimpl.nn import MLP, MSE, AvgPool2D, Dense, Flatten, LeakyReLU, Sequential  # noqa: E402
from refimpl.testing import NotExpressible, compare_with_oracle  # noqa: E402
from refimpl.testing.cases import all_cases, get_case  # noqa: E402

# A step case's first step is a gradient case of a kind already here (its steps:
# tests/test_step_cases_adapters.py).
CASES = [case for case in all_cases() if case.kind != "steps"]
SEQUENCE = sequence_cases()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_catalogue_case_matches_the_oracle(case, dtype):
    assert_conforms(build, case, dtype)


def test_a_wrong_average_pool_divisor_fails(monkeypatch):
    # The negative control: count_include_pad ignored (always the real-input count) must
    # fail on a padded average pool... the catalogue's is unpadded, so plant the divisor x2.
    real = jax_adapter.LAYERS["AvgPool2D"]
    monkeypatch.setitem(jax_adapter.LAYERS, "AvgPool2D", lambda x, p, o: real(x, p, o) / 2)
    case = get_case("cnn-tanh-strided-avgpool")
    assert compare_with_oracle(build(case.config, "float64"), case).verdict == "fail"


def test_micro_batches_weighted_1_over_m_fail(monkeypatch):
    # Accumulation's negative control: weights 1/M instead of n_i / N (unequal micro-batches).
    def equal_weights(plan, inputs):
        batches = micro_batches(plan, inputs)
        return [batch._replace(weights=(1 / len(batches),) * len(batch.weights))
                for batch in batches]

    monkeypatch.setattr(jax_adapter, "micro_batches", equal_weights)
    case = get_case("microbatch-tied-soft")
    assert compare_with_oracle(build(case.config, "float64"), case).verdict == "fail"


def test_float64_runs_in_float64_and_leaves_x64_off():
    case = get_case("mlp-tanh-ce")
    loss, grads, outputs = build(case.config, "float64")(case.params, case.inputs)
    assert isinstance(loss, float)
    assert all(g.dtype == np.float64 for g in [*grads.values(), *outputs.values()])
    assert not jax.config.jax_enable_x64          # the context did not leak
    _, grads32, _ = build(case.config, "float32")(cast(case.params, "float32"),
                                                  cast(case.inputs, "float32"))
    assert all(g.dtype == np.float32 for g in grads32.values())


def test_jax_leaky_relu_takes_slope_1_at_zero():
    # Every pre-activation exactly 0 (zero inputs, zero bias): refimpl (PyTorch) uses the
    # negative slope there, jax.nn.leaky_relu the slope 1, so fc1.bias differs by 1/slope.
    model = Sequential([Dense("fc1", 2, 3), LeakyReLU(0.25), Dense("fc2", 3, 2)], loss=MSE())
    params = {**model.init(0), "fc1.bias": np.zeros(3)}
    inputs = {"x": np.zeros((4, 2)), "y": np.random.default_rng(0).standard_normal((4, 2))}
    impl = build({"model": model.config()}, "float64")
    report = compare_with_oracle(impl, model, params, inputs)
    assert report.verdict == "fail"
    assert [row.label for row in report.failures] == ["gradient 'fc1.bias'"]
    _, oracle = model.loss_and_grads(params, inputs["x"], inputs["y"])
    np.testing.assert_allclose(impl(params, inputs)[1]["fc1.bias"],
                               oracle["fc1.bias"] / 0.25, rtol=1e-14)


def test_jax_abs_takes_derivative_1_at_zero():
    # An L1-tied pair at an exact tie: refimpl's subgradient is lam * sign(0) = 0 (PyTorch's
    # torch.sign); jnp.abs's derivative at 0 is 1, adding +lam to A and -lam to B.
    model_a, model_b = MLP([3, 4, 2], activation="tanh"), MLP([3, 4, 2], activation="tanh")
    pair = TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight"}, lam=0.5, penalty="l1")
    params_a, params_b = pair.init(0)
    params_b["fc1.weight"] = params_a["fc1.weight"].copy()       # a tie at every entry
    joined = pair.join(params_a, params_b)
    rng = np.random.default_rng(1)
    inputs = {"xa": rng.standard_normal((5, 3)), "ya": rng.integers(0, 2, 5),
              "xb": rng.standard_normal((4, 3)), "yb": rng.integers(0, 2, 4)}
    impl = build({"pair": pair.config()}, "float64")
    # (inconclusive, not fail: the floor perturbs the point across the kink)
    assert compare_with_oracle(impl, pair, joined, inputs).verdict != "pass"
    _, grads = pair.joined_loss_and_grads(joined, (inputs["xa"], inputs["ya"]),
                                          (inputs["xb"], inputs["yb"]))
    jax_grads = impl(joined, inputs)[1]
    np.testing.assert_allclose(jax_grads["A:fc1.weight"] - grads["A:fc1.weight"], 0.5,
                               rtol=1e-12)
    np.testing.assert_allclose(jax_grads["B:fc1.weight"] - grads["B:fc1.weight"], -0.5,
                               rtol=1e-12)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_padded_average_pooling_in_both_count_modes(count_include_pad):
    # The catalogue's average pool is unpadded: here the divisor of the edge windows
    # (9 with count_include_pad, 4 or 6 without) decides the result.
    model = Sequential([AvgPool2D(3, stride=2, padding=1, count_include_pad=count_include_pad),
                        Flatten(), Dense("fc", 2 * 3 * 3, 2)], loss=MSE())
    rng = np.random.default_rng(7)
    inputs = {"x": rng.standard_normal((2, 2, 5, 5)), "y": rng.standard_normal((2, 2))}
    report = compare_with_oracle(build({"model": model.config()}, "float64"), model,
                                 inputs=inputs)
    assert report.ok, report


@pytest.mark.parametrize("name, config, params, inputs", SEQUENCE,
                         ids=[entry[0] for entry in SEQUENCE])
def test_issue13_layers_match_a_numpy_forward(name, config, params, inputs):
    loss, grads, outputs = build(config, "float64")(cast(params, "float64"),
                                                    cast(inputs, "float64"))
    np.testing.assert_allclose(loss, numpy_loss(config, params, inputs), rtol=1e-12)
    np.testing.assert_allclose(outputs["out"], numpy_forward(config, params, inputs["x"]),
                               rtol=1e-12, atol=1e-14)
    expected = numerical_grads(config, params, inputs)
    assert set(grads) == set(params)
    for key, value in expected.items():
        scale = np.abs(value).max()
        assert np.abs(grads[key] - value).max() <= 1e-6 * scale, key


def test_tf32_on_cpu_is_not_expressible():
    config = get_case("mlp-tanh-ce").config
    with pytest.raises(NotExpressible, match="tf32 needs a GPU"):
        build(config, "tf32")
    try:
        jax.devices("gpu")
    except RuntimeError:                 # no GPU here: a GPU device is an error, tf32 on it
        with pytest.raises(NotExpressible, match="tf32 needs a GPU"):   # not expressible
            build(config, "tf32", device="gpu")
        with pytest.raises(ValueError, match="device: no JAX device of platform 'gpu'"):
            build(config, "float64", device="gpu")


def test_bad_arguments_are_clear_errors():
    case = get_case("mlp-tanh-ce")
    with pytest.raises(ValueError, match="dtype"):
        build(case.config, "bfloat16")
    with pytest.raises(TypeError, match="device"):
        build(case.config, "float64", device=None)
    impl = build(case.config, "float64")
    with pytest.raises(ValueError, match=r"params: missing \['fc2.bias'\]"):
        impl({k: v for k, v in case.params.items() if k != "fc2.bias"}, case.inputs)


def test_importing_the_adapter_without_jax_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)        # `import jax` now fails
    monkeypatch.delitem(sys.modules, "refimpl.adapters.jax")
    with pytest.raises(ImportError) as raised:
        importlib.import_module("refimpl.adapters.jax")
    assert str(raised.value) == "refimpl.adapters.jax needs JAX: pip install 'refimpl[jax]'"
    assert isinstance(raised.value.__cause__, ImportError)


def test_the_docstring_example_runs():
    assert doctest.testmod(jax_adapter).failed == 0
