"""Hypothesis drawing helpers shared by the operation tests (not a test module)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def arrays(shape, low=-10.0, high=10.0):
    """Values in [low, high] that are 0 or of magnitude >= 1e-100: a derivative ~1e-300 would
    make the complex step's imaginary part (derivative * 1e-20) subnormal, a limit of the
    step, not of the formula under test."""
    elements = st.floats(low, high).map(lambda v: 0.0 if abs(v) < 1e-100 else v)
    return hnp.arrays(np.float64, shape, elements=elements)
