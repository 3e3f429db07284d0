"""Parameter sharing inside one Sequential (refimpl/model.py, ``share=``).

The central property is *untie and sum*: a model with a sharing map computes exactly what the
same layers without sharing compute when every slot holds a copy of the unique parameter it
reads (transposed where the use is transposed), and the gradient of a unique parameter is the
sum over its uses of the untied copies' gradients (transposed back for transposed uses).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import TOLERANCES, assert_close
from refimpl.nn import CNN

COMPLEX = TOLERANCES["complex"]
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "identity")


# --- helpers (written from the definition of sharing, not from model.py's code) ------------

def untied_copy(model: ri.Sequential) -> ri.Sequential:
    """The same layers and loss, with every slot its own parameter."""
    return ri.Sequential(model.layers, loss=model.loss_spec)


def untie(model: ri.Sequential, params: dict) -> dict:
    """Every slot's value: the unique parameter it reads, transposed for a transposed use."""
    return {slot: (params[root].T if transpose else params[root]).copy()
            for slot, (root, transpose) in model.slot_uses().items()}


def summed_over_uses(model: ri.Sequential, untied_grads: dict) -> dict:
    """grads[root] = sum over the slots reading root of the slot's gradient (transposed back)."""
    total: dict = {}
    for slot, (root, transpose) in model.slot_uses().items():
        grad = untied_grads[slot].T if transpose else untied_grads[slot]
        total[root] = total[root] + grad if root in total else grad.copy()
    return total


def has_cycle(share: dict) -> bool:
    """Whether following slot -> source from some slot returns to a slot already visited."""
    for start in share:
        seen, slot = {start}, share[start]
        while slot in share:
            if slot in seen:
                return True
            seen.add(slot)
            slot = share[slot]
        if slot in seen:
            return True
    return False


def source_name(source) -> str:
    return source.name if isinstance(source, ri.ShareSource) else source


# --- strategies ----------------------------------------------------------------------------

@st.composite
def sharing_maps(draw, slots: dict) -> dict:
    """A random acyclic sharing map over ``slots`` ({name: shape}): the slots are visited in a
    random order and each may read an earlier one (identity when the shapes are equal,
    transposed when they are each other's transpose), which makes chains likely and cycles
    impossible. At least one share when any is possible."""
    order = draw(st.permutations(list(slots)))
    share: dict = {}
    first_candidate = None
    for index, slot in enumerate(order):
        shape = slots[slot]
        candidates = []
        for source in order[:index]:
            if slots[source] == shape:
                candidates.append(source)
            if len(shape) == 2 and slots[source] == shape[::-1]:
                candidates.append(ri.transposed(source))
        if not candidates:
            continue
        if first_candidate is None:
            first_candidate = (slot, candidates[0])
        if draw(st.booleans()):
            share[slot] = draw(st.sampled_from(candidates))
    if not share and first_candidate is not None:
        share[first_candidate[0]] = first_candidate[1]
    return share


@st.composite
def shared_mlp_problems(draw, activations=SMOOTH_ACTIVATIONS):
    """(model, params, x, y): an MLP with widths in {2, 3} (so that many slots have equal or
    transposed shapes) and a random sharing map."""
    sizes = draw(st.lists(st.sampled_from((2, 3)), min_size=3, max_size=5))
    activation = draw(st.sampled_from(activations))
    loss = draw(st.sampled_from(("cross_entropy", "mse")))
    bias = draw(st.booleans())
    plain = ri.MLP(sizes, activation=activation, loss=loss, bias=bias)
    share = draw(sharing_maps(plain.parameter_shapes()))
    model = ri.MLP(sizes, activation=activation, loss=loss, bias=bias, share=share)
    seed = draw(st.integers(0, 2**16))
    batch = draw(st.integers(1, 5))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0]))
    y = (rng.integers(0, sizes[-1], size=batch) if loss == "cross_entropy"
         else rng.standard_normal((batch, sizes[-1])))
    return model, model.init(seed), x, y


