"""Sequential models: layer specs + a loss + an optional sharing map.

A model is a specification; parameters live in a plain ``dict[str, np.ndarray]`` keyed
``"<layer>.<local>"`` (``"fc1.weight"``), as a PyTorch ``state_dict``.

**Slots and unique parameters.** Every parameter a layer uses is a *slot*. Without sharing,
each slot is its own unique parameter. ``share={slot: source}`` makes ``slot`` read the unique
parameter ``source`` instead; ``params`` then holds only unique parameters, and

    grads[source] = sum over every use u of source of  dL/d(slot u)   (transposed back
                                                                        for transposed uses)

— the ``+=`` of micrograd, which is all of parameter sharing. A use may be transposed
(``share={"dec.weight": transposed("enc.weight")}``: a tied autoencoder whose decoder weight is
the encoder weight transposed); its gradient is transposed back before it is summed.

**Second order** (:meth:`Sequential.jvp`, :meth:`Sequential.loss_jvp`,
:meth:`Sequential.hvp`). A direction ``v`` over the unique parameters reaches every slot the
way the parameters do (a transposed use reads ``v`` transposed). The forward-mode pass runs
each layer's ``jvp`` in order; the Hessian-vector product is Pearlmutter's R-operator, the
forward-mode derivative of the backward pass: each layer's ``backward_jvp`` in reverse, fed
``dout`` and its tangent ``dout_dot``, starting from the loss's ``backward_jvp``, and every
slot's gradient tangent summed onto its unique parameter exactly as the gradients are. For a
shared parameter that sum is ``sum over uses u, w of P_u^T H_uw P_w v``: the blocks of every
pair of uses, cross terms included, since the tangent that reaches use ``u`` already carries the
perturbation of every other use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from .._validate import (
    as_float_array,
    check_finite_result,
    check_keys,
    check_shape,
    no_fp_warnings,
)
from .base import Layer, layer_config, layer_from_config
from .losses import LOSS_TYPES, Loss

__all__ = ["Sequential", "ShareSource", "transposed", "ParameterCount"]

Params = dict[str, np.ndarray]


class ShareSource(NamedTuple):
    """The source of a shared slot: a unique parameter name, used as is or transposed."""

    name: str
    transpose: bool = False

    def read_shape(self, shape: tuple[int, ...], where: str, verb: str) -> tuple[int, ...]:
        """The shape a reader of this source sees: ``shape``, reversed when read transposed.

        Raises
        ------
        ValueError
            Naming ``where``, for a transposed source that is not 2-D.
        """
        if not self.transpose:
            return shape
        if len(shape) != 2:
            raise ValueError(f"{where}: only 2-D parameters can be {verb} transposed; "
                             f"{self.name!r} has shape {shape}")
        return shape[::-1]


def as_share_source(value: Any, where: str, expected: str) -> ShareSource:
    """A parameter name (read as is) or a :class:`ShareSource`, as a :class:`ShareSource`.

    Raises
    ------
    TypeError
        Naming ``where`` and what was ``expected``, for anything else.
    """
    if isinstance(value, str):
        return ShareSource(value)
    if not isinstance(value, ShareSource):
        raise TypeError(f"{where}: expected {expected} or transposed(name), got {value!r}")
    return value


def transposed(name: str) -> ShareSource:
    """Share a 2-D parameter transposed: ``share={"dec.weight": transposed("enc.weight")}``."""
    return ShareSource(name, True)


class ParameterCount(NamedTuple):
    """Memory accounting of a model (or pair of models).

    ``unique``: scalars stored (the size of ``params``); ``uses``: scalars used by the layers
    (what an unshared model would store); ``bytes``: bytes stored for the unique parameters
    (float64: 8 per scalar).
    """

    unique: int
    uses: int
    bytes: int

    def __str__(self) -> str:
        ratio = self.uses / self.unique if self.unique else float("nan")
        return (f"{self.unique} unique parameters ({self.bytes} bytes), "
                f"{self.uses} parameter uses ({ratio:.2f} uses per stored parameter)")


class _Use(NamedTuple):
    root: str        # the unique parameter a slot reads
    transpose: bool  # whether the slot reads it transposed


class _LossTangents(NamedTuple):
    """A forward pass with its loss, and their forward-mode derivatives along ``v``."""

    value: Any                 # the loss, 0-d
    loss_dot: Any              # its directional derivative, 0-d
    out: np.ndarray            # the model output
    out_dot: np.ndarray        # its directional derivative
    caches: list[Any]          # of every layer's forward
    tangent_caches: list[Any]  # of every layer's jvp (None before the first parameter)
    loss_cache: Any
    loss_tangent_cache: Any
    order: list[str]           # the caller's order of the parameters


class Sequential:
    """A chain of layer specs with an optional loss and an optional sharing map.

    Parameters
    ----------
    layers: the layer specs, applied in order; parameterised layers need distinct names.
    loss: a loss spec (``SoftmaxCrossEntropy()``, ``MSE()``) or None (then only ``forward``
        and ``vjp`` are available).
    share: ``{slot: source}`` with ``source`` a parameter name or ``transposed(name)``.
        Chains (a -> b -> c) resolve to their root; cycles, unknown names, a slot shared onto
        itself and shape mismatches are ``ValueError`` at construction.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        loss: Loss | None = None,
        share: Mapping[str, str | ShareSource] | None = None,
    ) -> None:
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers: expected at least one layer, got none")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{index}]: expected a layer spec, got {layer!r}")
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(
                f"loss: expected a loss spec such as SoftmaxCrossEntropy(), got {loss!r}")
        for index, layer in enumerate(layers[1:], start=1):
            if getattr(layer, "takes_indices", False):
                raise ValueError(f"layers[{index}]: {type(layer).__name__} takes integer "
                                 f"indices, so it can only be the first layer")
        self.layers = layers
        self.loss_spec = loss

        self._slots: dict[str, tuple[int, ...]] = {}
        seen_names: set[str] = set()
        for layer in layers:
            shapes = layer.parameter_shapes()
            if not shapes:
                continue
            if layer.name in seen_names:
                raise ValueError(
                    f"layers: two layers are named {layer.name!r}; names must be unique")
            seen_names.add(layer.name)
            for local, shape in shapes.items():
                self._slots[f"{layer.name}.{local}"] = tuple(shape)

        self.share: dict[str, ShareSource] = self._check_share(share or {})
        self._uses: dict[str, _Use] = {slot: self._resolve(slot) for slot in self._slots}
        self._unique = {
            slot: shape for slot, shape in self._slots.items() if slot not in self.share
        }

    # --- construction helpers ------------------------------------------------------------

    def _check_share(self, share: Mapping[str, Any]) -> dict[str, ShareSource]:
        if not isinstance(share, Mapping):
            raise TypeError(f"share: expected a mapping {{slot: source}}, got {share!r}")
        checked: dict[str, ShareSource] = {}
        for slot, given in share.items():
            source = as_share_source(given, f"share[{slot!r}]", "a parameter name")
            for role, name in (("slot", slot), ("source", source.name)):
                if name not in self._slots:
                    raise ValueError(f"share: unknown {role} {name!r}; parameters are "
                                     f"{sorted(self._slots)}")
            if slot == source.name:
                raise ValueError(f"share: slot {slot!r} is shared onto itself")
            slot_shape = self._slots[slot]
            source_shape = source.read_shape(self._slots[source.name], f"share[{slot!r}]",
                                             "shared")
            if slot_shape != source_shape:
                kind = "transposed " if source.transpose else ""
                raise ValueError(f"share[{slot!r}]: slot shape {slot_shape} does not match "
                                 f"the {kind}source {source.name!r} shape {source_shape}")
            checked[slot] = source
        return checked

    def _resolve(self, slot: str) -> _Use:
        transpose, path = False, [slot]
        while slot in self.share:
            source = self.share[slot]
            transpose ^= source.transpose
            slot = source.name
            if slot in path:
                raise ValueError(f"share: cycle {' -> '.join(path + [slot])}")
            path.append(slot)
        return _Use(slot, transpose)

    # --- parameters ----------------------------------------------------------------------

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the unique parameters, the keys of ``params`` and ``grads``."""
        return dict(self._unique)

    def slot_uses(self) -> dict[str, tuple[str, bool]]:
        """Every slot with the unique parameter it reads and whether transposed."""
        return {slot: (use.root, use.transpose) for slot, use in self._uses.items()}

    def parameter_count(self) -> ParameterCount:
        """Entries stored (unique parameters) against entries used by the layers (every slot,
        shared ones included), and the bytes stored as float64 (``refimpl memory``)."""
        unique = sum(int(np.prod(shape)) for shape in self._unique.values())
        uses = sum(int(np.prod(shape)) for shape in self._slots.values())
        return ParameterCount(unique, uses, 8 * unique)

    def init(self, seed: int) -> Params:
        """Fresh float64 parameters, deterministic for ``seed``.

        Every layer draws from one ``numpy.random.default_rng(seed)`` in layer order, with
        its own documented fan-in scaling (``Dense``: U(-1/sqrt(in), 1/sqrt(in))). Shared
        slots draw too (their values are discarded), so sharing does not change the values
        of the other parameters for a given seed.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"seed: expected a non-negative int, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        params: Params = {}
        for layer in self.layers:
            for local, value in layer.init_parameters(rng).items():
                name = f"{layer.name}.{local}"
                if name in self._unique:
                    params[name] = value
        return params

    def check_params(self, params: Mapping[str, Any], name: str = "params") -> Params:
        """Validate ``params`` (exact keys, exact shapes, numeric, finite) and return them as
        float64 / complex128 arrays. Raises ``ValueError`` / ``TypeError`` naming the key."""
        if not isinstance(params, Mapping):
            raise TypeError(f"{name}: expected a dict of arrays, got {type(params).__name__}")
        check_keys(params, self._unique, what=name, explain=self._explain_shared)
        checked = {}
        for key in params:   # in the caller's order: the gradients come back in it
            array = as_float_array(params[key], f"{name}[{key!r}]")
            check_shape(array, self._unique[key], f"{name}[{key!r}]")
            checked[key] = array
        return checked

    def _explain_shared(self, unexpected: list[str]) -> str:
        shared = [key for key in unexpected if key in self.share]
        return (f"({shared} are shared slots: they read another parameter and are not stored)"
                if shared else "")

    # --- forward / backward ----------------------------------------------------------------

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Validate an input shape through every layer (no arithmetic) and return the
        output shape."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def _check_input(self, x: Any) -> np.ndarray:
        first = self.layers[0]
        # A first layer that takes indices (Embedding) gets int64 indices checked in range;
        # every other model float64 / complex128 values.
        x = (first.check_input(x, "x") if getattr(first, "takes_indices", False)
             else as_float_array(x, "x"))
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"x: expected a non-empty batch (N >= 1 along axis 0), got shape "
                             f"{x.shape}")
        try:
            self.output_shape(x.shape)
        except ValueError as error:
            raise ValueError(f"x: {error}") from None
        return x

    def layer_params(self, layer: Layer, params: Mapping[str, np.ndarray]) -> Params:
        """The arrays ``layer`` reads, keyed by its local names (``"weight"``, ``"bias"``):
        for a shared slot its unique parameter, transposed for a transposed use."""
        local_params = {}
        for local in layer.parameter_shapes():
            use = self._uses[f"{layer.name}.{local}"]
            value = params[use.root]
            local_params[local] = value.T if use.transpose else value
        return local_params

    def _forward(self, params: Params, x: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """The layers in order. Every input is finite (checked on entry), so an inf or NaN
        in a layer's output was made there (an overflow): ``FloatingPointError`` naming the
        layer, instead of a NaN loss (or a finite one after a saturating activation)."""
        caches = []
        out = x
        for index, layer in enumerate(self.layers):
            out, cache = layer.forward(out, self.layer_params(layer, params))
            if not layer.output_selects_input:   # a selection of finite values is finite
                check_finite_result(out, lambda i=index, spec=layer: (
                    f"{_describe(i, spec)}: output"))
            caches.append(cache)
        return out, caches

    def _backward(self, dout: np.ndarray, caches: list[Any], order: Sequence[str],
                  need_dx: bool = True) -> tuple[np.ndarray | None, Params]:
        """The layers in reverse; ``grads`` keyed in ``order`` (the caller's params order).
        Every gradient a layer returns is checked finite, as the forward outputs are; the
        input gradient of the first layer only when ``need_dx``."""
        grads: Params = {}
        shared_sums = set()
        last = len(self.layers) - 1
        for position, (layer, cache) in enumerate(zip(reversed(self.layers),
                                                      reversed(caches), strict=True)):
            index = last - position
            dout, local_grads = layer.backward(dout, cache)
            # dout is None after a layer whose input is not differentiable (indices)
            if (index or need_dx) and dout is not None \
                    and not layer.input_gradient_selects_dout:
                check_finite_result(dout, lambda i=index, spec=layer: (
                    f"{_describe(i, spec)}: backward: gradient with respect to its input"))
            for local, grad in local_grads.items():
                slot = f"{layer.name}.{local}"
                check_finite_result(grad, lambda i=index, spec=layer, name=slot: (
                    f"{_describe(i, spec)}: backward: gradient of {name!r}"))
                use = self._uses[slot]
                grad = grad.T if use.transpose else grad
                # Sharing: a unique parameter's gradient is the SUM over its uses. Never
                # assign; never `+=` into an array a layer returned (it may alias).
                if use.root in grads:
                    grads[use.root] = grads[use.root] + grad
                    shared_sums.add(use.root)
                else:
                    grads[use.root] = grad
        for root in shared_sums:   # finite terms can sum to inf
            check_finite_result(grads[root], lambda name=root: (
                f"gradient of the shared parameter {name!r} (the sum over its uses)"))
        ordered = {name: np.ascontiguousarray(grads[name]) for name in order}
        return (dout if need_dx else None), ordered

    @no_fp_warnings()
    def forward(self, params: Mapping[str, Any], x: Any) -> np.ndarray:
        """Model output for the batch ``x`` (batch first; e.g. (N, D), (N, T, D) or
        (N, C, H, W); int64 indices such as (N, T) for a model starting with an
        ``Embedding``)."""
        params = self.check_params(params)
        x = self._check_input(x)
        return self._forward(params, x)[0]

    @no_fp_warnings()
    def vjp(
        self, params: Mapping[str, Any], x: Any, dout: Any
    ) -> tuple[np.ndarray, np.ndarray, Params]:
        """Vector-Jacobian product of the model output (no loss).

        Returns ``(out, dx, grads)``: the output, and the gradients of ``<out, dout>`` with
        respect to ``x`` and to every unique parameter. ``dout`` has the output's shape.
        ``dx`` is None for a model whose input is integer indices (a first ``Embedding``).
        """
        params = self.check_params(params)
        x = self._check_input(x)
        out, caches = self._forward(params, x)
        dout = as_float_array(dout, "dout")
        check_shape(dout, out.shape, "dout")
        dx, grads = self._backward(dout, caches, list(params))
        return out, dx, grads

    # --- second order ------------------------------------------------------------------------

    def _jvp(self, params_dot: Params, caches: list[Any], x_dot: np.ndarray | None = None
             ) -> tuple[np.ndarray | None, list[Any]]:
        """Every layer's ``jvp`` in order; a layer without parameters before the first one
        with parameters has no tangent (None) when ``x_dot`` is None."""
        tangent_caches: list[Any] = []
        out_dot = x_dot
        for index, (layer, cache) in enumerate(zip(self.layers, caches, strict=True)):
            if out_dot is None and not layer.parameter_shapes():
                tangent_caches.append(None)
                continue
            out_dot, tangent_cache = layer.jvp(out_dot, self.layer_params(layer, params_dot),
                                               cache)
            if not layer.output_selects_input:
                check_finite_result(out_dot, lambda i=index, spec=layer: (
                    f"{_describe(i, spec)}: forward-mode derivative of its output"))
            tangent_caches.append(tangent_cache)
        return out_dot, tangent_caches

    def _backward_jvp(self, dout: np.ndarray, dout_dot: np.ndarray, caches: list[Any],
                      tangent_caches: list[Any], order: Sequence[str]
                      ) -> tuple[Params, Params]:
        """The layers in reverse, each layer's ``backward`` and ``backward_jvp`` side by side:
        ``(grads, grads_dot)``, both keyed in ``order``; a slot's gradient tangent is summed
        onto its unique parameter (transposed back) as its gradient is."""
        grads: Params = {}
        grads_dot: Params = {}
        for index in reversed(range(len(self.layers))):
            tangent_cache = tangent_caches[index]
            if tangent_cache is None:     # no parameter before it, nothing to pass back to
                break
            layer, cache = self.layers[index], caches[index]
            dx, local_grads = layer.backward(dout, cache)
            dx_dot, local_dots = layer.backward_jvp(dout, dout_dot, cache, tangent_cache)
            if index and dx_dot is not None and not layer.input_gradient_selects_dout:
                check_finite_result(dx_dot, lambda i=index, spec=layer: (
                    f"{_describe(i, spec)}: R-operator: tangent of the gradient with respect "
                    f"to its input"))
            for local, grad in local_grads.items():
                slot = f"{layer.name}.{local}"
                grad_dot = local_dots[local]
                check_finite_result(grad_dot, lambda i=index, spec=layer, name=slot: (
                    f"{_describe(i, spec)}: R-operator: tangent of the gradient of {name!r}"))
                use = self._uses[slot]
                if use.transpose:
                    grad, grad_dot = grad.T, grad_dot.T
                # Sharing: the SUM over the uses, for the gradient and its tangent alike.
                if use.root in grads:
                    grads[use.root] = grads[use.root] + grad
                    grads_dot[use.root] = grads_dot[use.root] + grad_dot
                else:
                    grads[use.root], grads_dot[use.root] = grad, grad_dot
            dout, dout_dot = dx, dx_dot
        for root in grads_dot:   # finite terms can sum to inf
            check_finite_result(grads_dot[root], lambda name=root: (
                f"Hessian-vector product of {name!r} (the sum over its uses)"))
        return ({name: np.ascontiguousarray(grads[name]) for name in order},
                {name: np.ascontiguousarray(grads_dot[name]) for name in order})

    def _check_direction(self, v: Any, params: Params, name: str = "v") -> Params:
        """A direction over the unique parameters: the keys, shapes and rules of ``params``
        (a finite real or complex array per key), in the caller's order of ``params``."""
        checked = self.check_params(v, name)
        return {key: checked[key] for key in params}

    @no_fp_warnings()
    def jvp(self, params: Mapping[str, Any], x: Any, v: Mapping[str, Any],
            x_dot: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Jacobian-vector product of the model output (forward mode, no loss).

        Parameters
        ----------
        params : dict of str to ndarray
            The unique parameters.
        x : ndarray
            The batch, as :meth:`forward` takes it.
        v : dict of str to ndarray
            The direction: keys and shapes of ``params``.
        x_dot : ndarray, optional
            A tangent of ``x`` (its shape); None (default) holds the data fixed. Not for a
            model whose input is indices (a first ``Embedding``).

        Returns
        -------
        out, out_dot : ndarray
            The output and its directional derivative, of one shape.
        """
        params = self.check_params(params)
        x = self._check_input(x)
        v = self._check_direction(v, params)
        if x_dot is not None:
            if getattr(self.layers[0], "takes_indices", False):
                raise ValueError("x_dot: the model's input is integer indices, which have no "
                                 "tangent; pass x_dot=None")
            x_dot = as_float_array(x_dot, "x_dot")
            check_shape(x_dot, x.shape, "x_dot")
        out, caches = self._forward(params, x)
        out_dot, _ = self._jvp(v, caches, x_dot)
        return out, (np.zeros_like(out) if out_dot is None else out_dot)

    def _loss_tangents(self, params: Mapping[str, Any], x: Any, y: Any,
                       v: Mapping[str, Any]) -> _LossTangents:
        """Forward pass and loss, and their forward-mode derivatives along ``v``."""
        loss_spec = self._need_loss()
        params = self.check_params(params)
        x = self._check_input(x)
        y = loss_spec.check_target(y, self.output_shape(x.shape))
        v = self._check_direction(v, params)
        out, caches = self._forward(params, x)
        value, loss_cache = loss_spec.forward(out, y)
        check_finite_result(value, lambda: f"loss ({type(loss_spec).__name__}): value")
        out_dot, tangent_caches = self._jvp(v, caches)
        if out_dot is None:       # a model without parameters: nothing moves
            out_dot = np.zeros_like(out)
        loss_dot, loss_tangent_cache = loss_spec.jvp(out_dot, loss_cache)
        check_finite_result(loss_dot, lambda: (
            f"loss ({type(loss_spec).__name__}): forward-mode derivative"))
        return _LossTangents(value, loss_dot, out, out_dot, caches, tangent_caches, loss_cache,
                             loss_tangent_cache, list(params))

    @no_fp_warnings()
    def loss_jvp(self, params: Mapping[str, Any], x: Any, y: Any, v: Mapping[str, Any]
                 ) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """The loss, the output and their directional derivatives along ``v`` (forward mode).

        Parameters
        ----------
        params, x, y
            As :meth:`loss_and_grads` takes them.
        v : dict of str to ndarray
            The direction: the keys and shapes of ``params``.

        Returns
        -------
        loss, loss_dot : float (complex for complex input)
            ``loss_dot = <grad L, v>``, computed forward (not from the gradient).
        out, out_dot : ndarray
            The model output and its directional derivative.
        """
        tangents = self._loss_tangents(params, x, y, v)
        return tangents.value.item(), tangents.loss_dot.item(), tangents.out, tangents.out_dot

    @no_fp_warnings()
    def hvp(self, params: Mapping[str, Any], x: Any, y: Any, v: Mapping[str, Any]
            ) -> tuple[Any, Params, Params]:
        """The loss, its gradient and its Hessian-vector product ``H v`` (the R-operator).

        Parameters
        ----------
        params : dict of str to ndarray
            The unique parameters.
        x, y : ndarray
            The batch and its targets, as :meth:`loss_and_grads` takes them.
        v : dict of str to ndarray
            The direction: the keys and shapes of ``params``.

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
            As :meth:`loss_and_grads` returns them.
        hvp : dict of str to ndarray
            ``H v``, keyed and shaped like ``params``: for a shared parameter the sum over
            every pair of its uses (module docstring).
        """
        tangents = self._loss_tangents(params, x, y, v)
        loss_spec = self._need_loss()
        dout = loss_spec.backward(1.0, tangents.loss_cache)
        # dloss = 1 is a constant: its tangent is 0, so only the loss's Hessian moves dout
        dout_dot = loss_spec.backward_jvp(1.0, 0.0, tangents.loss_cache,
                                          tangents.loss_tangent_cache)
        check_finite_result(dout_dot, lambda: (
            f"loss ({type(loss_spec).__name__}): R-operator: tangent of the gradient with "
            f"respect to the model output"))
        grads, hvp = self._backward_jvp(dout, dout_dot, tangents.caches,
                                        tangents.tangent_caches, tangents.order)
        return tangents.value.item(), grads, hvp

    def _need_loss(self) -> Loss:
        if self.loss_spec is None:
            raise ValueError("loss: this model was built without a loss")
        return self.loss_spec

    def _loss_forward(self, params, x, y):
        loss_spec = self._need_loss()
        params = self.check_params(params)
        x = self._check_input(x)
        y = loss_spec.check_target(y, self.output_shape(x.shape))
        out, caches = self._forward(params, x)
        value, loss_cache = loss_spec.forward(out, y)
        check_finite_result(value, lambda: f"loss ({type(loss_spec).__name__}): value")
        return value, caches, loss_cache, list(params)

    @no_fp_warnings()
    def loss(self, params: Mapping[str, Any], x: Any, y: Any) -> float | complex:
        """The loss (a Python float; complex when ``params`` or ``x`` are complex)."""
        return self._loss_forward(params, x, y)[0].item()

    @no_fp_warnings()
    def loss_and_grads(
        self, params: Mapping[str, Any], x: Any, y: Any
    ) -> tuple[float | complex, Params]:
        """The loss and its gradient with respect to every unique parameter.

        ``grads`` has exactly the keys, order, shapes and (for real inputs) float64 dtype of
        ``params``. A forward or backward pass that overflows (an inf or NaN from finite
        inputs) is a ``FloatingPointError`` naming the layer.
        """
        value, caches, loss_cache, order = self._loss_forward(params, x, y)
        loss_spec = self._need_loss()
        dout = loss_spec.backward(1.0, loss_cache)
        check_finite_result(dout, lambda: f"loss ({type(loss_spec).__name__}): backward: "
                                          f"gradient with respect to the model output")
        _, grads = self._backward(dout, caches, order, need_dx=False)
        return value.item(), grads

    # --- configuration --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the same model."""
        return {
            "layers": [layer_config(layer) for layer in self.layers],
            "loss": None if self.loss_spec is None else self.loss_spec.config(),
            "share": {slot: {"source": src.name, "transpose": src.transpose}
                      for slot, src in self.share.items()},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], what: str = "config") -> Sequential:
        """Inverse of :meth:`config`. A missing, unknown or malformed key is a ``TypeError`` /
        ``ValueError`` naming it (``what`` names the configuration in messages)."""
        check_keys(config, ["layers"], ["loss", "share"], what=what)
        layers = config["layers"]
        if not isinstance(layers, (list, tuple)):
            raise TypeError(f"{what}['layers']: expected a list of layer configs, got "
                            f"{type(layers).__name__} {layers!r:.80}")
        loss = config.get("loss")
        if loss is not None:
            check_keys(loss, ["type"], what=f"{what}['loss'] (None or a loss config)")
            loss_type = loss["type"]
            if not isinstance(loss_type, str) or loss_type not in LOSS_TYPES:
                raise ValueError(f"{what}['loss']: unknown loss type {loss_type!r}; known: "
                                 f"{sorted(LOSS_TYPES)}")
            loss = LOSS_TYPES[loss_type]()
        share_config = config.get("share") or {}
        if not isinstance(share_config, Mapping):
            raise TypeError(f"{what}['share']: expected a dict {{slot: {{'source': name, "
                            f"'transpose': bool}}}}, got {type(share_config).__name__}")
        share = {}
        for slot, source in share_config.items():
            where = f"{what}['share'][{slot!r}]"
            check_keys(source, ["source"], ["transpose"], what=where)
            transpose = source.get("transpose", False)
            if not isinstance(transpose, bool):
                raise TypeError(f"{where}['transpose']: expected a bool, got {transpose!r}")
            share[slot] = ShareSource(source["source"], transpose)
        return cls([layer_from_config(c, f"{what}['layers'][{index}]")
                    for index, c in enumerate(layers)], loss=loss, share=share)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        extra = f", share={self.share!r}" if self.share else ""
        return f"Sequential([{inner}], loss={self.loss_spec!r}{extra})"


def _describe(index: int, layer: Layer) -> str:
    """``layer 'fc2' (Dense)``, or ``layers[1] (Tanh)`` for a layer without a name."""
    kind = type(layer).__name__
    return f"layer {layer.name!r} ({kind})" if layer.name else f"layers[{index}] ({kind})"
