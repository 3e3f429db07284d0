"""Tests of the fast full check: refimpl/gradcheck/fast.py, refimpl/gradcheck/copies.py and
refimpl/modelcheck.py (ri.check_model_gradients)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import TOLERANCES, copies, fast
from refimpl.gradcheck.checker import _loop_numerical
from refimpl.gradcheck.fast import _FastNumerical, check_chains
from refimpl.gradcheck.numerical import _Evaluator, _nan_on_overflow
from refimpl.modelcheck import _problem
from refimpl.testing import strategies as rs
from refimpl.testing.cases import all_cases

METHODS = ("complex", "central", "richardson")

#: Fast and loop numerical derivatives differ by rounding only: the same perturbed points,
#: the same formulas, products summed in another order. Relative to the parameter's largest
#: derivative for the complex step; the real differences divide a loss rounding of a few
#: eps * |loss| by the step h.
AGREEMENT = {"complex": 1e-14, "central": 1e-9, "richardson": 1e-9}


def problem_of(case):
    """(model, params, data) of a catalogue or drawn case, rebuilt from its configuration."""
    config, inputs = case.config, case.inputs
    if "pair" in config:
        pair = ri.TiedPair.from_config(config["pair"])
        batch_b = (inputs["xb"], inputs["yb"] if "yb" in inputs else inputs["xb"])
        return pair, case.params, ((inputs["xa"], inputs["ya"]), batch_b)
    if "anchored" in config:
        spec = config["anchored"]
        model = ri.Sequential.from_config(spec["model"])
        reference = ({name: inputs[f"w0:{name}"] for name in spec["names"]}
                     if f"w0:{spec['names'][0]}" in inputs else None)
        anchored = ri.AnchoredModel(model, lam=spec["lam"], reference=reference,
                                    names=spec["names"], penalty=spec["penalty"])
        return anchored, case.params, (inputs["x"], inputs["y"])
    model = ri.Sequential.from_config(config["model"])
    return model, case.params, (inputs["x"], inputs["y"])


def fast_and_loop(model, params, data, method):
    """Per parameter: (fast numerical derivatives, loop ones, analytic gradient)."""
    f, loss_fn, chains, penalties, penalty_value = _problem(model, params, data)
    params = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    evaluator = _Evaluator(_nan_on_overflow(loss_fn), params, "loss_fn")
    grads = f(params)[1]
    numerical = _FastNumerical(chains, penalties, penalty_value, method, seed=0)
    for name in params:
        yield (name, numerical(name, evaluator, grads, TOLERANCES[method]),
               _loop_numerical(method, evaluator, params, name), grads[name])


def assert_fast_equals_loop(model, params, data, method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a guard fallback would hide a difference
        for name, quick, loop, grad in fast_and_loop(model, params, data, method):
            if quick is None:     # the loop's way: as cheap as the guard
                assert loop.size <= fast.GUARD_DIRECTIONS, name
                continue
            scale = max(1.0, float(np.max(np.abs(grad))))
            error = float(np.max(np.abs(quick - loop)))
            assert error <= AGREEMENT[method] * scale, (name, error, scale)


def assert_same_report(model, params, data, method="complex"):
    """check_model_gradients gives check_gradients' verdict, row by row."""
    f, loss_fn, *_ = _problem(model, params, data)
    loop = ri.check_gradients(f, params, method=method, loss_fn=loss_fn)
    quick = ri.check_model_gradients(model, params, data, method=method)
    assert quick.ok == loop.ok and quick.loss == loop.loss
    assert (quick.method, quick.mode, quick.step, quick.tolerance) == \
        (loop.method, loop.mode, loop.step, loop.tolerance)
    for a, b in zip(quick.rows, loop.rows, strict=True):
        assert (a.name, a.shape, a.checked, a.status, a.nondifferentiable) == \
            (b.name, b.shape, b.checked, b.status, b.nondifferentiable)
        if b.status != "non-finite":
            assert abs(a.max_abs_error - b.max_abs_error) <= \
                AGREEMENT[method] * max(1, b.scale)
    return quick


# --- the fast path equals the coordinate loop -----------------------------------------------

@settings(max_examples=15, deadline=None)
@given(rs.cases(kinds=["mlp", "cnn", "shared", "tied"]), st.sampled_from(["complex"]))
def test_fast_derivatives_equal_the_loop_on_drawn_cases_complex(case, method):
    assert_fast_equals_loop(*problem_of(case), method)


