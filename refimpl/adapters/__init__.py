"""Adapters: builders that express refimpl's cases in another framework, with its own layers.

An **adapter** turns a case configuration (``case.config`` of every catalogue case, the golden
manifest's ``cases[name]["config"]``) into an implementation under test written with a
framework's *own* operations and autodiff — ``torch.nn.functional.conv2d`` and
``loss.backward()``, ``jax.lax.conv_general_dilated`` and ``jax.value_and_grad`` — so that
:func:`refimpl.testing.compare_with_oracle` (or ``refimpl conform``) checks that framework
against refimpl's hand-written gradients. Nothing is patched to agree with refimpl: where a
framework follows another convention (JAX's leaky ReLU at 0, for instance) the comparison
shows it.

The adapters' builders
----------------------
::

    build(config: dict, dtype: str) -> impl
    impl(params, inputs) -> (loss, grads, outputs)
    impl.hvp(params, inputs, vector) -> {name: array}    # the step's Hessian times vector

``dtype`` is "float64", "float32" or "tf32"; ``impl`` follows the implementation protocol of
:mod:`refimpl.testing.oracle` (params keyed like a ``state_dict``, ``"A:"`` / ``"B:"`` for a
tied pair; inputs ``x``, ``y`` / ``xa``, ``ya``, ``xb``, ``yb`` / ``w0:<name>`` / ``anchor``,
``positive``, ``negative`` or ``x1``, ``x2``, ``y`` for a Siamese model / ``<name>.<i>`` for
micro-batch ``i`` of a step) and returns NumPy arrays of the dtype under test and the loss as a
Python float. ``impl.hvp`` (the optional second-order capability of
:mod:`refimpl.testing.conform`) returns the Hessian of that loss times ``vector`` (keyed like
``params``): PyTorch's double backward, JAX's ``jax.jvp`` of ``jax.grad``. A micro-batch case's
``impl`` returns the *step*: each micro-batch's loss weighted by its share ``n_i / N`` of the
batch, its gradients accumulated over the micro-batches by the framework's own backward pass, a
penalty counted once. A builder raises :class:`refimpl.testing.NotExpressible` for what its
framework cannot express (TF32 without a GPU), never a wrong answer.

- :mod:`refimpl.adapters.torch`: ``build(config, dtype, *, device="cpu")`` (PyTorch, the
  ``torch`` extra);
- :mod:`refimpl.adapters.jax`: ``build(config, dtype, *, device="cpu")`` (JAX, the ``jax``
  extra), and ``sharded`` (the same on N host CPU devices, in a worker process);
- :mod:`refimpl.adapters.torch_distributed`: ``ddp``, ``fsdp``, ``pipeline`` (N local
  processes with ``torch.distributed`` and gloo, the ``torch`` extra; docs/distributed.md);
- ``refimpl.adapters.torch_names.TorchNames(model, module)``: for your own PyTorch module,
  refimpl's parameter names and the module's, both ways, for params and gradients (a tied
  slot, ``nn.RNN``'s ``_l0`` names), every name, shape and tie checked (the ``torch`` extra).

Importing this package imports no framework; importing an adapter without its framework is
an ``ImportError`` saying which extra to install.

Writing your own
----------------
Start from :mod:`refimpl.adapters._config`: :func:`~refimpl.adapters._config.plan_case` parses
every config into a framework-neutral :class:`~refimpl.adapters._config.CasePlan` — the runs
(model, input, target, output name), the penalty terms and the exact parameter keys, with
every sharing chain and hard tie already resolved to "which key, transposed or not", a
Siamese model's metric loss, a micro-batch case's sizes; and
:func:`~refimpl.adapters.micro_batches` splits a step's inputs into
micro-batches with their weights. An adapter is then one function per layer type (``Dense``,
``Conv2D``, ``MaxPool2D``, ...), one per loss and one per penalty, and a walk over the plan
and its micro-batches: copy ``refimpl/adapters/torch.py``
and replace each framework call with yours (a CUDA kernel behind a Python binding, a C++
library through ``ctypes``, another autodiff framework).
"""

from ._config import CasePlan, plan_case
from ._microbatches import MicroBatch, micro_batches

__all__ = ["plan_case", "CasePlan", "micro_batches", "MicroBatch"]
