"""Recurrence: one set of weights used at every time step, and its unrolled twin.

Legend: ``N`` batch, ``T`` time steps, ``D`` input features, ``H`` hidden units.

PyTorch's ``nn.RNN`` (one layer, ``batch_first=True``, ``h_0 = 0``)::

    pre_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh         t = 0 .. T-1, h_{-1} = 0
    h_t   = act(pre_t)                                       act = tanh or relu

The output is every hidden state, ``(N, T, H)``. Every step uses the same ``W_ih``, ``W_hh``,
``b_ih``, ``b_hh``: recurrence is parameter sharing across time, and each shared weight's
gradient is the sum over the steps of the gradients of its uses (backpropagation through
time, :func:`rnn_backward`). :class:`UnrolledRNN` is the same recurrence with a separate copy
of every weight at every step (as :class:`~refimpl.nn.LocallyConnected2D` is the convolution
with a kernel per position): with all copies equal it computes the same outputs, and the sum
over the steps of its per-step gradients is the RNN's gradient.

Second order (:func:`rnn_jvp`, :func:`rnn_backward_jvp` and their unrolled twins): the
forward-mode derivative runs the recurrence of the tangents forward in time::

    pre_dot_t = x_dot_t W_ih^T + x_t W_ih_dot^T + b_ih_dot + b_hh_dot
                + h_dot_{t-1} W_hh^T + h_{t-1} W_hh_dot^T                h_dot_{-1} = 0
    h_dot_t   = act'(pre_t) pre_dot_t

and the directional derivative of backpropagation through time runs backward beside it (each
term of :func:`rnn_backward` differentiated by the product rule), with
``R{act'(pre_t)} = -2 h_t h_dot_t`` for tanh and 0 for relu (0 at its kink too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._validate import check_array, check_cache, check_int, positive_int
from .base import InputTangentCache, Layer, check_name, register

__all__ = ["RNN", "RNNCache", "rnn_forward", "rnn_backward", "LastStep", "last_step_forward",
           "last_step_backward", "UnrolledRNN", "unrolled_rnn_forward",
           "unrolled_rnn_backward", "NONLINEARITIES", "RNNTangentCache", "rnn_jvp",
           "rnn_backward_jvp", "unrolled_rnn_jvp", "unrolled_rnn_backward_jvp",
           "last_step_jvp", "last_step_backward_jvp"]

NONLINEARITIES = ("tanh", "relu")


class RNNCache(NamedTuple):
    inputs: np.ndarray       # x, (N, T, D)
    weight_ih: np.ndarray    # (H, D), or (T, H, D) for the unrolled twin
    weight_hh: np.ndarray    # (H, H), or (T, H, H) (step 0's copy is never used)
    hidden: np.ndarray       # (N, T, H) h_t
    pre: np.ndarray          # (N, T, H) pre-activations
    nonlinearity: str
    has_bias: bool


class RNNTangentCache(NamedTuple):
    """What the backward pass's derivative needs of the forward-mode pass."""

    x_dot: np.ndarray | None     # (N, T, D); None: a zero tangent (the data of a model)
    weight_ih_dot: np.ndarray    # (H, D), or (T, H, D) for the unrolled twin
    weight_hh_dot: np.ndarray    # (H, H), or (T, H, H)
    hidden_dot: np.ndarray       # (N, T, H) h_dot_t


def _activate(pre: np.ndarray, nonlinearity: str) -> np.ndarray:
    """tanh, or relu with the branch on the real part (complex-step safe)."""
    if nonlinearity == "tanh":
        return np.tanh(pre)
    return np.where(pre.real > 0, pre, 0)


def _activation_derivative(cache: RNNCache, t: int) -> np.ndarray:
    """act'(pre_t), (N, H): ``1 - h_t**2`` for tanh; 1 where ``pre_t > 0`` else 0 for relu
    (the derivative 0 at the kink pre = 0, PyTorch's convention)."""
    if cache.nonlinearity == "tanh":
        h = cache.hidden[:, t]
        return 1 - h * h
    return (cache.pre[:, t].real > 0).astype(np.float64)


