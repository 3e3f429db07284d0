"""Layers that use their own parameters several times, and their unshared twins.

A layer in :data:`LAYER_SPLITS` is replaced in a model's untied twin by a layer that holds a
separate copy of its parameter for every use, each copy given the shared value:

* :class:`~refimpl.nn.Conv2D` -> :class:`~refimpl.nn.LocallyConnected2D`, the kernel copied at
  every output position (parts over ``("Ho", "Wo")``);
* :class:`~refimpl.nn.RNN` -> :class:`~refimpl.nn.UnrolledRNN`, one copy per time step (parts
  over ``("T",)``; ``weight_hh`` is not used at step 0, whose part is zero);
* :class:`~refimpl.nn.Embedding` -> an ``Embedding`` with one row per *occurrence* (position
  of the index array), read by the positions ``0 .. N*T-1`` in order: each row of the twin is
  used once, so its gradient is that occurrence's contribution (sparse parts over the index
  array's axes, each landing in one row of the shared table).

The twin computes the same loss at the same point, so the gradients of its copies are the
uses' contributions, and their sum is the shared layer's gradient.

Legend: ``Ho``, ``Wo`` output height and width of a convolution; ``T`` time steps; ``S`` the
index array's shape (``(N, T)`` for token ids); ``V`` rows, ``D`` embedding size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..nn import RNN, Conv2D, Embedding, LocallyConnected2D, UnrolledRNN
from ..nn.base import Layer

__all__ = ["Parts", "LayerSplit", "LAYER_SPLITS"]

Params = dict[str, np.ndarray]


class Parts(NamedTuple):
    """A term split further over the uses of one parameter inside one layer.

    Dense parts (``rows is None``): ``gradients`` has shape ``(*grid, *parameter shape)`` and
    its sum over the grid axes is the term. For a convolution ``axes == ("Ho", "Wo")`` and
    ``gradients[i, j]`` is the kernel's gradient through output position ``(i, j)`` alone; for
    an RNN ``axes == ("T",)`` and ``gradients[t]`` is the gradient through step ``t`` alone.

    Row parts (an embedding): every part touches one row of a ``(V, D)`` table, so only that
    row is stored: ``gradients`` has shape ``(*grid, D)`` and ``rows`` (shape ``grid``, int)
    names the row each part lands in; the term is their scatter-add.
    """

    axes: tuple[str, ...]
    gradients: np.ndarray
    rows: np.ndarray | None = None

    def total(self, shape: tuple[int, ...]) -> np.ndarray:
        """The term: the parts summed into an array of the parameter's ``shape``."""
        grid = tuple(range(len(self.axes)))
        if self.rows is None:
            return self.gradients.sum(axis=grid)
        total = np.zeros(shape, dtype=self.gradients.dtype)
        np.add.at(total, self.rows.reshape(-1), self.gradients.reshape(-1, *shape[1:]))
        return total

    def norms(self) -> np.ndarray:
        """``||part||`` at every grid position, shape ``grid``."""
        flat = self.gradients.reshape(*self.gradients.shape[:len(self.axes)], -1)
        return np.sqrt(np.sum(flat * flat, axis=-1))

    def scaled(self, factor: float) -> Parts:
        """Every part times ``factor`` (a micro-batch's share)."""
        return Parts(self.axes, factor * self.gradients, self.rows)

    def transposed(self) -> Parts:
        """Every part in the transposed layout (its last two axes swapped)."""
        return Parts(self.axes, np.swapaxes(self.gradients, -1, -2), self.rows)


class LayerSplit(NamedTuple):
    """How a layer that uses a parameter several times is replaced in the untied twin.

    Attributes
    ----------
    layer : Layer
        The unshared twin layer (same name, so the same slot prefix).
    expand : callable
        ``expand(local_params) -> twin_local_params``: the shared layer's parameters copied to
        every use.
    parts : callable
        ``parts(twin_local_grads) -> {local: Parts}``: the twin's gradients as parts of the
        shared layer's parameters.
    input : callable or None
        ``input(x) -> twin_x`` for a first layer whose twin reads other inputs (an
        embedding's twin reads the positions); None to keep the model's input.
    """

    layer: Layer
    expand: Callable[[Params], Params]
    parts: Callable[[Params], dict[str, Parts]]
    input: Callable[[np.ndarray], np.ndarray] | None = None


