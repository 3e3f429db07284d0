"""The reference optimizers, clipping and training steps against PyTorch itself, in float64:
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (both of PyTorch's code paths: one tensor at a time
and ``foreach``), ``torch.nn.utils.clip_grad_norm_``, and whole training steps of a tied
autoencoder and of a soft-tied pair written in PyTorch. Slow tier: it imports torch
(``tests/test_optim.py`` checks the same formulas against loop-level references)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import refimpl as ri
from refimpl import nn
from refimpl.optim import SGD, Adam, AdamW, clip_grad_norm
from refimpl.tying import TiedPair

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

STEPS = 5
# PyTorch computes m_t as m + (1 - beta1)(g - m) (lerp) and may fuse or vectorise other terms;
# float64 rounding differences of a few ulps per step, amplified by Adam's division by
# sqrt(v) + eps (here eps >= 1e-8 and gradient entries of order 1). A wrong rule moves a
# parameter by at least lr * 1e-3. Comparison: |refimpl - torch| <= ATOL + RTOL |torch|.
RTOL, ATOL = 1e-11, 1e-13


def to_torch(optimizer, tensors, foreach):
    """The torch.optim optimizer of a refimpl optimizer's config."""
    config = optimizer.config()
    name = config.pop("name")
    config.pop("eps_root", 0.0)
    config.pop("bias_correction", True)
    if "betas" in config:
        config["betas"] = tuple(config["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(tensors, **config, foreach=foreach)


OPTIMIZERS = [
    SGD(0.1), SGD(0.1, momentum=0.9), SGD(0.1, momentum=0.9, dampening=0.3),
    SGD(0.05, momentum=0.5, weight_decay=0.1), SGD(0.1, momentum=0.9, nesterov=True,
                                                   weight_decay=0.01),
    Adam(0.05), Adam(0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
    Adam(0.05, amsgrad=True, weight_decay=0.02), Adam(0.05, weight_decay=0.2,
                                                      decoupled_weight_decay=True),
    AdamW(0.05), AdamW(0.05, betas=(0.5, 0.7), weight_decay=0.3, amsgrad=True),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=repr)
def test_every_optimizer_matches_torch_optim(optimizer, foreach):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    # gradients shrinking then growing, so that AMSGrad's maximum matters
    scales = [2.0, 0.1, 1.0, 0.01, 3.0]
    gradients = [{key: scale * rng.standard_normal(value.shape) for key, value in params.items()}
                 for scale in scales[:STEPS]]
    tensors = {key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
               for key, value in params.items()}
    reference = to_torch(optimizer, list(tensors.values()), foreach)
    state = None
    for grads in gradients:
        params, state = optimizer.step(params, grads, state)
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[key], dtype=torch.float64)
        reference.step()
        for key, tensor in tensors.items():
            np.testing.assert_allclose(params[key], tensor.detach().numpy(), rtol=RTOL,
                                       atol=ATOL, err_msg=key)
            # the state is PyTorch's, entry by entry
            torch_state = reference.state[tensor]
            for name, value in state[key].items():
                expected = torch_state[name]
                expected = float(expected) if name == "step" else expected.numpy()
                np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL,
                                           err_msg=f"{key} {name}")


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1e3])
def test_clipping_matches_torch(norm_type, max_norm):
    rng = np.random.default_rng(1)
    grads = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4),
             "c": rng.standard_normal(())}
    tensors = []
    for value in grads.values():
        tensor = torch.zeros(value.shape, dtype=torch.float64, requires_grad=True)
        tensor.grad = torch.tensor(value, dtype=torch.float64)
        tensors.append(tensor)
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
    clipped, norm = clip_grad_norm(grads, max_norm, norm_type)
    np.testing.assert_allclose(norm, float(total), rtol=1e-14)
    for (key, value), tensor in zip(clipped.items(), tensors, strict=True):
        np.testing.assert_allclose(value, tensor.grad.numpy(), rtol=1e-14, atol=1e-300,
                                   err_msg=key)


