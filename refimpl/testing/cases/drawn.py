"""Drawn cases without Hypothesis: a random but valid case regenerated exactly from one seed.

``drawn_case(seed)`` draws a small case of every kind of the catalogue but the probes — an
MLP, a CNN, an MLP that shares parameters, a tied pair, a sequence model (an embedding, an
RNN, a tied or untied language model), a Siamese model (triplet or contrastive) or a
micro-batch case (one of the single-batch kinds split into unequal micro-batches) — with its
point and data, from ``numpy.random.default_rng``, and returns a
:class:`~refimpl.testing.cases.Case` named ``drawn-<kind>-<seed>`` whose ``config["seed"]`` is
``seed``: the name alone regenerates the case (:func:`case_named`), on any machine, so a drawn
case that fails a conformance run can be rerun, or written to a golden folder for another
language. The configurations are the catalogue's (:mod:`refimpl.testing.cases.sequence`,
:mod:`refimpl.testing.cases.siamese`, :mod:`refimpl.testing.cases.microbatch`), so a builder
that expresses the catalogue expresses them.

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

from ..._validate import check_seed, did_you_mean
from ...nn import (
    CNN,
    MLP,
    RNN,
    AvgPool2D,
    ContrastiveLoss,
    Dense,
    Embedding,
    LastStep,
    MaxPool2D,
    Sequential,
    Siamese,
    SoftmaxCrossEntropy,
    Tanh,
    TripletMarginLoss,
    transposed,
)
from ...nn.activations import Sigmoid, Softplus
from ...nn.builders import ACTIVATIONS, LOSSES
from ...nn.losses import MSE
from ...tying import TiedPair
from ..comparison import compare_tensor, resolve_tolerance
from ..resolution import case_floors, tensors_of
from . import Case, all_cases, get_case
from .microbatch import microbatch_case
from .mlp import model_case
from .sequence import sequence_case
from .siamese import kink_distances, siamese_case
from .tied import pair_case

__all__ = ["DRAWN_KINDS", "RESOLVED_IN", "drawn_case", "drawn_cases", "drawn_name",
           "case_named", "parse_drawn_name", "unresolved_tensors"]

#: What :func:`drawn_case` draws, in the order its ``kind`` index uses (new kinds are appended:
#: the stream of ``drawn_case(seed, kind)`` depends on the kind's index, so every name drawn
#: before stays the same case).
DRAWN_KINDS = ("mlp", "cnn", "shared", "tied", "sequence", "siamese", "microbatch")

#: The activations of drawn Siamese towers: smooth (the metric losses have kinks of their own,
#: kept away from by placing the margin).
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "identity")

#: A drawn Siamese case has every row at least this far from its loss's kink.
KINK_GAP = 0.05

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


def _single(kind: str, rng: np.random.Generator, name: str, batches: tuple[int, int] = (1, 5)
            ) -> tuple[Case, Any]:
    """One draw of an "mlp", "cnn", "shared" or "tied" case from ``rng`` and its model (a
    ``Sequential`` or ``TiedPair``), batches drawn in ``range(*batches)``; ValueError for a
    geometry that does not fit."""
    point_seed = int(rng.integers(2**31))
    batch = int(rng.integers(*batches))
    if kind == "tied":
        pair, features, autoencoder = _pair(rng)
        # The L1 penalty has a kink at a == b: keep every paired entry 0.1 away from it.
        return pair_case(name, pair, (features,), (features,), batch, int(rng.integers(*batches)),
                         seed=point_seed, autoencoder_b=autoencoder,
                         away_from_kink=pair.penalty_name == "l1"), pair
    model, shape = {"mlp": _mlp, "cnn": _cnn, "shared": _shared}[kind](rng)
    return model_case(name, kind, model, shape, batch, seed=point_seed), model


def _token_ids(rng: np.random.Generator, shape: tuple[int, int], vocabulary: int) -> np.ndarray:
    """Token ids (N, T) in which some row is named twice when there are two positions or more:
    the embedding's gradient is a scatter-add, and a repeated row is where it can go wrong."""
    tokens = rng.integers(0, vocabulary, size=shape)
    if tokens.size >= 2:
        flat = tokens.reshape(-1)
        first, second = rng.choice(flat.size, size=2, replace=False)
        flat[second] = flat[first]
    return tokens.astype(np.int64)