def _check_nonlinearity(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in NONLINEARITIES:
        raise ValueError(f"{name}: expected one of {list(NONLINEARITIES)}, got {value!r}")
    return value


def _check_rnn_arguments(who, x, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
                         steps_axis):
    """Arrays as float64 / complex128 of matching shapes (``steps_axis``: the unrolled twin's
    leading step axis on every parameter)."""
    x = check_array(x, f"{who}: x", ("N", "T", "D"))
    if x.shape[1] == 0:
        raise ValueError(f"{who}: x: expected at least one time step, got shape {x.shape}")
    lead = (x.shape[1],) if steps_axis else ()
    weight_ih = check_array(weight_ih, f"{who}: weight_ih", (*lead, "H", x.shape[2]))
    hidden = weight_ih.shape[-2]
    weight_hh = check_array(weight_hh, f"{who}: weight_hh", (*lead, hidden, hidden))
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError(f"{who}: bias_ih, bias_hh: expected both or neither, got "
                         f"{'bias_ih' if bias_hh is None else 'bias_hh'} only")
    if bias_ih is not None:
        bias_ih = check_array(bias_ih, f"{who}: bias_ih", (*lead, hidden))
        bias_hh = check_array(bias_hh, f"{who}: bias_hh", (*lead, hidden))
    return x, weight_ih, weight_hh, bias_ih, bias_hh, _check_nonlinearity(
        nonlinearity, f"{who}: nonlinearity")


# --- the RNN: one weight at every step ----------------------------------------------------------

def rnn_forward(x: np.ndarray, weight_ih: np.ndarray, weight_hh: np.ndarray,
                bias_ih: np.ndarray | None = None, bias_hh: np.ndarray | None = None,
                nonlinearity: str = "tanh") -> tuple[np.ndarray, RNNCache]:
    """All hidden states of a one-layer Elman RNN (PyTorch's ``nn.RNN``, batch first).

    Parameters
    ----------
    x : ndarray, shape (N, T, D)
        T >= 1.
    weight_ih : ndarray, shape (H, D)
    weight_hh : ndarray, shape (H, H)
    bias_ih, bias_hh : ndarray, shape (H,), or None
        Both or neither.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    out : ndarray, shape (N, T, H)
        ``h_t`` for every step (module docstring), ``h_{-1} = 0``.
    cache : RNNCache

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for a non-array, a non-numeric dtype, a shape that does not fit
        or an unknown nonlinearity.
    """
    return _rnn_forward(*_check_rnn_arguments("rnn_forward", x, weight_ih, weight_hh, bias_ih,
                                              bias_hh, nonlinearity, False))


def _rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
    """:func:`rnn_forward` without the argument checks."""
    batch, steps, _ = x.shape
    # every step's input projection in one 2-D product (a stacked matmul is far slower)
    projected = (x.reshape(-1, x.shape[2]) @ weight_ih.T).reshape(batch, steps, -1)  # (N, T, H)
    if bias_ih is not None:
        projected = projected + (bias_ih + bias_hh)               # (H,) over (N, T)
    # complex as soon as any argument is (the complex step may perturb W_hh alone: a real
    # buffer would drop its imaginary part on assignment)
    dtype = np.result_type(projected, weight_hh)
    pre = np.empty(projected.shape, dtype=dtype)                  # (N, T, H)
    hidden = np.empty(projected.shape, dtype=dtype)               # (N, T, H)
    h = np.zeros((batch, weight_hh.shape[0]), dtype=dtype)        # h_{-1} = 0
    for t in range(steps):
        pre[:, t] = projected[:, t] + h @ weight_hh.T             # (N, H)
        h = _activate(pre[:, t], nonlinearity)
        hidden[:, t] = h
    return hidden, RNNCache(x, weight_ih, weight_hh, hidden, pre, nonlinearity,
                            bias_ih is not None)


def rnn_backward(dout: np.ndarray, cache: RNNCache) -> tuple[np.ndarray, ...]:
    """Backpropagation through time for :func:`rnn_forward`.

    With ``dpre_t = dL/dpre_t``, from the last step back to the first:

    * term 1, ``dh_t = dout_t + dpre_{t+1} W_hh`` (``h_t`` is an output and feeds step
      t + 1; nothing after the last step);
    * term 2, ``dpre_t = dh_t * act'(pre_t)``;

    and then, each weight summed over the steps that use it (sharing across time):

    * term 3, ``dW_ih = sum_t dpre_t^T x_t``; ``dx_t = dpre_t W_ih``;
    * term 4, ``dW_hh = sum_{t >= 1} dpre_t^T h_{t-1}`` (step 0 reads ``h_{-1} = 0``);
    * term 5, ``db_ih = db_hh = sum_{n, t} dpre_t``.

    Parameters
    ----------
    dout : ndarray, shape (N, T, H)
        The upstream gradient of every hidden state.
    cache : RNNCache

    Returns
    -------
    dx : ndarray, shape (N, T, D)
    dweight_ih : ndarray, shape (H, D)
    dweight_hh : ndarray, shape (H, H)
    dbias_ih, dbias_hh : ndarray, shape (H,), or None
    """
    check_cache(cache, RNNCache, "rnn_backward: cache")
    dout = check_array(dout, "rnn_backward: dout", cache.hidden.shape)
    return _rnn_backward(dout, cache)


def _rnn_backward(dout, cache):
    """:func:`rnn_backward` without the argument checks."""
    x, weight_ih, weight_hh, hidden = cache.inputs, cache.weight_ih, cache.weight_hh, cache.hidden
    _, steps, size = hidden.shape
    dpre = np.empty(hidden.shape, dtype=np.result_type(dout, hidden))   # (N, T, H)
    from_next = np.zeros_like(dpre[:, 0])                     # dpre_{t+1} W_hh, 0 after T-1
    for t in reversed(range(steps)):
        dh = dout[:, t] + from_next                                # term 1, (N, H)
        dpre[:, t] = dh * _activation_derivative(cache, t)         # term 2
        from_next = dpre[:, t] @ weight_hh                         # (N, H) @ (H, H)
    rows = dpre.reshape(-1, size)                                  # (N*T, H)
    dweight_ih = rows.T @ x.reshape(-1, x.shape[2])                # term 3, (H, D)
    dx = (rows @ weight_ih).reshape(x.shape)                       # (N, T, D)
    # term 4: dpre_t (t >= 1) against h_{t-1}, one product over all (n, t) pairs
    dweight_hh = (dpre[:, 1:].reshape(-1, size).T
                  @ hidden[:, :-1].reshape(-1, size))              # (H, H)
    dbias = rows.sum(axis=0) if cache.has_bias else None           # term 5, (H,)
    return dx, dweight_ih, dweight_hh, dbias, None if dbias is None else dbias.copy()


# --- second order: one implementation for the RNN and its unrolled twin ------------------------

def _check_cache_kind(who: str, cache: Any, unrolled: bool) -> None:
    """The cache of :func:`rnn_forward` (or of :func:`unrolled_rnn_forward` when unrolled)."""
    check_cache(cache, RNNCache, f"{who}: cache")
    if (cache.weight_ih.ndim == 3) != unrolled:
        expected, got = ("unrolled_rnn_forward", "rnn_forward") if unrolled else (
            "rnn_forward", "unrolled_rnn_forward")
        raise TypeError(f"{who}: cache: expected the cache of {expected}, got one of {got}")


def _check_tangents(who, unrolled, cache, x_dot, weight_ih_dot, weight_hh_dot, bias_ih_dot,
                    bias_hh_dot):
    """The tangents of the forward's arguments, each of its argument's shape (None: 0)."""
    _check_cache_kind(who, cache, unrolled)
    lead = cache.weight_ih.shape[:-2]
    hidden = cache.weight_ih.shape[-2]
    checked = []
    for name, value, shape in (("x_dot", x_dot, cache.inputs.shape),
                               ("weight_ih_dot", weight_ih_dot, cache.weight_ih.shape),
                               ("weight_hh_dot", weight_hh_dot, cache.weight_hh.shape),
                               ("bias_ih_dot", bias_ih_dot, (*lead, hidden)),
                               ("bias_hh_dot", bias_hh_dot, (*lead, hidden))):
        checked.append(None if value is None else check_array(value, f"{who}: {name}", shape))
    return checked


def _recurrent_jvp(x_dot, weight_ih_dot, weight_hh_dot, bias_ih_dot, bias_hh_dot, cache):
    """The forward-mode recurrence of :func:`rnn_jvp` (weights per step when unrolled)."""
    x, hidden = cache.inputs, cache.hidden
    unrolled = cache.weight_ih.ndim == 3
    dtype = np.result_type(hidden, cache.weight_ih, *[t for t in (
        x_dot, weight_ih_dot, weight_hh_dot, bias_ih_dot, bias_hh_dot) if t is not None])
    if weight_ih_dot is None:
        weight_ih_dot = np.zeros(cache.weight_ih.shape, dtype=dtype)
    if weight_hh_dot is None:
        weight_hh_dot = np.zeros(cache.weight_hh.shape, dtype=dtype)

    def at(weight, t):   # step t's copy of a parameter (its own when unrolled)
        return weight[t] if unrolled else weight

    hidden_dot = np.empty(hidden.shape, dtype=dtype)                      # (N, T, H)
    for t in range(hidden.shape[1]):
        pre_dot = x[:, t] @ at(weight_ih_dot, t).T                        # x_t W_ih_dot^T
        if x_dot is not None:
            pre_dot = pre_dot + x_dot[:, t] @ at(cache.weight_ih, t).T    # x_dot_t W_ih^T
        for bias_dot in (bias_ih_dot, bias_hh_dot):
            if bias_dot is not None:
                pre_dot = pre_dot + at(bias_dot, t)
        if t > 0:                                                         # h_{-1} = 0
            pre_dot = (pre_dot + hidden_dot[:, t - 1] @ at(cache.weight_hh, t).T
                       + hidden[:, t - 1] @ at(weight_hh_dot, t).T)
        hidden_dot[:, t] = _activation_derivative(cache, t) * pre_dot     # (N, H)
    return hidden_dot, RNNTangentCache(x_dot, weight_ih_dot, weight_hh_dot, hidden_dot)


def _activation_derivative_dot(cache: RNNCache, tangent_cache: RNNTangentCache,
                               t: int) -> np.ndarray | float:
    """R{act'(pre_t)} (N, H): ``-2 h_t h_dot_t`` for tanh (``act' = 1 - h^2``); 0 for relu,
    whose derivative is constant on both sides of the kink (0 at it)."""
    if cache.nonlinearity == "tanh":
        return -2 * cache.hidden[:, t] * tangent_cache.hidden_dot[:, t]
    return 0.0


def _recurrent_backward_jvp(dout, dout_dot, cache, tangent_cache):
    """Backpropagation through time and its directional derivative, in one backward sweep;
    the weights' gradient tangents per step, (T, ...) (the RNN sums them over the steps)."""
    x, hidden = cache.inputs, cache.hidden
    unrolled = cache.weight_ih.ndim == 3
    batch, steps, size = hidden.shape

    def at(weight, t):
        return weight[t] if unrolled else weight

    dtype = np.result_type(dout, dout_dot, hidden, cache.weight_ih, cache.weight_hh,
                           *[t for t in tangent_cache if t is not None])
    dpre = np.empty(hidden.shape, dtype=dtype)                            # (N, T, H)
    dpre_dot = np.empty(hidden.shape, dtype=dtype)
    from_next = np.zeros((batch, size), dtype=dtype)          # dpre_{t+1} W_hh[t+1]
    from_next_dot = np.zeros((batch, size), dtype=dtype)      # its tangent
    for t in reversed(range(steps)):
        dh = dout[:, t] + from_next                                       # term 1
        dh_dot = dout_dot[:, t] + from_next_dot
        slope = _activation_derivative(cache, t)                          # act'(pre_t)
        dpre[:, t] = dh * slope                                           # term 2
        dpre_dot[:, t] = dh_dot * slope + dh * _activation_derivative_dot(cache,
                                                                          tangent_cache, t)
        if t > 0:
            from_next = dpre[:, t] @ at(cache.weight_hh, t)
            from_next_dot = (dpre_dot[:, t] @ at(cache.weight_hh, t)
                             + dpre[:, t] @ at(tangent_cache.weight_hh_dot, t))
    x_dot = tangent_cache.x_dot
    hidden_dot = tangent_cache.hidden_dot
    dx_dot = np.empty(x.shape, dtype=dtype)
    dweights_ih_dot = np.zeros((steps, *cache.weight_ih.shape[-2:]), dtype=dtype)
    dweights_hh_dot = np.zeros((steps, size, size), dtype=dtype)    # [0] stays 0: never used
    for t in range(steps):
        # term 3: dW_ih = dpre_t^T x_t and dx_t = dpre_t W_ih, by the product rule
        dweights_ih_dot[t] = dpre_dot[:, t].T @ x[:, t]
        if x_dot is not None:
            dweights_ih_dot[t] += dpre[:, t].T @ x_dot[:, t]
        dx_dot[:, t] = (dpre_dot[:, t] @ at(cache.weight_ih, t)
                        + dpre[:, t] @ at(tangent_cache.weight_ih_dot, t))
        if t > 0:   # term 4: dW_hh = dpre_t^T h_{t-1}
            dweights_hh_dot[t] = (dpre_dot[:, t].T @ hidden[:, t - 1]
                                  + dpre[:, t].T @ hidden_dot[:, t - 1])
    dbiases_dot = dpre_dot.sum(axis=0)                                    # term 5, (T, H)
    return dx_dot, dweights_ih_dot, dweights_hh_dot, dbiases_dot


def rnn_jvp(x_dot: np.ndarray | None, weight_ih_dot: np.ndarray | None,
            weight_hh_dot: np.ndarray | None, bias_ih_dot: np.ndarray | None,
            bias_hh_dot: np.ndarray | None, cache: RNNCache
            ) -> tuple[np.ndarray, RNNTangentCache]:
    """Forward-mode derivative of :func:`rnn_forward`: the tangent of every hidden state.

    ``pre_dot_t = x_dot_t W_ih^T + x_t W_ih_dot^T + b_ih_dot + b_hh_dot + h_dot_{t-1} W_hh^T
    + h_{t-1} W_hh_dot^T`` and ``h_dot_t = act'(pre_t) pre_dot_t``, ``h_dot_{-1} = 0``.

    Parameters
    ----------
    x_dot : ndarray, shape (N, T, D), or None
        None for a zero tangent (the data of a model).
    weight_ih_dot : ndarray, shape (H, D), or None
    weight_hh_dot : ndarray, shape (H, H), or None
    bias_ih_dot, bias_hh_dot : ndarray, shape (H,), or None
    cache : RNNCache
        From :func:`rnn_forward`.

    Returns
    -------
    out_dot : ndarray, shape (N, T, H)
    tangent_cache : RNNTangentCache
    """
    return _recurrent_jvp(*_check_tangents("rnn_jvp", False, cache, x_dot, weight_ih_dot,
                                           weight_hh_dot, bias_ih_dot, bias_hh_dot), cache)


def _check_backward_tangents(who, dout, dout_dot, cache, tangent_cache):
    _check_cache_kind(who, cache, who.startswith("unrolled"))
    check_cache(tangent_cache, RNNTangentCache, f"{who}: tangent_cache")
    dout = check_array(dout, f"{who}: dout", cache.hidden.shape)
    dout_dot = check_array(dout_dot, f"{who}: dout_dot", cache.hidden.shape)
    check_array(tangent_cache.hidden_dot, f"{who}: tangent_cache.hidden_dot",
                cache.hidden.shape)
    return dout, dout_dot


def rnn_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: RNNCache,
                     tangent_cache: RNNTangentCache) -> tuple[np.ndarray, ...]:
    """Directional derivative of :func:`rnn_backward` (the R-operator of the recurrence).

    One backward sweep computes ``dpre_t`` and its tangent beside it, by the product rule on
    each term of :func:`rnn_backward`:

    * term 1, ``dh_dot_t = dout_dot_t + dpre_dot_{t+1} W_hh + dpre_{t+1} W_hh_dot``;
    * term 2, ``dpre_dot_t = dh_dot_t act'(pre_t) + dh_t R{act'(pre_t)}`` (module docstring);
    * term 3, ``dW_ih_dot = sum_t dpre_dot_t^T x_t + dpre_t^T x_dot_t``;
      ``dx_dot_t = dpre_dot_t W_ih + dpre_t W_ih_dot``;
    * term 4, ``dW_hh_dot = sum_{t >= 1} dpre_dot_t^T h_{t-1} + dpre_t^T h_dot_{t-1}``;
    * term 5, ``db_ih_dot = db_hh_dot = sum_{n, t} dpre_dot_t``.

    Parameters
    ----------
    dout, dout_dot : ndarray, shape (N, T, H)
        The upstream gradient of every hidden state and its tangent.
    cache : RNNCache
    tangent_cache : RNNTangentCache
        From :func:`rnn_jvp`.

    Returns
    -------
    dx_dot : ndarray, shape (N, T, D)
    dweight_ih_dot : ndarray, shape (H, D)
    dweight_hh_dot : ndarray, shape (H, H)
    dbias_ih_dot, dbias_hh_dot : ndarray, shape (H,), or None
    """
    dout, dout_dot = _check_backward_tangents("rnn_backward_jvp", dout, dout_dot, cache,
                                              tangent_cache)
    return _rnn_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _rnn_backward_jvp(dout, dout_dot, cache, tangent_cache):
    dx_dot, ih, hh, biases = _recurrent_backward_jvp(dout, dout_dot, cache, tangent_cache)
    # sharing across time: each weight's tangent is the sum over the steps that use it
    dbias_dot = biases.sum(axis=0) if cache.has_bias else None
    return (dx_dot, ih.sum(axis=0), hh.sum(axis=0), dbias_dot,
            None if dbias_dot is None else dbias_dot.copy())


