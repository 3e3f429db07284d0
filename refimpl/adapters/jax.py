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

The sharded mode, :func:`sharded` (``refimpl conform refimpl.adapters.jax:sharded``;
:func:`build_sharded`, :func:`make_sharded_builder`), runs the same computation on N host CPU
devices (2 by default; ``REFIMPL_JAX_DEVICES``): data parallel over the batch (every
per-example input split along its first axis, padded to a multiple of N with copies of its
first example whose outputs are cut off before the loss), every embedding table sharded over
its vocabulary axis (a tied output layer reads the same sharded table), the other parameters
replicated; XLA's SPMD partitioner inserts the collectives. JAX fixes its device count when
its backend starts (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), so the sharded
mode computes in a worker process started with that flag and kept for the next cases. Its
``train_steps`` runs :class:`JaxSteps` (optax) in that worker, every step's gradient and
update computed on the devices.

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

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P  # noqa: N817 (JAX's own spelling)
except ImportError as error:
    raise ImportError("refimpl.adapters.jax needs JAX: pip install 'refimpl[jax]'") from error
try:       # the training steps' optimizers (the jax extra installs it); the gradients need JAX only
    import optax
except ImportError:
    optax = None

from .._validate import check_int, check_keys, check_real
from ..testing.comparison import NotExpressible, resolve_tolerance
from ._config import CasePlan, Metric, ModelPlan, Term, plan_case
from ._implementation import BuiltImplementation
from ._microbatches import micro_batches
from ._workers import WorkerPool, close_all, shared_pool

__all__ = ["build", "sharded", "build_sharded", "make_sharded_builder", "MATMUL_PRECISION",
           "DEVICES_VARIABLE", "DEFAULT_DEVICES", "SHARDED_TIMEOUT", "shutdown_sharded",
           "JaxImplementation", "JaxSteps", "ShardedImplementation"]
FRAMEWORK, FRAMEWORK_VERSION = "jax", jax.__version__  # recorded by refimpl conform

#: ``jax.default_matmul_precision`` per dtype under test.
MATMUL_PRECISION = {"float64": "highest", "float32": "highest", "tf32": "tensorfloat32"}

Arrays = dict[str, Any]


def build(config: Mapping[str, Any], dtype: Any = "float64", *, device: str = "cpu"
          ) -> JaxImplementation:
    """A JAX implementation of the case described by ``config``.

    Parameters
    ----------
    config : dict
        A case configuration (``case.config``); unknown top-level keys are ignored but
        ``"steps"`` (a step case: the optimizer, the clipping, the number of steps).
    dtype : str
        "float64", "float32" or "tf32" (GPU only).
    device : str
        A JAX platform ("cpu", "gpu"); the first device of that platform computes.

    Returns
    -------
    JaxImplementation
        ``impl(params, inputs) -> (loss, grads, outputs)``: the loss a Python float, grads
        and outputs NumPy arrays in the dtype under test (float32 for "tf32");
        ``impl.hvp(params, inputs, vector) -> {name: array}``, the step's Hessian times
        ``vector`` by ``jax.jvp`` of ``jax.grad``; and, for a step case,
        ``impl.train_steps(params, batches)`` with optax (:class:`JaxSteps`).

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

    def context() -> contextlib.ExitStack:
        """x64 for float64 only, the device, the products' precision: for one call."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.enable_x64(dtype_name == "float64"))
        stack.enter_context(jax.default_device(target))
        stack.enter_context(jax.default_matmul_precision(MATMUL_PRECISION[dtype_name]))
        return stack

    jax_dtype = jnp.float64 if dtype_name == "float64" else jnp.float32

    def impl(params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
        check_keys(params, plan.parameters, what="params")
        with context():
            return _run(plan, params, inputs, jax_dtype)

    def hvp(params: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
            vector: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_keys(params, plan.parameters, what="params")
        check_keys(vector, plan.parameters, what="vector")
        with context():
            return _hvp(plan, params, inputs, vector, jax_dtype)

    steps = None
    if config.get("steps") is not None:
        steps = JaxSteps(plan, config["steps"], jax_dtype, context)
    return JaxImplementation(impl, steps, hvp)


class JaxImplementation(BuiltImplementation):
    """What :func:`build` returns (:class:`~refimpl.adapters._implementation.BuiltImplementation`):
    ``hvp`` by ``jax.jvp`` of ``jax.grad``, ``train_steps`` with optax (a :class:`JaxSteps`)."""


def _clip_by_total_norm(max_norm: float, eps: float, norm_type: float) -> Any:
    """PyTorch's clipping as an optax transformation, written with ``jnp`` (optax's
    ``clip_by_global_norm`` has no epsilon and only the 2-norm):
    ``g * min(max_norm / (||g||_p + eps), 1)``."""
    def update(updates: Arrays, params: Any = None) -> Arrays:
        norm = _total_norm(updates, norm_type)
        coefficient = jnp.minimum(max_norm / (norm + eps), 1.0)
        return jax.tree.map(lambda g: g * coefficient.astype(g.dtype), updates)

    return optax.stateless(update)


def _total_norm(grads: Arrays, norm_type: float) -> Any:
    """The total ``p``-norm of a pytree, PyTorch's: the norm of the per-leaf norms (``inf``:
    the largest absolute entry)."""
    leaves = jax.tree.leaves(grads)
    if norm_type == 2.0:
        return optax.tree.norm(grads)
    if norm_type == float("inf"):
        return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))
    per_leaf = jnp.stack([jnp.sum(jnp.abs(leaf) ** norm_type) for leaf in leaves])
    return jnp.sum(per_leaf) ** (1.0 / norm_type)


