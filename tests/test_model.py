"""Tests of refimpl/model.py: Sequential and MLP (sharing maps: tests/test_model_sharing.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close

COMPLEX = TOLERANCES["complex"]
CENTRAL = TOLERANCES["central"]
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "identity")
ALL_ACTIVATIONS = SMOOTH_ACTIVATIONS + ("relu", "leaky_relu")


@st.composite
def mlp_problems(draw, activations=ALL_ACTIVATIONS):
    """(model, params, x, y): an MLP of 1-4 dense layers with widths 1-6, its parameters
    from a drawn seed, a batch of 1-6 standard-normal inputs and matching targets."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    activation = draw(st.sampled_from(activations))
    loss = draw(st.sampled_from(("cross_entropy", "mse")))
    if loss == "cross_entropy" and sizes[-1] < 2:
        sizes[-1] = 2
    model = ri.MLP(sizes, activation=activation, loss=loss)
    seed = draw(st.integers(0, 2**16))
    batch = draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    params = model.init(seed)
    x = rng.standard_normal((batch, sizes[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], size=batch)
    else:
        y = rng.standard_normal((batch, sizes[-1]))
    return model, params, x, y


def tiny_problem(activation="tanh", loss="cross_entropy", sizes=(3, 4, 2), batch=5, seed=0):
    model = ri.MLP(list(sizes), activation=activation, loss=loss)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], size=batch)
    else:
        y = rng.standard_normal((batch, sizes[-1]))
    return model, model.init(seed), x, y


# --- gradients against numerical differentiation -----------------------------------------

@given(mlp_problems())
@example(tiny_problem(sizes=(1, 1, 2), batch=1))   # one feature, one hidden unit, batch 1
@example(tiny_problem(loss="mse", sizes=(1, 1), batch=1))  # a single affine unit
def test_loss_and_grads_match_complex_step(problem):
    model, params, x, y = problem
    report = ri.check_model_gradients(model, params, (x, y), method="complex")
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol


@given(mlp_problems(activations=SMOOTH_ACTIVATIONS))
def test_loss_and_grads_match_central_differences(problem):
    # Smooth activations only: central differences straddle a kink (complex step does not).
    model, params, x, y = problem
    report = ri.check_model_gradients(model, params, (x, y), method="central")
    assert report.ok, report


@given(mlp_problems(), st.integers(0, 2**16))
def test_vjp_matches_complex_step_with_random_upstream_gradient(problem, seed):
    # The coordinate loop of check_gradients (over the parameters and the input), which the
    # two tests above replace by the fast path of check_model_gradients.
    model, params, x, _ = problem
    dout = np.random.default_rng(seed).standard_normal(model.output_shape(x.shape))
    _, dx, grads = model.vjp(params, x, dout)

    def scalar(p):
        return (model.forward({k: v for k, v in p.items() if k != "x"}, p["x"]) * dout).sum()

    point = {**params, "x": x}
    report = ri.check_gradients(lambda p: (scalar(p), {**grads, "x": dx}), point,
                                method="complex", loss_fn=scalar)
    assert report.ok, report


# --- structural properties ----------------------------------------------------------------

@given(mlp_problems(), st.floats(-3, 3), st.floats(-3, 3), st.integers(0, 2**16))
def test_vjp_is_linear_in_the_upstream_gradient(problem, a, b, seed):
    model, params, x, _ = problem
    rng = np.random.default_rng(seed)
    shape = model.output_shape(x.shape)
    d1, d2 = rng.standard_normal(shape), rng.standard_normal(shape)
    _, dx1, g1 = model.vjp(params, x, d1)
    _, dx2, g2 = model.vjp(params, x, d2)
    _, dx, g = model.vjp(params, x, a * d1 + b * d2)
    assert_close(dx, a * dx1 + b * dx2, name="dx")
    for name in g:
        assert_close(g[name], a * g1[name] + b * g2[name], name=name)


@given(mlp_problems())
def test_zero_upstream_gradient_gives_zero_gradients(problem):
    model, params, x, _ = problem
    _, dx, grads = model.vjp(params, x, np.zeros(model.output_shape(x.shape)))
    assert not dx.any()
    assert not any(grad.any() for grad in grads.values())


