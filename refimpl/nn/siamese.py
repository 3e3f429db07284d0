"""Siamese towers: one ``Sequential`` applied to two or three inputs, a metric loss on top.

Legend: ``N`` batch (pairs or triplets), ``D`` embedding features.

Every tower parameter is used once per branch, so the Siamese model is parameter sharing
across branches, and the gradient of each tower parameter is the *sum* over the branches::

    grads[w] = sum over branches b of  dL/dw (through branch b)

computed branch by branch with the tower's public ``forward`` and ``vjp``: each branch's
embedding gradient (from the loss's backward) is pulled back through its own copy of the
tower, and the branch gradients are added. Two (three) untied copies of the tower, with
their gradients summed, give exactly this gradient (``tests/test_siamese.py``).

Both metric losses depend on the embeddings only through differences ``x1 - x2``, so a
translation of every embedding changes nothing: the bias of a tower's *final* Dense layer has
a gradient of exactly 0 (up to rounding). End a tower with a Dense layer without bias, or
with an activation, when that gradient is to be compared (the built-in cases do).

Second order (:meth:`Siamese.jvp`, :meth:`Siamese.hvp`): every branch runs the tower's
forward-mode pass along the same direction ``v``; the metric loss's ``jvp`` and
``backward_jvp`` couple the branches (its Hessian mixes the embeddings of one row), and each
branch then runs the tower's R-operator with its own ``dout`` and ``dout_dot``. The Hessian-
vector product is the sum over the branches, as the gradient is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._validate import as_float_array, check_finite_result, check_keys, no_fp_warnings
from .metric_losses import MetricLoss, TripletMarginLoss, metric_loss_from_config
from .sequential import ParameterCount, Sequential

__all__ = ["Siamese"]

Params = dict[str, np.ndarray]

#: Branch names, in the order of the inputs, for each number of branches.
BRANCH_NAMES = {2: ("x1", "x2"), 3: ("anchor", "positive", "negative")}


class Siamese:
    """One tower, two (contrastive) or three (triplet) inputs, a metric loss.

    Parameters
    ----------
    tower : refimpl.nn.Sequential
        Built without a loss; its output must be embeddings (N, D) (end it with
        ``Flatten()`` after a convolution). It may share parameters inside itself.
    loss : refimpl.nn.TripletMarginLoss or refimpl.nn.ContrastiveLoss
        Default ``TripletMarginLoss()`` (margin 1, p 2, eps 1e-6). Its number of branches
        fixes the number of inputs.

    Raises
    ------
    TypeError, ValueError
        For a tower that is not a ``Sequential`` or has a loss, or a loss that is not a
        metric loss.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl import nn
    >>> tower = nn.Sequential([nn.Dense("fc1", 4, 8), nn.Tanh(), nn.Dense("fc2", 8, 3)])
    >>> model = nn.Siamese(tower, loss=nn.TripletMarginLoss(margin=1.0))
    >>> params = model.init(seed=0)
    >>> a, p, n = np.random.default_rng(0).standard_normal((3, 5, 4))
    >>> loss, grads = model.loss_and_grads(params, a, p, n)
    >>> sorted(grads) == sorted(params)
    True
    """

    def __init__(self, tower: Sequential, loss: MetricLoss | None = None) -> None:
        if not isinstance(tower, Sequential):
            raise TypeError(f"tower: expected a refimpl Sequential, got {type(tower).__name__}")
        if tower.loss_spec is not None:
            raise ValueError(f"tower: expected a Sequential built without a loss (the Siamese "
                             f"model's loss is the metric loss), got loss={tower.loss_spec!r}")
        loss = TripletMarginLoss() if loss is None else loss
        if not isinstance(loss, MetricLoss):
            raise TypeError(f"loss: expected TripletMarginLoss(...) or ContrastiveLoss(...), got "
                            f"{loss!r}")
        self.tower = tower
        self.loss_spec = loss
        self.branch_names = BRANCH_NAMES[loss.branches]

    # --- parameters ----------------------------------------------------------------------

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tower's unique parameters: the keys of ``params`` and ``grads``."""
        return self.tower.parameter_shapes()

    def init(self, seed: int) -> Params:
        """The tower's ``init(seed)``: one set of parameters for every branch."""
        return self.tower.init(seed)

    def parameter_count(self) -> ParameterCount:
        """The tower's unique parameters stored once, used once per branch: ``uses`` is the
        tower's ``uses`` times the number of branches."""
        count = self.tower.parameter_count()
        return ParameterCount(count.unique, count.uses * self.loss_spec.branches, count.bytes)

    def check_params(self, params: Mapping[str, Any]) -> Params:
        """The tower's check: exact keys and shapes, numeric, finite."""
        return self.tower.check_params(params)

    # --- forward / backward ----------------------------------------------------------------

    def _check_inputs(self, inputs: tuple[Any, ...]) -> list[np.ndarray]:
        """One numeric, finite array per branch, one batch size N, embeddings (N, D)."""
        names = self.branch_names
        if len(inputs) != len(names):
            raise TypeError(f"inputs: {type(self.loss_spec).__name__} takes {len(names)} inputs "
                            f"({', '.join(names)}), got {len(inputs)}")
        arrays = [as_float_array(value, name) for name, value in zip(names, inputs, strict=True)]
        for name, array in zip(names, arrays, strict=True):
            if array.ndim == 0 or array.shape[0] == 0:
                raise ValueError(f"{name}: expected a non-empty batch (N >= 1 along axis 0), "
                                 f"got shape {array.shape}")
            try:
                out_shape = self.tower.output_shape(array.shape)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            if len(out_shape) != 2:
                raise ValueError(f"{name}: the tower's output must be embeddings (N, D) for "
                                 f"the distance, got shape {out_shape} (end it with Flatten())")
            if array.shape[0] != arrays[0].shape[0]:
                raise ValueError(f"{name}: expected the batch size of {names[0]} "
                                 f"({arrays[0].shape[0]}), got {array.shape[0]} (one row per "
                                 f"pair / triplet)")
        return arrays

    def _in_branch(self, name: str, method: Any, *args: Any) -> Any:
        """``method(*args)`` of the tower; an overflow names the branch."""
        try:
            return method(*args)
        except FloatingPointError as error:
            raise FloatingPointError(f"branch {name!r}: {error}") from None

    @no_fp_warnings()
    def forward(self, params: Mapping[str, Any], *inputs: Any) -> tuple[np.ndarray, ...]:
        """The embeddings (N, D) of every branch, in the order of ``inputs``."""
        params = self.check_params(params)
        arrays = self._check_inputs(inputs)
        return tuple(self._in_branch(name, self.tower.forward, params, x)
                     for name, x in zip(self.branch_names, arrays, strict=True))

    @no_fp_warnings()
    def loss_and_grads(self, params: Mapping[str, Any], *inputs: Any, y: Any = None
                       ) -> tuple[float | complex, Params]:
        """The loss and its gradient with respect to every tower parameter.

        Parameters
        ----------
        params : dict of str to ndarray
            The tower's unique parameters.
        *inputs : ndarray
            ``anchor, positive, negative`` (triplet) or ``x1, x2`` (contrastive), each of
            shape (N, ...) as the tower takes it.
        y : array_like, shape (N,), optional
            Contrastive only, and then required: 1 similar pair, 0 dissimilar.

        Returns
        -------
        loss : float or complex
            Complex under the complex step.
        grads : dict of str to ndarray
            Keyed exactly like ``params``: the sum over the branches.
        """
        params = self.check_params(params)
        arrays = self._check_inputs(inputs)
        target = self.loss_spec.check_target(y, arrays[0].shape[0])
        embeddings = tuple(self._in_branch(name, self.tower.forward, params, x)
                           for name, x in zip(self.branch_names, arrays, strict=True))
        value, cache = self.loss_spec.forward(embeddings, target)
        check_finite_result(value, lambda: f"loss ({type(self.loss_spec).__name__}): value")
        douts = self.loss_spec.backward(1.0, cache)
        grads: Params = {}
        for name, x, dout in zip(self.branch_names, arrays, douts, strict=True):
            _, _, branch_grads = self._in_branch(name, self.tower.vjp, params, x, dout)
            # Sharing across branches: every parameter's gradient is the SUM over the branches
            # (new arrays, never `+=` into what vjp returned).
            for key, grad in branch_grads.items():
                grads[key] = grads[key] + grad if key in grads else grad
        for key in grads:   # finite terms can sum to inf
            check_finite_result(grads[key], lambda k=key: (
                f"gradient of {k!r} (the sum over the branches)"))
        return value.item(), {key: grads[key] for key in params}

    # --- second order ---------------------------------------------------------------------

    def _tangents(self, params: Mapping[str, Any], inputs: tuple[Any, ...], v: Any,
                  y: Any) -> tuple:
        """Every branch's forward pass and forward-mode pass along ``v``, and the loss's."""
        params = self.check_params(params)
        arrays = self._check_inputs(inputs)
        target = self.loss_spec.check_target(y, arrays[0].shape[0])
        v = self.tower._check_direction(v, params)
        branches = []
        for name, x in zip(self.branch_names, arrays, strict=True):
            out, caches = self._in_branch(name, self.tower._forward, params, x)
            out_dot, tangent_caches = self._in_branch(name, self.tower._jvp, v, caches)
            branches.append((out, np.zeros_like(out) if out_dot is None else out_dot, caches,
                             tangent_caches))
        embeddings = tuple(branch[0] for branch in branches)
        embeddings_dot = tuple(branch[1] for branch in branches)
        value, cache = self.loss_spec.forward(embeddings, target)
        check_finite_result(value, lambda: f"loss ({type(self.loss_spec).__name__}): value")
        loss_dot, tangent_cache = self.loss_spec.jvp(embeddings_dot, cache)
        check_finite_result(loss_dot, lambda: (
            f"loss ({type(self.loss_spec).__name__}): forward-mode derivative"))
        return value, loss_dot, branches, cache, tangent_cache, list(params)

    @no_fp_warnings()
    def jvp(self, params: Mapping[str, Any], *inputs: Any, v: Mapping[str, Any], y: Any = None
            ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], Any, Any]:
        """The embeddings, the loss and their directional derivatives along ``v``.

        Parameters
        ----------
        params : dict of str to ndarray
            The tower's unique parameters.
        *inputs : ndarray
            As :meth:`loss_and_grads` takes them.
        v : dict of str to ndarray
            The direction (keyword): the keys and shapes of ``params``.
        y : array_like, shape (N,), optional
            Contrastive only, and then required.

        Returns
        -------
        embeddings, embeddings_dot : tuple of ndarray, each (N, D)
            Per branch, in the order of ``inputs``.
        loss, loss_dot : float (complex for complex input)
        """
        value, loss_dot, branches, _, _, _ = self._tangents(params, inputs, v, y)
        return (tuple(branch[0] for branch in branches), tuple(branch[1] for branch in branches),
                value.item(), loss_dot.item())

    @no_fp_warnings()
    def hvp(self, params: Mapping[str, Any], *inputs: Any, v: Mapping[str, Any], y: Any = None
            ) -> tuple[float | complex, Params, Params]:
        """The loss, its gradient and its Hessian-vector product ``H v`` (the R-operator).

        Parameters
        ----------
        params, *inputs, y
            As :meth:`loss_and_grads` takes them.
        v : dict of str to ndarray
            The direction (keyword): the keys and shapes of ``params``.

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
            As :meth:`loss_and_grads` returns them.
        hvp : dict of str to ndarray
            ``H v`` keyed like ``params``: the sum over the branches of each branch's
            R-operator (module docstring).
        """
        value, _, branches, cache, tangent_cache, order = self._tangents(params, inputs, v, y)
        douts = self.loss_spec.backward(1.0, cache)
        douts_dot = self.loss_spec.backward_jvp(1.0, 0.0, cache, tangent_cache)
        grads: Params = {}
        hvp: Params = {}
        for name, (_, _, caches, tangent_caches), dout, dout_dot in zip(
                self.branch_names, branches, douts, douts_dot, strict=True):
            branch_grads, branch_hvp = self._in_branch(
                name, self.tower._backward_jvp, dout, dout_dot, caches, tangent_caches, order)
            # Sharing across branches: the SUM over the branches, gradient and tangent alike.
            for key in order:
                grads[key] = grads[key] + branch_grads[key] if key in grads \
                    else branch_grads[key]
                hvp[key] = hvp[key] + branch_hvp[key] if key in hvp else branch_hvp[key]
        for key in order:   # finite terms can sum to inf
            check_finite_result(hvp[key], lambda k=key: (
                f"Hessian-vector product of {k!r} (the sum over the branches)"))
        return value.item(), grads, hvp

    # --- configuration --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description: ``{"tower": <Sequential config>, "loss": {"type": ...}}``."""
        return {"tower": self.tower.config(), "loss": self.loss_spec.config()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], what: str = "config") -> Siamese:
        """Inverse of :meth:`config`; a missing or malformed key is an error naming it."""
        check_keys(config, ["tower", "loss"], what=what)
        return cls(Sequential.from_config(config["tower"], f"{what}['tower']"),
                   metric_loss_from_config(config["loss"], f"{what}['loss']"))

    def __repr__(self) -> str:
        return f"Siamese({self.tower!r}, loss={self.loss_spec!r})"