class JaxSteps:
    """``K`` training steps with optax: ``jax.value_and_grad`` per micro-batch, the gradients
    added, a penalty's once; the norm before clipping; ``tx.update`` and
    ``optax.apply_updates``.

    The optimizer is an optax chain, the clipping first (it sees the loss's gradient only)::

        sgd    [clip] [add_decayed_weights(wd)] trace(momentum, nesterov) scale(-lr)
               = optax.sgd after coupled decay; no dampening (optax's trace has none)
        adam   [clip] [add_decayed_weights(wd)] scale_by_adam(b1, b2, eps, eps_root) scale(-lr)
               coupled decay; = optax.adam without decay
        adamw  [clip] optax.adamw(lr, b1, b2, eps, eps_root, weight_decay)    decoupled decay
               (also Adam(decoupled_weight_decay=True))

    PyTorch's and optax's Nesterov agree for a constant learning rate
    (``docs/training-steps.md``); optax's ``eps_root`` is refimpl's. The clipping is
    ``optax.clip_by_global_norm`` when the configuration's ``eps`` is 0 (optax's form: no
    epsilon), and PyTorch's form written with ``jnp`` otherwise (optax has no epsilon there).
    Not expressible: SGD's dampening, Adam without bias correction (``scale_by_adam`` always
    corrects), and AMSGrad (optax's ``scale_by_amsgrad`` takes the maximum of the
    bias-corrected second moments; PyTorch's takes the maximum of the raw ones and corrects
    it at the current step: another rule).

    Parameters
    ----------
    plan : CasePlan
    steps : dict
        The case's ``config["steps"]``.
    dtype : jax dtype
    context : callable
        ``context()`` -> a context manager (x64, device, precision) for one call.
    mesh : jax.sharding.Mesh, optional
        The sharded mode's devices: every step's gradient computed as :func:`_run` computes it
        on the mesh, and the update with the gradient and the parameters placed as
        :func:`_placement` places them (None: one device).
    """

    def __init__(self, plan: CasePlan, steps: Mapping[str, Any], dtype: Any,
                 context: Callable[[], Any], mesh: Mesh | None = None) -> None:
        check_keys(steps, ["optimizer", "clip", "count"], ["case_kind"], what="config['steps']")
        self.plan, self.dtype, self.context, self.mesh = plan, dtype, context, mesh
        self.optimizer_config = dict(steps["optimizer"])
        self.clip_config = None if steps["clip"] is None else dict(steps["clip"])
        self.count = check_int(steps["count"], "config['steps']['count']", 1)

    def transformation(self) -> Any:
        """The optax chain of the configuration (class docstring)."""
        if optax is None:
            raise NotExpressible("the JAX adapter's training steps need optax: pip install "
                                 "'refimpl[jax]'")
        config = self.optimizer_config
        name, lr = config.get("name"), config["lr"]
        chain = []
        clip = self.clip_config
        if clip is not None:
            norm_type = clip.get("norm_type", 2.0)
            norm_type = float("inf") if norm_type == "inf" else float(norm_type)
            eps = clip.get("eps", 1e-6)
            chain.append(optax.clip_by_global_norm(clip["max_norm"])
                         if eps == 0.0 and norm_type == 2.0
                         else _clip_by_total_norm(clip["max_norm"], eps, norm_type))
        if name == "sgd":
            if config["dampening"] != 0.0:
                raise NotExpressible("optax's trace has no dampening (PyTorch's SGD "
                                     "dampening)")
            if config["weight_decay"]:
                chain.append(optax.add_decayed_weights(config["weight_decay"]))
            chain.append(optax.sgd(lr, momentum=config["momentum"] or None,
                                   nesterov=config["nesterov"]))
            return optax.chain(*chain)
        if name not in ("adam", "adamw"):
            raise NotExpressible(f"config['steps']['optimizer']: no optax optimizer for "
                                 f"{name!r} here")
        if config["amsgrad"]:
            raise NotExpressible("optax's scale_by_amsgrad takes the maximum of the "
                                 "bias-corrected second moments, PyTorch's AMSGrad the maximum "
                                 "of the raw ones (then corrected): another rule")
        if not config.get("bias_correction", True):
            raise NotExpressible("optax's scale_by_adam always corrects its moments' bias")
        b1, b2 = config["betas"]
        adam = {"b1": b1, "b2": b2, "eps": config["eps"], "eps_root": config.get("eps_root", 0.0)}
        if name == "adamw" or config.get("decoupled_weight_decay", False):
            chain.append(optax.adamw(lr, weight_decay=config["weight_decay"], **adam))
            return optax.chain(*chain)
        if config["weight_decay"]:
            chain.append(optax.add_decayed_weights(config["weight_decay"]))
        chain.append(optax.adam(lr, **adam))
        return optax.chain(*chain)

    def train_steps(self, params: Mapping[str, np.ndarray], batches: list[Mapping[str, Any]]
                    ) -> dict[str, Any]:
        """Run the ``K`` steps from ``params`` on ``batches`` (one input dict per step).

        Returns
        -------
        dict
            ``{"params": [K dicts of NumPy arrays], "losses": [K floats], "grad_norms": [K
            floats]}``: after every step, the loss at its start, the norm before clipping.
        """
        check_keys(params, self.plan.parameters, what="params")
        if not isinstance(batches, (list, tuple)) or len(batches) != self.count:
            raise ValueError(f"batches: expected a list of {self.count} input dicts (one per "
                             f"step), got {type(batches).__name__} of "
                             f"{len(batches) if isinstance(batches, (list, tuple)) else '?'}")
        clip = self.clip_config
        norm_type = 2.0 if clip is None else clip.get("norm_type", 2.0)
        norm_type = float("inf") if norm_type == "inf" else float(norm_type)
        tx = self.transformation()

        place = _placement(self.plan, self.mesh)

        def update(grads: Arrays, state: Any, leaves: Arrays) -> tuple[Arrays, Any]:
            grads, leaves = place(grads), place(leaves)
            updates, state = tx.update(grads, state, leaves)
            return place(optax.apply_updates(leaves, updates)), state

        with self.context():
            # jit: the chain as one XLA computation instead of one dispatch per operation.
            step = jax.jit(update)
            leaves = {key: jnp.asarray(np.asarray(params[key]), dtype=self.dtype)
                      for key in self.plan.parameters}
            state = tx.init(leaves)
            result: dict[str, list[Any]] = {"params": [], "losses": [], "grad_norms": []}
            for inputs in batches:
                # the step's gradient as the gradient protocol computes it (its micro-batches,
                # its penalty once), from the parameters as they are now
                loss, grads, _ = _run(self.plan, {key: np.asarray(value)
                                                  for key, value in leaves.items()},
                                      inputs, self.dtype, self.mesh)
                grads = {key: jnp.asarray(value) for key, value in grads.items()}
                norm = float(_total_norm(grads, norm_type))
                leaves, state = step(grads, state, leaves)
                result["params"].append({key: np.asarray(value).copy()
                                         for key, value in leaves.items()})
                result["losses"].append(loss)
                result["grad_norms"].append(norm)
        return result


