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

from .._validate import check_int, check_keys
from ..testing.comparison import NotExpressible, resolve_tolerance
from ._config import CasePlan, Metric, ModelPlan, Run, Term, Use, plan_case
from ._implementation import BuiltImplementation
from ._microbatches import MicroBatch, micro_batches

__all__ = ["build", "make_builder", "TORCH_DTYPES", "TorchImplementation", "TorchSteps"]
FRAMEWORK, FRAMEWORK_VERSION = "torch", torch.__version__  # recorded by refimpl conform

#: The torch dtype each dtype under test computes in (TF32 is float32 storage, with the
#: matrix products of tensor cores rounding their inputs to 10 mantissa bits).
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32}

Tensors = dict[str, "torch.Tensor"]


def build(config: Mapping[str, Any], dtype: Any = "float64", *, device: str = "cpu",
          trainer: type[TorchSteps] | None = None) -> TorchImplementation:
    """A PyTorch implementation of the case described by ``config``.

    Parameters
    ----------
    config : dict
        A case configuration (``case.config``); unknown top-level keys are ignored but
        ``"steps"`` (a step case: the optimizer, the clipping, the number of steps).
    dtype : str
        "float64", "float32" or "tf32" (CUDA only).
    device : str
        A torch device ("cpu", "cuda", "cuda:1").
    trainer : type, optional
        The training loop of ``impl.train_steps`` (default :class:`TorchSteps`); a subclass
        changes one of its steps (``tests/test_planted_steps.py`` plants the public bugs of
        training steps this way).

    Returns
    -------
    TorchImplementation
        ``impl(params, inputs) -> (loss, grads, outputs)``: the loss a Python float, grads
        and outputs NumPy arrays in the dtype under test (float32 for "tf32");
        ``impl.hvp(params, inputs, vector) -> {name: array}``, the step's Hessian times
        ``vector`` by double backward; and, for a step case,
        ``impl.train_steps(params, batches)`` (:class:`TorchSteps`).

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

    steps = None
    if config.get("steps") is not None:
        steps = (trainer or TorchSteps)(plan, config["steps"], torch_dtype, target,
                                        tf32=dtype_name == "tf32")
    return TorchImplementation(impl, steps, hvp)


def make_builder(device: str = "cpu") -> Callable[..., Any]:
    """``build`` bound to one device, for ``refimpl conform MODULE:FUNCTION``: a module of
    yours holding ``build_cuda = make_builder("cuda")`` is run as ``mymodule:build_cuda``."""
    def build_on_device(config: Mapping[str, Any], dtype: Any = "float64"
                        ) -> TorchImplementation:
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


class TorchImplementation(BuiltImplementation):
    """What :func:`build` returns (:class:`~refimpl.adapters._implementation.BuiltImplementation`):
    ``hvp`` by double backward, ``train_steps`` with ``torch.optim`` (a :class:`TorchSteps`)."""


#: A slot of a layer: ``(model, layer index, local name)``, the model numbered in the order of
#: the plan's runs (a Siamese tower, run once per branch, is one model).
Slot = tuple[int, int, str]


def _unique(tensors: Any) -> list[torch.Tensor]:
    """The tensors without repeats, by identity, in order of first appearance (what
    ``nn.Module.parameters()`` yields for a module whose layers share a ``Parameter``)."""
    seen: set[int] = set()
    unique = []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique.append(tensor)
    return unique


class TorchSteps:
    """``K`` training steps with PyTorch's own loop: ``loss.backward()`` per micro-batch,
    ``torch.optim`` and ``clip_grad_norm_``.

    A step, as a PyTorch training loop writes it (gradient accumulation over the micro-batches
    of the step, the whole batch when there are none)::

        for index, micro-batch in enumerate(all micro-batches of all steps):
            (share * loss(micro-batch)).backward()            # .grad accumulates
            if (index + 1) % per_step == 0:                   # the step's last micro-batch
                penalty.backward()                            # a tying / anchoring term, once
                norm = get_total_norm(grads)                  # clip_grad_norm_'s first half
                clip_grads_with_norm_(params, max_norm, norm) # its second half (if clipping)
                optimizer.step(); optimizer.zero_grad()

    ``torch.nn.utils.clip_grad_norm_`` is exactly ``get_total_norm`` followed by
    ``clip_grads_with_norm_``; its halves are called so that the norm is measured (and
    returned) with or without clipping. The optimizer is ``torch.optim.SGD``, ``Adam`` or
    ``AdamW`` with the configuration's hyper-parameters; refimpl's options beyond PyTorch's
    (``eps_root``, ``bias_correction=False``, a clip ``eps`` other than 1e-6) are
    :class:`refimpl.testing.NotExpressible`.

    The parameters live as PyTorch holds them: one leaf tensor per unique parameter, and every
    layer slot holding the leaf it reads (a shared or tied slot holds the same tensor as its
    source). Each of the lines a training loop gets wrong with shared weights is one method
    (:meth:`held`, :meth:`optimized`, :meth:`optimizers`, :meth:`normed`, :meth:`boundary`),
    so that a subclass changes one line (``tests/test_planted_steps.py``).

    Parameters
    ----------
    plan : CasePlan
        The case's plan (:func:`refimpl.adapters.plan_case`).
    steps : dict
        The case's ``config["steps"]``: ``{"optimizer", "clip", "count", ...}``.
    dtype : torch.dtype
    device : torch.device
    tf32 : bool
        TF32 products for the duration of :meth:`train_steps`.
    """

    def __init__(self, plan: CasePlan, steps: Mapping[str, Any], dtype: torch.dtype,
                 device: torch.device, tf32: bool = False) -> None:
        check_keys(steps, ["optimizer", "clip", "count"], ["case_kind"], what="config['steps']")
        self.plan, self.dtype, self.device, self.tf32 = plan, dtype, device, tf32
        self.optimizer_config = dict(steps["optimizer"])
        self.clip_config = None if steps["clip"] is None else dict(steps["clip"])
        self.count = check_int(steps["count"], "config['steps']['count']", 1)
        models: list[ModelPlan] = []
        for run in plan.runs:
            if not any(model is run.model for model in models):
                models.append(run.model)
        self.models = models
        #: Every slot and the parameter it reads, in the order of the layers.
        self.slots: dict[Slot, Use] = {
            (number, index, local): use for number, model in enumerate(models)
            for index, step in enumerate(model.layers) for local, use in step.params.items()}

    # --- the lines a training loop can get wrong, one method each ---------------------------

    def held(self, leaves: Tensors) -> dict[Slot, torch.Tensor]:
        """The tensor each layer slot holds: its unique parameter's leaf (a tie is one
        tensor held by two slots)."""
        return {slot: leaves[use.key] for slot, use in self.slots.items()}

    def optimized(self, held: Mapping[Slot, torch.Tensor]) -> list[torch.Tensor]:
        """The parameters handed to the optimizer: each held tensor once."""
        return _unique(held.values())

    def optimizers(self, held: Mapping[Slot, torch.Tensor], optimized: list[torch.Tensor]
                   ) -> list[torch.optim.Optimizer]:
        """One optimizer over every parameter."""
        return [self.optimizer(optimized)]

    def normed(self, held: Mapping[Slot, torch.Tensor], optimized: list[torch.Tensor]
               ) -> list[torch.Tensor]:
        """The parameters whose gradients the total norm is taken over: each held tensor
        once (as ``clip_grad_norm_(module.parameters(), ...)`` sees them)."""
        return _unique(held.values())

    def boundary(self, index: int, per_step: int) -> bool:
        """Whether micro-batch ``index`` (counted over the whole run) ends a step: the last
        micro-batch of each step."""
        return (index + 1) % per_step == 0

    # --- the loop -------------------------------------------------------------------------------

    def optimizer(self, parameters: list[torch.Tensor]) -> torch.optim.Optimizer:
        """``torch.optim.SGD``, ``Adam`` or ``AdamW`` over ``parameters``, configured."""
        config = self.optimizer_config
        name = config.get("name")
        if name == "sgd":
            return torch.optim.SGD(parameters, lr=config["lr"], momentum=config["momentum"],
                                   dampening=config["dampening"],
                                   weight_decay=config["weight_decay"],
                                   nesterov=config["nesterov"])
        if name not in ("adam", "adamw"):
            raise NotExpressible(f"config['steps']['optimizer']: torch.optim has no optimizer "
                                 f"named {name!r} here")
        if config.get("eps_root", 0.0) != 0.0:
            raise NotExpressible("torch.optim's Adam has no eps_root (an epsilon inside the "
                                 "square root, optax's)")
        if not config.get("bias_correction", True):
            raise NotExpressible("torch.optim's Adam always corrects its moments' bias")
        options = {"lr": config["lr"], "betas": tuple(config["betas"]), "eps": config["eps"],
                   "weight_decay": config["weight_decay"], "amsgrad": config["amsgrad"]}
        if name == "adamw":
            return torch.optim.AdamW(parameters, **options)
        return torch.optim.Adam(parameters, **options,
                                decoupled_weight_decay=config["decoupled_weight_decay"])

    def train_steps(self, params: Mapping[str, np.ndarray], batches: list[Mapping[str, Any]]
                    ) -> dict[str, Any]:
        """Run the ``K`` steps from ``params`` on ``batches`` (one input dict per step).

        Returns
        -------
        dict
            ``{"params": [K dicts of NumPy arrays], "losses": [K floats], "grad_norms": [K
            floats]}``: after every step, the parameters (read from the first slot that holds
            each), the loss at the start of the step and the norm before clipping.
        """
        check_keys(params, self.plan.parameters, what="params")
        if not isinstance(batches, (list, tuple)) or len(batches) != self.count:
            raise ValueError(f"batches: expected a list of {self.count} input dicts (one per "
                             f"step), got {type(batches).__name__} of "
                             f"{len(batches) if isinstance(batches, (list, tuple)) else '?'}")
        clip = self.clip_config
        if clip is not None and clip.get("eps", 1e-6) != 1e-6:
            raise NotExpressible(f"torch.nn.utils.clip_grad_norm_ divides by total_norm + 1e-6; "
                                 f"this case's clip eps is {clip['eps']!r}")
        with _tf32(self.tf32):
            return self._loop(params, batches)

    def _loop(self, params: Mapping[str, np.ndarray], batches: list[Mapping[str, Any]]
              ) -> dict[str, Any]:
        leaves = {key: _tensor(params[key], self.dtype, self.device).requires_grad_(True)
                  for key in self.plan.parameters}
        held = self.held(leaves)
        owners: dict[str, torch.Tensor] = {}       # each parameter's tensor: its first slot's
        for slot, use in self.slots.items():
            owners.setdefault(use.key, held[slot])
        optimized = self.optimized(held)
        optimizers = self.optimizers(held, optimized)
        numbers = {id(run.model): next(n for n, m in enumerate(self.models) if m is run.model)
                   for run in self.plan.runs}

        def read_of(run: Run) -> Reader:
            number = numbers[id(run.model)]
            return lambda index, local, use: held[number, index, local]

        micro = [(k, batch) for k, inputs in enumerate(batches)
                 for batch in micro_batches(self.plan, inputs)]
        per_step = len(micro) // self.count
        result: dict[str, list[Any]] = {"params": [], "losses": [], "grad_norms": []}
        total = 0.0
        for index, (k, batch) in enumerate(micro):
            loss, _ = _batch_loss(self.plan, read_of, batch, self.dtype, self.device)
            loss.backward()
            total += loss.item()
            if not self.boundary(index, per_step):
                continue
            penalty = _total_penalty(self.plan, owners, batches[k], self.dtype, self.device)
            if penalty is not None:
                penalty.backward()
                total += penalty.item()
            for tensor in _unique(held.values()):   # a tensor no loss reads: a zero gradient
                if tensor.grad is None:
                    tensor.grad = torch.zeros_like(tensor)
            norm = self._norm_and_clip(held, optimized)
            for optimizer in optimizers:
                optimizer.step()
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            result["params"].append({key: tensor.detach().cpu().numpy().copy()
                                     for key, tensor in owners.items()})
            result["losses"].append(total)
            result["grad_norms"].append(norm)
            total = 0.0
        return result

    def _norm_and_clip(self, held: Mapping[Slot, torch.Tensor], optimized: list[torch.Tensor]
                       ) -> float:
        """The total norm before clipping, and the clipping: ``clip_grad_norm_`` in its two
        halves."""
        clip = self.clip_config
        norm_type = 2.0 if clip is None else clip.get("norm_type", 2.0)
        norm_type = float("inf") if norm_type == "inf" else float(norm_type)
        grads = [tensor.grad for tensor in self.normed(held, optimized)]
        norm = torch.nn.utils.get_total_norm(grads, norm_type)
        if clip is not None:
            # every held tensor's gradient scaled once, whatever the optimizers hold
            torch.nn.utils.clip_grads_with_norm_(_unique(held.values()), clip["max_norm"], norm)
        return float(norm)


def _run(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         dtype: torch.dtype, device: torch.device) -> tuple[float, dict, dict]:
    """One training step's loss and gradients, as a PyTorch loop writes gradient accumulation:
    per micro-batch (the whole batch when there are none) the forward passes, the loss scaled
    by its share ``n_i / N`` and ``backward()``, accumulating in ``.grad``; then the penalty
    and its ``backward()`` once. NumPy results."""
    leaves = {key: _tensor(params[key], dtype, device).requires_grad_(True)
              for key in plan.parameters}
    read = _reader(leaves)
    total, outputs = 0.0, {}
    for batch in micro_batches(plan, inputs):
        loss, outs = _batch_loss(plan, lambda run: read, batch, dtype, device)
        loss.backward()
        total += loss.item()
        outputs.update({name + batch.suffix: out.detach().cpu().numpy()
                        for name, out in outs.items()})
    penalty = _total_penalty(plan, leaves, inputs, dtype, device)
    if penalty is not None:
        penalty.backward()
        total += penalty.item()
    # A parameter no layer reads has no autograd gradient; its gradient is zero.
    grads = {key: (leaf.grad if leaf.grad is not None else torch.zeros_like(leaf))
             .detach().cpu().numpy() for key, leaf in leaves.items()}
    return total, grads, outputs


def _batch_loss(plan: CasePlan, read_of: Callable[[Run], Reader], batch: MicroBatch,
                dtype: torch.dtype, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's loss, scaled by its share ``n_i / N``, and the runs' outputs; each
    run's layers read their tensors through ``read_of(run)``."""
    data = {key: _tensor(value, dtype, device) for key, value in batch.inputs.items()}
    outs = {run.output: _forward(run.model, read_of(run), data[run.input]) for run in plan.runs}
    if plan.metric is not None:       # Siamese: one metric loss of every branch's output
        loss = batch.weights[0] * _metric_loss(
            plan.metric, [outs[run.output] for run in plan.runs], data)
    else:
        loss = sum(weight * _loss(run.model.loss, outs[run.output],
                                  next(data[key] for key in run.targets if key in data))
                   for run, weight in zip(plan.runs, batch.weights, strict=True))
    return loss, outs