@given(mlp_problems())
def test_grads_have_exactly_the_keys_shapes_and_dtype_of_params(problem):
    model, params, x, y = problem
    loss, grads = model.loss_and_grads(params, x, y)
    assert isinstance(loss, float)
    assert list(grads) == list(params)
    for name in params:
        assert grads[name].shape == params[name].shape
        assert grads[name].dtype == params[name].dtype == np.float64


@given(mlp_problems())
def test_inputs_are_never_mutated(problem):
    model, params, x, y = problem
    copies = ({k: v.copy() for k, v in params.items()}, x.copy(), y.copy())
    for array in (*params.values(), x, y):
        array.flags.writeable = False   # a write would raise
    model.loss_and_grads(params, x, y)
    model.vjp(params, x, np.ones(model.output_shape(x.shape)))
    for name in params:
        np.testing.assert_array_equal(params[name], copies[0][name])
    np.testing.assert_array_equal(x, copies[1])
    np.testing.assert_array_equal(y, copies[2])


@given(mlp_problems())
def test_results_are_bit_for_bit_deterministic(problem):
    model, params, x, y = problem
    loss1, grads1 = model.loss_and_grads(params, x, y)
    loss2, grads2 = model.loss_and_grads(params, x, y)
    assert loss1 == loss2
    for name in grads1:
        assert np.array_equal(grads1[name], grads2[name])


@given(mlp_problems())
def test_loss_equals_loss_and_grads_loss(problem):
    model, params, x, y = problem
    assert model.loss(params, x, y) == model.loss_and_grads(params, x, y)[0]


def test_complex_input_gives_complex_output_and_loss():
    model, params, x, y = tiny_problem()
    complex_params = {k: v.astype(complex) for k, v in params.items()}
    out = model.forward(complex_params, x)
    assert out.dtype == np.complex128
    assert isinstance(model.loss(complex_params, x, y), complex)
    # With zero imaginary parts, the real parts are the real computation (to rounding:
    # complex and real BLAS kernels sum in different orders).
    assert not out.imag.any()
    assert_close(out.real, model.forward(params, x))


def test_float32_and_integer_inputs_are_widened_not_truncated():
    model, params, x, y = tiny_problem()
    x32 = x.astype(np.float32)
    widened = model.forward(params, x32)
    assert widened.dtype == np.float64
    np.testing.assert_array_equal(widened, model.forward(params, x32.astype(np.float64)))
    xi = np.arange(15).reshape(5, 3)
    np.testing.assert_array_equal(model.forward(params, xi),
                                  model.forward(params, xi.astype(np.float64)))


# --- init ---------------------------------------------------------------------------------

def test_init_is_deterministic_per_seed_and_uses_fan_in_scaling():
    model = ri.MLP([50, 20, 3])
    first, again, other = model.init(7), model.init(7), model.init(8)
    for name in first:
        assert np.array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])
    assert set(first) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert first["fc1.weight"].shape == (20, 50) and first["fc2.bias"].shape == (3,)
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)): bounded by, and reaching close to, the bound.
    for name, fan_in in (("fc1.weight", 50), ("fc2.weight", 20), ("fc1.bias", 50)):
        bound = 1 / np.sqrt(fan_in)
        assert np.max(np.abs(first[name])) <= bound
        if name.endswith("weight"):
            assert np.max(np.abs(first[name])) > 0.9 * bound


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, None])
def test_init_rejects_bad_seeds(seed):
    with pytest.raises(TypeError, match="seed"):
        ri.MLP([2, 2]).init(seed)


# --- configuration and construction -------------------------------------------------------

def test_config_round_trips_through_json():
    model = nn.Sequential(
        [nn.Dense("a", 3, 4), nn.LeakyReLU(0.2), nn.Dense("b", 4, 4, bias=False), nn.Sigmoid(),
         nn.Dense("c", 4, 2)],
        loss=nn.MSE())
    rebuilt = nn.Sequential.from_config(json.loads(json.dumps(model.config())))
    assert rebuilt.config() == model.config()
    params = model.init(3)
    x = np.random.default_rng(0).standard_normal((2, 3))
    np.testing.assert_array_equal(rebuilt.forward(params, x), model.forward(params, x))


