"""The PyTorch adapter: every case expressed with PyTorch's own layers and autograd.

``build(config, dtype, *, device="cpu") -> impl`` (the builder protocol of
:mod:`refimpl.adapters`). Each layer is PyTorch's: ``F.linear``, ``F.conv2d`` (groups,
dilation, padding), ``F.max_pool2d``, ``F.avg_pool2d(count_include_pad=...)``, ``F.relu``,
``F.leaky_relu``, ``F.softplus`` (PyTorch's default ``threshold=20``), ``torch.tanh``,
``torch.sigmoid``, ``F.embedding``, ``nn.RNN`` (its weights replaced through
``torch.func.functional_call``), ``F.cross_entropy``, ``F.mse_loss``; ``LocallyConnected2D`` is
``F.unfold`` followed by one ``einsum`` (PyTorch has no such layer; the unfold is its own
im2col). A Siamese model runs its tower once per branch into ``F.triplet_margin_loss`` (p = 2,
mean), or a contrastive loss written on ``F.pairwise_distance`` (PyTorch has none). Gradients
come from ``loss.backward()``: a shared or hard-tied parameter — or a tower used by every
branch — is one leaf tensor read several times, and autograd sums its uses. A micro-batch case
is a gradient-accumulation loop: per micro-batch the loss scaled by ``n_i / N`` and its
``backward()``, accumulating in ``.grad``; a penalty's ``backward()`` once per step.

``impl.hvp(params, inputs, vector)`` (the optional capability of :mod:`refimpl.testing.conform`)
is PyTorch's double backward: ``torch.autograd.grad(loss, leaves, create_graph=True)``, then
the gradient of ``<grad, vector>``, per micro-batch (each weighted by its share) and for the
penalty once, summed: the step's Hessian times ``vector``.

dtypes: "float64" and "float32" on any device; "tf32" needs a CUDA device, and runs with
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` set for the
duration of each call (restored afterwards). ``device="cuda"`` is supported in the code but
untested here (the test machine has no GPU).

Examples
--------
>>> from refimpl.adapters.torch import build
>>> from refimpl.testing import compare_with_oracle
>>> from refimpl.testing.cases import get_case
>>> case = get_case("cnn-grouped-depthwise")
>>> compare_with_oracle(build(case.config, "float64"), case).verdict
'pass'
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

try:
    import torch
    import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
    from torch.func import functional_call
except ImportError as error:
    raise ImportError("refimpl.adapters.torch needs PyTorch: pip install 'refimpl[torch]'") \
        from error

from .._validate import check_keys
from ..testing.comparison import NotExpressible, resolve_tolerance
from ._config import CasePlan, Metric, ModelPlan, Term, plan_case
from ._microbatches import micro_batches

__all__ = ["build", "make_builder", "TORCH_DTYPES"]
FRAMEWORK, FRAMEWORK_VERSION = "torch", torch.__version__  # recorded by refimpl conform

#: The torch dtype each dtype under test computes in (TF32 is float32 storage, with the
#: matrix products of tensor cores rounding their inputs to 10 mantissa bits).
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32}

Tensors = dict[str, "torch.Tensor"]


def build(config: Mapping[str, Any], dtype: Any = "float64", *, device: str = "cpu"
          ) -> Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], tuple[Any, ...]]:
    """A PyTorch implementation of the case described by ``config``.

    Parameters
    ----------
    config : dict
        A case configuration (``case.config``); unknown top-level keys are ignored.
    dtype : str
        "float64", "float32" or "tf32" (CUDA only).
    device : str
        A torch device ("cpu", "cuda", "cuda:1").

    Returns
    -------
    callable
        ``impl(params, inputs) -> (loss, grads, outputs)``: the loss a Python float, grads
        and outputs NumPy arrays in the dtype under test (float32 for "tf32"); and
        ``impl.hvp(params, inputs, vector) -> {name: array}``, the step's Hessian times
        ``vector`` by double backward.

    Raises
    ------
    refimpl.testing.NotExpressible
        For "tf32" without a CUDA device, or a configuration the adapters do not express.
    TypeError, ValueError
        Naming the argument, for a malformed configuration, dtype or device.
    """
    dtype_name, _ = resolve_tolerance(dtype)
    if not isinstance(device, str):
        raise TypeError(f"device: expected a torch device name such as 'cpu', got {device!r}")
    target = torch.device(device)
    if dtype_name == "tf32" and (target.type != "cuda" or not torch.cuda.is_available()):
        raise NotExpressible("tf32 needs a CUDA device")
    plan = plan_case(config)
    torch_dtype = TORCH_DTYPES[dtype_name]

    def impl(params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
        check_keys(params, plan.parameters, what="params")
        with _tf32(dtype_name == "tf32"):
            return _run(plan, params, inputs, torch_dtype, target)

    def hvp(params: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
            vector: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_keys(params, plan.parameters, what="params")
        check_keys(vector, plan.parameters, what="vector")
        with _tf32(dtype_name == "tf32"):
            return _hvp(plan, params, inputs, vector, torch_dtype, target)

    impl.hvp = hvp
    return impl


def make_builder(device: str = "cpu") -> Callable[..., Any]:
    """``build`` bound to one device, for ``refimpl conform MODULE:FUNCTION``: a module of
    yours holding ``build_cuda = make_builder("cuda")`` is run as ``mymodule:build_cuda``."""
    def build_on_device(config: Mapping[str, Any], dtype: Any = "float64") -> Callable:
        return build(config, dtype, device=device)

    return build_on_device


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 tensor-core products on (when ``enabled``) for the duration of one call."""
    if not enabled:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         dtype: torch.dtype, device: torch.device) -> tuple[float, dict, dict]:
    """One training step's loss and gradients, as a PyTorch loop writes gradient accumulation:
    per micro-batch (the whole batch when there are none) the forward passes, the loss scaled
    by its share ``n_i / N`` and ``backward()``, accumulating in ``.grad``; then the penalty
    and its ``backward()`` once. NumPy results."""
    leaves = {key: _tensor(params[key], dtype, device).requires_grad_(True)
              for key in plan.parameters}
    total, outputs = 0.0, {}
    for batch in micro_batches(plan, inputs):
        data = {key: _tensor(value, dtype, device) for key, value in batch.inputs.items()}
        outs = {run.output: _forward(run.model, leaves, data[run.input]) for run in plan.runs}
        if plan.metric is not None:       # Siamese: one metric loss of every branch's output
            loss = batch.weights[0] * _metric_loss(
                plan.metric, [outs[run.output] for run in plan.runs], data)
        else:
            loss = sum(weight * _loss(run.model.loss, outs[run.output],
                                      next(data[key] for key in run.targets if key in data))
                       for run, weight in zip(plan.runs, batch.weights, strict=True))
        loss.backward()
        total += loss.item()
        outputs.update({name + batch.suffix: out.detach().cpu().numpy()
                        for name, out in outs.items()})
    if plan.terms:
        # The penalty depends on the parameters only: once per step, not per micro-batch.
        references = {term.other: _tensor(inputs[term.other], dtype, device)
                      for term in plan.terms if term.from_inputs and term.other in inputs}
        penalty = sum(_penalty(plan.penalty, term, leaves, references) for term in plan.terms)
        penalty.backward()
        total += penalty.item()
    # A parameter no layer reads has no autograd gradient; its gradient is zero.
    grads = {key: (leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
             .detach().cpu().numpy() for key, leaf in leaves.items()}
    return total, grads, outputs


def _step_losses(plan: CasePlan, leaves: Tensors, inputs: Mapping[str, np.ndarray],
                 dtype: torch.dtype, device: torch.device) -> Iterator[torch.Tensor]:
    """The terms of one step's loss, as :func:`_run` adds them: each micro-batch's loss
    scaled by its share ``n_i / N``, then the penalty (once)."""
    for batch in micro_batches(plan, inputs):
        data = {key: _tensor(value, dtype, device) for key, value in batch.inputs.items()}
        outs = {run.output: _forward(run.model, leaves, data[run.input]) for run in plan.runs}
        if plan.metric is not None:
            yield batch.weights[0] * _metric_loss(
                plan.metric, [outs[run.output] for run in plan.runs], data)
        else:
            yield sum(weight * _loss(run.model.loss, outs[run.output],
                                     next(data[key] for key in run.targets if key in data))
                      for run, weight in zip(plan.runs, batch.weights, strict=True))
    if plan.terms:
        references = {term.other: _tensor(inputs[term.other], dtype, device)
                      for term in plan.terms if term.from_inputs and term.other in inputs}
        yield sum(_penalty(plan.penalty, term, leaves, references) for term in plan.terms)


def _hvp(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         vector: Mapping[str, np.ndarray], dtype: torch.dtype, device: torch.device
         ) -> dict[str, np.ndarray]:
    """The step's Hessian times ``vector`` by double backward: for each term of the loss,
    ``g = grad(term, create_graph=True)`` and ``grad(<g, vector>)``, summed over the terms
    (a parameter a term does not reach contributes 0 there). NumPy results."""
    keys = list(plan.parameters)
    leaves = {key: _tensor(params[key], dtype, device).requires_grad_(True) for key in keys}
    tangent = {key: _tensor(vector[key], dtype, device) for key in keys}
    total = {key: torch.zeros_like(leaf) for key, leaf in leaves.items()}
    for term in _step_losses(plan, leaves, inputs, dtype, device):
        grads = torch.autograd.grad(term, [leaves[key] for key in keys], create_graph=True,
                                    allow_unused=True)
        inner = sum((grad * tangent[key]).sum() for key, grad in zip(keys, grads, strict=True)
                    if grad is not None)
        if not torch.is_tensor(inner) or not inner.requires_grad:
            continue                 # the term is linear in every parameter: H = 0
        products = torch.autograd.grad(inner, [leaves[key] for key in keys], allow_unused=True)
        for key, product in zip(keys, products, strict=True):
            if product is not None:
                total[key] = total[key] + product
    return {key: value.detach().cpu().numpy() for key, value in total.items()}


def _tensor(value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A float array as a fresh tensor of ``dtype``; integer arrays (labels, indices) keep
    their int64."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return torch.tensor(array, dtype=dtype, device=device)
    return torch.tensor(array, dtype=torch.int64, device=device)


def _forward(model: ModelPlan, leaves: Tensors, x: torch.Tensor) -> torch.Tensor:
    for step in model.layers:
        slots = {local: leaves[use.key].T if use.transpose else leaves[use.key]
                 for local, use in step.params.items()}
        x = LAYERS[step.type](x, slots, step.options)
    return x


def _loss(loss: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if loss == "SoftmaxCrossEntropy":
        # Logits (..., K), labels (...): the mean over every label position.
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
    return F.mse_loss(out, target)


def _metric_loss(metric: Metric, embeddings: list[torch.Tensor], data: Tensors
                 ) -> torch.Tensor:
    """``F.triplet_margin_loss`` (p = 2, swap off, mean), or the contrastive loss on
    ``F.pairwise_distance``: ``mean(y d^2 + (1 - y) relu(margin - d)^2)``."""
    if metric.type == "TripletMarginLoss":
        return F.triplet_margin_loss(*embeddings, margin=metric.margin, p=2, eps=metric.eps)
    distance = F.pairwise_distance(*embeddings, p=2, eps=metric.eps)        # (N,)
    similar = data[metric.target].to(distance.dtype)                        # (N,) 1 or 0
    return torch.mean(similar * distance ** 2
                      + (1 - similar) * F.relu(metric.margin - distance) ** 2)


def _penalty(penalty: str | None, term: Term, leaves: Tensors, data: Tensors) -> torch.Tensor:
    """``lam * sum (w - other)^2`` or ``lam * sum |w - other|`` (``torch.abs``)."""
    w = leaves[term.key]
    if term.from_inputs:
        other = data.get(term.other, torch.zeros_like(w))
    else:
        other = leaves[term.other].T if term.transpose else leaves[term.other]
    difference = w - other
    size = difference.pow(2) if penalty == "l2" else torch.abs(difference)
    return term.lam * size.sum()


# --- layers: (x, {local name: tensor}, options) -> output -----------------------------------

def _conv2d(x: torch.Tensor, p: Tensors, o: Mapping[str, Any]) -> torch.Tensor:
    return F.conv2d(x, p["weight"], p.get("bias"), stride=o["stride"], padding=o["padding"],
                    dilation=o["dilation"], groups=o["groups"])


def _locally_connected2d(x: torch.Tensor, p: Tensors, o: Mapping[str, Any]) -> torch.Tensor:
    """``F.unfold`` (channel-major columns ``(c, i, j)``) and one einsum per position."""
    weight, groups = p["weight"], o["groups"]                  # (Ho, Wo, F, Cg, kH, kW)
    out_h, out_w, filters = weight.shape[:3]
    cols = F.unfold(x, o["kernel_size"], dilation=o["dilation"], padding=o["padding"],
                    stride=o["stride"])                        # (N, C*kH*kW, Ho*Wo)
    cols = cols.reshape(x.shape[0], groups, -1, out_h, out_w)  # (N, G, Kg, Ho, Wo)
    kernels = weight.reshape(out_h, out_w, groups, filters // groups, -1)  # (Ho, Wo, G, Fg, Kg)
    out = torch.einsum("ngkhw,hwgfk->ngfhw", cols, kernels)
    out = out.reshape(x.shape[0], filters, out_h, out_w)       # (N, F, Ho, Wo)
    return out + p["bias"] if "bias" in p else out


def _rnn(x: torch.Tensor, p: Tensors, o: Mapping[str, Any]) -> torch.Tensor:
    """``nn.RNN`` (batch first, h0 = 0) running on the given tensors: (N, T, D) -> (N, T, H)."""
    # A module on the meta device allocates nothing and draws nothing from torch's global
    # generator; functional_call runs it on the given tensors, on their device.
    module = torch.nn.RNN(o["input_size"], o["hidden_size"], nonlinearity=o["nonlinearity"],
                          bias=o["bias"], batch_first=True, device="meta", dtype=x.dtype)
    weights = {f"{local}_l0": tensor for local, tensor in p.items()}
    return functional_call(module, weights, (x,))[0]


LAYERS: dict[str, Callable[[torch.Tensor, Tensors, Mapping[str, Any]], torch.Tensor]] = {
    "Dense": lambda x, p, o: F.linear(x, p["weight"], p.get("bias")),
    "Conv2D": _conv2d,
    "LocallyConnected2D": _locally_connected2d,
    "Embedding": lambda x, p, o: F.embedding(x, p["weight"]),
    "RNN": _rnn,
    "LastStep": lambda x, p, o: x[:, -1],
    "ReLU": lambda x, p, o: F.relu(x),
    "LeakyReLU": lambda x, p, o: F.leaky_relu(x, o["negative_slope"]),
    "Tanh": lambda x, p, o: torch.tanh(x),
    "Sigmoid": lambda x, p, o: torch.sigmoid(x),
    "Softplus": lambda x, p, o: F.softplus(x),
    "Identity": lambda x, p, o: x,
    "MaxPool2D": lambda x, p, o: F.max_pool2d(x, o["kernel_size"], o["stride"], o["padding"]),
    "AvgPool2D": lambda x, p, o: F.avg_pool2d(x, o["kernel_size"], o["stride"], o["padding"],
                                              count_include_pad=o["count_include_pad"]),
    "Flatten": lambda x, p, o: torch.flatten(x, 1),
}
