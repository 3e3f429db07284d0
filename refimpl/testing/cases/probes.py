"""Convention probes: built-in cases that each isolate one documented convention.

A probe is an ordinary case (kind "probe", name ``probe-<convention>``) of an existing layer
type or tied pair, placed where refimpl's convention and its plausible alternatives give
different gradients: a ReLU pre-activation of exactly 0, two tied maxima, softplus at 20.5, a
padded average pool, an L1 pair with ``a == b``, logits of 1e4, ... Its config is the usual
model / pair config plus ``config["convention"] = {"name", "refimpl_rule", "isolates"}``.

Kinks are hit exactly in every dtype: the arrays that build the kink (``config["exact"]``)
hold small dyadic rationals, exactly representable in float32 and TF32, whose sums and
products are exact in any order; the resolution floor does not perturb them
(:mod:`refimpl.testing.resolution`, "Exact points").

Each probe carries the other rules it tells apart (:data:`PROBE_ALTERNATIVES`): families of
values of one quantity (a derivative at a kink, a tie's share, a subgradient, a
hyper-parameter) with their documented members, and single rules, each a documented
convention or a named bug. :func:`alternatives` computes refimpl's reference under each rule
(the probe's model with that one rule changed: loss, gradients and outputs); a conformance run
grants "convention differs" only to an implementation whose *whole* result matches one
documented alternative's reference by the ordinary comparison rule
(:func:`refimpl.testing.conform.conform_case`). A loss of precision (a hyper-parameter
rounded to float32 in a float64 run), a non-finite value, a bug and a value outside a family's
members are never conventions.

:func:`diagnose` (:func:`guess`) names what a failing implementation's gradients appear to do,
for the message only: a least-squares fit of ``g - r ~ t (a - r)`` over the gradient entries
the alternative changes, read as a value of the family (``ours + t (theirs - ours)``) or as a
single rule.

``config["convention"]["resolved_in"]`` lists the dtypes in which every alternative differs
from refimpl's rule by more than the comparison's limit: the float64-hyper-parameter probes and
the softplus probe differ by ~1e-8 relative, below float32's tolerance, so in float32 and TF32
no implementation can show which rule it follows (a conformance run calls them inconclusive
there, never pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ...nn import (
    MSE,
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    Identity,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
    Softplus,
    Tanh,
)
from ...nn.conv import conv2d_backward, conv2d_forward
from ...tying import TiedPair
from . import Case
from .mlp import model_case_at
from .tied import tied_case

__all__ = ["cases", "alternatives", "resolved_in", "unresolved", "guess", "diagnose", "Family",
           "Rule", "Alternative", "Guess", "MATCH_RESIDUAL", "MATCH_T", "FAMILY_WINDOW",
           "PROBE_ALTERNATIVES", "ALL_DTYPES"]

#: An alternative matches when the fit's residual is below this fraction of ``|a - r|``.
MATCH_RESIDUAL = 0.05

#: ... and (for a single rule, not a family) ``|t - 1|`` is below this.
MATCH_T = 0.05

#: A family's fit names a value only when ``|t|`` exceeds this (below it the gradients agree
#: with refimpl's along the family: what failed is elsewhere); the value is a documented member
#: when within this fraction of ``|theirs - ours|`` of one (members can be a hundredth of the
#: span apart: leaky_relu'(0) = 0.01 next to mygrad's 0).
FAMILY_WINDOW = 1e-3

Grads = dict[str, np.ndarray]
#: A reference result ``(loss, grads, outputs)``, as :func:`refimpl.testing.compare_with_oracle`
#: compares it.
Reference = tuple[float, Grads, dict[str, np.ndarray]]


#: ``evaluate(params, inputs) -> (loss, grads, outputs)``: a reference at any point.
Evaluate = Callable[[Grads, dict[str, np.ndarray]], Reference]


def _refimpl(case: Case) -> Reference:
    """refimpl's own reference at the probe: loss, gradients and outputs."""
    loss, grads = case.loss_and_grads(case.params)
    return loss, grads, case.outputs(case.params)


def _under(case: Case, evaluate: Evaluate, config: dict[str, Any] | None = None) -> Case:
    """The probe under another rule: the same point, data and exact arrays, with
    ``evaluate`` as its reference (and ``config`` when the rule is another model's, so that
    the resolution floor's loss rounding runs through that model)."""
    return dataclasses.replace(
        case, config=case.config if config is None else config,
        loss_and_grads=lambda p: evaluate(p, case.inputs)[:2],
        outputs=lambda p: evaluate(p, case.inputs)[2], evaluate=evaluate)


def _with_model(case: Case, model: Sequential, crop: bool = False) -> Case:
    """The probe with its model replaced by ``model`` (``crop``: reading the input without its
    first row and column)."""
    def evaluate(p: Grads, data: dict[str, np.ndarray]) -> Reference:
        x = data["x"][:, :, 1:, 1:] if crop else data["x"]
        return (*model.loss_and_grads(p, x, data["y"]), {"out": model.forward(p, x)})

    return _under(case, evaluate, {**case.config, "model": model.config()})