def _sequence(rng: np.random.Generator, name: str) -> Case:
    """An embedding model, an RNN (tanh or relu, with or without biases) or a tied / untied
    language model, with a label per sequence (``LastStep``) or per position."""
    point_seed = int(rng.integers(2**31))
    batch, steps = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    per_position = bool(rng.random() < 0.5)
    head = [] if per_position else [LastStep()]
    share = None
    variant = ("embedding", "rnn", "language-model")[int(rng.integers(3))]
    if variant == "embedding":
        vocabulary, dim = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        layers = [Embedding("embed", vocabulary, dim), Tanh(), *head,
                  Dense("fc", dim, int(rng.integers(2, 5)))]
    elif variant == "rnn":
        features, hidden = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        layers = [RNN("rnn", features, hidden, nonlinearity=("tanh", "relu")[int(rng.integers(2))],
                      bias=bool(rng.random() < 0.5)), *head,
                  Dense("fc", hidden, int(rng.integers(2, 5)))]
    else:
        vocabulary, dim = int(rng.integers(2, 9)), int(rng.integers(1, 5))
        middle = [RNN("rnn", dim, dim)] if rng.random() < 0.5 else [Dense("mid", dim, dim), Tanh()]
        layers = [Embedding("embed", vocabulary, dim), *middle, *head,
                  Dense("out", dim, vocabulary)]
        share = {"out.weight": "embed.weight"} if rng.random() < 0.5 else None
    model = Sequential(layers, loss=SoftmaxCrossEntropy(), share=share)
    first = model.layers[0]
    x = (_token_ids(rng, (batch, steps), first.num_embeddings) if isinstance(first, Embedding)
         else rng.standard_normal((batch, steps, first.input_size)))
    out_shape = model.output_shape(x.shape)
    y = rng.integers(0, out_shape[-1], size=out_shape[:-1]).astype(np.int64)
    return sequence_case(name, model, x, y, seed=point_seed)


def _siamese(rng: np.random.Generator, name: str, batch: int) -> tuple[Case, Siamese]:
    """A Siamese MLP tower (smooth activations) with a triplet or contrastive loss, the margin
    placed so that one row is a drawn distance inside its hinge and every row at least
    :data:`KINK_GAP` from its kink (ValueError, a redraw, when that cannot be)."""
    point_seed = int(rng.integers(2**31))
    activation = SMOOTH_ACTIVATIONS[int(rng.integers(len(SMOOTH_ACTIVATIONS)))]
    sizes = [int(rng.integers(1, 6)) for _ in range(int(rng.integers(1, 3)))]
    sizes.append(int(rng.integers(2, 6)))                       # the embedding size D
    layers = list(MLP(sizes, activation=activation, loss=None).layers)
    # Distances are translation invariant: a final Dense layer's bias would have a gradient of
    # exactly 0, which no dtype can judge; end with an activation or a Dense without bias.
    final = {"tanh": Tanh, "sigmoid": Sigmoid, "softplus": Softplus}.get(activation)
    if final is not None and rng.random() < 0.5:
        layers.append(final())
    else:
        last = layers[-1]
        layers[-1] = Dense(last.name, last.in_features, last.out_features, bias=False)
    loss_type = (TripletMarginLoss, ContrastiveLoss)[int(rng.integers(2))]
    eps = (1e-6, 0.0)[int(rng.integers(2))]
    drawn = Siamese(Sequential(layers), loss_type(margin=1.0, eps=eps))
    params = drawn.init(point_seed)
    inputs = {branch: rng.standard_normal((batch, sizes[0])) for branch in drawn.branch_names}
    if drawn.loss_spec.needs_target:
        y = (rng.random(batch) < 0.5).astype(np.int64)
        nearby = inputs["x1"] + 0.3 * rng.standard_normal((batch, sizes[0]))
        inputs["x2"] = np.where(y[:, None] == 1, nearby, inputs["x2"])
        inputs["y"] = y
    z = kink_distances(drawn, params, inputs, margin=0.0)     # each row's kink distance - margin
    finite = z[np.isfinite(z)]
    offset = float(rng.uniform(KINK_GAP * 1.01, max(1.0, 2 * KINK_GAP)))
    reachable = finite[finite < offset]
    margin = offset - float(rng.choice(reachable)) if reachable.size else offset
    model = Siamese(drawn.tower, loss_type(margin=margin, eps=eps))
    placed = kink_distances(model, params, inputs)
    if np.min(np.abs(placed[np.isfinite(placed)]), initial=np.inf) < KINK_GAP:
        raise ValueError("a row within KINK_GAP of its kink")
    config = {"siamese": model.config(), "input_shape": [batch, sizes[0]], "seed": point_seed,
              "outputs": [f"out_{branch}" for branch in model.branch_names]}
    return siamese_case(name, model, params, inputs, config), model


