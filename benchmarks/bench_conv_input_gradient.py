"""The two implementations of the convolution's input gradient, side by side: conv2d forward +
backward with the input gradient forced through ``"columns"`` (W.T @ dout, then col2im) and
through ``"positions"`` (one product per kernel offset laid out (Ho, Wo, N, C), then strided
additions of N*C-long runs), and which one ``method="auto"`` (``positions_first``) takes.

    python benchmarks/bench_conv_input_gradient.py [--threads N] [--rounds R] [--block B]

Protocol as ``bench_conv.py``: the two methods' blocks alternate, ``--block`` calls each after
a warm-up call, with a pause between blocks (OpenBLAS's threads spin ~0.2 s after a call);
medians over all calls. Forward + backward together, not the input gradient alone: the
"positions" method's extra memory changes what the allocator does for the other steps (in
isolation it looked faster on shapes where, in a whole step, it was slower).

Measured on the 2-core development machine (NumPy 2.4.6, OpenBLAS, 2 threads, 8 rounds of 5
calls; load average about 0.7), two runs one after the other; ``pos/col`` is the ratio of the
medians, < 1 means "positions" is faster:

    (N, C, H=W, F, k, s, p)         Wo  Cg   pos/col run 1, run 2   auto
    (8, 8, 28, 8, 5, 2, 0)          12   8   0.74  0.66             positions
    (64, 8, 28, 8, 5, 2, 0)         12   8   1.06  0.99             positions
    (16, 32, 8, 32, 3, 1, 1)         8  32   0.81  0.73             positions
    (8, 64, 8, 64, 3, 2, 1)          4  64   0.83  0.78             positions
    (64, 3, 8, 16, 3, 1, 1)          8   3   0.98  1.02             columns
    (1, 1, 28, 4, 5, 2, 0)          12   1   1.09  1.01             columns
    (32, 3, 32, 16, 3, 1, 1)        32   3   1.52  1.42             columns
    (64, 16, 16, 32, 3, 1, 1)       16  16   0.98  1.02             columns
    (32, 16, 16, 32, 3, 1, 1)       16  16   1.09  1.03             columns
    (32, 16, 32, 32, 3, 2, 1)       16  16   1.04  1.33             columns
    (32, 8, 32, 16, 3, 1, 1)        32   8   1.12  1.06             columns
    (32, 3, 32, 16, 5, 2, 0)        14   3   1.22  1.12             columns
    (8, 3, 32, 16, 5, 2, 0)         14   3   1.12  1.11             columns
    (8, 3, 64, 16, 7, 2, 3)         32   3   1.37  1.73             columns
    (4, 4, 56, 8, 3, 2, 1)          28   4   1.10  0.93             columns
    (8, 8, 28, 8, 5, 1, 0)          24   8   1.13  0.89             columns
    (8, 8, 28, 32, 3, 1, 1)         28   8   1.28  0.94             columns
    (8, 8, 28, 8, 3, 1, 1)          28   8   1.02  1.05             columns
    (2, 16, 32, 16, 3, 1, 1)        32  16   0.86  1.05             columns

The rule (Wo <= 12 and Cg >= 8) takes "positions" where it was 17-34% faster in both runs (and
on one large-batch shape where the two tie); no shape it leaves to "columns" was faster by
"positions" in both runs, and some were 1.4-1.7x slower by it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = ((8, 8, 28, 8, 5, 2, 0), (64, 8, 28, 8, 5, 2, 0), (16, 32, 8, 32, 3, 1, 1),
          (8, 64, 8, 64, 3, 2, 1), (64, 3, 8, 16, 3, 1, 1), (1, 1, 28, 4, 5, 2, 0),
          (32, 3, 32, 16, 3, 1, 1), (64, 16, 16, 32, 3, 1, 1), (32, 16, 16, 32, 3, 1, 1),
          (32, 16, 32, 32, 3, 2, 1), (32, 8, 32, 16, 3, 1, 1), (32, 3, 32, 16, 5, 2, 0),
          (8, 3, 32, 16, 5, 2, 0), (8, 3, 64, 16, 7, 2, 3), (4, 4, 56, 8, 3, 2, 1),
          (8, 8, 28, 8, 5, 1, 0), (8, 8, 28, 32, 3, 1, 1), (8, 8, 28, 8, 3, 1, 1),
          (2, 16, 32, 16, 3, 1, 1))


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="OpenBLAS threads (default 2)")
    parser.add_argument("--rounds", type=int, default=8, help="alternations (default 8)")
    parser.add_argument("--block", type=int, default=5, help="timed calls per block")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between blocks")
    return parser.parse_args()


ARGS = parse_arguments()
# Thread counts must be fixed before NumPy (OpenBLAS) is imported.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)

from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from refimpl.nn import conv  # noqa: E402


def time_method(method, x, weight, bias, stride, padding):
    """Seconds of ``--block`` forward + backward calls with the input gradient by ``method``."""
    with mock.patch.object(conv, "positions_first", lambda *_: method == "positions"):
        out, cache = conv.conv2d_forward(x, weight, bias, stride, padding)
        dout = np.ones(out.shape)
        conv.conv2d_backward(dout, cache)                     # warm-up
        seconds = []
        for _ in range(ARGS.block):
            start = time.perf_counter()
            out, cache = conv.conv2d_forward(x, weight, bias, stride, padding)
            conv.conv2d_backward(dout, cache)
            seconds.append(time.perf_counter() - start)
    return seconds


def main():
    print(f"numpy {np.__version__}, threads {ARGS.threads}, {ARGS.rounds} rounds x "
          f"{ARGS.block} calls; load average {os.getloadavg()[0]:.2f}")
    print(f"{'(N, C, H=W, F, k, s, p)':31s} {'Wo':>3s} {'Cg':>3s} {'columns':>10s} "
          f"{'positions':>10s} {'pos/col':>8s}  auto")
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        batch, channels, size, filters, kernel, stride, padding = shape
        x = rng.standard_normal((batch, channels, size, size))
        weight = rng.standard_normal((filters, channels, kernel, kernel))
        bias = rng.standard_normal(filters)
        times = {"columns": [], "positions": []}
        for round_ in range(ARGS.rounds):
            order = ("columns", "positions") if round_ % 2 else ("positions", "columns")
            for method in order:
                times[method] += time_method(method, x, weight, bias, stride, padding)
                time.sleep(ARGS.pause)
        out_w = conv.conv_output_size(size, kernel, stride, padding, 1)
        auto = "positions" if conv.positions_first(channels, out_w) else "columns"
        columns, positions = (np.median(times[m]) * 1e3 for m in ("columns", "positions"))
        print(f"{str(shape):31s} {out_w:3d} {channels:3d} {columns:8.2f}ms {positions:8.2f}ms "
              f"{positions / columns:8.2f}  {auto}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
