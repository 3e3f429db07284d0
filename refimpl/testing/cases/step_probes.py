"""Optimizer convention probes: step cases that each isolate one documented convention of a
training step.

A step probe is a step case (kind "steps", name ``probe-steps-<convention>``) whose optimizer
or clipping follows refimpl's rule (PyTorch's) at a point where a documented alternative rule
gives a clearly different trajectory. Its config has, like a gradient probe's
(:mod:`.probes`), ``config["convention"] = {"name", "refimpl_rule", "isolates", "on_kink",
"resolved_in"}``.

The alternatives (:data:`STEP_PROBE_ALTERNATIVES`) are refimpl's own trajectories with one
rule changed, through the one-rule options of :mod:`refimpl.optim`:

========================================  ============================================
probe                                     the alternative rule
========================================  ============================================
``probe-steps-adam-coupled-decay``        decoupled decay (``Adam(decoupled_weight_decay=True)``)
``probe-steps-adamw-decoupled-decay``     coupled decay (``Adam`` with the same ``weight_decay``)
``probe-steps-adam-eps-outside-root``     ``eps`` inside the root: ``Adam(eps=0, eps_root=eps)``
``probe-steps-adam-bias-correction``      no bias correction: ``Adam(bias_correction=False)``
``probe-steps-clip-eps``                  no epsilon in the clip coefficient: ``eps = 0``
========================================  ============================================

A conformance run grants "convention differs" only to an implementation whose *whole*
trajectory matches one alternative's by the trajectory rule (:mod:`refimpl.testing.trajectory`,
:func:`refimpl.testing.conform.conform_case`); anything else that fails is a fail.

Nesterov's momentum has no probe: PyTorch's form, optax's ``trace(nesterov=True)`` and Keras's
``SGD(nesterov=True)`` give the same iterates for a constant learning rate
(``docs/training-steps.md``), so no trajectory of a step case can tell them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ...nn import MLP, Dense, Sequential
from ...nn.losses import MSE
from ...optim import SGD, Adam, AdamW, ClipGradNorm
from . import Case
from .mlp import model_case, model_case_at
from .steps import StepCase, step_case, with_optimizer

__all__ = ["cases", "step_alternatives", "StepRule", "StepAlternative",
           "STEP_PROBE_ALTERNATIVES", "ALL_DTYPES"]

#: Every dtype a conformance run knows, in the order ``resolved_in`` lists them.
ALL_DTYPES = ("float64", "float32", "tf32")


def _convention(name: str, rule: str, isolates: str,
                resolved_in: tuple[str, ...] = ALL_DTYPES) -> dict[str, Any]:
    """A step probe's ``config["convention"]`` (the fields of a gradient probe's);
    ``resolved_in``: the dtypes in which every alternative's trajectory differs from
    refimpl's by more than the trajectory rule's limit (``tests/test_step_cases.py`` checks
    the claim)."""
    return {"name": name, "refimpl_rule": rule, "isolates": isolates, "on_kink": False,
            "resolved_in": list(resolved_in)}


def _probe(case: StepCase, name: str, convention: dict[str, Any]) -> StepCase:
    return dataclasses.replace(case, name=name,
                               config={**case.config, "convention": convention})


def _adam_base() -> StepCase:
    """A small tanh MLP (MSE) over three batches: Adam's moments, its bias correction and its
    decay all show within three steps."""
    model = MLP([3, 4, 2], activation="tanh", loss="mse")

    def make(seed: int) -> Case:
        return model_case("probe-steps-base", "mlp", model, (3,), 4, seed=seed)
    return step_case("probe-steps-base", make(600), model, [make(601).inputs, make(602).inputs],
                     Adam(lr=0.05))


def _clip_base() -> StepCase:
    # The clip coefficient max_norm / (total_norm + 1e-6) differs from max_norm / total_norm by
    # 1e-6 / total_norm: a gradient norm near 1e-4 makes that 1% (resolved in float32), where
    # an ordinary norm near 1 would show it in float64 only. A linear model without bias on
    # inputs of size 1e-4 has such gradients (dL/dW = 2/N (W x - y) x^T, with |W x| << |y|);
    # the learning rate makes each clipped step a resolved 1e-3 move of weights near 1e-2.
    model = Sequential([Dense("fc", 3, 2, bias=False)], loss=MSE())
    rng = np.random.default_rng(610)
    params = {"fc.weight": 0.01 * rng.standard_normal((2, 3))}
    batches = [(1e-4 * rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))
               for _ in range(3)]
    base = model_case_at("probe-steps-clip-base", "mlp", model, params, *batches[0],
                         {"seed": 610})
    later = [{"x": x, "y": y} for x, y in batches[1:]]
    return step_case("probe-steps-clip-base", base, model, later, SGD(lr=100.0),
                     ClipGradNorm(1e-5))


def cases() -> list[StepCase]:
    """The step probes of the catalogue."""
    adam = _adam_base()
    return [
        _probe(with_optimizer(adam, Adam(lr=0.05, weight_decay=0.5)),
               "probe-steps-adam-coupled-decay",
               _convention("Adam's weight decay", "coupled: weight_decay * theta added to the "
                           "gradient, into both moments (torch.optim.Adam)",
                           "Adam with weight_decay = 0.5 on weights of size ~0.5")),
        _probe(with_optimizer(adam, AdamW(lr=0.05, weight_decay=0.5)),
               "probe-steps-adamw-decoupled-decay",
               _convention("AdamW's weight decay", "decoupled: theta <- theta (1 - lr "
                           "weight_decay), outside the moments (torch.optim.AdamW)",
                           "AdamW with weight_decay = 0.5 on weights of size ~0.5")),
        _probe(with_optimizer(adam, Adam(lr=0.05, eps=1e-2)),
               "probe-steps-adam-eps-outside-root",
               _convention("Adam's epsilon", "outside the square root: sqrt(v_hat) + eps "
                           "(torch.optim.Adam; optax with eps_root = 0)",
                           "Adam with eps = 1e-2, of the size of sqrt(v_hat)")),
        _probe(with_optimizer(adam, Adam(lr=0.05)),
               "probe-steps-adam-bias-correction",
               _convention("Adam's bias correction", "m_hat = m_t / (1 - beta1^t), v_hat = "
                           "v_t / (1 - beta2^t) (torch.optim.Adam, optax)",
                           "three Adam steps from zero moments")),
        _probe(_clip_base(), "probe-steps-clip-eps",
               _convention("the clip coefficient's epsilon", "max_norm / (total_norm + 1e-6), "
                           "clamped at 1 (torch.nn.utils.clip_grad_norm_)",
                           "clipping a gradient of norm ~1e-4 to 1e-5, where the 1e-6 is 1%",
                           resolved_in=("float64", "float32"))),
    ]


# --- the alternatives ------------------------------------------------------------------------

class StepRule(NamedTuple):
    """One other rule at a step probe: what it is, the probe under it (``under(case)``), and
    whether it is a documented convention (else a bug)."""

    describes: str
    under: Callable[[StepCase], StepCase]
    convention: bool


class StepAlternative(NamedTuple):
    """A rule at a step probe, as a step case: refimpl's trajectory of ``case`` is the
    alternative oracle (:func:`refimpl.testing.trajectory.reference_trajectory`)."""

    describes: str
    convention: bool
    case: StepCase


def _optimizer_changed(**changes: Any) -> Callable[[StepCase], StepCase]:
    """The probe with its optimizer's configuration changed (``name`` included)."""
    def under(case: StepCase) -> StepCase:
        config = {**case.config["steps"]["optimizer"], **changes}
        steps = {**case.config["steps"], "optimizer": config}
        changed = dataclasses.replace(case, config={**case.config, "steps": steps})
        changed.optimizer()                    # a configuration refimpl can run
        return changed
    return under