def _split_convolution(layer: Conv2D, input_shape: tuple[int, ...], x: Any) -> LayerSplit:
    """A convolution as a locally connected layer with its kernel copied at every position."""
    twin = LocallyConnected2D(layer.name, layer.in_channels, layer.out_channels,
                              layer.kernel_size, input_size=tuple(input_shape[2:]),
                              stride=layer.stride, padding=layer.padding,
                              dilation=layer.dilation, groups=layer.groups, bias=layer.bias)
    out_h, out_w = twin.output_size

    def expand(local: Params) -> Params:
        # weight (F, Cg, kH, kW) -> (Ho, Wo, F, Cg, kH, kW); bias (F,) -> (F, Ho, Wo)
        copied = {"weight": np.broadcast_to(local["weight"],
                                            (out_h, out_w, *local["weight"].shape)).copy()}
        if "bias" in local:
            copied["bias"] = np.broadcast_to(local["bias"][:, None, None],
                                             (local["bias"].shape[0], out_h, out_w)).copy()
        return copied

    def parts(grads: Params) -> dict[str, Parts]:
        split = {"weight": Parts(("Ho", "Wo"), grads["weight"])}   # (Ho, Wo, F, Cg, kH, kW)
        if "bias" in grads:
            split["bias"] = Parts(("Ho", "Wo"), np.moveaxis(grads["bias"], 0, -1))  # (Ho, Wo, F)
        return split

    return LayerSplit(twin, expand, parts)


def _split_recurrence(layer: RNN, input_shape: tuple[int, ...], x: Any) -> LayerSplit:
    """An RNN as its unrolled twin: one copy of every weight per time step."""
    steps = input_shape[1]
    twin = UnrolledRNN(layer.name, layer.input_size, layer.hidden_size, steps,
                       nonlinearity=layer.nonlinearity, bias=layer.bias)
    prefix = layer.name + "."

    def expand(local: Params) -> Params:
        copies = twin.copies({prefix + key: value for key, value in local.items()})
        return {key[len(prefix):]: value for key, value in copies.items()}

    def parts(grads: Params) -> dict[str, Parts]:
        split = {}
        for local in layer.parameter_shapes():
            per_step = [grads.get(f"{local}_{t}") for t in range(steps)]
            if local == "weight_hh":   # h_{-1} = 0: step 0 does not use W_hh
                per_step[0] = np.zeros((layer.hidden_size,) * 2,
                                       dtype=grads["weight_ih_0"].dtype)
            split[local] = Parts(("T",), np.stack(per_step))   # (T, *shape)
        return split

    return LayerSplit(twin, expand, parts)


def _index_axes(ndim: int) -> tuple[str, ...]:
    """Names of an index array's axes: ``("N", "T")`` for token ids, ``("N",)``, ..."""
    names = ("N", "T") if ndim == 2 else ("N",)
    return names + tuple(f"S{axis}" for axis in range(len(names), ndim))


def _split_embedding(layer: Embedding, input_shape: tuple[int, ...], x: Any) -> LayerSplit:
    """An embedding as one with a row per occurrence, read by the positions in order."""
    indices = layer.check_input(x, "x")                         # S, int64
    count = indices.size
    twin = Embedding(layer.name, count, layer.embedding_dim)    # (N*T, D): one row per use

    def expand(local: Params) -> Params:
        return {"weight": local["weight"][indices.reshape(-1)]}   # (N*T, D), a copy

    def parts(grads: Params) -> dict[str, Parts]:
        return {"weight": Parts(_index_axes(indices.ndim),
                                grads["weight"].reshape(*indices.shape, -1), indices)}

    return LayerSplit(twin, expand, parts,
                      input=lambda _: np.arange(count, dtype=np.int64).reshape(indices.shape))


#: Layer types that use their own parameters several times -> ``split(layer, input_shape, x)``
#: (``x`` the model's input, read by a first layer such as an embedding) returning the
#: :class:`LayerSplit` of their unshared twin.
LAYER_SPLITS: dict[type, Callable[[Any, tuple[int, ...], Any], LayerSplit]] = {
    Conv2D: _split_convolution,
    RNN: _split_recurrence,
    Embedding: _split_embedding,
}