def _run(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         dtype: Any, mesh: Mesh | None = None) -> tuple[float, dict, dict]:
    """One training step, as a JAX loop writes gradient accumulation: per micro-batch (the
    whole batch when there are none) ``jax.value_and_grad`` of the loss scaled by its share
    ``n_i / N``, the gradient pytrees added; then the penalty's, once. NumPy results. With a
    ``mesh``, every array is placed on it as :func:`_placement` says."""
    leaves = {key: jnp.asarray(np.asarray(params[key]), dtype=dtype) for key in plan.parameters}
    place = _placement(plan, mesh)
    labels = (plan.metric.target,) if plan.metric is not None and plan.metric.target else ()

    def batch_loss(leaves: Arrays, data: Arrays, weights: tuple, sizes: tuple
                   ) -> tuple[Any, Arrays]:
        leaves, data = place(leaves), place(data, batch=True)
        # A padded batch (sharded mode) is cut back to its examples after the forward pass.
        outputs = {run.output: _forward(run.model, leaves, data[run.input])[:size]
                   for run, size in zip(plan.runs, sizes, strict=True)}
        data = {**data, **{name: data[name][:size] for run, size in zip(plan.runs, sizes,
                                                                         strict=True)
                           for name in (*run.targets, *labels) if name in data}}
        if plan.metric is not None:      # Siamese: one metric loss of every branch's output
            return weights[0] * _metric_loss(
                plan.metric, [outputs[run.output] for run in plan.runs], data), outputs
        value = 0.0
        for run, weight in zip(plan.runs, weights, strict=True):
            target = next(data[key] for key in run.targets if key in data)
            value = value + weight * _loss(run.model.loss, outputs[run.output], target)
        return value, outputs

    def value_and_grads(leaves: Arrays, data: Arrays, weights: tuple, sizes: tuple
                        ) -> tuple[Any, Arrays]:
        result, grads = jax.value_and_grad(batch_loss, has_aux=True)(leaves, data, weights,
                                                                     sizes)
        return result, place(grads)

    # jit: one XLA computation per micro-batch shape instead of one dispatch per operation.
    step = jax.jit(value_and_grads, static_argnums=3)
    multiple = 1 if mesh is None else mesh.size
    total, grads, outputs = 0.0, None, {}
    for batch in micro_batches(plan, inputs):
        sizes = tuple(len(batch.inputs[run.input]) for run in plan.runs)
        data = {key: _array(_padded(value, multiple), dtype)
                for key, value in batch.inputs.items()}
        (value, outs), batch_grads = step(leaves, data, batch.weights, sizes)
        grads = batch_grads if grads is None else jax.tree.map(jnp.add, grads, batch_grads)
        total += float(value)
        outputs.update({name + batch.suffix: np.asarray(out) for name, out in outs.items()})
    if plan.terms:
        # The penalty depends on the parameters only: once per step, not per micro-batch.
        references = {term.other: _array(inputs[term.other], dtype)
                      for term in plan.terms if term.from_inputs and term.other in inputs}

        def penalty(leaves: Arrays, references: Arrays) -> Any:
            leaves = place(leaves)
            return sum(_penalty(plan.penalty, term, leaves, references) for term in plan.terms)

        def penalty_and_grads(leaves: Arrays, references: Arrays) -> tuple[Any, Arrays]:
            value, penalty_grads = jax.value_and_grad(penalty)(leaves, references)
            return value, place(penalty_grads)

        value, penalty_grads = jax.jit(penalty_and_grads)(leaves, references)
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