def unrolled_rnn_jvp(x_dot: np.ndarray | None, weights_ih_dot: np.ndarray | None,
                     weights_hh_dot: np.ndarray | None, biases_ih_dot: np.ndarray | None,
                     biases_hh_dot: np.ndarray | None, cache: RNNCache
                     ) -> tuple[np.ndarray, RNNTangentCache]:
    """Forward-mode derivative of :func:`unrolled_rnn_forward`: :func:`rnn_jvp` with step
    ``t``'s own weights and their tangents (shapes (T, H, D), (T, H, H), (T, H); the tangent
    of ``weights_hh[0]`` is never used)."""
    return _recurrent_jvp(*_check_tangents("unrolled_rnn_jvp", True, cache, x_dot,
                                           weights_ih_dot, weights_hh_dot, biases_ih_dot,
                                           biases_hh_dot), cache)


def unrolled_rnn_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: RNNCache,
                              tangent_cache: RNNTangentCache) -> tuple[np.ndarray, ...]:
    """Directional derivative of :func:`unrolled_rnn_backward`: the terms of
    :func:`rnn_backward_jvp` with step ``t``'s own weights, nothing summed over time.

    Returns ``(dx_dot (N, T, D), dweights_ih_dot (T, H, D), dweights_hh_dot (T, H, H),
    dbiases_ih_dot, dbiases_hh_dot (T, H) or None)``.
    """
    dout, dout_dot = _check_backward_tangents("unrolled_rnn_backward_jvp", dout, dout_dot,
                                              cache, tangent_cache)
    return _unrolled_rnn_backward_jvp(dout, dout_dot, cache, tangent_cache)


