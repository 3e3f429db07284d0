"""Tests for refimpl/testing/strategies/: every strategy draws what it promises, honours and
validates its overrides, and builds kink-free points by construction."""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from independent_numpy import make_impl

import refimpl
from refimpl import MLP
from refimpl.nn import Sequential
from refimpl.nn.conv import Conv2D, conv2d_backward, conv2d_forward
from refimpl.testing import assert_matches_oracle, oracle
from refimpl.testing import strategies as rs
from refimpl.testing.cases import Case
from refimpl.testing.resolution import resolution_floors, tensors_of
from refimpl.testing.strategies import convolution as rs_convolution
from refimpl.testing.strategies import data as rs_data
from refimpl.testing.strategies import drawn_cases as rs_drawn_cases
from refimpl.testing.strategies import models as rs_models
from refimpl.tying import TiedPair


def test_documented_examples_run():
    for module in (rs_models, rs_convolution, rs_data, rs_drawn_cases, oracle):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_clear_error_without_hypothesis():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "try:\n    import refimpl.testing.strategies\n"
            "except ImportError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert "refimpl.testing.strategies needs Hypothesis" in result.stdout
    assert "pip install hypothesis" in result.stdout
    # ... and the rest of refimpl (testing included) does not need it:
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import refimpl.testing, refimpl.testing.golden; print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert result.stdout.strip() == "ok", result.stderr


# --- arrays -----------------------------------------------------------------------------------

@given(rs.arrays((3, 7), kink_free=True, kink=0.5, margin=0.2, scale=3.0))
def test_kink_free_arrays_keep_their_margin(x):
    assert x.shape == (3, 7) and x.dtype == np.float64
    assert (np.abs(x - 0.5) >= 0.2).all()


@given(st.data(), st.integers(1, 60), st.booleans())
def test_distinct_arrays_have_no_ties(data, size, kink_free):
    x = data.draw(rs.arrays((size,), distinct=True, kink_free=kink_free, margin=0.1))
    gaps = np.diff(np.sort(x))
    assert (gaps >= 1.0 / (2 * size) * (1 - 1e-12)).all()
    if kink_free:
        assert (np.abs(x) >= 0.1).all()


# --- models -----------------------------------------------------------------------------------

@given(rs.mlps(min_hidden=1, max_hidden=2, min_width=2, max_width=3, activations=["relu"],
               losses=["mse"], bias=False, in_features=5, out_features=1))
def test_mlps_honour_their_overrides(model):
    dense = [layer for layer in model.layers if layer.name is not None]
    assert 2 <= len(dense) <= 3
    assert dense[0].in_features == 5 and dense[-1].out_features == 1
    assert all(2 <= layer.out_features <= 3 for layer in dense[:-1])
    assert all(not layer.bias for layer in dense)
    assert {type(layer).__name__ for layer in model.layers} <= {"Dense", "ReLU"}
    assert model.loss_spec.config()["type"] == "MSE"


def _unread(geometry: rs.ConvGeometry) -> tuple[list[int], list[int]]:
    """Input rows / columns that no window reads, by direct enumeration."""
    unread = []
    for size, k, s, p, d, out in zip((geometry.height, geometry.width), geometry.kernel_size,
                                     geometry.stride, geometry.padding, geometry.dilation,
                                     geometry.output_size(), strict=True):
        read = {o * s + i * d - p for o in range(out) for i in range(k)}
        unread.append([row for row in range(size) if row not in read])
    return unread[0], unread[1]


@given(rs.conv_geometries())
def test_conv_geometries_are_valid(geometry):
    layer = Conv2D("conv", **geometry.conv_arguments())
    shape = layer.output_shape((2, geometry.in_channels, geometry.height, geometry.width))
    assert shape[2:] == geometry.output_size() and min(shape[2:]) >= 1
    assert geometry.in_channels % geometry.groups == 0
    assert geometry.out_channels % geometry.groups == 0
    assert max(geometry.height, geometry.width) <= 3 * 4 + 3


@given(rs.conv_geometries(rounds_down=True, max_size=20), st.integers(0, 2**32 - 1))
def test_rounding_down_geometries_leave_rows_unread(geometry, seed):
    assert all(geometry.rounds_down())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, geometry.in_channels, geometry.height, geometry.width))
    weight = rng.standard_normal((geometry.out_channels,
                                  geometry.in_channels // geometry.groups,
                                  *geometry.kernel_size))
    out, cache = conv2d_forward(x, weight, None, geometry.stride, geometry.padding,
                                geometry.dilation, geometry.groups)
    dx = conv2d_backward(rng.standard_normal(out.shape), cache)[0]
    rows, columns = _unread(geometry)
    assert (dx[:, :, rows, :] == 0).all() and (dx[:, :, :, columns] == 0).all()
    # The remainder r of the output-size division: the last r padded rows are never read.
    remainder = [(size + 2 * p - d * (k - 1) - 1) % s for size, k, s, p, d in zip(
        (geometry.height, geometry.width), geometry.kernel_size, geometry.stride,
        geometry.padding, geometry.dilation, strict=True)]
    assert min(remainder) >= 1