@st.composite
def shared_cnn_problems(draw):
    """(model, params, x, y): a CNN with two convolutions of one channel count C -> C (so the
    second may use the first's kernel) and smooth activations, with a random sharing map over
    its slots."""
    channels = draw(st.integers(1, 2))
    size = draw(st.integers(3, 5))
    activation = draw(st.sampled_from(("tanh", "softplus")))
    pool = draw(st.sampled_from((None, "avg")))
    pool_layer = nn.AvgPool2D(2) if pool == "avg" and size >= 4 else None
    plain = CNN((channels, size, size), [channels, channels], [3], activation=activation,
                pool=pool_layer)
    share = draw(sharing_maps(plain.parameter_shapes()))
    model = CNN((channels, size, size), [channels, channels], [3], activation=activation,
                pool=pool_layer, share=share)
    seed = draw(st.integers(0, 2**16))
    batch = draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, size, size))
    y = rng.integers(0, 3, size=batch)
    return model, model.init(seed), x, y


def tied_autoencoder_problem(seed=0, batch=4):
    model = ri.Sequential([nn.Dense("enc", 5, 3), nn.Tanh(), nn.Dense("dec", 3, 5)],
                          loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 5))
    return model, model.init(seed), x, x.copy()


# --- untie and sum ----------------------------------------------------------------------------

def check_untie_and_sum(model, params, x, y, seed=0):
    untied = untied_copy(model)
    untied_params = untie(model, params)
    loss, grads = model.loss_and_grads(params, x, y)
    untied_loss, untied_grads = untied.loss_and_grads(untied_params, x, y)
    assert_close(loss, untied_loss, name="loss")
    expected = summed_over_uses(model, untied_grads)
    assert list(grads) == list(model.parameter_shapes())
    for name in grads:
        assert_close(grads[name], expected[name], name=f"grads[{name!r}]")
    # The same through the vector-Jacobian product with a random upstream gradient.
    dout = np.random.default_rng(seed).standard_normal(model.output_shape(x.shape))
    out, dx, vjp_grads = model.vjp(params, x, dout)
    untied_out, untied_dx, untied_vjp = untied.vjp(untied_params, x, dout)
    assert_close(out, untied_out, name="out")
    assert_close(dx, untied_dx, name="dx")
    expected = summed_over_uses(model, untied_vjp)
    for name in vjp_grads:
        assert_close(vjp_grads[name], expected[name], name=f"vjp grads[{name!r}]")


@given(shared_mlp_problems(activations=SMOOTH_ACTIVATIONS + ("relu", "leaky_relu")))
@example(tied_autoencoder_problem())
def test_shared_gradient_is_the_sum_over_untied_uses(problem):
    check_untie_and_sum(*problem)


@given(shared_cnn_problems())
def test_shared_cnn_gradient_is_the_sum_over_untied_uses(problem):
    check_untie_and_sum(*problem)


