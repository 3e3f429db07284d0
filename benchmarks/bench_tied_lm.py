"""Benchmark: loss_and_grads of a small tied language model against PyTorch CPU float64.

Run by hand (never as a timed test):

    python benchmarks/bench_tied_lm.py              # default repeats
    python benchmarks/bench_tied_lm.py --quick      # fewer repeats, for a smoke run

The model: ``Embedding("embed", V, D) -> middle -> Dense("out", D, V)`` with the output
weight tied to the embedding (``share={"out.weight": "embed.weight"}``), cross-entropy over
every position of (N, T) next-token labels; the middle is a tanh ``RNN("rnn", D, D)`` or a
``Dense("mid", D, D) -> Tanh``. V = 1000, D = 64, T = 32, N = 16 by default.

PyTorch computes the same loss and gradients (``F.embedding``, ``nn.RNN``, ``F.linear`` with
the embedding as its weight, ``F.cross_entropy`` on the flattened positions) in float64 on
the CPU; the two are first checked to agree (relative 1e-10), then timed alternately (one
refimpl call, one PyTorch call, ...) so that both see the same machine load. Medians,
interquartile ranges and the ratio refimpl / PyTorch.

Both sides run on one thread by default (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` set to 1 unless already set, and ``torch.set_num_threads``): on a shared
machine a multi-threaded BLAS on these small products spends its time waiting for cores
(measured: refimpl 42 ms on one thread, 250 ms on two, at a load of 9 on 2 cores).

Measurements worth keeping go into this docstring with the machine and the command, never
into the reference code's comments.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")   # before NumPy loads its BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import refimpl as ri  # noqa: E402
from refimpl import nn  # noqa: E402


def tied_lm(vocabulary: int, dim: int, middle: str) -> nn.Sequential:
    body = ([nn.RNN("rnn", dim, dim)] if middle == "rnn"
            else [nn.Dense("mid", dim, dim), nn.Tanh()])
    return nn.Sequential([nn.Embedding("embed", vocabulary, dim), *body,
                          nn.Dense("out", dim, vocabulary)], loss=nn.SoftmaxCrossEntropy(),
                         share={"out.weight": "embed.weight"})


def torch_loss_and_grads(torch, middle: str):
    """PyTorch's loss_and_grads for the same model, on tensors made once."""
    functional = torch.nn.functional

    def run(tensors, x, y):
        for tensor in tensors.values():
            tensor.grad = None
        h = functional.embedding(x, tensors["embed.weight"])
        if middle == "rnn":
            h = torch._VF.rnn_tanh(h, torch.zeros(1, h.shape[0], h.shape[2], dtype=h.dtype),
                                   [tensors[f"rnn.{n}"] for n in
                                    ("weight_ih", "weight_hh", "bias_ih", "bias_hh")],
                                   True, 1, 0.0, True, False, True)[0]
        else:
            h = torch.tanh(functional.linear(h, tensors["mid.weight"], tensors["mid.bias"]))
        logits = functional.linear(h, tensors["embed.weight"], tensors["out.bias"])
        loss = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        return loss.item(), {name: tensor.grad.numpy() for name, tensor in tensors.items()}

    return run


def alternate(first, second, repeats: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each, one of each in turn."""
    for _ in range(warmup):
        first()
        second()
    times_first, times_second = [], []
    for _ in range(repeats):
        for fn, times in ((first, times_first), (second, times_second)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times_first, times_second


def summary(times: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return f"{median * 1e3:8.2f} ms  ({q1 * 1e3:.2f} .. {q3 * 1e3:.2f})"


def bench(torch, middle: str, sizes: dict[str, int], repeats: int) -> None:
    vocabulary, dim, steps, batch = (sizes[k] for k in ("V", "D", "T", "N"))
    model = tied_lm(vocabulary, dim, middle)
    params = model.init(0)
    tokens = np.random.default_rng(0).integers(0, vocabulary, size=(batch, steps + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    tensors = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    run_torch = torch_loss_and_grads(torch, middle)

    loss, grads = model.loss_and_grads(params, x, y)
    loss_t, grads_t = run_torch(tensors, x_t, y_t)
    worst = max(np.abs(grads[k] - grads_t[k]).max() / np.abs(grads[k]).max() for k in grads)
    assert abs(loss - loss_t) <= 1e-10 * abs(loss) and worst <= 1e-10, (loss, loss_t, worst)

    ours, theirs = alternate(lambda: model.loss_and_grads(params, x, y),
                             lambda: run_torch(tensors, x_t, y_t), repeats)
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"tied LM, middle {middle}: V={vocabulary} D={dim} T={steps} N={batch}, "
          f"{model.parameter_count().unique} parameters; agreement: loss rel "
          f"{abs(loss - loss_t) / abs(loss):.1e}, worst gradient (max abs diff / max abs) "
          f"{worst:.1e}")
    print(f"  refimpl loss_and_grads  {summary(ours)}")
    print(f"  PyTorch CPU float64     {summary(theirs)}")
    print(f"  ratio refimpl / PyTorch {ratio:.2f}   (medians of {repeats} alternating calls)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each")
    parser.add_argument("--quick", action="store_true", help="10 repeats: a smoke run")
    for letter, default in (("V", 1000), ("D", 64), ("T", 32), ("N", 16)):
        parser.add_argument(f"-{letter}", type=int, default=default)
    args = parser.parse_args(argv)
    repeats = 10 if args.quick else args.repeats
    if repeats < 4:
        parser.error("--repeats: expected at least 4 (medians and quartiles)")
    import torch  # optional: only this benchmark needs it

    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    print(f"refimpl {ri.__version__}, numpy {np.__version__}, torch {torch.__version__}, "
          f"BLAS / torch threads {os.environ['OPENBLAS_NUM_THREADS']} / {threads}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPU(s) visible; wall-clock, noisy "
          f"on a shared machine")
    sizes = {"V": args.V, "D": args.D, "T": args.T, "N": args.N}
    for middle in ("rnn", "dense"):
        bench(torch, middle, sizes, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
