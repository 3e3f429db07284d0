"""An independent NumPy implementation of refimpl's models: the "other implementation" of the
oracle-kit tests (``test_testing.py``, ``test_negative_controls.py``).

It is written from the documented conventions (PyTorch layouts, mean-reduced losses, sums
over shared uses), reads only the JSON model configurations of the catalogue / golden
manifest, and imports nothing from ``refimpl`` — so when it agrees with refimpl, two
implementations agree, not one with itself. It is built differently on purpose: every layer
returns its output and a backward *closure* (no caches), a convolution is a loop over kernel
offsets with one ``einsum`` each (refimpl uses im2col), max pooling tracks the winning offset.

``make_impl(case_config, dtype=..., bugs=...)`` returns a callable with the
``refimpl.testing`` protocol ``impl(params, inputs) -> (loss, grads, outputs)``.

``dtype``: "float64", "float32" (every array cast, every operation in float32) or "tf32"
(float32, with the inputs of every matrix product and convolution rounded to TF32's 10-bit
mantissa, as NVIDIA tensor cores do).

``bugs`` (the negative controls), any subset of :data:`BUGS`:

- ``transposed_dense_gradient``: the dense weight gradient computed as ``x.T @ dout`` (in, out)
  instead of ``dout.T @ x`` (out, in)
- ``penalty_without_factor_2``: the tying penalty's gradient ``lam (a - b)`` instead of
  ``2 lam (a - b)``
- ``shared_gradient_overwritten``: a shared parameter's gradient assigned by each use
  instead of summed over the uses
- ``conv_padding_off_by_one``: the convolution pads ``p + 1`` rows before and ``p - 1`` after
  (same output size, shifted windows)
- ``float32_intermediate``: the first layer's output stored in float32 in a float64 pipeline
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

BUGS = frozenset({
    "transposed_dense_gradient", "penalty_without_factor_2", "shared_gradient_overwritten",
    "conv_padding_off_by_one", "float32_intermediate",
})

DTYPES = {"float64": np.float64, "float32": np.float32, "tf32": np.float32}

Backward = Callable[[np.ndarray], tuple[np.ndarray, dict[str, np.ndarray]]]


class Settings:
    def __init__(self, dtype: str, bugs: frozenset[str]):
        unknown = set(bugs) - BUGS
        if unknown:
            raise ValueError(f"unknown bugs {unknown}")
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.bugs = frozenset(bugs)

    def product_input(self, array: np.ndarray) -> np.ndarray:
        """TF32: keep 10 mantissa bits (round to nearest) of a float32 product input."""
        if self.dtype_name != "tf32":
            return array
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
        return rounded.view(np.float32).reshape(array.shape)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


# --- layers: forward returns (out, backward) ----------------------------------------------------

def dense(x, p, s: Settings):
    w = p["weight"]                                    # (out, in)
    a, b = s.product_input(x), s.product_input(w)
    out = np.einsum("nd,fd->nf", a, b)
    if "bias" in p:
        out = out + p["bias"]

    def backward(dout):
        d = s.product_input(dout)
        if "transposed_dense_gradient" in s.bugs:
            dw = np.einsum("nd,nf->df", a, d)          # the bug: (in, out)
        else:
            dw = np.einsum("nf,nd->fd", d, a)
        grads = {"weight": dw}
        if "bias" in p:
            grads["bias"] = dout.sum(axis=0)
        return np.einsum("nf,fd->nd", d, b), grads

    return out, backward


def _conv_core(x, p, cfg, s: Settings, local: bool):
    """Conv2D (local=False, weight (F, Cg, kH, kW)) or LocallyConnected2D (local=True, weight
    (Ho, Wo, F, Cg, kH, kW)), as a loop over kernel offsets."""
    n, c, h, w_in = x.shape
    weight = p["weight"]
    groups = int(cfg.get("groups", 1))
    (sh, sw), (ph, pw), (dh, dw) = (_pair(cfg.get(k, d)) for k, d in
                                    (("stride", 1), ("padding", 0), ("dilation", 1)))
    kh, kw = weight.shape[-2:]
    f = weight.shape[-4]
    cg, fg = c // groups, f // groups
    shift = "conv_padding_off_by_one" in s.bugs
    before = (ph + 1 if shift and ph >= 1 else ph, pw + 1 if shift and pw >= 1 else pw)
    after = (2 * ph - before[0], 2 * pw - before[1])
    xp = np.pad(x, ((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1])))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xg = s.product_input(xp).reshape(n, groups, cg, *xp.shape[2:])
    if local:
        wg = s.product_input(weight).reshape(ho, wo, groups, fg, cg, kh, kw)
    else:
        wg = s.product_input(weight).reshape(groups, fg, cg, kh, kw)

    def window(i, j):
        return (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))

    out = np.zeros((n, groups, fg, ho, wo), dtype=s.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = window(i, j)
            patch = xg[:, :, :, rows, cols]                       # (N, G, Cg, Ho, Wo)
            if local:
                out += np.einsum("ngcyx,yxgfc->ngfyx", patch, wg[..., i, j])
            else:
                out += np.einsum("ngcyx,gfc->ngfyx", patch, wg[..., i, j])
    out = out.reshape(n, f, ho, wo)
    if "bias" in p:
        bias = p["bias"]
        out = out + (bias[None] if local else bias[None, :, None, None])

    def backward(dout):
        d = s.product_input(dout).reshape(n, groups, fg, ho, wo)
        dwg = np.zeros_like(wg)
        dxg = np.zeros_like(xg)
        for i in range(kh):
            for j in range(kw):
                rows, cols = window(i, j)
                patch = xg[:, :, :, rows, cols]
                if local:
                    dwg[..., i, j] = np.einsum("ngfyx,ngcyx->yxgfc", d, patch)
                    dxg[:, :, :, rows, cols] += np.einsum("ngfyx,yxgfc->ngcyx", d, wg[..., i, j])
                else:
                    dwg[..., i, j] = np.einsum("ngfyx,ngcyx->gfc", d, patch)
                    dxg[:, :, :, rows, cols] += np.einsum("ngfyx,gfc->ngcyx", d, wg[..., i, j])
        dxp = dxg.reshape(xp.shape)
        dx = dxp[:, :, before[0]:before[0] + h, before[1]:before[1] + w_in]
        grads = {"weight": dwg.reshape(weight.shape)}
        if "bias" in p:
            grads["bias"] = dout.sum(axis=0) if local else dout.sum(axis=(0, 2, 3))
        return dx, grads

    return out, backward


def _pool_windows(cfg, x_shape):
    (kh, kw) = _pair(cfg["kernel_size"])
    stride = cfg.get("stride")
    (sh, sw) = (kh, kw) if stride is None else _pair(stride)
    (ph, pw) = _pair(cfg.get("padding", 0))
    h, w = x_shape[2:]
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def window(i, j):
        return slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)

    return (kh, kw), (ph, pw), (ho, wo), window


def maxpool(x, cfg, s: Settings):
    (kh, kw), (ph, pw), (ho, wo), window = _pool_windows(cfg, x.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    best = np.full(x.shape[:2] + (ho, wo), -np.inf, dtype=x.dtype)
    winner = np.zeros(best.shape, dtype=np.int64)
    for i in range(kh):                        # scan order: the first maximum wins
        for j in range(kw):
            values = xp[:, :, window(i, j)[0], window(i, j)[1]]
            better = values > best
            best = np.where(better, values, best)
            winner = np.where(better, i * kw + j, winner)

    def backward(dout):
        dxp = np.zeros(xp.shape, dtype=dout.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, cols = window(i, j)
                dxp[:, :, rows, cols] += np.where(winner == i * kw + j, dout, 0)
        return dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], {}

    return best, backward


def avgpool(x, cfg, s: Settings):
    (kh, kw), (ph, pw), (ho, wo), window = _pool_windows(cfg, x.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ones = np.pad(np.ones(x.shape[2:]), ((ph, ph), (pw, pw)))
    total = np.zeros(x.shape[:2] + (ho, wo), dtype=x.dtype)
    count = np.zeros((ho, wo))
    for i in range(kh):
        for j in range(kw):
            rows, cols = window(i, j)
            total += xp[:, :, rows, cols]
            count += ones[rows, cols]
    divisor = kh * kw if cfg.get("count_include_pad", True) else count.astype(x.dtype)

    def backward(dout):
        dxp = np.zeros(xp.shape, dtype=dout.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, cols = window(i, j)
                dxp[:, :, rows, cols] += dout / divisor
        return dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], {}

    return total / divisor, backward


def activation(kind: str, cfg: Mapping[str, Any]):
    def apply(x):
        if kind == "ReLU":
            on = x > 0
            return np.where(on, x, 0), lambda d: np.where(on, d, 0)
        if kind == "LeakyReLU":
            slope, on = cfg.get("negative_slope", 0.01), x > 0
            return np.where(on, x, slope * x), lambda d: np.where(on, d, slope * d)
        if kind == "Tanh":
            t = np.tanh(x)
            return t, lambda d: d * (1 - t ** 2)
        if kind == "Sigmoid":
            sig = 0.5 * (1 + np.tanh(x / 2))       # another formula than refimpl's
            return sig, lambda d: d * sig * (1 - sig)
        if kind == "Softplus":
            out = np.logaddexp(0, x)
            return out, lambda d: d * np.exp(x - out)   # sigmoid(x) = e^x / (1 + e^x)
        if kind == "Identity":
            return x, lambda d: d
        if kind == "Flatten":
            shape = x.shape
            return x.reshape(shape[0], -1), lambda d: d.reshape(shape)
        raise NotImplementedError(kind)

    def layer(x, p, s):
        out, back = apply(x)
        return out, lambda d: (back(d), {})

    return layer


def loss_function(kind: str):
    if kind == "SoftmaxCrossEntropy":
        def cross_entropy(z, y):
            n = z.shape[0]
            log_norm = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
            loss = (log_norm - z[np.arange(n), y]).mean()
            probs = np.exp(z - log_norm[:, None])
            probs[np.arange(n), y] -= 1
            return loss, probs / n
        return cross_entropy
    if kind == "MSE":
        return lambda z, y: (((z - y) ** 2).mean(), 2 * (z - y) / z.size)
    raise NotImplementedError(kind)


PARAMETERISED = {"Dense": dense,
                 "Conv2D": lambda x, p, s, cfg: _conv_core(x, p, cfg, s, local=False),
                 "LocallyConnected2D": lambda x, p, s, cfg: _conv_core(x, p, cfg, s, local=True)}


class Network:
    """A Sequential model from its JSON configuration."""

    def __init__(self, config: Mapping[str, Any], settings: Settings):
        self.layers = config["layers"]
        self.settings = settings
        self.loss = loss_function(config["loss"]["type"])
        share = config.get("share") or {}
        self.slots: dict[str, tuple[str, bool]] = {}
        for layer in self.layers:
            if layer["type"] in PARAMETERISED:
                for local in ("weight", "bias"):
                    if local == "bias" and not layer.get("bias", True):
                        continue
                    slot, transpose = f"{layer['name']}.{local}", False
                    root = slot
                    while root in share:
                        transpose ^= bool(share[root]["transpose"])
                        root = share[root]["source"]
                    self.slots[slot] = (root, transpose)

    def run(self, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray):
        s = self.settings
        backs = []
        h = x
        first = True
        for layer in self.layers:
            kind = layer["type"]
            if kind in PARAMETERISED:
                local = {}
                for name in ("weight", "bias"):
                    slot = f"{layer['name']}.{name}"
                    if slot in self.slots:
                        root, transpose = self.slots[slot]
                        local[name] = params[root].T if transpose else params[root]
                if kind == "Dense":
                    h, back = dense(h, local, s)
                else:
                    h, back = PARAMETERISED[kind](h, local, s, layer)
                if first and "float32_intermediate" in s.bugs:
                    h = h.astype(np.float32).astype(np.float64)   # the bug
                first = False
            elif kind == "MaxPool2D":
                h, back = maxpool(h, layer, s)
            elif kind == "AvgPool2D":
                h, back = avgpool(h, layer, s)
            else:
                h, back = activation(kind, layer)(h, None, s)
            backs.append((layer, back))
        loss, d = self.loss(h, y)
        grads: dict[str, np.ndarray] = {}
        for layer, back in reversed(backs):
            d, local_grads = back(d)
            for name, grad in local_grads.items():
                root, transpose = self.slots[f"{layer['name']}.{name}"]
                grad = grad.T if transpose else grad
                if root in grads and "shared_gradient_overwritten" not in s.bugs:
                    grads[root] = grads[root] + grad
                else:
                    grads[root] = grad
        return loss, grads, h

    def unique(self) -> list[str]:
        return [slot for slot, (root, _) in self.slots.items() if root == slot]


def _cast(arrays: Mapping[str, Any], s: Settings) -> dict[str, np.ndarray]:
    return {k: np.asarray(v).astype(s.dtype) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
            for k, v in arrays.items()}


def make_impl(case_config: Mapping[str, Any], dtype: str = "float64",
              bugs: frozenset[str] | set[str] = frozenset()):
    """The ``refimpl.testing`` protocol for one case configuration (a catalogue case's
    ``config`` or a golden manifest's ``cases[name]["config"]``)."""
    s = Settings(dtype, frozenset(bugs))
    if "anchored" in case_config:
        return _anchored_impl(case_config["anchored"], s)
    if "model" in case_config:
        network = Network(case_config["model"], s)

        def impl(params, inputs):
            p, data = _cast(params, s), _cast(inputs, s)
            loss, grads, out = network.run(p, data["x"], data["y"])
            return float(loss), {name: grads[name] for name in p}, {"out": out}

        return impl
    pair = case_config.get("pair", case_config)
    return _pair_impl(pair, s)


def _pair_impl(config: Mapping[str, Any], s: Settings):
    net_a, net_b = Network(config["model_a"], s), Network(config["model_b"], s)
    hard = config.get("mode", "soft") == "hard"
    pairs = [(p["a"], p["b"], bool(p["transpose"])) for p in config["pairs"]]
    lams = config.get("lam") or {}
    l1 = config.get("penalty", "l2") == "l1"
    factor = 1.0 if "penalty_without_factor_2" in s.bugs else 2.0

    def impl(params, inputs):
        p, data = _cast(params, s), _cast(inputs, s)
        pa = {k[2:]: v for k, v in p.items() if k.startswith("A:")}
        pb = {k[2:]: v for k, v in p.items() if k.startswith("B:")}
        if hard:
            for name_a, name_b, transpose in pairs:
                pb[name_b] = pa[name_a].T if transpose else pa[name_a]
        loss_a, grads_a, out_a = net_a.run(pa, data["xa"], data["ya"])
        # An autoencoder B (no "yb") reconstructs its input.
        loss_b, grads_b, out_b = net_b.run(pb, data["xb"], data.get("yb", data["xb"]))
        total = loss_a + loss_b
        for name_a, name_b, transpose in pairs:
            if hard:
                grad = grads_b.pop(name_b)
                grad = grad.T if transpose else grad
                if "shared_gradient_overwritten" in s.bugs:
                    grads_a[name_a] = grad
                else:
                    grads_a[name_a] = grads_a[name_a] + grad
                continue
            lam = lams[name_a]
            b = pb[name_b].T if transpose else pb[name_b]
            diff = pa[name_a] - b
            if l1:
                total = total + lam * np.abs(diff).sum()
                g = lam * np.sign(diff)
            else:
                total = total + lam * (diff ** 2).sum()
                g = factor * lam * diff
            grads_a[name_a] = grads_a[name_a] + g
            grads_b[name_b] = grads_b[name_b] - (g.T if transpose else g)
        grads = {f"A:{k}": v for k, v in grads_a.items()}
        grads.update({f"B:{k}": v for k, v in grads_b.items() if f"B:{k}" in p})
        return float(total), {name: grads[name] for name in p}, {"out_a": out_a, "out_b": out_b}

    return impl


def _anchored_impl(config: Mapping[str, Any], s: Settings):
    """``L(w) + sum lam_n ||w_n - w0_n||`` with ``w0_n`` the input ``"w0:<name>"`` (0 if absent)."""
    network = Network(config["model"], s)
    lams = config["lam"]
    l1 = config.get("penalty", "l2") == "l1"
    factor = 1.0 if "penalty_without_factor_2" in s.bugs else 2.0

    def impl(params, inputs):
        p, data = _cast(params, s), _cast(inputs, s)
        loss, grads, out = network.run(p, data["x"], data["y"])
        for name, lam in lams.items():
            diff = p[name] - data.get(f"w0:{name}", 0.0)
            if l1:
                loss = loss + lam * np.abs(diff).sum()
                grads[name] = grads[name] + lam * np.sign(diff)
            else:
                loss = loss + lam * (diff ** 2).sum()
                grads[name] = grads[name] + factor * lam * diff
        return float(loss), {name: grads[name] for name in p}, {"out": out}

    return impl
