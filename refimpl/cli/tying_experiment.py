"""The parameter-tying experiment behind ``refimpl demo`` (Goodfellow et al. section 7.9).

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

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..nn import MLP, Sequential
from ..nn.activations import Tanh
from ..nn.dense import Dense
from ..nn.losses import MSE
from ..optim import SGD, train
from ..tying import TiedPair

__all__ = ["DemoSettings", "QUICK", "DEFAULT", "HARD", "Tasks", "make_shifted_tasks",
           "rotation", "accuracy", "check_stability", "run_shifted", "run_lasserre", "sweep"]

#: The strength that stands for hard sharing (the limit ``lam -> infinity``).
HARD = "hard"


@dataclass(frozen=True)
class DemoSettings:
    """Every knob of the experiment (the command-line flags map onto these).

    The field comments give each knob's meaning; ``N`` counts examples, ``D`` features and
    ``K`` classes in the shapes of :class:`Tasks`.
    """

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
    """Training and held-out sets of both tasks, each ``(x, y)``: x (N, D) float64, y (N,) int64."""

    train_a: tuple[np.ndarray, np.ndarray]
    test_a: tuple[np.ndarray, np.ndarray]
    train_b: tuple[np.ndarray, np.ndarray]
    test_b: tuple[np.ndarray, np.ndarray]


def rotation(rng: np.random.Generator, dim: int, angle: float) -> np.ndarray:
    """A random rotation turning by ``angle`` in each of ``dim // 2`` orthogonal planes.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the orthonormal basis ``Q``.
    dim : int
        The dimension D.
    angle : float
        Radians per plane.

    Returns
    -------
    numpy.ndarray
        (D, D): ``Q diag(R(angle), ...) Q^T``.
    """
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    block = np.eye(dim)
    cos, sin = math.cos(angle), math.sin(angle)
    for i in range(0, dim - 1, 2):
        block[i:i + 2, i:i + 2] = [[cos, -sin], [sin, cos]]
    return basis @ block @ basis.T


def make_shifted_tasks(seed: int, settings: DemoSettings = DEFAULT) -> Tasks:
    """Two tasks with the same classes, B's inputs rotated and shifted.

    Gaussian clusters around standard-normal class means (``x = mean[y] + noise * eps``);
    task B's inputs are then rotated and shifted (``x_B = Q x + t``). B's training set is
    balanced (``n_b_per_class`` per class).

    Parameters
    ----------
    seed : int
        Seeds everything drawn.
    settings : DemoSettings
        The sizes, ``noise``, ``angle`` and ``shift``.

    Returns
    -------
    Tasks
        The training and held-out sets of A and B.
    """
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
    """The fraction of rows whose largest logit is the label: logits (N, K), labels (N,)."""
    return float((logits.argmax(axis=1) == labels).mean())


def _pair(model_a: Sequential, model_b: Sequential, pairs: dict[str, str], lam: Any,
          penalty: str) -> TiedPair:
    """The pair at strength ``lam``: soft tying with ``penalty``, or hard sharing."""
    if lam == HARD:
        return TiedPair(model_a, model_b, pairs, mode="hard")
    return TiedPair(model_a, model_b, pairs, lam=float(lam), penalty=penalty)


def check_stability(settings: DemoSettings) -> None:
    """Refuse a strength for which the optimizer provably diverges on the penalty alone.

    The squared-L2 penalty's Hessian ``2 lam [[I, -I], [-I, I]]`` has largest eigenvalue
    ``4 lam``; heavy-ball momentum on a quadratic of curvature ``L`` is stable only for
    ``learning_rate * L < 2 (1 + momentum)``. (The losses add curvature of their own, so the
    check is necessary, not sufficient: the training also checks its result.)

    Raises
    ------
    ValueError
        Naming ``--lams``, the limit and ``--learning-rate``.
    """
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
    """Train the pair jointly; refuse (``FloatingPointError``) a run that did not descend."""
    params_a, params_b = pair.init(seed)
    result = train(lambda joined, step: pair.joined_loss_and_grads(joined, batch_a, batch_b),
                   pair.join(params_a, params_b),
                   SGD(lr=settings.learning_rate, momentum=settings.momentum),
                   settings.steps)
    final = pair.joined_loss_and_grads(result.params, batch_a, batch_b)[0]
    if not final < result.losses[0]:
        raise FloatingPointError(
            f"training did not decrease the objective ({result.losses[0]:.4g} -> {final:.4g}) "
            f"in the {what}, seed {seed}; pass a smaller --learning-rate")
    return pair.split(result.params)


def run_shifted(seed: int, lam: Any, settings: DemoSettings = DEFAULT) -> dict[str, float]:
    """One run of experiment 1 (the shifted task) at one strength.

    Parameters
    ----------
    seed : int
        Seeds the data and the initial parameters.
    lam : float or "hard"
        The tying strength, or hard sharing.
    settings : DemoSettings
        Every other knob.

    Returns
    -------
    dict
        ``b_accuracy``, ``a_accuracy`` (held out) and ``distance`` (``||wA - wB||``).

    Raises
    ------
    FloatingPointError
        When training did not decrease the objective.
    """
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
    """One run of experiment 2 (the Lasserre variant) at one strength.

    The classifier's ``fc1`` is tied to the autoencoder's ``enc`` (weight and bias).
    Labelled: the first ``n_b_per_class`` examples of each class of task A's training set;
    unlabelled: all of task A's training inputs (their labels unused).

    Parameters and errors are those of :func:`run_shifted`.

    Returns
    -------
    dict
        ``accuracy`` (the classifier's, held out) and ``distance``.
    """
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

    Parameters
    ----------
    settings : DemoSettings
        Every knob of the experiment.

    Returns
    -------
    dict of str to list of dict
        ``"shifted"`` and ``"lasserre"``: one row per strength with ``lam``, the mean and
        standard error over seeds of every metric (``<metric>``, ``<metric>_se``), and
        ``gain``: the per-seed difference of the primary metric (B's accuracy; the
        classifier's) from ``lam = 0`` on the same data, averaged (a paired comparison: the
        seed-to-seed spread of the data cancels).

    Raises
    ------
    FloatingPointError
        When a run's training did not decrease the objective.
    """
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
