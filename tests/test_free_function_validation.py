"""Argument checks of every public forward/backward free function (refimpl/nn/*.py and the
penalties of refimpl/tying/penalties.py): a bad argument is a ``TypeError`` / ``ValueError`` whose
message names the function and the argument, before any arithmetic; nothing is broadcast.

Legend: ``N`` batch, ``D`` features, ``F`` filters / output features, ``K`` classes,
``C`` channels, ``H``/``W`` height/width.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import tying
from refimpl.nn import activations as act
from refimpl.nn import conv, dense, losses, pool
from refimpl.nn import locally_connected as lc

RNG = np.random.default_rng(0)
X2 = RNG.standard_normal((2, 4))            # (N, D)
W2 = RNG.standard_normal((3, 4))            # (F, D)
B2 = RNG.standard_normal(3)                 # (F,)
X4 = RNG.standard_normal((2, 3, 5, 5))      # (N, C, H, W)
CONV_W = RNG.standard_normal((4, 3, 3, 3))  # (F, C, kH, kW) -> out (2, 4, 3, 3)
LC_W = RNG.standard_normal((3, 3, 4, 3, 3, 3))  # (Ho, Wo, F, C, kH, kW)
LOGITS = RNG.standard_normal((2, 3))        # (N, K)
LABELS = np.array([0, 2])


def caches():
    """One cache of every forward, from valid arguments."""
    return {
        "dense": dense.dense_forward(X2, W2, B2)[1],
        "conv2d": conv.conv2d_forward(X4, CONV_W, np.zeros(4))[1],
        "locally_connected2d": lc.locally_connected2d_forward(X4, LC_W)[1],
        "maxpool2d": pool.maxpool2d_forward(X4, 2)[1],
        "avgpool2d": pool.avgpool2d_forward(X4, 2, padding=1)[1],
        "flatten": pool.flatten_forward(X4)[1],
        "softmax_cross_entropy": losses.softmax_cross_entropy_forward(LOGITS, LABELS)[1],
        "mse": losses.mse_forward(X2, X2 + 1)[1],
        "l2_penalty": tying.l2_penalty_forward(W2, W2 + 1, 0.5)[1],
        "l1_penalty": tying.l1_penalty_forward(W2, W2 + 1, 0.5)[1],
        **{name: getattr(act, f"{name}_forward")(X2, *extra)[1] for name, extra in (
            ("relu", ()), ("leaky_relu", (0.1,)), ("tanh", ()), ("sigmoid", ()),
            ("softplus", ()), ("identity", ()))},
    }


CACHES = caches()
ACTIVATIONS = [("relu", ()), ("leaky_relu", (0.1,)), ("tanh", ()), ("sigmoid", ()),
               ("softplus", ()), ("identity", ())]

# (id, call, error, regex of the message): the regex names the function and the argument.
FORWARD_CASES = [
    # dense: the example first (NumPy's raw "core dimension" error before)
    ("dense weight in-features", lambda: dense.dense_forward(X2, np.ones((3, 5)), B2),
     ValueError, r"dense_forward: weight: expected shape \(F, 4\), got \(3, 5\)"),
    ("dense x rank", lambda: dense.dense_forward(X2[0], W2, B2),
     ValueError, r"dense_forward: x: expected shape \(N, D\), got \(4,\)"),
    ("dense bias shape", lambda: dense.dense_forward(X2, W2, np.ones(4)),
     ValueError, r"dense_forward: bias: expected shape \(3,\), got \(4,\)"),
    ("dense bias broadcastable", lambda: dense.dense_forward(X2, W2, np.ones((1, 3))),
     ValueError, r"dense_forward: bias: expected shape \(3,\), got \(1, 3\)"),
    ("dense x list", lambda: dense.dense_forward(X2.tolist(), W2, B2),
     TypeError, r"dense_forward: x: expected an array of shape \(N, D\), got list"),
    ("dense weight bool", lambda: dense.dense_forward(X2, W2 > 0, B2),
     TypeError, r"dense_forward: weight: expected a numeric .* got dtype bool"),
    ("dense x object", lambda: dense.dense_forward(X2.astype(object), W2, B2),
     TypeError, r"dense_forward: x: expected a numeric .* got dtype object"),
    ("dense bias str", lambda: dense.dense_forward(X2, W2, "b"),
     TypeError, r"dense_forward: bias: expected an array of shape \(3,\), got str"),
    # losses
    ("mse broadcast target", lambda: losses.mse_forward(np.ones((4, 3)), np.zeros(3)),
     ValueError, r"mse_forward: target: expected the shape of out \(4, 3\), got \(3,\)"),
    ("mse empty", lambda: losses.mse_forward(np.ones((0, 3)), np.ones((0, 3))),
     ValueError, r"mse_forward: out: expected at least one element, got shape \(0, 3\)"),
    ("mse target list", lambda: losses.mse_forward(X2, X2.tolist()),
     TypeError, r"mse_forward: target: expected an array"),
    ("mse out list", lambda: losses.mse_forward(X2.tolist(), X2),
     TypeError, r"mse_forward: out: expected an array, got list"),
    ("mse out bool", lambda: losses.mse_forward(X2 > 0, X2),
     TypeError, r"mse_forward: out: expected a numeric .* got dtype bool"),
    ("cross-entropy label out of range",
     lambda: losses.softmax_cross_entropy_forward(np.ones((2, 3)), np.array([0, 3])),
     ValueError, r"softmax_cross_entropy_forward: labels: labels must lie in \[0, 3\)"),
    ("cross-entropy negative label",
     lambda: losses.softmax_cross_entropy_forward(LOGITS, np.array([-1, 0])),
     ValueError, r"softmax_cross_entropy_forward: labels: labels must lie in \[0, 3\)"),
    ("cross-entropy float labels",
     lambda: losses.softmax_cross_entropy_forward(LOGITS, np.array([0.0, 1.0])),
     TypeError, r"softmax_cross_entropy_forward: labels: expected integer class labels"),
    ("cross-entropy labels shape",
     lambda: losses.softmax_cross_entropy_forward(LOGITS, np.array([0, 1, 2])),
     ValueError, r"softmax_cross_entropy_forward: labels: expected shape \(2,\), got \(3,\)"),
    ("cross-entropy logits rank",
     lambda: losses.softmax_cross_entropy_forward(LOGITS[0], np.array([0])),
     ValueError, r"softmax_cross_entropy_forward: logits: expected shape \(N, K\), got \(3,\)"),
    ("cross-entropy empty batch",
     lambda: losses.softmax_cross_entropy_forward(np.ones((0, 3)), np.array([], int)),
     ValueError, r"softmax_cross_entropy_forward: logits: expected at least one element"),
    ("cross-entropy no classes",
     lambda: losses.softmax_cross_entropy_forward(np.ones((2, 0)), np.array([0, 0])),
     ValueError, r"softmax_cross_entropy_forward: logits: expected at least one element"),
    # activations
    ("leaky_relu slope nan", lambda: act.leaky_relu_forward(X2, float("nan")),
     ValueError, r"leaky_relu_forward: negative_slope: expected a finite real number"),
    ("leaky_relu slope str", lambda: act.leaky_relu_forward(X2, "0.1"),
     TypeError, r"leaky_relu_forward: negative_slope: expected a finite real number"),
    ("leaky_relu slope bool", lambda: act.leaky_relu_forward(X2, True),
     TypeError, r"leaky_relu_forward: negative_slope: expected a finite real number"),
    *[(f"{name} x list", lambda name=name, extra=extra: getattr(
        act, f"{name}_forward")(X2.tolist(), *extra),
       TypeError, rf"{name}_forward: x: expected an array, got list")
      for name, extra in ACTIVATIONS],
    *[(f"{name} x str", lambda name=name, extra=extra: getattr(
        act, f"{name}_forward")(np.array(["a"]), *extra),
       TypeError, rf"{name}_forward: x: expected a numeric")
      for name, extra in ACTIVATIONS],
    # convolution and locally connected
    ("conv2d x rank", lambda: conv.conv2d_forward(X4[0], CONV_W),
     ValueError, r"conv2d_forward: x: expected shape \(N, C, H, W\), got \(3, 5, 5\)"),
    ("conv2d x list", lambda: conv.conv2d_forward(X4.tolist(), CONV_W),
     TypeError, r"conv2d_forward: x: expected an array of shape \(N, C, H, W\), got list"),
    ("conv2d weight rank", lambda: conv.conv2d_forward(X4, CONV_W[0]),
     ValueError, r"conv2d_forward: weight: expected shape \(F, Cg, kH, kW\), got \(3, 3, 3\)"),
    ("conv2d weight channels", lambda: conv.conv2d_forward(X4, CONV_W[:, :2]),
     ValueError, r"conv2d_forward: weight shape \(4, 2, 3, 3\) with groups=1 needs 2 input"),
    ("conv2d bias shape", lambda: conv.conv2d_forward(X4, CONV_W, np.ones(3)),
     ValueError, r"conv2d_forward: bias: expected shape \(4,\), got \(3,\)"),
    ("conv2d bias bool", lambda: conv.conv2d_forward(X4, CONV_W, np.ones(4, bool)),
     TypeError, r"conv2d_forward: bias: expected a numeric"),
    ("conv2d stride", lambda: conv.conv2d_forward(X4, CONV_W, stride=0),
     ValueError, r"stride: expected values >= 1, got 0"),
    ("conv2d groups", lambda: conv.conv2d_forward(X4, CONV_W, groups=0),
     ValueError, r"groups: expected a positive int, got 0"),
    ("locally connected x rank", lambda: lc.locally_connected2d_forward(X4[0], LC_W),
     ValueError, r"locally_connected2d_forward: x: expected shape \(N, C, H, W\)"),
    ("locally connected weight rank", lambda: lc.locally_connected2d_forward(X4, CONV_W),
     ValueError, r"locally_connected2d_forward: weight: expected shape "
                 r"\(Ho, Wo, F, Cg, kH, kW\), got \(4, 3, 3, 3\)"),
    ("locally connected bias", lambda: lc.locally_connected2d_forward(X4, LC_W, np.ones(4)),
     ValueError, r"locally_connected2d_forward: bias: expected shape \(4, 3, 3\), got \(4,\)"),
    # pooling and flatten
    ("maxpool x rank", lambda: pool.maxpool2d_forward(X2, 2),
     ValueError, r"maxpool2d_forward: x: expected shape \(N, C, H, W\), got \(2, 4\)"),
    ("maxpool x str", lambda: pool.maxpool2d_forward(X4.astype(str), 2),
     TypeError, r"maxpool2d_forward: x: expected a numeric"),
    ("maxpool kernel", lambda: pool.maxpool2d_forward(X4, 0),
     ValueError, r"kernel_size: expected values >= 1, got 0"),
    ("avgpool x rank", lambda: pool.avgpool2d_forward(X2, 2),
     ValueError, r"avgpool2d_forward: x: expected shape \(N, C, H, W\), got \(2, 4\)"),
    ("avgpool stride", lambda: pool.avgpool2d_forward(X4, 2, stride=(1, 0)),
     ValueError, r"stride: expected values >= 1"),
    ("flatten x rank", lambda: pool.flatten_forward(X2[0]),
     ValueError, r"flatten_forward: x: expected shape \(N, \.\.\.\), got \(4,\)"),
    ("flatten x list", lambda: pool.flatten_forward([[1.0]]),
     TypeError, r"flatten_forward: x: expected an array"),
    # penalties: the examples first (a broadcast 12.0 and a negative lam -12.0 before)
    ("l2 broadcast", lambda: tying.l2_penalty_forward(np.ones((3, 4)), np.zeros(4), 1.0),
     ValueError, r"l2_penalty_forward: b: expected the shape of a \(3, 4\), got \(4,\)"),
    ("l2 negative lam", lambda: tying.l2_penalty_forward(np.ones((3, 4)), np.zeros((3, 4)), -1.0),
     ValueError, r"l2_penalty_forward: lam: expected a finite real number >= 0, got -1.0"),
    ("l2 infinite lam", lambda: tying.l2_penalty_forward(W2, W2, float("inf")),
     ValueError, r"l2_penalty_forward: lam: expected a finite real number >= 0, got inf"),
    ("l2 lam str", lambda: tying.l2_penalty_forward(W2, W2, "1"),
     TypeError, r"l2_penalty_forward: lam: expected a finite real number >= 0"),
    ("l2 a list", lambda: tying.l2_penalty_forward(W2.tolist(), W2, 1.0),
     TypeError, r"l2_penalty_forward: a: expected an array, got list"),
    ("l1 broadcast", lambda: tying.l1_penalty_forward(np.ones((3, 4)), np.zeros((1, 4)), 1.0),
     ValueError, r"l1_penalty_forward: b: expected the shape of a \(3, 4\), got \(1, 4\)"),
    ("l1 negative lam", lambda: tying.l1_penalty_forward(W2, W2, -0.5),
     ValueError, r"l1_penalty_forward: lam: expected a finite real number >= 0"),
    ("l1 b bool", lambda: tying.l1_penalty_forward(W2, W2 > 0, 1.0),
     TypeError, r"l1_penalty_forward: b: expected a numeric"),
    ("anchored broadcast", lambda: tying.anchored_penalty_forward(W2, np.zeros(4), 1.0),
     ValueError, r"anchored_penalty_forward: reference: expected the shape of w \(3, 4\)"),
    ("anchored negative lam", lambda: tying.anchored_penalty_forward(W2, W2, -1.0, "l1"),
     ValueError, r"anchored_penalty_forward: lam: expected a finite real number >= 0"),
    ("anchored penalty name", lambda: tying.anchored_penalty_forward(W2, W2, 1.0, "l3"),
     ValueError, r"penalty: unknown penalty 'l3'"),
]


@pytest.mark.parametrize("call, error, match", [case[1:] for case in FORWARD_CASES],
                         ids=[case[0] for case in FORWARD_CASES])
def test_forward_functions_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# Every backward: (id, function, cache key, a dout of the wrong shape or an upstream scalar
# of the wrong kind, the error, regex).
def backward_cases():
    cases = [
        ("dense_backward", dense.dense_backward, "dense", np.ones((2, 4)),
         ValueError, r"dense_backward: dout: expected shape \(2, 3\), got \(2, 4\)"),
        ("dense_backward broadcastable", dense.dense_backward, "dense", np.ones((1, 3)),
         ValueError, r"dense_backward: dout: expected shape \(2, 3\), got \(1, 3\)"),
        ("conv2d_backward", conv.conv2d_backward, "conv2d", np.ones((2, 4, 3, 2)),
         ValueError, r"conv2d_backward: dout: expected shape \(2, 4, 3, 3\), got \(2, 4, 3, 2\)"),
        ("locally_connected2d_backward", lc.locally_connected2d_backward,
         "locally_connected2d", np.ones((2, 4, 3)),
         ValueError, r"locally_connected2d_backward: dout: expected shape \(2, 4, 3, 3\)"
                     r", got \(2, 4, 3\)"),
        ("maxpool2d_backward", pool.maxpool2d_backward, "maxpool2d", np.ones((2, 3, 2, 3)),
         ValueError, r"maxpool2d_backward: dout: expected shape \(2, 3, 2, 2\)"
                     r", got \(2, 3, 2, 3\)"),
        ("avgpool2d_backward", pool.avgpool2d_backward, "avgpool2d", np.ones((2, 3, 2, 2)),
         ValueError, r"avgpool2d_backward: dout: expected shape \(2, 3, 3, 3\)"
                     r", got \(2, 3, 2, 2\)"),
        ("flatten_backward", pool.flatten_backward, "flatten", np.ones((2, 74)),
         ValueError, r"flatten_backward: dout: expected shape \(2, 75\), got \(2, 74\)"),
        ("softmax_cross_entropy_backward", losses.softmax_cross_entropy_backward,
         "softmax_cross_entropy", np.ones(2),
         TypeError, r"softmax_cross_entropy_backward: dloss: expected a scalar .* of shape \(2,\)"),
        ("mse_backward", losses.mse_backward, "mse", "1",
         TypeError, r"mse_backward: dloss: expected a scalar .* got str"),
        ("mse_backward bool", losses.mse_backward, "mse", True,
         TypeError, r"mse_backward: dloss: expected a scalar"),
        ("l2_penalty_backward", tying.l2_penalty_backward, "l2_penalty", np.ones(3),
         TypeError, r"l2_penalty_backward: dvalue: expected a scalar"),
        ("l1_penalty_backward", tying.l1_penalty_backward, "l1_penalty", None,
         TypeError, r"l1_penalty_backward: dvalue: expected a scalar"),
        ("anchored_penalty_backward", tying.anchored_penalty_backward, "l2_penalty", [1.0],
         TypeError, r"anchored_penalty_backward: dvalue: expected a scalar"),
    ]
    for name, _ in ACTIVATIONS:
        cases.append((f"{name}_backward", getattr(act, f"{name}_backward"), name,
                      np.ones((2, 1)), ValueError,
                      rf"{name}_backward: dout: expected shape \(2, 4\), got \(2, 1\)"))
    return cases


BACKWARD_CASES = backward_cases()


@pytest.mark.parametrize("backward, cache, bad, error, match",
                         [case[1:] for case in BACKWARD_CASES],
                         ids=[case[0] for case in BACKWARD_CASES])
def test_backward_functions_reject_a_dout_that_does_not_fit_the_cache(backward, cache, bad,
                                                                      error, match):
    with pytest.raises(error, match=match):
        backward(bad, CACHES[cache])


BACKWARDS = [(case[0], case[1], case[2]) for case in BACKWARD_CASES
             if case[0].split()[0] == case[0]]


@pytest.mark.parametrize("name, backward, cache", BACKWARDS, ids=[b[0] for b in BACKWARDS])
def test_backward_functions_reject_another_forwards_cache(name, backward, cache):
    other = "dense" if cache != "dense" else "relu"
    upstream = 1.0 if "loss" in name or "penalty" in name or "entropy" in name \
        or name.startswith("mse") else np.ones((2, 3))
    with pytest.raises(TypeError, match=rf"{name}: cache: expected the \w+Cache returned by "
                                        rf"the forward function, got \w+"):
        backward(upstream, CACHES[other])


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 here")
def test_extended_precision_is_refused_not_truncated():
    with pytest.raises(TypeError, match=r"dense_forward: x: extended precision"):
        dense.dense_forward(X2.astype(np.longdouble), W2, B2)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint8])
def test_other_real_dtypes_are_widened_to_float64(dtype):
    x, weight = X2.round().astype(dtype), W2.round().astype(dtype)
    out = dense.dense_forward(x, weight, None)[0]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.astype(np.float64) @ weight.astype(np.float64).T)
    dout = RNG.standard_normal((2, 3)).astype(np.float32)
    dx = dense.dense_backward(dout, dense.dense_forward(X2, W2, None)[1])[0]
    assert dx.dtype == np.float64
    np.testing.assert_array_equal(dx, dout.astype(np.float64) @ W2)


def test_complex_inputs_still_pass_the_checks():
    # the complex step: every forward accepts complex128 (and widens complex64)
    h = 1e-20j
    assert dense.dense_forward(X2 + h, W2, B2.astype(np.complex64))[0].dtype == np.complex128
    assert conv.conv2d_forward(X4 + h, CONV_W)[0].dtype == np.complex128
    assert losses.mse_forward(X2 + h, X2)[0].dtype == np.complex128
    assert losses.softmax_cross_entropy_forward(LOGITS + h, LABELS)[0].dtype == np.complex128
    assert tying.l2_penalty_forward(W2 + h, W2, 1.0)[0].dtype == np.complex128
    for name, extra in ACTIVATIONS:
        out = getattr(act, f"{name}_forward")(X2 + h, *extra)[0]
        assert out.dtype == np.complex128, name
