"""Second order: refimpl's Hessian-vector products against PyTorch's, in float64.

Run by hand (never a timed test)::

    python benchmarks/bench_hessian.py [--repeats 5] [--threads 1]

Two problems:

* **a full Hessian** of a small model, the MLP 24-48-10 (tanh, cross-entropy, batch 8,
  1,690 parameters): refimpl's, one explicit HVP ``ri.hvp`` per unit vector (the columns of
  ``H``), against ``torch.autograd.functional.hessian`` of the same loss of the flattened
  parameters, in its default mode (one double backward per row) and with
  ``vectorize=True`` (``vmap`` over the rows);
* **one HVP** of the MLP 784-32-10 (tanh, cross-entropy, batch 4, 25,450 parameters) along a
  random direction: ``ri.hvp`` (the R-operator) against one PyTorch double backward
  (``torch.autograd.grad`` with ``create_graph=True``, then the gradient of ``<grad, v>``),
  the gradient ``model.loss_and_grads`` beside it for scale.

Each contender's result is checked against the others before any timing (the full Hessians
agree entry by entry to 1e-12 of their scale, the products to 1e-12). The timings alternate
between the contenders, with a pause before each so that BLAS threads settle; the medians are
printed with the ratio ``torch / refimpl``. BLAS and torch use ``--threads`` threads (default
1; the thread count must be set before NumPy is imported, hence the environment variables at
the top).
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

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def small_problem():
    model = ri.MLP([24, 48, 10], activation="tanh")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 24)), rng.integers(0, 10, 8)
    return "MLP 24-48-10, full Hessian", model, model.init(0), (x, y)


def large_problem():
    model = ri.MLP([784, 32, 10], activation="tanh")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 784)), rng.integers(0, 10, 4)
    return "MLP 784-32-10, one HVP", model, model.init(1), (x, y)


def refimpl_hessian(model, params, data):
    """The full Hessian, one explicit HVP per unit vector: column j is ``H e_j``."""
    keys = list(params)
    sizes = [params[key].size for key in keys]
    total = sum(sizes)

    def run():
        columns = np.empty((total, total))
        zero = {key: np.zeros_like(value) for key, value in params.items()}
        column = 0
        for key, size in zip(keys, sizes, strict=True):
            for index in range(size):
                unit = dict(zero)
                unit[key] = np.zeros_like(params[key])
                unit[key].flat[index] = 1.0
                product = ri.hvp(model, params, data, unit)
                columns[:, column] = np.concatenate([product[k].ravel() for k in keys])
                column += 1
        return columns
    return run


def _torch_loss(params, data):
    """The MLP's loss as a torch function of its flattened parameters (float64)."""
    functional = torch.nn.functional
    x, y = torch.tensor(data[0]), torch.tensor(data[1])
    shapes = [np.shape(value) for value in params.values()]
    sizes = [int(np.prod(shape)) for shape in shapes]

    def loss(flat):
        parts = [part.reshape(shape) for part, shape in
                 zip(torch.split(flat, sizes), shapes, strict=True)]
        out = x
        for index in range(0, len(parts), 2):
            out = functional.linear(out, parts[index], parts[index + 1])
            if index + 2 < len(parts):
                out = torch.tanh(out)
        return functional.cross_entropy(out, y)
    flat = torch.tensor(np.concatenate([value.ravel() for value in params.values()]))
    return loss, flat


def torch_hessian(params, data, vectorize):
    loss, flat = _torch_loss(params, data)
    return lambda: torch.autograd.functional.hessian(loss, flat,
                                                     vectorize=vectorize).numpy()


def refimpl_hvp(model, params, data, v):
    return lambda: ri.hvp(model, params, data, v)


def refimpl_gradient(model, params, data):
    return lambda: model.loss_and_grads(params, *data)


def torch_hvp(params, data, v):
    """One double backward: ``grad(<grad L, v>)`` with ``create_graph=True``."""
    loss, flat = _torch_loss(params, data)
    direction = torch.tensor(np.concatenate([value.ravel() for value in v.values()]))
    leaf = flat.clone().requires_grad_(True)

    def run():
        (gradient,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
        (product,) = torch.autograd.grad((gradient * direction).sum(), leaf)
        return product.numpy()
    return run


def time_alternating(contenders, repeats, pause):
    """Median seconds of each contender, the runs interleaved, a pause before each."""
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            time.sleep(pause)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _flat(result):
    if isinstance(result, dict):
        return np.concatenate([value.ravel() for value in result.values()])
    return np.asarray(result)


def agree(results, what):
    """Every result equal to the first to 1e-12 of its scale: a benchmark of wrong answers
    measures nothing."""
    first_name, first = next(iter(results.items()))
    scale = np.abs(first).max()
    for name, value in results.items():
        error = np.abs(value - first).max()
        if error > 1e-12 * scale:
            raise RuntimeError(f"{what}: {name} differs from {first_name} by {error:.3e} "
                               f"(scale {scale:.3e})")


def report(title, size, medians, reference):
    print(f"\n{title} ({size} parameters)")
    base = medians[reference]
    for name, seconds in medians.items():
        print(f"  {name:34s} {seconds:10.5f} s   this / {reference} = {seconds / base:7.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
          f"{args.threads} thread(s), medians of {args.repeats}")

    title, model, params, data = small_problem()
    contenders = {"refimpl: one ri.hvp per column": refimpl_hessian(model, params, data)}
    if torch is not None:
        contenders["torch hessian"] = torch_hessian(params, data, False)
        contenders["torch hessian vectorize=True"] = torch_hessian(params, data, True)
    agree({name: run() for name, run in contenders.items()}, title)
    report(title, sum(value.size for value in params.values()),
           time_alternating(contenders, args.repeats, args.pause),
           "refimpl: one ri.hvp per column")

    title, model, params, data = large_problem()
    v = ri.hessian.random_directions(params, 1, seed=2)[0]
    contenders = {"refimpl ri.hvp": refimpl_hvp(model, params, data, v)}
    if torch is not None:
        contenders["torch double backward"] = torch_hvp(params, data, v)
    agree({name: _flat(run()) for name, run in contenders.items()}, title)
    contenders["refimpl loss_and_grads (first order)"] = refimpl_gradient(model, params, data)
    report(title, sum(value.size for value in params.values()),
           time_alternating(contenders, max(args.repeats, 20), args.pause / 10),
           "refimpl ri.hvp")


if __name__ == "__main__":
    main()