def test_mlp_names_and_layer_order():
    model = ri.MLP([3, 5, 4, 2], activation="relu", bias=False)
    assert list(model.parameter_shapes()) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Dense", "ReLU", "Dense", "ReLU", "Dense"]
    assert model.parameter_count() == ri.ParameterCount(15 + 20 + 8, 43, 8 * 43)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sizes": [3]}, ValueError, "sizes"),
    ({"sizes": [3, 0]}, ValueError, "out_features"),
    ({"sizes": [3, 2], "activation": "gelu"}, ValueError, "activation"),
    ({"sizes": [3, 2], "loss": "hinge"}, ValueError, "loss"),
    ({"sizes": [3, 2.5]}, TypeError, "out_features"),
])
def test_mlp_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ri.MLP(**kwargs)


def test_sequential_rejects_bad_layers_and_duplicate_names():
    with pytest.raises(ValueError, match="layers"):
        nn.Sequential([])
    with pytest.raises(TypeError, match=r"layers\[1\]"):
        nn.Sequential([nn.Dense("a", 2, 2), "relu"])
    with pytest.raises(ValueError, match="named 'a'"):
        nn.Sequential([nn.Dense("a", 2, 2), nn.Dense("a", 2, 2)])
    with pytest.raises(TypeError, match="loss"):
        nn.Sequential([nn.Dense("a", 2, 2)], loss="mse")
    with pytest.raises(ValueError, match="without a loss"):
        nn.Sequential([nn.Dense("a", 2, 2)]).loss({"a.weight": np.eye(2), "a.bias": np.zeros(2)},
                                                  np.ones((1, 2)), np.ones((1, 2)))


# --- bad input: each a clear error naming the argument -------------------------------------

def bad_input_cases():
    model, params, x, y = tiny_problem()   # MLP 3-4-2, batch 5, cross-entropy
    nan_x = x.copy()
    nan_x[1, 2] = np.nan
    inf_w = dict(params, **{"fc1.weight": np.full((4, 3), np.inf)})
    return model, params, x, y, [
        ("x rank", params, x[0], y, ValueError, r"x: .*expected input of shape \(N, 3\)"),
        ("x features", params, x[:, :2], y, ValueError, r"x: .*\(N, 3\), got \(5, 2\)"),
        ("empty batch", params, x[:0], y[:0], ValueError, "x: expected a non-empty batch"),
        ("NaN in x", params, nan_x, y, ValueError, "x: contains 1 NaN or Inf"),
        ("string x", params, np.array([["a", "b", "c"]]), y[:1], TypeError,
         "x: expected a numeric"),
        ("bool x", params, np.ones((5, 3), dtype=bool), y, TypeError, "x: .*dtype bool"),
        ("labels out of range", params, x, np.array([0, 1, 2, 0, 1]), ValueError,
         r"y: labels must lie in \[0, 2\)"),
        ("negative label", params, x, np.array([0, -1, 1, 0, 1]), ValueError, "y: labels"),
        ("float labels", params, x, y.astype(float), TypeError, "y: expected integer"),
        ("label shape", params, x, y[:4], ValueError, r"y: expected shape \(5,\)"),
        ("missing parameter", {k: v for k, v in params.items() if k != "fc2.bias"}, x, y,
         ValueError, r"params: missing \['fc2.bias'\]"),
        ("extra parameter", {**params, "fc3.weight": np.zeros((2, 2))}, x, y, ValueError,
         r"params: unexpected \['fc3.weight'\]"),
        ("misshapen parameter", {**params, "fc1.weight": np.zeros((3, 4))}, x, y, ValueError,
         r"params\['fc1.weight'\]: expected shape \(4, 3\), got \(3, 4\)"),
        ("Inf in parameter", inf_w, x, y, ValueError, r"params\['fc1.weight'\]: contains 12"),
        ("string parameter", {**params, "fc2.bias": np.array(["a", "b"])}, x, y, TypeError,
         r"params\['fc2.bias'\]"),
        ("params not a dict", list(params.values()), x, y, TypeError, "params: expected a dict"),
    ]


@pytest.mark.parametrize("index", range(len(bad_input_cases()[4])),
                         ids=[case[0] for case in bad_input_cases()[4]])
def test_bad_input_gets_a_clear_error(index):
    model, *_, cases = bad_input_cases()
    _, params, x, y, error, match = cases[index]
    with pytest.raises(error, match=match):
        model.loss_and_grads(params, x, y)


