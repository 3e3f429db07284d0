"""The distributed PyTorch adapter: every case run by N processes with ``torch.distributed``.

One builder per mode (the builder protocol of :mod:`refimpl.adapters`), usable as
``refimpl conform refimpl.adapters.torch_distributed:fsdp``:

- :func:`ddp`: ``DistributedDataParallel``; each rank computes its contiguous share of the
  batch, the gradients are all-reduced (averaged) in the backward pass; a micro-batch case
  accumulates under ``no_sync()`` and synchronises in the last micro-batch's backward pass.
- :func:`fsdp`: FSDP2's ``fully_shard``: every parameter sharded along its first axis over
  the ranks, gathered for the passes, its gradient reduce-scattered; the batch split as in
  DDP. A layer whose parameters have a single use is its own FSDP group; the parameters with
  several uses (a tied embedding and output layer, a shared kernel, a Siamese tower) stay
  with all their uses in the root group, as torch 2.13 requires (``fsdp_groups="layer"``
  asks for one group per layer, which torch refuses: *not expressible*).
- :func:`pipeline`: the layers cut into one stage per rank, activations and their
  gradients sent between the stages; a parameter used on several stages (the tied embedding
  on the first and the output layer on the last) has a copy on each, whose gradients are
  all-reduced before the step, as Megatron-LM's embedding group does.

Every mode builds the case's model from the framework-neutral plan of
:func:`refimpl.adapters.plan_case` with the single-process adapter's layers
(:data:`refimpl.adapters.torch.LAYERS`); rank 0 gathers the whole gradient of every unique
parameter and the outputs of every example, and ``impl`` returns them as NumPy arrays.

For a step case, ``impl.train_steps(params, batches)`` runs the ``K`` optimizer steps in the
ranks (:meth:`DistributedImplementation.train_steps`): each rank steps its own tensors with
``torch.optim`` (the DDP replica, FSDP's sharded DTensor parameters, a stage's copies) after
the clipping by the total norm over the unique parameters, and rank 0 gathers the whole
parameters after each step.

Processes
---------
The ranks are local processes (the gloo backend, CPU), started on the first call and kept
for the next cases (one pool per world size, :class:`refimpl.adapters._workers.WorkerPool`),
joined at a port the system picks for each pool. Every job is bounded by ``timeout`` seconds
(the parent's wait and every collective's): a rank that raises, dies or hangs makes ``impl``
raise (a failed row naming the rank and its error), its pool is killed and the next case
starts a fresh one. No process outlives the interpreter (atexit), or a parent killed outright
(each rank watches its parent).

- world size: ``make_builder(mode, world_size=N)``, else the environment variable
  ``REFIMPL_WORLD_SIZE``, else 2;
- timeout: ``make_builder(mode, timeout=seconds)``, else ``REFIMPL_DISTRIBUTED_TIMEOUT``,
  else 120.

Under ``torchrun`` (its environment: ``TORCHELASTIC_RUN_ID``, ``RANK``, ...) nothing is
started: each process torchrun started is one rank, runs the same jobs in-process, and
returns rank 0's result, so that ``torchrun --nnodes=2 ... -m refimpl conform
refimpl.adapters.torch_distributed:fsdp`` runs the catalogue over several machines.

dtypes: "float64" and "float32"; "tf32" is not expressible (gloo runs on CPUs).

Examples
--------
>>> from refimpl.adapters.torch_distributed import ddp
>>> from refimpl.testing import compare_with_oracle
>>> from refimpl.testing.cases import get_case
>>> case = get_case("microbatch-tied-hard")
>>> compare_with_oracle(ddp(case.config, "float64"), case).verdict   # starts two ranks
'pass'
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:
    import torch
    import torch.distributed as dist
except ImportError as error:
    raise ImportError("refimpl.adapters.torch_distributed needs PyTorch: "
                      "pip install 'refimpl[torch]'") from error
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover - torch builds
    raise ImportError("refimpl.adapters.torch_distributed needs a PyTorch build with "
                      "torch.distributed and the gloo backend")

from ..._validate import check_int, check_keys, check_real
from ...testing.comparison import NotExpressible, resolve_tolerance
from .._config import CasePlan, plan_case
from .._workers import WorkerError, WorkerPool, close_all, shared_pool
from . import _data_parallel, _pipeline
from ._data_parallel import FSDP_GROUPS
from ._jobs import GradientJob, StepJob, run_gradient_job, run_step_job, step_rules
from ._pipeline import PipelineLayout, pipeline_layout
from ._ranks import join_from_environment

__all__ = ["ddp", "fsdp", "pipeline", "build", "make_builder", "DistributedImplementation",
           "MODES", "FSDP_GROUPS", "DEFAULT_WORLD_SIZE", "DEFAULT_TIMEOUT",
           "WORLD_SIZE_VARIABLE", "TIMEOUT_VARIABLE", "WorkerError", "shutdown",
           "pipeline_layout", "PipelineLayout", "under_torchrun"]

FRAMEWORK, FRAMEWORK_VERSION = "torch", torch.__version__  # recorded by refimpl conform

#: The modes, each a builder of this module.
MODES = ("ddp", "fsdp", "pipeline")
#: The number of ranks without ``world_size`` or :data:`WORLD_SIZE_VARIABLE`.
DEFAULT_WORLD_SIZE = 2
#: Seconds a job may take on every rank (and every collective), without ``timeout`` or
#: :data:`TIMEOUT_VARIABLE`.
DEFAULT_TIMEOUT = 120.0
#: Seconds the ranks may take to start and join (importing torch on a busy machine).
START_TIMEOUT = 120.0
WORLD_SIZE_VARIABLE = "REFIMPL_WORLD_SIZE"
TIMEOUT_VARIABLE = "REFIMPL_DISTRIBUTED_TIMEOUT"

_HOOKS = {"ddp": _data_parallel.HOOKS, "fsdp": _data_parallel.HOOKS,
          "pipeline": _pipeline.HOOKS}
_JOBS = "refimpl.adapters.torch_distributed._jobs"
_RANKS = "refimpl.adapters.torch_distributed._ranks"
_POOL_KIND = "torch.distributed"


def ddp(config: Mapping[str, Any], dtype: Any = "float64") -> DistributedImplementation:
    """``DistributedDataParallel`` over the local ranks (module docstring); ``build`` with
    ``mode="ddp"``."""
    return build(config, dtype, mode="ddp")


def fsdp(config: Mapping[str, Any], dtype: Any = "float64") -> DistributedImplementation:
    """FSDP2 ``fully_shard`` over the local ranks, parameters with several uses in the root
    group (module docstring); ``build`` with ``mode="fsdp"``."""
    return build(config, dtype, mode="fsdp")


def pipeline(config: Mapping[str, Any], dtype: Any = "float64") -> DistributedImplementation:
    """One pipeline stage per local rank, shared parameters' copies all-reduced (module
    docstring); ``build`` with ``mode="pipeline"``."""
    return build(config, dtype, mode="pipeline")


def build(config: Mapping[str, Any], dtype: Any = "float64", *, mode: str,
          world_size: int | None = None, timeout: float | None = None,
          fsdp_groups: str = "shared", hooks: Any = None) -> DistributedImplementation:
    """A distributed implementation of the case described by ``config``.

    Parameters
    ----------
    config : dict
        A case configuration (``case.config``); unknown top-level keys are ignored.
    dtype : str
        "float64" or "float32" ("tf32" is not expressible on CPUs).
    mode : str
        One of :data:`MODES`.
    world_size : int, optional
        The number of ranks (default: :data:`WORLD_SIZE_VARIABLE`, else
        :data:`DEFAULT_WORLD_SIZE`); under ``torchrun``, torchrun's (a different value is an
        error).
    timeout : float, optional
        Seconds each call may take on every rank (default: :data:`TIMEOUT_VARIABLE`, else
        :data:`DEFAULT_TIMEOUT`).
    fsdp_groups : str
        For ``mode="fsdp"``: "shared" or "layer" (:data:`FSDP_GROUPS`).
    hooks : optional
        The mode's replaceable lines (``_data_parallel.Hooks`` or ``_pipeline.Hooks``), for
        the planted bugs of :mod:`refimpl.adapters.torch_distributed.planted`; default the
        mode's own.

    Returns
    -------
    DistributedImplementation
        ``impl(params, inputs) -> (loss, grads, outputs)``, NumPy arrays in the dtype
        under test.

    Raises
    ------
    refimpl.testing.NotExpressible
        For "tf32", or a configuration the adapters do not express.
    TypeError, ValueError
        Naming the argument, for a malformed configuration, dtype, mode, world size,
        timeout or FSDP grouping.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    dtype_name, _ = resolve_tolerance(dtype)
    world_size = _setting(world_size, WORLD_SIZE_VARIABLE, "world_size", integer=True)
    timeout = _setting(timeout, TIMEOUT_VARIABLE, "timeout", integer=False)
    if fsdp_groups not in FSDP_GROUPS:
        raise ValueError(f"fsdp_groups: expected one of {list(FSDP_GROUPS)}, got "
                         f"{fsdp_groups!r}")
    if fsdp_groups != "shared" and mode != "fsdp":
        raise ValueError(f"fsdp_groups: only mode 'fsdp' groups its layers; got "
                         f"fsdp_groups={fsdp_groups!r} with mode {mode!r}")
    hooks = _HOOKS[mode] if hooks is None else hooks
    if type(hooks) is not type(_HOOKS[mode]):
        raise TypeError(f"hooks: expected a {type(_HOOKS[mode]).__module__}."
                        f"{type(_HOOKS[mode]).__name__} for mode {mode!r}, got "
                        f"{type(hooks).__name__}")
    if dtype_name == "tf32":
        raise NotExpressible("tf32 needs a CUDA device; the distributed adapter runs on CPUs "
                             "with the gloo backend")
    plan = plan_case(config)
    return DistributedImplementation(mode, plan, dtype_name, world_size, timeout, hooks,
                                     {"groups": fsdp_groups}, steps=config.get("steps"))


