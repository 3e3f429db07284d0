"""Where the curvature comes from: a parameter's ``v^T H v`` split into its uses.

The Hessian of a shared parameter ``w`` with uses (slots) ``u``, each reading ``P_u w``
(``P_u`` the identity or a transpose), is the sum over every *pair* of uses::

    H_ww = sum over u, u' of  P_u^T H_{u u'} P_{u'}

so along a direction ``v`` (restricted to ``w``: ``e``, zero on every other parameter) the
curvature ``e^T H e = v_w^T H_ww v_w`` is the sum of one **diagonal block** per use,
``(P_u v_w)^T H_{u u} (P_u v_w)``, and one **cross term** per pair of uses, ``2 (P_u v_w)^T
H_{u u'} (P_{u'} v_w)`` (the Hessian is symmetric). Every block comes from the model's
**untied twin** (the same layers without the sharing map, every slot its own parameter, as in
:mod:`.contributions`): with ``d_u`` the twin direction that is ``P_u v_w`` on slot ``u`` and
zero elsewhere, ``H_{u u'}`` entries are ``<d_u, H_twin d_{u'}>``, one twin product ``H_twin
d_{u'}`` per use.

* a **tied pair**, soft: a paired ``(A:w, B:w')`` is one block, A's uses and B's (each model
  its own loss: no cross term between them) and the **penalty**'s share, ``e^T H_pen e = 2 lam
  ||v_A - P v_B||^2`` for the squared L2 penalty, 0 for L1 (its Hessian is 0 away from a kink);
  hard: B's slots that read A's parameter are more uses of it, in B's loss;
* an **anchored** parameter: its uses and the anchor's penalty, ``2 lam ||v_w||^2`` (L2) or 0
  (L1);
* a **Siamese** tower: every branch is a use of every parameter (and every slot of a tower
  with a sharing map one more), coupled by the metric loss: the cross terms between branches
  are that coupling (:mod:`refimpl.hessian.branches` gives each branch's term).

The micro-batches of a step do not add blocks: the step's Hessian is the full batch's (each
micro-batch a separate term of the loss, no cross terms between them); pass the full batch.
Each block's total is checked against :func:`refimpl.hvp` of the whole model along ``e``
(:attr:`Curvature.product`), which computes it without listing the pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ..hessian import hvp
from ..hessian.branches import branch_products
from ..nn import Sequential, Siamese
from ..tying import AnchoredModel, TiedPair
from ..tying.penalties import (
    PENALTIES,
    anchored_penalty_backward_jvp,
    anchored_penalty_forward,
    anchored_penalty_jvp,
)

__all__ = ["CurvatureTerm", "Curvature", "model_curvature"]

Params = dict[str, np.ndarray]


class CurvatureTerm(NamedTuple):
    """One term of a block's ``e^T H e``.

    Attributes
    ----------
    label : str
        ``"enc.weight"`` (a use), ``"enc.weight x dec.weight^T"`` (a cross term),
        ``"penalty (l2)"``.
    kind : str
        ``"use"`` (a diagonal block), ``"cross"`` (a pair of uses, counted twice: ``2 d_u^T
        H d_u'``) or ``"penalty"`` (a tying or anchoring penalty's Hessian).
    uses : tuple of str
        The uses the term involves (one for a use, two for a cross term, none for a penalty).
    value : float
    """

    label: str
    kind: str
    uses: tuple[str, ...]
    value: float


class Curvature(NamedTuple):
    """One block: a parameter (or a soft-tied pair) and the terms of its ``e^T H e``.

    Attributes
    ----------
    names : tuple of str
        The parameters of the block: one, or a soft-tied pair's two (``"A:w"``, ``"B:w'"``).
    value : float
        ``e^T H e``, the sum of the terms (``e``: the direction on ``names``, zero elsewhere).
    product : float
        The same from :func:`refimpl.hvp` of the whole model along ``e``: ``<e, H e>``
        (equal to ``value`` up to rounding: a check that no pair of uses is missing).
    terms : tuple of CurvatureTerm
        Uses first (in the order of the layers, model A before B, branch by branch), then the
        cross terms, then the penalty.
    """

    names: tuple[str, ...]
    value: float
    product: float
    terms: tuple[CurvatureTerm, ...]

    def shares(self) -> list[float]:
        """Each term's share of :attr:`value` (NaN when the value is 0)."""
        return [term.value / self.value if self.value != 0 else float("nan")
                for term in self.terms]


