"""The bug classes of issue 21 planted in the real PyTorch adapter: its training loop
(:class:`refimpl.adapters.torch.TorchSteps`, torch.optim and clip_grad_norm_'s two halves)
with one line of one method changed, each in miniature of its public report.

`refimpl conform` must report each as **fail** (never "convention differs", never
"inconclusive"), naming the tensor and the first step where it diverges, while the unmodified
adapter passes the same cases (slow tier: PyTorch).
"""

from __future__ import annotations

import dataclasses

import pytest

from refimpl.testing import conform
from refimpl.testing.cases import all_cases

torch = pytest.importorskip("torch")

from test_planted_steps import EXPECTED, _assert_fails_at_step_1  # noqa: E402

from refimpl.adapters.torch import TorchSteps, _unique, build  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with "
                                         "duplicate")]

class DecayTwiceOnASharedWeight(TorchSteps):
    """rwth-i6/returnn #1319 (fixed by #1320, "PT weight_decay fix for shared params"): the
    weight-decay parameter group was built by walking every module's named parameters, so a
    parameter two modules share was listed once per module. torch.optim only warns about a
    group with duplicate parameters, and steps such a parameter — its decay and its update —
    twice per iteration. Miniature: the tied autoencoder (``dec.weight = enc.weight^T``, two
    Dense layers holding one weight) with SGD, momentum and weight decay."""

    def optimized(self, held):
        return list(held.values())                  # the adapter's: _unique(held.values())


class TiedHeadInTwoOptimizers(TorchSteps):
    """A tied LM head and embedding stepped by two optimizers (issue 21's list): one
    optimizer for the embedding layer, one for the layers after it, whose output layer holds
    the embedding's tensor too. Each optimizer keeps its own AdamW state for the tied weight
    and steps it: two updates (and two decays) per iteration. Miniature: the tied LM
    (``out.weight = embed.weight``) with AdamW and clipping."""

    def optimizers(self, held, optimized):
        return [self.optimizer(_unique(t for s, t in held.items() if s[1] == layer))
                for layer in (0, 1, 2)]      # the adapter's: [self.optimizer(optimized)]


class TiedWeightCountedTwiceInTheNorm(TorchSteps):
    """NVIDIA/Megatron-LM #7227 (fixed by #7228): the global gradient norm summed the
    gradients of every pipeline stage's parameters, and the word embedding, tied to the
    output layer on the last stage, was counted on both: its share of the norm sqrt(2) too
    large, every step over-clipped. Miniature: the tied LM with AdamW and clipping, the norm
    taken over every layer slot."""

    def normed(self, held, optimized):
        return list(held.values())                  # the adapter's: _unique(held.values())


class TieLostAfterRematerialising(TorchSteps):
    """verl #7834 / #7835 and facebookresearch/lingua #75: parameters re-materialised one
    tensor per module (a model built on the meta device, then given storage or loaded from a
    checkpoint) lose the tie between the embedding and the output layer; the two copies start
    equal and drift apart from the first step, each receiving only its own layer's gradient.
    Miniature: the tied LM, each layer slot given its own copy of its parameter."""

    def held(self, leaves):
        # the adapter's: {slot: leaves[use.key] for ...}
        return {slot: leaves[use.key].detach().clone().requires_grad_(True)
                for slot, use in self.slots.items()}


class SyncOnTheWrongMicroBatch(TorchSteps):
    """modelscope/FunASR #3472: gradient accumulation's condition ``batch_idx % accum_grad``
    synchronised the first micro-batch of each group and suppressed synchronisation on the
    micro-batch that steps the optimizer (``(batch_idx + 1) % accum_grad`` was meant), leaving
    rank-local gradients. Miniature, in one process: the same off-by-one ends each step on its
    first micro-batch, the rest of its gradient carried into the next step. Case: unequal
    micro-batches of a shared MLP with Adam and clipping."""

    def boundary(self, index, per_step):
        return index % per_step == 0                # the adapter's: (index + 1) % per_step == 0


PLANTED = {"decay twice": DecayTwiceOnASharedWeight,
           "two optimizers": TiedHeadInTwoOptimizers,
           "norm counted twice": TiedWeightCountedTwiceInTheNorm,
           "tie lost": TieLostAfterRematerialising,
           "wrong micro-batch": SyncOnTheWrongMicroBatch}


@pytest.mark.parametrize("bug", list(PLANTED))
def test_each_planted_torch_builder_fails_at_step_1_and_the_adapter_passes(bug):
    case_name, _ = EXPECTED[bug]
    unmodified = conform(build, cases=[case_name], dtypes=["float64", "float32"])
    assert [row.outcome for row in unmodified.rows] == ["pass", "pass"], unmodified.table()
    trainer = PLANTED[bug]
    planted = conform(lambda config, dtype: build(config, dtype, trainer=trainer),
                      cases=[case_name], dtypes=["float64", "float32"])
    for dtype in ("float64", "float32"):
        report = dataclasses.replace(planted, rows=tuple(row for row in planted.rows
                                                         if row.dtype == dtype))
        _assert_fails_at_step_1(report, bug)


def test_each_planted_torch_builder_fails_every_step_case_it_can_reach():
    # Over the whole catalogue of step cases a planted bug is never "convention differs" nor
    # "inconclusive": it fails where its bug class applies and passes elsewhere.
    cases = [case for case in all_cases() if case.kind == "steps"]
    for bug, trainer in PLANTED.items():
        report = conform(lambda config, dtype, t=trainer: build(config, dtype, trainer=t),
                         cases=cases, dtypes=["float64"])
        outcomes = {row.case: row.outcome for row in report.rows}
        assert set(outcomes.values()) <= {"pass", "fail"}, (bug, outcomes)
        assert outcomes[EXPECTED[bug][0]] == "fail"
