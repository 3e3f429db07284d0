"""The JAX adapter: every case expressed with JAX's own operations and ``jax.value_and_grad``.

``build(config, dtype, *, device="cpu") -> impl`` (the builder protocol of
:mod:`refimpl.adapters`). The layers are JAX's: ``jax.lax.conv_general_dilated`` (groups as
``feature_group_count``, dilation as ``rhs_dilation``), ``jax.lax.reduce_window`` (max with a
``-inf`` initial value and explicit padding; sum for the average, divided by ``kH*kW`` or by
the count of real inputs, a ``reduce_window`` of ones), ``jax.lax.conv_general_dilated_patches``
for ``LocallyConnected2D``, ``jax.nn.relu``, ``jax.nn.leaky_relu``, ``jax.nn.softplus``,
``jax.nn.sigmoid``, ``jnp.tanh``, ``jax.nn.log_softmax``, ``jnp.take`` (embedding),
``jax.lax.scan`` (the RNN: JAX has no RNN layer, so PyTorch's formula is written out), and
``jnp.abs`` for the L1 penalty, and the metric losses of a Siamese model written with ``jnp``
(``jnp.linalg.norm`` for PyTorch's ``pairwise_distance``, ``jax.nn.relu`` for the hinges: JAX
has no such losses). The loss and its gradients are ``jax.jit(jax.value_and_grad(...))``, as a
JAX user runs them; a micro-batch case is a gradient-accumulation loop (per micro-batch the
loss scaled by ``n_i / N``, the gradient pytrees added with ``jax.tree.map``; a penalty's
gradient added once per step).

``impl.hvp(params, inputs, vector)`` (the optional capability of :mod:`refimpl.testing.conform`)
is forward-over-reverse, ``jax.jvp(jax.grad(loss), (leaves,), (vector,))``, jitted, per
micro-batch (each weighted by its share) and for the penalty once, the products added with
``jax.tree.map``: the step's Hessian times ``vector``.

JAX's conventions are kept where they differ from refimpl's (PyTorch's): the comparison
shows them instead of hiding them. Known: ``jax.nn.leaky_relu`` takes the slope 1 at
exactly 0 (refimpl: ``negative_slope``); ``jnp.abs`` is differentiated by JAX's own rule at 0
(1); ``jax.nn.relu`` gives a triplet hinge of exactly 0 the derivative 0 (refimpl, as
PyTorch's ``clamp_min``: 1).
Everywhere else the operations agree with refimpl, and so must the gradients.

dtypes: "float64" runs inside ``jax.enable_x64(True)`` (a context around each call: the
global setting is never changed) and "float32" inside ``jax.enable_x64(False)``; matrix
products and convolutions run at ``jax.default_matmul_precision("highest")`` (true float32
on accelerators, whose default may be lower). "tf32" runs at ``"tensorfloat32"`` precision
and needs a GPU: on a CPU it is :class:`refimpl.testing.NotExpressible`.

Examples
--------
>>> from refimpl.adapters.jax import build
>>> from refimpl.testing import compare_with_oracle
>>> from refimpl.testing.cases import get_case
>>> case = get_case("cnn-tanh-strided-avgpool")
>>> compare_with_oracle(build(case.config, "float64"), case).verdict
'pass'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError as error:
    raise ImportError("refimpl.adapters.jax needs JAX: pip install 'refimpl[jax]'") from error

from .._validate import check_keys
from ..testing.comparison import NotExpressible, resolve_tolerance
from ._config import CasePlan, Metric, ModelPlan, Term, plan_case
from ._microbatches import micro_batches

__all__ = ["build", "MATMUL_PRECISION"]
FRAMEWORK, FRAMEWORK_VERSION = "jax", jax.__version__  # recorded by refimpl conform

#: ``jax.default_matmul_precision`` per dtype under test.
MATMUL_PRECISION = {"float64": "highest", "float32": "highest", "tf32": "tensorfloat32"}

Arrays = dict[str, Any]


def build(config: Mapping[str, Any], dtype: Any = "float64", *, device: str = "cpu"
          ) -> Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], tuple[Any, ...]]:
    """A JAX implementation of the case described by ``config``.

    Parameters
    ----------
    config : dict
        A case configuration (``case.config``); unknown top-level keys are ignored.
    dtype : str
        "float64", "float32" or "tf32" (GPU only).
    device : str
        A JAX platform ("cpu", "gpu"); the first device of that platform computes.

    Returns
    -------
    callable
        ``impl(params, inputs) -> (loss, grads, outputs)``: the loss a Python float, grads
        and outputs NumPy arrays in the dtype under test (float32 for "tf32"); and
        ``impl.hvp(params, inputs, vector) -> {name: array}``, the step's Hessian times
        ``vector`` by ``jax.jvp`` of ``jax.grad``.

    Raises
    ------
    refimpl.testing.NotExpressible
        For "tf32" on a CPU, or a configuration the adapters do not express.
    TypeError, ValueError
        Naming the argument, for a malformed configuration, dtype or device.
    """
    dtype_name, _ = resolve_tolerance(dtype)
    if not isinstance(device, str):
        raise TypeError(f"device: expected a JAX platform name such as 'cpu', got {device!r}")
    if dtype_name == "tf32" and device == "cpu":
        raise NotExpressible("tf32 needs a GPU (JAX on a CPU computes float32 products in "
                             "full float32)")
    try:
        target = jax.devices(device)[0]
    except RuntimeError as error:
        if dtype_name == "tf32":
            raise NotExpressible(f"tf32 needs a GPU: {error}") from None
        raise ValueError(f"device: no JAX device of platform {device!r}: {error}") from None
    plan = plan_case(config)

    def impl(params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
        check_keys(params, plan.parameters, what="params")
        with jax.enable_x64(dtype_name == "float64"), jax.default_device(target), \
                jax.default_matmul_precision(MATMUL_PRECISION[dtype_name]):
            return _run(plan, params, inputs, jnp.float64 if dtype_name == "float64"
                        else jnp.float32)

    def hvp(params: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
            vector: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_keys(params, plan.parameters, what="params")
        check_keys(vector, plan.parameters, what="vector")
        with jax.enable_x64(dtype_name == "float64"), jax.default_device(target), \
                jax.default_matmul_precision(MATMUL_PRECISION[dtype_name]):
            return _hvp(plan, params, inputs, vector, jnp.float64 if dtype_name == "float64"
                        else jnp.float32)

    impl.hvp = hvp
    return impl


def _run(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         dtype: Any) -> tuple[float, dict, dict]:
    """One training step, as a JAX loop writes gradient accumulation: per micro-batch (the
    whole batch when there are none) ``jax.value_and_grad`` of the loss scaled by its share
    ``n_i / N``, the gradient pytrees added; then the penalty's, once. NumPy results."""
    leaves = {key: jnp.asarray(np.asarray(params[key]), dtype=dtype) for key in plan.parameters}

    def batch_loss(leaves: Arrays, data: Arrays, weights: tuple) -> tuple[Any, Arrays]:
        outputs = {run.output: _forward(run.model, leaves, data[run.input])
                   for run in plan.runs}
        if plan.metric is not None:      # Siamese: one metric loss of every branch's output
            return weights[0] * _metric_loss(
                plan.metric, [outputs[run.output] for run in plan.runs], data), outputs
        value = 0.0
        for run, weight in zip(plan.runs, weights, strict=True):
            target = next(data[key] for key in run.targets if key in data)
            value = value + weight * _loss(run.model.loss, outputs[run.output], target)
        return value, outputs

    # jit: one XLA computation per micro-batch shape instead of one dispatch per operation.
    step = jax.jit(jax.value_and_grad(batch_loss, has_aux=True))
    total, grads, outputs = 0.0, None, {}
    for batch in micro_batches(plan, inputs):
        data = {key: _array(value, dtype) for key, value in batch.inputs.items()}
        (value, outs), batch_grads = step(leaves, data, batch.weights)
        grads = batch_grads if grads is None else jax.tree.map(jnp.add, grads, batch_grads)
        total += float(value)
        outputs.update({name + batch.suffix: np.asarray(out) for name, out in outs.items()})
    if plan.terms:
        # The penalty depends on the parameters only: once per step, not per micro-batch.
        references = {term.other: _array(inputs[term.other], dtype)
                      for term in plan.terms if term.from_inputs and term.other in inputs}
        value, penalty_grads = jax.jit(jax.value_and_grad(
            lambda leaves, references: sum(_penalty(plan.penalty, term, leaves, references)
                                           for term in plan.terms)))(leaves, references)
        grads = jax.tree.map(jnp.add, grads, penalty_grads)
        total += float(value)
    return total, {key: np.asarray(grads[key]) for key in plan.parameters}, outputs