def _coupled(case: StepCase) -> StepCase:
    """AdamW's configuration with the decay coupled (Adam's rule)."""
    config = {**case.config["steps"]["optimizer"], "name": "adam",
              "decoupled_weight_decay": False}
    steps = {**case.config["steps"], "optimizer": config}
    return dataclasses.replace(case, config={**case.config, "steps": steps})


def _eps_inside(case: StepCase) -> StepCase:
    eps = case.config["steps"]["optimizer"]["eps"]
    return _optimizer_changed(eps=0.0, eps_root=eps)(case)


def _clip_without_eps(case: StepCase) -> StepCase:
    steps = {**case.config["steps"], "clip": {**case.config["steps"]["clip"], "eps": 0.0}}
    return dataclasses.replace(case, config={**case.config, "steps": steps})


#: Per step probe, the other rules it tells apart from refimpl's.
STEP_PROBE_ALTERNATIVES: dict[str, tuple[StepRule, ...]] = {
    "probe-steps-adam-coupled-decay": (StepRule(
        "decoupled weight decay: theta <- theta (1 - lr weight_decay), outside the moments "
        "(AdamW's rule; an Adam whose weight_decay decays the weights directly)",
        _optimizer_changed(decoupled_weight_decay=True), True),),
    "probe-steps-adamw-decoupled-decay": (StepRule(
        "coupled weight decay: weight_decay * theta added to the gradient, into both moments "
        "(Adam's rule: an L2 penalty, what AdamW's decoupling corrects)", _coupled, True),),
    "probe-steps-adam-eps-outside-root": (StepRule(
        "eps inside the square root: sqrt(v_hat + eps) (optax's eps_root in place of eps)",
        _eps_inside, True),),
    "probe-steps-adam-bias-correction": (StepRule(
        "no bias correction: m_hat = m_t, v_hat = v_t (Adam without the 1 - beta^t factors)",
        _optimizer_changed(bias_correction=False), True),),
    "probe-steps-clip-eps": (StepRule(
        "no epsilon: max_norm / total_norm when total_norm > max_norm "
        "(optax.clip_by_global_norm)", _clip_without_eps, True),),
}


def step_alternatives(case: Any) -> list[StepAlternative]:
    """Every other rule a step probe tells apart from refimpl's, as step cases whose
    reference trajectory is the alternative oracle.

    Parameters
    ----------
    case : StepCase
        A step probe (any other case: an empty list).

    Returns
    -------
    list of StepAlternative
        ``describes``, whether it is a documented ``convention``, and the probe under the
        rule (the same point, batches and model; the optimizer or clipping changed).

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> [alternative.describes[:24] for alternative in
    ...  step_alternatives(get_case("probe-steps-clip-eps"))]
    ['no epsilon: max_norm / t']
    """
    if not isinstance(case, StepCase) or "convention" not in case.config:
        return []
    return [StepAlternative(rule.describes, rule.convention, rule.under(case))
            for rule in STEP_PROBE_ALTERNATIVES.get(case.name, ())]
