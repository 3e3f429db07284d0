"""Full gradient checks: refimpl's fast path and coordinate loop against torch.autograd.gradcheck.

Run by hand (never a timed test)::

    python benchmarks/bench_gradcheck.py [--repeats 5] [--threads 1] [--no-loop]

Three problems, each one scalar loss of every parameter: the MLP 784-32-10 (tanh,
cross-entropy, batch 4, 25,450 parameters), a small CNN (conv 1->8 3x3 padded, ReLU, 2x2 max
pool, dense 288->10, batch 4, on 1x12x12 inputs; 2,970 parameters) and a soft-tied pair of
MLPs 64-32-10 (L2 penalty on the first layer's weight; 2 x 2,410 parameters). For each:
``ri.check_model_gradients`` (complex, central), the coordinate loop
``ri.check_gradients(..., loss_fn=...)`` (complex) and, when torch is installed,
``torch.autograd.gradcheck`` in slow mode (``fast_mode=False``: every coordinate, central
differences) and fast mode (one random projection) on the same function in float64. The
timings alternate between the contenders, with a pause before each so that BLAS threads
settle; the medians are printed with the ratio ``torch slow / refimpl``.

BLAS and torch use ``--threads`` threads (default 1: the machine these numbers come from is
shared, and the small matrix products here gain nothing from threads; with several threads
on a loaded machine OpenBLAS's complex products were 30x slower). The thread count must be set
before NumPy is imported, hence the environment variables at the top.
"""

from __future__ import annotations

import argparse
import os
import sys

_THREADS = "1"
for _index, _arg in enumerate(sys.argv):
    if _arg == "--threads" and _index + 1 < len(sys.argv):
        _THREADS = sys.argv[_index + 1]
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = _THREADS

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import refimpl as ri  # noqa: E402
from refimpl import nn  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def mlp_problem():
    model = ri.MLP([784, 32, 10], activation="tanh")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 784)), rng.integers(0, 10, 4)
    return "MLP 784-32-10", model, model.init(0), (x, y)


def cnn_problem():
    model = ri.Sequential([nn.Conv2D("conv1", 1, 8, kernel_size=3, padding=1), nn.ReLU(),
                           nn.MaxPool2D(2), nn.Flatten(), nn.Dense("fc", 8 * 6 * 6, 10)],
                          loss=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 1, 12, 12)), rng.integers(0, 10, 4)
    return "CNN conv3x3-pool-dense", model, model.init(1), (x, y)


def tied_problem():
    model_a = ri.MLP([64, 32, 10], activation="tanh")
    model_b = ri.MLP([64, 32, 10], activation="tanh")
    pair = ri.TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight"}, lam=0.3)
    rng = np.random.default_rng(2)
    batches = ((rng.standard_normal((4, 64)), rng.integers(0, 10, 4)),
               (rng.standard_normal((4, 64)), rng.integers(0, 10, 4)))
    return "tied pair 2 x MLP 64-32-10", pair, pair.join(*pair.init(2)), batches


def refimpl_fast(model, params, data, method):
    return lambda: ri.check_model_gradients(model, params, data, method=method)


def refimpl_loop(model, params, data):
    if isinstance(model, ri.TiedPair):
        def f(q):
            return model.joined_loss_and_grads(q, *data)
        return lambda: ri.check_gradients(f, params, loss_fn=lambda q: f(q)[0])
    x, y = data
    return lambda: ri.check_gradients(lambda p: model.loss_and_grads(p, x, y), params,
                                      loss_fn=lambda p: model.loss(p, x, y))


def _torch_sequential(model, params, x, y):
    """The torch function of a refimpl Sequential: parameters in, loss out (float64)."""
    functional = torch.nn.functional
    xt, yt = torch.tensor(x), torch.tensor(y)

    def loss(*tensors):
        named = dict(zip(params, tensors, strict=True))
        out = xt
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "Dense":
                out = functional.linear(out, named[f"{layer.name}.weight"],
                                        named.get(f"{layer.name}.bias"))
            elif kind == "Conv2D":
                out = functional.conv2d(out, named[f"{layer.name}.weight"],
                                        named.get(f"{layer.name}.bias"), layer.stride,
                                        layer.padding, layer.dilation, layer.groups)
            elif kind == "Tanh":
                out = torch.tanh(out)
            elif kind == "ReLU":
                out = torch.relu(out)
            elif kind == "MaxPool2D":
                out = functional.max_pool2d(out, layer.kernel_size, layer.stride)
            elif kind == "Flatten":
                out = out.flatten(1)
            else:
                raise NotImplementedError(kind)
        return functional.cross_entropy(out, yt)
    return loss


def torch_check(model, params, data, fast_mode):
    if isinstance(model, ri.TiedPair):
        params_a, params_b = model.split(params)
        loss_a = _torch_sequential(model.model_a, params_a, *data[0])
        loss_b = _torch_sequential(model.model_b, params_b, *data[1])
        count_a = len(params_a)
        pairs = [(list(params_a).index(p.name_a), count_a + list(params_b).index(p.name_b),
                  p.lam) for p in model.pairs]

        def loss(*tensors):
            total = loss_a(*tensors[:count_a]) + loss_b(*tensors[count_a:])
            for i, j, lam in pairs:
                total = total + lam * ((tensors[i] - tensors[j]) ** 2).sum()
            return total
    else:
        loss = _torch_sequential(model, params, *data)
    inputs = tuple(torch.tensor(value, requires_grad=True) for value in params.values())
    return lambda: torch.autograd.gradcheck(loss, inputs, fast_mode=fast_mode)


def time_alternating(contenders, repeats, pause):
    """Median seconds of each contender, the runs interleaved, a pause before each."""
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            time.sleep(pause)
            start = time.perf_counter()
            result = run()
            times[name].append(time.perf_counter() - start)
            ok = result if isinstance(result, bool) else result.ok
            if not ok:
                raise RuntimeError(f"{name}: the check failed")
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-loop", action="store_true", help="skip the coordinate loop")
    args = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
          f"{args.threads} thread(s), medians of {args.repeats}")
    for problem in (mlp_problem(), cnn_problem(), tied_problem()):
        title, model, params, data = problem
        contenders = {"refimpl fast complex": refimpl_fast(model, params, data, "complex"),
                      "refimpl fast central": refimpl_fast(model, params, data, "central")}
        if not args.no_loop:
            contenders["refimpl loop complex"] = refimpl_loop(model, params, data)
        if torch is not None:
            contenders["torch gradcheck slow"] = torch_check(model, params, data, False)
            contenders["torch gradcheck fast"] = torch_check(model, params, data, True)
        medians = time_alternating(contenders, args.repeats, args.pause)
        size = sum(np.size(value) for value in params.values())
        print(f"\n{title} ({size} parameters)")
        slow = medians.get("torch gradcheck slow")
        for name, seconds in medians.items():
            ratio = f"   torch slow / this = {slow / seconds:6.1f}x" if slow else ""
            print(f"  {name:22s} {seconds:9.4f} s{ratio}")


if __name__ == "__main__":
    main()
