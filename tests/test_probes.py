"""Tests of refimpl/testing/cases/probes.py: every convention probe passes refimpl's own rule
(an independent implementation, in float64, float32 and TF32), fails an implementation that
breaks exactly its convention, and `diagnose` names that convention."""

from __future__ import annotations

import contextlib

import independent_numpy as ind
import numpy as np
import pytest

from refimpl.testing import compare_with_oracle
from refimpl.testing.cases import get_case, probes
from refimpl.testing.resolution import case_floors

PROBES = {case.name: case for case in probes.cases()}
ORIGINAL = {"activation": ind.activation, "maxpool": ind.maxpool, "avgpool": ind.avgpool,
            "loss_function": ind.loss_function}


# --- planted implementations: the independent implementation with one rule changed ----------

def _activation_with(kind_changed: str, rule):
    def activation(kind, cfg):
        if kind != kind_changed:
            return ORIGINAL["activation"](kind, cfg)

        def layer(x, p, s):
            out, back = rule(x, cfg)
            return out, lambda d: (back(d), {})
        return layer
    return activation


def _relu_one_at_zero(x, cfg):
    on = x >= 0                                   # relu'(0) = 1
    return np.where(on, x, 0), lambda d: np.where(on, d, 0)


def _leaky_one_at_zero(x, cfg):
    slope, on = cfg["negative_slope"], x >= 0     # leaky'(0) = 1
    return np.where(on, x, slope * x), lambda d: np.where(on, d, slope * d)


def _leaky_float32_slope(x, cfg):
    slope, on = np.float32(cfg["negative_slope"]), x > 0   # TensorFlow's LeakyRelu
    return np.where(on, x, slope * x), lambda d: np.where(on, d, slope * d)


def _softplus_threshold(x, cfg):
    linear = x > 20                               # torch.nn.functional.softplus(threshold=20)
    out = np.where(linear, x, np.logaddexp(0, x))
    return out, lambda d: d * np.where(linear, 1.0, np.exp(x - out))


def _maxpool_variant(pad_value: float, last_wins: bool):
    def maxpool(x, cfg, s):
        (kh, kw), (ph, pw), (ho, wo), window = ind._pool_windows(cfg, x.shape)
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
        best = np.full(x.shape[:2] + (ho, wo), -np.inf)
        winner = np.zeros(best.shape, dtype=np.int64)
        for i in range(kh):
            for j in range(kw):
                values = xp[:, :, window(i, j)[0], window(i, j)[1]]
                better = values >= best if last_wins else values > best
                best = np.where(better, values, best)
                winner = np.where(better, i * kw + j, winner)

        def backward(dout):
            dxp = np.zeros(xp.shape)
            for i in range(kh):
                for j in range(kw):
                    rows, cols = window(i, j)
                    dxp[:, :, rows, cols] += np.where(winner == i * kw + j, dout, 0)
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


def _l1_sign_plus_at_tie(case, dtype="float64"):
    correct = ind.make_impl(case.config, dtype=dtype)
    lam = case.config["pair"]["lam"]["fc1.weight"]

    def impl(params, inputs):                     # np.where(d >= 0, 1, -1) as the sign
        loss, grads, outputs = correct(params, inputs)
        tie = params["A:fc1.weight"] == params["B:fc1.weight"]
        grads["A:fc1.weight"] = grads["A:fc1.weight"] + lam * tie
        grads["B:fc1.weight"] = grads["B:fc1.weight"] - lam * tie
        return loss, grads, outputs
    return impl


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


#: probe -> (patches of the independent implementation, or a planted-impl factory; words
#: diagnose must use)
PLANTED = {
    "probe-relu-at-zero": ({"activation": _activation_with("ReLU", _relu_one_at_zero)},
                           "relu'(0): implementation ~ 1 "),
    "probe-leaky-relu-at-zero": ({"activation": _activation_with("LeakyReLU",
                                                                 _leaky_one_at_zero)},
                                 "leaky_relu'(0): implementation ~ 1 "),
    "probe-leaky-relu-slope-float64": ({"activation": _activation_with(
        "LeakyReLU", _leaky_float32_slope)}, "negative_slope: implementation ~ 0.10000000149 "),
    "probe-softplus-above-20": ({"activation": _activation_with("Softplus",
                                                                _softplus_threshold)},
                                "softplus'(20.5): implementation ~ 1 "),
    "probe-maxpool-tie-after-conv": ({"maxpool": _maxpool_variant(-np.inf, last_wins=True)},
                                     "the LAST maximum"),
    "probe-maxpool-neg-inf-padding": ({"maxpool": _maxpool_variant(0.0, last_wins=False)},
                                      "padding counted as 0"),
    "probe-avgpool-padding-included": ({"avgpool": _avgpool_flipped},
                                       "count_include_pad=False"),
    "probe-avgpool-padding-excluded": ({"avgpool": _avgpool_flipped},
                                       "count_include_pad=True"),
    "probe-floor-mode-output-size": (_bottom_right_windows, "bottom-right"),
    "probe-grouped-conv-backward": (_swapped_group_backward, "other group's input channels"),
    "probe-l1-tie": (_l1_sign_plus_at_tie, "subgradient of |a - b| at 0 (in units of lam): "
                                           "implementation ~ 1 "),
    "probe-l2-lambda-float64": (_lam_float32, "lam: implementation ~ 0.10000000149 "),
    "probe-logits-1e4": ({"loss_function": _naive_cross_entropy}, "non-finite"),
}


