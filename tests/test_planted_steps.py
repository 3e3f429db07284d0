"""The bug classes of issue 21, planted: training steps that are wrong only *after* the
gradient, each in miniature of its public report.

Here the five classes are planted in a NumPy loop built from refimpl's own pieces
(:func:`refimpl.train_steps`, the optimizers, the clipping), so that the engine's verdict on
each class is checked without a framework; ``test_planted_steps_torch.py`` (slow tier) plants
them in the real PyTorch adapter, one line changed each. `refimpl conform` must report each as
**fail** (never "convention differs", never "inconclusive"), naming the tensor and the first
step where it diverges, while the unplanted loop passes the same cases.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from refimpl import clip_grad_norm
from refimpl.optim import gradient_norm, step_loss_and_grads
from refimpl.testing import conform
from refimpl.testing.cases import get_case
from refimpl.testing.cases.sequence import language_model

#: Per planted bug: the case it runs on, and the tensor its row must name at step 1.
EXPECTED = {
    "decay twice": ("steps-shared-autoencoder-sgd-decay", "parameter 'enc.weight'"),
    "two optimizers": ("steps-tied-lm-adamw-clip", "parameter 'embed.weight'"),
    "norm counted twice": ("steps-tied-lm-adamw-clip", "gradient norm"),
    "tie lost": ("steps-tied-lm-adamw-clip", "parameter 'embed.weight'"),
    "wrong micro-batch": ("steps-micro-batches-adam-clip", "loss"),
}


def _assert_fails_at_step_1(report, bug):
    case_name, tensor = EXPECTED[bug]
    row, = report.rows
    assert row.case == case_name
    assert row.outcome == "fail", (bug, row.outcome, row.detail)
    count = get_case(case_name).count
    assert row.detail.startswith(f"diverges first at step 1 of {count}: {tensor}"), row.detail
    assert row.tensor == f"step 1: {tensor}"


# --- the same five classes in NumPy (default tier) -------------------------------------------

class NumpySteps:
    """``train_steps`` for a built-in step case from refimpl's pieces, one bug class planted
    (``bug`` None: refimpl's own steps)."""

    def __init__(self, config, bug=None, loop=False):
        self.case = next(case for case in (get_case(name) for name, _ in EXPECTED.values())
                         if case.config == config)
        self.bug, self.loop = bug, loop

    def __call__(self, params, inputs):
        return self.case.loss_and_grads(params)

    def train_steps(self, params, batches):
        case, bug = self.case, self.bug
        if "micro_batches" in case.config and (bug or self.loop):
            return self._micro_batch_loop(params, batches, last=bug != "wrong micro-batch")
        if bug == "tie lost":
            run = self._untied(params, batches)
        elif bug is not None or self.loop:
            return self._loop(params, batches)
        else:
            run = case.trajectory(params, batches)
        return {"params": run.params, "losses": list(run.losses),
                "grad_norms": list(run.grad_norms)}

    def _loop(self, params, batches):
        case, optimizer, clip = self.case, self.case.optimizer(), self.case.clip()
        second = case.optimizer()            # "two optimizers": the other one's own state
        state = extra = None
        result = {"params": [], "losses": [], "grad_norms": []}
        for inputs in batches:
            loss, grads = step_loss_and_grads(case.model, params, case.batch_of(inputs))
            norm = gradient_norm(grads)
            if self.bug == "norm counted twice":      # the tied weight counted once per use
                norm = float(np.sqrt(norm ** 2 + np.sum(grads["embed.weight"] ** 2)))
            if clip is not None:
                scale = min(clip.max_norm / (norm + clip.eps), 1.0)
                grads = {key: value * scale for key, value in grads.items()}
            if self.bug == "decay twice":             # the shared weight decayed once per use
                decay = case.config["steps"]["optimizer"]["weight_decay"]
                grads["enc.weight"] = grads["enc.weight"] + decay * params["enc.weight"]
            params, state = optimizer.step(params, grads, state)
            if self.bug == "two optimizers":          # the tied weight stepped again
                again, extra = second.step({"embed.weight": params["embed.weight"]},
                                           {"embed.weight": grads["embed.weight"]}, extra)
                params = {**params, **again}
            result["params"].append(params)
            result["losses"].append(float(loss))
            result["grad_norms"].append(norm)
        return result

    def _untied(self, params, batches):
        """The tie lost: the output layer its own copy of the embedding, both stepped."""
        twin = language_model(False)
        start = {**params, "out.weight": np.array(params["embed.weight"])}
        case = dataclasses.replace(self.case, model=twin)
        run = case.trajectory(start, batches)
        return run._replace(params=[{key: value for key, value in p.items()
                                     if key != "out.weight"} for p in run.params])

    def _micro_batch_loop(self, params, batches, last):
        """Gradient accumulation over every micro-batch of every step, the step taken after
        the step's last micro-batch (``(index + 1) % M == 0``) or, the bug, after its first
        (``index % M == 0``): the rest of the step's gradient carried into the next."""
        case, optimizer, clip = self.case, self.case.optimizer(), self.case.clip()
        sizes = case.config["micro_batches"]
        total = sum(sizes)
        micro = []
        for inputs in batches:
            whole = case.batch_of(inputs).batch
            ends = np.cumsum(sizes)
            micro += [((whole[0][end - n:end], whole[1][end - n:end]), n / total)
                      for n, end in zip(sizes, ends, strict=True)]
        state, grads, loss = None, None, 0.0
        result = {"params": [], "losses": [], "grad_norms": []}
        for index, (batch, weight) in enumerate(micro):
            value, part = step_loss_and_grads(case.model, params, batch)
            grads = {k: weight * g + (grads[k] if grads else 0.0) for k, g in part.items()}
            loss += weight * float(value)
            if (index + last) % len(sizes) == 0:
                clipped, norm = clip_grad_norm(grads, clip.max_norm, clip.norm_type, clip.eps)
                params, state = optimizer.step(params, clipped, state)
                result["params"].append(params)
                result["losses"].append(loss)
                result["grad_norms"].append(norm)
                grads, loss = None, 0.0
        return result


@pytest.mark.parametrize("bug", list(EXPECTED))
def test_each_bug_class_planted_in_numpy_fails_at_step_1_naming_the_tensor(bug):
    case_name, _ = EXPECTED[bug]
    correct = conform(lambda config, dtype: NumpySteps(config), cases=[case_name],
                      dtypes=["float64"])
    assert [row.outcome for row in correct.rows] == ["pass"]
    planted = conform(lambda config, dtype: NumpySteps(config, bug), cases=[case_name],
                      dtypes=["float64", "float32"])
    for dtype in ("float64", "float32"):
        report = dataclasses.replace(planted, rows=tuple(row for row in planted.rows
                                                         if row.dtype == dtype))
        _assert_fails_at_step_1(report, bug)


@pytest.mark.parametrize("case_name", sorted({name for name, _ in EXPECTED.values()}))
def test_the_numpy_loops_without_their_bug_are_refimpls_steps(case_name):
    # Each planted line is the only difference: the same loops without it pass.
    report = conform(lambda config, dtype: NumpySteps(config, loop=True), cases=[case_name],
                     dtypes=["float64"])
    assert [row.outcome for row in report.rows] == ["pass"], report.table()
