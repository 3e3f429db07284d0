"""A Siamese model's ``H v`` branch by branch, each branch at its own point and direction.

:meth:`refimpl.nn.Siamese.hvp` runs one tower at one point along one direction for every
branch and sums the branches. Two consumers need the branches apart: the resolution floors of
the oracle kit (:mod:`refimpl.testing.second_order`), where each branch's rounding is its own,
and the curvature study (:mod:`refimpl.study.curvature`), where each branch is a use of the
tower and the cross terms between branches are the metric loss's coupling. With ``e_b`` the
embedding of branch ``b`` (tower ``J_b`` at its point), ``g_b = dL/de_b`` and ``g_dot_b`` its
tangent (the metric loss's ``backward`` and ``backward_jvp`` along every branch's embedding
tangent), the R-operator gives branch ``b``'s term::

    J_b^T g_dot_b  +  (d/dr J_b(p_b + r v_b)^T) g_b

the first a vector-Jacobian product of the tower, the second the directional derivative of
one along ``v_b`` with ``g_b`` held fixed (:func:`vjp_derivative`, by the complex step: every
refimpl backward pass is complex-step safe, so it is exact to rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..nn import Sequential, Siamese

__all__ = ["vjp_derivative", "branch_products", "COMPLEX_STEP"]

Params = dict[str, np.ndarray]

#: The complex step of :func:`vjp_derivative` (no subtraction: any tiny step is exact).
COMPLEX_STEP = 1e-20


def vjp_derivative(model: Sequential, params: Mapping[str, Any], x: Any, dout: Any,
                   v: Mapping[str, Any]) -> Params:
    """``d/dr [J(p + r v)^T dout]`` at ``r = 0``: the directional derivative along ``v`` of
    the model's vector-Jacobian product with ``dout`` held fixed, ``Im vjp(p + i h v) / h``.

    Parameters
    ----------
    model : refimpl.nn.Sequential
    params, v : dict of str to ndarray
        The point and the direction (keys of ``params``), real.
    x : ndarray
        The model's input (N, ...).
    dout : ndarray
        An upstream gradient of the model's output's shape, real.

    Returns
    -------
    dict of str to ndarray
        Keyed like ``params``.
    """
    shifted = {key: np.asarray(params[key], dtype=np.float64)
               + 1j * COMPLEX_STEP * np.asarray(v[key], dtype=np.float64) for key in params}
    _, _, grads = model.vjp(shifted, x, dout)
    return {key: np.imag(value) / COMPLEX_STEP for key, value in grads.items()}


def branch_products(model: Siamese, branch_params: Sequence[Mapping[str, Any]], data: tuple,
                    branch_vectors: Sequence[Mapping[str, Any]]) -> list[Params]:
    """Every branch's term of a Siamese model's ``H v`` (module docstring), branch ``b``
    running the tower at ``branch_params[b]`` along ``branch_vectors[b]``.

    Parameters
    ----------
    model : refimpl.nn.Siamese
    branch_params, branch_vectors : sequence of dict of str to ndarray
        One point and one direction per branch, in the order of ``model.branch_names``.
    data : tuple
        The branch inputs, then ``y`` for a loss that needs a target (the form
        :func:`refimpl.hvp` takes).

    Returns
    -------
    list of dict of str to ndarray
        One per branch, keyed like the tower's parameters; with one point and direction for
        every branch their sum is :meth:`~refimpl.nn.Siamese.hvp`'s product.
    """
    branches = model.loss_spec.branches
    xs, target = data[:branches], (data[branches] if len(data) > branches else None)
    tower, loss = model.tower, model.loss_spec
    outs = [tower.jvp(p, x, v) for p, x, v in zip(branch_params, xs, branch_vectors,
                                                    strict=True)]   # (e_b, e_dot_b), (N, D)
    _, cache = loss.forward(tuple(out for out, _ in outs), target)
    _, tangent_cache = loss.jvp(tuple(dot for _, dot in outs), cache)
    grads = loss.backward(1.0, cache)
    grads_dot = loss.backward_jvp(1.0, 0.0, cache, tangent_cache)
    products = []
    for p, x, v, g, g_dot in zip(branch_params, xs, branch_vectors, grads, grads_dot,
                                 strict=True):
        through_gradient = vjp_derivative(tower, p, x, g, v)
        _, _, through_tangent = tower.vjp(p, x, g_dot)
        products.append({key: through_gradient[key] + through_tangent[key] for key in p})
    return products