@given(rs.conv_geometries(rounds_down=False))
def test_exact_geometries_do_not_round_down(geometry):
    assert not any(geometry.rounds_down())


@pytest.mark.parametrize("feature", ["groups", "dilation", "stride", "padding", "rounds_down",
                                     "rectangular"])
def test_conv_geometries_reach_every_feature(feature):
    condition = {
        "groups": lambda g: g.groups > 1,
        "dilation": lambda g: max(g.dilation) > 1,
        "stride": lambda g: max(g.stride) > 1,
        "padding": lambda g: max(g.padding) > 0,
        "rounds_down": lambda g: any(g.rounds_down()),
        "rectangular": lambda g: g.kernel_size[0] != g.kernel_size[1],
    }[feature]
    assert condition(find(rs.conv_geometries(), condition))


@given(rs.cnns(pools=["max", "avg"], locally_connected=None, bias=None))
def test_cnns_are_runnable_models(example):
    model, shape = example
    assert type(model.layers[0]).__name__ in ("Conv2D", "LocallyConnected2D")
    assert model.output_shape((3, *shape))[0] == 3


@given(st.data())
def test_sharing_maps_are_valid_and_chain_free(data):
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=3, max_size=6))
    model = MLP(sizes)
    slots = list(model.slot_uses())
    try:
        strategy = rs.sharing_maps(model, min_size=1)
    except ValueError as error:
        assert "can be shared" in str(error)
        return
    share = data.draw(strategy)
    shared = Sequential(model.layers, loss=model.loss_spec, share=share)  # valid
    assert 1 <= len(share)
    for slot, source in share.items():
        assert slots.index(source.name) < slots.index(slot)
        assert source.name not in share
    assert shared.parameter_count().uses == model.parameter_count().unique


@given(rs.shared_mlps(min_shared=2, weights_only=True))
def test_shared_mlps_share_weights(model):
    assert len(model.share) >= 2 and all(slot.endswith("weight") for slot in model.share)


@given(rs.tied_pairs(modes=["hard"], penalties=["l2"], min_pairs=2))
def test_tied_pairs_honour_their_overrides(pair):
    assert isinstance(pair, TiedPair) and pair.mode == "hard" and len(pair.pairs) >= 2


@given(rs.tied_pairs(modes=["soft"], penalties=["l1"], weights_only=True, max_lam=0.5))
def test_tied_pairs_weights_only(pair):
    assert pair.penalty_name == "l1"
    assert all(p.name_a.endswith("weight") and p.name_b.endswith("weight") for p in pair.pairs)
    assert all(0 <= p.lam <= 0.5 for p in pair.pairs)


# --- parameters, batches, points ----------------------------------------------------------------

@given(st.data())
def test_parameters_and_batches_fit_the_model(data):
    model = data.draw(rs.mlps())
    params = data.draw(rs.parameters(model, scale=0.5))
    batch = data.draw(rs.batches(model, min_batch=2, max_batch=3))
    assert {k: v.shape for k, v in params.items()} == model.parameter_shapes()
    assert 2 <= batch["x"].shape[0] <= 3
    model.loss_and_grads(params, batch["x"], batch["y"])      # validates everything


def _kinked_inputs(model: Sequential, params, x):
    """Every array fed to a ReLU / LeakyReLU, computed with refimpl's layers."""
    uses = model.slot_uses()
    found, h = [], x
    for layer in model.layers:
        if type(layer).__name__ in rs.KINKED_ACTIVATIONS:
            found.append(h)
        local = {}
        for name in layer.parameter_shapes():
            root, transpose = uses[f"{layer.name}.{name}"]
            local[name] = params[root].T if transpose else params[root]
        h = layer.forward(h, local)[0]
    return found


MARGIN = 0.07


@given(st.data())
def test_kink_free_points_keep_every_pre_activation_away_from_zero(data):
    model, shape = data.draw(st.one_of(
        rs.mlps(activations=["relu", "leaky_relu"], bias=True, min_hidden=1).map(
            lambda m: (m, (m.layers[0].in_features,))),
        rs.cnns(activations=["relu"], locally_connected=None).map(tuple),
        rs.shared_mlps(activations=["relu"], weights_only=True).map(
            lambda m: (m, (m.layers[0].in_features,)))))
    point = data.draw(rs.points(model, input_shape=shape, kink_free=True, margin=MARGIN))
    kinked = _kinked_inputs(model, point.params, point.inputs["x"])
    assert kinked
    for z in kinked:
        assert np.abs(z).min() >= MARGIN * (1 - 1e-9)