# --- one model's uses --------------------------------------------------------------------------

class _Use(NamedTuple):
    label: str          # for a reader: "dec.weight^T", "A:fc1.weight", "x1:fc1.weight"
    slot: str           # the twin's parameter (a slot of the model)
    transpose: bool     # the slot reads the unique parameter transposed
    group: int          # uses of one loss term share a group; other groups' cross terms are 0


def _twin(model: Sequential) -> Sequential:
    """The untied twin: the same layers and loss, every slot its own parameter."""
    return Sequential(model.layers, loss=model.loss_spec)


def _slot_values(model: Sequential, values: Mapping[str, np.ndarray]) -> Params:
    """A unique-keyed dict as the twin's slot-keyed one (transposed uses transposed)."""
    return {slot: values[root].T if transpose else values[root]
            for slot, (root, transpose) in model.slot_uses().items()}


def _label(prefix: str, slot: str, transpose: bool) -> str:
    return prefix + slot + ("^T" if transpose else "")


def _blocks(products: list[Params], directions: list[Params], uses: list[_Use]
            ) -> np.ndarray:
    """``M[i, j] = <d_i, H d_j>``, with ``products[j] = H d_j`` on the twin and ``d_i``
    nonzero on its slot only; 0 between uses of different loss terms."""
    count = len(uses)
    matrix = np.zeros((count, count))
    for i, use in enumerate(uses):
        for j, other in enumerate(uses):
            if use.group == other.group:
                matrix[i, j] = float(np.sum(directions[i][use.slot] * products[j][use.slot]))
    return matrix


def _terms(matrix: np.ndarray, uses: list[_Use]) -> list[CurvatureTerm]:
    """Diagonal blocks, then cross terms ``M[i, j] + M[j, i]`` of uses of one loss term."""
    terms = [CurvatureTerm(use.label, "use", (use.label,), float(matrix[i, i]))
             for i, use in enumerate(uses)]
    for i, use in enumerate(uses):
        for j in range(i + 1, len(uses)):
            if use.group == uses[j].group:
                terms.append(CurvatureTerm(f"{use.label} x {uses[j].label}", "cross",
                                           (use.label, uses[j].label),
                                           float(matrix[i, j] + matrix[j, i])))
    return terms


def _sequential_terms(model: Sequential, params: Params, x: Any, y: Any, v: Params,
                      prefix: str = "", reads: Mapping[str, tuple[str, bool]] | None = None,
                      group: int = 0) -> dict[str, list[CurvatureTerm]]:
    """The use and cross terms of every unique parameter ``model`` reads, keyed by the
    parameter's name (``reads``: a parameter of ``model`` that stands for another's, hard
    tying; the key is then the other's)."""
    twin = _twin(model)
    slot_params = _slot_values(model, params)
    zero = {slot: np.zeros_like(value) for slot, value in slot_params.items()}
    reads = reads or {}
    by_root: dict[str, list[_Use]] = {}
    for slot, (root, transpose) in model.slot_uses().items():
        # the label reads relative to the parameter the use stands for (a pair's A:w)
        flip = transpose ^ reads.get(root, (root, False))[1]
        by_root.setdefault(root, []).append(_Use(_label(prefix, slot, flip), slot,
                                                 transpose, group))
    found = {}
    for root, uses in by_root.items():
        directions, products = [], []
        for use in uses:
            direction = dict(zero)
            direction[use.slot] = v[root].T if use.transpose else v[root]
            directions.append(direction)
            products.append(twin.hvp(slot_params, x, y, direction)[2])
        target = reads.get(root, (root, False))[0]
        found[target] = _terms(_blocks(products, directions, uses), uses)
    return found


