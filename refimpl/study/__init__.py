"""Studying gradients: where a shared parameter's gradient comes from, and why the complex step.

- :mod:`.contributions`: the labelled terms every unique parameter's gradient is the sum of
  (one per use of a shared parameter, task and pull of a tied pair), computed on the model's
  untied twin; :mod:`.splits`: the uses inside one layer (a convolution's output positions, an
  RNN's time steps, an embedding's occurrences); :mod:`.forms`: per Siamese branch and per
  micro-batch; :mod:`.summary`: their norms, shares and cosines, an embedding's top rows;
- :mod:`.curvature`: second order, where the curvature comes from: a parameter's ``v^T H v``
  split into its uses' diagonal blocks, the cross terms between uses and a penalty's share;
- :mod:`.steps`: errors of forward, central, Richardson and complex-step derivatives against
  the analytic gradient over step sizes from 1e-1 to 1e-300.

``refimpl explain`` (``--hessian`` for :mod:`.curvature`) and ``refimpl steps``
(:mod:`refimpl.cli`) print and plot them.
"""

from .contributions import (
    Contributions,
    Term,
    anchored_contributions,
    model_contributions,
    pair_contributions,
)
from .curvature import Curvature, CurvatureTerm, model_curvature
from .forms import microbatch_contributions, siamese_contributions
from .splits import LAYER_SPLITS, LayerSplit, Parts
from .steps import (
    EPS,
    EXPONENTS,
    METHODS,
    StepStudy,
    best_step,
    converges,
    coordinate_direction,
    default_steps,
    random_direction,
    study_steps,
)
from .summary import ParameterSummary, RowSummary, row_summary, summarize

__all__ = [
    "Parts", "Term", "Contributions", "LayerSplit", "LAYER_SPLITS", "ParameterSummary",
    "model_contributions", "pair_contributions", "anchored_contributions",
    "siamese_contributions", "microbatch_contributions", "summarize", "RowSummary",
    "row_summary", "Curvature", "CurvatureTerm", "model_curvature",
    "METHODS", "EXPONENTS", "EPS", "StepStudy", "default_steps", "coordinate_direction",
    "random_direction", "study_steps", "best_step", "converges",
]