@contextlib.contextmanager
def _planted(monkeypatch, case, dtype="float64"):
    """The planted implementation of ``case`` (the patches stay active while it runs)."""
    plant = PLANTED[case.name][0]
    if callable(plant):
        yield plant(case, dtype)
        return
    with monkeypatch.context() as patch:
        for name, replacement in plant.items():
            patch.setattr(ind, name, replacement)
        yield ind.make_impl(case.config, dtype=dtype)


def test_every_probe_has_a_planted_implementation_or_a_documented_reason():
    assert set(PLANTED) | {"probe-dilated-window-fits"} == set(PROBES)
    assert probes.PROBE_ALTERNATIVES["probe-dilated-window-fits"] == ()


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_convention_fails_and_is_named(monkeypatch, name):
    case = PROBES[name]
    with _planted(monkeypatch, case) as impl:
        report = compare_with_oracle(impl, case)
        loss, grads, _ = impl(dict(case.params), dict(case.inputs))
    assert report.verdict == "fail", report
    message = probes.diagnose(case, loss, grads)
    assert message is not None and PLANTED[name][1] in message, message
    assert message.startswith(case.config["convention"]["name"]) or "implementation ~" in message
    assert case.config["convention"]["refimpl_rule"] in message


#: Probes whose convention float32 can resolve (the other three differ by ~1e-8 relative: a
#: float64 probe, documented in docs/conventions.md).
FLOAT32_RESOLVED = sorted(set(PLANTED) - {"probe-leaky-relu-slope-float64",
                                          "probe-l2-lambda-float64", "probe-softplus-above-20"})


@pytest.mark.parametrize("name", FLOAT32_RESOLVED)
def test_planted_convention_fails_in_float32(monkeypatch, name):
    case = PROBES[name]
    with _planted(monkeypatch, case, "float32") as impl:
        report = compare_with_oracle(impl, case, dtype="float32")
        loss, grads, _ = impl(dict(case.params), dict(case.inputs))
    assert report.verdict == "fail", report
    message = probes.diagnose(case, loss, grads)
    assert message is not None and PLANTED[name][1] in message, message


@pytest.mark.parametrize("dtype", ["float64", "float32", "tf32"])
@pytest.mark.parametrize("name", sorted(PROBES))
def test_refimpl_rule_passes_every_probe(name, dtype):
    case = PROBES[name]
    report = compare_with_oracle(ind.make_impl(case.config, dtype=dtype), case, dtype=dtype)
    assert report.verdict == "pass", report
    loss, grads, _ = ind.make_impl(case.config, dtype=dtype)(dict(case.params),
                                                           dict(case.inputs))
    assert probes.diagnose(case, loss, grads) is None


def test_a_refused_exact_dilated_fit_is_an_error_not_a_pass():
    case = PROBES["probe-dilated-window-fits"]

    def refuses(params, inputs):
        raise ValueError("window larger than the input")   # mygrad's behaviour
    with pytest.raises(ValueError, match="window larger"):
        compare_with_oracle(refuses, case)


def test_diagnose_names_nothing_it_does_not_recognise():
    case = PROBES["probe-relu-at-zero"]
    loss, grads = case.loss_and_grads(case.params)
    rng = np.random.default_rng(0)
    scrambled = {key: rng.standard_normal(value.shape) for key, value in grads.items()}
    assert probes.diagnose(case, loss, scrambled) is None
    assert probes.diagnose(case, loss, {"fc1.weight": grads["fc1.weight"]}) is None
    wrong_shape = {**grads, "fc1.bias": np.zeros(5)}
    assert probes.diagnose(case, loss, wrong_shape) is None
    assert probes.diagnose(case, "not a number", scrambled) is None
    assert probes.diagnose(case, loss, {**grads, "fc1.bias": "text"}) is None
    assert probes.diagnose(case, float("nan"), grads) is None     # only the 1e4 probe names it
    assert probes.diagnose(get_case("mlp-tanh-ce"), loss, grads) is None
    other = PROBES["probe-dilated-window-fits"]
    assert probes.diagnose(other, *other.loss_and_grads(other.params)) is None


