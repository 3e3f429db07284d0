"""The convolution's input gradient in "positions" order: a tuned alternative to col2im.

:func:`refimpl.nn.conv.conv2d_input_gradient` computes the input gradient (a transposed
convolution) in one of two orders; both compute the same sums, adding the kH*kW kernel
offsets in the same order (i slowest), each offset a sum over a group's filters computed by a
matrix product:

* ``"columns"`` (the clear form, in :mod:`refimpl.nn.conv`): ``dcols_g = W_g.T @ D_g``
  (C*kH*kW, N*Ho*Wo), then :func:`~refimpl.nn.conv_geometry.col2im`;
* ``"positions"`` (:func:`input_gradient_by_positions`, this module): per kernel offset
  ``(i, j)``, ``T[i, j] = D @ W[:, :, i, j]`` laid out (Ho, Wo, N, C), so that one
  strided-slice addition per offset adds runs of N*C contiguous elements into a
  (Hp, Wp, N, C) accumulator; then one transposing copy to NCHW.

The two orders differ in the runs NumPy adds in one inner loop: ``Wo`` elements (strided by
the stride) for ``"columns"``, ``N*C`` contiguous elements for ``"positions"``. Short runs
cost a loop overhead each; ``"positions"`` pays for its long runs with a transposing copy of
``dout`` and of ``dx``, more memory at its peak, and matrix products only ``Cg`` wide.
:func:`positions_first` is the rule ``method="auto"`` follows; the measurements behind it are
in ``benchmarks/bench_conv_input_gradient.py``. Both orders are tested against the
nested-loop reference in ``tests/test_conv.py``.

Legend as :mod:`refimpl.nn.conv_geometry`.
"""

from __future__ import annotations

import numpy as np

from .conv_geometry import ConvGeometry, window_slice

__all__ = ["input_gradient_by_positions", "positions_first"]


def positions_first(group_channels: int, out_width: int) -> bool:
    """Whether ``method="auto"`` takes ``"positions"``: an output at most 12 wide and a group
    of at least 8 input channels.

    Parameters
    ----------
    group_channels : int
        ``Cg``, input channels per group.
    out_width : int
        ``Wo``, the output width.

    Returns
    -------
    bool
        True for ``"positions"``, False for ``"columns"``.
    """
    return out_width <= 12 and group_channels >= 8


def input_gradient_by_positions(dout: np.ndarray, weight: np.ndarray,
                                geometry: ConvGeometry) -> np.ndarray:
    """The input gradient of a convolution, accumulated position-major.

    Parameters
    ----------
    dout : ndarray, shape (N, F, Ho, Wo)
        The upstream gradient, already checked.
    weight : ndarray, shape (F, Cg, kH, kW)
    geometry : ~refimpl.nn.conv_geometry.ConvGeometry
        Of the forward call.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W), C-contiguous
    """
    batch, channels, height, width = geometry.x_shape
    filters, group_channels, kh, kw = weight.shape
    _, _, out_h, out_w = dout.shape
    (sh, sw), (ph, pw), (dh, dw), groups = geometry[2:]
    rows = out_h * out_w * batch
    fg = filters // groups
    # D: rows (ho, wo, n), one transposing copy of dout; per group a (rows, Fg) block.
    d = np.ascontiguousarray(dout.transpose(2, 3, 0, 1)).reshape(rows, groups, fg)
    # W: per offset and group the (Fg, Cg) matrix, contiguous (BLAS needs unit strides).
    w = np.ascontiguousarray(
        weight.reshape(groups, fg, group_channels, kh * kw).transpose(3, 0, 1, 2))
    # T[(i, j), (ho, wo, n), g, cg]: the products land directly in that order (each
    # (rows, Cg) block is a BLAS-compatible strided view of T, so no copy).
    t = np.empty((kh * kw, rows, groups, group_channels), dtype=np.result_type(dout, weight))
    np.matmul(d.transpose(1, 0, 2), w, out=t.transpose(0, 2, 1, 3))   # (kHkW, G, rows, Cg)
    t = t.reshape(kh, kw, out_h, out_w, batch * channels)
    dpad = np.zeros((height + 2 * ph, width + 2 * pw, batch * channels), dtype=t.dtype)
    for i in range(kh):
        rows_i = window_slice(i * dh, sh, out_h)
        for j in range(kw):
            dpad[rows_i, window_slice(j * dw, sw, out_w)] += t[i, j]
    dx = dpad[ph:ph + height, pw:pw + width].reshape(height, width, batch, channels)
    return np.ascontiguousarray(dx.transpose(2, 3, 0, 1))
