"""Embedding: a lookup table of rows, PyTorch's ``nn.Embedding`` layout.

Legend: ``V`` vocabulary (rows of the table), ``D`` embedding size, ``S`` any shape of
indices (``(N,)``, ``(N, T)``, ...).

``out[s] = weight[indices[s]]``. Every position ``s`` of the indices *uses* one row, so the
indices themselves are a sharing map: a row that occurs k times receives k gradient
contributions, ``dweight[v] = sum over s with indices[s] == v of dout[s]`` (a scatter-add),
and a row that does not occur receives exactly zero.

Second order: the lookup is linear in the table, so :func:`embedding_jvp` looks up the
tangent's rows, ``out_dot[s] = weight_dot[indices[s]]``, and :func:`embedding_backward_jvp`
is the scatter-add of ``dout_dot`` (the backward pass does not depend on the table: no
second-order term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .._validate import as_rectangular, check_array, check_cache, positive_int
from .base import Layer, check_name, register

__all__ = ["Embedding", "EmbeddingCache", "embedding_forward", "embedding_backward",
           "check_indices", "EmbeddingTangentCache", "embedding_jvp", "embedding_backward_jvp"]


class EmbeddingCache(NamedTuple):
    indices: np.ndarray      # S, int64
    weight_shape: tuple      # (V, D)


class EmbeddingTangentCache(NamedTuple):
    weight_dot: np.ndarray   # (V, D), the table's tangent


def check_indices(value: Any, name: str, num_embeddings: int) -> np.ndarray:
    """Integer indices in ``[0, num_embeddings)``, as int64, before any arithmetic.

    Parameters
    ----------
    value : ndarray of int
        Any shape S (at least one axis). A NumPy integer array: floats (even ``3.0``),
        booleans and lists are refused, since a float index silently truncated and a boolean
        read as a mask are the classic ways of embedding the wrong row.
    name : str
        The argument's name, for the message.
    num_embeddings : int
        V, the number of rows.

    Returns
    -------
    ndarray of int64, shape S

    Raises
    ------
    TypeError
        For a non-array or a dtype that is not a (signed or unsigned) integer.
    ValueError
        For a 0-d array, or an index that is negative or >= ``num_embeddings`` (naming the
        range found).
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected an integer array of indices, got "
                        f"{type(value).__name__}")
    if value.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer indices (int64), got dtype {value.dtype}")
    if value.ndim == 0:
        raise ValueError(f"{name}: expected indices of shape (N, ...), got a 0-d array")
    if value.size and (value.min() < 0 or value.max() >= num_embeddings):
        raise ValueError(f"{name}: indices must lie in [0, {num_embeddings}), got range "
                         f"[{value.min()}, {value.max()}]")
    return value.astype(np.int64, copy=False)


