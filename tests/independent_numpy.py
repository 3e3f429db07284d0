"""An independent NumPy implementation of refimpl's models: the "other implementation" of the
oracle-kit tests (``test_testing.py``, ``test_negative_controls.py``).

It is written from the documented conventions (PyTorch layouts, mean-reduced losses, sums
over shared uses), reads only the JSON model configurations of the catalogue / golden
manifest, and imports nothing from ``refimpl`` — so when it agrees with refimpl, two
implementations agree, not one with itself. It is built differently on purpose: every layer
returns its output and a backward *closure* (no caches), a convolution is a loop over kernel
offsets with one ``einsum`` each (refimpl uses im2col), max pooling tracks the winning offset,
an embedding's gradient is a loop over positions, an RNN runs and back-propagates one time step
at a time, a Siamese model runs its tower once per branch (one distance formula for both metric
losses), and a micro-batch case is an accumulation loop over the micro-batches.

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
- ``micro_batches_unweighted``: every micro-batch weighted ``1 / M`` instead of its share
  ``n_i / N`` of the batch
- ``penalty_per_micro_batch``: a tied pair's tie added in every micro-batch, not once per step
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

BUGS = frozenset({
    "transposed_dense_gradient", "penalty_without_factor_2", "shared_gradient_overwritten",
    "conv_padding_off_by_one", "float32_intermediate", "micro_batches_unweighted",
    "penalty_per_micro_batch",
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
    out = np.einsum("...d,fd->...f", a, b)             # (N, ..., D): the last axis
    if "bias" in p:
        out = out + p["bias"]

    def backward(dout):
        d = s.product_input(dout)
        rows_a, rows_d = a.reshape(-1, a.shape[-1]), d.reshape(-1, d.shape[-1])
        if "transposed_dense_gradient" in s.bugs:
            dw = np.einsum("nd,nf->df", rows_a, rows_d)   # the bug: (in, out)
        else:
            dw = np.einsum("nf,nd->fd", rows_d, rows_a)
        grads = {"weight": dw}
        if "bias" in p:
            grads["bias"] = dout.reshape(-1, dout.shape[-1]).sum(axis=0)
        return np.einsum("...f,fd->...d", d, b), grads

    return out, backward


def embedding(x, p, s: Settings):
    """Rows of the (V, D) table picked by int indices x (any shape S): out S + (D,)."""
    w = p["weight"]
    out = w[x]

    def backward(dout):
        dw = np.zeros(w.shape, dtype=dout.dtype)
        for index, row in zip(x.reshape(-1), dout.reshape(-1, w.shape[1]), strict=True):
            dw[index] += row                           # one position at a time
        return None, {"weight": dw}

    return out, backward


def rnn(x, p, s: Settings, cfg):
    """PyTorch's nn.RNN (batch first, h0 = 0), step by step; backward through time with the
    shared weights' gradients accumulated step by step."""
    relu = cfg.get("nonlinearity", "tanh") == "relu"
    w_ih, w_hh = s.product_input(p["weight_ih"]), s.product_input(p["weight_hh"])
    bias = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else 0
    n, steps, _ = x.shape
    hs = [np.zeros((n, w_hh.shape[0]), dtype=x.dtype)]
    for t in range(steps):
        pre = (np.einsum("nd,hd->nh", s.product_input(x[:, t]), w_ih)
               + np.einsum("nj,hj->nh", s.product_input(hs[-1]), w_hh) + bias)
        hs.append(np.where(pre > 0, pre, 0) if relu else np.tanh(pre))
    out = np.stack(hs[1:], axis=1)

    def backward(dout):
        grads = {"weight_ih": np.zeros(w_ih.shape, dtype=dout.dtype),
                 "weight_hh": np.zeros(w_hh.shape, dtype=dout.dtype)}
        dbias = np.zeros(w_hh.shape[0], dtype=dout.dtype)
        dx = np.zeros(x.shape, dtype=dout.dtype)
        carry = np.zeros(hs[0].shape, dtype=dout.dtype)
        for t in reversed(range(steps)):
            h = hs[t + 1]
            slope = (h > 0).astype(h.dtype) if relu else 1 - h ** 2
            dpre = (dout[:, t] + carry) * slope
            grads["weight_ih"] = grads["weight_ih"] + np.einsum("nh,nd->hd", dpre, x[:, t])
            grads["weight_hh"] = grads["weight_hh"] + np.einsum("nh,nj->hj", dpre, hs[t])
            dbias = dbias + dpre.sum(axis=0)
            dx[:, t] = np.einsum("nh,hd->nd", dpre, w_ih)
            carry = np.einsum("nh,hj->nj", dpre, w_hh)
        if "bias_ih" in p:
            grads.update(bias_ih=dbias, bias_hh=dbias.copy())
        return dx, grads

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
        if kind == "LastStep":
            shape = x.shape

            def back_last(d):
                dx = np.zeros(shape, dtype=d.dtype)
                dx[:, -1] = d
                return dx
            return x[:, -1], back_last
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
        def cross_entropy(logits, labels):
            # (N, ..., K) logits, (N, ...) labels: every label position is an example
            z, y = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
            n = z.shape[0]
            log_norm = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
            loss = (log_norm - z[np.arange(n), y]).mean()
            probs = np.exp(z - log_norm[:, None])
            probs[np.arange(n), y] -= 1
            return loss, (probs / n).reshape(logits.shape)
        return cross_entropy
    if kind == "MSE":
        return lambda z, y: (((z - y) ** 2).mean(), 2 * (z - y) / z.size)
    raise NotImplementedError(kind)