def _siamese_terms(model: Siamese, params: Params, data: tuple, v: Params
                   ) -> dict[str, list[CurvatureTerm]]:
    """Every (branch, slot) is a use of its unique parameter; the metric loss couples the
    branches, so every pair of uses has a cross term."""
    tower = model.tower
    twin = _twin(tower)
    slot_params = _slot_values(tower, params)
    zero = {slot: np.zeros_like(value) for slot, value in slot_params.items()}
    branches = model.branch_names
    twin_model = Siamese(twin, model.loss_spec)
    by_root: dict[str, list[tuple[int, _Use]]] = {}
    for branch_index, branch in enumerate(branches):
        for slot, (root, transpose) in tower.slot_uses().items():
            by_root.setdefault(root, []).append(
                (branch_index, _Use(_label(f"{branch}:", slot, transpose), slot, transpose, 0)))
    found = {}
    for root, uses in by_root.items():
        count = len(uses)
        matrix = np.zeros((count, count))
        per_use = []
        for branch_index, use in uses:
            direction = dict(zero)
            direction[use.slot] = v[root].T if use.transpose else v[root]
            per_use.append((branch_index, direction))
        for j, (branch_j, direction_j) in enumerate(per_use):
            vectors = [direction_j if b == branch_j else zero for b in range(len(branches))]
            products = branch_products(twin_model, [slot_params] * len(branches), data,
                                       vectors)      # each branch's term of H_twin d_j
            for i, (branch_i, direction_i) in enumerate(per_use):
                slot = uses[i][1].slot
                matrix[i, j] = float(np.sum(direction_i[slot] * products[branch_i][slot]))
        found[root] = _terms(matrix, [use for _, use in uses])
    return found


# --- penalties ---------------------------------------------------------------------------------

def _pair_penalty_value(pair: TiedPair, tie: Any, params_a: Params, params_b: Params,
                        v_a: Params, v_b: Params) -> float:
    """``e^T H_pen e`` of one tie along ``(v_A, v_B)``: the penalty's ``backward_jvp``
    (``+-2 lam (v_A - v_B)`` for L2, 0 for L1) against the direction."""
    penalty = PENALTIES[pair.penalty_name]
    b, b_dot = params_b[tie.name_b], v_b[tie.name_b]
    if tie.transpose:
        b, b_dot = b.T, b_dot.T
    _, cache = penalty.forward(params_a[tie.name_a], b, tie.lam)
    _, tangent_cache = penalty.jvp(v_a[tie.name_a], b_dot, cache)
    product_a, product_b = penalty.backward_jvp(1.0, 0.0, cache, tangent_cache)
    return float(np.sum(v_a[tie.name_a] * product_a) + np.sum(b_dot * product_b))


def _anchored_penalty_value(model: AnchoredModel, name: str, params: Params,
                            v: Params) -> float:
    _, cache = anchored_penalty_forward(params[name], model.reference[name], model.lams[name],
                                        model.penalty_name)
    _, tangent_cache = anchored_penalty_jvp(v[name], cache)
    product = anchored_penalty_backward_jvp(1.0, 0.0, cache, tangent_cache)
    return float(np.sum(v[name] * product))


# --- the public function -----------------------------------------------------------------------

def _restricted(v: Params, names: tuple[str, ...]) -> Params:
    """``v`` on ``names``, zero on every other parameter."""
    return {key: value if key in names else np.zeros_like(value) for key, value in v.items()}


def _check(model: Any, params: Mapping[str, Any], data: Any, v: Mapping[str, Any]
           ) -> tuple[Params, Params]:
    """``params`` and ``v`` as float64 dicts in params' order, after :func:`refimpl.hvp`'s
    own checks of the model, the data and the direction."""
    hvp(model, params, data, v)     # validates everything (a TypeError / ValueError naming it)
    checked = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    return checked, {key: np.asarray(v[key], dtype=np.float64) for key in checked}


