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

:func:`diagnose` names what a failing implementation appears to do: each probe carries its
alternative conventions as refimpl computations (the same case with the one rule changed);
the implementation's gradients ``g`` are fitted on the line from refimpl's ``r`` to the
alternative's ``a``, ``g - r ~ t (a - r)`` by least squares over every gradient entry. An
alternative is recognised when the fit leaves a residual below :data:`MATCH_RESIDUAL` of
``|a - r|`` and ``t`` is 1 (within :data:`MATCH_T`) or, for a family of rules (a derivative at
a kink, a slope, a strength), any ``t``: the implied value ``v_r + t (v_a - v_r)`` is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

__all__ = ["cases", "diagnose", "MATCH_RESIDUAL", "MATCH_T", "PROBE_ALTERNATIVES"]

#: An alternative matches when the fit's residual is below this fraction of ``|a - r|``.
MATCH_RESIDUAL = 0.05

#: ... and (for a single rule, not a family) ``|t - 1|`` is below this.
MATCH_T = 0.05

Grads = dict[str, np.ndarray]


class Alternative(NamedTuple):
    """Another convention at a probe: what it is, its gradients (refimpl with the one rule
    changed), and for a family of rules the value of the quantity it sets."""

    describes: str                   # e.g. "leaky_relu'(0) = 1 (the positive side's slope)"
    grads: Callable[[Case], Grads]
    family: tuple[str, float, float] | None = None   # (quantity, refimpl's value, this value)


def _grads_of(model: Sequential, case: Case, x: Any = None) -> Grads:
    """refimpl's gradients of ``model`` at the case's point (on ``x`` if given)."""
    data = case.inputs["x"] if x is None else x
    return model.loss_and_grads(case.params, data, case.inputs["y"])[1]


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


def _convention(name: str, rule: str, isolates: str, on_kink: bool = False) -> dict[str, Any]:
    """A probe's ``config["convention"]``; ``on_kink``: the point sits exactly on a kink of
    the loss, so one-sided (real-step) differences disagree there by construction."""
    return {"name": name, "refimpl_rule": rule, "isolates": isolates, "on_kink": on_kink}


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


def _identity_at_kink(case: Case) -> Grads:
    """The activation's derivative at the kink taken as 1: at a point where no pre-activation
    is negative, the same model with the activation replaced by the identity."""
    return _grads_of(_replaced(case, 1, Identity()), case)


def _slope_as_float32(case: Case) -> Grads:
    slope = case.config["model"]["layers"][1]["negative_slope"]
    return _grads_of(_replaced(case, 1, LeakyReLU(float(np.float32(slope)))), case)


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


def _tie_grads(case: Case, to_first: float, to_last: float) -> Grads:
    """The tie's upstream gradient g split ``to_first * g`` / ``to_last * g`` between the two
    tied maxima (refimpl: 1 / 0); the layers after the pool are unchanged."""
    reference = case.loss_and_grads(case.params)[1]
    upstream = reference["conv.bias"][0]                      # g: the first maximum got it all
    x = case.inputs["x"][0, 0, 0]
    patch_first, patch_last = x[0:2], x[1:3]
    grads = dict(reference)
    grads["conv.weight"] = (upstream * (to_first * patch_first + to_last * patch_last)
                            ).reshape(1, 1, 1, 2)
    grads["conv.bias"] = np.array([upstream * (to_first + to_last)])
    return grads


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


def _flip_count_include_pad(case: Case) -> Grads:
    layer = case.config["model"]["layers"][1]
    return _grads_of(_replaced(case, 1, AvgPool2D(layer["kernel_size"], layer["stride"],
                                                  layer["padding"],
                                                  not layer["count_include_pad"])), case)


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


def _zero_padding(case: Case) -> Grads:
    """Padding counted as 0: with one real value per window, max(value, 0) = ReLU(value)."""
    return _grads_of(_replaced(case, 1, ReLU(), keep=True), case)


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


def _bottom_right_windows(case: Case) -> Grads:
    """Windows aligned to the bottom-right (the first row/column skipped, the last read)."""
    return _grads_of(_model(case), case, case.inputs["x"][:, :, 1:, 1:])


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


def _swapped_groups(case: Case) -> Grads:
    """The weight gradient of each group taken from the other group's input channels (the
    forward pass correct)."""
    model = _model(case)
    params, x, y = case.params, case.inputs["x"], case.inputs["y"]
    conv_out, _ = conv2d_forward(x, params["conv.weight"], params["conv.bias"], groups=2)
    out = model.forward(params, x)
    dout = 2.0 * (out - y) / out.size                                         # (N, K)
    dconv = (dout @ params["fc.weight"]).reshape(conv_out.shape)              # (N, F, Ho, Wo)
    swapped = np.concatenate([x[:, 2:], x[:, :2]], axis=1)
    _, cache = conv2d_forward(swapped, params["conv.weight"], params["conv.bias"], groups=2)
    grads = dict(case.loss_and_grads(params)[1])
    grads["conv.weight"] = conv2d_backward(dconv, cache)[1]
    return grads


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
                              "float64 saturation near 37"), [])


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


def _l1_sign_at_tie(case: Case) -> Grads:
    """sign(0) = +1: at a tie, +lam to A's entry and -lam to B's."""
    grads = dict(case.loss_and_grads(case.params)[1])
    tie = case.params["A:fc1.weight"] == case.params["B:fc1.weight"]
    lam = case.config["pair"]["lam"]["fc1.weight"]
    grads["A:fc1.weight"] = grads["A:fc1.weight"] + lam * tie
    grads["B:fc1.weight"] = grads["B:fc1.weight"] - lam * tie
    return grads


