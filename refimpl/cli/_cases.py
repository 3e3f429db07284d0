"""What ``refimpl explain`` and ``refimpl steps`` share: the case to study (a built-in or
drawn case name, or a saved configuration) and the check that ``--plot`` can be honoured."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._io import atomic_output, check_destination, write_text_atomically
from .._validate import check_int, check_seed, did_you_mean
from ..microbatch import split_indices
from ..nn import RNN, Embedding, Sequential, Siamese
from ..testing.cases import Case, all_cases
from ..testing.cases.drawn import case_named
from ..testing.cases.microbatch import microbatch_case
from ..testing.cases.mlp import model_case
from ..testing.cases.sequence import sequence_case
from ..testing.cases.siamese import build_case, siamese_case
from ..testing.cases.tied import anchored_case, pair_case
from ..tying import AnchoredModel, TiedPair

__all__ = ["PLOT_HELP", "add_case_arguments", "load_case", "outputs_ready", "pyplot",
           "save_figure", "write_outputs"]

PLOT_HELP = "(needs matplotlib: pip install 'refimpl[plot]')"


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """The case to study: a built-in ``CASE`` name or ``--config PATH``."""
    parser.add_argument("case", nargs="?", metavar="CASE",
                        help="a built-in case (refimpl check --list names them)")
    parser.add_argument("--config", metavar="PATH",
                        help="instead of CASE, a case configuration saved as JSON (a built-in "
                             "case's 'config': {'model': ..., 'input_shape': [N, ...], 'seed': "
                             "S}, {'pair': ..., 'input_shape_a': ..., 'input_shape_b': ..., "
                             "'seed': S}, {'siamese': ..., 'input_shape': ..., 'seed': S}, or "
                             "{'base': <one of those>, 'micro_batches': [n_0, ...]}); the "
                             "point and data are drawn from the seed")


def _case_from_config(config: Any, path: str) -> Case:
    """A case rebuilt from a saved configuration (see :func:`add_case_arguments`)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"--config {path}: expected a JSON object, got {type(config).__name__}")
    name = f"config:{path}"
    try:
        if "micro_batches" in config:
            base = _case_from_config(config["base"], path)
            model = _model_of(config["base"])
            pair = isinstance(model, TiedPair)
            if not pair and config.get("micro_batches_b") is not None:
                raise ValueError(f"--config {path}: config['micro_batches_b']: only a tied "
                                 f"pair splits a second batch; this base is a "
                                 f"{type(model).__name__}")
            sizes = _micro_batch_sizes(config["micro_batches"], base, "xa" if pair else None,
                                       f"--config {path}: config['micro_batches']")
            sizes_b = (_micro_batch_sizes(config.get("micro_batches_b"), base, "xb",
                                          f"--config {path}: config['micro_batches_b']")
                       if pair else None)
            return microbatch_case(name, base, model, sizes, sizes_b)
        if "siamese" in config:
            return _siamese_case(name, Siamese.from_config(config["siamese"],
                                                           "config['siamese']"), config, path)
        if "model" in config:
            model = Sequential.from_config(config["model"], "config['model']")
            shape = _shape(config, "input_shape", path)
            if isinstance(model.layers[0], (Embedding, RNN)):
                return _sequence_case(name, model, shape, _seed(config, path))
            return model_case(name, "config", model, shape[1:], shape[0], _seed(config, path))
        if "pair" in config:
            pair = TiedPair.from_config(config["pair"])
            shape_a = _shape(config, "input_shape_a", path)
            shape_b = _shape(config, "input_shape_b", path)
            return pair_case(name, pair, shape_a[1:], shape_b[1:], shape_a[0],
                             shape_b[0], _seed(config, path),
                             autoencoder_b=config.get("target_b") == "xb (autoencoder)")
        if "anchored" in config and config.get("reference") == "zero (weight decay)":
            anchored = config["anchored"]
            model = AnchoredModel(Sequential.from_config(anchored["model"]), anchored["lam"],
                                  names=anchored["names"], penalty=anchored["penalty"])
            shape = _shape(config, "input_shape", path)
            return anchored_case(name, model, shape[1:], shape[0], _seed(config, path),
                                 reference_given=False)
    except KeyError as error:
        raise ValueError(f"--config {path}: missing key {error}") from None
    raise ValueError(f"--config {path}: expected a key 'model', 'pair', 'siamese' or "
                     f"'micro_batches' (or 'anchored' with a zero reference; a given reference "
                     f"is data, not configuration)")


def _shape(config: Mapping[str, Any], key: str, path: str) -> tuple[int, ...]:
    """``config[key]``, an input shape ``[N, ...]``: a non-empty list of ints >= 1 (2.5 is not
    truncated, "4" not parsed)."""
    value = config[key]
    what = f"--config {path}: config[{key!r}]"
    if not isinstance(value, list) or not value:
        raise TypeError(f"{what}: expected an input shape [N, ...] (a list of ints), got "
                        f"{value!r:.80}")
    return tuple(check_int(size, f"{what}[{index}]", 1) for index, size in enumerate(value))


def _seed(config: Mapping[str, Any], path: str) -> int:
    """``config["seed"]``: a non-negative int."""
    return check_seed(config["seed"], f"--config {path}: config['seed']")