def _unequal_sizes(rng: np.random.Generator, total: int, count: int) -> list[int]:
    """``count`` micro-batch sizes >= 1 adding up to ``total`` (> ``count``), not all equal (a
    micro-batch weighted 1/M instead of n_i/N must show)."""
    cuts = sorted(int(cut) for cut in rng.choice(np.arange(1, total), size=count - 1,
                                                 replace=False))
    sizes = [end - start for start, end in zip([0, *cuts], [*cuts, total], strict=True)]
    return sizes if len(set(sizes)) > 1 else [1] * (count - 1) + [total - count + 1]


def _microbatch(rng: np.random.Generator, name: str) -> Case:
    """A drawn MLP, shared, tied or Siamese case of a batch of at least M + 1, split into M = 2
    or 3 unequal micro-batches (a tied pair's two batches each)."""
    base_kind = ("mlp", "shared", "tied", "siamese")[int(rng.integers(4))]
    count = int(rng.integers(2, 4))
    batches = (count + 1, count + 4)
    base_name = f"{name}-base"
    if base_kind == "siamese":
        base, model = _siamese(rng, base_name, int(rng.integers(*batches)))
    else:
        base, model = _single(base_kind, rng, base_name, batches)
    if isinstance(model, TiedPair):
        return microbatch_case(name, base, model,
                               _unequal_sizes(rng, len(base.inputs["xa"]), count),
                               _unequal_sizes(rng, len(base.inputs["xb"]), count))
    return microbatch_case(name, base, model,
                           _unequal_sizes(rng, len(next(iter(base.inputs.values()))), count))


def _attempt(kind: str, rng: np.random.Generator, name: str) -> Case:
    """One draw of a ``kind`` case from ``rng`` (ValueError for a geometry that does not fit
    or a Siamese margin that cannot be placed)."""
    if kind == "sequence":
        return _sequence(rng, name)
    if kind == "siamese":
        return _siamese(rng, name, int(rng.integers(1, 5)))[0]
    if kind == "microbatch":
        return _microbatch(rng, name)
    return _single(kind, rng, name)[0]


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
        One of :data:`DRAWN_KINDS` ("mlp", "cnn", "shared", "tied", "sequence", "siamese",
        "microbatch"); default: drawn from the seed. ``drawn_case(seed, drawn_case(seed).kind)``
        is ``drawn_case(seed)``.

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
            # a micro-batch case's point is its base case's
            point_seed = case.config["seed"] if "seed" in case.config else \
                case.config["base"]["seed"]
            return dataclasses.replace(case, config={**case.config, "seed": seed,
                                                     "point_seed": point_seed,
                                                     "drawn": {"kind": kind, "seed": seed}})
    raise RuntimeError(f"seed {seed}: no resolvable {kind} case in {MAX_ATTEMPTS} draws")


def drawn_cases(count: int, seed: int = 0) -> list[Case]:
    """``count`` drawn cases, of seeds ``seed, seed + 1, ..., seed + count - 1``."""
    seed = check_seed(seed, "seed")
    return [drawn_case(seed + index) for index in range(check_seed(count, "count"))]


def parse_drawn_name(name: str) -> tuple[str, int] | None:
    """``(kind, seed)`` of a drawn case's name ``drawn-<kind>-<seed>`` without drawing it;
    None for a name of another form (a built-in case's).

    Raises
    ------
    ValueError
        For a drawn name of an unknown kind.
    """
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        return None
    kind, seed = match["kind"], int(match["seed"])
    if kind not in DRAWN_KINDS:
        raise ValueError(f"case: {name!r}: unknown drawn kind {kind!r}; expected one of "
                         f"{list(DRAWN_KINDS)}")
    return kind, seed


def case_named(name: str) -> Case:
    """A built-in case by name, or a drawn case by its name ``drawn-<kind>-<seed>``.

    Raises
    ------
    ValueError
        For a name that is neither (listing what is accepted).
    """
    parsed = parse_drawn_name(name)
    if parsed is None:
        try:
            return get_case(name)
        except ValueError:
            known = [case.name for case in all_cases()]
            raise ValueError(f"case: unknown case {name!r}{did_you_mean(name, known)}; "
                             f"expected a built-in case name "
                             f"(refimpl check --list) or drawn-<kind>-<seed> with kind in "
                             f"{list(DRAWN_KINDS)}") from None
    return drawn_case(parsed[1], parsed[0])
