"""``refimpl memory``: what sharing saves — unique parameters stored vs parameter uses.

For each example model (or pair of models) the table gives:

* ``unique``: scalars stored, the size of ``params`` (``parameter_count().unique``);
* ``uses``: scalars the layers use, i.e. what the same architecture would store without any
  sharing (``parameter_count().uses``);
* ``bytes``: bytes stored for the unique parameters (float64, 8 per scalar);
* ``uses / unique``: how many times each stored scalar is used on average.

The examples: a plain MLP (nothing shared), a deep MLP reusing one hidden layer (identity
sharing), a tied autoencoder (decoder weight = encoder weight transposed), two separate MLPs
vs the same two with their first layer hard-shared, a convolution vs the locally
connected layer of the same geometry (one kernel used at every position vs a kernel per
position; see :func:`convolution_count`), a language model vs the same with its output layer
tied to its input embedding, and an RNN vs its unrolled twin (one set of weights used at
every time step vs a copy per step; see :func:`recurrence_count`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from .._io import JSON_HELP, check_destination, write_text_atomically
from .._table import format_table
from ..nn import (
    MLP,
    RNN,
    Conv2D,
    Embedding,
    LocallyConnected2D,
    ParameterCount,
    Sequential,
    UnrolledRNN,
    transposed,
)
from ..nn.activations import Tanh
from ..nn.dense import Dense
from ..nn.losses import MSE, SoftmaxCrossEntropy
from ..tying import TiedPair

__all__ = ["memory_examples", "add_memory_arguments", "run_memory", "convolution_count",
           "recurrence_count"]

#: The language model of the table: vocabulary, embedding (= hidden) size, time steps.
LM_VOCABULARY, LM_DIM, LM_STEPS = 10_000, 256, 32


def language_model(tied: bool) -> Sequential:
    """``Embedding("embed", V, D) -> RNN("rnn", D, D) -> Dense("out", D, V)``; ``tied``: the
    output weight is the embedding (``share={"out.weight": "embed.weight"}``)."""
    return Sequential([Embedding("embed", LM_VOCABULARY, LM_DIM), RNN("rnn", LM_DIM, LM_DIM),
                       Dense("out", LM_DIM, LM_VOCABULARY)], loss=SoftmaxCrossEntropy(),
                      share={"out.weight": "embed.weight"} if tied else None)


def memory_examples() -> list[tuple[str, ParameterCount]]:
    """Count the unique parameters and the parameter uses of every example.

    Returns
    -------
    list of tuple
        ``(description, count)`` for every example, in table order; ``count`` is a
        :class:`refimpl.ParameterCount`.
    """
    mlp = MLP([784, 256, 128, 10])
    deep = MLP([784, 256, 256, 256, 10])
    deep_shared = MLP([784, 256, 256, 256, 10],
                      share={"fc3.weight": "fc2.weight", "fc3.bias": "fc2.bias"})
    autoencoder = Sequential([Dense("enc", 784, 256), Tanh(), Dense("dec", 256, 784)],
                             loss=MSE())
    tied_autoencoder = Sequential([Dense("enc", 784, 256), Tanh(), Dense("dec", 256, 784)],
                                  loss=MSE(), share={"dec.weight": transposed("enc.weight")})
    classifier_a, classifier_b = MLP([784, 256, 10]), MLP([784, 256, 5])
    first_layer = {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"}
    soft = TiedPair(classifier_a, classifier_b, first_layer, lam=0.1)
    hard = TiedPair(classifier_a, classifier_b, first_layer, mode="hard")
    conv = Conv2D("conv", 3, 16, kernel_size=3, padding=1)
    local = LocallyConnected2D("local", 3, 16, kernel_size=3, input_size=32, padding=1)
    return [
        ("MLP 784-256-128-10 (nothing shared)", mlp.parameter_count()),
        ("MLP 784-256-256-256-10", deep.parameter_count()),
        ("  same, fc3 shares fc2 (identity)", deep_shared.parameter_count()),
        ("autoencoder 784-256-784", autoencoder.parameter_count()),
        ("  same, dec.weight = enc.weight^T", tied_autoencoder.parameter_count()),
        ("two MLPs 784-256-10 and 784-256-5 (soft tying)", soft.parameter_count()),
        ("  same pair, fc1 hard-shared", hard.parameter_count()),
        ("Conv2D 3->16 3x3 pad 1 on 3x32x32 (per position)", convolution_count(conv, (3, 32, 32))),
        ("  LocallyConnected2D, same geometry", Sequential([local]).parameter_count()),
        (f"LM: Embedding {LM_VOCABULARY}x{LM_DIM}, RNN, Dense {LM_DIM}->{LM_VOCABULARY}",
         language_model(False).parameter_count()),
        ("  same, out.weight = embed.weight (tied)", language_model(True).parameter_count()),
        (f"RNN {LM_DIM}->{LM_DIM} over {LM_STEPS} steps (per step)",
         recurrence_count(RNN("rnn", LM_DIM, LM_DIM), LM_STEPS)),
        ("  UnrolledRNN, a copy per step",
         Sequential([UnrolledRNN("rnn", LM_DIM, LM_DIM, LM_STEPS)]).parameter_count()),
    ]


def convolution_count(conv: Conv2D, input_shape: tuple[int, int, int]) -> ParameterCount:
    """Count a convolution's sharing per output position.

    The kernel and bias are stored once and used at each of the ``Ho * Wo`` positions, which
    is exactly what the locally connected layer of the same geometry stores.
    (``Sequential.parameter_count`` counts parameter *slots*, where a convolution's weight is
    one use.)

    Parameters
    ----------
    conv : Conv2D
        The convolution.
    input_shape : tuple of int
        ``(C, H, W)`` of one input.

    Returns
    -------
    refimpl.ParameterCount
        ``unique`` scalars stored, ``uses`` = ``unique * Ho * Wo``, ``bytes`` = 8 per unique
        scalar.
    """
    _, _, out_h, out_w = conv.output_shape((1, *input_shape))
    unique = sum(math.prod(shape) for shape in conv.parameter_shapes().values())
    return ParameterCount(unique, unique * out_h * out_w, 8 * unique)


def recurrence_count(rnn: RNN, steps: int) -> ParameterCount:
    """Count an RNN's sharing per time step.

    Every parameter is stored once and used at each of the ``steps`` steps, except
    ``weight_hh`` at the first step, which multiplies ``h_{-1} = 0``: the uses are exactly
    what the unrolled twin (:class:`refimpl.nn.UnrolledRNN`) stores.

    Parameters
    ----------
    rnn : RNN
        The recurrent layer.
    steps : int
        T, the number of time steps.

    Returns
    -------
    refimpl.ParameterCount
        ``unique`` scalars stored, ``uses`` = ``T * unique - H * H``, ``bytes`` = 8 per
        unique scalar.
    """
    unique = sum(math.prod(shape) for shape in rnn.parameter_shapes().values())
    return ParameterCount(unique, steps * unique - rnn.hidden_size ** 2, 8 * unique)


def _bytes(count: int) -> str:
    """``count`` bytes in the largest unit (B, KiB, MiB) that keeps the number >= 1."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def format_memory(examples: list[tuple[str, ParameterCount]]) -> str:
    """The table of :func:`memory_examples`: unique, uses, bytes and uses / unique per row."""
    rows = [(name, f"{count.unique:,}", f"{count.uses:,}", f"{count.bytes:,}",
             _bytes(count.bytes), f"{count.uses / count.unique:.2f}")
            for name, count in examples]
    return format_table(("model", "unique", "uses", "bytes", "", "uses / unique"), rows)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` to the ``memory`` sub-parser."""
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="counts"))


def run_memory(args: argparse.Namespace) -> int:
    """Run ``refimpl memory``: print the table (or the JSON).

    ``args`` holds the flags of :func:`add_memory_arguments`.

    Returns
    -------
    int
        The exit status: 0 (an output that cannot be written raises
        :class:`refimpl._io.OutputError`).
    """
    destination = getattr(args, "json", None)
    if destination and destination != "-":
        check_destination(destination)
    examples = memory_examples()
    if destination:
        document: list[dict[str, Any]] = [
            {"model": name, "unique": count.unique, "uses": count.uses, "bytes": count.bytes}
            for name, count in examples]
        text = json.dumps(document, indent=2) + "\n"
        if destination == "-":
            sys.stdout.write(text)
            return 0
        write_text_atomically(destination, text)
    print("Parameters stored (unique) vs used by the layers (uses), float64:")
    print(format_memory(examples))
    return 0
