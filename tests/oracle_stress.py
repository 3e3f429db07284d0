"""The oracle's acceptance run: a correct float32 / TF32 implementation is never rejected,
and a gradient negated, transposed, doubled or halved is never reported as pass.

Used by ``tests/test_oracle_stress.py`` (a modest number of drawn cases; more with
``HYPOTHESIS_PROFILE=thorough``) and runnable as a script for the full stress run::

    python tests/oracle_stress.py --cases 1000

which draws that many cases from ``refimpl.testing.strategies.cases()`` (seeded), judges each one at
its drawn point and at a point near a fit built from it (MSE targets = the model's own output
plus 1e-9-sized noise; cross-entropy labels = the argmax, logits made confident; tied
parameters made equal), in float32 and TF32, and prints the verdict counts.

The implementation is ``independent_numpy`` (it imports nothing of refimpl).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from independent_numpy import make_impl  # noqa: E402

from refimpl.nn import Sequential  # noqa: E402
from refimpl.testing import compare_with_oracle  # noqa: E402
from refimpl.testing.cases import all_cases  # noqa: E402
from refimpl.testing.strategies import cases  # noqa: E402
from refimpl.tying import TiedPair  # noqa: E402

MUTATIONS = ("negated", "transposed", "doubled", "halved")
DTYPES = ("float32", "tf32")


def model_of(config: dict) -> Any:
    """The model or pair a drawn or catalogue case's configuration describes."""
    if "pair" in config:
        return TiedPair.from_config(config["pair"])
    return Sequential.from_config(config["model"])


def _is_ce(model: Sequential) -> bool:
    return model.loss_spec.config()["type"] == "SoftmaxCrossEntropy"


def _fit_member(model: Sequential, params: dict, x: np.ndarray, rng: np.random.Generator,
                scale_last: bool) -> tuple[dict, np.ndarray]:
    """Parameters and targets near a fit for one model: MSE targets are its own output plus
    noise of size 1e-9; cross-entropy labels are the argmax, and when ``scale_last`` the last
    dense layer is scaled so that every example's top logit leads by 30 (probabilities within
    ~1e-13 of one-hot)."""
    params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    out = model.forward(params, x)
    if not _is_ce(model):
        return params, out + 1e-9 * rng.standard_normal(out.shape)
    labels = np.argmax(out, axis=1).astype(np.int64)
    if scale_last and out.shape[1] > 1:
        ordered = np.sort(out, axis=1)
        margin = float(np.min(ordered[:, -1] - ordered[:, -2]))
        factor = min(30.0 / max(margin, 1e-3), 1e4)
        last = model.layers[-1].name
        for key in (f"{last}.weight", f"{last}.bias"):
            if key in params:
                params[key] = params[key] * factor
    return params, labels


def near_fit(model: Any, params: dict, inputs: dict, seed: int) -> tuple[dict, dict]:
    """A point near a fit built from a drawn one (module docstring)."""
    rng = np.random.default_rng(seed)
    if isinstance(model, TiedPair):
        params_a, params_b = model.split(params)
        params_a, ya = _fit_member(model.model_a, params_a, inputs["xa"], rng,
                                   scale_last=not model.model_a.share and not model.pairs)
        full_b = dict(params_b)
        for name_b, (name_a, transpose) in model.shared_b().items():
            full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        full_b = {name: full_b[name] for name in model.model_b.parameter_shapes()}
        _, yb = _fit_member(model.model_b, full_b, inputs["xb"], rng, scale_last=False)
        if model.mode == "soft" and model.penalty_name == "l2":
            for tie in model.pairs:     # equal tied parameters: the penalty's gradient is 0
                a = params_a[tie.name_a]
                params_b[tie.name_b] = a.T.copy() if tie.transpose else a.copy()
        return model.join(params_a, params_b), {**inputs, "ya": ya, "yb": yb}
    uses = model.slot_uses()
    last = model.layers[-1].name
    unshared = all(root == slot or not root.startswith(f"{last}.")
                   for slot, (root, _) in uses.items())
    new_params, y = _fit_member(model, params, inputs["x"], rng,
                                scale_last=unshared and not model.share)
    return new_params, {**inputs, "y": y}


