"""Studying gradients: where a shared parameter's gradient comes from, and why the complex step.

- :mod:`.contributions`: the labelled terms every unique parameter's gradient is the sum of
  (one per use of a shared parameter, per output position of a convolution, task and pull of
  a tied pair), computed on the model's untied twin;
- :mod:`.steps`: errors of forward, central, Richardson and complex-step derivatives against
  the analytic gradient over step sizes from 1e-1 to 1e-300.

``refimpl explain`` and ``refimpl steps`` (:mod:`refimpl.cli`) print and plot them.
"""

from .contributions import (
    LAYER_SPLITS,
    Contributions,
    LayerSplit,
    ParameterSummary,
    Parts,
    Term,
    anchored_contributions,
    model_contributions,
    pair_contributions,
    summarize,
)
from .steps import (
    EPS,
    EXPONENTS,
    METHODS,
    StepStudy,
    best_step,
    coordinate_direction,
    default_steps,
    random_direction,
    study_steps,
)

__all__ = [
    "Parts", "Term", "Contributions", "LayerSplit", "LAYER_SPLITS", "ParameterSummary",
    "model_contributions", "pair_contributions", "anchored_contributions", "summarize",
    "METHODS", "EXPONENTS", "EPS", "StepStudy", "default_steps", "coordinate_direction",
    "random_direction", "study_steps", "best_step",
]