def test_mse_target_is_never_broadcast():
    model, params, x, _ = tiny_problem(loss="mse")
    with pytest.raises(ValueError, match=r"y: expected shape \(5, 2\), got \(1, 2\)"):
        model.loss_and_grads(params, x, np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"y: expected shape \(5, 2\), got \(2,\)"):
        model.loss_and_grads(params, x, np.zeros(2))


def test_vjp_rejects_misshapen_upstream_gradient():
    model, params, x, _ = tiny_problem()
    with pytest.raises(ValueError, match=r"dout: expected shape \(5, 2\)"):
        model.vjp(params, x, np.zeros((5, 1)))


# --- configurations: a missing or malformed key is named --------------------------------------

def good_config():
    return ri.MLP((3, 4, 2), loss="mse").config()


@pytest.mark.parametrize("edit, error, match", [
    (lambda c: {}, ValueError,
     r"config: missing \['layers'\]; expected the keys \['layers'\] and optionally "
     r"\['loss', 'share'\]"),
    (lambda c: [c], TypeError, r"config: expected a dict; .* got list"),
    (lambda c: {**c, "loss": "MSE"}, TypeError,
     r"config\['loss'\] \(None or a loss config\): expected a dict; expected exactly "
     r"\['type'\]; got str 'MSE'"),
    (lambda c: {**c, "loss": {"type": "Huber"}}, ValueError,
     r"config\['loss'\]: unknown loss type 'Huber'; known: \['MSE', 'SoftmaxCrossEntropy'\]"),
    (lambda c: {**c, "loss": {"type": "MSE", "reduction": "sum"}}, ValueError,
     r"config\['loss'\] \(None or a loss config\): unexpected \['reduction'\]"),
    (lambda c: {**c, "loss": {}}, ValueError, r"config\['loss'\] .*: missing \['type'\]"),
    (lambda c: {**c, "layers": "fc1"}, TypeError,
     r"config\['layers'\]: expected a list of layer configs, got str"),
    (lambda c: {**c, "layers": ["Dense"]}, TypeError,
     r"config\['layers'\]\[0\]: expected a dict"),
    (lambda c: {**c, "layers": [{"type": "Dense", "name": "fc1", "in_features": 3}]},
     ValueError, r"config\['layers'\]\[0\] \(Dense\): missing \['out_features'\]"),
    (lambda c: {**c, "layers": [{**c["layers"][0], "bais": True}]}, ValueError,
     r"config\['layers'\]\[0\] \(Dense\): unexpected \['bais'\]; expected the keys "
     r"\['type', 'name', 'in_features', 'out_features'\] and optionally \['bias'\]"),
    (lambda c: {**c, "layers": [{"name": "fc1"}]}, ValueError,
     r"config\['layers'\]\[0\]: unknown layer type None"),
    (lambda c: {**c, "extra": 1}, ValueError, r"config: unexpected \['extra'\]"),
    (lambda c: {**c, "share": ["fc2.weight"]}, TypeError,
     r"config\['share'\]: expected a dict \{slot: \{'source': name, 'transpose': bool\}\}"),
    (lambda c: {**c, "share": {"fc2.bias": {"transpose": False}}}, ValueError,
     r"config\['share'\]\['fc2.bias'\]: missing \['source'\]"),
    (lambda c: {**c, "share": {"fc2.bias": "fc1.bias"}}, TypeError,
     r"config\['share'\]\['fc2.bias'\]: expected a dict"),
    (lambda c: {**c, "share": {"fc2.bias": {"source": "fc1.bias", "transpose": "no"}}},
     TypeError, r"config\['share'\]\['fc2.bias'\]\['transpose'\]: expected a bool, got 'no'"),
])
def test_from_config_names_the_missing_or_malformed_key(edit, error, match):
    with pytest.raises(error, match=match):
        nn.Sequential.from_config(edit(good_config()))


def test_from_config_keeps_the_optional_keys_optional():
    config = good_config()
    rebuilt = nn.Sequential.from_config({"layers": config["layers"]})
    assert rebuilt.loss_spec is None and rebuilt.layers == ri.MLP((3, 4, 2)).layers
    rebuilt = nn.Sequential.from_config(
        {"layers": [{"type": "Dense", "name": "a", "in_features": 2, "out_features": 2},
                    {"type": "Dense", "name": "b", "in_features": 2, "out_features": 2}],
         "share": {"b.weight": {"source": "a.weight"}}})
    assert rebuilt.share == {"b.weight": ri.ShareSource("a.weight", False)}