def _mutated(impl, name: str, mutation: str):
    def run(params, inputs):
        loss, grads, outputs = impl(params, inputs)
        grads = dict(grads)
        g = grads[name]
        grads[name] = {"negated": lambda: -g, "transposed": lambda: g.T,
                       "doubled": lambda: g * 2, "halved": lambda: g / 2}[mutation]()
        return loss, grads, outputs
    return run


def _reference_grads(target: Any, params: dict | None, inputs: dict | None) -> dict:
    if params is None:                 # a Case
        return target.loss_and_grads(target.params)[1]
    if "x" in inputs:
        return target.loss_and_grads(params, inputs["x"], inputs["y"])[1]
    return target.joined_loss_and_grads(params, (inputs["xa"], inputs["ya"]),
                                        (inputs["xb"], inputs["yb"]))[1]


def judge(config: dict, target: Any, params: dict | None, inputs: dict | None, dtype: str,
          tally: Counter, problems: list[str], label: str) -> None:
    """Judge the correct implementation and every mutation of every gradient at one point
    (``target``: a model with ``params`` and ``inputs``, or a Case with both None); count
    verdicts in ``tally``, append every broken promise to ``problems``."""
    impl = make_impl(config, dtype)
    report = compare_with_oracle(impl, target, params, inputs, dtype=dtype)
    tally[(dtype, label, "correct", report.verdict)] += 1
    if report.verdict == "fail":
        problems.append(f"{label} {dtype}: correct implementation rejected:\n{report}")
    rows = {row.name: row for row in report.rows if row.role == "gradient"}
    reference = _reference_grads(target, params, inputs)
    for name, row in rows.items():
        for mutation in MUTATIONS:
            r = np.asarray(reference[name])
            if mutation == "transposed":
                if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 2:
                    continue
                if np.max(np.abs(r - r.T)) <= 2 * row.limit:
                    # Symmetric within the tolerance: the transposed tensor is not wrong.
                    tally[(dtype, label, mutation, "indistinguishable")] += 1
                    continue
            if not np.any(r != 0) and row.floor == 0:
                continue      # an exactly zero gradient: negated / scaled it is still right
            mutated = compare_with_oracle(_mutated(impl, name, mutation), target, params,
                                          inputs, dtype=dtype)
            tally[(dtype, label, mutation, mutated.verdict)] += 1
            if mutated.verdict == "pass":
                problems.append(f"{label} {dtype}: gradient {name!r} {mutation} passed:\n"
                                f"{mutated}")


def judge_case(case: Any, seed: int, tally: Counter, problems: list[str],
               dtypes=DTYPES) -> None:
    """The drawn point and the near-fit point built from it, in every dtype."""
    model = model_of(case.config)
    fitted = near_fit(model, case.params, case.inputs, seed)
    for dtype in dtypes:
        judge(case.config, model, case.params, case.inputs, dtype, tally, problems, "drawn")
        judge(case.config, model, *fitted, dtype, tally, problems, "near-fit")


def summary(tally: Counter) -> str:
    lines = []
    for dtype in DTYPES:
        for label in ("catalogue", "drawn", "near-fit"):
            for what in ("correct", *MUTATIONS):
                counts = {verdict: tally[(dtype, label, what, verdict)]
                          for verdict in ("pass", "fail", "inconclusive", "indistinguishable")}
                if any(counts.values()):
                    lines.append(f"{dtype:8s} {label:9s} {what:10s} " + "  ".join(
                        f"{verdict} {count}" for verdict, count in counts.items() if count))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    arguments = parser.parse_args()
    tally: Counter = Counter()
    problems: list[str] = []
    start = time.perf_counter()
    for case in all_cases():
        for dtype in DTYPES:
            judge(case.config, case, None, None, dtype, tally, problems, "catalogue")
    catalogue_time = time.perf_counter() - start
    drawn = []

    @settings(max_examples=arguments.cases, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(cases())
    def run(case):
        drawn.append(case)
        judge_case(case, len(drawn), tally, problems)

    run()
    total = time.perf_counter() - start
    print(summary(tally))
    print(f"{len(drawn)} drawn cases, catalogue {catalogue_time:.1f} s, total {total:.1f} s")
    for problem in problems[:20]:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
