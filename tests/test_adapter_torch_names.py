"""refimpl/adapters/torch_names.py: refimpl's names <-> a torch.nn.Module's, params and grads.

The framework tests are the second tier (``-m slow``) and are skipped, visibly, without torch;
torch is imported by a fixture, so that collecting this file imports no framework. Only the
ImportError without torch runs in the default tier (it needs no torch).
"""

from __future__ import annotations

import doctest
import importlib
import sys

import numpy as np
import pytest

from refimpl.nn import Dense, Sequential, Siamese, Tanh
from refimpl.testing import assert_matches_oracle
from refimpl.testing.cases import get_case
from refimpl.tying import TiedPair


def test_without_torch_the_import_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)      # `import torch` now fails
    monkeypatch.delitem(sys.modules, "refimpl.adapters.torch_names", raising=False)
    with pytest.raises(ImportError) as raised:
        importlib.import_module("refimpl.adapters.torch_names")
    assert str(raised.value) == ("refimpl.adapters.torch_names needs PyTorch: pip install "
                                 "'refimpl[torch]'")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def kit(torch):
    """The helper and the modules of the tests (torch's classes exist only with torch)."""
    from refimpl.adapters import torch_names

    F = torch.nn.functional  # noqa: N806 (PyTorch's own spelling)

    class TiedLM(torch.nn.Module):
        """sequence-tied-lm: embedding, RNN, a decoder whose weight is the embedding's."""

        def __init__(self, tie=True):
            super().__init__()
            self.embed = torch.nn.Embedding(11, 4)
            self.rnn = torch.nn.RNN(4, 4, batch_first=True)
            self.out = torch.nn.Linear(4, 11)
            if tie:
                self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(self.rnn(self.embed(tokens))[0])

    class ReadsTheSource(torch.nn.Module):
        """sequence-tied-lm without a parameter 'out.weight': the decoder reads the
        embedding's weight in the forward pass."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(11, 4)
            self.rnn = torch.nn.RNN(4, 4, batch_first=True)
            self.out = torch.nn.Module()
            self.out.bias = torch.nn.Parameter(torch.zeros(11))

        def forward(self, tokens):
            return F.linear(self.rnn(self.embed(tokens))[0], self.embed.weight, self.out.bias)

    class RNNClassifier(torch.nn.Module):
        """sequence-rnn-classifier: nn.RNN, the last step, a linear layer."""

        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(3, 5, batch_first=True)
            self.fc = torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    class Autoencoder(torch.nn.Module):
        """shared-tied-autoencoder: the decoder reads the encoder's weight transposed."""

        def __init__(self, decoder_weight=False):
            super().__init__()
            self.enc = torch.nn.Linear(5, 3)
            self.dec = torch.nn.Linear(3, 5) if decoder_weight else torch.nn.Module()
            if not decoder_weight:
                self.dec.bias = torch.nn.Parameter(torch.zeros(5))

    def impl_of(names, make, loss, dtype=torch.float64):
        """``impl(params, inputs)`` of the module ``make()`` through ``names``."""
        def impl(params, inputs):
            net = make().to(dtype)
            net.load_state_dict(names.state_dict(params))
            x = torch.from_numpy(inputs["x"])
            out = net(x if x.dtype == torch.int64 else x.to(dtype))
            value = loss(out, torch.from_numpy(inputs["y"]))
            value.backward()
            return value.item(), names.grads(net), {"out": out.detach().numpy()}
        return impl

    def lm_loss(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return dict(module=torch_names, TorchNames=torch_names.TorchNames, TiedLM=TiedLM,
                ReadsTheSource=ReadsTheSource, RNNClassifier=RNNClassifier,
                Autoencoder=Autoencoder, impl_of=impl_of, lm_loss=lm_loss,
                ce=F.cross_entropy)



# --- the tied language model: names, both directions, and the oracle through them -----------

@pytest.mark.slow
def test_the_tied_language_model_matches_the_oracle_through_the_names(kit):
    case = get_case("sequence-tied-lm")
    names = kit["TorchNames"](case, kit["TiedLM"]())
    assert names.torch_names == {
        "embed.weight": ("embed.weight", "out.weight"), "rnn.weight_ih": ("rnn.weight_ih_l0",),
        "rnn.weight_hh": ("rnn.weight_hh_l0",), "rnn.bias_ih": ("rnn.bias_ih_l0",),
        "rnn.bias_hh": ("rnn.bias_hh_l0",), "out.bias": ("out.bias",)}
    impl = kit["impl_of"](names, kit["TiedLM"], kit["lm_loss"])
    assert assert_matches_oracle(impl, case).verdict == "pass"
    impl32 = kit["impl_of"](names, kit["TiedLM"], kit["lm_loss"], kit["module"].torch.float32)
    assert assert_matches_oracle(impl32, case, dtype="float32").verdict == "pass"


@pytest.mark.slow
def test_the_tied_gradient_is_the_sum_over_both_uses(kit, torch):
    case = get_case("sequence-tied-lm")
    names = kit["TorchNames"](case, kit["TiedLM"]())
    _, reference = case.loss_and_grads(case.params)
    net = kit["TiedLM"]().double()
    net.load_state_dict(names.state_dict(case.params))
    kit["lm_loss"](net(torch.from_numpy(case.inputs["x"])),
                   torch.from_numpy(case.inputs["y"])).backward()
    tied = names.grads(net)["embed.weight"]
    np.testing.assert_allclose(tied, reference["embed.weight"], rtol=1e-12, atol=1e-15)
    # and neither use alone is: the decoder's use (an untied module's out.weight) differs
    decoder = _decoder_use(kit, torch, case)
    assert not np.allclose(decoder, reference["embed.weight"], rtol=1e-3)
    assert not np.allclose(tied - decoder, reference["embed.weight"], rtol=1e-3)


def _decoder_use(kit, torch, case):
    """The gradient of the decoder's use of the tied weight alone (an untied module)."""
    net = kit["TiedLM"](tie=False).double()
    with torch.no_grad():
        net.embed.weight.copy_(torch.from_numpy(case.params["embed.weight"]))
        net.out.weight.copy_(torch.from_numpy(case.params["embed.weight"]))
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(net.rnn, f"{name}_l0").copy_(torch.from_numpy(case.params[f"rnn.{name}"]))
        net.out.bias.copy_(torch.from_numpy(case.params["out.bias"]))
    kit["lm_loss"](net(torch.from_numpy(case.inputs["x"])),
                   torch.from_numpy(case.inputs["y"])).backward()
    return net.out.weight.grad.numpy()


@pytest.mark.slow
def test_params_and_grads_round_trip_both_ways(kit, torch):
    case = get_case("sequence-tied-lm")
    names = kit["TorchNames"](case, kit["TiedLM"]())
    state = names.state_dict(case.params)
    assert list(state) == list(kit["TiedLM"]().state_dict())          # load_state_dict order
    assert state["embed.weight"] is state["out.weight"]               # one tensor, two names
    net = kit["TiedLM"]().double()
    net.load_state_dict(state)
    for source in (net, net.state_dict(), state, dict(net.named_parameters())):  # tied: once
        back = names.params(source)
        assert list(back) == list(case.params)
        assert all(np.array_equal(back[key], case.params[key]) for key in back)
    _, grads = case.loss_and_grads(case.params)
    named = names.torch_grads(grads)
    assert list(named) == [name for name, _ in net.named_parameters()]   # tied: listed once
    assert names.grads(named).keys() == grads.keys()
    assert all(np.array_equal(names.grads(named)[key], grads[key]) for key in grads)
    # named_parameters(remove_duplicate=False) lists the tied tensor's gradient twice: as one
    kit["lm_loss"](net(torch.from_numpy(case.inputs["x"])),
                   torch.from_numpy(case.inputs["y"])).backward()
    every = {name: p.grad for name, p in net.named_parameters(remove_duplicate=False)}
    assert set(every) == set(state)
    assert all(np.array_equal(a, b) for a, b in zip(names.grads(every).values(),
                                                    names.grads(net).values(), strict=True))


@pytest.mark.slow
def test_a_module_that_reads_the_source_has_no_slot_to_map(kit):
    case = get_case("sequence-tied-lm")
    names = kit["TorchNames"](case, kit["ReadsTheSource"]())
    assert names.torch_names["embed.weight"] == ("embed.weight",)
    impl = kit["impl_of"](names, kit["ReadsTheSource"], kit["lm_loss"])
    assert assert_matches_oracle(impl, case).verdict == "pass"


# --- the RNN: the _l0 names -----------------------------------------------------------------

@pytest.mark.slow
def test_the_rnn_classifier_matches_the_oracle_through_the_l0_names(kit):
    case = get_case("sequence-rnn-classifier")
    names = kit["TorchNames"](case, kit["RNNClassifier"]())
    assert [names.torch_names[key][0] for key in case.params] == [
        "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
        "fc.weight", "fc.bias"]
    impl = kit["impl_of"](names, kit["RNNClassifier"], kit["ce"])
    assert assert_matches_oracle(impl, case).verdict == "pass"


@pytest.mark.slow
def test_layer_paths_map_a_torch_sequential(kit, torch):
    case = get_case("mlp-tanh-ce")

    def make():
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                   torch.nn.Linear(8, 3))

    names = kit["TorchNames"](case, make(), layers={"fc1": "0", "fc2": "2"})
    assert names.torch_names["fc2.bias"] == ("2.bias",)
    assert assert_matches_oracle(kit["impl_of"](names, make, kit["ce"]), case).ok
    with pytest.raises(ValueError, match=r"^layers: \['fc3'\] are not layers of the refimpl "
                                         r"model with parameters; those are \['fc1', 'fc2'\]"):
        kit["TorchNames"](case, make(), layers={"fc3": "4"})
    with pytest.raises(ValueError, match=r"has no module parameter 'fc1.weight' \(did you mean "
                                         r"'0.weight'|has no module parameter 'fc1.weight'.*pass "
                                         r"layers="):
        kit["TorchNames"](case, make())