@given(st.data())
def test_kink_free_pairs(data):
    pair = data.draw(rs.tied_pairs(activations=["relu"], weights_only=True))
    point = data.draw(rs.points(pair, kink_free=True, margin=MARGIN))
    params_a, params_b = pair.split(point.params)
    full_b = dict(params_b)
    for name_b, (name_a, transpose) in pair.shared_b().items():
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
    for model, params, x in ((pair.model_a, params_a, point.inputs["xa"]),
                             (pair.model_b, full_b, point.inputs["xb"])):
        for z in _kinked_inputs(model, params, x):
            assert np.abs(z).min() >= MARGIN * (1 - 1e-9)
    if pair.mode == "soft" and pair.penalty_name == "l1":
        for tie in pair.pairs:
            b = params_b[tie.name_b]
            difference = params_a[tie.name_a] - (b.T if tie.transpose else b)
            assert np.abs(difference).min() >= MARGIN * (1 - 1e-9)


def test_kink_free_points_need_a_movable_bias():
    with pytest.raises(ValueError, match="without a bias"):
        rs.points(MLP([2, 3, 2], activation="relu", bias=False), kink_free=True)
    shared_bias = MLP([2, 3, 3, 2], activation="relu", share={"fc2.bias": "fc1.bias"})
    with pytest.raises(ValueError, match="is shared"):
        rs.points(shared_bias, kink_free=True)
    hard = TiedPair(MLP([2, 3, 2], activation="relu"), MLP([2, 3, 2], activation="relu"),
                    {"fc1.bias": "fc1.bias"}, mode="hard")
    with pytest.raises(ValueError, match="pair weights only"):
        rs.points(hard, kink_free=True)


# --- whole cases ----------------------------------------------------------------------------

@given(rs.cases(kink_free=True))
def test_drawn_cases_pass_the_gradient_checker(case):
    assert isinstance(case, Case) and case.kind in rs.CASE_KINDS
    mode = "full" if case.parameter_total() <= 400 else "directional"
    report = refimpl.check_gradients(case.loss_and_grads, case.params, mode=mode,
                                     directions=6)
    assert report.ok, str(report)
    outputs = case.outputs(case.params)
    assert outputs and all(np.isfinite(v).all() for v in outputs.values())


@given(rs.cases(kink_free=True), st.sampled_from(["float64", "float32"]))
def test_the_independent_implementation_matches_drawn_cases(case, dtype):
    assert_matches_oracle(make_impl(case.config, dtype), case, dtype=dtype)