# --- the sharded mode: data parallel over N host devices, the embedding sharded ---------------

#: The mesh axis every sharded array is split along.
AXIS = "devices"


def _placement(plan: CasePlan, mesh: Mesh | None) -> Callable[..., Arrays]:
    """``place(arrays, batch=False)``: the arrays constrained to their sharding on ``mesh``
    (inside ``jit``; the identity without a mesh). Per-example inputs (``batch=True``) are
    split along their first axis (data parallel); an embedding table along its first axis, the
    vocabulary (a tied output layer reads the same sharded table); every other parameter is
    replicated. XLA's partitioner then splits the computation the same way and inserts the
    collectives (the all-reduce of a replicated parameter's gradient over the batch). A batch
    arrives padded to a multiple of the device count (:func:`_padded`); a vocabulary that
    does not divide evenly is padded by the partitioner."""
    if mesh is None:
        return lambda arrays, batch=False: arrays
    vocabulary = {step.params["weight"].key for run in plan.runs for step in run.model.layers
                  if step.type == "Embedding"}

    def spec(key: str, array: Any, batch: bool) -> P:
        if batch or key in vocabulary:
            return P(AXIS, *([None] * (array.ndim - 1)))
        return P()

    def place(arrays: Arrays, batch: bool = False) -> Arrays:
        return {key: jax.lax.with_sharding_constraint(
            array, NamedSharding(mesh, spec(key, array, batch))) for key, array in arrays.items()}

    return place