# --- every mismatch is named ------------------------------------------------------------------

@pytest.mark.slow
def test_a_tie_forgotten_in_the_module_is_named(kit):
    case = get_case("sequence-tied-lm")
    expected = (r"^module: refimpl ties 'out.weight' to 'embed.weight' \(one parameter, "
                r"'embed.weight'\), but the module holds another tensor at 'out.weight': tie "
                r"them \(module.out.weight = module.embed.weight\)")
    with pytest.raises(ValueError, match=expected):
        kit["TorchNames"](case, kit["TiedLM"](tie=False))
    names = kit["TorchNames"](case, kit["TiedLM"]())
    untied = kit["TiedLM"](tie=False)
    with pytest.raises(ValueError, match=expected):
        names.params(untied)
    with pytest.raises(ValueError, match=expected.replace("module", "source", 1)):
        names.grads(untied)
    state = names.state_dict(case.params)
    with pytest.raises(ValueError, match=expected):       # equal values are not one tensor
        names.params({**state, "out.weight": state["out.weight"].clone()})
    with pytest.raises(ValueError, match=r"^module: no tensor of 'rnn.bias_hh_l0' \(refimpl's "
                                         r"'rnn.bias_hh'\)"):
        names.params({key: value for key, value in state.items() if key != "rnn.bias_hh_l0"})


