"""Parameter tying: norm penalties between matched parameters, and pairs of tied models.

Goodfellow, Bengio & Courville, *Deep Learning*, section 7.9. Two models A and B do related
tasks; instead of forcing parameters to be equal (sharing, :mod:`refimpl.nn`), a penalty
pulls matched parameters together::

    Omega(wA, wB) = sum over pairs p of  lam_p * ||wA_p - wB_p||      (a norm per penalty)

* :mod:`refimpl.tying.penalties`: the penalties as forward/backward pairs of free functions
  (``"l2"``, ``"l1"``, anchored to a fixed reference);
* :mod:`refimpl.tying.pair`: :class:`TiedPair`, two models tied (soft) or sharing (hard);
* :mod:`refimpl.tying.anchored`: :class:`AnchoredModel`, one model pulled towards a fixed
  reference (weight decay, L2-SP).
"""

from .anchored import AnchoredModel, AnchoredResult
from .pair import MODES, TiedPair, TiedResult
from .penalties import (
    PENALTIES,
    L1PenaltyCache,
    L2PenaltyCache,
    Penalty,
    anchored_penalty_backward,
    anchored_penalty_forward,
    check_lam,
    l1_penalty_backward,
    l1_penalty_forward,
    l2_penalty_backward,
    l2_penalty_forward,
)

# The classes are documented, and re-exported by refimpl, under this public path; their
# defining submodules are an internal layout.
for _public in (TiedPair, TiedResult, AnchoredModel, AnchoredResult):
    _public.__module__ = __name__
del _public

__all__ = [
    "l2_penalty_forward", "l2_penalty_backward", "l1_penalty_forward", "l1_penalty_backward",
    "anchored_penalty_forward", "anchored_penalty_backward", "L2PenaltyCache", "L1PenaltyCache",
    "Penalty", "PENALTIES", "MODES", "check_lam",
    "TiedPair", "TiedResult", "AnchoredModel", "AnchoredResult",
]
