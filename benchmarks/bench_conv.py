"""Speed of refimpl's convolution and max pooling: against a naive loop implementation and,
when it is importable, against PyTorch's CPU float64 kernels (optional, never a dependency).

    python benchmarks/bench_conv.py [--threads N] [--rounds R] [--block B] [--no-torch]

Measured side by side in one run:

* conv2d forward + backward on (N, C, H=W, F, k, stride, pad) = (32, 3, 32, 16, 3, 1, 1),
  (64, 16, 16, 32, 3, 1, 1), (8, 8, 28, 8, 5, 2, 0);
* max-pool 2x2 forward + backward on those convolutions' outputs;
* a small CNN's ``loss_and_grads`` (conv 3->16, ReLU, max 2, conv 16->32, ReLU, max 2, dense
  -> 10, cross-entropy; batch 32 of 3x32x32).

Protocol. The libraries' timing blocks alternate (refimpl, torch, torch, refimpl, ...), each
block ``--block`` calls after one warm-up call, with a pause between blocks: after a NumPy
BLAS call OpenBLAS's threads spin for ~0.2 s and would steal a core from the next block.
Figures are medians over all calls with the interquartile range in brackets; the ratio is
refimpl's median over torch's (and, in parentheses, of the lower quartiles, which other jobs
on the machine disturb least). The naive implementation (CS231n-style loops over every
output element, vectorised over the window) is timed on one example and scaled by the batch
size, marked "x N".

The machine this was written on has 2 cores shared with other jobs: medians move by tens of
percent from run to run. ``--threads`` sets both libraries' thread count (default 2, the
core count); the load average is printed before and after.

Measurements behind the forms chosen in ``refimpl/nn/conv*.py`` and ``refimpl/nn/pool.py``
(2-core machine, NumPy 2.4, OpenBLAS; each measured in isolation when the form was chosen):

* col2im as a loop over the kH*kW kernel offsets, each adding one strided slice, against
  ``np.add.at`` / ``np.bincount`` over a flat index array: the offset loop was faster for
  every kernel measured (1x1 to 7x7, stride 1 and 2) once building the indices is counted;
  even with the indices precomputed, ``bincount`` won only for a 5x5 stride-2 kernel (0.28
  against 0.45 ms) and lost by 1.1-1.4x for 3x3 stride 1. Accumulating col2im in (C, N, Hp,
  Wp), the order of the column blocks, was ~1.4x faster than accumulating in NCHW.
* conv2d forward, the product read per example so that it lands in NCHW against an (F, M)
  product and a transposing copy: 4-6x faster for a thin 16 x 27 weight, equal to 15% slower
  for 32 x 144.
* conv2d weight gradient computed as its transpose ``X_g @ D_g.T``: as fast as, or up to 1.9x
  faster than, ``D_g @ X_g.T`` for these long, thin operands.
* The input gradient's "positions" order against "columns": see
  ``bench_conv_input_gradient.py``.
* Max pooling on the (64, 32, 16, 16) input: comparing two strided row slices (Wo = 8)
  ~200 us, copying both into contiguous arrays plus the contiguous comparison ~110 us; the
  running first maximum with ``np.where`` on a random mask ~4x slower than ``np.maximum``
  and integer arithmetic; window positions in intp ~2x slower than in the smallest unsigned
  type. Backward of 2x2 stride-2 pooling: one scatter of dout to the maxima ~0.36 ms against
  ~0.67 ms for kH*kW masked products; for overlapping windows ``dout * mask`` ~4x faster than
  ``np.where(mask, dout, 0)``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = ((32, 3, 32, 16, 3, 1, 1), (64, 16, 16, 32, 3, 1, 1), (8, 8, 28, 8, 5, 2, 0))


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for OpenBLAS and torch (default 2)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternations of the libraries' blocks (default 6)")
    parser.add_argument("--block", type=int, default=5, help="timed calls per block")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds between blocks (OpenBLAS spin-down)")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with torch")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loops")
    return parser.parse_args()


ARGS = parse_arguments()
# Thread counts must be fixed before NumPy (OpenBLAS) is imported.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from refimpl.nn import CNN  # noqa: E402
from refimpl.nn.conv import conv2d_backward, conv2d_forward  # noqa: E402
from refimpl.nn.pool import maxpool2d_backward, maxpool2d_forward  # noqa: E402

torch = None
if not ARGS.no_torch:
    try:
        import torch
        torch.set_num_threads(ARGS.threads)
    except ImportError:
        torch = None


# --- timing -----------------------------------------------------------------------------------

def timed_calls(function, count):
    times = []
    for _ in range(count):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def compare(functions):
    """Alternate the blocks of ``functions`` ({label: f}); return {label: [seconds]}."""
    labels = list(functions)
    times = {label: [] for label in labels}
    for round_index in range(ARGS.rounds):
        for label in (labels if round_index % 2 == 0 else labels[::-1]):
            functions[label]()  # warm-up: caches, allocator, thread pools
            times[label] += timed_calls(functions[label], ARGS.block)
            time.sleep(ARGS.pause)
    return times


def quartiles(seconds):
    return [1e3 * value for value in np.percentile(seconds, [25, 50, 75])]


def report(title, times, naive=None, target=None):
    """One line: medians with the interquartile range, the ratio of the medians (and of the
    lower quartiles, the least disturbed by other jobs), the naive time."""
    ours = quartiles(times["refimpl"])
    line = f"{title:40s} refimpl {ours[1]:8.2f} ms [{ours[0]:7.2f} {ours[2]:7.2f}]"
    result = {"refimpl": ours[1]}
    if "torch" in times:
        theirs = quartiles(times["torch"])
        ratio = ours[1] / theirs[1]
        line += (f" | torch {theirs[1]:8.2f} ms [{theirs[0]:7.2f} {theirs[2]:7.2f}]"
                 f" | ratio {ratio:5.2f} (p25 {ours[0] / theirs[0]:5.2f})")
        if target is not None:
            line += f" target <= {target}: {'met' if ratio <= target else 'NOT met'}"
        result["torch"] = theirs[1]
    if naive is not None:
        line += f" | naive {naive * 1e3:9.0f} ms (x N; {naive * 1e3 / ours[1]:5.0f}x)"
    print(line, flush=True)
    return result


# --- naive references (CS231n style: a Python loop over every output element) ----------------

def naive_conv_forward_backward(x, weight, bias, stride, padding, dout):
    batch, channels, height, width = x.shape
    filters, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - kh) // stride + 1
    out_w = (width + 2 * padding - kw) // stride + 1
    out = np.empty((batch, filters, out_h, out_w))
    dxp, dweight = np.zeros_like(xp), np.zeros_like(weight)
    for n in range(batch):
        for f in range(filters):
            for i in range(out_h):
                for j in range(out_w):
                    window = xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[n, f, i, j] = np.sum(window * weight[f]) + bias[f]
                    dxp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += \
                        dout[n, f, i, j] * weight[f]
                    dweight[f] += dout[n, f, i, j] * window
    dbias = dout.sum(axis=(0, 2, 3))
    return out, dxp[:, :, padding:padding + height, padding:padding + width], dweight, dbias


def naive_maxpool_forward_backward(x, dout, k=2):
    batch, channels, height, width = x.shape
    out_h, out_w = height // k, width // k
    out, dx = np.empty((batch, channels, out_h, out_w)), np.zeros_like(x)
    for n in range(batch):
        for c in range(channels):
            for i in range(out_h):
                for j in range(out_w):
                    window = x[n, c, i * k:i * k + k, j * k:j * k + k]
                    first = np.argmax(window)
                    out[n, c, i, j] = window.flat[first]
                    r, q = divmod(first, k)
                    dx[n, c, i * k + r, j * k + q] += dout[n, c, i, j]
    return out, dx


def time_naive_per_example(function, *arrays):
    """Seconds for one example of the batch (the first), times the batch size."""
    one = [array[:1] for array in arrays]
    start = time.perf_counter()
    function(*one)
    return (time.perf_counter() - start) * arrays[0].shape[0]


# --- benchmarks ---------------------------------------------------------------------------------

def bench_conv(shape, rng):
    batch, channels, size, filters, k, stride, pad = shape
    x = rng.standard_normal((batch, channels, size, size))
    weight = rng.standard_normal((filters, channels, k, k))
    bias = rng.standard_normal(filters)
    out, _ = conv2d_forward(x, weight, bias, stride, pad)
    dout = rng.standard_normal(out.shape)

    def ours():
        _, cache = conv2d_forward(x, weight, bias, stride, pad)
        return conv2d_backward(dout, cache)

    functions = {"refimpl": ours}
    if torch is not None:
        tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
        dout_t = torch.tensor(dout)

        def theirs():
            for tensor in tensors:
                tensor.grad = None
            torch.nn.functional.conv2d(*tensors, stride=stride, padding=pad).backward(dout_t)
            return [tensor.grad for tensor in tensors]

        # Same numbers first: a speed comparison of different results would be meaningless.
        ours_result, theirs_result = ours(), theirs()
        for a, b in zip(ours_result, theirs_result, strict=True):
            assert np.allclose(a, b.numpy(), rtol=1e-12, atol=1e-12)
        functions["torch"] = theirs
    naive = None
    if not ARGS.no_naive:
        naive = time_naive_per_example(
            lambda x1, d1: naive_conv_forward_backward(x1, weight, bias, stride, pad, d1),
            x, dout)
    return report(f"conv2d fwd+bwd {shape}", compare(functions), naive, target=1.3), out


def bench_maxpool(y, rng):
    out, _ = maxpool2d_forward(y, 2)
    dout = rng.standard_normal(out.shape)

    def ours():
        _, cache = maxpool2d_forward(y, 2)
        return maxpool2d_backward(dout, cache)

    functions = {"refimpl": ours}
    if torch is not None:
        y_t, dout_t = torch.tensor(y, requires_grad=True), torch.tensor(dout)

        def theirs():
            y_t.grad = None
            torch.nn.functional.max_pool2d(y_t, 2).backward(dout_t)
            return y_t.grad

        assert np.array_equal(ours(), theirs().numpy())
        functions["torch"] = theirs
    naive = None if ARGS.no_naive else time_naive_per_example(naive_maxpool_forward_backward,
                                                              y, dout)
    return report(f"maxpool 2x2 fwd+bwd {tuple(y.shape)}", compare(functions), naive,
                  target=1.5)


def naive_cnn_loss_and_grads(params, x, y):
    """The small CNN's loss and gradients with the naive conv and max-pool loops (dense,
    ReLU and the loss are the same vectorised formulas as refimpl's)."""
    from refimpl.nn.activations import relu_backward, relu_forward
    from refimpl.nn.dense import dense_backward, dense_forward
    from refimpl.nn.losses import (
        softmax_cross_entropy_backward,
        softmax_cross_entropy_forward,
    )

    # Forward with placeholder upstream gradients, then backward layer by layer: the naive
    # functions compute forward and backward together, so each conv / pool runs twice.
    c1, _, _, _ = naive_conv_forward_backward(x, params["conv1.weight"], params["conv1.bias"],
                                              1, 1, np.zeros((x.shape[0], 16, 32, 32)))
    r1, r1_cache = relu_forward(c1)
    p1, _ = naive_maxpool_forward_backward(r1, np.zeros((x.shape[0], 16, 16, 16)))
    c2, _, _, _ = naive_conv_forward_backward(p1, params["conv2.weight"], params["conv2.bias"],
                                              1, 1, np.zeros((x.shape[0], 32, 16, 16)))
    r2, r2_cache = relu_forward(c2)
    p2, _ = naive_maxpool_forward_backward(r2, np.zeros((x.shape[0], 32, 8, 8)))
    logits, dense_cache = dense_forward(p2.reshape(x.shape[0], -1), params["fc1.weight"],
                                        params["fc1.bias"])
    loss, loss_cache = softmax_cross_entropy_forward(logits, y)
    dlogits = softmax_cross_entropy_backward(1.0, loss_cache)
    dflat, dfc_w, dfc_b = dense_backward(dlogits, dense_cache)
    _, dr2 = naive_maxpool_forward_backward(r2, dflat.reshape(p2.shape))
    dc2 = relu_backward(dr2, r2_cache)
    _, dp1, dc2_w, dc2_b = naive_conv_forward_backward(p1, params["conv2.weight"],
                                                       params["conv2.bias"], 1, 1, dc2)
    _, dr1 = naive_maxpool_forward_backward(r1, dp1)
    dc1 = relu_backward(dr1, r1_cache)
    _, _, dc1_w, dc1_b = naive_conv_forward_backward(x, params["conv1.weight"],
                                                     params["conv1.bias"], 1, 1, dc1)
    return loss, {"conv1.weight": dc1_w, "conv1.bias": dc1_b, "conv2.weight": dc2_w,
                  "conv2.bias": dc2_b, "fc1.weight": dfc_w, "fc1.bias": dfc_b}