def _batch_loss(plan: CasePlan, leaves: Arrays, data: Arrays, weights: tuple) -> Any:
    """One micro-batch's loss, each run's weighted by its share ``n_i / N``."""
    outputs = {run.output: _forward(run.model, leaves, data[run.input]) for run in plan.runs}
    if plan.metric is not None:          # Siamese: one metric loss of every branch's output
        return weights[0] * _metric_loss(plan.metric, [outputs[run.output]
                                                       for run in plan.runs], data)
    value = 0.0
    for run, weight in zip(plan.runs, weights, strict=True):
        target = next(data[key] for key in run.targets if key in data)
        value = value + weight * _loss(run.model.loss, outputs[run.output], target)
    return value


def _hvp(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         vector: Mapping[str, np.ndarray], dtype: Any) -> dict[str, np.ndarray]:
    """The step's Hessian times ``vector``, forward-over-reverse: ``jax.jvp`` of
    ``jax.grad`` of each micro-batch's weighted loss, and of the penalty once, added."""
    leaves = {key: jnp.asarray(np.asarray(params[key]), dtype=dtype) for key in plan.parameters}
    tangent = {key: jnp.asarray(np.asarray(vector[key]), dtype=dtype)
               for key in plan.parameters}

    def product(loss: Callable[..., Any]) -> Callable[..., Any]:
        """``(leaves, tangent, *args) -> H v`` of ``loss(leaves, *args)``, jitted."""
        def hessian_vector(leaves: Arrays, tangent: Arrays, *args: Any) -> Arrays:
            return jax.jvp(lambda p: jax.grad(loss)(p, *args), (leaves,), (tangent,))[1]
        return jax.jit(hessian_vector)

    step = product(lambda p, data, weights: _batch_loss(plan, p, data, weights))
    total = None
    for batch in micro_batches(plan, inputs):
        data = {key: _array(value, dtype) for key, value in batch.inputs.items()}
        found = step(leaves, tangent, data, batch.weights)
        total = found if total is None else jax.tree.map(jnp.add, total, found)
    if plan.terms:
        references = {term.other: _array(inputs[term.other], dtype)
                      for term in plan.terms if term.from_inputs and term.other in inputs}
        found = product(lambda p, references: sum(_penalty(plan.penalty, term, p, references)
                                                  for term in plan.terms))(
            leaves, tangent, references)
        total = jax.tree.map(jnp.add, total, found)
    return {key: np.asarray(total[key]) for key in plan.parameters}


