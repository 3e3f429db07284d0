"""Built-in shared-model cases: parameter sharing inside one ``Sequential``.

Identity uses (a hidden layer applied twice, a bias reused), transposed uses (a tied
autoencoder: decoder weight = encoder weight transposed), a chain of shares that resolves
through a double transpose, and a CNN whose two convolutions share one kernel. Every shared
parameter's gradient is the sum over its uses; the cases check it numerically.
"""

from __future__ import annotations

from ...nn import CNN, MLP, Sequential, transposed
from ...nn.activations import Sigmoid, Tanh
from ...nn.dense import Dense
from ...nn.losses import MSE, SoftmaxCrossEntropy
from . import Case
from .mlp import model_case


def cases() -> list[Case]:
    """The cases with hard sharing inside one model."""
    tied_autoencoder = Sequential(
        [Dense("enc", 5, 3), Tanh(), Dense("dec", 3, 5)], loss=MSE(),
        share={"dec.weight": transposed("enc.weight")})
    repeated_layer = MLP([4, 5, 5, 5, 3], activation="tanh",
                         share={"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias"})
    # square layers: fc3 = fc2^T, fc4 = fc3^T = fc2 (a chain through two transposes), and
    # fc4's bias reuses fc2's; every fc2 parameter has three uses.
    chain = Sequential(
        [Dense("fc1", 3, 4), Tanh(), Dense("fc2", 4, 4), Sigmoid(), Dense("fc3", 4, 4), Tanh(),
         Dense("fc4", 4, 4), Tanh(), Dense("fc5", 4, 2)],
        loss=SoftmaxCrossEntropy(),
        share={"fc3.weight": transposed("fc2.weight"), "fc4.weight": transposed("fc3.weight"),
               "fc4.bias": "fc2.bias", "fc3.bias": "fc4.bias"})
    deep_autoencoder = Sequential(
        [Dense("enc1", 6, 4), Tanh(), Dense("enc2", 4, 2), Tanh(), Dense("dec2", 2, 4), Tanh(),
         Dense("dec1", 4, 6)], loss=MSE(),
        share={"dec2.weight": transposed("enc2.weight"),
               "dec1.weight": transposed("enc1.weight")})
    # two 2->2 channel convolutions with one kernel and bias: a recurrent-style reuse of a
    # layer that is itself shared over positions.
    shared_kernel_cnn = CNN((2, 5, 5), [2, 2], [3], activation="tanh", pool=None,
                            share={"conv2.weight": "conv1.weight", "conv2.bias": "conv1.bias"})
    return [
        model_case("shared-tied-autoencoder", "shared", tied_autoencoder, (5,), 4, seed=200),
        model_case("shared-repeated-layer", "shared", repeated_layer, (4,), 5, seed=201),
        model_case("shared-transpose-chain", "shared", chain, (3,), 6, seed=202),
        model_case("shared-deep-tied-autoencoder", "shared", deep_autoencoder, (6,), 3,
                   seed=203),
        model_case("shared-cnn-kernel", "shared", shared_kernel_cnn, (2, 5, 5), 2, seed=204),
    ]