@settings(max_examples=10, deadline=None)
@given(rs.cases(kinds=["mlp", "cnn", "shared", "tied"], kink_free=True),
       st.sampled_from(["central", "richardson"]))
def test_fast_derivatives_equal_the_loop_on_drawn_cases_real_differences(case, method):
    assert_fast_equals_loop(*problem_of(case), method)


@settings(max_examples=8, deadline=None)
@given(rs.cnns(locally_connected=True,
               geometries=rs.conv_geometries(max_kernel=3, max_stride=2, max_padding=1,
                                             max_dilation=2, max_channels=2, max_groups=2)),
       st.integers(0, 2**16))
def test_fast_derivatives_equal_the_loop_on_locally_connected_cnns(example, seed):
    # LocallyConnected2D is not sliced: its first use runs copy by copy.
    model = example.model
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *example.input_shape))
    out = model.output_shape(x.shape)
    y = rng.integers(0, out[1], 2) if isinstance(model.loss_spec, nn.SoftmaxCrossEntropy) \
        else rng.standard_normal(out)
    assert_fast_equals_loop(model, model.init(seed), (x, y), "complex")


#: check_model_gradients takes a Sequential, TiedPair or AnchoredModel; a Siamese model or a
#: micro-batch step is checked by check_gradients' coordinate loop.
FAST_KINDS = {"mlp", "cnn", "shared", "tied", "probe", "sequence"}


# The guard's fallback is right but means the fast path evaluated another function than the
# model (e.g. a forward pass that drops the imaginary part of one perturbed weight): on the
# catalogue that is a bug to see, so here it is an error, not a warning.
@pytest.mark.filterwarnings("error:the fast full check disagrees")
@pytest.mark.parametrize("case", [case for case in all_cases() if case.kind in FAST_KINDS],
                         ids=lambda case: case.name)
def test_fast_check_gives_the_loops_report_on_every_catalogue_case(case):
    model, params, data = problem_of(case)
    if case.parameter_total() > 1000:
        pytest.skip("the loop takes too long on this case")
    report = assert_same_report(model, params, data)
    assert report.ok, report


@settings(max_examples=15, deadline=None)
@given(rs.cases(kinds=["tied", "shared", "cnn"]), st.integers(0, 2**16))
def test_the_copies_losses_are_the_models_losses_at_the_perturbed_points(case, seed):
    # Not only their differences: the real differences cancel any constant offset.
    model, params, data = problem_of(case)
    _, loss_fn, chains, penalties, penalty_value = _problem(model, params, data)
    numerical = _FastNumerical(chains, penalties, penalty_value, "central", 0)
    numerical.copies = [copies.ChainCopies(chain, params) for chain in chains]
    numerical.base = [float(chain.model.loss({u: (params[n].T if t else params[n])
                                              for u, (n, t) in chain.reads.items()},
                                             chain.x, chain.y)) for chain in chains]
    rng = np.random.default_rng(seed)
    for name, value in params.items():
        flat = rng.integers(0, value.size, 4)
        deltas = rng.uniform(-0.1, 0.1, 4)
        quick = numerical.losses(name, flat, deltas, params)
        for k in range(4):
            moved = {key: array.copy() for key, array in params.items()}
            moved[name].flat[flat[k]] += deltas[k]
            expected = float(np.real(loss_fn(moved)))
            assert abs(quick[k] - expected) <= 1e-13 * max(1.0, abs(expected)), name


def test_anchored_models_and_grouped_strided_convolutions_equal_the_loop():
    rng = np.random.default_rng(3)
    model = ri.Sequential([nn.Conv2D("conv", 4, 6, kernel_size=3, stride=2, padding=1,
                                     groups=2), nn.Tanh(), nn.AvgPool2D(2), nn.Flatten(),
                           nn.Dense("fc", 6, 3)], loss=nn.SoftmaxCrossEntropy())
    x, y = rng.standard_normal((3, 4, 5, 5)), np.array([0, 2, 1])
    for method in METHODS:
        assert_fast_equals_loop(model, model.init(3), (x, y), method)
    mlp = ri.MLP([3, 4, 2], activation="sigmoid")
    for penalty in ("l2", "l1"):
        anchored = ri.AnchoredModel(mlp, lam={"fc1.weight": 0.4}, names=["fc1.weight"],
                                    reference={"fc1.weight": rng.standard_normal((4, 3))},
                                    penalty=penalty)
        assert_fast_equals_loop(anchored, mlp.init(4), (rng.standard_normal((5, 3)),
                                                        rng.integers(0, 2, 5)), "complex")