def _array(value: Any, dtype: Any) -> Any:
    """A float array in ``dtype``; integer arrays (labels, indices) stay integers."""
    array = np.asarray(value)
    return jnp.asarray(array, dtype=dtype) if array.dtype.kind == "f" else jnp.asarray(array)


def _forward(model: ModelPlan, leaves: Arrays, x: Any) -> Any:
    for step in model.layers:
        slots = {local: leaves[use.key].T if use.transpose else leaves[use.key]
                 for local, use in step.params.items()}
        x = LAYERS[step.type](x, slots, step.options)
    return x


def _loss(loss: str, out: Any, target: Any) -> Any:
    if loss == "SoftmaxCrossEntropy":
        # Logits (..., K), labels (...): the mean over every label position.
        log_probabilities = jax.nn.log_softmax(out, axis=-1)
        picked = jnp.take_along_axis(log_probabilities, target[..., None], axis=-1)
        return -jnp.mean(picked)
    return jnp.mean((out - target) ** 2)


def _distance(u: Any, v: Any, eps: float) -> Any:
    """PyTorch's ``pairwise_distance`` (the convention of the case): ``||u - v + eps||_2``
    per row, (N, D) -> (N,)."""
    return jnp.linalg.norm(u - v + eps, axis=-1)


def _metric_loss(metric: Metric, embeddings: list[Any], data: Arrays) -> Any:
    """The triplet margin loss ``mean relu(margin + d(a, p) - d(a, n))`` or the contrastive
    loss ``mean(y d^2 + (1 - y) relu(margin - d)^2)``, written with ``jnp`` (JAX has no
    metric-learning losses)."""
    if metric.type == "TripletMarginLoss":
        anchor, positive, negative = embeddings
        hinge = (metric.margin + _distance(anchor, positive, metric.eps)
                 - _distance(anchor, negative, metric.eps))                 # (N,)
        return jnp.mean(jax.nn.relu(hinge))
    distance = _distance(*embeddings, metric.eps)                           # (N,)
    similar = data[metric.target].astype(distance.dtype)                    # (N,) 1 or 0
    return jnp.mean(similar * distance ** 2
                    + (1 - similar) * jax.nn.relu(metric.margin - distance) ** 2)