@pytest.mark.slow
def test_a_tie_the_refimpl_model_does_not_have_is_named(kit):
    with pytest.raises(ValueError, match=r"^module: \['embed.weight', 'out.weight'\] are one "
                                         r"tensor of the module, but refimpl has separate "
                                         r"parameters \['embed.weight', 'out.weight'\]"):
        kit["TorchNames"]("sequence-untied-lm", kit["TiedLM"]())


@pytest.mark.slow
def test_names_and_shapes_that_do_not_map_are_named(kit, torch):
    case = get_case("sequence-rnn-classifier")
    two_layers = kit["RNNClassifier"]()
    two_layers.rnn = torch.nn.RNN(3, 5, num_layers=2, batch_first=True)
    with pytest.raises(ValueError, match=r"^module: \['rnn.weight_ih_l1', 'rnn.weight_hh_l1', "
                                         r"'rnn.bias_ih_l1', 'rnn.bias_hh_l1'\] map to no "
                                         r"parameter of the refimpl model"):
        kit["TorchNames"](case, two_layers)
    wider = kit["RNNClassifier"]()
    wider.fc = torch.nn.Linear(5, 4)
    with pytest.raises(ValueError, match=r"^module: 'fc.weight' has shape \(4, 5\), refimpl's "
                                         r"'fc.weight' \(3, 5\)"):
        kit["TorchNames"](case, wider)
    renamed = kit["RNNClassifier"]()
    renamed.head = renamed.fc
    del renamed.fc
    with pytest.raises(ValueError, match=r"^module: refimpl's parameter 'fc.weight' \(3, 5\) "
                                         r"has no module parameter 'fc.weight'"):
        kit["TorchNames"](case, renamed)
    buffered = kit["RNNClassifier"]()
    buffered.register_buffer("scale", torch.ones(1))
    with pytest.raises(ValueError, match=r"^module: the buffers \['scale'\] are in the "
                                         r"module's state_dict"):
        kit["TorchNames"](case, buffered)