def test_unknown_loss_and_shared_second_uses_run_copy_by_copy_and_equal_the_loop():
    class ScaledMSE(nn.MSE):      # not MSE itself: its per-copy twin must not be used
        def forward(self, out, target):
            value, cache = super().forward(out, target)
            return 3 * value, cache

    model = ri.Sequential([nn.Dense("enc", 3, 4), nn.Tanh(), nn.Dense("dec", 4, 3),
                           nn.Sigmoid(), nn.Dense("again", 3, 4), nn.Tanh(),
                           nn.Dense("out", 4, 2)], loss=ScaledMSE(),
                          share={"dec.weight": ri.transposed("enc.weight"),
                                 "again.weight": "enc.weight"})
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))
    for method in METHODS:
        assert_fast_equals_loop(model, model.init(5), data, method)


def test_a_copy_whose_layer_overflows_is_non_finite_as_in_the_loop():
    # tanh saturates, so the loss stays finite where the first layer's output overflows at
    # the perturbed point; the model raises there, and the loop reads a NaN loss.
    model = ri.Sequential([nn.Dense("fc1", 1, 4, bias=False), nn.Tanh(),
                           nn.Dense("fc2", 4, 1)], loss=nn.MSE())
    largest = np.finfo(np.float64).max / 1e300       # x w overflows for w above it
    params = {"fc1.weight": np.array([[largest * (1 - 2e-6)], [0.5], [-0.2], [0.3]]),
              "fc2.weight": np.array([[0.5, 0.2, -0.1, 0.3]]), "fc2.bias": np.array([0.1])}
    data = (np.array([[1e300]]), np.array([[0.3]]))
    report = assert_same_report(model, params, data, "central")
    assert [row.status for row in report.rows] == ["non-finite", "ok", "ok"]


# --- planted wrong gradients are still rejected ---------------------------------------------

def _planted(model, params, data, plant):
    f, loss_fn, chains, penalties, penalty_value = _problem(model, params, data)

    def wrong(p):
        loss, grads = f(p)
        grads = {key: np.array(value) for key, value in grads.items()}
        plant(grads)
        return loss, grads
    return check_chains(wrong, params, chains, penalties, penalty_value, loss_fn=loss_fn)


def _flip_one(grads):
    grads["fc1.weight"][1, 2] *= -1


def _factor(grads):
    grads["fc2.weight"] *= 1 + 1e-9


def _transpose(grads):
    grads["fc2.weight"] = grads["fc2.weight"].T.copy()