#: The number of host devices of the sharded mode without ``devices`` or
#: :data:`DEVICES_VARIABLE`.
DEFAULT_DEVICES = 2
DEVICES_VARIABLE = "REFIMPL_JAX_DEVICES"
#: Seconds one sharded call may take (the worker's start aside), without ``timeout``.
SHARDED_TIMEOUT = 120.0
#: Seconds the worker may take to start (importing JAX).
_START_TIMEOUT = 120.0
_POOL_KIND = "jax.sharded"


class ShardedJob(NamedTuple):
    """One ``impl(params, inputs)`` call of the sharded mode, for its worker process."""

    plan: CasePlan
    dtype: str
    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    devices: int


class ShardedStepJob(NamedTuple):
    """One ``impl.train_steps(params, batches)`` call of the sharded mode, for its worker
    process: ``steps`` is the case's ``config["steps"]``."""

    plan: CasePlan
    dtype: str
    steps: Mapping[str, Any]
    params: dict[str, np.ndarray]
    batches: list[dict[str, np.ndarray]]
    devices: int


def _mesh(count: int) -> Mesh:
    """The first ``count`` CPU devices as a one-axis mesh (in the worker)."""
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise RuntimeError(f"the sharded mode needs {count} CPU devices, JAX has "
                           f"{len(devices)}: XLA_FLAGS must hold "
                           f"--xla_force_host_platform_device_count={count} before JAX "
                           f"starts its backend")
    return Mesh(np.array(devices[:count]), (AXIS,))


