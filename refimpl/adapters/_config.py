"""A case configuration (``case.config``) as a plain plan that every framework adapter walks.

Framework-neutral (NumPy only). The plan says *what* to compute; an adapter says *how*, with
its framework's own layers and autodiff. Every case kind reduces to the same few things:

* **runs**: models applied to inputs, each ``(model plan, input key, target keys, output
  name)``; the losses of all runs are summed (one run for a model, two for a tied pair);
* **metric**: for a Siamese model, one run per branch (the tower on ``anchor``, ``positive``,
  ``negative`` or ``x1``, ``x2``) and, instead of the runs' own losses, one metric loss (the
  triplet margin or the contrastive loss) of their outputs;
* **terms**: penalties ``lam * ||w - other||`` (squared L2 or L1) between a parameter and
  another parameter (a soft-tied pair, possibly transposed) or a reference that arrives as
  an input ``"w0:<name>"`` (an anchored model; zero when that input is absent: weight decay);
* **parameters**: the exact keys of ``params`` (and of the returned ``grads``);
* **micro-batches**: for a micro-batch case, each run's micro-batch sizes ``n_i``: the step
  is the sum over micro-batches of the losses weighted by ``n_i / N`` (each run's own ``N``),
  the terms added once; :func:`refimpl.adapters.micro_batches` splits the
  inputs and gives the weights.

Every layer *slot* (``"fc3.weight"``) is resolved to the key of ``params`` it reads and
whether it reads it transposed: sharing chains compose (``fc4 -> fc3^T -> fc2^T`` reads
``fc2`` untransposed), and in a hard-tied pair model B's paired slots read model A's key
(``"A:fc1.weight"``). Each use is then an ordinary read of one leaf tensor, so the
framework's autodiff sums the gradients over uses by itself: nothing here adds gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .._validate import check_int, check_keys, check_real
from ..nn.base import LAYER_TYPES
from ..nn.metric_losses import metric_loss_from_config
from ..nn.siamese import BRANCH_NAMES
from ..testing.comparison import NotExpressible
from ..tying.penalties import PENALTIES

__all__ = ["Use", "LayerStep", "ModelPlan", "Run", "Term", "Metric", "CasePlan", "plan_case",
           "LAYER_FIELDS", "LOSSES", "PENALTY_NAMES", "CASE_KEYS"]

#: Per layer type: (required fields, {optional field: default}). The geometry fields of the
#: convolutions and poolings (kernel_size, stride, padding, dilation, input_size) become
#: ``(int, int)``.
LAYER_FIELDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "Dense": (("name", "in_features", "out_features"), {"bias": True}),
    "Conv2D": (("name", "in_channels", "out_channels", "kernel_size"),
               {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True}),
    "LocallyConnected2D": (("name", "in_channels", "out_channels", "kernel_size", "input_size"),
                           {"stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                            "bias": True}),
    "Embedding": (("name", "num_embeddings", "embedding_dim"), {}),
    "RNN": (("name", "input_size", "hidden_size"), {"nonlinearity": "tanh", "bias": True}),
    "ReLU": ((), {}), "Tanh": ((), {}), "Sigmoid": ((), {}), "Softplus": ((), {}),
    "Identity": ((), {}), "Flatten": ((), {}), "LastStep": ((), {}),
    "LeakyReLU": ((), {"negative_slope": 0.01}),
    "MaxPool2D": (("kernel_size",), {"stride": None, "padding": 0}),
    "AvgPool2D": (("kernel_size",), {"stride": None, "padding": 0, "count_include_pad": True}),
}
#: The losses an adapter expresses (both reduced by the mean, as PyTorch's defaults).
LOSSES = ("SoftmaxCrossEntropy", "MSE")
#: The penalties an adapter expresses: ``lam * sum (a - b)^2`` and ``lam * sum |a - b|``.
PENALTY_NAMES = ("l2", "l1")
#: The top-level keys that name a case's kind (``"base"``: a micro-batch case, whose
#: ``"micro_batches"`` and ``"micro_batches_b"`` are read too); any other top-level key is
#: ignored.
CASE_KEYS = ("model", "pair", "anchored", "siamese", "base")
_GEOMETRY_TYPES = ("Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D")
_PAIR_FIELDS = ("kernel_size", "stride", "padding", "dilation", "input_size")


class Use(NamedTuple):
    """What one layer slot reads: the key of ``params``, as is or transposed (2-D only)."""

    key: str
    transpose: bool


class LayerStep(NamedTuple):
    """One layer: its type, its hyper-parameters (defaults filled in, pairs as tuples) and,
    for a layer with parameters, ``{local name: Use}`` (``{"weight": Use("fc2.weight",
    True)}``)."""

    type: str
    options: dict[str, Any]
    params: dict[str, Use]


class ModelPlan(NamedTuple):
    """A ``Sequential``: its layers in order and its loss ("SoftmaxCrossEntropy" or "MSE";
    None for a Siamese tower, whose loss is the plan's metric)."""

    layers: tuple[LayerStep, ...]
    loss: str | None


class Run(NamedTuple):
    """One model applied to ``inputs[input]`` and compared with the first of ``targets``
    present in the inputs (``("yb", "xb")``: an autoencoder without labels is its own
    target); its output is returned as ``outputs[output]``."""

    model: ModelPlan
    input: str
    targets: tuple[str, ...]
    output: str


class Term(NamedTuple):
    """A penalty term ``lam * ||params[key] - other||`` where ``other`` is ``params[other]``
    (``from_inputs=False``, transposed when ``transpose``) or ``inputs[other]``
    (``from_inputs=True``; zero when absent)."""

    key: str
    other: str
    transpose: bool
    lam: float
    from_inputs: bool


class Metric(NamedTuple):
    """The loss of a Siamese model, over the outputs of its runs in order: ``type``
    "TripletMarginLoss" (``mean max(0, margin + d(a, p) - d(a, n))``) or "ContrastiveLoss"
    (``mean [y d^2 + (1 - y) max(0, margin - d)^2]``), ``d(u, v) = ||u - v + eps||_2`` per row
    (PyTorch's ``pairwise_distance``: eps added to every entry of the difference); ``target``
    the input of the pair labels (``"y"``: 1 similar, 0 dissimilar) or None."""

    type: str
    margin: float
    eps: float
    target: str | None


class CasePlan(NamedTuple):
    """A whole case: ``total = sum of the runs' losses + sum of the terms``.

    ``kind`` is "model", "pair", "anchored" or "siamese" (a micro-batch case has its base
    case's kind and ``micro_batches``); ``penalty`` "l2" or "l1" (None without terms);
    ``parameters`` the exact keys of ``params`` and ``grads``; ``metric`` the Siamese loss
    that replaces the runs' own; ``micro_batches`` one tuple of micro-batch sizes per run
    (None: the whole batch at once).
    """

    kind: str
    runs: tuple[Run, ...]
    terms: tuple[Term, ...]
    penalty: str | None
    parameters: tuple[str, ...]
    metric: Metric | None = None
    micro_batches: tuple[tuple[int, ...], ...] | None = None


def plan_case(config: Mapping[str, Any]) -> CasePlan:
    """The plan of a catalogue case's ``config`` (or a golden manifest's).

    Parameters
    ----------
    config : dict
        ``{"model": ...}``, ``{"pair": ...}``, ``{"anchored": ...}``, ``{"siamese": ...}`` or
        ``{"base": <one of those>, "micro_batches": [n_i], "micro_batches_b": [...]}``, as
        ``refimpl.testing.cases`` writes them; other top-level keys (``input_shape``,
        ``seed``, ``inputs``, ``convention``, ``resolved_share``, ...) are ignored.

    Returns
    -------
    CasePlan

    Raises
    ------
    refimpl.testing.NotExpressible
        For a case kind, layer type, loss or penalty that refimpl knows but the adapters do
        not express.
    TypeError, ValueError
        Naming the configuration entry, for a malformed configuration.

    Examples
    --------
    >>> from refimpl.testing.cases import get_case
    >>> plan = plan_case(get_case("shared-transpose-chain").config)
    >>> plan.runs[0].model.layers[6].params["weight"]     # fc4 -> fc3^T -> fc2^T
    Use(key='fc2.weight', transpose=False)
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    kinds = [key for key in CASE_KEYS if key in config]
    if len(kinds) > 1:
        raise ValueError(f"config: expected one of the keys {list(CASE_KEYS)}, got {kinds}")
    if not kinds:
        raise NotExpressible(f"refimpl.adapters expresses configs with one of the keys "
                             f"{list(CASE_KEYS)}; this one has {sorted(map(str, config))}")
    kind = kinds[0]
    if kind == "base":
        return _plan_micro_batches(config)
    return {"model": _plan_model_case, "pair": _plan_pair, "anchored": _plan_anchored,
            "siamese": _plan_siamese}[kind](config[kind])


# --- one model -----------------------------------------------------------------------------

def _plan_model_case(config: Any) -> CasePlan:
    model, parameters = _plan_model(config, "config['model']")
    return CasePlan("model", (Run(model, "x", ("y",), "out"),), (), None, parameters)


def _plan_model(config: Any, what: str, prefix: str = "",
                external: Mapping[str, Use] | None = None, tower: bool = False
                ) -> tuple[ModelPlan, tuple[str, ...]]:
    """A model's plan and the keys it owns. Keys are ``prefix + name``; a unique parameter
    in ``external`` (hard tying) is read from there instead of being owned; a ``tower`` (of
    a Siamese model) has no loss."""
    check_keys(config, ["layers"], ["loss", "share"], what=what)
    if tower and config.get("loss") is not None:
        raise ValueError(f"{what}['loss']: a Siamese tower has no loss of its own (the metric "
                         f"loss is the model's), got {config['loss']!r}")
    layers_config = config["layers"]
    if not isinstance(layers_config, (list, tuple)) or not layers_config:
        raise TypeError(f"{what}['layers']: expected a non-empty list of layer configs, got "
                        f"{layers_config!r:.80}")
    parsed = [_layer(layer, f"{what}['layers'][{index}]")
              for index, layer in enumerate(layers_config)]
    slots = [f"{name}.{local}" for name, _, _, locals_ in parsed for local in locals_]
    duplicated = sorted({slot for slot in slots if slots.count(slot) > 1})
    if duplicated:
        raise ValueError(f"{what}['layers']: two layers have the parameters {duplicated}")
    share = _share_map(config.get("share") or {}, slots, f"{what}['share']")
    external = external or {}
    not_unique = [name for name in external if name not in slots or name in share]
    if not_unique:
        raise ValueError(f"{what}: hard tying reads {not_unique} from the other model, but "
                         f"they are not unique parameters of this one")
    owned = tuple(prefix + slot for slot in slots if slot not in share and slot not in external)
    steps = []
    for name, layer_type, options, locals_ in parsed:
        uses = {}
        for local in locals_:
            root, transpose = _resolve(f"{name}.{local}", share, f"{what}['share']")
            outside = external.get(root)
            uses[local] = (Use(outside.key, outside.transpose ^ transpose) if outside
                           else Use(prefix + root, transpose))
        steps.append(LayerStep(layer_type, options, uses))
    loss = None if tower else _loss(config.get("loss"), f"{what}['loss']")
    return ModelPlan(tuple(steps), loss), owned


def _layer(config: Any, what: str) -> tuple[str | None, str, dict[str, Any], tuple[str, ...]]:
    """``(name, type, options, local parameter names)`` of one layer config."""
    layer_type = config.get("type") if isinstance(config, Mapping) else None
    if layer_type not in LAYER_FIELDS:
        if isinstance(layer_type, str) and layer_type in LAYER_TYPES:
            raise NotExpressible(f"{what}: refimpl.adapters has no expression of the layer "
                                 f"type {layer_type!r}")
        raise ValueError(f"{what}: unknown layer type {layer_type!r}; the adapters know "
                         f"{sorted(LAYER_FIELDS)}")
    required, optional = LAYER_FIELDS[layer_type]
    check_keys(config, ["type", *required], list(optional), what=f"{what} ({layer_type})")
    options = {**optional, **{key: value for key, value in config.items() if key != "type"}}
    for key in _PAIR_FIELDS if layer_type in _GEOMETRY_TYPES else ():
        if options.get(key) is not None:
            options[key] = _pair(options[key], f"{what}[{key!r}]")
    if layer_type in ("MaxPool2D", "AvgPool2D") and options["stride"] is None:
        options["stride"] = options["kernel_size"]
    name = options.pop("name", None)
    if name is not None and (not isinstance(name, str) or not name or "." in name):
        raise ValueError(f"{what}['name']: expected a non-empty string without '.', got "
                         f"{name!r}")
    return name, layer_type, options, _locals(layer_type, options)


def _locals(layer_type: str, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The local parameter names of a layer (PyTorch's names)."""
    if layer_type == "RNN":
        return (("weight_ih", "weight_hh", "bias_ih", "bias_hh") if options["bias"]
                else ("weight_ih", "weight_hh"))
    if layer_type == "Embedding":
        return ("weight",)
    if layer_type in ("Dense", "Conv2D", "LocallyConnected2D"):
        return ("weight", "bias") if options["bias"] else ("weight",)
    return ()


def _pair(value: Any, what: str) -> tuple[int, int]:
    """An int or a pair of ints as ``(int, int)``."""
    if isinstance(value, (list, tuple)) and len(value) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    raise TypeError(f"{what}: expected an int or a pair of ints, got {value!r}")


def _loss(config: Any, what: str) -> str:
    check_keys(config, ["type"], what=what)
    loss_type = config["type"]
    if loss_type not in LOSSES:
        raise NotExpressible(f"{what}: refimpl.adapters expresses the losses {list(LOSSES)}, "
                             f"not {loss_type!r}")
    return loss_type


# --- sharing ---------------------------------------------------------------------------------

def _share_map(config: Any, slots: list[str], what: str) -> dict[str, tuple[str, bool]]:
    """``{slot: (source, transpose)}`` of a config's ``share`` entry."""
    if not isinstance(config, Mapping):
        raise TypeError(f"{what}: expected a dict {{slot: {{'source': name, 'transpose': "
                        f"bool}}}}, got {type(config).__name__}")
    share = {}
    for slot, entry in config.items():
        where = f"{what}[{slot!r}]"
        check_keys(entry, ["source"], ["transpose"], what=where)
        source, transpose = entry["source"], entry.get("transpose", False)
        if not isinstance(transpose, bool):
            raise TypeError(f"{where}['transpose']: expected a bool, got {transpose!r}")
        for role, name in (("slot", slot), ("source", source)):
            if name not in slots:
                raise ValueError(f"{where}: unknown {role} {name!r}; the slots are {slots}")
        share[slot] = (source, transpose)
    return share


def _resolve(slot: str, share: Mapping[str, tuple[str, bool]], what: str) -> tuple[str, bool]:
    """The unique parameter a slot reads, and whether transposed: each transposed link of
    the chain flips it (a transpose of a transpose is the parameter itself)."""
    path, transpose = [slot], False
    while slot in share:
        slot, flip = share[slot]
        transpose ^= flip
        if slot in path:
            raise ValueError(f"{what}: cycle {' -> '.join(path + [slot])}")
        path.append(slot)
    return slot, transpose


# --- tied pairs and anchored models ------------------------------------------------------------

def _plan_pair(config: Any) -> CasePlan:
    what = "config['pair']"
    check_keys(config, ["model_a", "model_b", "pairs"], ["lam", "mode", "penalty"], what=what)
    mode = config.get("mode", "soft")
    if mode not in ("soft", "hard"):
        raise ValueError(f"{what}['mode']: expected 'soft' or 'hard', got {mode!r}")
    model_a, owned_a = _plan_model(config["model_a"], f"{what}['model_a']", "A:")
    pairs = _pairs(config["pairs"], f"{what}['pairs']")
    hard = {b: Use("A:" + a, transpose) for a, b, transpose in pairs} if mode == "hard" else {}
    model_b, owned_b = _plan_model(config["model_b"], f"{what}['model_b']", "B:", hard)
    for key in ["A:" + a for a, _, _ in pairs] + ["B:" + b for _, b, _ in pairs if not hard]:
        if key not in owned_a + owned_b:
            raise ValueError(f"{what}['pairs']: {key!r} is not a unique parameter of its "
                             f"model; they are {list(owned_a + owned_b)}")
    runs = (Run(model_a, "xa", ("ya",), "out_a"), Run(model_b, "xb", ("yb", "xb"), "out_b"))
    if mode == "hard":
        if config.get("lam") is not None:
            raise ValueError(f"{what}['lam']: hard tying has no strength, got "
                             f"{config['lam']!r}")
        return CasePlan("pair", runs, (), None, owned_a + owned_b)
    lams = _lams(config.get("lam"), [a for a, _, _ in pairs], f"{what}['lam']")
    terms = tuple(Term("A:" + a, "B:" + b, transpose, lams[a], False)
                  for a, b, transpose in pairs)
    return CasePlan("pair", runs, terms, _penalty(config.get("penalty", "l2"), what),
                    owned_a + owned_b)


def _pairs(config: Any, what: str) -> list[tuple[str, str, bool]]:
    if not isinstance(config, (list, tuple)) or not config:
        raise TypeError(f"{what}: expected a non-empty list of {{'a': name, 'b': name, "
                        f"'transpose': bool}}, got {config!r:.80}")
    pairs = []
    for index, entry in enumerate(config):
        check_keys(entry, ["a", "b"], ["transpose"], what=f"{what}[{index}]")
        transpose = entry.get("transpose", False)
        if not isinstance(transpose, bool):
            raise TypeError(f"{what}[{index}]['transpose']: expected a bool, got {transpose!r}")
        pairs.append((entry["a"], entry["b"], transpose))
    return pairs


def _lams(config: Any, names: list[str], what: str) -> dict[str, float]:
    """One strength per name: a number for all, or ``{name: number}`` covering ``names``."""
    if isinstance(config, Mapping):
        check_keys(config, names, what=what)
        return {name: check_real(config[name], f"{what}[{name!r}]", minimum=0)
                for name in names}
    value = check_real(config, what, minimum=0)
    return dict.fromkeys(names, value)


def _penalty(name: Any, what: str) -> str:
    if name in PENALTY_NAMES:
        return name
    if isinstance(name, str) and name in PENALTIES:
        raise NotExpressible(f"{what}['penalty']: refimpl.adapters has no expression of the "
                             f"penalty {name!r}")
    raise ValueError(f"{what}['penalty']: expected one of {list(PENALTY_NAMES)}, got {name!r}")


def _plan_anchored(config: Any) -> CasePlan:
    """``total = L(w) + sum over names lam_n ||w_n - w0_n||``; ``w0_n`` is the input
    ``"w0:<name>"`` when the case hands it over, else zero (weight decay)."""
    what = "config['anchored']"
    check_keys(config, ["model", "names", "lam"], ["penalty", "reference"], what=what)
    model, owned = _plan_model(config["model"], f"{what}['model']")
    names = config["names"]
    if not isinstance(names, (list, tuple)) or not names:
        raise TypeError(f"{what}['names']: expected a non-empty list of parameter names, got "
                        f"{names!r:.80}")
    for name in names:
        if name not in owned:
            raise ValueError(f"{what}['names']: {name!r} is not a unique parameter of the "
                             f"model; they are {list(owned)}")
    lams = _lams(config["lam"], list(names), f"{what}['lam']")
    terms = tuple(Term(name, f"w0:{name}", False, lams[name], True) for name in names)
    return CasePlan("anchored", (Run(model, "x", ("y",), "out"),), terms,
                    _penalty(config.get("penalty", "l2"), what), owned)


# --- Siamese models and micro-batches ---------------------------------------------------------

def _plan_siamese(config: Any) -> CasePlan:
    """One run of the tower per branch (``out_<branch>``), the metric loss over them."""
    what = "config['siamese']"
    check_keys(config, ["tower", "loss"], what=what)
    if not isinstance(config["loss"], dict):
        raise TypeError(f"{what}['loss']: expected a dict {{'type': ..., 'margin': ...}}, got "
                        f"{config['loss']!r:.80}")
    # refimpl's own spec checks the fields (type, margin > 0, p = 2, eps >= 0) and fills in
    # PyTorch's defaults; nothing of it computes here.
    spec = metric_loss_from_config(config["loss"], f"{what}['loss']")
    tower, owned = _plan_model(config["tower"], f"{what}['tower']", tower=True)
    branches = BRANCH_NAMES[spec.branches]
    runs = tuple(Run(tower, branch, (), f"out_{branch}") for branch in branches)
    metric = Metric(type(spec).__name__, spec.margin, spec.eps,
                    "y" if spec.needs_target else None)
    return CasePlan("siamese", runs, (), None, owned, metric)


def _plan_micro_batches(config: Mapping[str, Any]) -> CasePlan:
    """The base case's plan, with each run's micro-batch sizes (a pair: A's, then B's)."""
    base = config["base"]
    if isinstance(base, Mapping) and "base" in base:
        raise ValueError("config['base']: a micro-batch case of a micro-batch case; expected "
                         "a single-batch config")
    plan = plan_case(base)
    sizes = _sizes(config.get("micro_batches"), "config['micro_batches']")
    if plan.kind != "pair":
        if config.get("micro_batches_b") is not None:
            raise ValueError(f"config['micro_batches_b']: only a tied pair splits a second "
                             f"batch; this base is a {plan.kind!r} case")
        return plan._replace(micro_batches=(sizes,) * len(plan.runs))
    sizes_b = _sizes(config.get("micro_batches_b"), "config['micro_batches_b']")
    if len(sizes_b) != len(sizes):
        raise ValueError(f"config['micro_batches_b']: expected as many micro-batches as "
                         f"config['micro_batches'] ({len(sizes)}: one step), got {len(sizes_b)}")
    return plan._replace(micro_batches=(sizes, sizes_b))


def _sizes(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"{what}: expected a non-empty list of micro-batch sizes, got "
                        f"{value!r:.80}")
    return tuple(check_int(size, f"{what}[{index}]", 1) for index, size in enumerate(value))