def test_untie_and_sum_for_every_sharing_map_of_a_small_model():
    """All 5^3 maps over three 2x2 weights (each slot unshared, or reading one of the two
    others as is or transposed): the acyclic ones untie-and-sum, the cyclic ones are refused."""
    layers = [nn.Dense("a", 2, 2, bias=False), nn.Tanh(), nn.Dense("b", 2, 2, bias=False),
              nn.Sigmoid(), nn.Dense("c", 2, 2, bias=False)]
    slots = ["a.weight", "b.weight", "c.weight"]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 2)), rng.integers(0, 2, size=3)
    accepted = refused = 0
    for choices in itertools.product(range(5), repeat=3):
        share = {}
        for slot, choice in zip(slots, choices, strict=True):
            if choice:
                others = [s for s in slots if s != slot]
                source = others[(choice - 1) // 2]
                share[slot] = ri.transposed(source) if choice % 2 == 0 else source
        if has_cycle({slot: source_name(src) for slot, src in share.items()}):
            with pytest.raises(ValueError, match="cycle"):
                ri.Sequential(layers, loss=nn.SoftmaxCrossEntropy(), share=share)
            refused += 1
            continue
        model = ri.Sequential(layers, loss=nn.SoftmaxCrossEntropy(), share=share)
        check_untie_and_sum(model, model.init(1), x, y)
        accepted += 1
    assert accepted + refused == 125
    assert refused > 0 and accepted > 0


def test_a_parameter_used_three_times_gets_three_contributions():
    # fc2, fc3 = fc2^T and fc4 = fc3^T = fc2: three uses of one 3x3 weight.
    model = ri.Sequential(
        [nn.Dense("fc1", 2, 3), nn.Tanh(), nn.Dense("fc2", 3, 3), nn.Tanh(),
         nn.Dense("fc3", 3, 3), nn.Tanh(), nn.Dense("fc4", 3, 3)],
        loss=nn.MSE(),
        share={"fc3.weight": ri.transposed("fc2.weight"),
               "fc4.weight": ri.transposed("fc3.weight")})
    assert model.slot_uses()["fc4.weight"] == ("fc2.weight", False)
    assert model.slot_uses()["fc3.weight"] == ("fc2.weight", True)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    params = model.init(3)
    untied_grads = untied_copy(model).loss_and_grads(untie(model, params), x, y)[1]
    grads = model.loss_and_grads(params, x, y)[1]
    by_hand = (untied_grads["fc2.weight"] + untied_grads["fc3.weight"].T
               + untied_grads["fc4.weight"])
    assert_close(grads["fc2.weight"], by_hand)
    # Each contribution matters: none is zero and dropping any one changes the sum.
    for part in ("fc2.weight", "fc3.weight", "fc4.weight"):
        assert np.abs(untied_grads[part]).max() > 1e-3


# --- against the complex step -----------------------------------------------------------------

@given(shared_mlp_problems())
@example(tied_autoencoder_problem())
def test_shared_mlp_matches_complex_step(problem):
    # The coordinate loop (check_gradients); the CNN test below takes the fast path.
    model, params, x, y = problem
    report = ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params,
                                method="complex")
    assert report.ok, report
    assert max(row.max_rel_error for row in report.rows) <= COMPLEX.rtol


@given(shared_cnn_problems())
def test_shared_cnn_matches_complex_step(problem):
    model, params, x, y = problem
    report = ri.check_model_gradients(model, params, (x, y), method="complex")
    assert report.ok, report


# --- parameters, counts, configuration --------------------------------------------------------

def test_params_hold_only_unique_parameters_and_init_keeps_the_others_values():
    model, params, _, _ = tied_autoencoder_problem(seed=7)
    assert list(params) == ["enc.weight", "enc.bias", "dec.bias"]
    plain = untied_copy(model).init(7)
    for name, value in params.items():
        np.testing.assert_array_equal(value, plain[name])


def test_parameter_count_of_a_tied_autoencoder():
    model, _, _, _ = tied_autoencoder_problem()
    # by hand: enc.weight 3x5 = 15, enc.bias 3, dec.weight 5x3 = 15 (shared), dec.bias 5
    assert model.parameter_count() == ri.ParameterCount(unique=23, uses=38, bytes=8 * 23)
    plain = untied_copy(model).parameter_count()
    assert plain == ri.ParameterCount(38, 38, 8 * 38)


def test_parameter_count_of_a_repeated_layer():
    model = ri.MLP([4, 5, 5, 5, 3], share={"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias"})
    # 4*5+5 + 5*5+5 + (5*5+5 shared) + 5*3+3
    assert model.parameter_count() == ri.ParameterCount(73, 103, 584)