def bench_cnn(rng):
    model = CNN((3, 32, 32), [16, 32], [10])
    params = model.init(0)
    x = rng.standard_normal((32, 3, 32, 32))
    y = rng.integers(0, 10, size=32)

    def ours():
        return model.loss_and_grads(params, x, y)

    functions = {"refimpl": ours}
    if torch is not None:
        nn = torch.nn
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).double()
        torch_names = dict(zip(params, [name for name, _ in net.named_parameters()],
                               strict=True))
        with torch.no_grad():
            for ours_name, torch_name in torch_names.items():
                net.get_parameter(torch_name).copy_(torch.tensor(params[ours_name]))
        x_t, y_t = torch.tensor(x), torch.tensor(y)

        def theirs():
            net.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x_t), y_t)
            loss.backward()
            return loss

        loss, grads = ours()
        assert abs(loss - theirs().item()) <= 1e-12 * abs(loss)
        for ours_name, torch_name in torch_names.items():
            assert np.allclose(grads[ours_name], net.get_parameter(torch_name).grad.numpy(),
                               rtol=1e-10, atol=1e-13)
        functions["torch"] = theirs
    naive = None
    if not ARGS.no_naive:
        loss, grads = ours()
        naive_loss, naive_grads = naive_cnn_loss_and_grads(params, x[:2], y[:2])
        reference_loss, reference_grads = model.loss_and_grads(params, x[:2], y[:2])
        assert abs(naive_loss - reference_loss) <= 1e-12
        for name, grad in naive_grads.items():
            assert np.allclose(grad, reference_grads[name], rtol=1e-10, atol=1e-13)
        naive = time_naive_per_example(lambda x1, y1: naive_cnn_loss_and_grads(params, x1, y1),
                                       x, y)
    return report("small CNN loss_and_grads (batch 32)", compare(functions), naive)


def main():
    print(f"numpy {np.__version__}, torch "
          f"{torch.__version__ if torch is not None else 'not used'}, threads {ARGS.threads}, "
          f"{ARGS.rounds} rounds x {ARGS.block} calls per library, pause {ARGS.pause} s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rng = np.random.default_rng(0)
    conv_outputs = []
    for shape in SHAPES:
        _, out = bench_conv(shape, rng)
        conv_outputs.append(out)
    for out in conv_outputs:
        bench_maxpool(out, rng)
    bench_cnn(rng)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