def _penalty(penalty: str | None, term: Term, leaves: Arrays, data: Arrays) -> Any:
    """``lam * sum (w - other)^2`` or ``lam * sum |w - other|`` (``jnp.abs``)."""
    w = leaves[term.key]
    if term.from_inputs:
        other = data.get(term.other, jnp.zeros_like(w))
    else:
        other = leaves[term.other].T if term.transpose else leaves[term.other]
    difference = w - other
    size = difference ** 2 if penalty == "l2" else jnp.abs(difference)
    return term.lam * jnp.sum(size)


# --- layers: (x, {local name: array}, options) -> output ------------------------------------

_NCHW = ("NCHW", "OIHW", "NCHW")


def _spatial_padding(o: Mapping[str, Any]) -> list[tuple[int, int]]:
    return [(o["padding"][0], o["padding"][0]), (o["padding"][1], o["padding"][1])]


def _dense(x: Any, p: Arrays, o: Mapping[str, Any]) -> Any:
    out = jnp.matmul(x, p["weight"].T)                        # (..., F)
    return out + p["bias"] if "bias" in p else out


def _conv2d(x: Any, p: Arrays, o: Mapping[str, Any]) -> Any:
    out = lax.conv_general_dilated(x, p["weight"], o["stride"], _spatial_padding(o),
                                   rhs_dilation=o["dilation"], dimension_numbers=_NCHW,
                                   feature_group_count=o["groups"])   # (N, F, Ho, Wo)
    return out + p["bias"][None, :, None, None] if "bias" in p else out