def test_config_round_trips_a_sharing_map_with_transposes():
    model = ri.Sequential(
        [nn.Dense("fc1", 3, 3), nn.Tanh(), nn.Dense("fc2", 3, 3), nn.Tanh(),
         nn.Dense("fc3", 3, 3)], loss=nn.MSE(),
        share={"fc2.weight": ri.transposed("fc1.weight"), "fc3.weight": "fc2.weight",
               "fc3.bias": "fc1.bias"})
    import json
    rebuilt = ri.Sequential.from_config(json.loads(json.dumps(model.config())))
    assert rebuilt.slot_uses() == model.slot_uses()
    params = model.init(0)
    x = np.random.default_rng(0).standard_normal((2, 3))
    np.testing.assert_array_equal(rebuilt.forward(params, x), model.forward(params, x))


def test_shared_slots_are_not_accepted_in_params():
    model, params, x, y = tied_autoencoder_problem()
    with pytest.raises(ValueError, match=r"shared slots"):
        model.loss_and_grads({**params, "dec.weight": params["enc.weight"].T}, x, y)
    with pytest.raises(ValueError, match=r"missing \['enc.weight'\]"):
        model.loss_and_grads({k: v for k, v in params.items() if k != "enc.weight"}, x, y)


# --- construction errors ----------------------------------------------------------------------

def three_layers(share):
    return ri.Sequential(
        [nn.Dense("fc1", 3, 4), nn.Tanh(), nn.Dense("fc2", 4, 4), nn.Tanh(),
         nn.Dense("fc3", 4, 4), nn.Tanh(), nn.Dense("fc4", 4, 2)],
        loss=nn.SoftmaxCrossEntropy(), share=share)


@pytest.mark.parametrize("share, error, match", [
    ({"fc9.weight": "fc2.weight"}, ValueError, r"unknown slot 'fc9.weight'"),
    ({"fc3.weight": "fc2.wieght"}, ValueError, r"unknown source 'fc2.wieght'"),
    ({"fc3.weight": ri.transposed("nope.weight")}, ValueError, r"unknown source 'nope.weight'"),
    ({"fc2.weight": "fc2.weight"}, ValueError, r"'fc2.weight' is shared onto itself"),
    ({"fc2.weight": "fc3.weight", "fc3.weight": "fc2.weight"}, ValueError, r"cycle"),
    ({"fc2.weight": ri.transposed("fc3.weight"), "fc3.weight": ri.transposed("fc2.weight")},
     ValueError, r"cycle"),
    ({"fc2.bias": "fc3.bias", "fc3.bias": "fc1.bias", "fc1.bias": "fc2.bias"}, ValueError,
     r"cycle"),
    ({"fc4.weight": "fc1.weight"}, ValueError,
     r"slot shape \(2, 4\) does not match the source 'fc1.weight' shape \(4, 3\)"),
    ({"fc4.weight": ri.transposed("fc1.weight")}, ValueError,
     r"does not match the transposed source 'fc1.weight' shape \(3, 4\)"),
    ({"fc2.bias": ri.transposed("fc3.bias")}, ValueError, r"only 2-D parameters can be shared"),
    ({"fc2.weight": ("fc3.weight", True)}, TypeError, r"share\['fc2.weight'\]: expected a "
                                                      r"parameter name or transposed"),
    ({"fc2.weight": 3}, TypeError, r"share\['fc2.weight'\]"),
    ([("fc2.weight", "fc3.weight")], TypeError, r"share: expected a mapping"),
])
def test_bad_sharing_maps_are_refused_at_construction(share, error, match):
    with pytest.raises(error, match=match):
        three_layers(share)


def test_a_long_chain_resolves_to_its_root():
    model = three_layers({"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias",
                          "fc2.bias": "fc1.bias"})
    assert model.slot_uses()["fc3.bias"] == ("fc1.bias", False)
    assert list(model.parameter_shapes()) == ["fc1.weight", "fc1.bias", "fc2.weight",
                                              "fc4.weight", "fc4.bias"]