def embedding_forward(indices: np.ndarray, weight: np.ndarray
                      ) -> tuple[np.ndarray, EmbeddingCache]:
    """Rows of ``weight`` picked by ``indices``: ``out[s] = weight[indices[s]]``.

    Parameters
    ----------
    indices : ndarray of int, shape S
        Row numbers in ``[0, V)``.
    weight : ndarray, shape (V, D)
        The table (complex under the complex step).

    Returns
    -------
    out : ndarray, shape S + (D,)
    cache : EmbeddingCache

    Raises
    ------
    TypeError, ValueError
        Naming the argument (:func:`check_indices`; a weight that is not 2-D).

    Examples
    --------
    >>> import numpy as np
    >>> out, _ = embedding_forward(np.array([[2, 0]]), np.arange(6.0).reshape(3, 2))
    >>> out.tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    weight = check_array(weight, "embedding_forward: weight", ("V", "D"))
    indices = check_indices(indices, "embedding_forward: indices", weight.shape[0])
    return _embedding_forward(indices, weight)


def _embedding_forward(indices, weight):
    """:func:`embedding_forward` without the argument checks (the model checked them)."""
    return weight[indices], EmbeddingCache(indices, weight.shape)   # S + (D,)


def embedding_backward(dout: np.ndarray, cache: EmbeddingCache) -> np.ndarray:
    """Gradient of the table: the scatter-add of ``dout`` onto the rows that were used.

    ``dweight[v] = sum over positions s with indices[s] == v of dout[s]``. Written with
    ``np.add.at``, which *accumulates* repeated indices; ``dweight[indices] += dout`` would
    keep only one of the contributions of a repeated row (NumPy's buffered fancy-index
    assignment), the assigned-instead-of-summed bug of shared weights.

    Parameters
    ----------
    dout : ndarray, shape S + (D,)
        The upstream gradient.
    cache : EmbeddingCache

    Returns
    -------
    dweight : ndarray, shape (V, D)
        Zero in every row that no index names. (The indices are not differentiable: there
        is no input gradient.)
    """
    check_cache(cache, EmbeddingCache, "embedding_backward: cache")
    dout = check_array(dout, "embedding_backward: dout",
                       (*cache.indices.shape, cache.weight_shape[1]))
    return _embedding_backward(dout, cache)


def _embedding_backward(dout, cache):
    """:func:`embedding_backward` without the argument checks."""
    dim = cache.weight_shape[1]
    dweight = np.zeros(cache.weight_shape, dtype=dout.dtype)          # (V, D)
    # One row of dout per position, added to the row its index names: k occurrences of a
    # row add k contributions.
    np.add.at(dweight, cache.indices.reshape(-1), dout.reshape(-1, dim))
    return dweight


def embedding_jvp(weight_dot: np.ndarray, cache: EmbeddingCache
                  ) -> tuple[np.ndarray, EmbeddingTangentCache]:
    """``out_dot[s] = weight_dot[indices[s]]`` (the indices have no tangent).

    Parameters
    ----------
    weight_dot : ndarray, shape (V, D)
    cache : EmbeddingCache

    Returns
    -------
    out_dot : ndarray, shape S + (D,)
    tangent_cache : EmbeddingTangentCache
    """
    check_cache(cache, EmbeddingCache, "embedding_jvp: cache")
    weight_dot = check_array(weight_dot, "embedding_jvp: weight_dot", cache.weight_shape)
    return _embedding_jvp(weight_dot, cache)


def _embedding_jvp(weight_dot, cache):
    return weight_dot[cache.indices], EmbeddingTangentCache(weight_dot)


def embedding_backward_jvp(dout: np.ndarray, dout_dot: np.ndarray, cache: EmbeddingCache,
                           tangent_cache: EmbeddingTangentCache) -> np.ndarray:
    """``dweight_dot`` (V, D): the scatter-add of ``dout_dot`` (no second-order term)."""
    check_cache(cache, EmbeddingCache, "embedding_backward_jvp: cache")
    check_cache(tangent_cache, EmbeddingTangentCache, "embedding_backward_jvp: tangent_cache")
    shape = (*cache.indices.shape, cache.weight_shape[1])
    check_array(dout, "embedding_backward_jvp: dout", shape)
    dout_dot = check_array(dout_dot, "embedding_backward_jvp: dout_dot", shape)
    return _embedding_backward(dout_dot, cache)


@register
@dataclass(frozen=True)
class Embedding(Layer):
    """Embedding layer spec: parameter ``weight`` (num_embeddings, embedding_dim).

    Input: integer indices of any shape ``S`` (batch first, e.g. ``(N, T)`` token ids), as
    the *first* layer of a ``Sequential``; output ``S + (embedding_dim,)``. There is no input
    gradient (the model's ``vjp`` returns ``dx = None``).

    Initialisation (:meth:`init_parameters`): N(0, 1), PyTorch's ``nn.Embedding`` default.
    """

    name: str
    num_embeddings: int
    embedding_dim: int

    has_parameters = True
    #: The input is integer indices: ``Sequential`` checks them with :meth:`check_input`
    #: instead of converting them to float, and allows this layer first only.
    takes_indices: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "num_embeddings",
                           positive_int(self.num_embeddings, "num_embeddings"))
        object.__setattr__(self, "embedding_dim",
                           positive_int(self.embedding_dim, "embedding_dim"))

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.num_embeddings, self.embedding_dim)}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: expected indices of shape (N, ...), got "
                             f"{tuple(input_shape)}")
        return (*input_shape, self.embedding_dim)

    def check_input(self, x: Any, name: str) -> np.ndarray:
        """``x`` (an array or a nested list of ints) as int64 indices in range
        (:func:`check_indices`)."""
        return check_indices(as_rectangular(x, name, "token indices"), name,
                             self.num_embeddings)

    def init_parameters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"weight": rng.standard_normal((self.num_embeddings, self.embedding_dim))}

    def forward(self, x, params):
        return _embedding_forward(x, params["weight"])

    def backward(self, dout, cache):
        return None, {"weight": _embedding_backward(dout, cache)}

    def jvp(self, x_dot, params_dot, cache):
        return _embedding_jvp(params_dot["weight"], cache)

    def backward_jvp(self, dout, dout_dot, cache, tangent_cache):
        return None, {"weight": _embedding_backward(dout_dot, cache)}
