"""Planted implementations of the convention probes (``test_probes.py``, ``test_conform.py``).

Each is the independent implementation (``independent_numpy.py``, which imports nothing from
refimpl) with exactly one rule changed: a derivative at a kink, a tie's split, a padding, a
divisor, a sign at 0, a hyper-parameter rounded to float32, a softmax without its max. So when
refimpl calls one "convention differs", an implementation written without refimpl matched
refimpl's alternative reference, not refimpl matching itself.

``planted(case, variant, dtype)`` is a context manager yielding the implementation (the patches
of the independent implementation stay active while it is used). :data:`PLANTED` maps each
probe to its main variant, the words ``diagnose`` must use for it and the outcome a
conformance run must give it in float64; :data:`VARIANTS` holds further members and
non-members of the probes' families.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import independent_numpy as ind
import numpy as np

ORIGINAL = {"activation": ind.activation, "maxpool": ind.maxpool, "avgpool": ind.avgpool,
            "loss_function": ind.loss_function}


def _activation_with(kind_changed: str, rule: Callable) -> Callable:
    def activation(kind, cfg):
        if kind != kind_changed:
            return ORIGINAL["activation"](kind, cfg)

        def layer(x, p, s):
            out, back = rule(x, cfg)
            return out, lambda d: (back(d), {})
        return layer
    return activation


def _relu_derivative_at_zero(value: float) -> Callable:
    def rule(x, cfg):
        derivative = np.where(x > 0, 1.0, np.where(x == 0, value, 0.0))
        return np.where(x > 0, x, 0), lambda d: d * derivative
    return rule


def _leaky_derivative_at_zero(value: float) -> Callable:
    def rule(x, cfg):
        slope = cfg["negative_slope"]
        derivative = np.where(x > 0, 1.0, np.where(x == 0, value, slope))
        return np.where(x > 0, x, slope * x), lambda d: d * derivative
    return rule


def _leaky_float32_slope(x, cfg):
    slope, on = np.float32(cfg["negative_slope"]), x > 0   # TensorFlow 2.21's LeakyRelu
    return np.where(on, x, slope * x), lambda d: np.where(on, d, slope * d)


def _softplus_threshold(x, cfg):
    linear = x > 20                               # torch.nn.functional.softplus(threshold=20)
    out = np.where(linear, x, np.logaddexp(0, x))
    return out, lambda d: d * np.where(linear, 1.0, np.exp(x - out))


def _maxpool_variant(pad_value: float, to_first: float, to_last: float) -> Callable:
    """Max pooling with ``pad_value`` padding whose window gradient goes ``to_first`` times to
    the first maximum in scan order and ``to_last`` times to the last (1, 0: refimpl's)."""
    def maxpool(x, cfg, s):
        (kh, kw), (ph, pw), (ho, wo), window = ind._pool_windows(cfg, x.shape)
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
        best = np.full(x.shape[:2] + (ho, wo), -np.inf)
        first = np.zeros(best.shape, dtype=np.int64)
        last = np.zeros(best.shape, dtype=np.int64)
        for i in range(kh):
            for j in range(kw):
                values = xp[:, :, window(i, j)[0], window(i, j)[1]]
                first = np.where(values > best, i * kw + j, first)
                last = np.where(values >= best, i * kw + j, last)
                best = np.maximum(values, best)

        def backward(dout):
            dxp = np.zeros(xp.shape)
            for i in range(kh):
                for j in range(kw):
                    rows, cols = window(i, j)
                    index = i * kw + j
                    share = np.where(first == index, to_first, 0.0) + \
                        np.where(last == index, to_last, 0.0)
                    # a window without a tie: first == last, the whole gradient once
                    share = np.where(first == last, np.where(first == index, 1.0, 0.0), share)
                    dxp[:, :, rows, cols] += share * dout
            return dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], {}
        return best, backward
    return maxpool


def _avgpool_flipped(x, cfg, s):
    return ORIGINAL["avgpool"](x, {**cfg, "count_include_pad":
                                   not cfg.get("count_include_pad", True)}, s)


def _naive_cross_entropy(kind):
    if kind != "SoftmaxCrossEntropy":
        return ORIGINAL["loss_function"](kind)

    def cross_entropy(z, y):                      # softmax without the max subtracted
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            e = np.exp(z)
            probs = e / e.sum(1, keepdims=True)
            n = z.shape[0]
            loss = -np.log(probs[np.arange(n), y]).mean()
            probs[np.arange(n), y] -= 1
        return loss, probs / n
    return cross_entropy