# --- overrides are validated when a strategy is created -----------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: rs.arrays((2, -1)), ValueError, "shape: expected a non-negative int"),
    (lambda: rs.arrays((2,), scale=0), ValueError, "scale: expected a finite number > 0"),
    (lambda: rs.arrays((2,), margin=float("inf")), ValueError, "margin"),
    (lambda: rs.arrays((2,), kink_free="yes"), TypeError, "kink_free, distinct"),
    (lambda: rs.mlps(min_hidden=3, max_hidden=1), ValueError, "min_hidden <= max_hidden"),
    (lambda: rs.mlps(min_width=0), ValueError, "min_width: expected a positive int"),
    (lambda: rs.mlps(max_width=2.5), TypeError, "max_width: expected a positive int"),
    (lambda: rs.mlps(activations=["gelu"]), ValueError, r"activations: unknown \['gelu'\]"),
    (lambda: rs.mlps(activations=[]), ValueError, "activations: expected at least one"),
    (lambda: rs.mlps(losses=["hinge"]), ValueError, "losses: unknown"),
    (lambda: rs.mlps(bias="no"), TypeError, "bias: expected True, False or None"),
    (lambda: rs.conv_geometries(max_kernel=0), ValueError, "max_kernel"),
    (lambda: rs.conv_geometries(max_size=3), ValueError, "max_size: expected >= "),
    (lambda: rs.conv_geometries(rounds_down=True, max_stride=1), ValueError,
     "rounds_down: an output size can round down only with a stride >= 2"),
    (lambda: rs.cnns(geometries=[1]), TypeError, "geometries: expected a Hypothesis strategy"),
    (lambda: rs.cnns(pools=["min"]), ValueError, "pools: unknown"),
    (lambda: rs.sharing_maps("model"), TypeError, "model: expected a Sequential"),
    (lambda: rs.sharing_maps(MLP([2, 3, 4])), ValueError, "model: only 0 slot"),
    (lambda: rs.sharing_maps(MLP([2, 2, 2], share={"fc2.weight": "fc1.weight"})), ValueError,
     "model: already shares"),
    (lambda: rs.sharing_maps(MLP([2, 2, 2, 2]), min_size=2, max_size=1), ValueError,
     "min_size <= max_size"),
    (lambda: rs.shared_mlps(min_shared=0), ValueError, "min_shared"),
    (lambda: rs.tied_pairs(modes=["medium"]), ValueError, "modes: unknown"),
    (lambda: rs.tied_pairs(penalties=["l3"]), ValueError, "penalties: unknown"),
    (lambda: rs.tied_pairs(min_pairs=3), ValueError, "min_pairs: at most 2"),
    (lambda: rs.tied_pairs(max_lam=-1), ValueError, "max_lam"),
    (lambda: rs.parameters([1, 2]), TypeError, "model: expected a Sequential or a TiedPair"),
    (lambda: rs.parameters(MLP([2, 2]), scale=-1.0), ValueError, "scale"),
    (lambda: rs.batches(MLP([2, 2], loss=None)), TypeError, "model: expected a Sequential "
                                                            "with a loss"),
    (lambda: rs.batches(MLP([2, 2]), min_batch=0), ValueError, "min_batch"),
    (lambda: rs.batches(MLP([2, 2]), input_shape=(3,)), ValueError,
     r"input_shape: \(3,\) does not fit"),
    (lambda: rs.points(Sequential([Conv2D("c", 1, 1, 2)], loss=refimpl.nn.MSE())), ValueError,
     "input_shape: cannot be inferred"),
    (lambda: rs.points(MLP([2, 2]), kink_free=1), TypeError, "kink_free: expected a bool"),
    (lambda: rs.cases(kinds=["rnn"]), ValueError, r"kinds: unknown \['rnn'\]"),
    (lambda: rs.cases(min_batch=3, max_batch=2), ValueError, "min_batch <= max_batch"),
])
def test_bad_overrides_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- drawn cases always test something ---------------------------------------------------------

def _float32_resolvable(case) -> bool:
    """Every tensor of the case resolvable in float32 by the documented rule, computed here
    from the floors with the documented rtol written literally: rtol * scale + floor must stay
    below a third of the scale; and some gradient is non-zero."""
    reference = case.evaluate(case.params, case.inputs)
    floors = resolution_floors(case.evaluate, case.params, case.inputs, "float32",
                               reference=reference, config=case.config)
    if not any(np.any(g != 0) for g in reference[1].values()):
        return False
    for key, value in tensors_of(reference):
        scale = float(np.abs(value).max(initial=0.0))
        if scale == 0.0 and floors[key] == 0.0:
            continue                   # structurally zero: compared exactly, never inconclusive
        if not 1e-5 * scale + floors[key] < scale / 3:
            return False
    return True


def _resolvable_with_strengths_in_range(case) -> None:
    assert _float32_resolvable(case)
    lams = (case.config.get("pair", {}).get("lam") or {}).values()
    assert all(lam == 0.0 or 1e-3 <= lam <= 2.0 for lam in lams)


@settings(max_examples=100, database=None, phases=[Phase.generate])
@given(rs.cases())
def test_drawn_cases_are_never_unresolvable_in_float32(case):
    """A sample of the slow tier's thousand draws (the draws a filter must reject are rarer
    than one in a thousand; a strategy drawing tiny strengths fails here at once)."""
    _resolvable_with_strengths_in_range(case)


@pytest.mark.slow
@settings(max_examples=1000, database=None, phases=[Phase.generate])
@given(rs.cases())
def test_a_thousand_drawn_cases_are_never_unresolvable_in_float32(case):
    _resolvable_with_strengths_in_range(case)


@given(rs.tied_pairs(modes=["soft"]))
def test_tying_strengths_are_zero_or_at_least_min_lam(pair):
    assert all(lam == 0.0 or 1e-3 <= lam <= 2.0 for lam in pair.config()["lam"].values())


@given(rs.mlps(losses=["cross_entropy"], max_width=1))
def test_cross_entropy_mlps_have_two_classes(model):
    assert model.output_shape((1, model.layers[0].in_features))[1] >= 2


def test_min_lam_validation():
    with pytest.raises(ValueError, match="min_lam"):
        rs.tied_pairs(min_lam=0.0)
    with pytest.raises(ValueError, match="min_lam, max_lam"):
        rs.tied_pairs(min_lam=0.5, max_lam=0.1)
    with pytest.raises(TypeError, match="min_lam"):
        rs.tied_pairs(min_lam="small")
