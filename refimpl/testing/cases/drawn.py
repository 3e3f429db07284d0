"""Drawn cases without Hypothesis: a random but valid case regenerated exactly from one seed.

``drawn_case(seed)`` draws a small MLP, CNN, shared-parameter MLP or tied pair, a point and
its data from ``numpy.random.default_rng``, and returns a :class:`~refimpl.testing.cases.Case`
named ``drawn-<kind>-<seed>`` whose ``config["seed"]`` is ``seed``: the name alone
regenerates the case (:func:`case_named`), on any machine, so a drawn case that fails a
conformance run can be rerun, or written to a golden folder for another language.

Every drawn case tests something in float32 (the dtype in which conformance runs are
weakest): some gradient is non-zero and no tensor lies below float32's resolution floor at the
point (:func:`unresolved_tensors` is empty). A draw that misses (a dead ReLU layer, a
softmax saturated to float32 precision, a max-pool window near a tie) is redrawn from the same
seed's stream, so the result is still a function of the seed alone.

:func:`unresolved_tensors` lives here, below the oracle, because the drawn cases need it and
the catalogue sits below :mod:`refimpl.testing.oracle` (which re-exports it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from ..._validate import check_seed
from ...nn import CNN, MLP, AvgPool2D, Dense, MaxPool2D, Sequential, transposed
from ...nn.builders import ACTIVATIONS, LOSSES
from ...nn.losses import MSE
from ...tying import TiedPair
from ..comparison import compare_tensor, resolve_tolerance
from ..resolution import case_floors, tensors_of
from . import Case, get_case
from .mlp import model_case
from .tied import pair_case

__all__ = ["DRAWN_KINDS", "RESOLVED_IN", "drawn_case", "drawn_cases", "drawn_name",
           "case_named", "unresolved_tensors"]

#: What :func:`drawn_case` draws, in the order its ``kind`` index uses.
DRAWN_KINDS = ("mlp", "cnn", "shared", "tied")

#: The dtype in which every drawn case is resolvable.
RESOLVED_IN = "float32"

#: Draws tried per seed before giving up (a miss is rare: a few per hundred draws).
MAX_ATTEMPTS = 100

_NAME = re.compile(r"drawn-(?P<kind>[a-z]+)-(?P<seed>[0-9]+)")


def unresolved_tensors(case: Any, dtype: Any = "float32") -> list[str]:
    """Labels of the tensors of ``case`` on which no implementation in ``dtype`` can be judged.

    Those are the tensors that :func:`refimpl.testing.compare_with_oracle` would call
    inconclusive with the default tolerance even for a candidate equal to the reference
    (``rtol * scale + floor >= scale * RESOLVED_FRACTION``, except exactly zero references
    with a zero floor).

    Parameters
    ----------
    case : refimpl.testing.cases.Case
        A catalogue or drawn case.
    dtype : str or numpy dtype
        "float64", "float32" or "tf32".

    Returns
    -------
    list of str
        Labels such as ``"gradient 'fc1.weight'"``; empty when every tensor can be judged.
    """
    dtype_name, tolerance = resolve_tolerance(dtype)
    loss, grads = case.loss_and_grads(case.params)
    outputs = case.outputs(case.params)
    floors = case_floors(case, dtype_name, (loss, grads, outputs))
    found = []
    for key, reference in tensors_of((loss, grads, outputs)):
        row = compare_tensor(key[0], key[1], reference, reference, tolerance, floor=floors[key])
        if row.verdict != "pass":
            found.append(row.label)
    return found


def _kind_of(seed: int) -> str:
    """The kind ``drawn_case(seed)`` draws: from its own stream, so that naming the kind
    explicitly (``drawn_case(seed, kind)``) regenerates the same case."""
    return DRAWN_KINDS[int(np.random.default_rng(seed).integers(len(DRAWN_KINDS)))]


def drawn_name(seed: int) -> str:
    """The name of ``drawn_case(seed)``, ``drawn-<kind>-<seed>``, without drawing the case
    (cheap: what a test collector needs)."""
    seed = check_seed(seed, "seed")
    return f"drawn-{_kind_of(seed)}-{seed}"


def _activation(rng: np.random.Generator) -> str:
    return str(rng.choice(sorted(ACTIVATIONS)))


def _loss(rng: np.random.Generator) -> str:
    return str(rng.choice(sorted(LOSSES)))


def _mlp(rng: np.random.Generator) -> tuple[Sequential, tuple[int, ...]]:
    """An MLP of 1 to 3 layers, widths 1 to 5 (>= 2 classes for cross-entropy)."""
    loss = _loss(rng)
    hidden = [int(size) for size in rng.integers(1, 6, size=int(rng.integers(0, 3)))]
    sizes = [int(rng.integers(1, 5)), *hidden, int(rng.integers(2, 5))]
    return MLP(sizes, activation=_activation(rng), loss=loss), (sizes[0],)


def _cnn(rng: np.random.Generator) -> tuple[Sequential, tuple[int, ...]]:
    """One convolution (kernel <= 3, stride <= 2, padding <= 1, dilation <= 2, groups <= 2),
    an optional 2x2 max or average pool, and one dense layer; raises ValueError when the
    drawn geometry does not fit (the caller redraws)."""
    groups = int(rng.integers(1, 3))
    in_channels = groups * int(rng.integers(1, 3))
    shape = (in_channels, int(rng.integers(3, 8)), int(rng.integers(3, 8)))
    conv = {"out_channels": groups * int(rng.integers(1, 3)),
            "kernel_size": (int(rng.integers(1, 4)), int(rng.integers(1, 4))),
            "stride": int(rng.integers(1, 3)), "padding": int(rng.integers(0, 2)),
            "dilation": int(rng.integers(1, 3)), "groups": groups}
    pool = (None, MaxPool2D(2), AvgPool2D(2))[int(rng.integers(3))]
    model = CNN(shape, [conv], [int(rng.integers(2, 4))], activation=_activation(rng),
                pool=pool, loss=_loss(rng))
    return model, shape


def _shared(rng: np.random.Generator) -> tuple[Sequential, tuple[int, ...]]:
    """An MLP whose third layer reuses the second's weight (plain or transposed; the bias
    too, sometimes), or an autoencoder whose decoder is the encoder transposed."""
    width, features = int(rng.integers(2, 5)), int(rng.integers(1, 5))
    activation = _activation(rng)
    if rng.random() < 0.5:
        enc, dec = Dense("enc", features, width), Dense("dec", width, features)
        model = Sequential([enc, ACTIVATIONS[activation](), dec], loss=MSE(),
                           share={"dec.weight": transposed("enc.weight")})
        return model, (features,)
    share: dict[str, Any] = {"fc3.weight": transposed("fc2.weight") if rng.random() < 0.5
                             else "fc2.weight"}
    if rng.random() < 0.5:
        share["fc3.bias"] = "fc2.bias"
    model = MLP([features, width, width, width, int(rng.integers(2, 4))],
                activation=activation, loss=_loss(rng), share=share)
    return model, (features,)


def _pair(rng: np.random.Generator) -> tuple[TiedPair, int, bool]:
    """A tied pair: classifier A and a classifier or autoencoder B sharing A's first layer,
    soft (L2 or L1) or hard; returns the pair, the input width and whether B autoencodes."""
    features, width = int(rng.integers(1, 5)), int(rng.integers(2, 5))
    model_a = MLP([features, width, int(rng.integers(2, 4))], activation=_activation(rng))
    autoencoder = bool(rng.random() < 0.5)
    if autoencoder:
        model_b = Sequential([Dense("enc", features, width), ACTIVATIONS[_activation(rng)](),
                              Dense("dec", width, features)], loss=MSE())
        pairs = {"fc1.weight": "enc.weight", "fc1.bias": "enc.bias"}
    else:
        model_b = MLP([features, width, int(rng.integers(2, 4))], activation=_activation(rng),
                      loss=_loss(rng))
        pairs = {"fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias"}
    if rng.random() < 0.3:
        return TiedPair(model_a, model_b, pairs, mode="hard"), features, autoencoder
    penalty = "l1" if rng.random() < 0.4 else "l2"
    lam = float(rng.uniform(0.05, 1.0))
    return TiedPair(model_a, model_b, pairs, lam=lam, penalty=penalty), features, autoencoder


def _attempt(kind: str, rng: np.random.Generator, name: str) -> Case:
    """One draw of a ``kind`` case from ``rng`` (ValueError for a geometry that does not fit)."""
    point_seed = int(rng.integers(2**31))
    batch = int(rng.integers(1, 5))
    if kind == "tied":
        pair, features, autoencoder = _pair(rng)
        # The L1 penalty has a kink at a == b: keep every paired entry 0.1 away from it.
        return pair_case(name, pair, (features,), (features,), batch, int(rng.integers(1, 5)),
                         seed=point_seed, autoencoder_b=autoencoder,
                         away_from_kink=pair.penalty_name == "l1")
    model, shape = {"mlp": _mlp, "cnn": _cnn, "shared": _shared}[kind](rng)
    return model_case(name, kind, model, shape, batch, seed=point_seed)


def _tests_something(case: Case) -> bool:
    """Some gradient is non-zero and every tensor can be judged in :data:`RESOLVED_IN`."""
    _, grads = case.loss_and_grads(case.params)
    if not any(np.any(grad != 0) for grad in grads.values()):
        return False
    return not unresolved_tensors(case, RESOLVED_IN)


def drawn_case(seed: int, kind: str | None = None) -> Case:
    """A random but valid case, regenerated exactly from ``seed`` (and ``kind``).

    Parameters
    ----------
    seed : int
        A non-negative int; the case is a function of it alone.
    kind : str, optional
        One of :data:`DRAWN_KINDS` ("mlp", "cnn", "shared", "tied"); default: drawn from the
        seed. ``drawn_case(seed, drawn_case(seed).kind)`` is ``drawn_case(seed)``.

    Returns
    -------
    refimpl.testing.cases.Case
        Named ``drawn-<kind>-<seed>``; ``config["seed"]`` is ``seed`` and
        ``config["point_seed"]`` the seed its point and data were drawn from. Resolvable in
        float32, with some non-zero gradient.

    Raises
    ------
    ValueError
        For a negative seed or an unknown kind.
    TypeError
        For a seed that is not an int.

    Examples
    --------
    >>> case = drawn_case(123, "mlp")
    >>> case.name, case.config["seed"]
    ('drawn-mlp-123', 123)
    """
    seed = check_seed(seed, "seed")
    if kind is None:
        kind = _kind_of(seed)
    if kind not in DRAWN_KINDS:
        raise ValueError(f"kind: expected one of {list(DRAWN_KINDS)} or None, got {kind!r}")
    name = f"drawn-{kind}-{seed}"
    # The stream depends on (seed, kind) only, so every redraw is reproducible too.
    rng = np.random.default_rng((seed, DRAWN_KINDS.index(kind)))
    for _ in range(MAX_ATTEMPTS):
        try:
            case = _attempt(kind, rng, name)
        except ValueError:          # a convolution or pool window larger than its input
            continue
        if _tests_something(case):
            point_seed = case.config["seed"]
            return dataclasses.replace(case, config={**case.config, "seed": seed,
                                                     "point_seed": point_seed,
                                                     "drawn": {"kind": kind, "seed": seed}})
    raise RuntimeError(f"seed {seed}: no resolvable {kind} case in {MAX_ATTEMPTS} draws")


def drawn_cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` drawn cases, of seeds ``seed, seed + 1, ..., seed + count - 1``."""
    seed = check_seed(seed, "seed")
    return [drawn_case(seed + index) for index in range(check_seed(count, "count"))]


def case_named(name: str) -> Case:
    """A built-in case by name, or a drawn case by its name ``drawn-<kind>-<seed>``.

    Raises
    ------
    ValueError
        For a name that is neither (listing what is accepted).
    """
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        try:
            return get_case(name)
        except ValueError:
            raise ValueError(f"case: unknown case {name!r}; expected a built-in case name "
                             f"(refimpl check --list) or drawn-<kind>-<seed> with kind in "
                             f"{list(DRAWN_KINDS)}") from None
    kind, seed = match["kind"], int(match["seed"])
    if kind not in DRAWN_KINDS:
        raise ValueError(f"case: {name!r}: unknown drawn kind {kind!r}; expected one of "
                         f"{list(DRAWN_KINDS)}")
    return drawn_case(seed, kind)