def _l1_sign_at_tie(sign: float) -> Callable:
    def factory(case, dtype="float64"):
        correct = ind.make_impl(case.config, dtype=dtype)
        lam = case.config["pair"]["lam"]["fc1.weight"]

        def impl(params, inputs):                 # sign(0) = ``sign`` in |a - b|'s derivative
            loss, grads, outputs = correct(params, inputs)
            tie = params["A:fc1.weight"] == params["B:fc1.weight"]
            grads["A:fc1.weight"] = grads["A:fc1.weight"] + sign * lam * tie
            grads["B:fc1.weight"] = grads["B:fc1.weight"] - sign * lam * tie
            return loss, grads, outputs
        return impl
    return factory


def _lam_float32(case, dtype="float64"):
    pair = dict(case.config["pair"])
    pair["lam"] = {key: np.float32(value) for key, value in pair["lam"].items()}
    return ind.make_impl({**case.config, "pair": pair}, dtype=dtype)


def _bottom_right_windows(case, dtype="float64"):
    correct = ind.make_impl(case.config, dtype=dtype)
    return lambda params, inputs: correct(params, {**inputs, "x": inputs["x"][:, :, 1:, 1:]})


def _swapped_group_backward(case, dtype="float64"):
    """An independent loop implementation of conv(groups=2) -> flatten -> dense -> MSE whose
    weight gradient reads the other group's input channels."""
    def impl(params, inputs):
        w, b = params["conv.weight"], params["conv.bias"]
        fc_w, fc_b = params["fc.weight"], params["fc.bias"]
        x, y = inputs["x"], inputs["y"]
        n, f, ho, wo = x.shape[0], w.shape[0], x.shape[2] - 1, x.shape[3] - 1
        conv = np.zeros((n, f, ho, wo)) + b[None, :, None, None]
        for o in range(f):
            group = o // 2
            for i in range(2):
                for j in range(2):
                    patch = x[:, 2 * group:2 * group + 2, i:i + ho, j:j + wo]
                    conv[:, o] += np.einsum("c,ncij->nij", w[o, :, i, j], patch)
        flat = conv.reshape(n, -1)
        out = flat @ fc_w.T + fc_b
        dout = 2 * (out - y) / out.size
        dconv = (dout @ fc_w).reshape(conv.shape)
        dw = np.zeros_like(w)
        for o in range(f):
            other = 1 - o // 2                    # the bug: the other group's channels
            for i in range(2):
                for j in range(2):
                    patch = x[:, 2 * other:2 * other + 2, i:i + ho, j:j + wo]
                    dw[o, :, i, j] = np.einsum("nij,ncij->c", dconv[:, o], patch)
        grads = {"conv.weight": dw, "conv.bias": dconv.sum((0, 2, 3)),
                 "fc.weight": dout.T @ flat, "fc.bias": dout.sum(0)}
        return float(((out - y) ** 2).mean()), grads, {"out": out}
    return impl


class Plant(NamedTuple):
    """A planted implementation: patches of the independent implementation, or a factory
    ``(case, dtype) -> impl``; the words ``diagnose`` must use; the float64 outcome."""

    plant: Any
    words: str
    outcome: str


#: probe -> its main planted implementation.
PLANTED: dict[str, Plant] = {
    "probe-relu-at-zero": Plant(
        {"activation": _activation_with("ReLU", _relu_derivative_at_zero(1.0))},
        "relu'(0): implementation ~ 1 ", "convention differs"),
    "probe-leaky-relu-at-zero": Plant(
        {"activation": _activation_with("LeakyReLU", _leaky_derivative_at_zero(1.0))},
        "leaky_relu'(0): implementation ~ 1 ", "convention differs"),
    "probe-leaky-relu-slope-float64": Plant(
        {"activation": _activation_with("LeakyReLU", _leaky_float32_slope)},
        "negative_slope: implementation ~ 0.10000000149 (the value rounded to float32: a loss "
        "of precision, never a convention)", "fail"),
    "probe-softplus-above-20": Plant(
        {"activation": _activation_with("Softplus", _softplus_threshold)},
        "softplus'(20.5): implementation ~ 1 ", "convention differs"),
    "probe-maxpool-tie-after-conv": Plant(
        {"maxpool": _maxpool_variant(-np.inf, 0.0, 1.0)},
        "max-pool tie, the last maximum's share: implementation ~ 1 ", "convention differs"),
    "probe-maxpool-neg-inf-padding": Plant(
        {"maxpool": _maxpool_variant(0.0, 1.0, 0.0)}, "padding counted as 0",
        "convention differs"),
    "probe-avgpool-padding-included": Plant(
        {"avgpool": _avgpool_flipped}, "count_include_pad=False", "convention differs"),
    "probe-avgpool-padding-excluded": Plant(
        {"avgpool": _avgpool_flipped}, "count_include_pad=True", "convention differs"),
    "probe-floor-mode-output-size": Plant(
        _bottom_right_windows, "bottom-right", "fail"),
    "probe-grouped-conv-backward": Plant(
        _swapped_group_backward, "other group's input channels", "fail"),
    "probe-l1-tie": Plant(
        _l1_sign_at_tie(1.0), "subgradient of |a - b| at 0 (in units of lam): implementation "
                              "~ 1 ", "convention differs"),
    "probe-l2-lambda-float64": Plant(
        _lam_float32, "lam: implementation ~ 0.10000000149 (the value rounded to float32: a "
                      "loss of precision, never a convention)", "fail"),
    "probe-logits-1e4": Plant(
        {"loss_function": _naive_cross_entropy}, "non-finite", "fail"),
}