# --- a forward or backward pass that overflows raises, naming the layer ------------------------

def overflowing_mlp(scale_fc2=1e308):
    """An MLP 4-8-3 whose fc2 weights are huge: fc1 and tanh stay finite (tanh ~ 1 by the
    bias 10), fc2 sums eight terms ~scale_fc2 (inf for 1e308, 8e300 for 1e300)."""
    model = ri.MLP((4, 8, 3), activation="tanh", loss="cross_entropy")
    params = model.init(0)
    params["fc1.bias"] = np.full(8, 10.0)
    params["fc2.weight"] = np.full((3, 8), scale_fc2)
    x = np.random.default_rng(1).standard_normal((5, 4))
    return model, params, x, np.array([0, 1, 2, 0, 1])


@pytest.mark.parametrize("call", [
    lambda m, p, x, y: m.forward(p, x),
    lambda m, p, x, y: m.loss(p, x, y),
    lambda m, p, x, y: m.loss_and_grads(p, x, y),
    lambda m, p, x, y: m.vjp(p, x, np.ones((5, 3))),
    lambda m, p, x, y: m.loss_and_grads(p, x + 1e-20j, y),   # the complex step too
], ids=["forward", "loss", "loss_and_grads", "vjp", "complex"])
def test_overflow_in_the_forward_pass_raises_naming_the_layer(call):
    model, params, x, y = overflowing_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the error replaces NumPy's RuntimeWarning
        with pytest.raises(FloatingPointError,
                           match=r"layer 'fc2' \(Dense\): output contains inf/NaN from "
                                 r"finite inputs"):
            call(model, params, x, y)


def test_an_unnamed_layer_is_named_by_its_index():
    # leaky_relu with a huge slope overflows where Dense did not
    model = nn.Sequential([nn.Dense("fc", 1, 1, bias=False), nn.LeakyReLU(1e300)])
    with pytest.raises(FloatingPointError,
                       match=r"layers\[1\] \(LeakyReLU\): output contains inf/NaN"):
        model.forward({"fc.weight": np.array([[1e10]])}, np.array([[-1.0]]))


def one_unit(loss=None, bias=False, share=None, layers=1):
    names = ["a", "b", "c"][:layers]
    return nn.Sequential([nn.Dense(name, 1, 1, bias=bias) for name in names],
                         loss=loss, share=share)


def test_overflow_in_the_loss_raises():
    model = one_unit(nn.MSE())
    params = {"a.weight": np.array([[1e200]])}
    with pytest.raises(FloatingPointError, match=r"loss \(MSE\): value contains inf/NaN"):
        model.loss(params, np.ones((1, 1)), np.zeros((1, 1)))
    # just below: (1e154)^2 = 1e308 is finite and returned
    assert model.loss({"a.weight": np.array([[1e154]])}, np.ones((1, 1)),
                      np.zeros((1, 1))) == pytest.approx(1e308)


class HugeGradientLoss(nn.Loss):
    """sum(out): a finite value whose gradient is reported as 1e308 * 1e308 (inf): stands for
    any loss whose backward overflows."""

    def check_target(self, target, output_shape):
        return target

    def forward(self, out, target):
        return out.sum(), out.shape

    def backward(self, dloss, cache):
        return np.full(cache, 1e308) * 1e308 * dloss


def test_overflow_in_the_loss_backward_raises():
    model = one_unit(HugeGradientLoss())
    with pytest.raises(FloatingPointError,
                       match=r"loss \(HugeGradientLoss\): backward: gradient with respect to "
                             r"the model output contains inf/NaN"):
        model.loss_and_grads({"a.weight": np.ones((1, 1))}, np.ones((1, 1)), None)


def test_overflow_in_the_backward_pass_raises_naming_the_gradient():
    # out = 1e150, loss = 1e300 and dL/dout = 2e150 are finite; dL/dW = 2e150 * x = inf
    model = one_unit(nn.MSE())
    params, x, y = {"a.weight": np.array([[1e-100]])}, np.array([[1e250]]), np.zeros((1, 1))
    assert np.isfinite(model.loss(params, x, y))
    with pytest.raises(FloatingPointError,
                       match=r"layer 'a' \(Dense\): backward: gradient of 'a.weight' contains "
                             r"inf/NaN"):
        model.loss_and_grads(params, x, y)