def _sharded_context(dtype: str) -> contextlib.ExitStack:
    """x64 for float64 only, the products' precision: for one job in the worker."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.enable_x64(dtype == "float64"))
    stack.enter_context(jax.default_matmul_precision(MATMUL_PRECISION[dtype]))
    return stack


def run_sharded_job(job: ShardedJob) -> tuple[float, dict, dict]:
    """In the worker: the job on a mesh of the first ``job.devices`` CPU devices."""
    mesh = _mesh(job.devices)
    with _sharded_context(job.dtype):
        return _run(job.plan, job.params, job.inputs,
                    jnp.float64 if job.dtype == "float64" else jnp.float32, mesh)


def run_sharded_steps(job: ShardedStepJob) -> dict[str, list[Any]]:
    """In the worker: the ``K`` steps of :class:`JaxSteps` (optax) on a mesh of the first
    ``job.devices`` CPU devices, each step's gradient and update computed on the mesh."""
    mesh = _mesh(job.devices)
    dtype = jnp.float64 if job.dtype == "float64" else jnp.float32
    steps = JaxSteps(job.plan, job.steps, dtype, lambda: _sharded_context(job.dtype), mesh)
    return steps.train_steps(job.params, job.batches)


def sharded(config: Mapping[str, Any], dtype: Any = "float64") -> ShardedImplementation:
    """The sharded mode on the default number of host devices (:func:`build_sharded`)."""
    return build_sharded(config, dtype)


def make_sharded_builder(devices: int | None = None, timeout: float | None = None
                         ) -> Callable[..., Any]:
    """:func:`build_sharded` with its settings bound, for ``refimpl conform
    MODULE:FUNCTION`` (``sharded4 = make_sharded_builder(4)`` in a module of yours)."""
    if devices is not None:
        check_int(devices, "devices", 1)
    if timeout is not None:
        check_real(timeout, "timeout", minimum=1e-3)

    def build_on_devices(config: Mapping[str, Any], dtype: Any = "float64"
                         ) -> ShardedImplementation:
        return build_sharded(config, dtype, devices=devices, timeout=timeout)

    build_on_devices.__qualname__ = f"make_sharded_builder({devices!r}, {timeout!r})"
    return build_on_devices


def build_sharded(config: Mapping[str, Any], dtype: Any = "float64", *,
                  devices: int | None = None, timeout: float | None = None
                  ) -> ShardedImplementation:
    """A JAX implementation of the case on ``devices`` host CPU devices: data parallel over
    the batch, every embedding table sharded over its vocabulary axis.

    JAX fixes its number of CPU devices when it starts its backend
    (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), so the computation runs in a
    worker process started with that flag: whatever this process's JAX already started, the
    devices are there. The worker is started on the first call and kept for the next cases
    (one per device count; :mod:`refimpl.adapters._workers`).

    Parameters
    ----------
    config : dict
        A case configuration (``case.config``).
    dtype : str
        "float64" or "float32" ("tf32" is not expressible on CPU devices).
    devices : int, optional
        The number of host devices (default: :data:`DEVICES_VARIABLE`, else
        :data:`DEFAULT_DEVICES`).
    timeout : float, optional
        Seconds each call may take (default :data:`SHARDED_TIMEOUT`); past it the worker is
        killed and the call raises.

    Returns
    -------
    ShardedImplementation
        ``impl(params, inputs) -> (loss, grads, outputs)``, as :func:`build`'s; for a step
        case also ``impl.train_steps(params, batches)``: :class:`JaxSteps` (optax) in the
        worker, every step's gradient and update computed on the devices (an embedding
        table and its update split over the vocabulary).

    Raises
    ------
    refimpl.testing.NotExpressible
        For "tf32", or a configuration the adapters do not express.
    TypeError, ValueError
        Naming the argument.
    """
    dtype_name, _ = resolve_tolerance(dtype)
    if devices is None and os.environ.get(DEVICES_VARIABLE, "").strip():
        text = os.environ[DEVICES_VARIABLE].strip()
        if not text.isdigit():
            raise ValueError(f"{DEVICES_VARIABLE}: expected a positive integer, got {text!r}")
        devices = check_int(int(text), DEVICES_VARIABLE, 1)
    devices = DEFAULT_DEVICES if devices is None else check_int(devices, "devices", 1)
    timeout = SHARDED_TIMEOUT if timeout is None else check_real(timeout, "timeout",
                                                                 minimum=1e-3)
    if dtype_name == "tf32":
        raise NotExpressible("tf32 needs a GPU; the sharded mode runs on host CPU devices")
    plan = plan_case(config)
    return ShardedImplementation(plan, dtype_name, devices, timeout, config.get("steps"))