@pytest.mark.parametrize("plant, name", [(_flip_one, "fc1.weight"), (_factor, "fc2.weight"),
                                         (_transpose, "fc2.weight")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_wrong_gradients_are_rejected_on_the_fast_path(plant, name, seed):
    model = ri.MLP([3, 4, 4, 2], activation="tanh")    # fc2.weight is square
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    params = model.init(seed)
    assert ri.check_model_gradients(model, params, data).ok
    report = _planted(model, params, data, plant)
    assert not report.ok
    assert {row.name for row in report.rows if row.status == "mismatch"} == {name}


def test_a_planted_wrong_gradient_of_a_tied_pair_is_rejected():
    pair = ri.TiedPair(ri.MLP([3, 4, 2]), ri.MLP([3, 4, 2]), {"fc1.weight": "fc1.weight"},
                       lam=0.5)
    rng = np.random.default_rng(0)
    data = ((rng.standard_normal((4, 3)), rng.integers(0, 2, 4)),
            (rng.standard_normal((4, 3)), rng.integers(0, 2, 4)))
    params = pair.join(*pair.init(0))
    assert ri.check_model_gradients(pair, params, data).ok

    def plant(grads):
        grads["B:fc1.weight"][0, 0] *= 1 + 1e-9
    f, loss_fn, chains, penalties, value = _problem(pair, params, data)
    report = _planted(pair, params, data, plant)
    assert [row.name for row in report.rows if row.status == "mismatch"] == ["B:fc1.weight"]


# --- the guard: a fast path evaluating another function falls back, never passes -----------

def _wrong_unit_dense(layer, x, local, perturbed, units, rows, base):
    sliced = fast_slicer(layer, x, local, perturbed, units, rows, base)
    return sliced._replace(units=(units + 1) % base.shape[-1])   # spliced one unit off


fast_slicer = copies._SLICERS[nn.Dense]


def test_a_planted_wrong_slicing_is_caught_by_the_guard(monkeypatch):
    model = ri.MLP([3, 4, 2], activation="tanh")
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    params = model.init(1)
    monkeypatch.setitem(copies._SLICERS, nn.Dense, _wrong_unit_dense)
    # The wrong slicing really computes other derivatives ...
    f, loss_fn, chains, penalties, value = _problem(model, params, data)
    numerical = _FastNumerical(chains, penalties, value, "complex", 0)
    numerical._guard = lambda *args: None       # no disagreement found
    evaluator = _Evaluator(loss_fn, {k: np.asarray(v) for k, v in params.items()}, "loss_fn")
    grads = f(params)[1]
    wrong = numerical("fc1.weight", evaluator, grads, TOLERANCES["complex"])
    assert np.max(np.abs(wrong - grads["fc1.weight"].reshape(-1))) > 1e-3
    # ... and the guard sees it: a warning, and the loop's verdict (a pass, rightly).
    with pytest.warns(RuntimeWarning, match="disagrees with the model's own loss") as seen:
        report = assert_same_report(model, params, data)
    assert report.ok
    # Every Dense parameter the fast path would take (fc2.bias, 2 entries, takes the loop).
    warned = {str(warning.message).split("loss on '")[1].split("'")[0] for warning in seen}
    assert warned == {"fc1.weight", "fc1.bias", "fc2.weight"}


def test_a_planted_wrong_gradient_is_rejected_even_when_the_guard_falls_back(monkeypatch):
    model = ri.MLP([3, 4, 2], activation="tanh")
    rng = np.random.default_rng(2)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    monkeypatch.setitem(copies._SLICERS, nn.Dense, _wrong_unit_dense)
    with pytest.warns(RuntimeWarning):
        report = _planted(model, model.init(2), data, _flip_one)
    assert [row.status for row in report.rows][0] == "mismatch"


def test_a_planted_wrong_loss_twin_is_caught_by_the_guard(monkeypatch):
    model = ri.MLP([3, 4, 2], activation="tanh")
    rng = np.random.default_rng(4)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    twin = copies.cross_entropy_per_copy
    # A twin 1e-9 off: the guard's tolerance is rounding, not a loose bound.
    monkeypatch.setattr(copies, "cross_entropy_per_copy",
                        lambda logits, labels: twin(logits, labels) * (1 + 1e-9))
    with pytest.warns(RuntimeWarning, match="disagrees"):
        assert_same_report(model, model.init(4), data)


def test_the_guard_checks_at_least_one_direction():
    assert fast.GUARD_DIRECTIONS >= 1


class OneEntryOff(ri.Sequential):
    """A model whose loss is its layers' plus ``0.05 W[1, 2]^2`` of ``fc1.weight``, and whose
    ``loss_and_grads`` returns that loss with the layers' gradients: its loss differs from its
    layers' at one entry, and its gradient misses that entry's term."""

    def loss(self, params, x, y):
        return super().loss(params, x, y) + 0.05 * params["fc1.weight"][1, 2] ** 2

    def loss_and_grads(self, params, x, y):
        return self.loss(params, x, y), super().loss_and_grads(params, x, y)[1]


def one_entry_off_problem(cls=OneEntryOff):
    model = cls([nn.Dense("fc1", 3, 4), nn.Tanh(), nn.Dense("fc2", 4, 2)],
                loss=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(0)
    return model, model.init(0), (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))


@pytest.mark.parametrize("method", METHODS)
def test_a_model_whose_loss_differs_from_its_layers_at_one_entry_does_not_pass(method):
    """docs/gradient-checking.md: a subclass may compute another loss than its layers, so it
    takes the coordinate loop on its own loss_and_grads, whose verdict is check_gradients'."""
    model, params, data = one_entry_off_problem()
    loop = ri.check_gradients(lambda p: model.loss_and_grads(p, *data), params, method=method)
    assert [row.status for row in loop.rows] == ["mismatch", "ok", "ok", "ok"], loop
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the loop straight away, not the guard's fallback
        quick = ri.check_model_gradients(model, params, data, method=method)
    assert not quick.ok, quick
    assert [row.status for row in quick.rows] == [row.status for row in loop.rows]


def test_a_model_instance_whose_methods_are_replaced_takes_the_coordinate_loop():
    model, params, data = one_entry_off_problem(ri.Sequential)
    layers = ri.Sequential(model.layers, loss=model.loss_spec)
    model.loss = lambda p, x, y: layers.loss(p, x, y) + 0.05 * p["fc1.weight"][1, 2] ** 2
    model.loss_and_grads = lambda p, x, y: (model.loss(p, x, y),
                                            layers.loss_and_grads(p, x, y)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the loop straight away, not the guard's fallback
        report = ri.check_model_gradients(model, params, data)
    assert [row.status for row in report.rows] == ["mismatch", "ok", "ok", "ok"], report


def test_a_fast_path_that_is_wrong_at_one_entry_falls_back_and_fails(monkeypatch):
    """The guard compares with the model's own loss along directions over every entry: a
    copy loss wrong at one entry (and an analytic gradient wrong the same way) falls back to
    the loop, which fails it. Seeded coordinates, three of twelve, missed that entry."""
    model = ri.MLP([3, 4, 2], activation="tanh")
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    params = model.init(0)
    twin = copies.cross_entropy_per_copy
    entry = 5           # fc1.weight.flat[5]: its copy is the sixth of the twelve

    def one_copy_off(logits, labels):
        losses = twin(logits, labels)
        if logits.shape[0] == params["fc1.weight"].size:     # the complex step's copies
            losses[entry] = losses[entry] * (1 + 1e-3)
        return losses

    def follows_the_copies(p):
        loss, grads = model.loss_and_grads(p, *data)
        grads["fc1.weight"].flat[entry] *= 1 + 1e-3
        return loss, grads

    monkeypatch.setattr(copies, "cross_entropy_per_copy", one_copy_off)
    f, loss_fn, chains, penalties, value = _problem(model, params, data)
    with pytest.warns(RuntimeWarning, match="disagrees with the model's own loss on "
                                            "'fc1.weight'"):
        report = check_chains(follows_the_copies, params, chains, penalties, value,
                              loss_fn=loss_fn)
    assert [row.status for row in report.rows] == ["mismatch", "ok", "ok", "ok"], report


@pytest.mark.parametrize("method", ["central", "richardson"])
def test_the_real_differences_fall_back_when_the_models_own_loss_is_not_complex_safe(method):
    """For real differences the guard compares through the complex step of the model's own
    loss, so that loss is cross-checked first: an abs inside it sends every parameter to the
    coordinate loop."""
    class AbsTanh(nn.Tanh):
        def forward(self, x, params):
            out, cache = super().forward(x, params)
            return out + 0.1 * np.abs(x), cache

    model = ri.Sequential([nn.Dense("fc1", 3, 4), AbsTanh(), nn.Dense("fc2", 4, 2)],
                          loss=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    with pytest.warns(RuntimeWarning, match="cannot be verified through the model's own "
                                            "loss [(]not complex-safe") as seen:
        report = assert_same_report(model, model.init(0), data, method)
    assert len(seen) == 1
    assert {row.name for row in report.rows if row.status != "ok"} == {"fc1.weight",
                                                                        "fc1.bias"}


# --- the entry point ------------------------------------------------------------------------

def test_directional_mode_and_names_are_passed_through():
    model = ri.MLP([3, 4, 2])
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, 5))
    report = ri.check_model_gradients(model, model.init(0), data, mode="directional",
                                      directions=3)
    assert report.ok and report.mode == "directional" and len(report.rows) == 3
    report = ri.check_model_gradients(model, model.init(0), data, names=["fc2.bias"])
    assert [row.name for row in report.rows] == ["fc2.bias"]


def test_bad_arguments_are_errors_naming_them():
    model = ri.MLP([3, 4, 2])
    params = model.init(0)
    x, y = np.zeros((5, 3)), np.zeros(5, dtype=int)
    with pytest.raises(TypeError, match="model: expected a Sequential, TiedPair or "
                                        "AnchoredModel, got dict"):
        ri.check_model_gradients({}, params, (x, y))
    with pytest.raises(TypeError, match="data: expected a pair"):
        ri.check_model_gradients(model, params, x)
    with pytest.raises(ValueError, match="x: "):
        ri.check_model_gradients(model, params, (np.zeros((5, 4)), y))
    with pytest.raises(ValueError, match=r"params"):
        ri.check_model_gradients(model, {"fc1.weight": params["fc1.weight"]}, (x, y))
    with pytest.raises(ValueError, match="method: unknown method 'forward'"):
        ri.check_model_gradients(model, params, (x, y), method="forward")
    pair = ri.TiedPair(model, model, {"fc1.weight": "fc1.weight"}, lam=0.1)
    with pytest.raises(TypeError, match=r"data\[0\] \(batch_a\): expected a pair"):
        ri.check_model_gradients(pair, pair.join(*pair.init(0)), (x, (x, y)))