def test_overflow_of_the_input_gradient_raises_in_vjp_only():
    # dx = dout * w = 1e200 * 1e200 overflows; loss_and_grads never returns dx
    model = one_unit()
    params, x = {"a.weight": np.array([[1e200]])}, np.array([[1e-200]])
    with pytest.raises(FloatingPointError,
                       match=r"layer 'a' \(Dense\): backward: gradient with respect to its "
                             r"input contains inf/NaN"):
        model.vjp(params, x, np.array([[1e200]]))
    loss_model = one_unit(nn.MSE())
    loss, grads = loss_model.loss_and_grads(params, x, np.array([[-1e100]]))
    assert np.isfinite(loss) and np.isfinite(grads["a.weight"]).all()


def test_overflow_of_a_shared_gradient_sum_raises():
    # out = w^2 x with w used twice: each use's gradient 2 w^2 x^2 = 1.2e308 is finite, their
    # sum 2.4e308 is not; the loss x^2 = 6e307 is finite.
    model = one_unit(nn.MSE(), share={"b.weight": "a.weight"}, layers=2)
    x = np.array([[np.sqrt(6e307)]])
    params = {"a.weight": np.array([[1.0]])}
    assert np.isfinite(model.loss(params, x, np.zeros((1, 1))))
    with pytest.raises(FloatingPointError,
                       match=r"gradient of the shared parameter 'a.weight' \(the sum over its "
                             r"uses\) contains inf/NaN"):
        model.loss_and_grads(params, x, np.zeros((1, 1)))


def test_finite_results_next_to_overflow_are_returned_unchanged():
    # the checks reject nothing finite: the largest finite values pass, bit for bit
    model, params, x, y = overflowing_mlp(scale_fc2=1e300)
    loss, grads = model.loss_and_grads(params, x, y)
    hidden = np.tanh(x @ params["fc1.weight"].T + params["fc1.bias"])
    expected = hidden @ params["fc2.weight"].T + params["fc2.bias"]   # ~1e300, finite
    np.testing.assert_array_equal(model.forward(params, x), expected)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


# --- gradients come back in the caller's order --------------------------------------------------

def test_gradients_come_back_in_the_order_of_params():
    model, params, x, y = tiny_problem(sizes=(3, 4, 4, 2))
    reordered = {key: params[key] for key in reversed(list(params))}
    assert list(reordered) != list(model.parameter_shapes())
    _, grads = model.loss_and_grads(reordered, x, y)
    assert list(grads) == list(reordered)
    _, _, vjp_grads = model.vjp(reordered, x, np.ones((x.shape[0], 2)))
    assert list(vjp_grads) == list(reordered)
    # the values do not depend on the order
    _, in_order = model.loss_and_grads(params, x, y)
    for key in params:
        np.testing.assert_array_equal(grads[key], in_order[key])


# --- layers whose finiteness check is skipped: their outputs select their inputs ----------------

SELECTING = [nn.ReLU(), nn.Identity(), nn.Flatten(), nn.MaxPool2D(2),
             nn.MaxPool2D(3, stride=1, padding=1)]


def test_the_layers_flagged_as_selecting_are_the_ones_tested():
    from refimpl.nn.base import LAYER_TYPES
    flagged = {name for name, cls in LAYER_TYPES.items()
               if cls.output_selects_input or cls.input_gradient_selects_dout}
    assert flagged == {type(layer).__name__ for layer in SELECTING}


@pytest.mark.parametrize("layer", SELECTING, ids=repr)
@pytest.mark.parametrize("complex_step", [False, True])
def test_selecting_layers_output_only_input_values_or_zeros(layer, complex_step):
    # Sequential skips the finiteness check of these outputs (and input gradients): sound
    # only if every element is an element of the input (of dout) or a zero.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)) * 1e300
    if complex_step:
        x = x + 1e-20j * rng.standard_normal(x.shape)
    out, cache = layer.forward(x, {})
    if layer.output_selects_input:
        assert np.isin(out, np.append(x, 0)).all()
    dout = rng.standard_normal(out.shape) * 1e300
    dx = layer.backward(dout, cache)[0]
    if layer.input_gradient_selects_dout:
        assert np.isin(dx, np.append(dout, 0)).all()
    elif layer.stride < layer.kernel_size:   # overlapping windows add their gradients
        assert not np.isin(dx, np.append(dout, 0)).all()