def _total_penalty(plan: CasePlan, tensors: Tensors, inputs: Mapping[str, Any],
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The penalty terms of a step (None without any): they depend on the parameters only, so
    a step adds them once, not once per micro-batch."""
    if not plan.terms:
        return None
    references = {term.other: _tensor(inputs[term.other], dtype, device)
                  for term in plan.terms if term.from_inputs and term.other in inputs}
    return sum(_penalty(plan.penalty, term, tensors, references) for term in plan.terms)


def _hvp(plan: CasePlan, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
         vector: Mapping[str, np.ndarray], dtype: torch.dtype, device: torch.device
         ) -> dict[str, np.ndarray]:
    """The step's Hessian times ``vector`` by double backward: for each term of the loss (each
    micro-batch's loss scaled by its share ``n_i / N``, then the penalty once, as :func:`_run`
    adds them), ``g = grad(term, create_graph=True)`` and ``grad(<g, vector>)``, summed over the
    terms (a parameter a term does not reach contributes 0 there). NumPy results."""
    keys = list(plan.parameters)
    leaves = {key: _tensor(params[key], dtype, device).requires_grad_(True) for key in keys}
    tangent = {key: _tensor(vector[key], dtype, device) for key in keys}
    total = {key: torch.zeros_like(leaf) for key, leaf in leaves.items()}
    read = _reader(leaves)
    terms = [_batch_loss(plan, lambda run: read, batch, dtype, device)[0]
             for batch in micro_batches(plan, inputs)]
    penalty = _total_penalty(plan, leaves, inputs, dtype, device)
    for term in terms + ([penalty] if penalty is not None else []):
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


#: ``read(layer index, local name, use) -> tensor``: the tensor a layer holds for a slot.
Reader = Callable[[int, str, Use], "torch.Tensor"]


def _reader(leaves: Tensors) -> Reader:
    """Every slot reads the leaf of its unique parameter: a shared or tied slot is one tensor
    read several times."""
    return lambda index, local, use: leaves[use.key]


def _forward(model: ModelPlan, read: Reader | Tensors, x: torch.Tensor) -> torch.Tensor:
    """The model's layers on ``x``; each slot's tensor from ``read`` (or, given the leaves
    keyed by unique parameter, the leaf of the parameter it reads)."""
    if isinstance(read, Mapping):
        read = _reader(read)
    for index, step in enumerate(model.layers):
        slots = {}
        for local, use in step.params.items():
            tensor = read(index, local, use)
            slots[local] = tensor.T if use.transpose else tensor
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