def _micro_batch_sizes(value: Any, base: Case, input_name: str | None, what: str
                       ) -> list[int]:
    """Micro-batch sizes that partition the batch of ``base`` (of its input ``input_name``,
    or of every input): ints >= 1 summing to the batch size, none truncated or dropped."""
    batch = base.inputs[input_name] if input_name else next(iter(base.inputs.values()))
    if not isinstance(value, list) or not all(np.ndim(size) == 0 for size in value):
        raise TypeError(f"{what}: expected a list of micro-batch sizes [n_0, ...], got "
                        f"{value!r:.80}")
    split_indices(value, len(batch), what)   # ints >= 1 summing to N, or it names the fault
    return [int(size) for size in value]


def _model_of(config: Mapping[str, Any]) -> Any:
    """The model a (base) case configuration describes."""
    if "pair" in config:
        return TiedPair.from_config(config["pair"])
    if "siamese" in config:
        return Siamese.from_config(config["siamese"])
    if "anchored" in config:
        anchored = config["anchored"]
        return AnchoredModel(Sequential.from_config(anchored["model"]), anchored["lam"],
                             names=anchored["names"], penalty=anchored["penalty"])
    return Sequential.from_config(config["model"])


def _sequence_case(name: str, model: Sequential, shape: tuple[int, ...], seed: int) -> Case:
    """A sequence model's case from its seed: token ids in range (an embedding first) or
    standard-normal (N, T, D) inputs, a class label per output position."""
    rng = np.random.default_rng(seed)
    first = model.layers[0]
    x = (rng.integers(0, first.num_embeddings, size=shape).astype(np.int64)
         if isinstance(first, Embedding) else rng.standard_normal(shape))
    out_shape = model.output_shape(x.shape)
    y = rng.integers(0, out_shape[-1], size=out_shape[:-1]).astype(np.int64)
    return sequence_case(name, model, x, y, seed)


def _siamese_case(name: str, model: Siamese, config: Mapping[str, Any], path: str) -> Case:
    """A Siamese case from its seed: a built-in case's ``placement`` rebuilds it as the
    catalogue does (similar pairs close, the margin placed again); otherwise standard-normal
    branch inputs, contrastive labels alternating 1, 0, ... and the configuration's margin."""
    shape = _shape(config, "input_shape", path)
    seed = _seed(config, path)
    if "placement" in config:
        return build_case(name, model.tower, type(model.loss_spec), shape[1:],
                          shape[0], seed, config["placement"], eps=model.loss_spec.eps)
    rng = np.random.default_rng(seed)
    inputs = {branch: rng.standard_normal(shape) for branch in model.branch_names}
    if model.loss_spec.needs_target:
        inputs["y"] = (np.arange(shape[0]) % 2 == 0).astype(np.int64)
    return siamese_case(name, model, model.init(seed), inputs, dict(config))


def load_case(args: argparse.Namespace) -> Case:
    """The case ``CASE`` or ``--config PATH`` names.

    Raises
    ------
    ValueError
        For neither or both, an unknown case name, or a configuration that cannot be read.
    """
    if (args.case is None) == (args.config is None):
        raise ValueError("expected a built-in CASE or --config PATH (one of them); built-in "
                         f"cases: {', '.join(case.name for case in all_cases())}")
    if args.case is not None:
        try:
            return case_named(args.case)
        except ValueError as error:
            hint = did_you_mean(args.case, [case.name for case in all_cases()])
            message = str(error)
            if hint and hint not in message:
                message = message.replace(f"{args.case!r}", f"{args.case!r}{hint}", 1)
            raise ValueError(message) from None
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {args.config}: not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {args.config}: not UTF-8 text (byte "
                         f"{error.object[error.start]:#04x} at offset {error.start}); save the "
                         f"configuration as UTF-8 JSON") from None
    return _case_from_config(config, args.config)


def outputs_ready(command: str, args: argparse.Namespace) -> bool:
    """Before any long computation: ``--json`` / ``--plot`` destinations that can be written
    (``OSError`` otherwise), and matplotlib importable for ``--plot`` (if not, one line of
    stderr and False)."""
    for path in (args.json, args.plot):
        if path and path != "-":
            check_destination(path)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(f"refimpl {command}: --plot needs matplotlib, which is not installed "
              f"(pip install 'refimpl[plot]')", file=sys.stderr)
        return False
    return True


def write_outputs(args: argparse.Namespace, table: str, document: Mapping[str, Any],
                  plot: Callable[[str], None]) -> None:
    """The table on stdout (or, with ``--json -``, the JSON there instead), the JSON file
    written atomically, and ``plot(path)`` for ``--plot``."""
    text = json.dumps(document, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        print(table)
    if args.json and args.json != "-":
        write_text_atomically(args.json, text)
    if args.plot:
        plot(args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr if args.json == "-" else sys.stdout)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (the ``plot`` extra; callers
    have checked it is installed with :func:`outputs_ready`)."""
    import matplotlib  # optional extra: refimpl[plot]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, plt: Any, path: str) -> None:
    """Write ``figure`` (laid out by its own layout engine) to ``path`` whole or not at all (a
    temporary file renamed into place), closing it either way."""
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary, dpi=100)
    finally:
        plt.close(figure)
