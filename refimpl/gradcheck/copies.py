"""Many perturbed copies of a model in one forward pass: the engine of the fast full check.

A full check perturbs one coordinate at a time; every perturbed point is a *copy* of the
parameters that differs from the point in that one entry. This module evaluates the loss of
``K`` copies of one parameter at once, with the model's own forward code only (no backward
formula, no linearisation), and three reuses of structure:

* **Below the first use.** The layers below the first layer that reads the perturbed
  parameter see the unperturbed values: their outputs are computed once.
* **One output unit per copy.** Perturbing ``W[i, j]`` of a ``Dense`` layer (or its bias
  ``b[i]``) changes output feature ``i`` only; perturbing a ``Conv2D`` kernel or bias entry
  of output channel ``o`` changes channel ``o`` only. The layer's own forward runs on the
  sliced parameters (a ``Dense`` whose ``K`` output features are the copies' perturbed rows;
  a ``Conv2D`` with one output channel per copy over the input channels of its group) and
  each copy's unit is spliced into the unperturbed output. Element-wise activations that
  follow run on the sliced units only.
* **Copies folded into the batch.** Above, the ``K`` copies are one batch of ``K * N``
  examples through each layer's forward (layers whose examples are independent).

A layer or loss of a type not listed here, a second use of the parameter (sharing) or a
layer reading it in two slots is evaluated copy by copy through its own forward: slower,
never different. The losses are mean reductions, whose forward returns one number for the
whole batch, so the per-copy losses of the two known losses take the mean of nn's own
per-row terms (:func:`refimpl.nn.losses.cross_entropy_rows`,
:func:`refimpl.nn.losses.squared_errors`) over each copy's rows
(:func:`cross_entropy_per_copy`, :func:`mse_per_copy`); :mod:`refimpl.gradcheck.fast`
verifies them (and every slicing) against the model's own loss along seeded random directions
over every entry before it trusts a parameter's results.

Legend: ``K`` copies, ``N`` batch, ``F`` output units (features or channels), ``D`` input
features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ..nn import (
    MSE,
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    Identity,
    LeakyReLU,
    LocallyConnected2D,
    MaxPool2D,
    ReLU,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Softplus,
    Tanh,
)
from ..nn.losses import cross_entropy_rows, squared_errors

__all__ = ["Chain", "ChainCopies", "cross_entropy_per_copy", "mse_per_copy"]

#: Layers whose output for one example depends on that example only: K copies of a batch
#: may be folded into one batch of K * N examples.
EXAMPLEWISE = (Dense, Conv2D, LocallyConnected2D, MaxPool2D, AvgPool2D, Flatten, ReLU,
               LeakyReLU, Tanh, Sigmoid, Softplus, Identity)

#: Layers applied entry by entry: a copy's changed output unit can go through them alone.
ELEMENTWISE = (ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, Identity)


class Chain(NamedTuple):
    """One model of a checked problem, on its data.

    ``reads[u] = (name, transpose)``: the model's unique parameter ``u`` is the checked
    parameter ``name`` (transposed when ``transpose``).
    """

    model: Sequential
    x: np.ndarray
    y: np.ndarray
    reads: Mapping[str, tuple[str, bool]]


class _Slot(NamedTuple):
    layer: int       # index in model.layers
    local: str       # "weight", "bias", ...
    transpose: bool  # the slot holds the checked parameter transposed


class _Sliced(NamedTuple):
    """Copies that differ from the unperturbed output ``base`` (N, ..., F) in one output unit
    each: ``units[k]`` along ``axis`` holds ``values[k]`` (K, N, ...) in copy k."""

    base: np.ndarray
    axis: int
    units: np.ndarray
    values: np.ndarray


class ChainCopies:
    """The loss of one chain at K perturbed copies of a checked parameter.

    Parameters
    ----------
    chain : Chain
    params : dict of str to ndarray
        The checked point (float64), keyed by the checked names.
    """

    def __init__(self, chain: Chain, params: Mapping[str, np.ndarray]) -> None:
        self.chain = chain
        self.params = params
        model = chain.model
        unique = {u: (params[name].T if transpose else params[name])
                  for u, (name, transpose) in chain.reads.items()}
        self.local = [model.layer_params(layer, unique) for layer in model.layers]
        self.slots: dict[str, list[_Slot]] = {}
        uses = model.slot_uses()
        for index, layer in enumerate(model.layers):
            for local in layer.parameter_shapes():
                root, transpose = uses[f"{layer.name}.{local}"]
                name, read_transposed = chain.reads[root]
                self.slots.setdefault(name, []).append(
                    _Slot(index, local, transpose ^ read_transposed))
        # The unperturbed activations: acts[i] is the input of layer i.
        self.acts = [chain.x]
        with np.errstate(all="ignore"):
            for layer, local in zip(model.layers, self.local, strict=True):
                self.acts.append(layer.forward(self.acts[-1], local)[0])

    def uses(self, name: str) -> bool:
        """Whether the chain reads the checked parameter ``name``."""
        return name in self.slots

    def copy_size(self, name: str) -> int:
        """Entries held per copy while evaluating copies of ``name``: the largest layer
        output from its first use on, plus a perturbed row."""
        first = self.slots[name][0].layer
        shape = self.params[name].shape
        return max(act.size for act in self.acts[first + 1:]) + int(np.prod(shape[1:]))

    def losses(self, name: str, flat: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """The chain's loss at the K copies ``params[name].flat[flat[k]] += deltas[k]``.

        Returns
        -------
        ndarray, shape (K,)
            NaN for a copy in which a layer output or the loss is not finite (the model
            raises there; the coordinate loop reads that as a NaN loss).
        """
        slots = self.slots[name]
        shape = self.params[name].shape
        copies = flat.size
        state: Any = None      # None: every copy still equals the unperturbed activations
        bad = np.zeros(copies, dtype=bool)
        with np.errstate(all="ignore"):
            for index in range(slots[0].layer, len(self.chain.model.layers)):
                here = [slot for slot in slots if slot.layer == index]
                state = self._layer(index, state, here, shape, flat, deltas)
                bad |= _non_finite(state)
            out = _dense_copies(state)
            losses = _loss_per_copy(self.chain.model.loss_spec, out, self.chain.y)
        losses = losses.astype(np.result_type(losses, deltas))
        losses[bad | ~np.isfinite(losses)] = np.nan
        return losses

    def _layer(self, index: int, state: Any, here: list[_Slot], shape: tuple[int, ...],
               flat: np.ndarray, deltas: np.ndarray) -> Any:
        """Layer ``index`` on the copies ``state`` (None, a :class:`_Sliced` or (K, N, ...))."""
        layer = self.chain.model.layers[index]
        local = self.local[index]
        if here:
            if state is None and len(here) == 1 and type(layer) in _SLICERS:
                slot = here[0]
                units, rows = _slot_rows(local[slot.local], slot, shape, flat, deltas)
                return _SLICERS[type(layer)](layer, self.acts[index], local, slot.local,
                                             units, rows, self.acts[index + 1])
            return _one_by_one(layer, local, _dense_copies(state, self.acts[index],
                                                            flat.size),
                               [(slot, _slot_indices(slot, shape, flat)) for slot in here],
                               deltas)
        if isinstance(state, _Sliced) and type(layer) in ELEMENTWISE:
            values = layer.forward(state.values, local)[0]
            return state._replace(base=self.acts[index + 1], values=values)
        state = _dense_copies(state)
        if type(layer) in EXAMPLEWISE:
            copies, batch = state.shape[:2]
            out = layer.forward(state.reshape(copies * batch, *state.shape[2:]), local)[0]
            return out.reshape(copies, batch, *out.shape[1:])
        return np.stack([layer.forward(copy, local)[0] for copy in state])


def _slot_indices(slot: _Slot, shape: tuple[int, ...], flat: np.ndarray) -> tuple[np.ndarray, ...]:
    """The index in the slot's array of each copy's perturbed entry (transposed reads swap)."""
    index = np.unravel_index(flat, shape)
    return index[::-1] if slot.transpose else index


def _slot_rows(value: np.ndarray, slot: _Slot, shape: tuple[int, ...], flat: np.ndarray,
               deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output unit of each copy (the first index of its entry) and that unit's row of
    the slot's array with the copy's perturbation: ``(units (K,), rows (K, ...))``."""
    index = _slot_indices(slot, shape, flat)
    units = index[0]
    rows = value[units].astype(np.result_type(value, deltas))
    rows[(np.arange(flat.size), *index[1:])] += deltas
    return units, rows