def test_a_tied_autoencoders_trajectory_matches_pytorch_with_adamw_and_clipping():
    # dec.weight reads enc.weight transposed: one tensor W in PyTorch, used twice
    model = ri.Sequential([nn.Dense("enc", 4, 3), nn.Tanh(), nn.Dense("dec", 3, 4)],
                          loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    params = model.init(0)
    rng = np.random.default_rng(0)
    batches = [(x, x) for x in (rng.standard_normal((6, 4)) for _ in range(STEPS))]
    optimizer = AdamW(0.05, weight_decay=0.1)
    ours = ri.train_steps(model, params, batches, optimizer, clip=0.3)

    tensors = {key: torch.tensor(value, requires_grad=True) for key, value in params.items()}
    weight, bias_enc, bias_dec = (tensors["enc.weight"], tensors["enc.bias"],
                                  tensors["dec.bias"])
    reference = torch.optim.AdamW(list(tensors.values()), lr=0.05, weight_decay=0.1)
    for index, (x, y) in enumerate(batches):
        reference.zero_grad()
        hidden = torch.tanh(torch.tensor(x) @ weight.T + bias_enc)
        loss = torch.nn.functional.mse_loss(hidden @ weight + bias_dec, torch.tensor(y))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(tensors.values()), 0.3)
        reference.step()
        assert ours.losses[index] == pytest.approx(loss.item(), rel=1e-13)
        assert ours.grad_norms[index] == pytest.approx(float(norm), rel=1e-12)
        for key, tensor in tensors.items():
            np.testing.assert_allclose(ours.params[index][key], tensor.detach().numpy(),
                                       rtol=RTOL, atol=ATOL, err_msg=f"step {index} {key}")


def test_a_soft_pairs_trajectory_matches_pytorch_with_sgd_momentum_and_decay():
    pair = TiedPair(ri.MLP([3, 4, 2]), ri.MLP([3, 4, 3]), {"fc1.weight": "fc1.weight"},
                    lam=0.5)
    joined = pair.join(pair.model_a.init(0), pair.model_b.init(1))
    rng = np.random.default_rng(2)
    batches = [((rng.standard_normal((4, 3)), rng.integers(0, 2, 4)),
                (rng.standard_normal((6, 3)), rng.integers(0, 3, 6))) for _ in range(STEPS)]
    optimizer = SGD(0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    ours = ri.train_steps(pair, joined, batches, optimizer)

    tensors = {key: torch.tensor(value, requires_grad=True) for key, value in joined.items()}
    reference = torch.optim.SGD(list(tensors.values()), lr=0.1, momentum=0.9,
                                weight_decay=0.01, nesterov=True)

    def mlp(prefix, x):
        hidden = torch.tanh(x @ tensors[f"{prefix}fc1.weight"].T + tensors[f"{prefix}fc1.bias"])
        return hidden @ tensors[f"{prefix}fc2.weight"].T + tensors[f"{prefix}fc2.bias"]

    for index, ((xa, ya), (xb, yb)) in enumerate(batches):
        reference.zero_grad()
        cross_entropy = torch.nn.functional.cross_entropy
        loss = (cross_entropy(mlp("A:", torch.tensor(xa)), torch.tensor(ya))
                + cross_entropy(mlp("B:", torch.tensor(xb)), torch.tensor(yb))
                + 0.5 * ((tensors["A:fc1.weight"] - tensors["B:fc1.weight"]) ** 2).sum())
        loss.backward()
        reference.step()
        assert ours.losses[index] == pytest.approx(loss.item(), rel=1e-13)
        for key, tensor in tensors.items():
            np.testing.assert_allclose(ours.params[index][key], tensor.detach().numpy(),
                                       rtol=RTOL, atol=ATOL, err_msg=f"step {index} {key}")