def _with_grads(case: Case, grads_at: Callable[[Grads, dict[str, np.ndarray], Grads], Grads]
                ) -> Case:
    """A rule of the backward pass alone: refimpl's loss and outputs, the gradients
    ``grads_at(params, inputs, refimpl's gradients)``."""
    def evaluate(p: Grads, data: dict[str, np.ndarray]) -> Reference:
        loss, grads, outputs = case.evaluate(p, data)
        return loss, grads_at(p, data, grads), outputs

    return _under(case, evaluate)


def _model(case: Case) -> Sequential:
    return Sequential.from_config(case.config["model"])


def _replaced(case: Case, index: int, *layers: Any, keep: bool = False) -> Sequential:
    """The case's model with ``layers[index]`` replaced by ``layers`` (``keep``: inserted
    before it)."""
    model = _model(case)
    new = list(model.layers)
    new[index:index if keep else index + 1] = layers
    return Sequential(new, loss=model.loss_spec, share=model.share)


def _probe(name: str, model: Sequential, params: Grads, x: np.ndarray, y: np.ndarray,
           convention: dict[str, Any], exact: list[str]) -> Case:
    return model_case_at(name, "probe", model, params, x, y,
                         {"convention": convention, "exact": exact})


#: Every dtype a conformance run knows, in the order ``resolved_in`` lists them.
ALL_DTYPES = ("float64", "float32", "tf32")
#: The dtypes of a probe whose alternatives differ from refimpl's rule by ~1e-8 relative or
#: less: only float64's tolerance (rtol 1e-10) tells them apart.
FLOAT64_ONLY = ("float64",)


def _convention(name: str, rule: str, isolates: str, on_kink: bool = False,
                resolved_in: tuple[str, ...] = ALL_DTYPES) -> dict[str, Any]:
    """A probe's ``config["convention"]``; ``on_kink``: the point sits exactly on a kink of
    the loss, so one-sided (real-step) differences disagree there by construction;
    ``resolved_in``: the dtypes in which refimpl's rule and every alternative of
    :data:`PROBE_ALTERNATIVES` differ by more than the comparison's limit (elsewhere no
    implementation can show which rule it follows: the probe is inconclusive there)."""
    return {"name": name, "refimpl_rule": rule, "isolates": isolates, "on_kink": on_kink,
            "resolved_in": list(resolved_in)}