def _locally_connected2d(x: Any, p: Arrays, o: Mapping[str, Any]) -> Any:
    """The patches of ``conv_general_dilated_patches`` (channel-major features ``(c, i, j)``)
    and one einsum per position."""
    weight, groups = p["weight"], o["groups"]                  # (Ho, Wo, F, Cg, kH, kW)
    out_h, out_w, filters = weight.shape[:3]
    cols = lax.conv_general_dilated_patches(
        x, o["kernel_size"], o["stride"], _spatial_padding(o), rhs_dilation=o["dilation"],
        dimension_numbers=_NCHW)                               # (N, C*kH*kW, Ho, Wo)
    cols = cols.reshape(x.shape[0], groups, -1, out_h, out_w)  # (N, G, Kg, Ho, Wo)
    kernels = weight.reshape(out_h, out_w, groups, filters // groups, -1)  # (Ho, Wo, G, Fg, Kg)
    out = jnp.einsum("ngkhw,hwgfk->ngfhw", cols, kernels)
    out = out.reshape(x.shape[0], filters, out_h, out_w)       # (N, F, Ho, Wo)
    return out + p["bias"] if "bias" in p else out


def _window(o: Mapping[str, Any]) -> tuple[tuple, tuple, list]:
    """``reduce_window``'s dimensions, strides and padding over (N, C, H, W)."""
    return ((1, 1, *o["kernel_size"]), (1, 1, *o["stride"]),
            [(0, 0), (0, 0), *_spatial_padding(o)])


def _max_pool2d(x: Any, p: Arrays, o: Mapping[str, Any]) -> Any:
    """Padding counts as ``-inf``: the initial value of the max (a concrete NumPy scalar,
    which ``reduce_window`` recognises as the max's identity and differentiates)."""
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, *_window(o))


def _avg_pool2d(x: Any, p: Arrays, o: Mapping[str, Any]) -> Any:
    """The window sum over the zero-padded input, divided by ``kH*kW``
    (``count_include_pad``) or by the number of real inputs in each window."""
    zero = np.array(0, x.dtype)
    total = lax.reduce_window(x, zero, lax.add, *_window(o))
    if o["count_include_pad"]:
        return total / (o["kernel_size"][0] * o["kernel_size"][1])
    ones = jnp.ones((1, 1, *x.shape[2:]), x.dtype)
    return total / lax.reduce_window(ones, zero, lax.add, *_window(o))


def _rnn(x: Any, p: Arrays, o: Mapping[str, Any]) -> Any:
    """PyTorch's ``nn.RNN`` formula, batch first, ``h0 = 0``, through ``lax.scan``:
    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, (N, T, D) -> (N, T, H)."""
    act = jnp.tanh if o["nonlinearity"] == "tanh" else jax.nn.relu
    zero = jnp.zeros((), x.dtype)
    b_ih, b_hh = p.get("bias_ih", zero), p.get("bias_hh", zero)

    def step(h: Any, x_t: Any) -> tuple[Any, Any]:
        h = act(x_t @ p["weight_ih"].T + b_ih + h @ p["weight_hh"].T + b_hh)   # (N, H)
        return h, h

    h0 = jnp.zeros((x.shape[0], o["hidden_size"]), x.dtype)
    _, states = lax.scan(step, h0, jnp.swapaxes(x, 0, 1))    # (T, N, H)
    return jnp.swapaxes(states, 0, 1)


LAYERS: dict[str, Callable[[Any, Arrays, Mapping[str, Any]], Any]] = {
    "Dense": _dense,
    "Conv2D": _conv2d,
    "LocallyConnected2D": _locally_connected2d,
    "Embedding": lambda x, p, o: jnp.take(p["weight"], x, axis=0),
    "RNN": _rnn,
    "LastStep": lambda x, p, o: x[:, -1],
    "ReLU": lambda x, p, o: jax.nn.relu(x),
    "LeakyReLU": lambda x, p, o: jax.nn.leaky_relu(x, o["negative_slope"]),
    "Tanh": lambda x, p, o: jnp.tanh(x),
    "Sigmoid": lambda x, p, o: jax.nn.sigmoid(x),
    "Softplus": lambda x, p, o: jax.nn.softplus(x),
    "Identity": lambda x, p, o: x,
    "MaxPool2D": _max_pool2d,
    "AvgPool2D": _avg_pool2d,
    "Flatten": lambda x, p, o: x.reshape(x.shape[0], -1),
}
