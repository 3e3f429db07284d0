"""Agreement of refimpl's explicit H v with PyTorch's double backward, in float64, on a few
models of different kinds (slow tier; skipped, visibly, without torch).

PyTorch computes ``H v`` as the gradient of ``<grad L, v>`` (``create_graph=True``): an
implementation that shares nothing with refimpl's R-operator. Each model is written here
directly in ``torch.nn.functional`` from the same parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import assert_close
from refimpl.hessian import HVP_TOLERANCES

pytestmark = pytest.mark.slow
EXACT = HVP_TOLERANCES["complex"]
torch = functional = None   # imported by the fixture: collecting the default tier costs nothing


@pytest.fixture(autouse=True, scope="module")
def _torch():
    global torch, functional
    torch = pytest.importorskip("torch", reason="the agreement with double backward needs torch")
    functional = torch.nn.functional


def double_backward(loss_of, params, v):
    """``H v`` by PyTorch: the gradient of ``<grad L, v>``, in float64."""
    tensors = {key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
               for key, value in params.items()}
    grads = torch.autograd.grad(loss_of(tensors), list(tensors.values()), create_graph=True)
    inner = sum((grad * torch.tensor(v[key])).sum() for key, grad in zip(tensors, grads,
                                                                         strict=True))
    return {key: value.detach().numpy() for key, value in zip(
        tensors, torch.autograd.grad(inner, list(tensors.values())), strict=True)}


def agree(model, params, data, loss_of, seed=0):
    rng = np.random.default_rng(seed)
    v = {key: rng.standard_normal(np.shape(value)) for key, value in params.items()}
    explicit = ri.hvp(model, params, data, v)
    reference = double_backward(loss_of, params, v)
    for key in params:
        assert_close(explicit[key], reference[key], EXACT, key)


def t(array):
    return torch.tensor(array)


def test_mlp_with_cross_entropy():
    model = nn.MLP([4, 6, 5, 3], activation="softplus")
    params = model.init(seed=1)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 4)), rng.integers(0, 3, size=7)

    def loss_of(p):
        h = functional.softplus(functional.linear(t(x), p["fc1.weight"], p["fc1.bias"]))
        h = functional.softplus(functional.linear(h, p["fc2.weight"], p["fc2.bias"]))
        return functional.cross_entropy(functional.linear(h, p["fc3.weight"], p["fc3.bias"]),
                                        t(y))
    agree(model, params, (x, y), loss_of)


def test_cnn_grouped_strided_dilated_with_pooling():
    model = nn.Sequential([
        nn.Conv2D("conv1", 2, 4, kernel_size=3, stride=2, padding=1, dilation=1, groups=2),
        nn.Tanh(), nn.AvgPool2D(2, stride=1, padding=1),
        nn.Conv2D("conv2", 4, 3, kernel_size=2, dilation=2), nn.ReLU(), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense("fc", 12, 3)], loss=nn.SoftmaxCrossEntropy())
    params = model.init(seed=2)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((3, 2, 9, 9)), rng.integers(0, 3, size=3)

    def loss_of(p):
        h = torch.tanh(functional.conv2d(t(x), p["conv1.weight"], p["conv1.bias"], stride=2,
                                         padding=1, groups=2))
        h = functional.avg_pool2d(h, 2, stride=1, padding=1)
        h = torch.relu(functional.conv2d(h, p["conv2.weight"], p["conv2.bias"], dilation=2))
        h = functional.max_pool2d(h, 2).flatten(1)
        return functional.cross_entropy(functional.linear(h, p["fc.weight"], p["fc.bias"]),
                                        t(y))
    agree(model, params, (x, y), loss_of)


def test_tied_autoencoder_shares_a_weight_transposed():
    model = nn.Sequential([nn.Dense("enc", 5, 3), nn.Tanh(), nn.Dense("dec", 3, 5)],
                          loss=nn.MSE(), share={"dec.weight": nn.transposed("enc.weight")})
    params = model.init(seed=3)
    x = np.random.default_rng(3).standard_normal((6, 5))

    def loss_of(p):
        h = torch.tanh(functional.linear(t(x), p["enc.weight"], p["enc.bias"]))
        return functional.mse_loss(functional.linear(h, p["enc.weight"].T, p["dec.bias"]), t(x))
    agree(model, params, (x, x), loss_of)


def test_embedding_rnn_language_model():
    model = nn.Sequential([nn.Embedding("embed", 6, 3), nn.RNN("rnn", 3, 4), nn.LastStep(),
                           nn.Dense("fc", 4, 6)], loss=nn.SoftmaxCrossEntropy())
    params = model.init(seed=4)
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 6, size=(3, 5)), rng.integers(0, 6, size=3)

    def loss_of(p):
        inputs = p["embed.weight"][t(x)]
        h = torch.zeros(3, 4, dtype=torch.float64)
        for step in range(5):
            h = torch.tanh(inputs[:, step] @ p["rnn.weight_ih"].T + p["rnn.bias_ih"]
                           + h @ p["rnn.weight_hh"].T + p["rnn.bias_hh"])
        return functional.cross_entropy(functional.linear(h, p["fc.weight"], p["fc.bias"]),
                                        t(y))
    agree(model, params, (x, y), loss_of)


def test_soft_tied_pair_with_its_penalty():
    model_a = nn.MLP([3, 4, 2], activation="tanh")
    model_b = nn.MLP([3, 4, 3], activation="sigmoid", loss="mse")
    pair = ri.TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight"}, lam=0.4)
    params = pair.join(*pair.init(seed=5))
    rng = np.random.default_rng(5)
    xa, ya = rng.standard_normal((4, 3)), rng.integers(0, 2, size=4)
    xb, yb = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))

    def loss_of(p):
        ha = torch.tanh(functional.linear(t(xa), p["A:fc1.weight"], p["A:fc1.bias"]))
        hb = torch.sigmoid(functional.linear(t(xb), p["B:fc1.weight"], p["B:fc1.bias"]))
        return (functional.cross_entropy(functional.linear(ha, p["A:fc2.weight"],
                                                           p["A:fc2.bias"]), t(ya))
                + functional.mse_loss(functional.linear(hb, p["B:fc2.weight"], p["B:fc2.bias"]),
                                      t(yb))
                + 0.4 * ((p["A:fc1.weight"] - p["B:fc1.weight"]) ** 2).sum())
    agree(pair, params, ((xa, ya), (xb, yb)), loss_of)


def test_siamese_triplet_tower():
    tower = nn.Sequential([nn.Dense("fc1", 4, 5), nn.Tanh(), nn.Dense("fc2", 5, 3, bias=False)])
    model = nn.Siamese(tower, nn.TripletMarginLoss(margin=2.0))
    params = model.init(seed=6)
    rng = np.random.default_rng(6)
    anchor, positive, negative = rng.standard_normal((3, 6, 4))

    def embed(p, x):
        return functional.linear(torch.tanh(functional.linear(t(x), p["fc1.weight"],
                                                              p["fc1.bias"])), p["fc2.weight"])

    def loss_of(p):
        return functional.triplet_margin_loss(embed(p, anchor), embed(p, positive),
                                              embed(p, negative), margin=2.0)
    agree(model, params, (anchor, positive, negative), loss_of)
