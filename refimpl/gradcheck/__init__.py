"""The numerical oracle: check any ``f(params) -> (loss, grads)`` against numerical derivatives.

Methods (``method=``)
---------------------
``"complex"``
    Complex step, ``d_i = Im f(p + i h e_i) / h`` with ``h = 1e-20``. There is no subtraction,
    hence no cancellation: the result is exact to rounding (~1e-15 relative). Needs ``f`` to
    accept complex128 parameters (every refimpl forward pass does).
``"central"``
    ``d_i = (f(p + h_i e_i) - f(p - h_i e_i)) / (2 h_i)`` with ``h_i = eps^(1/3) max(1, |p_i|)``,
    the step balancing truncation (h^2) against rounding (eps / h): ~1e-10 absolute.
``"richardson"``
    Central differences at ``h`` and ``h/2`` extrapolated, ``(4 D(h/2) - D(h)) / 3``, which
    cancels the h^2 term: error O(h^4), with ``h_i = eps^(1/5) max(1, |p_i|)``.

Modes (``mode=``)
-----------------
``"full"``: every coordinate of every parameter (or of the parameters named in ``names``).
``"directional"``: ``directions`` seeded Gaussian directions ``v`` across *all* parameters;
compares ``<g, v>`` with the numerical directional derivative — O(k) evaluations whatever
the parameter count (the idea of HIPS autograd's ``check_grads``).

The comparison rule (all tolerances live in :data:`TOLERANCES`)
----------------------------------------------------------------
For one parameter with analytic gradient ``g`` and numerical gradient ``n`` (arrays)::

    scale = max(max_i |g_i|, max_i |n_i|)            # the parameter's largest gradient
    pass  iff  max_i |g_i - n_i|  <=  atol + rtol * scale

with the defaults of :data:`TOLERANCES` (each pinned by a test from both sides)::

    method       rtol    atol
    complex      1e-12   1e-14
    central      1e-6    1e-9
    richardson   1e-9    1e-11

and the reported relative error is ``max_i |g_i - n_i| / scale``. Scaling by the parameter's
largest gradient, not by ``|g_i|``, keeps the relative error from blowing up where a single
gradient entry is ~0 (a quantity computed to absolute accuracy ~eps * scale). In directional
mode each direction ``v`` is one row with ``scale = sum_i |g_i v_i|`` (the size of the terms
before they cancel in the inner product).

Kinks and non-finite values
---------------------------
A coordinate that disagrees is examined with real differences: if the one-sided,
extrapolated derivatives from the left and from the right differ, or the central
derivative jumps between steps ``h`` and ``h/2`` (by more than rounding can explain), and
that slope jump is large enough to explain the disagreement, the point is within one step of
a kink and is reported as ``"non-differentiable"``, not as a mismatch. A wrong gradient at a
smooth point stays a mismatch however small the parameter's gradients are. A non-finite
loss or gradient (at ``p`` or at a perturbed point) is reported as ``"non-finite"``. ``ok``
is True only when every checked coordinate agreed.

What the verdicts rest on
-------------------------
The loss is evaluated twice at the point first: two values that differ by more than rounding
make every row ``"non-deterministic"``. Every complex-step check also takes real differences
along two seeded directions: a parameter whose complex-step derivative they contradict (a
loss that drops an imaginary part through ``abs``, a norm, ``np.real``) is
``"not complex-safe"``, never ok. Both in :mod:`~refimpl.gradcheck.safety`, where the bound is
derived.

Bad arguments are errors, never a verdict
-----------------------------------------
Everything is checked before ``f`` is first called: a tolerance must be a finite,
non-negative number (with a NaN limit every test ``error > limit`` is False, so nothing
could fail; ``inf`` accepts anything), ``seed`` a non-negative int, ``directions`` a
positive int (NumPy integers accepted, ``bool`` and ``float`` refused), every parameter a
finite real array with at least one entry. Then ``f(params)`` must return a pair
``(loss, grads)`` with a scalar loss (shape ``()``; an array of shape ``(1,)`` or ``(N,)``
is refused, not reduced) and grads with exactly the keys and shapes of ``params``, and every
loss evaluated at a perturbed point must be a scalar too. Each violation is a ``TypeError``
or ``ValueError`` naming the argument (``f``, ``loss_fn``, ``forward``, ``backward``,
``rtol``, ...) and saying what was expected.

Modules
-------
:mod:`~refimpl.gradcheck.report`
    :class:`Tolerance`, :data:`TOLERANCES`, :class:`ParameterRow`, :class:`GradcheckReport`.
:mod:`~refimpl.gradcheck.numerical`
    The numerical derivatives (:data:`STEPS`), the evaluator, kink detection.
:mod:`~refimpl.gradcheck.arguments`
    The argument checks.
:mod:`~refimpl.gradcheck.checker`
    :func:`check_gradients`, full and directional modes.
:mod:`~refimpl.gradcheck.safety`
    Determinism at the point, and the complex step cross-checked by real differences.
:mod:`~refimpl.gradcheck.vjp`
    :func:`check_vjp` and :func:`assert_close`.
:mod:`~refimpl.gradcheck.copies`
    Many perturbed copies of a model in one forward pass (sliced output units, copies folded
    into the batch): the engine of the fast full check.
:mod:`~refimpl.gradcheck.fast`
    :func:`~refimpl.gradcheck.fast.check_chains`, the fast full check of a sum of models'
    losses and penalties, with its guard; :func:`refimpl.check_model_gradients` builds it.
"""

from .checker import check_gradients
from .numerical import EPS, KINK_EXPLAINS, KINK_ROUNDING, KINK_RTOL, STEPS
from .report import METHODS, MODES, TOLERANCES, GradcheckReport, ParameterRow, Tolerance
from .safety import NON_DETERMINISTIC, NOT_COMPLEX_SAFE, SAFETY_DIRECTIONS, SAFETY_PROBES
from .vjp import assert_close, check_vjp

__all__ = ["check_gradients", "check_vjp", "assert_close", "GradcheckReport", "ParameterRow",
           "Tolerance", "TOLERANCES", "METHODS", "MODES", "STEPS", "EPS", "KINK_RTOL",
           "KINK_EXPLAINS", "KINK_ROUNDING", "SAFETY_DIRECTIONS", "SAFETY_PROBES",
           "NOT_COMPLEX_SAFE", "NON_DETERMINISTIC"]

# The public classes are documented, pickled and shown under the package that exports them
# (as NumPy's ``set_module`` does): their defining submodule is an internal detail.
for _public in (Tolerance, ParameterRow, GradcheckReport):
    _public.__module__ = __name__
del _public