def make_builder(mode: str, *, world_size: int | None = None, timeout: float | None = None,
                 fsdp_groups: str = "shared") -> Callable[..., DistributedImplementation]:
    """``build`` with its settings bound, for ``refimpl conform MODULE:FUNCTION``: a module
    of yours holding ``fsdp4 = make_builder("fsdp", world_size=4)`` runs as
    ``mymodule:fsdp4``. The settings are checked here, before any case."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if world_size is not None:
        check_int(world_size, "world_size", 1)
    if timeout is not None:
        check_real(timeout, "timeout", minimum=0)
    if fsdp_groups not in FSDP_GROUPS or (fsdp_groups != "shared" and mode != "fsdp"):
        raise ValueError(f"fsdp_groups: expected 'shared', or 'layer' with mode 'fsdp'; got "
                         f"{fsdp_groups!r} with mode {mode!r}")

    def build_distributed(config: Mapping[str, Any], dtype: Any = "float64"
                          ) -> DistributedImplementation:
        return build(config, dtype, mode=mode, world_size=world_size, timeout=timeout,
                     fsdp_groups=fsdp_groups)

    settings = [repr(mode)] + [f"{name}={value!r}" for name, value in
                               (("world_size", world_size), ("timeout", timeout),
                                ("fsdp_groups", fsdp_groups if mode == "fsdp" else None))
                               if value is not None]
    build_distributed.__qualname__ = f"make_builder({', '.join(settings)})"
    return build_distributed


def _setting(value: Any, variable: str, name: str, *, integer: bool) -> Any:
    """An explicit setting, else the environment variable's, else None (the default);
    checked."""
    if value is None and os.environ.get(variable, "").strip():
        text = os.environ[variable].strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise ValueError(f"{variable}: expected {'an integer' if integer else 'a number'}"
                             f", got {text!r}") from None
        name = variable
    if value is None:
        return None
    return check_int(value, name, 1) if integer else check_real(value, name, minimum=1e-3)


class DistributedImplementation:
    """``impl(params, inputs) -> (loss, grads, outputs)`` of one case, computed by the ranks,
    and for a step case ``impl.train_steps(params, batches)``.

    Each call is one :class:`~._jobs.GradientJob` sent to every rank; each ``train_steps``
    call one :class:`~._jobs.StepJob` (:meth:`train_steps`).

    Attributes
    ----------
    mode, dtype : str
    plan : CasePlan
    world_size : int or None
        The ranks asked for (None: torchrun's, else :data:`DEFAULT_WORLD_SIZE`).
    timeout : float or None
        Seconds per call (None: :data:`DEFAULT_TIMEOUT`).
    steps : dict or None
        A step case's ``config["steps"]`` (the optimizer, the clipping, ``K``); None for a
        gradient case.
    """

    def __init__(self, mode: str, plan: CasePlan, dtype: str, world_size: int | None,
                 timeout: float | None, hooks: Any, options: Mapping[str, Any],
                 steps: Mapping[str, Any] | None = None) -> None:
        self.mode, self.plan, self.dtype = mode, plan, dtype
        # None: not asked for (torchrun's, else the default).
        self.world_size, self.timeout = world_size, timeout
        self.hooks, self.options = hooks, dict(options)
        self.steps = None if steps is None else dict(steps)

    def __call__(self, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
                 ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
        check_keys(params, self.plan.parameters, what="params")
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs: expected a dict of arrays, got {type(inputs).__name__}")
        job = GradientJob(self.mode, self.plan, self.dtype,
                          {key: np.asarray(value) for key, value in params.items()},
                          {key: np.asarray(value) for key, value in inputs.items()},
                          self.hooks, self.options)
        return _run(job, self.world_size, self.timeout)

    def train_steps(self, params: Mapping[str, np.ndarray],
                    batches: list[Mapping[str, np.ndarray]]) -> dict[str, Any]:
        """``K`` training steps of a step case, run by the ranks (the step capability of
        :mod:`refimpl.testing.trajectory`).

        Every rank runs the mode's engine for each batch, the total gradient norm over the
        unique parameters (``ddp``: ``get_total_norm`` over ``module.parameters()``, whose
        gradients are already averaged; ``fsdp``: the same over the sharded DTensor gradients,
        an all-reduce of the shards' norms; ``pipeline``: each stage's norm over the
        parameters it holds first, all-reduced over the stages, a tied copy counted once),
        the clipping (``clip_grads_with_norm_``, the second half of ``clip_grad_norm_``) and
        ``torch.optim``'s step over its own tensors (``ddp``: the replica; ``fsdp``: the
        sharded DTensor parameters; ``pipeline``: the stage's copies, whose gradients the
        all-reduce made equal). Rank 0 gathers the whole parameters after each step.

        Parameters
        ----------
        params : dict of str to ndarray
            The starting point, keyed by unique parameter.
        batches : list of dict
            ``K`` input dicts (``K`` = ``config["steps"]["count"]``).

        Returns
        -------
        dict
            ``{"params": [K dicts of NumPy arrays], "losses": [K floats], "grad_norms": [K
            floats]}``: after every step the parameters, the loss at its start and the norm
            before clipping.

        Raises
        ------
        refimpl.testing.NotExpressible
            For an optimizer or clipping option ``torch.optim`` or ``clip_grad_norm_`` lacks
            (the single-process adapter's reasons), before any rank starts.
        ValueError
            For a configuration without ``"steps"``, or params or batches that do not fit it.
        """
        if self.steps is None:
            raise ValueError("train_steps: this configuration has no 'steps' (only a step case "
                             "says the optimizer, the clipping and the number of steps)")
        check_keys(params, self.plan.parameters, what="params")
        rules = step_rules(self.plan, self.steps, self.dtype)
        if not isinstance(batches, (list, tuple)) or len(batches) != rules.count:
            raise ValueError(f"batches: expected a list of {rules.count} input dicts (one per "
                             f"step), got {type(batches).__name__} of "
                             f"{len(batches) if isinstance(batches, (list, tuple)) else '?'}")
        for index, inputs in enumerate(batches):
            if not isinstance(inputs, Mapping):
                raise TypeError(f"batches[{index}]: expected a dict of arrays, got "
                                f"{type(inputs).__name__}")
        # The ranks' optimizer, built once here on a placeholder tensor: an option torch.optim
        # lacks is not expressible before any rank starts.
        rules.optimizer([torch.zeros(1, dtype=torch.float64, requires_grad=True)])
        clip = rules.clip_config
        if clip is not None and clip.get("eps", 1e-6) != 1e-6:
            raise NotExpressible(f"torch.nn.utils.clip_grad_norm_ divides by total_norm + 1e-6; "
                                 f"this case's clip eps is {clip['eps']!r}")
        job = StepJob(self.mode, self.plan, self.dtype, self.steps,
                      {key: np.asarray(value) for key, value in params.items()},
                      [{key: np.asarray(value) for key, value in inputs.items()}
                       for inputs in batches], self.hooks, self.options)
        return _run(job, self.world_size, self.timeout)

    def __repr__(self) -> str:
        return (f"DistributedImplementation({self.mode!r}, {self.dtype!r}, "
                f"world_size={self.world_size})")


def under_torchrun() -> bool:
    """Whether this process is a rank that ``torchrun`` started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


#: The function of ``_jobs`` that runs each kind of job.
_JOB_FUNCTIONS = {GradientJob: run_gradient_job, StepJob: run_step_job}


def _run(job: GradientJob | StepJob, world_size: int | None, timeout: float | None) -> Any:
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if under_torchrun():
        return _run_here(job, world_size, timeout)
    world_size = DEFAULT_WORLD_SIZE if world_size is None else world_size
    ranks = shared_pool((_POOL_KIND, world_size), lambda: _LocalRanks(world_size))
    return ranks.run(f"{_JOBS}:{_JOB_FUNCTIONS[type(job)].__name__}", job, timeout)


class _LocalRanks:
    """A pool of ``world_size`` local processes joined in one gloo process group."""

    def __init__(self, world_size: int) -> None:
        # The ranks import what this process imports: a builder's hooks are found by name.
        path = os.pathsep.join(entry for entry in sys.path if entry)
        self.pool = WorkerPool(world_size, environment={"PYTHONPATH": path},
                               start_timeout=START_TIMEOUT,
                               label=f"torch.distributed, {world_size} local ranks (gloo)")
        self.world_size = world_size

    def run(self, function: str, job: Any, timeout: float) -> Any:
        if not self.pool.running:
            # The ranks' own bound on a collective; the pool's wait bounds each call, and
            # kills the ranks, at the call's timeout.
            settings = {"world_size": self.world_size,
                        "timeout": max(timeout, DEFAULT_TIMEOUT)}
            port = self.pool.call(f"{_RANKS}:open_store", [settings], START_TIMEOUT,
                                  ranks=[0])[0]
            self.pool.call(f"{_RANKS}:join", [{**settings, "rank": rank, "port": port}
                                              for rank in range(self.world_size)],
                           START_TIMEOUT)
        return self.pool.call(function, [job] * self.world_size, timeout)[0]

    @property
    def running(self) -> bool:
        return self.pool.running

    def close(self) -> None:
        self.pool.close()


def _run_here(job: GradientJob | StepJob, world_size: int | None, timeout: float) -> Any:
    """Under torchrun: this process's part of the job, then every rank's outcome at every
    rank, so that all of them return rank 0's result or raise the same error."""
    join_from_environment(timeout)
    if world_size not in (None, dist.get_world_size()):
        raise ValueError(f"world_size: {world_size} ranks asked for, but torchrun started "
                         f"{dist.get_world_size()}")
    try:
        outcome: tuple[Any, ...] = ("ok", _JOB_FUNCTIONS[type(job)](job))
    except NotExpressible as reason:
        outcome = ("not expressible", str(reason))
    except Exception as error:  # noqa: BLE001 - reported by every rank alike
        outcome = ("error", f"{type(error).__name__}: {error}")
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, outcome)
    if all(kind == "ok" for kind, _ in outcomes):
        return outcomes[0][1]
    if all(kind == "not expressible" for kind, _ in outcomes):
        raise NotExpressible(outcomes[0][1])
    raise WorkerError("torchrun: " + "; ".join(f"rank {rank} raised {detail}"
                                              for rank, (kind, detail) in enumerate(outcomes)
                                              if kind == "error"))


def shutdown() -> None:
    """Stop the local ranks of every world size (they stop at interpreter exit anyway, and
    start again when next used)."""
    close_all(_POOL_KIND)
