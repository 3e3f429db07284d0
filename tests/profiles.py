"""The Hypothesis profiles of the two tiers (registered by tests/conftest.py, which says when
each is loaded), and the scaling of a test that sets its own number of examples."""

from __future__ import annotations

from hypothesis import settings

#: Examples per property test in the default tier (``python -m pytest``).
DEFAULT_EXAMPLES = 20

#: Examples per property test in the slow tier (``python -m pytest -m slow``), and with
#: ``HYPOTHESIS_PROFILE=thorough``: ten times as many.
THOROUGH_EXAMPLES = 10 * DEFAULT_EXAMPLES


def scaled(examples: int) -> int:
    """``examples``, a count meant for the default profile, scaled to the profile loaded
    (ten times as many under the thorough one); at least 1."""
    return max(1, round(examples * settings.default.max_examples / DEFAULT_EXAMPLES))
