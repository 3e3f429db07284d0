"""``refimpl demo``: the seed experiment of parameter tying (Goodfellow et al. section 7.9).

Two experiments, each a sweep over the tying strength ``lam`` (0 = independent models, several
soft strengths, and hard sharing = the limit ``lam -> infinity``), averaged over seeds:

1. **Shifted task.** Two 3-class problems with the same classes. Task A has plenty of
   labelled data; task B has only a few labelled examples, drawn from a transformed
   distribution (A's inputs rotated by ``--angle`` radians in every plane of a random basis
   and shifted by ``--shift`` times a standard-normal vector). Two MLPs of the same
   architecture are trained jointly on ``L_A + L_B + lam ||wA - wB||^2`` over all their
   parameters; reported: B's and A's held-out accuracy and ``||wA - wB||`` at the end.
2. **Lasserre variant** (Lasserre, Bishop & Minka 2006): a classifier trained on a few labelled
   examples, its first layer tied to the encoder of an autoencoder trained on many unlabelled
   inputs of the same distribution; reported: the classifier's held-out accuracy and the
   distance between its first layer and the encoder.

Everything is generated in code from fixed seeds (no download) and trained full-batch with
:class:`refimpl.optim.SGD`, so the printed table is the same on every run and machine up to
floating-point summation order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from .._io import JSON_HELP, atomic_output, check_destination, write_text_atomically
from .._table import format_table
from ..nn import MLP, Sequential
from ..nn.activations import Tanh
from ..nn.dense import Dense
from ..nn.losses import MSE
from ..optim import SGD, train
from ..tying import PENALTIES, TiedPair

__all__ = ["DemoSettings", "QUICK", "DEFAULT", "Tasks", "make_shifted_tasks", "rotation",
           "run_shifted", "run_lasserre", "sweep", "add_demo_arguments", "run_demo"]

HARD = "hard"


@dataclass(frozen=True)
class DemoSettings:
    """Every knob of the experiment (the command-line flags map onto these)."""

    seeds: int = 10
    steps: int = 300
    learning_rate: float = 0.1
    momentum: float = 0.9
    lams: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
    penalty: str = "l2"
    dim: int = 10              # input features
    classes: int = 3
    hidden: int = 16           # hidden units of the shifted-task MLPs
    noise: float = 1.0         # standard deviation of the class clusters
    n_a: int = 600             # task A's labelled training examples
    n_b_per_class: int = 3     # task B's labelled training examples per class
    n_test: int = 1000         # held-out examples per task
    angle: float = 0.4         # rotation (radians) of B's inputs in every plane
    shift: float = 0.5         # size of B's input shift
    lasserre_hidden: int = 3   # hidden units of the classifier / code size of the autoencoder


DEFAULT = DemoSettings()
#: For CI and a first look: fewer seeds and steps; same data sizes.
QUICK = DemoSettings(seeds=2, steps=120)


class Tasks(NamedTuple):
    """Training and held-out sets of both tasks: x (N, D) float64, y (N,) int64."""

    train_a: tuple[np.ndarray, np.ndarray]
    test_a: tuple[np.ndarray, np.ndarray]
    train_b: tuple[np.ndarray, np.ndarray]
    test_b: tuple[np.ndarray, np.ndarray]


def rotation(rng: np.random.Generator, dim: int, angle: float) -> np.ndarray:
    """A (dim, dim) rotation turning by ``angle`` in each of ``dim // 2`` orthogonal planes
    of a random orthonormal basis (``Q diag(R(angle), ...) Q^T``)."""
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    block = np.eye(dim)
    cos, sin = math.cos(angle), math.sin(angle)
    for i in range(0, dim - 1, 2):
        block[i:i + 2, i:i + 2] = [[cos, -sin], [sin, cos]]
    return basis @ block @ basis.T


def make_shifted_tasks(seed: int, settings: DemoSettings = DEFAULT) -> Tasks:
    """Two tasks with the same classes: Gaussian clusters around standard-normal class means
    (``x = mean[y] + noise * eps``); task B's inputs are then rotated and shifted
    (``x_B = Q x + t``). B's training set is balanced (``n_b_per_class`` per class)."""
    s = settings
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((s.classes, s.dim))          # (K, D)
    turn = rotation(rng, s.dim, s.angle)                      # (D, D)
    offset = s.shift * rng.standard_normal(s.dim)             # (D,)

    def draw(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return means[labels] + s.noise * rng.standard_normal((labels.size, s.dim)), labels

    def random_labels(count: int) -> np.ndarray:
        return rng.integers(0, s.classes, count).astype(np.int64)

    train_a, test_a = draw(random_labels(s.n_a)), draw(random_labels(s.n_test))
    xb, yb = draw(np.repeat(np.arange(s.classes, dtype=np.int64), s.n_b_per_class))
    xbt, ybt = draw(random_labels(s.n_test))
    return Tasks(train_a, test_a, (xb @ turn.T + offset, yb), (xbt @ turn.T + offset, ybt))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def _pair(model_a: Sequential, model_b: Sequential, pairs: dict[str, str], lam: Any,
          penalty: str) -> TiedPair:
    if lam == HARD:
        return TiedPair(model_a, model_b, pairs, mode="hard")
    return TiedPair(model_a, model_b, pairs, lam=float(lam), penalty=penalty)


def check_stability(settings: DemoSettings) -> None:
    """Refuse a strength for which the optimizer provably diverges on the penalty alone.

    The squared-L2 penalty's Hessian ``2 lam [[I, -I], [-I, I]]`` has largest eigenvalue
    ``4 lam``; heavy-ball momentum on a quadratic of curvature ``L`` is stable only for
    ``learning_rate * L < 2 (1 + momentum)``. (The losses add curvature of their own, so the
    check is necessary, not sufficient: :func:`_fit` also checks the result.)"""
    if settings.penalty != "l2" or not settings.lams:
        return
    limit = 2 * (1 + settings.momentum) / (4 * max(settings.lams))
    if settings.learning_rate >= limit:
        raise ValueError(
            f"--lams: lambda = {max(settings.lams):g} needs learning_rate < 2 (1 + momentum) / "
            f"(4 lambda) = {limit:.3g} (the penalty's curvature is 4 lambda), got "
            f"{settings.learning_rate:g}; pass a smaller --learning-rate")


def _fit(pair: TiedPair, seed: int, batch_a: tuple, batch_b: tuple,
         settings: DemoSettings, what: str) -> tuple[dict, dict]:
    params_a, params_b = pair.init(seed)
    result = train(lambda joined, step: pair.joined_loss_and_grads(joined, batch_a, batch_b),
                   pair.join(params_a, params_b),
                   SGD(settings.learning_rate, settings.momentum), settings.steps)
    final = pair.joined_loss_and_grads(result.params, batch_a, batch_b)[0]
    if not final < result.losses[0]:
        raise FloatingPointError(
            f"training did not decrease the objective ({result.losses[0]:.4g} -> {final:.4g}) "
            f"in the {what}, seed {seed}; pass a smaller --learning-rate")
    return pair.split(result.params)


def run_shifted(seed: int, lam: Any, settings: DemoSettings = DEFAULT) -> dict[str, float]:
    """One run of experiment 1 at strength ``lam`` (a number, or ``"hard"``)."""
    s = settings
    tasks = make_shifted_tasks(seed, s)
    model = MLP([s.dim, s.hidden, s.classes], activation="tanh")
    pair = _pair(model, model, {name: name for name in model.parameter_shapes()}, lam, s.penalty)
    params_a, params_b = _fit(pair, seed, tasks.train_a, tasks.train_b, s,
                              f"shifted task at lambda = {lam}")
    logits_a, logits_b = pair.forward(params_a, params_b, tasks.test_a[0], tasks.test_b[0])
    return {"b_accuracy": accuracy(logits_b, tasks.test_b[1]),
            "a_accuracy": accuracy(logits_a, tasks.test_a[1]),
            "distance": pair.distance(params_a, params_b)}


def run_lasserre(seed: int, lam: Any, settings: DemoSettings = DEFAULT) -> dict[str, float]:
    """One run of experiment 2: classifier ``fc1`` tied to autoencoder ``enc`` (weight and
    bias). Labelled: the first ``n_b_per_class`` examples of each class of task A's training
    set; unlabelled: all of task A's training inputs (their labels unused)."""
    s = settings
    tasks = make_shifted_tasks(seed, s)
    x, y = tasks.train_a
    picked = np.concatenate([np.flatnonzero(y == k)[:s.n_b_per_class] for k in range(s.classes)])
    classifier = MLP([s.dim, s.lasserre_hidden, s.classes], activation="tanh")
    autoencoder = Sequential([Dense("enc", s.dim, s.lasserre_hidden), Tanh(),
                              Dense("dec", s.lasserre_hidden, s.dim)], loss=MSE())
    pair = _pair(classifier, autoencoder, {"fc1.weight": "enc.weight", "fc1.bias": "enc.bias"},
                 lam, s.penalty)
    params_c, params_e = _fit(pair, seed, (x[picked], y[picked]), (x, x), s,
                              f"Lasserre variant at lambda = {lam}")
    logits = classifier.forward(params_c, tasks.test_a[0])
    return {"accuracy": accuracy(logits, tasks.test_a[1]),
            "distance": pair.distance(params_c, params_e)}


#: The metric each experiment is about: its gain over ``lam = 0`` is reported per seed.
PRIMARY = {"shifted": "b_accuracy", "lasserre": "accuracy"}


def _mean_and_error(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for one value)."""
    error = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else 0.0
    return float(values.mean()), float(error)


def sweep(settings: DemoSettings = DEFAULT) -> dict[str, list[dict[str, Any]]]:
    """Both experiments over ``[0, *settings.lams, "hard"]`` and ``settings.seeds`` seeds.

    For each strength: the mean and standard error over seeds of every metric, and ``gain``:
    the per-seed difference of the primary metric (B's accuracy; the classifier's) from
    ``lam = 0`` on the same data, averaged (a paired comparison: the seed-to-seed spread of
    the data cancels)."""
    strengths: list[Any] = [0.0, *settings.lams, HARD]
    results: dict[str, list[dict[str, Any]]] = {}
    for experiment, run in (("shifted", run_shifted), ("lasserre", run_lasserre)):
        runs = {index: [run(seed, lam, settings) for seed in range(settings.seeds)]
                for index, lam in enumerate(strengths)}
        primary = PRIMARY[experiment]
        baseline = np.array([r[primary] for r in runs[0]])
        rows = []
        for index, lam in enumerate(strengths):
            row: dict[str, Any] = {"lam": lam}
            for metric in runs[index][0]:
                row[metric], row[metric + "_se"] = _mean_and_error(
                    np.array([r[metric] for r in runs[index]]))
            row["gain"], row["gain_se"] = _mean_and_error(
                np.array([r[primary] for r in runs[index]]) - baseline)
            rows.append(row)
        results[experiment] = rows
    return results


def _label(lam: Any) -> tuple[str, str]:
    if lam == HARD:
        return "hard sharing", "inf"
    if lam == 0:
        return "independent", "0"
    return "soft", f"{lam:g}"


def _cell(row: dict[str, Any], metric: str, digits: int, sign: str = "") -> str:
    return f"{row[metric]:{sign}.{digits}f} +- {row[metric + '_se']:.{digits}f}"


def format_report(results: dict[str, list[dict[str, Any]]], settings: DemoSettings) -> str:
    s = settings
    norm = "||wA - wB||^2" if s.penalty == "l2" else "||wA - wB||_1"
    lines = [
        f"refimpl demo: parameter tying, {s.seeds} seeds x {s.steps} full-batch steps of "
        f"SGD(lr={s.learning_rate:g}, momentum={s.momentum:g}); penalty lam * {norm}; "
        f"mean +- standard error over seeds; gain = paired difference from lambda = 0",
        "",
        f"1. Shifted task: {s.classes} classes, {s.dim} features. A: {s.n_a} labelled "
        f"examples. B: {s.n_b_per_class * s.classes} labelled examples, inputs rotated by "
        f"{s.angle:g} rad and shifted by {s.shift:g}. MLP {s.dim}-{s.hidden}-{s.classes} "
        f"(tanh), all parameters paired; held-out sets of {s.n_test}.",
    ]
    rows = [(*_label(row["lam"]), _cell(row, "b_accuracy", 3), _cell(row, "gain", 3, "+"),
             _cell(row, "a_accuracy", 3), _cell(row, "distance", 3))
            for row in results["shifted"]]
    lines.append(format_table(("tying", "lambda", "B test accuracy", "B gain",
                               "A test accuracy", "||wA - wB||"), rows))
    lines += [
        "",
        f"2. Lasserre variant: classifier {s.dim}-{s.lasserre_hidden}-{s.classes} on "
        f"{s.n_b_per_class * s.classes} labelled examples; its fc1 (weight, bias) tied to the "
        f"encoder of an autoencoder {s.dim}-{s.lasserre_hidden}-{s.dim} (MSE) trained on "
        f"{s.n_a} unlabelled inputs of the same distribution.",
    ]
    rows = [(*_label(row["lam"]), _cell(row, "accuracy", 3), _cell(row, "gain", 3, "+"),
             _cell(row, "distance", 3))
            for row in results["lasserre"]]
    lines.append(format_table(("tying", "lambda", "classifier test accuracy", "gain",
                               "||w_fc1 - w_enc||"), rows))
    return "\n".join(lines)


def _plot(results: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib  # optional extra: refimpl[plot]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for experiment, metric, label in (("shifted", "b_accuracy", "shifted task: B accuracy"),
                                      ("shifted", "a_accuracy", "shifted task: A accuracy"),
                                      ("lasserre", "accuracy", "Lasserre: classifier accuracy")):
        rows = results[experiment]
        soft = [row for row in rows if row["lam"] not in (0, HARD)]
        line, = axes[0].plot([row["lam"] for row in soft], [row[metric] for row in soft],
                             "o-", label=label)
        for row, style in ((rows[0], ":"), (rows[-1], "--")):
            axes[0].axhline(row[metric], color=line.get_color(), linestyle=style, linewidth=1)
        distances = [row["distance"] for row in soft]
        if metric != "a_accuracy":
            axes[1].plot([row["lam"] for row in soft], distances, "o-", label=experiment)
    axes[0].set(xscale="log", xlabel="lambda (dotted: lambda = 0, dashed: hard sharing)",
                ylabel="held-out accuracy")
    axes[1].set(xscale="log", yscale="log", xlabel="lambda",
                ylabel="distance between tied parameters")
    for axis in axes:
        axis.legend(fontsize=8)
    figure.tight_layout()
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary)
    finally:
        plt.close(figure)


def _positive_float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers > 0, got {text!r}")
    return tuple(sorted(values))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.seeds} seeds x {QUICK.steps} steps instead of "
                             f"{DEFAULT.seeds} x {DEFAULT.steps} (for CI)")
    parser.add_argument("--seeds", type=_positive_int, help="number of seeds to average over")
    parser.add_argument("--steps", type=_positive_int, help="optimizer steps per run")
    parser.add_argument("--lams", type=_positive_float_list, metavar="L1,L2,...",
                        help="soft tying strengths besides 0 and hard sharing "
                             f"(default {','.join(f'{v:g}' for v in DEFAULT.lams)})")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT.learning_rate,
                        help="SGD step size (default %(default)s)")
    parser.add_argument("--momentum", type=float, default=DEFAULT.momentum,
                        help="SGD momentum in [0, 1) (default %(default)s)")
    parser.add_argument("--penalty", choices=sorted(PENALTIES), default="l2",
                        help="the tying penalty (default l2: squared L2)")
    parser.add_argument("--angle", type=float, default=DEFAULT.angle,
                        help="rotation of task B's inputs, radians per plane (default %(default)s)")
    parser.add_argument("--shift", type=float, default=DEFAULT.shift,
                        help="size of task B's input shift (default %(default)s)")
    parser.add_argument("--dim", type=_positive_int, default=DEFAULT.dim,
                        help="input features of both experiments (default %(default)s)")
    parser.add_argument("--noise", type=float, default=DEFAULT.noise,
                        help="standard deviation of the class clusters (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help=JSON_HELP.format(what="results"))
    parser.add_argument("--plot", metavar="PATH",
                        help="also plot accuracy and distance against lambda to PATH (needs "
                             "matplotlib: pip install 'refimpl[plot]')")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    base = QUICK if getattr(args, "quick", False) else DEFAULT
    changes: dict[str, Any] = {}
    for key in ("seeds", "steps", "lams"):
        value = getattr(args, key, None)
        if value is not None:
            changes[key] = value
    for key in ("penalty", "angle", "shift", "dim", "noise", "learning_rate", "momentum"):
        value = getattr(args, key, None)
        if value is not None:
            changes[key] = value
    settings = DemoSettings(**{**asdict(base), **changes})
    if not all(math.isfinite(v) for v in (settings.angle, settings.shift, settings.noise)):
        raise ValueError("--angle, --shift, --noise: expected finite numbers")
    if settings.noise <= 0:
        raise ValueError(f"--noise: expected a number > 0, got {settings.noise:g}")
    SGD(settings.learning_rate, settings.momentum)  # validates both (ValueError / TypeError)
    check_stability(settings)
    return settings


def run_demo(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except (ValueError, TypeError) as error:
        print(f"refimpl demo: {error}", file=sys.stderr)
        return 2
    plot = getattr(args, "plot", None)
    destination = getattr(args, "json", None)
    # Output paths are checked before the sweep (minutes with the defaults), not after it.
    if destination and destination != "-":
        check_destination(destination)
    if plot:
        check_destination(plot)
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("refimpl demo: --plot needs matplotlib, which is not installed "
                  "(pip install 'refimpl[plot]')", file=sys.stderr)
            return 2
    try:
        results = sweep(settings)
    except FloatingPointError as error:
        print(f"refimpl demo: {error}", file=sys.stderr)
        return 1
    document = {"settings": asdict(settings), "results": results}
    if destination == "-":
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        print(format_report(results, settings))
    if destination and destination != "-":
        write_text_atomically(destination, json.dumps(document, indent=2) + "\n")
    if plot:
        _plot(results, plot)
        print(f"plot written to {plot}", file=sys.stderr if destination == "-" else sys.stdout)
    return 0
