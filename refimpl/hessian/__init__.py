"""Second order: explicit Hessian-vector products and Jacobian-vector products, checked.

:func:`hvp` is Pearlmutter's R-operator (1994), the forward-mode derivative of the explicit
backward pass along a direction ``v``: every operation of :mod:`refimpl.nn` has, beside its
``forward`` / ``backward`` pair, a ``*_jvp`` (the forward-mode derivative of its output) and a
``*_backward_jvp`` (the directional derivative of its backward pass with respect to its
input, its parameters and the upstream gradient). :func:`jvp` is the first half, the
directional derivatives of the outputs and the loss. Both take every model kind
(:data:`~refimpl.hessian.products.MODEL_KINDS`) and micro-batch accumulation
(:mod:`refimpl.hessian.products`).

Sharing and tying
-----------------
The Hessian of a shared parameter ``w`` with uses (slots) ``u`` reading ``P_u w`` (``P_u`` the
identity or a transpose) is ``sum over u, u' of P_u^T H_{u u'} P_{u'}``: the diagonal blocks of
every use *and* the cross terms between uses. The R-operator produces it without listing the
pairs: the forward-mode tangent reaching a use already carries the perturbation of every
other use, and the backward tangents are summed over the uses as the gradients are. A soft
tying penalty ``lam ||wA - wB||^2`` adds the constant Hessian ``2 lam [[I, -I], [-I, I]]``:
``+2 lam (vA - vB)`` to A's product, ``-2 lam (vA - vB)`` to B's.

A Siamese model's branches apart (each at its own point and direction, each branch's term of
``H v``): :mod:`refimpl.hessian.branches`.

Kinks
-----
The backward passes' one-sided rules carry over (ReLU's, max pooling's first maximum, the
L1 penalty's ``sign(0) = 0``, the metric losses' hinges): away from a kink the Hessian of a
piecewise-linear part is 0, and at a kink the same one-sided derivative is taken as in the
backward pass, with a second derivative of 0 there.

Checked, not trusted: the comparison rule (all tolerances in :data:`HVP_TOLERANCES`)
-------------------------------------------------------------------------------------
:func:`check_hvp` (:func:`check_hvp_function` for any gradient and ``H v``) compares, for a few
seeded directions ``v``, the explicit ``H v`` with a numerical derivative of the explicit
gradient ``g`` along ``v``:

* ``"complex"``: ``n = Im g(p + i h v) / h``, ``h = 1e-20`` (no subtraction: exact to
  rounding, wherever the backward pass is complex-step safe — every refimpl backward pass);
* ``"central"``: ``n = (g(p + h v) - g(p - h v)) / (2 h)``, ``h = eps^(1/3) max(1, max|p|) /
  max|v|``, a second opinion in real arithmetic.

For one direction and one parameter::

    scale = max(max_i |Hv_i|, max_i |n_i|)
    pass  iff  max_i |Hv_i - n_i|  <=  atol + rtol * scale

with, per method::

    method    rtol    atol
    complex   1e-11   1e-13
    central   1e-6    1e-8

A central row that fails is re-estimated at ``h / 2``; if the two numerical estimates disagree
by more than the tolerance the row is ``"inconclusive"`` (a kink within the step), otherwise a
``"mismatch"``. A gradient that overflows at a perturbed point makes the direction's rows
``"non-finite"``. ``report.ok`` only when every row passed.
"""

from .check import (
    HVP_METHODS,
    HVP_STEPS,
    HVP_TOLERANCES,
    HVPReport,
    HVPRow,
    check_hvp,
    check_hvp_function,
)
from .products import (
    MODEL_KINDS,
    HVPResult,
    JVPResult,
    gradient_function,
    hvp,
    jvp,
    loss_grads_and_hvp,
    random_directions,
)

__all__ = ["hvp", "jvp", "loss_grads_and_hvp", "HVPResult", "JVPResult", "gradient_function",
           "random_directions",
           "MODEL_KINDS", "check_hvp", "check_hvp_function", "HVPReport", "HVPRow",
           "HVP_TOLERANCES", "HVP_METHODS", "HVP_STEPS"]

# Documented, pickled and shown under the package that exports them.
for _public in (HVPReport, HVPRow, HVPResult, JVPResult):
    _public.__module__ = __name__
del _public
