"""Benchmark: MLP loss_and_grads, and the cost of the gradient checks.

Run by hand (never as a timed test):

    python benchmarks/bench_mlp.py              # default repeats
    python benchmarks/bench_mlp.py --quick      # fewer repeats, for a smoke run

Two tables:

1. ``Sequential.loss_and_grads`` for an MLP 784-256-10 (tanh, cross-entropy), batch 256,
   next to ``forward`` and ``loss`` on the same data: the backward pass should cost about
   twice the forward pass (two matrix products per dense layer instead of one).
2. ``check_gradients`` on a small MLP 8-16-4 (batch 8): full and directional mode, complex
   step and central differences. Full mode evaluates the loss once per coordinate (complex)
   or twice (central); directional mode once or twice per direction, whatever the parameter
   count. The table gives the time per loss evaluation too, and the ratios.

All figures are medians over repeats (with the interquartile range, to show the noise: the
machine may be shared). Everything is measured side by side in one run.

Measurements worth keeping (and the reasons they support a form in ``refimpl/``) go into this
docstring, with the machine, NumPy/BLAS versions and the command that produced them, or into
the commit message; never into the reference code's comments.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import refimpl as ri  # noqa: E402


def measure(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile)."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return median, q1, q3


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def bench_large_mlp(repeats: int) -> None:
    sizes, batch = (784, 256, 10), 256
    model = ri.MLP(sizes, activation="tanh", loss="cross_entropy")
    params = model.init(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]))
    y = rng.integers(0, sizes[-1], size=batch)
    count = model.parameter_count().unique

    results = {
        "forward": summary(measure(lambda: model.forward(params, x), repeats)),
        "loss": summary(measure(lambda: model.loss(params, x, y), repeats)),
        "loss_and_grads": summary(measure(lambda: model.loss_and_grads(params, x, y), repeats)),
    }
    base = results["forward"][0]
    print(f"MLP {'-'.join(map(str, sizes))} (tanh, cross-entropy), batch {batch}, "
          f"{count} parameters, median of {repeats} calls")
    rows = [(name, fmt_time(median), f"{fmt_time(q1)} .. {fmt_time(q3)}", f"{median / base:.2f}")
            for name, (median, q1, q3) in results.items()]
    print_table(("call", "median", "interquartile range", "x forward"), rows)
    flops = 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    median = results["loss_and_grads"][0]
    print(f"loss_and_grads: ~{3 * flops / median / 1e9:.1f} GFLOP/s "
          f"(3 x {flops / 1e6:.0f} MFLOP of matrix products per call)")


def bench_gradient_checks(repeats: int, directions: int) -> None:
    sizes, batch = (8, 16, 4), 8
    model = ri.MLP(sizes, activation="tanh", loss="cross_entropy")
    params = model.init(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, sizes[0]))
    y = rng.integers(0, sizes[-1], size=batch)
    count = model.parameter_count().unique

    def f(p):
        return model.loss_and_grads(p, x, y)

    def loss_fn(p):
        return model.loss(p, x, y)

    one_loss = summary(measure(lambda: loss_fn(params), repeats * 20))[0]
    configs = [
        ("full", "complex", count),
        ("full", "central", 2 * count),
        ("directional", "complex", directions),
        ("directional", "central", 2 * directions),
    ]
    results = {}
    for mode, method, evaluations in configs:
        kwargs = {"directions": directions} if mode == "directional" else {}
        report = ri.check_gradients(f, params, method=method, mode=mode, loss_fn=loss_fn,
                                    **kwargs)
        assert report.ok, report
        worst = max(row.max_rel_error for row in report.rows)
        times = measure(lambda m=mode, me=method, k=kwargs: ri.check_gradients(
            f, params, method=me, mode=m, loss_fn=loss_fn, **k), repeats, warmup=1)
        results[(mode, method)] = (summary(times), evaluations, worst)

    print(f"Gradient checks on MLP {'-'.join(map(str, sizes))} (tanh, cross-entropy), batch "
          f"{batch}: {count} parameters, {directions} directions; median of {repeats} checks. "
          f"One real loss evaluation: {fmt_time(one_loss)}")
    rows = []
    for (mode, method), ((median, q1, q3), evaluations, worst) in results.items():
        rows.append((mode, method, fmt_time(median), f"{fmt_time(q1)} .. {fmt_time(q3)}",
                     str(evaluations), fmt_time(median / evaluations), f"{worst:.1e}"))
    print_table(("mode", "method", "median", "interquartile range", "loss evals",
                 "per eval", "max rel err"), rows)
    full_c, full_r = results[("full", "complex")][0][0], results[("full", "central")][0][0]
    dir_c, dir_r = (results[("directional", "complex")][0][0],
                    results[("directional", "central")][0][0])
    print(f"ratios: full/directional = {full_c / dir_c:.1f} (complex), "
          f"{full_r / dir_r:.1f} (central); central/complex = {full_r / full_c:.2f} (full), "
          f"{dir_r / dir_c:.2f} (directional)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50,
                        help="timed calls of loss_and_grads (default 50); the checks use a "
                             "fifth of it (at least 5)")
    parser.add_argument("--directions", type=int, default=8,
                        help="directions of the directional checks (default 8)")
    parser.add_argument("--quick", action="store_true", help="10 repeats: a smoke run")
    args = parser.parse_args(argv)
    repeats = 10 if args.quick else args.repeats
    if repeats < 4:
        parser.error("--repeats: expected at least 4 (medians and quartiles)")
    print(f"refimpl {ri.__version__}, numpy {np.__version__}, Python "
          f"{platform.python_version()}, {os.cpu_count()} CPU(s) visible; wall-clock times, "
          f"noisy on a shared machine")
    print()
    bench_large_mlp(repeats)
    print()
    bench_gradient_checks(max(5, repeats // 5), args.directions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