def _unrolled_rnn_backward_jvp(dout, dout_dot, cache, tangent_cache):
    dx_dot, ih, hh, biases = _recurrent_backward_jvp(dout, dout_dot, cache, tangent_cache)
    if not cache.has_bias:
        return dx_dot, ih, hh, None, None
    return dx_dot, ih, hh, biases, biases.copy()


# --- the layer specs ----------------------------------------------------------------------------

def _rnn_parameter_shapes(hidden: int, inputs: int, bias: bool, lead: tuple = ()
                          ) -> dict[str, tuple[int, ...]]:
    shapes = {"weight_ih": (*lead, hidden, inputs), "weight_hh": (*lead, hidden, hidden)}
    if bias:
        shapes.update(bias_ih=(*lead, hidden), bias_hh=(*lead, hidden))
    return shapes


def _local_grads(names, grads):
    """The backward's gradients by local name (no bias entries without a bias)."""
    return {name: grad for name, grad in zip(names, grads, strict=False) if grad is not None}


@register
@dataclass(frozen=True)
class RNN(Layer):
    """One-layer Elman RNN spec, PyTorch's ``nn.RNN(input_size, hidden_size, nonlinearity,
    bias, batch_first=True)`` with ``h_0 = 0``.

    Input ``(N, T, input_size)``, output every hidden state ``(N, T, hidden_size)``.
    Parameters ``weight_ih`` (H, D), ``weight_hh`` (H, H), ``bias_ih`` (H,), ``bias_hh``
    (H,), all drawn from U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default).
    """

    name: str
    input_size: int
    hidden_size: int
    nonlinearity: str = "tanh"
    bias: bool = True

    has_parameters = True

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "input_size", positive_int(self.input_size, "input_size"))
        object.__setattr__(self, "hidden_size", positive_int(self.hidden_size, "hidden_size"))
        _check_nonlinearity(self.nonlinearity, "nonlinearity")
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias: expected a bool, got {self.bias!r}")

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return _rnn_parameter_shapes(self.hidden_size, self.input_size, self.bias)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[2] != self.input_size or input_shape[1] < 1:
            raise ValueError(f"{self.name}: expected input of shape (N, T, {self.input_size}) "
                             f"with T >= 1, got {tuple(input_shape)}")
        return (input_shape[0], input_shape[1], self.hidden_size)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(self.hidden_size)
        return {local: rng.uniform(-bound, bound, size=shape)
                for local, shape in self.parameter_shapes().items()}

    def forward(self, x, params):
        return _rnn_forward(x, params["weight_ih"], params["weight_hh"], params.get("bias_ih"),
                            params.get("bias_hh"), self.nonlinearity)

    def backward(self, dout, cache):
        dx, *grads = _rnn_backward(dout, cache)
        return dx, _local_grads(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), grads)

    def jvp(self, x_dot, params_dot, cache):
        return _recurrent_jvp(x_dot, params_dot["weight_ih"], params_dot["weight_hh"],
                              params_dot.get("bias_ih"), params_dot.get("bias_hh"), cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        dx_dot, *grads = _rnn_backward_jvp(dout, dout_dot, cache, tangent_cache)
        return dx_dot, _local_grads(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), grads)