PARAMETERISED = {"Dense": dense,
                 "Conv2D": lambda x, p, s, cfg: _conv_core(x, p, cfg, s, local=False),
                 "LocallyConnected2D": lambda x, p, s, cfg: _conv_core(x, p, cfg, s, local=True),
                 "Embedding": lambda x, p, s, cfg: embedding(x, p, s),
                 "RNN": rnn}
#: Parameter names of the layers that do not have ("weight", "bias").
LOCALS = {"Embedding": ("weight",), "RNN": ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


class Network:
    """A Sequential model from its JSON configuration."""

    def __init__(self, config: Mapping[str, Any], settings: Settings):
        self.layers = config["layers"]
        self.settings = settings
        # a Siamese tower has no loss of its own
        self.loss = loss_function(config["loss"]["type"]) if config.get("loss") else None
        share = config.get("share") or {}
        self.slots: dict[str, tuple[str, bool]] = {}
        for layer in self.layers:
            if layer["type"] in PARAMETERISED:
                for local in LOCALS.get(layer["type"], ("weight", "bias")):
                    if local.startswith("bias") and not layer.get("bias", True):
                        continue
                    slot, transpose = f"{layer['name']}.{local}", False
                    root = slot
                    while root in share:
                        transpose ^= bool(share[root]["transpose"])
                        root = share[root]["source"]
                    self.slots[slot] = (root, transpose)

    def run(self, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray):
        h, backs = self.forward(params, x)
        loss, d = self.loss(h, y)
        return loss, self.backward(backs, d), h

    def forward(self, params: Mapping[str, np.ndarray], x: np.ndarray):
        s = self.settings
        backs = []
        h = x
        first = True
        for layer in self.layers:
            kind = layer["type"]
            if kind in PARAMETERISED:
                local = {}
                for name in LOCALS.get(kind, ("weight", "bias")):
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
        return h, backs

    def backward(self, backs, d, grads: dict[str, np.ndarray] | None = None):
        """The gradients of the unique parameters, added to ``grads`` (a Siamese tower's
        other branches) unless the sharing bug overwrites them."""
        s = self.settings
        grads = {} if grads is None else grads
        for layer, back in reversed(backs):
            d, local_grads = back(d)
            for name, grad in local_grads.items():
                root, transpose = self.slots[f"{layer['name']}.{name}"]
                grad = grad.T if transpose else grad
                if root in grads and "shared_gradient_overwritten" not in s.bugs:
                    grads[root] = grads[root] + grad
                else:
                    grads[root] = grad
        return grads

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
    if "base" in case_config:
        return _microbatch_impl(case_config, s)
    if "siamese" in case_config:
        return _siamese_impl(case_config["siamese"], s)
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

    def impl(params, inputs, scale_a=1.0, scale_b=1.0, with_penalty=True):
        """The pair's loss; ``scale_a`` / ``scale_b`` weigh each model's data loss (a
        micro-batch's share of its model's batch), ``with_penalty`` adds the tie."""
        p, data = _cast(params, s), _cast(inputs, s)
        pa = {k[2:]: v for k, v in p.items() if k.startswith("A:")}
        pb = {k[2:]: v for k, v in p.items() if k.startswith("B:")}
        if hard:
            for name_a, name_b, transpose in pairs:
                pb[name_b] = pa[name_a].T if transpose else pa[name_a]
        loss_a, grads_a, out_a = net_a.run(pa, data["xa"], data["ya"])
        # An autoencoder B (no "yb") reconstructs its input.
        loss_b, grads_b, out_b = net_b.run(pb, data["xb"], data.get("yb", data["xb"]))
        grads_a = {k: scale_a * v for k, v in grads_a.items()}
        grads_b = {k: scale_b * v for k, v in grads_b.items()}
        total = scale_a * loss_a + scale_b * loss_b
        for name_a, name_b, transpose in pairs:
            if hard:
                grad = grads_b.pop(name_b)
                grad = grad.T if transpose else grad
                if "shared_gradient_overwritten" in s.bugs:
                    grads_a[name_a] = grad
                else:
                    grads_a[name_a] = grads_a[name_a] + grad
                continue
            if not with_penalty:
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


#: The branch inputs of a Siamese model, per metric loss.
BRANCHES = {"TripletMarginLoss": ("anchor", "positive", "negative"),
            "ContrastiveLoss": ("x1", "x2")}


def _distance(u, v, eps):
    """``||u - v + eps||`` per row, and its gradient with respect to u (0 where it is 0)."""
    diff = u - v + eps
    d = np.sqrt((diff ** 2).sum(axis=1))
    safe = np.where(d > 0, d, 1.0)
    return d, np.where(d[:, None] > 0, diff / safe[:, None], 0.0), diff


def _metric_loss(spec: Mapping[str, Any], embeddings, y):
    """The metric loss of the branches' embeddings and its gradient for each branch."""
    margin, eps = spec["margin"], spec.get("eps", 1e-6)
    if spec["type"] == "TripletMarginLoss":
        a, pos, neg = embeddings
        n = a.shape[0]
        d_ap, g_ap, _ = _distance(a, pos, eps)
        d_an, g_an, _ = _distance(a, neg, eps)
        hinge = margin + d_ap - d_an
        active = (hinge >= 0).astype(a.dtype)[:, None] / n   # clamp_min passes at 0
        loss = np.where(hinge > 0, hinge, 0).mean()
        return loss, [active * (g_ap - g_an), -active * g_ap, active * g_an]
    x1, x2 = embeddings
    n = x1.shape[0]
    d, g, diff = _distance(x1, x2, eps)
    similar = (y == 1).astype(x1.dtype)[:, None]
    gap = np.where(margin - d > 0, margin - d, 0)
    loss = (similar[:, 0] * (diff ** 2).sum(axis=1) + (1 - similar[:, 0]) * gap ** 2).mean()
    d_x1 = (2 * similar * diff - 2 * (1 - similar) * gap[:, None] * g) / n
    return loss, [d_x1, -d_x1]


def _siamese_impl(config: Mapping[str, Any], s: Settings):
    """One tower on every branch input; each tower gradient summed over the branches."""
    tower = Network(config["tower"], s)
    spec = config["loss"]
    branches = BRANCHES[spec["type"]]

    def impl(params, inputs):
        p, data = _cast(params, s), _cast(inputs, s)
        runs = [tower.forward(p, data[name]) for name in branches]
        loss, douts = _metric_loss(spec, [h for h, _ in runs], data.get("y"))
        grads: dict[str, np.ndarray] = {}
        for (_, backs), dout in zip(runs, douts, strict=True):
            grads = tower.backward(backs, dout, grads)
        outputs = {f"out_{name}": h for name, (h, _) in zip(branches, runs, strict=True)}
        return float(loss), {name: grads[name] for name in p}, outputs

    return impl


def _microbatch_impl(config: Mapping[str, Any], s: Settings):
    """The step over micro-batches ``"<name>.<i>"``: an accumulation loop, each micro-batch's
    loss and gradient weighted by its share of its model's batch; a pair's tie added once (in
    the first micro-batch); an anchored model's penalty is added in every micro-batch with
    the micro-batch's weight, and the weights sum to 1, so once in all."""
    base = config["base"]
    sizes = config["micro_batches"]
    sizes_b = config.get("micro_batches_b", sizes)
    base_impl = make_impl(base, s.dtype_name, s.bugs)
    pair = "pair" in base

    def impl(params, inputs):
        names = sorted({key.rpartition(".")[0] for key in inputs})
        loss, grads, outputs = 0.0, {}, {}
        for i, (size, size_b) in enumerate(zip(sizes, sizes_b, strict=True)):
            micro = {name: inputs[f"{name}.{i}"] for name in names}
            weight, weight_b = size / sum(sizes), size_b / sum(sizes_b)
            if "micro_batches_unweighted" in s.bugs:
                weight = weight_b = 1 / len(sizes)                       # the bug
            if pair:
                once = i == 0 or "penalty_per_micro_batch" in s.bugs     # the bug: every time
                part = base_impl(params, micro, weight, weight_b, with_penalty=once)
            else:
                part = base_impl(params, micro)
                part = (weight * part[0], {k: weight * v for k, v in part[1].items()}, part[2])
            loss += part[0]
            grads = {k: grads[k] + v if k in grads else v for k, v in part[1].items()}
            outputs.update({f"{k}.{i}": v for k, v in part[2].items()})
        return float(loss), grads, outputs

    return impl
