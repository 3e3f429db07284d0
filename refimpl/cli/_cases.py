"""What ``refimpl explain`` and ``refimpl steps`` share: the case to study (a built-in or
drawn case name, or a saved configuration) and the check that ``--plot`` can be honoured."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Mapping
from typing import Any

from ..nn import Sequential
from ..testing.cases import Case, all_cases
from ..testing.cases.drawn import case_named
from ..testing.cases.mlp import model_case
from ..testing.cases.tied import anchored_case, pair_case
from ..tying import AnchoredModel, TiedPair

__all__ = ["PLOT_HELP", "add_case_arguments", "load_case", "need_matplotlib"]

PLOT_HELP = "(needs matplotlib: pip install 'refimpl[plot]')"


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """The case to study: a built-in ``CASE`` name or ``--config PATH``."""
    parser.add_argument("case", nargs="?", metavar="CASE",
                        help="a built-in case (refimpl check --list names them)")
    parser.add_argument("--config", metavar="PATH",
                        help="instead of CASE, a case configuration saved as JSON (a built-in "
                             "case's 'config': {'model': ..., 'input_shape': [N, ...], 'seed': "
                             "S}, or {'pair': ..., 'input_shape_a': ..., 'input_shape_b': ..., "
                             "'seed': S}); the point and data are drawn from the seed")


def _case_from_config(config: Any, path: str) -> Case:
    """A case rebuilt from a saved configuration (see :func:`add_case_arguments`)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"--config {path}: expected a JSON object, got {type(config).__name__}")
    name = f"config:{path}"
    try:
        if "model" in config:
            model = Sequential.from_config(config["model"], "config['model']")
            shape = [int(size) for size in config["input_shape"]]
            return model_case(name, "config", model, tuple(shape[1:]), shape[0],
                              int(config["seed"]))
        if "pair" in config:
            pair = TiedPair.from_config(config["pair"])
            shape_a = [int(size) for size in config["input_shape_a"]]
            shape_b = [int(size) for size in config["input_shape_b"]]
            return pair_case(name, pair, tuple(shape_a[1:]), tuple(shape_b[1:]), shape_a[0],
                             shape_b[0], int(config["seed"]),
                             autoencoder_b=config.get("target_b") == "xb (autoencoder)")
        if "anchored" in config and config.get("reference") == "zero (weight decay)":
            anchored = config["anchored"]
            model = AnchoredModel(Sequential.from_config(anchored["model"]), anchored["lam"],
                                  names=anchored["names"], penalty=anchored["penalty"])
            shape = [int(size) for size in config["input_shape"]]
            return anchored_case(name, model, tuple(shape[1:]), shape[0], int(config["seed"]),
                                 reference_given=False)
    except KeyError as error:
        raise ValueError(f"--config {path}: missing key {error}") from None
    raise ValueError(f"--config {path}: expected a key 'model' or 'pair' (or 'anchored' with a "
                     f"zero reference; a given reference is data, not configuration)")


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
            raise ValueError(f"{error}; refimpl check --list names the built-in cases") \
                from None
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {args.config}: not valid JSON ({error})") from None
    return _case_from_config(config, args.config)


def need_matplotlib(command: str) -> bool:
    """Whether matplotlib can be imported; if not, say so on one line of stderr."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"refimpl {command}: --plot needs matplotlib, which is not installed "
              f"(pip install 'refimpl[plot]')", file=sys.stderr)
        return False
    return True