def _targets(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


# --- kinks of activations --------------------------------------------------------------------

#: A first layer whose unit 0 has the pre-activation exactly 0 on every example (w = [a, -a],
#: x rows [c, c], bias 0) and unit 1 a positive one; dyadic, so exact in every dtype.
_KINK_X = np.array([[1.0, 1.0], [0.5, 0.5], [0.75, 0.75]])
_KINK_WEIGHT = np.array([[0.5, -0.5], [0.25, 0.5]])


def _kink_probe(name: str, activation: Any, bias: tuple[float, float], convention: dict,
                seed: int, at_kink: bool = True) -> Case:
    model = Sequential([Dense("fc1", 2, 2), activation, Dense("fc2", 2, 2)], loss=MSE())
    params = model.init(seed)
    params["fc1.weight"] = _KINK_WEIGHT.copy()
    params["fc1.bias"] = np.array(bias)
    rng = np.random.default_rng(seed)
    return _probe(name, model, params, _KINK_X.copy(), _targets(rng, (3, 2)), convention,
                  ["x", "fc1.weight", "fc1.bias"] if at_kink else [])


def _identity_at_kink(case: Case) -> Case:
    """The activation's derivative at the kink taken as 1: at a point where no pre-activation
    is negative, the same model with the activation replaced by the identity (the forward
    values are the same: the activation is the identity on [0, inf))."""
    return _with_model(case, _replaced(case, 1, Identity()))


def _slope_as_float32(case: Case) -> Case:
    slope = case.config["model"]["layers"][1]["negative_slope"]
    return _with_model(case, _replaced(case, 1, LeakyReLU(float(np.float32(slope)))))


# --- pooling ---------------------------------------------------------------------------------

def _maxpool_tie_probe() -> Case:
    # conv (1, 2) on [0.75, 0.25, 0.75] with w = [0.5, 0.5]: both outputs 0.5 + b, tied; the
    # two windows' patches [0.75, 0.25] and [0.25, 0.75] differ, so the conv weight gradient
    # shows which maximum received the gradient.
    model = Sequential([Conv2D("conv", 1, 1, kernel_size=(1, 2)), MaxPool2D((1, 2)), Flatten(),
                        Dense("fc", 1, 2)], loss=MSE())
    params = model.init(300)
    params["conv.weight"] = np.array([[[[0.5, 0.5]]]])
    params["conv.bias"] = np.array([0.25])
    x = np.array([[[[0.75, 0.25, 0.75]]]])
    return _probe("probe-maxpool-tie-after-conv", model, params, x,
                  _targets(np.random.default_rng(300), (1, 2)),
                  _convention("max-pool ties", "the first maximum in row-major scan order of "
                              "the window gets the whole gradient (PyTorch)",
                              "two equal convolution outputs in one pooling window, from "
                              "different input patches", on_kink=True),
                  ["x", "conv.weight", "conv.bias"])


def _tie_grads(case: Case, to_first: float, to_last: float) -> Case:
    """The tie's upstream gradient g split ``to_first * g`` / ``to_last * g`` between the two
    tied maxima (refimpl: 1 / 0); the forward pass and the layers after the pool are
    unchanged."""
    def grads_at(p: Grads, data: dict[str, np.ndarray], reference: Grads) -> Grads:
        upstream = reference["conv.bias"][0]                  # g: the first maximum got it all
        x = data["x"][0, 0, 0]
        patch_first, patch_last = x[0:2], x[1:3]
        grads = dict(reference)
        grads["conv.weight"] = (upstream * (to_first * patch_first + to_last * patch_last)
                                ).reshape(1, 1, 1, 2)
        grads["conv.bias"] = np.array([upstream * (to_first + to_last)])
        return grads

    return _with_grads(case, grads_at)


def _avgpool_probe(include: bool) -> Case:
    # 4x4 -> conv 2 -> 3x3 -> average 3, stride 2, padding 1 -> 2x2: every window holds
    # padded positions (5 of 9 in the corner), so the divisor decides the gradient.
    model = Sequential([Conv2D("conv", 1, 2, kernel_size=2),
                        AvgPool2D(3, stride=2, padding=1, count_include_pad=include), Flatten(),
                        Dense("fc", 8, 2)], loss=MSE())
    seed = 301 if include else 302
    rng = np.random.default_rng(seed)
    mode = f"count_include_pad={include}"
    rule = ("divisor kH*kW, padded zeros counted (PyTorch's default)" if include else
            "divisor = the number of unpadded inputs in the window")
    return _probe(f"probe-avgpool-padding-{'included' if include else 'excluded'}", model,
                  model.init(seed), rng.standard_normal((2, 1, 4, 4)), _targets(rng, (2, 2)),
                  _convention(f"average pooling with padding, {mode}", rule,
                              "an average pool whose windows all overlap the padding"), [])


def _flip_count_include_pad(case: Case) -> Case:
    layer = case.config["model"]["layers"][1]
    return _with_model(case, _replaced(case, 1, AvgPool2D(layer["kernel_size"], layer["stride"],
                                                          layer["padding"],
                                                          not layer["count_include_pad"])))


def _neg_inf_padding_probe() -> Case:
    # 1x1 conv 0.5 x - 1 on x in [0, 1): every value negative; max 2, stride 2, padding 1 on
    # 2x2: each window holds one real value and three padded positions.
    model = Sequential([Conv2D("conv", 1, 1, kernel_size=1), MaxPool2D(2, stride=2, padding=1),
                        Flatten(), Dense("fc", 4, 2)], loss=MSE())
    params = model.init(303)
    params["conv.weight"] = np.array([[[[0.5]]]])
    params["conv.bias"] = np.array([-1.0])
    rng = np.random.default_rng(303)
    return _probe("probe-maxpool-neg-inf-padding", model, params,
                  rng.uniform(0.0, 1.0, (2, 1, 2, 2)), _targets(rng, (2, 2)),
                  _convention("max-pool padding", "padding counts as -inf: never selected",
                              "max pooling with padding over all-negative values"), [])


def _zero_padding(case: Case) -> Case:
    """Padding counted as 0: with one real value per window, max(value, 0) = ReLU(value)."""
    return _with_model(case, _replaced(case, 1, ReLU(), keep=True))


# --- convolution geometry --------------------------------------------------------------------

def _floor_mode_probe() -> Case:
    # 5x5, kernel 2, stride 2: floor((5 - 2) / 2) + 1 = 2 windows per axis; row 4 and
    # column 4 are read by none, and hold large values that would show if read.
    model = Sequential([Conv2D("conv", 1, 2, kernel_size=2, stride=2), Tanh(), Flatten(),
                        Dense("fc", 8, 2)], loss=MSE())
    rng = np.random.default_rng(304)
    x = rng.standard_normal((2, 1, 5, 5))
    x[:, :, 4, :] = 4.0
    x[:, :, :, 4] = 4.0
    return _probe("probe-floor-mode-output-size", model, model.init(304), x,
                  _targets(rng, (2, 2)),
                  _convention("floor-mode output size",
                              "Ho = floor((H + 2p - d(k-1) - 1) / s) + 1 windows from the "
                              "top-left; trailing rows no window reads get no gradient",
                              "a strided convolution that leaves the last row and column "
                              "unread"), [])


def _bottom_right_windows(case: Case) -> Case:
    """Windows aligned to the bottom-right (the first row/column skipped, the last read)."""
    return _with_model(case, _model(case), crop=True)


def _dilated_fit_probe() -> Case:
    model = Sequential([Conv2D("conv", 1, 2, kernel_size=3, dilation=2), Tanh(), Flatten(),
                        Dense("fc", 2, 2)], loss=MSE())
    rng = np.random.default_rng(305)
    return _probe("probe-dilated-window-fits", model, model.init(305),
                  rng.standard_normal((2, 1, 5, 5)), _targets(rng, (2, 2)),
                  _convention("dilated window that exactly fits",
                              "a window of extent d(k-1)+1 equal to the padded input is "
                              "accepted: one output position",
                              "kernel 3, dilation 2 (extent 5) on a 5x5 input"), [])


def _grouped_probe() -> Case:
    model = Sequential([Conv2D("conv", 4, 4, kernel_size=2, groups=2), Flatten(),
                        Dense("fc", 16, 2)], loss=MSE())
    rng = np.random.default_rng(306)
    return _probe("probe-grouped-conv-backward", model, model.init(306),
                  rng.standard_normal((2, 4, 3, 3)), _targets(rng, (2, 2)),
                  _convention("grouped convolution", "group g's filters read only input "
                              "channels g*C/G .. (g+1)*C/G - 1, forward and backward",
                              "a 2-group convolution whose groups see different inputs"), [])


def _swapped_groups(case: Case) -> Case:
    """The weight gradient of each group taken from the other group's input channels (the
    forward pass correct)."""
    model = _model(case)

    def grads_at(p: Grads, data: dict[str, np.ndarray], reference: Grads) -> Grads:
        x, y = data["x"], data["y"]
        conv_out, _ = conv2d_forward(x, p["conv.weight"], p["conv.bias"], groups=2)
        out = model.forward(p, x)
        dout = 2.0 * (out - y) / out.size                                     # (N, K)
        dconv = (dout @ p["fc.weight"]).reshape(conv_out.shape)               # (N, F, Ho, Wo)
        swapped = np.concatenate([x[:, 2:], x[:, :2]], axis=1)
        _, cache = conv2d_forward(swapped, p["conv.weight"], p["conv.bias"], groups=2)
        return {**reference, "conv.weight": conv2d_backward(dconv, cache)[1]}

    return _with_grads(case, grads_at)


# --- losses and penalties --------------------------------------------------------------------

def _softplus_probe() -> Case:
    # w = [0.5, 0.5] on rows [c, -c], bias 20.5: the pre-activation is 20.5 on every example,
    # where PyTorch's default threshold (20) switches softplus to the identity.
    model = Sequential([Dense("fc1", 2, 1), Softplus(), Dense("fc2", 1, 2)], loss=MSE())
    params = model.init(307)
    params["fc1.weight"] = np.array([[0.5, 0.5]])
    params["fc1.bias"] = np.array([20.5])
    rng = np.random.default_rng(307)
    x = np.array([[1.0, -1.0], [0.5, -0.5], [2.0, -2.0]])
    return _probe("probe-softplus-above-20", model, params, x, _targets(rng, (3, 2)),
                  _convention("softplus above 20", "log(1 + exp(x)) exactly: softplus'(20.5) "
                              "= sigmoid(20.5) = 1 - 1.25e-9 (no linear threshold)",
                              "softplus at 20.5, between PyTorch's threshold 20 and the "
                              "float64 saturation near 37", resolved_in=FLOAT64_ONLY), [])


def _logits_probe() -> Case:
    model = Sequential([Dense("fc", 2, 3)], loss=SoftmaxCrossEntropy())
    params = {"fc.weight": np.array([[10000.0, 0.0], [0.0, 10000.0], [-10000.0, 0.0]]),
              "fc.bias": np.array([0.0, 0.0, 0.5])}
    x = np.array([[1.0, 0.5], [0.5, 1.0], [-0.25, 0.75]])
    y = np.array([2, 1, 0], dtype=np.int64)
    return _probe("probe-logits-1e4", model, params, x, y,
                  _convention("cross-entropy at logits of 1e4", "log-sum-exp with the max "
                              "subtracted: finite loss and gradients",
                              "softmax cross-entropy on logits of size 1e4"), [])


def _pair_probe(name: str, penalty: str, lam: float, ties: bool, convention: dict) -> Case:
    model_a = Sequential([Dense("fc1", 2, 2), Tanh(), Dense("fc2", 2, 2)], loss=MSE())
    pair = TiedPair(model_a, model_a, {"fc1.weight": "fc1.weight"}, lam=lam, penalty=penalty)
    params_a, params_b = pair.init(308)
    params_a["fc1.weight"] = np.array([[0.5, -0.25], [0.75, 0.125]])
    # ties: entries (0, 0) and (1, 1) equal (the L1 kink); the others 0.25 or more apart.
    params_b["fc1.weight"] = np.array([[0.5, 0.25], [0.25, 0.125]]) if ties else \
        np.array([[0.25, 0.25], [0.25, -0.5]])
    rng = np.random.default_rng(308)
    inputs = {"xa": rng.standard_normal((3, 2)), "ya": _targets(rng, (3, 2)),
              "xb": rng.standard_normal((2, 2)), "yb": _targets(rng, (2, 2))}
    config = {"pair": pair.config(), "input_shape_a": [3, 2], "input_shape_b": [2, 2],
              "params": "keys 'A:<name>' for model_a, 'B:<name>' for model_b", "target_b": "yb",
              "resolved_share": {"model_a": {}, "model_b": {}}, "convention": convention,
              "exact": ["A:fc1.weight", "B:fc1.weight"] if ties else []}
    return tied_case(name, pair, pair.join(params_a, params_b), inputs, config, kind="probe")


def _l1_sign_at_tie(case: Case) -> Case:
    """sign(0) = +1: at a tie, +lam to A's entry and -lam to B's (|0| = 0: the loss and the
    outputs are unchanged)."""
    lam = case.config["pair"]["lam"]["fc1.weight"]

    def grads_at(p: Grads, data: dict[str, np.ndarray], reference: Grads) -> Grads:
        tie = p["A:fc1.weight"] == p["B:fc1.weight"]
        return {**reference, "A:fc1.weight": reference["A:fc1.weight"] + lam * tie,
                "B:fc1.weight": reference["B:fc1.weight"] - lam * tie}

    return _with_grads(case, grads_at)


def _lam_as_float32(case: Case) -> Case:
    config = dict(case.config["pair"])
    config["lam"] = {key: float(np.float32(value)) for key, value in config["lam"].items()}
    pair = TiedPair.from_config(config)

    def evaluate(p: Grads, data: dict[str, np.ndarray]) -> Reference:
        target_b = data["yb"] if "yb" in data else data["xb"]
        loss, grads = pair.joined_loss_and_grads(p, (data["xa"], data["ya"]),
                                                 (data["xb"], target_b))
        return loss, grads, case.evaluate(p, data)[2]     # lam does not enter the forward pass

    return _under(case, evaluate, {**case.config, "pair": pair.config()})


# --- the catalogue ---------------------------------------------------------------------------

def cases() -> list[Case]:
    """The probe cases, in catalogue order."""
    return [
        _kink_probe("probe-relu-at-zero", ReLU(), (0.0, 0.125),
                    _convention("relu'(0)", "relu'(0) = 0 (PyTorch: the gradient passes only "
                                "where x > 0)", "a ReLU pre-activation of exactly 0",
                                on_kink=True), 309),
        _kink_probe("probe-leaky-relu-at-zero", LeakyReLU(), (0.0, 0.125),
                    _convention("leaky_relu'(0)", "leaky_relu'(0) = negative_slope = 0.01 "
                                "(PyTorch)", "a leaky ReLU pre-activation of exactly 0",
                                on_kink=True), 310),
        _kink_probe("probe-leaky-relu-slope-float64", LeakyReLU(0.1), (-0.5, 0.125),
                    _convention("negative_slope in float64", "the slope 0.1 used as the "
                                "float64 nearest 0.1", "a leaky ReLU with slope 0.1 (not exact "
                                "in float32) on a negative pre-activation",
                                resolved_in=FLOAT64_ONLY), 311,
                    at_kink=False),
        _softplus_probe(),
        _maxpool_tie_probe(),
        _neg_inf_padding_probe(),
        _avgpool_probe(include=True),
        _avgpool_probe(include=False),
        _floor_mode_probe(),
        _dilated_fit_probe(),
        _grouped_probe(),
        _pair_probe("probe-l1-tie", "l1", 0.25, True,
                    _convention("L1 subgradient at a tie", "sign(0) = 0: no penalty gradient "
                                "where a == b (torch.sign)", "a soft L1 tie with two entries "
                                "exactly equal (a == b)", on_kink=True)),
        _pair_probe("probe-l2-lambda-float64", "l2", 0.1, False,
                    _convention("lambda in float64", "the strength 0.1 used as the float64 "
                                "nearest 0.1", "a soft L2 tie with lam = 0.1 (not exact in "
                                "float32)", resolved_in=FLOAT64_ONLY)),
        _logits_probe(),
    ]


# --- the alternatives ------------------------------------------------------------------------

class Family(NamedTuple):
    """A quantity a probe sets (a derivative at a kink, a tie's share, a hyper-parameter) and
    the values of it that are documented conventions.

    refimpl computes the probe with the quantity at ``ours`` (its own rule) and at ``theirs``
    (``at_theirs(case)``: the probe under that one rule changed). Near the probe's point every
    tensor the quantity touches is affine in it (a derivative chosen at a kink, or a tie's
    share, multiplies the upstream gradient at the kinked entries only; a subgradient enters
    the penalty's gradient linearly; the forward pass does not depend on them), so the
    reference at any value ``v`` is ``r + t (a - r)`` with ``t = (v - ours) / (theirs -
    ours)``, exact up to one rounding. Only ``members`` (refimpl's value among them) are
    conventions; any other value, even one that fits exactly, is not.
    """

    quantity: str                    # e.g. "relu'(0)"
    ours: float
    theirs: float
    at_theirs: Callable[[Case], Case]
    members: dict[float, str]        # documented value -> what it is ("the mean of both sides")
    outside: str                     # what any other value is ("not a documented value ...")


class Rule(NamedTuple):
    """One other rule at a probe: what it is, the probe under it (``under(case)``, a case with
    refimpl's reference of that rule), and whether it is a documented convention (else a bug
    or a loss of precision that :func:`diagnose` names)."""

    describes: str
    under: Callable[[Case], Case]
    convention: bool


@dataclass(frozen=True)
class Alternative:
    """A rule at a probe, computed: :func:`alternatives`' answer.

    Attributes
    ----------
    describes : str
        e.g. "relu'(0) = 0.5 (the mean of both sides)".
    convention : bool
        A documented convention (else a bug or a loss of precision).
    case : refimpl.testing.cases.Case
        The probe under this rule: the same point, data and exact arrays, its reference (and
        ``evaluate``, so that the resolution floors of this reference can be derived as for
        any case) refimpl's with the one rule changed.
    reference : tuple
        ``(loss, grads, outputs)`` of ``case`` at the probe's point.
    """

    describes: str
    convention: bool
    case: Case
    reference: Reference


def _computed(describes: str, convention: bool, case: Case) -> Alternative:
    return Alternative(describes, convention, case, case.evaluate(case.params, case.inputs))


def _value(value: float, family: Family) -> str:
    """``value`` with enough digits to show the gap between the family's two rules, no more
    (a float32 implementation's rounding would show as noise)."""
    ours, theirs = family.ours, family.theirs
    gap = abs(theirs - ours) / max(abs(theirs), abs(ours))
    if abs(value) < FAMILY_WINDOW * abs(theirs - ours):
        value = 0.0                  # 0 up to the fit's rounding, not -1.7e-17
    return f"{value:.{max(4, int(np.ceil(-np.log10(gap))) + 3)}g}"


_ONE_SIDED = "a one-sided derivative or their mean"
#: The documented values of a derivative at a kink: the one-sided derivatives and their mean.
_SIGMOID_20_5 = float(1.0 / (1.0 + np.exp(-20.5)))
_TIE_SHARE = "max-pool tie, the last maximum's share"
_PRECISION = "the value rounded to float32: a loss of precision, never a convention"

#: Per probe, the other rules it tells apart from refimpl's: families of values (their
#: documented members) and single rules (a documented convention or a named bug).
PROBE_ALTERNATIVES: dict[str, tuple[Family | Rule, ...]] = {
    "probe-relu-at-zero": (Family(
        "relu'(0)", 0.0, 1.0, _identity_at_kink,
        {0.0: "the negative side's derivative, PyTorch", 0.5: "the mean of both sides",
         1.0: "the positive side's derivative"},
        f"not a documented value: {_ONE_SIDED}, 0, 0.5 or 1"),),
    "probe-leaky-relu-at-zero": (Family(
        "leaky_relu'(0)", 0.01, 1.0, _identity_at_kink,
        {0.01: "negative_slope, the negative side's slope, PyTorch",
         0.505: "the mean of both sides", 1.0: "the positive side's slope, JAX"},
        f"not a documented value: {_ONE_SIDED}, 0.01, 0.505 or 1"),),
    "probe-leaky-relu-slope-float64": (Family(
        "negative_slope", 0.1, float(np.float32(0.1)), _slope_as_float32,
        {0.1: "the float64 nearest 0.1"}, _PRECISION),),
    "probe-softplus-above-20": (Family(
        "softplus'(20.5)", _SIGMOID_20_5, 1.0, _identity_at_kink,
        {_SIGMOID_20_5: "sigmoid(20.5), log(1 + exp(x)) exactly",
         1.0: "PyTorch's threshold=20: softplus = x above 20"},
        "neither sigmoid(20.5) nor 1 (PyTorch's threshold)"),),
    "probe-maxpool-tie-after-conv": (
        Family(_TIE_SHARE, 0.0, 1.0, lambda case: _tie_grads(case, 0.0, 1.0),
               {0.0: "the first maximum gets it all, PyTorch", 0.5: "split evenly",
                1.0: "the last maximum gets it all"},
               "not a documented split: 0 (the first maximum), 0.5 (even) or 1 (the last)"),
        Rule("every tied maximum gets the whole gradient (counted twice: not a subgradient)",
             lambda case: _tie_grads(case, 1.0, 1.0), False),
    ),
    "probe-maxpool-neg-inf-padding": (Rule(
        "padding counted as 0 (it wins over negative values and takes their gradient; "
        "zero padding before the pool)", _zero_padding, True),),
    "probe-avgpool-padding-included": (Rule(
        "count_include_pad=False (divisor = unpadded inputs only)", _flip_count_include_pad,
        True),),
    "probe-avgpool-padding-excluded": (Rule(
        "count_include_pad=True (padded zeros counted in the divisor)",
        _flip_count_include_pad, True),),
    "probe-floor-mode-output-size": (Rule(
        "windows aligned to the bottom-right: the unread last row/column read, the first "
        "skipped", _bottom_right_windows, False),),
    "probe-dilated-window-fits": (),
    "probe-grouped-conv-backward": (Rule(
        "each group's weight gradient computed from the other group's input channels",
        _swapped_groups, False),),
    "probe-l1-tie": (Family(
        "subgradient of |a - b| at 0 (in units of lam)", 0.0, 1.0, _l1_sign_at_tie,
        {0.0: "sign(0) = 0, torch.sign", 1.0: "sign(0) = +1, JAX's jnp.abs",
         -1.0: "sign(0) = -1"},
        "not a documented value: sign(0) is 0, +1 or -1"),),
    "probe-l2-lambda-float64": (Family(
        "lam", 0.1, float(np.float32(0.1)), _lam_as_float32, {0.1: "the float64 nearest 0.1"},
        _PRECISION),),
    "probe-logits-1e4": (),
}


def _interpolated(case: Case, theirs: Case, t: float) -> Case:
    """The probe at ``t`` on the line from refimpl's rule (``case``, t = 0) to ``theirs``
    (t = 1): every tensor ``r + t (a - r)`` at any point (``t`` 1: ``theirs`` exactly)."""
    if t == 1.0:
        return theirs

    def move(r: Any, a: Any) -> Any:
        return np.asarray(r) + t * (np.asarray(a) - np.asarray(r))

    def evaluate(p: Grads, data: dict[str, np.ndarray]) -> Reference:
        (loss, grads, outputs), other = case.evaluate(p, data), theirs.evaluate(p, data)
        return (float(move(loss, other[0])), {key: move(value, other[1][key])
                                              for key, value in grads.items()},
                {key: move(value, other[2][key]) for key, value in outputs.items()})

    return _under(case, evaluate, theirs.config)


def _member(family: Family, value: float) -> str:
    return f"{family.quantity} = {_value(value, family)} ({family.members[value]})"


def alternatives(case: Any) -> list[Alternative]:
    """Every other rule a probe tells apart from refimpl's, with refimpl's reference under it.

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        A probe (any other case: an empty list).

    Returns
    -------
    list of Alternative
        Each documented member of a family other than refimpl's value, each single rule,
        and a family's computed value when it is not a member (the float32 rounding of a
        hyper-parameter); ``convention`` is True only for the documented conventions;
        ``case`` is the probe under the rule, ``reference`` its ``(loss, grads, outputs)`` as
        :func:`refimpl.testing.compare_with_oracle` compares them, computed by refimpl (the
        probe's model with the one rule changed).

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> for alternative in alternatives(get_case("probe-relu-at-zero")):
    ...     print(alternative.convention, alternative.describes)
    True relu'(0) = 0.5 (the mean of both sides)
    True relu'(0) = 1 (the positive side's derivative)
    """
    if getattr(case, "kind", None) != "probe":
        return []
    found = []
    for alternative in PROBE_ALTERNATIVES.get(case.name, ()):
        if isinstance(alternative, Rule):
            found.append(_computed(alternative.describes, alternative.convention,
                                   alternative.under(case)))
            continue
        family = alternative
        theirs = family.at_theirs(case)
        span = family.theirs - family.ours
        for value in family.members:
            if value != family.ours:
                t = 1.0 if value == family.theirs else (value - family.ours) / span
                found.append(_computed(_member(family, value), True,
                                       _interpolated(case, theirs, t)))
        if family.theirs not in family.members:
            found.append(_computed(
                f"{family.quantity} = {_value(family.theirs, family)} ({family.outside})",
                False, theirs))
    return found


def resolved_in(case: Any) -> tuple[str, ...]:
    """The dtypes in which a probe can show which rule an implementation follows (its
    ``config["convention"]["resolved_in"]``; every dtype for a case that declares none)."""
    convention = case.config.get("convention") if isinstance(case.config, Mapping) else None
    declared = convention.get("resolved_in") if isinstance(convention, Mapping) else None
    return tuple(declared) if declared is not None else ALL_DTYPES


def unresolved(case: Any, dtype: str) -> str | None:
    """Why ``dtype`` cannot show which rule an implementation follows at the probe ``case``
    (a dtype outside :func:`resolved_in`), or None: a case that is no gradient probe (a step
    probe's convention is the optimizer's, which its gradient does not depend on), or a dtype
    that resolves it. A comparison in such a dtype that matches is inconclusive, never a
    pass."""
    if getattr(case, "kind", None) != "probe" or dtype in resolved_in(case):
        return None
    convention = case.config["convention"]
    rules = "; ".join(alternative.describes for alternative in alternatives(case))
    return (f"{convention['name']}: only {', '.join(resolved_in(case))} resolves it: "
            f"refimpl's rule and its alternatives ({rules}) agree within {dtype}'s tolerance "
            f"at this probe, so no {dtype} implementation can show which it follows")


def _flat(grads: Mapping[str, Any], names: list[str]) -> np.ndarray | None:
    """The gradients of ``names`` as one float64 vector; None when one is missing or not of
    its reference's size (the plain comparison reports that)."""
    try:
        return np.concatenate([np.asarray(grads[name], dtype=np.float64).ravel()
                               for name in names])
    except (KeyError, TypeError, ValueError):
        return None


def _finite(loss: Any) -> bool:
    """Whether ``loss`` is finite; True for what is not a number (the comparison reports it)."""
    try:
        return bool(np.all(np.isfinite(np.asarray(loss, dtype=np.float64))))
    except (TypeError, ValueError):
        return True


def _fit(actual: np.ndarray, reference: np.ndarray, alternative: np.ndarray
         ) -> tuple[float, float] | None:
    """``t`` and the relative residual of ``actual - reference ~ t (alternative - reference)``
    (least squares) over the entries the alternative changes; None when it changes none.
    Entries it leaves alone are not fitted: an implementation that follows the alternative
    and is wrong elsewhere too is still recognised (the comparison fails it anyway)."""
    direction = alternative - reference
    support = direction != 0
    norm = float(np.sqrt(np.sum(direction[support] ** 2)))
    if norm == 0.0:
        return None
    offset = (actual - reference)[support]
    t = float(np.sum(offset * direction[support])) / norm ** 2
    return t, float(np.sqrt(np.sum((offset - t * direction[support]) ** 2))) / norm


class Guess(NamedTuple):
    """:func:`guess`'s answer: one sentence, and whether it names a documented convention
    (``describes`` then equals that :class:`Alternative`'s)."""

    sentence: str
    convention: bool
    describes: str = ""


def _family_guess(family: Family, t: float, rule: str) -> Guess:
    """The value a fit ``t`` implies on ``family``: a documented member or not."""
    implied = family.ours + t * (family.theirs - family.ours)
    span = abs(family.theirs - family.ours)
    nearest = min(family.members, key=lambda value: abs(value - implied))
    shown = _value(implied, family)
    if abs(nearest - implied) <= FAMILY_WINDOW * span and nearest != family.ours:
        return Guess(f"{family.quantity}: implementation ~ {shown} (a documented value: "
                     f"{family.members[nearest]}); {rule}", True, _member(family, nearest))
    return Guess(f"{family.quantity}: implementation ~ {shown} ({family.outside}); {rule}",
                 False)


def guess(case: Any, loss: Any, grads: Any) -> Guess | None:
    """What a failing implementation's gradients appear to do at a probe (a fit, not a
    verdict): :func:`diagnose`'s sentence and whether it is a documented convention.

    The gradients ``g`` are fitted on the line from refimpl's ``r`` to each alternative's
    ``a``, ``g - r ~ t (a - r)``, by least squares over the gradient entries the alternative
    changes (so that other errors do not hide it); an alternative
    fits when the residual is below :data:`MATCH_RESIDUAL` of ``|a - r|`` and, for a single
    rule, ``t`` is 1 within :data:`MATCH_T`; for a family any ``|t|`` above
    :data:`FAMILY_WINDOW` implies a value ``ours + t (theirs - ours)``, a documented one when
    within :data:`FAMILY_WINDOW` ``|theirs - ours|`` of a member. Only the gradients are
    read: whether the *whole* result follows a convention is decided by comparing it with the
    :func:`alternatives`' references (:func:`refimpl.testing.conform.conform_case`).
    """
    if getattr(case, "kind", None) != "probe" or not isinstance(grads, Mapping):
        return None
    convention = case.config["convention"]
    names = list(case.params)
    actual = _flat(grads, names)
    reference = _flat(case.loss_and_grads(case.params)[1], names)
    if actual is None or actual.size != reference.size:
        return None
    rule = f"refimpl: {convention['refimpl_rule']}"
    if not (np.all(np.isfinite(actual)) and _finite(loss)):
        if case.name == "probe-logits-1e4":
            return Guess(f"{convention['name']}: implementation returns non-finite values (exp "
                         f"of a logit of 1e4 overflows: no max subtracted; never a "
                         f"convention); {rule}", False)
        return None
    for alternative in PROBE_ALTERNATIVES.get(case.name, ()):
        under = alternative.at_theirs if isinstance(alternative, Family) else alternative.under
        fit = _fit(actual, reference, _flat(_refimpl(under(case))[1], names))
        if fit is None or fit[1] > MATCH_RESIDUAL:
            continue
        if isinstance(alternative, Family):
            if abs(fit[0]) > FAMILY_WINDOW:
                return _family_guess(alternative, fit[0], rule)
        elif abs(fit[0] - 1.0) <= MATCH_T:
            kind = "a documented convention" if alternative.convention else \
                "not a convention: a bug"
            return Guess(f"{convention['name']}: implementation: {alternative.describes} "
                         f"({kind}); {rule}", alternative.convention,
                         alternative.describes if alternative.convention else "")
    return None


def diagnose(case: Any, loss: Any, grads: Any) -> str | None:
    """For a probe ``case`` whose comparison failed: what the implementation's gradients
    appear to do, as one sentence (:func:`guess`), or None when they fit no alternative.

    A best guess for the message, never a verdict: a documented convention is granted only
    when the implementation's whole result matches refimpl's with that one rule changed
    (:func:`alternatives`, compared by :func:`refimpl.testing.conform.conform_case`).

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        A probe (other cases: None).
    loss : float
        The implementation's loss.
    grads : mapping of str to array_like
        The implementation's gradients, keyed like ``case.params``.

    Returns
    -------
    str or None
        e.g. "leaky_relu'(0): implementation ~ 1 (a documented value: the positive side's
        slope, JAX); refimpl: leaky_relu'(0) = negative_slope = 0.01 (PyTorch)", or
        "leaky_relu'(0): implementation ~ 0 (not a documented value: ...); refimpl: ...".

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> case = get_case("probe-relu-at-zero")
    >>> loss, grads = case.loss_and_grads(case.params)
    >>> diagnose(case, loss, grads) is None        # refimpl's own gradients: nothing to name
    True
    """
    found = guess(case, loss, grads)
    return None if found is None else found.sentence