def model_curvature(model: Any, params: Mapping[str, Any], data: Any,
                    v: Mapping[str, Any]) -> list[Curvature]:
    """Every parameter's ``e^T H e`` along ``v``, split into its uses, their cross terms and
    a penalty's share (module docstring).

    Parameters
    ----------
    model : refimpl.nn.Sequential, refimpl.TiedPair, refimpl.AnchoredModel or refimpl.nn.Siamese
    params, data, v
        As :func:`refimpl.hvp` takes them (a pair's joined keys ``"A:<name>"`` /
        ``"B:<name>"``; for micro-batches, the full batch: the step's Hessian is its Hessian).

    Returns
    -------
    list of Curvature
        One block per parameter, in the order of ``params``, except that a soft-tied pair's
        two parameters are one block (at the place of A's).

    Raises
    ------
    TypeError, ValueError
        As :func:`refimpl.hvp`, naming the argument.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl import nn
    >>> model = nn.Sequential([nn.Dense("enc", 3, 2), nn.Tanh(), nn.Dense("dec", 2, 3)],
    ...                       loss=nn.MSE(), share={"dec.weight": nn.transposed("enc.weight")})
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> params = model.init(0)
    >>> v = {key: np.ones_like(value) for key, value in params.items()}
    >>> block = model_curvature(model, params, (x, x), v)[0]
    >>> [term.label for term in block.terms]
    ['enc.weight', 'dec.weight^T', 'enc.weight x dec.weight^T']
    >>> bool(np.isclose(block.value, block.product))
    True
    """
    params, v = _check(model, params, data, v)
    penalties: dict[str, list[CurvatureTerm]] = {}
    partners: dict[str, str] = {}
    if isinstance(model, TiedPair):
        found, penalties, partners = _pair_terms(model, params, data, v)
    elif isinstance(model, AnchoredModel):
        found = _sequential_terms(model.model, params, *data, v)
        label = f"penalty ({model.penalty_name})"
        for name in model.names:
            penalties[name] = [CurvatureTerm(label, "penalty", (), _anchored_penalty_value(
                model, name, params, v))]
    elif isinstance(model, Siamese):
        found = _siamese_terms(model, params, tuple(data), v)
    else:
        found = _sequential_terms(model, params, *data, v)
    blocks, done = [], set()
    for name in params:
        if name in done:
            continue
        names = (name, partners[name]) if name in partners else (name,)
        done.update(names)
        terms = [term for key in names for term in found.get(key, [])]
        terms = ([term for term in terms if term.kind == "use"]
                 + [term for term in terms if term.kind == "cross"]
                 + penalties.get(name, []))
        e = _restricted(v, names)
        product = hvp(model, params, data, e)
        blocks.append(Curvature(names, float(sum(term.value for term in terms)),
                                float(sum(np.sum(e[key] * product[key]) for key in names)),
                                tuple(terms)))
    return blocks


def _pair_terms(pair: TiedPair, params: Params, data: Any, v: Params) -> tuple:
    """A pair's use and cross terms per joined key, the penalties' terms (soft mode, under
    A's key) and the partner of every soft-paired key."""
    (xa, ya), (xb, yb) = data
    params_a, params_b = pair.split(params)
    v_a, v_b = pair.split(v, "v")
    found = {f"A:{name}": terms for name, terms in
             _sequential_terms(pair.model_a, params_a, xa, ya, v_a, "A:", group=0).items()}
    shared = pair.shared_b()
    full_b, v_full_b = dict(params_b), dict(v_b)
    for name_b, (name_a, transpose) in shared.items():
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        v_full_b[name_b] = v_a[name_a].T if transpose else v_a[name_a]
    order_b = list(pair.model_b.parameter_shapes())
    full_b = {key: full_b[key] for key in order_b}
    v_full_b = {key: v_full_b[key] for key in order_b}
    reads = {name_b: (f"A:{name_a}", transpose) for name_b, (name_a, transpose)
             in shared.items()}
    for name, terms in _sequential_terms(pair.model_b, full_b, xb, yb, v_full_b, "B:",
                                         reads, group=1).items():
        key = name if name.startswith("A:") else f"B:{name}"
        found.setdefault(key, []).extend(terms)
    penalties, partners = {}, {}
    if pair.mode == "soft":
        label = f"penalty ({pair.penalty_name})"
        for tie in pair.pairs:
            key_a, key_b = f"A:{tie.name_a}", f"B:{tie.name_b}"
            partners[key_a], partners[key_b] = key_b, key_a
            penalties[key_a] = [CurvatureTerm(label, "penalty", (), _pair_penalty_value(
                pair, tie, params_a, params_b, v_a, v_b))]
    return found, penalties, partners