def last_step_forward(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """The last time step, ``x[:, -1]`` (sequence classification after an RNN).

    Parameters
    ----------
    x : ndarray, shape (N, T, H)

    Returns
    -------
    out : ndarray, shape (N, H)
    cache : tuple
        The input shape.
    """
    x = check_array(x, "last_step_forward: x", ("N", "T", "H"))
    if x.shape[1] == 0:
        raise ValueError(f"last_step_forward: x: expected at least one time step, got shape "
                         f"{x.shape}")
    return x[:, -1], x.shape


def last_step_backward(dout: np.ndarray, cache: tuple[int, ...]) -> np.ndarray:
    """``dx`` (N, T, H): ``dout`` at the last step, exactly zero at every other step."""
    dout = check_array(dout, "last_step_backward: dout", (cache[0], cache[2]))
    return _last_step_backward(dout, cache)


def _last_step_backward(dout, shape):
    dx = np.zeros(shape, dtype=dout.dtype)
    dx[:, -1] = dout
    return dx


def last_step_jvp(x_dot: np.ndarray, cache: tuple[int, ...]
                  ) -> tuple[np.ndarray, InputTangentCache]:
    """``out_dot = x_dot[:, -1]`` (a selection), (N, T, H) -> (N, H)."""
    x_dot = check_array(x_dot, "last_step_jvp: x_dot", tuple(cache))
    return x_dot[:, -1], InputTangentCache(x_dot)


def last_step_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: tuple[int, ...],
                           tangent_cache: InputTangentCache) -> np.ndarray:
    """``dx_dot`` (N, T, H): ``dout_dot`` at the last step (a linear map: no second-order
    term)."""
    check_cache(tangent_cache, InputTangentCache, "last_step_backward_jvp: tangent_cache")
    check_array(dout, "last_step_backward_jvp: dout", (cache[0], cache[2]))
    dout_dot = check_array(dout_dot, "last_step_backward_jvp: dout_dot", (cache[0], cache[2]))
    return _last_step_backward(dout_dot, cache)