def _lam_as_float32(case: Case) -> Grads:
    config = dict(case.config["pair"])
    config["lam"] = {key: float(np.float32(value)) for key, value in config["lam"].items()}
    pair = TiedPair.from_config(config)
    batches = ((case.inputs["xa"], case.inputs["ya"]), (case.inputs["xb"], case.inputs["yb"]))
    return pair.joined_loss_and_grads(case.params, *batches)[1]


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
                                "in float32) on a negative pre-activation"), 311,
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
                                "float32)")),
        _logits_probe(),
    ]


#: Per probe, the alternative conventions :func:`diagnose` recognises.
PROBE_ALTERNATIVES: dict[str, tuple[Alternative, ...]] = {
    "probe-relu-at-zero": (Alternative(
        "relu'(0) != 0", _identity_at_kink, ("relu'(0)", 0.0, 1.0)),),
    "probe-leaky-relu-at-zero": (Alternative(
        "leaky_relu'(0) != negative_slope", _identity_at_kink,
        ("leaky_relu'(0)", 0.01, 1.0)),),
    "probe-leaky-relu-slope-float64": (Alternative(
        "the slope stored in float32 (0.1 -> 0.10000000149)", _slope_as_float32,
        ("negative_slope", 0.1, float(np.float32(0.1)))),),
    "probe-softplus-above-20": (Alternative(
        "PyTorch's threshold=20 (softplus = x, derivative 1, above 20)", _identity_at_kink,
        ("softplus'(20.5)", float(1.0 / (1.0 + np.exp(-20.5))), 1.0)),),
    "probe-maxpool-tie-after-conv": (
        Alternative("the LAST maximum in scan order gets the gradient",
                    lambda case: _tie_grads(case, 0.0, 1.0)),
        Alternative("the gradient split evenly between the tied maxima",
                    lambda case: _tie_grads(case, 0.5, 0.5)),
        Alternative("every tied maximum gets the whole gradient",
                    lambda case: _tie_grads(case, 1.0, 1.0)),
    ),
    "probe-maxpool-neg-inf-padding": (Alternative(
        "padding counted as 0 (it wins over negative values and takes their gradient)",
        _zero_padding),),
    "probe-avgpool-padding-included": (Alternative(
        "count_include_pad=False (divisor = unpadded inputs only)", _flip_count_include_pad),),
    "probe-avgpool-padding-excluded": (Alternative(
        "count_include_pad=True (padded zeros counted in the divisor)",
        _flip_count_include_pad),),
    "probe-floor-mode-output-size": (Alternative(
        "windows aligned to the bottom-right: the unread last row/column read, the first "
        "skipped", _bottom_right_windows),),
    "probe-dilated-window-fits": (),
    "probe-grouped-conv-backward": (Alternative(
        "each group's weight gradient computed from the other group's input channels",
        _swapped_groups),),
    "probe-l1-tie": (Alternative(
        "a non-zero subgradient of |a - b| at a == b", _l1_sign_at_tie,
        ("subgradient of |a - b| at 0 (in units of lam)", 0.0, 1.0)),),
    "probe-l2-lambda-float64": (Alternative(
        "lam stored in float32 (0.1 -> 0.10000000149)", _lam_as_float32,
        ("lam", 0.1, float(np.float32(0.1)))),),
    "probe-logits-1e4": (),
}


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
    (least squares); None when the alternative equals the reference here."""
    direction = alternative - reference
    norm = float(np.sqrt(np.sum(direction ** 2)))
    if norm == 0.0:
        return None
    offset = actual - reference
    t = float(np.sum(offset * direction)) / norm ** 2
    return t, float(np.sqrt(np.sum((offset - t * direction) ** 2))) / norm


def diagnose(case: Any, loss: Any, grads: Any) -> str | None:
    """For a probe ``case`` whose comparison failed: the convention the implementation appears
    to follow, as one sentence, or None when its gradients match no known alternative.

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
        e.g. "leaky_relu'(0): implementation ~ 1 (leaky_relu'(0) != negative_slope); refimpl:
        leaky_relu'(0) = negative_slope = 0.01 (PyTorch)".

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> case = get_case("probe-relu-at-zero")
    >>> loss, grads = case.loss_and_grads(case.params)
    >>> diagnose(case, loss, grads) is None        # refimpl's own gradients: nothing to name
    True
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
            return (f"{convention['name']}: implementation returns non-finite values (exp of "
                    f"a logit of 1e4 overflows: no max subtracted); {rule}")
        return None
    for alternative in PROBE_ALTERNATIVES.get(case.name, ()):
        fit = _fit(actual, reference, _flat(alternative.grads(case), names))
        if fit is None or fit[1] > MATCH_RESIDUAL:
            continue
        t = fit[0]
        if alternative.family is not None and abs(t) > MATCH_T:
            quantity, ours, theirs = alternative.family
            implied = ours + t * (theirs - ours)
            # enough digits to show the gap between the two rules, no more (a float32
            # implementation's rounding would show as noise)
            gap = abs(theirs - ours) / max(abs(theirs), abs(ours))
            digits = max(4, int(np.ceil(-np.log10(gap))) + 3)
            return (f"{quantity}: implementation ~ {implied:.{digits}g} "
                    f"({alternative.describes}); {rule}")
        if abs(t - 1.0) <= MATCH_T:
            return f"{convention['name']}: implementation: {alternative.describes}; {rule}"
    return None