def test_diagnose_reads_an_intermediate_kink_derivative():
    # the split rule leaky'(0) = (1 + slope) / 2 lies on the same family: its value is read
    case = PROBES["probe-leaky-relu-at-zero"]
    ours = case.loss_and_grads(case.params)[1]
    theirs = probes.PROBE_ALTERNATIVES[case.name][0].grads(case)
    half = {key: ours[key] + (0.505 - 0.01) / 0.99 * (theirs[key] - ours[key]) for key in ours}
    message = probes.diagnose(case, 0.0, half)
    assert "leaky_relu'(0): implementation ~ 0.505 " in message


def test_probe_configs_name_their_convention():
    for name, case in PROBES.items():
        assert case.kind == "probe" and name.startswith("probe-")
        convention = case.config["convention"]
        assert set(convention) == {"name", "refimpl_rule", "isolates", "on_kink"}
        assert isinstance(convention["on_kink"], bool)
        assert all(isinstance(convention[key], str) and convention[key]
                   for key in ("name", "refimpl_rule", "isolates"))
        assert ("model" in case.config) != ("pair" in case.config)


def _tf32(array):
    """Round to TF32's 10-bit mantissa (round to nearest)."""
    bits = np.asarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x1000) & ~np.uint32(0x1FFF)).view(np.float32).astype(np.float64)


def test_exact_arrays_are_exact_in_float32_and_tf32():
    kinked = [case for case in PROBES.values() if case.config["exact"]]
    assert {case.name for case in kinked} == {"probe-relu-at-zero", "probe-leaky-relu-at-zero",
                                              "probe-maxpool-tie-after-conv", "probe-l1-tie"}
    for case in kinked:
        for name in case.config["exact"]:
            array = {**case.params, **case.inputs}[name]
            assert np.array_equal(array.astype(np.float32).astype(np.float64), array), name
            assert np.array_equal(_tf32(array), array), name


@pytest.mark.parametrize("name", ["probe-relu-at-zero", "probe-leaky-relu-at-zero",
                                  "probe-maxpool-tie-after-conv", "probe-l1-tie"])
def test_the_kink_would_make_float32_inconclusive_without_the_exact_declaration(name):
    # perturbing the kink's arrays crosses it: the floor would swallow the tensor
    case = PROBES[name]
    declared = case_floors(case, "float32")
    undeclared = case_floors(
        type(case)(**{**case.__dict__, "config": {**case.config, "exact": []}}), "float32")
    loss, grads = case.loss_and_grads(case.params)
    crossed = [key for key, floor in undeclared.items()
               if key[0] == "gradient" and floor >= np.max(np.abs(grads[key[1]])) / 3]
    assert crossed, undeclared
    assert all(declared[key] < undeclared[key] for key in crossed)
    report = compare_with_oracle(ind.make_impl(case.config, dtype="float32"), case,
                                 dtype="float32")
    assert report.verdict == "pass"


def test_the_kinks_are_where_the_probes_say():
    relu = PROBES["probe-relu-at-zero"]
    z = relu.inputs["x"] @ relu.params["fc1.weight"].T + relu.params["fc1.bias"]
    assert np.all(z[:, 0] == 0) and np.all(z[:, 1] > 0)
    tie = PROBES["probe-maxpool-tie-after-conv"]
    x, w = tie.inputs["x"][0, 0, 0], tie.params["conv.weight"][0, 0, 0]
    assert x[0:2] @ w == x[1:3] @ w and not np.array_equal(x[0:2], x[1:3])
    pad = PROBES["probe-maxpool-neg-inf-padding"]
    assert np.all(pad.params["conv.weight"] * pad.inputs["x"] + pad.params["conv.bias"] < 0)
    l1 = PROBES["probe-l1-tie"]
    equal = l1.params["A:fc1.weight"] == l1.params["B:fc1.weight"]
    assert equal.sum() == 2
    softplus = PROBES["probe-softplus-above-20"]
    z = softplus.inputs["x"] @ softplus.params["fc1.weight"].T + softplus.params["fc1.bias"]
    assert np.all(z == 20.5)
    logits = PROBES["probe-logits-1e4"]
    out = logits.outputs(logits.params)["out"]
    assert np.max(np.abs(out)) == 10000.0