@register
@dataclass(frozen=True)
class LastStep(Layer):
    """Select the last time step: ``(N, T, H) -> (N, H)``, no parameters."""

    name = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[1] < 1:
            raise ValueError(f"LastStep: expected input of shape (N, T, H) with T >= 1, got "
                             f"{tuple(input_shape)}")
        return (input_shape[0], input_shape[2])

    def forward(self, x, params):
        return x[:, -1], x.shape

    def backward(self, dout, cache):
        return _last_step_backward(dout, cache), {}

    def jvp(self, x_dot, params_dot, cache):
        return x_dot[:, -1], InputTangentCache(x_dot)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return _last_step_backward(dout_dot, cache), {}


# --- the unrolled twin: a separate copy of every weight at every step ---------------------------

def unrolled_rnn_forward(x: np.ndarray, weights_ih: np.ndarray, weights_hh: np.ndarray,
                         biases_ih: np.ndarray | None = None,
                         biases_hh: np.ndarray | None = None, nonlinearity: str = "tanh"
                         ) -> tuple[np.ndarray, RNNCache]:
    """The RNN recurrence with step ``t``'s own weights: ``pre_t = x_t W_ih[t]^T + b_ih[t] +
    h_{t-1} W_hh[t]^T + b_hh[t]``, ``h_t = act(pre_t)``, ``h_{-1} = 0``.

    Parameters
    ----------
    x : ndarray, shape (N, T, D)
    weights_ih : ndarray, shape (T, H, D)
    weights_hh : ndarray, shape (T, H, H)
        ``weights_hh[0]`` multiplies ``h_{-1} = 0``: it is never used (its gradient is 0).
    biases_ih, biases_hh : ndarray, shape (T, H), or None
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    out : ndarray, shape (N, T, H)
    cache : RNNCache
    """
    x, weights_ih, weights_hh, biases_ih, biases_hh, nonlinearity = _check_rnn_arguments(
        "unrolled_rnn_forward", x, weights_ih, weights_hh, biases_ih, biases_hh, nonlinearity,
        True)
    return _unrolled_rnn_forward(x, weights_ih, weights_hh, biases_ih, biases_hh, nonlinearity)


