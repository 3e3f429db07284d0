"""The oracle kit: check *another* implementation against refimpl.

The public face, re-exported from the modules that hold it (their names may move; these
do not):

- :func:`assert_matches_oracle` / :func:`compare_with_oracle`: an implementation against
  refimpl's reference computed in the same process (:mod:`.oracle`, with the implementation
  protocol);
- :func:`assert_hvp_matches_oracle` / :func:`compare_hvp_with_oracle`: an implementation's
  Hessian-vector product ``impl.hvp(params, inputs, vector)`` against refimpl's along the
  case's seeded direction (:mod:`.second_order`: the expectation and its floors);
- :func:`assert_matches_golden` / :func:`compare_with_golden`: against a golden folder
  (:mod:`.golden` writes, reads and verifies them);
- the comparison rule, its tolerances and the three verdicts (:mod:`.comparison`), and the
  resolution floor derived from the point (:mod:`.resolution`); for a failing gradient of a
  shared, tied, recurrent, Siamese or micro-batch model, the named bug its contributions
  explain (:mod:`.diagnosis`, a :class:`Diagnosis` on the report);
- :func:`assert_steps_match_oracle` / :func:`compare_steps_with_oracle`: an implementation's
  ``train_steps`` over a step case's ``K`` optimizer steps against refimpl's trajectory
  (:mod:`.trajectory`: the comparison rule step by step, floors derived through the
  trajectory, the first step where it diverges);
- :func:`conform`: a builder ``build(config, dtype) -> impl`` over every case and dtype, one
  outcome per row (:mod:`.conform`; ``refimpl conform`` and the pytest plugin
  :mod:`.pytest_plugin` run it too);
- the catalogue of built-in cases (:mod:`.cases`; drawn cases in :mod:`.cases.drawn`) and,
  with Hypothesis installed, public strategies (:mod:`.strategies`, imported on its own:
  ``from refimpl.testing import strategies``).

Layers inside the kit, bottom to top: comparison | resolution -> cases -> trajectory |
second_order -> golden | diagnosis -> oracle -> strategies | conform -> pytest_plugin.
"""

from .comparison import (
    DTYPE_TOLERANCES,
    RESOLVED_FRACTION,
    VERDICTS,
    ComparisonReport,
    Diagnosis,
    Implementation,
    NotExpressible,
    TensorComparison,
    Tolerance,
    compare_tensor,
    resolve_tolerance,
)
from .conform import ConformanceReport, ConformanceRow, conform
from .oracle import (
    assert_hvp_matches_oracle,
    assert_matches_golden,
    assert_matches_oracle,
    compare_hvp_with_oracle,
    compare_with_golden,
    compare_with_oracle,
    unresolved_tensors,
)
from .resolution import case_floors
from .trajectory import TrajectoryReport, assert_steps_match_oracle, compare_steps_with_oracle

__all__ = [
    "assert_matches_oracle", "compare_with_oracle", "assert_matches_golden",
    "compare_with_golden", "compare_tensor", "resolve_tolerance", "case_floors",
    "unresolved_tensors", "DTYPE_TOLERANCES", "RESOLVED_FRACTION", "VERDICTS", "Tolerance",
    "Implementation", "NotExpressible", "TensorComparison", "ComparisonReport", "Diagnosis",
    "conform",
    "ConformanceReport", "ConformanceRow", "assert_steps_match_oracle",
    "compare_steps_with_oracle", "TrajectoryReport",
    "ConformanceReport", "ConformanceRow", "assert_hvp_matches_oracle",
    "compare_hvp_with_oracle",
]
