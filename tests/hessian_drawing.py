"""Drawing helpers of the second-order tests (not a test module): a drawn case's model, data
and micro-batches, rebuilt from its configuration, and drawn anchored models."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from refimpl import AnchoredModel
from refimpl.testing import strategies as rs
from refimpl.testing.cases import Case
from refimpl.testing.cases.models import case_model


def model_of(case: Case) -> tuple[Any, tuple, Any, Any]:
    """``(model, data, splits, splits_b)`` of a drawn case: the kit's own rebuild
    (:func:`refimpl.testing.cases.models.case_model`)."""
    return tuple(case_model(case))


@st.composite
def anchored_points(draw, kink_free: bool = False):
    """``(AnchoredModel, params, (x, y))``: a drawn MLP anchored with a drawn strength, penalty
    and reference (zero or drawn), every parameter or a drawn subset. ``kink_free``: the
    model's point away from its kinks, and every anchored entry at least 0.05 from its
    reference (the L1 penalty's kink)."""
    model = draw(rs.mlps(max_hidden=1, max_width=4, bias=True if kink_free else None))
    point = draw(rs.points(model, max_batch=3, kink_free=kink_free))
    shapes = model.parameter_shapes()
    names = draw(st.lists(st.sampled_from(sorted(shapes)), min_size=1, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    reference = None
    if draw(st.booleans()):
        reference = {name: rng.standard_normal(shapes[name]) for name in names}
    anchored = AnchoredModel(model, lam=draw(st.floats(0.01, 2.0)), reference=reference,
                             names=names, penalty=draw(st.sampled_from(["l2", "l1"])))
    params = dict(point.params)
    if kink_free:   # |w - w0| >= 0.05 in every anchored entry
        for name in names:
            distance = params[name] - anchored.reference[name]
            params[name] = anchored.reference[name] + np.where(
                np.abs(distance) < 0.05, np.where(distance < 0, -0.05, 0.05), distance)
    return anchored, params, (point.inputs["x"], point.inputs["y"])