@pytest.mark.slow
def test_a_transposed_tie_cannot_be_a_parameter(kit):
    case = get_case("shared-tied-autoencoder")
    assert kit["TorchNames"](case, kit["Autoencoder"]()).torch_names == {
        "enc.weight": ("enc.weight",), "enc.bias": ("enc.bias",), "dec.bias": ("dec.bias",)}
    with pytest.raises(ValueError, match=r"^module: 'dec.weight' is a parameter of the module, "
                                         r"but refimpl's slot 'dec.weight' reads 'enc.weight' "
                                         r"transposed.*read enc.weight.T in the module's "
                                         r"forward pass"):
        kit["TorchNames"](case, kit["Autoencoder"](decoder_weight=True))


@pytest.mark.slow
def test_gradients_that_are_missing_unknown_or_split_are_named(kit, torch):
    case = get_case("sequence-tied-lm")
    names = kit["TorchNames"](case, kit["TiedLM"]())
    with pytest.raises(ValueError, match=r"^source: the module parameter 'embed.weight' has no "
                                         r"gradient \(.grad is None\): call loss.backward\(\)"):
        names.grads(kit["TiedLM"]())
    named = names.torch_grads(case.loss_and_grads(case.params)[1])
    with pytest.raises(ValueError, match=r"^source: no gradient of 'rnn.bias_hh_l0' \(refimpl's "
                                         r"'rnn.bias_hh'\)"):
        names.grads({key: value for key, value in named.items() if key != "rnn.bias_hh_l0"})
    with pytest.raises(ValueError, match=r"^source: \['embd.weight'\] are not module names of "
                                         r"refimpl's parameters \(did you mean 'embed.weight'"):
        names.grads({**named, "embd.weight": named["embed.weight"]})
    # each use's gradient under its own name: one tensor, two gradients; the sum is refimpl's
    with pytest.raises(ValueError, match=r"^source: 'embed.weight' and 'out.weight' are one "
                                         r"tied tensor of the module but got two different "
                                         r"gradients"):
        names.grads({**named, "out.weight": named["embed.weight"] / 2})
    with pytest.raises(ValueError, match=r"^source\['out.bias'\]: expected shape \(11,\) "
                                         r"\(refimpl's 'out.bias'\), got \(10,\)"):
        names.grads({**named, "out.bias": np.zeros(10)})
    with pytest.raises(ValueError, match=r"^params: unexpected \['out.weight'\] \(\['out.weight'"
                                         r"\] are tied slots: refimpl stores only the parameter "
                                         r"they read\)"):
        names.state_dict({**case.params, "out.weight": case.params["embed.weight"]})
    with pytest.raises(ValueError, match=r"^grads\['out.bias'\]: expected shape \(11,\), got"):
        names.torch_grads({**case.loss_and_grads(case.params)[1], "out.bias": np.zeros(3)})


@pytest.mark.parametrize("model", [
    "siamese-triplet-all-active",                                  # a Siamese case: its tower
    get_case("microbatch-shared").config,                          # a micro-batch case: its base
    Siamese(Sequential([Dense("fc1", 4, 5), Tanh(), Dense("fc2", 5, 3)])),
])
@pytest.mark.slow
def test_every_single_model_form_gives_its_sequential(kit, torch, model):
    shapes = kit["module"]._sequential(model).parameter_shapes()
    module = torch.nn.Module()
    for slot, shape in shapes.items():
        layer, local = slot.split(".")
        if not hasattr(module, layer):
            setattr(module, layer, torch.nn.Module())
        setattr(getattr(module, layer), local, torch.nn.Parameter(torch.zeros(shape)))
    assert list(kit["TorchNames"](model, module).torch_names) == list(shapes)


@pytest.mark.slow
def test_a_tied_pair_and_other_objects_are_refused(kit, torch):
    pair = TiedPair.from_config(get_case("tied-soft-l2").config["pair"])
    for model in ("tied-soft-l2", pair):
        with pytest.raises(TypeError, match=r"^model: a tied pair has two models"):
            kit["TorchNames"](model, torch.nn.Module())
    with pytest.raises(TypeError, match=r"^model: expected a refimpl Sequential"):
        kit["TorchNames"](3, torch.nn.Module())
    with pytest.raises(TypeError, match=r"^module: expected a torch.nn.Module or its state_dict"):
        kit["TorchNames"]("mlp-tanh-ce", [1, 2])


@pytest.mark.slow
def test_the_docstring_example_runs(kit):
    assert doctest.testmod(kit["module"]).failed == 0
