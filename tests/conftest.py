"""Hypothesis profiles.

``default`` is sized so that the whole suite takes a few minutes on 2 cores (CI);
``HYPOTHESIS_PROFILE=thorough`` runs ten times as many examples. Numerical tests have no
deadline: their run time depends on the drawn sizes, not on a bug.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