def _unrolled_rnn_forward(x, weights_ih, weights_hh, biases_ih, biases_hh, nonlinearity):
    batch, steps, _ = x.shape
    # every argument's type, biases included (a complex-step perturbation of one of them
    # alone must reach the buffers)
    dtype = np.result_type(x, weights_ih, weights_hh,
                           *[b for b in (biases_ih, biases_hh) if b is not None])
    pre = np.empty((batch, steps, weights_ih.shape[1]), dtype=dtype)   # (N, T, H)
    hidden = np.empty_like(pre)
    for t in range(steps):
        pre_t = x[:, t] @ weights_ih[t].T                              # (N, H)
        if t > 0:
            pre_t = pre_t + hidden[:, t - 1] @ weights_hh[t].T
        if biases_ih is not None:
            pre_t = pre_t + biases_ih[t] + biases_hh[t]
        pre[:, t] = pre_t
        hidden[:, t] = _activate(pre_t, nonlinearity)
    return hidden, RNNCache(x, weights_ih, weights_hh, hidden, pre, nonlinearity,
                            biases_ih is not None)


def unrolled_rnn_backward(dout: np.ndarray, cache: RNNCache) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`unrolled_rnn_forward`, each step's weights their own.

    The same recursion as :func:`rnn_backward` (terms 1 and 2), but nothing is summed over
    time: ``dW_ih[t] = dpre_t^T x_t``, ``dW_hh[t] = dpre_t^T h_{t-1}`` (0 for t = 0),
    ``db_ih[t] = db_hh[t] = sum_n dpre_t``. Summed over t they are the RNN's gradients at
    equal copies.

    Parameters
    ----------
    dout : ndarray, shape (N, T, H)
    cache : RNNCache
        From :func:`unrolled_rnn_forward`.

    Returns
    -------
    dx : ndarray, shape (N, T, D)
    dweights_ih : ndarray, shape (T, H, D)
    dweights_hh : ndarray, shape (T, H, H)
    dbiases_ih, dbiases_hh : ndarray, shape (T, H), or None
    """
    check_cache(cache, RNNCache, "unrolled_rnn_backward: cache")
    if cache.weight_ih.ndim != 3:
        raise TypeError("unrolled_rnn_backward: cache: expected the cache of "
                        "unrolled_rnn_forward, got one of rnn_forward")
    dout = check_array(dout, "unrolled_rnn_backward: dout", cache.hidden.shape)
    return _unrolled_rnn_backward(dout, cache)


def _unrolled_rnn_backward(dout, cache):
    x, weights_ih, weights_hh, hidden = cache.inputs, cache.weight_ih, cache.weight_hh, cache.hidden
    steps = hidden.shape[1]
    dtype = np.result_type(dout, hidden)
    dx = np.empty(x.shape, dtype=np.result_type(dtype, weights_ih))
    dweights_ih = np.zeros(weights_ih.shape, dtype=dtype)
    dweights_hh = np.zeros(weights_hh.shape, dtype=dtype)      # [0] stays 0: never used
    dbiases = np.zeros(weights_ih.shape[:2], dtype=dtype)      # (T, H)
    from_next = np.zeros(hidden[:, 0].shape, dtype=dtype)
    for t in reversed(range(steps)):
        dpre = (dout[:, t] + from_next) * _activation_derivative(cache, t)   # (N, H)
        dweights_ih[t] = dpre.T @ x[:, t]
        dx[:, t] = dpre @ weights_ih[t]
        dbiases[t] = dpre.sum(axis=0)
        if t > 0:
            dweights_hh[t] = dpre.T @ hidden[:, t - 1]
            from_next = dpre @ weights_hh[t]
    if not cache.has_bias:
        return dx, dweights_ih, dweights_hh, None, None
    return dx, dweights_ih, dweights_hh, dbiases, dbiases.copy()


@register
@dataclass(frozen=True)
class UnrolledRNN(Layer):
    """The RNN with a separate copy of every weight at every step (the RNN's unshared twin).

    Parameters, for each step ``t = 0 .. steps-1``: ``weight_ih_<t>`` (H, D), ``bias_ih_<t>``
    and ``bias_hh_<t>`` (H,), and ``weight_hh_<t>`` (H, H) for ``t >= 1`` only (step 0 reads
    ``h_{-1} = 0``, so no copy of ``W_hh`` is used there). Input ``(N, steps, D)`` exactly,
    output ``(N, steps, H)``. Initialisation as :class:`RNN`, independently per step.

    :meth:`copies` makes its parameters from an RNN's (every copy equal), :meth:`sum_over_steps`
    sums its gradients back to the RNN's names, and :meth:`sharing_map` is the ``share`` map of
    a ``Sequential`` that ties every copy to the first one, which makes it the RNN again:
    recurrence is sharing across time. Per-step gradients are the per-time-step
    contributions to the RNN's gradient.
    """

    name: str
    input_size: int
    hidden_size: int
    steps: int
    nonlinearity: str = "tanh"
    bias: bool = True

    has_parameters = True

    def __post_init__(self) -> None:
        RNN.__post_init__(self)   # the same field checks, and `steps` below
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1))

    def _locals(self, local: str) -> list[str]:
        """The per-step names of one RNN parameter (``weight_hh`` from step 1)."""
        first = 1 if local == "weight_hh" else 0
        return [f"{local}_{t}" for t in range(first, self.steps)]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for local, shape in _rnn_parameter_shapes(self.hidden_size, self.input_size,
                                                  self.bias).items():
            shapes.update(dict.fromkeys(self._locals(local), shape))
        return shapes

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape[1:]) != (self.steps, self.input_size) or len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.steps}, "
                             f"{self.input_size}), got {tuple(input_shape)}")
        return (input_shape[0], self.steps, self.hidden_size)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(self.hidden_size)
        return {local: rng.uniform(-bound, bound, size=shape)
                for local, shape in self.parameter_shapes().items()}

    def _stacked(self, params: dict[str, np.ndarray], local: str) -> np.ndarray:
        arrays = [params[name] for name in self._locals(local)]
        if local == "weight_hh":   # step 0's unused copy, so that [t] is step t's
            arrays.insert(0, np.zeros_like(params["weight_ih_0"], shape=(self.hidden_size,) * 2))
        return np.stack(arrays)

    def forward(self, x, params):
        stacked = [self._stacked(params, local) if self.bias or local.startswith("weight")
                   else None for local in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return _unrolled_rnn_forward(x, *stacked, self.nonlinearity)

    def backward(self, dout, cache):
        dx, *stacked = _unrolled_rnn_backward(dout, cache)
        return dx, self._per_step_grads(stacked)

    def _per_step_grads(self, stacked):
        """Stacked (T, ...) gradients (or their tangents) by per-step local name."""
        grads = {}
        for local, grad in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), stacked,
                               strict=True):
            if grad is not None:
                first = 1 if local == "weight_hh" else 0
                grads.update(zip(self._locals(local), grad[first:], strict=True))
        return grads

    def jvp(self, x_dot, params_dot, cache):
        stacked = [self._stacked(params_dot, local) if self.bias or local.startswith("weight")
                   else None for local in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return _recurrent_jvp(x_dot, *stacked, cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        dx_dot, *stacked = _unrolled_rnn_backward_jvp(dout, dout_dot, cache, tangent_cache)
        return dx_dot, self._per_step_grads(stacked)

    # --- between the RNN's parameters and the copies ---------------------------------------

    def _per_step(self) -> dict[str, list[str]]:
        """``{"<name>.weight_ih": ["<name>.weight_ih_0", ...], ...}``, full names."""
        return {f"{self.name}.{local}": [f"{self.name}.{step}" for step in self._locals(local)]
                for local in _rnn_parameter_shapes(1, 1, self.bias)}

    def copies(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This layer's parameters with every copy equal to the RNN's parameter.

        ``params`` holds ``"<name>.weight_ih"``, ... (an RNN of this layer's name, e.g. a
        ``Sequential``'s parameters); those keys are replaced by their per-step copies (the
        same values in a fresh array each: an optimiser steps every copy separately), every
        other key is kept.
        """
        result = {}
        per_step = self._per_step()
        for key, value in params.items():
            if key in per_step:
                result.update({name: np.array(value) for name in per_step[key]})
            else:
                result[key] = value
        return result

    def sum_over_steps(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inverse of :meth:`copies` for gradients: each RNN parameter's gradient is the
        sum of its copies' gradients; other keys are kept."""
        steps = {step: rnn for rnn, names in self._per_step().items() for step in names}
        result: dict[str, np.ndarray] = {}
        for key, value in grads.items():
            target = steps.get(key, key)
            result[target] = result[target] + value if target in result else value
        return result

    def sharing_map(self) -> dict[str, str]:
        """``share`` for a ``Sequential``: every copy reads the first one (``weight_ih_0``,
        ``weight_hh_1``, ...), which turns this layer back into the RNN."""
        return {step: names[0] for names in self._per_step().values() for step in names[1:]}
