"""The oracle's acceptance run in CI (tests/oracle_stress.py): on drawn cases and on points
near a fit built from them, a correct float32 / TF32 implementation is never rejected and a
gradient negated, transposed, doubled or halved is never a pass. Sized by the Hypothesis
profile (``HYPOTHESIS_PROFILE=thorough``: ten times as many); the >= 1,000-case run is
``python tests/oracle_stress.py --cases 1000``.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from oracle_stress import judge_case

from refimpl.testing import strategies as rs

TALLY: Counter = Counter()


@settings(max_examples=settings().max_examples // 4 or 1)
@given(rs.cases())
def test_correct_never_rejected_and_mutations_never_pass(case):
    problems: list[str] = []
    judge_case(case, seed=0, tally=TALLY, problems=problems)
    assert not problems, problems[0]


def test_drawn_points_pass_rather_than_inconclusive():
    """Run after the test above: ordinary drawn points pass (inconclusive is a last resort)."""
    drawn = {verdict: TALLY[(dtype, "drawn", "correct", verdict)]
             for dtype in ("float32",) for verdict in ("pass", "inconclusive", "fail")}
    if sum(drawn.values()):
        assert drawn["fail"] == 0 and drawn["inconclusive"] == 0, drawn