#: (probe, variant) -> further members (convention differs) and non-members (fail) of the
#: probes' families, and a rule outside every family.
VARIANTS: dict[tuple[str, str], Plant] = {
    ("probe-relu-at-zero", "half"): Plant(
        {"activation": _activation_with("ReLU", _relu_derivative_at_zero(0.5))},
        "relu'(0): implementation ~ 0.5 (a documented value", "convention differs"),
    ("probe-relu-at-zero", "seven"): Plant(
        {"activation": _activation_with("ReLU", _relu_derivative_at_zero(7.0))},
        "relu'(0): implementation ~ 7 (not a documented value", "fail"),
    ("probe-leaky-relu-at-zero", "mygrad-zero"): Plant(
        {"activation": _activation_with("LeakyReLU", _leaky_derivative_at_zero(0.0))},
        "leaky_relu'(0): implementation ~ 0 (not a documented value", "fail"),
    ("probe-leaky-relu-at-zero", "half-way"): Plant(
        {"activation": _activation_with("LeakyReLU", _leaky_derivative_at_zero(0.505))},
        "leaky_relu'(0): implementation ~ 0.505 (a documented value", "convention differs"),
    ("probe-l1-tie", "minus-one"): Plant(
        _l1_sign_at_tie(-1.0), "implementation ~ -1 (a documented value", "convention differs"),
    ("probe-l1-tie", "five"): Plant(
        _l1_sign_at_tie(5.0), "implementation ~ 5 (not a documented value", "fail"),
    ("probe-maxpool-tie-after-conv", "even"): Plant(
        {"maxpool": _maxpool_variant(-np.inf, 0.5, 0.5)},
        "the last maximum's share: implementation ~ 0.5 (a documented value",
        "convention differs"),
    ("probe-maxpool-tie-after-conv", "both-whole"): Plant(
        {"maxpool": _maxpool_variant(-np.inf, 1.0, 1.0)},
        "every tied maximum gets the whole gradient (counted twice: not a subgradient) (not a "
        "convention: a bug)", "fail"),
}


@contextlib.contextmanager
def _patched(replacements: dict[str, Any]) -> Iterator[None]:
    saved = {name: getattr(ind, name) for name in replacements}
    try:
        for name, replacement in replacements.items():
            setattr(ind, name, replacement)
        yield
    finally:
        for name, value in saved.items():
            setattr(ind, name, value)


@contextlib.contextmanager
def planted(case: Any, variant: str | None = None, dtype: str = "float64") -> Iterator[Any]:
    """The planted implementation of ``case`` (its main one, or ``VARIANTS[case.name,
    variant]``), the independent implementation's patches active while it is used."""
    plant = (PLANTED[case.name] if variant is None else VARIANTS[case.name, variant]).plant
    if callable(plant):
        yield plant(case, dtype)
        return
    with _patched(plant):
        yield ind.make_impl(case.config, dtype=dtype)


def builder(case: Any, variant: str | None = None,
            fault: Callable[[tuple], tuple] | None = None) -> Callable:
    """A builder for ``conform`` whose implementation of ``case`` is the planted one, in the
    dtype under test (with ``fault`` applied to its result ``(loss, grads, outputs)``)."""
    def build(config, dtype):
        def impl(params, inputs):
            with planted(case, variant, dtype) as inner:
                result = inner(params, inputs)
            return result if fault is None else fault(result)
        return impl
    return build