def _sliced_dense(layer: Dense, x: np.ndarray, local: dict[str, np.ndarray], perturbed: str,
                  units: np.ndarray, rows: np.ndarray, base: np.ndarray) -> _Sliced:
    """A ``Dense`` with one output feature per copy: the copy's (perturbed) row of the weight
    and entry of the bias."""
    sliced = {key: (rows if key == perturbed else value[units]) for key, value in local.items()}
    out = dataclasses.replace(layer, out_features=units.size).forward(x, sliced)[0]
    return _Sliced(base, base.ndim - 1, units, np.moveaxis(out, -1, 0))   # (K, N, ...)


def _sliced_conv(layer: Conv2D, x: np.ndarray, local: dict[str, np.ndarray], perturbed: str,
                 units: np.ndarray, rows: np.ndarray, base: np.ndarray) -> _Sliced:
    """A ``Conv2D`` with one output channel per copy, over the input channels of the group
    that the copy's channel belongs to (``groups`` picks them), one convolution per group."""
    per_group_in = layer.in_channels // layer.groups
    per_group_out = layer.out_channels // layer.groups
    groups = units // per_group_out
    values = np.empty((units.size, base.shape[0], *base.shape[2:]),
                      dtype=np.result_type(base, rows))
    for group in np.unique(groups):
        chosen = np.flatnonzero(groups == group)
        sliced = {key: (rows[chosen] if key == perturbed else value[units[chosen]])
                  for key, value in local.items()}
        single = dataclasses.replace(layer, in_channels=per_group_in,
                                     out_channels=chosen.size, groups=1)
        channels = x[:, group * per_group_in:(group + 1) * per_group_in]
        values[chosen] = single.forward(channels, sliced)[0].transpose(1, 0, 2, 3)
    return _Sliced(base, 1, units, values)