class ShardedImplementation:
    """What :func:`build_sharded` returns: the gradient protocol and, for a step case, the
    step capability, each call one job for the worker of ``devices`` host devices.

    Attributes
    ----------
    plan : CasePlan
    dtype : str
    devices : int
    timeout : float
    steps : dict or None
        A step case's ``config["steps"]``; None for a gradient case.
    """

    def __init__(self, plan: CasePlan, dtype: str, devices: int, timeout: float,
                 steps: Mapping[str, Any] | None) -> None:
        self.plan, self.dtype, self.devices, self.timeout = plan, dtype, devices, timeout
        self.steps = None if steps is None else dict(steps)

    def __call__(self, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
                 ) -> tuple[Any, ...]:
        check_keys(params, self.plan.parameters, what="params")
        job = ShardedJob(self.plan, self.dtype, {key: np.asarray(value) for key, value in
                                                 params.items()},
                         {key: np.asarray(value) for key, value in inputs.items()},
                         self.devices)
        return self._call("run_sharded_job", job)

    def train_steps(self, params: dict[str, np.ndarray], batches: list[dict[str, np.ndarray]]
                    ) -> dict[str, Any]:
        """``K`` training steps of a step case in the worker (:func:`run_sharded_steps`);
        what optax cannot express (:class:`JaxSteps`) is not expressible before the worker
        is asked."""
        if self.steps is None:
            raise ValueError("train_steps: this configuration has no 'steps' (only a step case "
                             "says the optimizer, the clipping and the number of steps)")
        check_keys(params, self.plan.parameters, what="params")
        # The worker's chain, built here once: its options are checked before any job.
        rules = JaxSteps(self.plan, self.steps, None, contextlib.nullcontext)
        rules.transformation()
        if not isinstance(batches, (list, tuple)) or len(batches) != rules.count:
            raise ValueError(f"batches: expected a list of {rules.count} input dicts (one per "
                             f"step), got {type(batches).__name__} of "
                             f"{len(batches) if isinstance(batches, (list, tuple)) else '?'}")
        job = ShardedStepJob(self.plan, self.dtype, self.steps,
                             {key: np.asarray(value) for key, value in params.items()},
                             [{key: np.asarray(value) for key, value in inputs.items()}
                              for inputs in batches], self.devices)
        return self._call("run_sharded_steps", job)

    def _call(self, function: str, job: Any) -> Any:
        devices = self.devices
        pool = shared_pool((_POOL_KIND, devices), lambda: _sharded_worker(devices))
        return pool.call(f"{__name__}:{function}", [job], self.timeout)[0]

    def __repr__(self) -> str:
        return f"ShardedImplementation({self.dtype!r}, devices={self.devices})"


def _sharded_worker(devices: int) -> WorkerPool:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return WorkerPool(1, environment={
        "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu",
        # The worker imports what this process imports.
        "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)},
        start_timeout=_START_TIMEOUT, label=f"JAX on {devices} host devices")


def shutdown_sharded() -> None:
    """Stop the sharded mode's workers (they stop at interpreter exit anyway)."""
    close_all(_POOL_KIND)


def _padded(value: Any, multiple: int) -> np.ndarray:
    """A per-example array with copies of its first example appended until its length is a
    multiple of ``multiple`` (the sharded mode: XLA 0.10's partitioner aborts on the scatter of
    an embedding's gradient when int64 indices split unevenly; the padded examples' outputs
    are cut off before the loss, so they add exactly nothing)."""
    array = np.asarray(value)
    missing = -len(array) % multiple
    if not missing:
        return array
    return np.concatenate([array, np.repeat(array[:1], missing, axis=0)])


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