#: The layers whose output units can be sliced, by exact type (a subclass may compute
#: something else).
_SLICERS = {Dense: _sliced_dense, Conv2D: _sliced_conv}


def _dense_copies(state: Any, unperturbed: np.ndarray | None = None,
                  copies: int = 0) -> np.ndarray:
    """The copies as one array (K, N, ...): ``None`` is K times ``unperturbed``; a
    :class:`_Sliced` is its base with each copy's unit spliced in."""
    if state is None:
        return np.broadcast_to(unperturbed, (copies, *unperturbed.shape))
    if not isinstance(state, _Sliced):
        return state
    dtype = np.result_type(state.base, state.values)
    out = np.empty((state.units.size, *state.base.shape), dtype=dtype)
    out[...] = state.base
    index = [slice(None)] * out.ndim
    index[0], index[state.axis + 1] = np.arange(state.units.size), state.units
    # Advanced indices on axes 0 and axis + 1 put the copy axis first: (K, N, ...).
    out[tuple(index)] = state.values
    return out


def _one_by_one(layer: Any, local: dict[str, np.ndarray], inputs: np.ndarray,
                perturbations: list[tuple[_Slot, tuple[np.ndarray, ...]]],
                deltas: np.ndarray) -> np.ndarray:
    """Each copy through the layer's own forward with its own perturbed parameters."""
    outputs = []
    for k, copy in enumerate(inputs):
        params = dict(local)
        for slot, index in perturbations:
            value = params[slot.local].astype(np.result_type(params[slot.local], deltas))
            value[tuple(axis[k] for axis in index)] += deltas[k]
            params[slot.local] = value
        outputs.append(layer.forward(copy, params)[0])
    return np.stack(outputs)


def _non_finite(state: Any) -> np.ndarray:
    """Per copy, whether its layer output holds an inf or NaN."""
    if isinstance(state, _Sliced):
        values = state.values.reshape(state.values.shape[0], -1)
        return ~np.isfinite(values).all(axis=1)
    return ~np.isfinite(state.reshape(state.shape[0], -1)).all(axis=1)


def _loss_per_copy(loss: Any, out: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The loss of every copy: (K, N, ...) -> (K,)."""
    if type(loss) is SoftmaxCrossEntropy and out.ndim == 3:
        return cross_entropy_per_copy(out, target)
    if type(loss) is MSE:
        return mse_per_copy(out, target)
    return np.array([loss.forward(copy, target)[0] for copy in out])


def cross_entropy_per_copy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`refimpl.nn.losses.softmax_cross_entropy_forward` of every copy.

    Parameters
    ----------
    logits : ndarray, shape (K, N, C)
        C classes.
    labels : ndarray of int, shape (N,)

    Returns
    -------
    ndarray, shape (K,)
        ``mean_n -log softmax(logits[k, n])[labels[n]]``: nn's own per-row terms
        (:func:`refimpl.nn.losses.cross_entropy_rows`) of the K * N stacked rows, averaged
        per copy.
    """
    copies, batch, classes = logits.shape
    losses, _ = cross_entropy_rows(logits.reshape(-1, classes), np.tile(labels, copies))
    return losses.reshape(copies, batch).sum(axis=1) / batch


def mse_per_copy(out: np.ndarray, target: np.ndarray) -> np.ndarray:
    """:func:`refimpl.nn.losses.mse_forward` of every copy: (K, N, ...) -> (K,), the mean
    over all of a copy's entries of nn's own squared errors."""
    errors = squared_errors(out, target).reshape(out.shape[0], -1)
    return errors.sum(axis=1) / errors.shape[1]
