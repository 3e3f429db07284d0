"""Tests of refimpl/optim/training.py: training steps over every model kind.

The properties of issue 21 §1, each over drawn models of every kind (plain and shared
``Sequential``, soft / hard / L1 ``TiedPair``, ``AnchoredModel``, ``Siamese``, and any of them
accumulated over micro-batches): SGD without momentum is ``p - lr g`` from the models' own
``loss_and_grads``; K steps of a hard-shared model are K steps of its untied twin whose copies
receive the summed gradient and start equal (and the copies stay equal); a weight decay of
lambda is an L2 penalty of lambda / 2 for SGD and Adam, not for AdamW; the state is one entry
per unique parameter. Then the trajectory's losses and norms, clipping, micro-batches, the
inputs left untouched, the refusals, and ``train``.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl as ri
from refimpl import nn
from refimpl.microbatch import accumulated_loss_and_grads
from refimpl.optim import (
    SGD,
    Adam,
    AdamW,
    ClipGradNorm,
    MicroBatches,
    clip_grad_norm,
    gradient_norm,
    step_loss_and_grads,
    train,
    train_step,
    train_steps,
)
from refimpl.study.contributions import _twin
from refimpl.testing.strategies import (
    micro_batch_splits,
    mlps,
    points,
    shared_mlps,
    siamese_models,
    tied_pairs,
)
from refimpl.tying import TiedPair

STEPS = 3
# Two computations of one trajectory. Comparison: |a - b| <= ATOL + RTOL |b|.
# - The same arithmetic in another form (a decay against the penalty's gradient, a penalty
#   added once in either of two places): a few ulps per step.
SAME_RTOL, SAME_ATOL = 1e-12, 1e-14
# - The same gradient summed in another order (a model against its untied twin, a batch
#   against its micro-batches): rounding of the sums, which Adam's division by sqrt(v) + eps
#   amplifies by up to lr / eps for an entry near 0; Adam's eps is 1e-3 in these tests.
REORDERED_RTOL, REORDERED_ATOL = 1e-10, 1e-11
# A broken rule (a use or a penalty term dropped or doubled, a decay coupled) moves a
# parameter by at least lr times a gradient entry, far above both.


# --- K steps of every model kind ------------------------------------------------------------

class Run(NamedTuple):
    model: Any
    params: dict[str, np.ndarray]
    batches: list[Any]


def _noisy(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Another batch of the same shape: every step sees other inputs."""
    return x + 0.3 * rng.standard_normal(x.shape)


SEEDS = st.integers(0, 2**16)


@st.composite
def sequential_runs(draw, shared_only=False):
    model = draw(shared_mlps(max_width=4) if shared_only
                 else st.one_of(mlps(max_width=4), shared_mlps(max_width=4)))
    point = draw(points(model, max_batch=4))
    rng = np.random.default_rng(draw(SEEDS))
    x, y = point.inputs["x"], point.inputs["y"]
    return Run(model, point.params, [(_noisy(rng, x), y) for _ in range(STEPS)])


@st.composite
def pair_runs(draw, modes=None):
    pair = draw(tied_pairs(modes=modes, max_width=4))
    point = draw(points(pair, max_batch=4))
    rng = np.random.default_rng(draw(SEEDS))
    inputs = point.inputs
    return Run(pair, point.params, [((_noisy(rng, inputs["xa"]), inputs["ya"]),
                                     (_noisy(rng, inputs["xb"]), inputs["yb"]))
                                    for _ in range(STEPS)])


@st.composite
def anchored_runs(draw):
    model = draw(st.one_of(mlps(max_width=4), shared_mlps(max_width=4)))
    point = draw(points(model, max_batch=4))
    rng = np.random.default_rng(draw(SEEDS))
    shapes = model.parameter_shapes()
    names = draw(st.lists(st.sampled_from(sorted(shapes)), min_size=1, unique=True))
    reference = (None if draw(st.booleans())
                 else {name: rng.standard_normal(shapes[name]) for name in names})
    anchored = ri.AnchoredModel(model, lam=draw(st.floats(0.0, 1.0)), reference=reference,
                                names=names, penalty=draw(st.sampled_from(["l2", "l1"])))
    x, y = point.inputs["x"], point.inputs["y"]
    return Run(anchored, point.params, [(_noisy(rng, x), y) for _ in range(STEPS)])


def _siamese_batch(rng: np.random.Generator, model: nn.Siamese, size: int) -> tuple:
    features = model.tower.layers[0].in_features
    arrays = [rng.standard_normal((size, features)) for _ in model.branch_names]
    if model.loss_spec.needs_target:
        arrays.append(rng.integers(0, 2, size))
    return tuple(arrays)


@st.composite
def siamese_runs(draw):
    model = draw(siamese_models(max_width=4))
    rng = np.random.default_rng(draw(SEEDS))
    size = draw(st.integers(1, 4))
    return Run(model, model.init(draw(SEEDS)),
               [_siamese_batch(rng, model, size) for _ in range(STEPS)])


@st.composite
def microbatch_runs(draw):
    run = draw(st.one_of(sequential_runs(), pair_runs(), anchored_runs(), siamese_runs()))
    batches = []
    for batch in run.batches:
        if isinstance(run.model, TiedPair):
            (xa, _), (xb, _) = batch
            batches.append(MicroBatches(batch, draw(micro_batch_splits(len(xa))),
                                        draw(micro_batch_splits(len(xb)))))
        else:
            batches.append(MicroBatches(batch, draw(micro_batch_splits(len(batch[0])))))
    return run._replace(batches=batches)


def runs():
    """K steps' worth of batches for a drawn model of every kind."""
    return st.one_of(sequential_runs(), pair_runs(), anchored_runs(), siamese_runs(),
                     microbatch_runs())


def model_loss_and_grads(model: Any, params: dict, batch: Any) -> tuple[float, dict]:
    """The step's loss and gradient from each model's own public methods."""
    if isinstance(batch, MicroBatches):
        return accumulated_loss_and_grads(model, params, batch.batch, batch.splits,
                                          splits_b=batch.splits_b)
    if isinstance(model, TiedPair):
        return model.joined_loss_and_grads(params, *batch)
    if isinstance(model, nn.Siamese):
        if model.loss_spec.needs_target:
            return model.loss_and_grads(params, *batch[:-1], y=batch[-1])
        return model.loss_and_grads(params, *batch)
    return model.loss_and_grads(params, *batch)


# --- SGD without momentum is p - lr g ------------------------------------------------------------

@given(runs(), st.floats(1e-3, 0.3), st.none() | st.floats(0.05, 2.0),
       st.sampled_from([2.0, "inf"]))
def test_sgd_without_momentum_steps_p_minus_lr_g_for_every_model_kind(run, lr, max_norm,
                                                                      norm_type):
    # with a clip: p - lr * clip(g), the norm reported before clipping
    kept = copy.deepcopy(run)
    clip = None if max_norm is None else ClipGradNorm(max_norm, norm_type)
    trajectory = train_steps(run.model, run.params, run.batches, SGD(lr), clip=clip)
    assert len(trajectory.params) == STEPS
    assert trajectory.losses.shape == trajectory.grad_norms.shape == (STEPS,)
    current = run.params
    for index, batch in enumerate(run.batches):
        loss, grads = model_loss_and_grads(run.model, current, batch)
        if clip is None:
            step, norm = grads, gradient_norm(grads)
        else:
            step, norm = clip_grad_norm(grads, max_norm, norm_type)
        after = trajectory.params[index]
        assert list(after) == list(run.params)
        for key, value in current.items():
            np.testing.assert_array_equal(after[key], value - lr * step[key])
            assert not np.shares_memory(after[key], run.params[key])
        assert trajectory.losses[index] == loss
        assert trajectory.grad_norms[index] == norm
        current = after
    # nothing of the caller's arrays was modified
    for key, value in kept.params.items():
        np.testing.assert_array_equal(run.params[key], value)
    for before, batch in zip(kept.batches, run.batches, strict=True):
        for a, b in zip(_leaves(before), _leaves(batch), strict=True):
            np.testing.assert_array_equal(a, b)


def _leaves(batch: Any) -> list[np.ndarray]:
    """The arrays of a (nested) batch."""
    if isinstance(batch, (tuple, list)):
        return [leaf for item in batch for leaf in _leaves(item)]
    return [] if batch is None else [np.asarray(batch)]


# --- hard sharing is the untied twin stepped with the summed gradient ---------------------------

@st.composite
def optimizers(draw):
    """Any optimizer; Adam's eps >= 1e-3: it divides by sqrt(v) + eps, which turns the rounding
    noise of a gradient entry near 0 (different summation orders in the shared model and in
    its twin) into a step of up to lr * noise / eps."""
    kind = draw(st.sampled_from(["sgd", "adam", "adamw"]))
    lr = draw(st.floats(1e-3, 0.1))
    if kind == "sgd":
        momentum = draw(st.sampled_from([0.0, 0.9]))
        return SGD(lr, momentum, weight_decay=draw(st.sampled_from([0.0, 0.1])),
                   nesterov=momentum > 0 and draw(st.booleans()))
    cls = Adam if kind == "adam" else AdamW
    return cls(lr, eps=draw(st.sampled_from([1e-3, 1e-2])),
               weight_decay=draw(st.sampled_from([0.0, 0.1])), amsgrad=draw(st.booleans()))


CLIPS = st.none() | st.floats(0.05, 2.0)


def step_twin(copies, copy_grads, unique_grads, optimizer, state, clip):
    """One step of the untied twin: every copy receives its root's summed gradient; a clip's
    norm is over the unique parameters' gradients ``unique_grads`` (each root once)."""
    if clip is not None:
        _, norm = clip_grad_norm(unique_grads, clip)
        coefficient = min(clip / (norm + 1e-6), 1.0)
        copy_grads = {key: coefficient * grad for key, grad in copy_grads.items()}
    return optimizer.step(copies, copy_grads, state)


@given(sequential_runs(shared_only=True), optimizers(), CLIPS)
def test_a_shared_model_steps_as_its_untied_twin_with_summed_gradients(run, optimizer, clip):
    model = run.model
    twin, splits, _ = _twin(model, run.batches[0][0])
    assert not splits   # dense layers: the twin is the model without its sharing map
    uses = model.slot_uses()                            # slot -> (root, transposed)
    # separate arrays: two keys holding one array are refused (they would diverge)
    copies = {slot: (run.params[root].T if flip else run.params[root]).copy()
              for slot, (root, flip) in uses.items()}
    shared = train_steps(model, run.params, run.batches, optimizer, clip=clip)
    state = None
    for index, (x, y) in enumerate(run.batches):
        _, twin_grads = twin.loss_and_grads(copies, x, y)
        summed = {root: 0.0 for root in run.params}
        for slot, (root, flip) in uses.items():
            summed[root] = summed[root] + (twin_grads[slot].T if flip else twin_grads[slot])
        copy_grads = {slot: summed[root].T if flip else summed[root]
                      for slot, (root, flip) in uses.items()}
        copies, state = step_twin(copies, copy_grads, summed, optimizer, state, clip)
        for slot, (root, flip) in uses.items():
            # the copies stay equal (exactly: same start, same gradient, elementwise rules)
            copy_of_root = copies[slot].T if flip else copies[slot]
            np.testing.assert_array_equal(copy_of_root, copies[root])
            # and they are the shared model's parameter
            np.testing.assert_allclose(shared.params[index][root], copies[root],
                                       rtol=REORDERED_RTOL, atol=REORDERED_ATOL)


@given(optimizers(), CLIPS, SEEDS)
def test_a_convolution_steps_as_its_locally_connected_twin(optimizer, clip, seed):
    # The kernel is shared by every output position: the twin (refimpl.study) holds one copy
    # per position (LocallyConnected2D), and every copy receives the summed gradient.
    model = ri.Sequential([nn.Conv2D("conv", 1, 2, kernel_size=2), nn.Tanh(), nn.Flatten(),
                           nn.Dense("fc", 2 * 3 * 3, 2)], loss=nn.SoftmaxCrossEntropy())
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((3, 1, 4, 4)), rng.integers(0, 2, 3)) for _ in range(STEPS)]
    params = model.init(seed)
    twin, splits, _ = _twin(model, batches[0][0])
    split = splits["conv"]

    def per_position(unique):
        """The twin's parameters (or gradients) from the unique ones: conv copied everywhere."""
        copied = split.expand({"weight": unique["conv.weight"], "bias": unique["conv.bias"]})
        return {"conv.weight": copied["weight"], "conv.bias": copied["bias"],
                "fc.weight": unique["fc.weight"].copy(), "fc.bias": unique["fc.bias"].copy()}

    copies = per_position(params)
    shared = train_steps(model, params, batches, optimizer, clip=clip)
    state = None
    for index, (x, y) in enumerate(batches):
        _, twin_grads = twin.loss_and_grads(copies, x, y)
        parts = split.parts({"weight": twin_grads["conv.weight"], "bias": twin_grads["conv.bias"]})
        summed = {"conv.weight": parts["weight"].total(params["conv.weight"].shape),
                  "conv.bias": parts["bias"].total(params["conv.bias"].shape),
                  "fc.weight": twin_grads["fc.weight"], "fc.bias": twin_grads["fc.bias"]}
        copies, state = step_twin(copies, per_position(summed), summed, optimizer, state, clip)
        kernels = copies["conv.weight"]                       # (Ho, Wo, F, C, kH, kW)
        np.testing.assert_array_equal(kernels, np.broadcast_to(kernels[0, 0], kernels.shape))
        biases = copies["conv.bias"]                          # (F, Ho, Wo)
        np.testing.assert_array_equal(biases, np.broadcast_to(biases[:, :1, :1], biases.shape))
        for key, value in (("conv.weight", kernels[0, 0]), ("conv.bias", biases[:, 0, 0]),
                           ("fc.weight", copies["fc.weight"]), ("fc.bias", copies["fc.bias"])):
            np.testing.assert_allclose(shared.params[index][key], value, rtol=REORDERED_RTOL,
                                       atol=REORDERED_ATOL)


@given(pair_runs(modes=["hard"]), optimizers(), CLIPS)
def test_a_hard_pair_steps_as_its_soft_twin_at_lam_0_with_summed_gradients(run, optimizer, clip):
    pair = run.model
    twin = TiedPair(pair.model_a, pair.model_b, {tie.name_a: ri.ShareSource(tie.name_b,
                                                                            tie.transpose)
                                                 for tie in pair.pairs}, lam=0.0)
    reads = {f"B:{tie.name_b}": (f"A:{tie.name_a}", tie.transpose) for tie in pair.pairs}
    copies = dict(run.params)
    for name_b, (name_a, flip) in reads.items():
        copies[name_b] = (run.params[name_a].T if flip else run.params[name_a]).copy()
    shared = train_steps(pair, run.params, run.batches, optimizer, clip=clip)
    state = None
    for index, batch in enumerate(run.batches):
        _, grads = twin.joined_loss_and_grads(copies, *batch)
        copy_grads = dict(grads)
        for name_b, (name_a, flip) in reads.items():
            summed = grads[name_a] + (grads[name_b].T if flip else grads[name_b])
            copy_grads[name_a] = summed
            copy_grads[name_b] = summed.T if flip else summed
        unique = {key: copy_grads[key] for key in run.params}
        copies, state = step_twin(copies, copy_grads, unique, optimizer, state, clip)
        for name_b, (name_a, flip) in reads.items():
            np.testing.assert_array_equal(copies[name_b].T if flip else copies[name_b],
                                          copies[name_a])
        assert list(shared.params[index]) == list(run.params)
        for key, value in shared.params[index].items():
            np.testing.assert_allclose(value, copies[key], rtol=REORDERED_RTOL,
                                       atol=REORDERED_ATOL)


@given(siamese_runs(), optimizers(), CLIPS)
def test_a_siamese_model_steps_as_one_tower_copy_per_branch(run, optimizer, clip):
    model = run.model
    branches = model.branch_names
    copies = {f"{branch}/{key}": value.copy() for branch in branches
              for key, value in run.params.items()}
    shared = train_steps(model, run.params, run.batches, optimizer, clip=clip)
    state = None
    for index, batch in enumerate(run.batches):
        inputs = batch[:len(branches)]
        target = batch[-1] if model.loss_spec.needs_target else None
        towers = [{key: copies[f"{branch}/{key}"] for key in run.params} for branch in branches]
        embeddings = [model.tower.forward(tower, x) for tower, x in zip(towers, inputs,
                                                                          strict=True)]
        _, cache = model.loss_spec.forward(tuple(embeddings), target)
        douts = model.loss_spec.backward(1.0, cache)
        per_branch = [model.tower.vjp(tower, x, dout)[2]
                      for tower, x, dout in zip(towers, inputs, douts, strict=True)]
        summed = {key: sum(grads[key] for grads in per_branch) for key in run.params}
        copy_grads = {f"{branch}/{key}": summed[key] for branch in branches for key in run.params}
        copies, state = step_twin(copies, copy_grads, summed, optimizer, state, clip)
        for key in run.params:
            for branch in branches[1:]:
                np.testing.assert_array_equal(copies[f"{branch}/{key}"],
                                              copies[f"{branches[0]}/{key}"])
            np.testing.assert_allclose(shared.params[index][key], copies[f"{branches[0]}/{key}"],
                                       rtol=REORDERED_RTOL, atol=REORDERED_ATOL)


def test_copies_stepped_with_their_own_gradients_drift_apart():
    # The untying bug (verl #7834, lingua #75): the tied weight's two uses stored as two
    # parameters, each with its own gradient and state. They separate at the first step,
    # which is what the twin tests above would see if a use got its own state.
    model = ri.Sequential([nn.Dense("enc", 3, 2), nn.Tanh(), nn.Dense("dec", 2, 3)],
                          loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    untied = ri.Sequential(model.layers, loss=model.loss_spec)
    params = model.init(0)
    x = np.random.default_rng(0).standard_normal((5, 3))
    copies = {**params, "dec.weight": params["enc.weight"].T.copy()}
    run = train_steps(untied, copies, [(x, x)] * STEPS, Adam(0.01))
    drift = run.params[0]["enc.weight"] - run.params[0]["dec.weight"].T
    assert np.abs(drift).max() > 1e-3
    tied = train_steps(model, params, [(x, x)] * STEPS, Adam(0.01))
    assert "dec.weight" not in tied.params[-1] and set(tied.state) == set(params)


# --- the state is one entry per unique parameter ----------------------------------------------

@pytest.mark.parametrize("optimizer", [SGD(0.01, momentum=0.9), Adam(0.01),
                                       AdamW(0.01, amsgrad=True)])
def test_the_state_has_one_entry_per_unique_parameter(optimizer):
    for model, params, batch, _ in _one_of_each_kind(0):
        trajectory = train_steps(model, params, [batch] * STEPS, optimizer)
        assert list(trajectory.state) == list(params)
        for entry in trajectory.state.values():
            assert set(entry) == set(optimizer.state_entries())
            if "step" in entry:
                assert entry["step"] == STEPS     # once per step, not once per use


def test_a_shared_slot_can_hold_neither_a_parameter_nor_a_state():
    model = ri.Sequential([nn.Dense("enc", 3, 2), nn.Tanh(), nn.Dense("dec", 2, 3)],
                          loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    params = model.init(0)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"unexpected \['dec.weight'\] \(\['dec.weight'\] are "
                                         r"shared slots"):
        train_steps(model, {**params, "dec.weight": params["enc.weight"].T.copy()}, [(x, x)],
                    Adam())
    state = train_steps(model, params, [(x, x)], Adam()).state
    with pytest.raises(ValueError, match=r"state \(keyed exactly like params: one entry per "
                                         r"unique parameter\): unexpected \['dec.weight'\]"):
        train_steps(model, params, [(x, x)], Adam(),
                    state={**state, "dec.weight": state["enc.weight"]})
    pair = TiedPair(ri.MLP([3, 4, 2]), ri.MLP([3, 4, 5]), {"fc1.weight": "fc1.weight"},
                    mode="hard")
    joined = pair.join(*pair.init(0))
    with pytest.raises(ValueError, match=r"params_b: holds \['fc1.weight'\], which hard sharing "
                                         r"reads from params_a"):
        train_steps(pair, {**joined, "B:fc1.weight": joined["A:fc1.weight"].copy()}, [], SGD())


# --- weight decay and the L2 penalty ----------------------------------------------------------

@given(sequential_runs(), st.floats(0.01, 1.0),
       st.sampled_from([SGD(0.05), SGD(0.05, momentum=0.9), SGD(0.05, 0.9, nesterov=True),
                        Adam(0.01), Adam(0.01, amsgrad=True)]))
def test_a_weight_decay_of_lam_is_an_l2_penalty_of_lam_over_2_for_sgd_and_adam(run, lam,
                                                                             plain):
    config = {**plain.config(), "weight_decay": lam}
    decayed = train_steps(run.model, run.params, run.batches, ri.optimizer_from_config(config))
    penalised = train_steps(ri.AnchoredModel(run.model, lam=lam / 2), run.params, run.batches,
                            plain)
    for after_decay, after_penalty in zip(decayed.params, penalised.params, strict=True):
        for key, value in after_decay.items():
            np.testing.assert_allclose(value, after_penalty[key], rtol=SAME_RTOL,
                                       atol=SAME_ATOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adamws_decay_is_not_an_l2_penalty(seed):
    model = ri.MLP([3, 5, 2])
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((6, 3)), rng.integers(0, 2, 6)) for _ in range(STEPS)]
    lam = 0.5
    decayed = train_steps(model, model.init(seed), batches, AdamW(0.01, weight_decay=lam))
    penalised = train_steps(ri.AnchoredModel(model, lam=lam / 2), model.init(seed), batches,
                            AdamW(0.01, weight_decay=0.0))
    coupled = train_steps(model, model.init(seed), batches, Adam(0.01, weight_decay=lam))
    for key in decayed.params[-1]:
        # decoupled: the decay bypasses the moments, so it is not the penalty's gradient...
        assert np.abs(decayed.params[-1][key] - penalised.params[-1][key]).max() > 1e-4
        # ...which coupled decay (Adam) is, to rounding
        np.testing.assert_allclose(coupled.params[-1][key], penalised.params[-1][key],
                                   rtol=SAME_RTOL, atol=SAME_ATOL)


# --- the trajectory ------------------------------------------------------------------------------

def _one_of_each_kind(seed: int) -> list[tuple[Any, dict, tuple, MicroBatches]]:
    """A shared autoencoder, a soft L1 pair, an anchored model and a Siamese model, each with
    a batch and its micro-batches."""
    rng = np.random.default_rng(seed)
    shared = ri.Sequential([nn.Dense("enc", 4, 3), nn.Tanh(), nn.Dense("dec", 3, 4)],
                           loss=nn.MSE(), share={"dec.weight": ri.transposed("enc.weight")})
    x = rng.standard_normal((5, 4))
    pair = TiedPair(ri.MLP([4, 3, 2]), shared, {"fc1.weight": "enc.weight"}, lam=0.3,
                    penalty="l1")
    pair_batch = ((x, rng.integers(0, 2, 5)), (rng.standard_normal((3, 4)),) * 2)
    anchored = ri.AnchoredModel(ri.MLP([4, 3, 2]), lam=0.2)
    siamese = nn.Siamese(ri.Sequential([nn.Dense("fc", 4, 3), nn.Tanh()]))
    triplet = tuple(rng.standard_normal((4, 4)) for _ in range(3))
    return [
        (shared, shared.init(seed), (x, x), MicroBatches((x, x), [[4, 0], [2], [1, 3]])),
        (pair, pair.join(pair.model_a.init(seed), shared.init(seed + 1)), pair_batch,
         MicroBatches(pair_batch, [2, 3], [1, 2])),
        (anchored, anchored.model.init(seed), (x, rng.integers(0, 2, 5)), None),
        (siamese, siamese.init(seed), triplet, MicroBatches(triplet, [1, 3])),
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_micro_batches_step_as_the_whole_batch(seed):
    for model, params, batch, micro in _one_of_each_kind(seed):
        micro = micro or MicroBatches(batch, [3, 2])
        whole = train_steps(model, params, [batch] * STEPS, Adam(0.01, eps=1e-3))
        accumulated = train_steps(model, params, [micro] * STEPS, Adam(0.01, eps=1e-3))
        np.testing.assert_allclose(accumulated.losses, whole.losses, rtol=REORDERED_RTOL)
        for a, b in zip(accumulated.params, whole.params, strict=True):
            for key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=REORDERED_RTOL,
                                           atol=REORDERED_ATOL)


def test_a_pairs_penalty_is_counted_once_per_step_over_micro_batches():
    pair = TiedPair(ri.MLP([3, 4, 2]), ri.MLP([3, 4, 2]), {"fc1.weight": "fc1.weight"}, lam=1.0)
    rng = np.random.default_rng(0)
    joined = pair.join(pair.model_a.init(0), pair.model_b.init(1))
    batch = ((rng.standard_normal((4, 3)), rng.integers(0, 2, 4)),
             (rng.standard_normal((6, 3)), rng.integers(0, 2, 6)))
    whole = train_step(pair, joined, batch, SGD(0.1))
    split = train_step(pair, joined, MicroBatches(batch, [1, 3], [2, 2, 2]), SGD(0.1))
    assert split.loss == pytest.approx(whole.loss, rel=REORDERED_RTOL)
    penalty = pair.penalty(*pair.split(joined))[0]
    assert penalty > 0.1   # counting it once per micro-batch would be visible
    for key in joined:
        np.testing.assert_allclose(split.params[key], whole.params[key], rtol=REORDERED_RTOL,
                                   atol=REORDERED_ATOL)


def test_a_trajectory_continues_from_its_state():
    model = ri.MLP([3, 4, 2])
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((5, 3)), rng.integers(0, 2, 5)) for _ in range(4)]
    whole = train_steps(model, model.init(0), batches, Adam(0.01), clip=0.5)
    first = train_steps(model, model.init(0), batches[:2], Adam(0.01), clip=0.5)
    rest = train_steps(model, first.params[-1], batches[2:], Adam(0.01), clip=0.5,
                       state=first.state)
    for key in whole.params[-1]:
        np.testing.assert_array_equal(rest.params[-1][key], whole.params[-1][key])
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)
    empty = train_steps(model, model.init(0), [], Adam())
    assert empty.params == [] and empty.losses.shape == (0,) and empty.state == {}


def test_a_callable_objective_is_a_model_kind():
    model = ri.MLP([3, 2], activation="identity", loss="mse")
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 3)), rng.standard_normal((4, 2))) for _ in range(2)]
    by_model = train_steps(model, model.init(0), batches, AdamW(0.1))
    by_callable = train_steps(lambda p, batch: model.loss_and_grads(p, *batch), model.init(0),
                              batches, AdamW(0.1))
    for a, b in zip(by_model.params, by_callable.params, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    loss, grads = step_loss_and_grads(model, model.init(0), batches[0])
    assert (loss, list(grads)) == (by_model.losses[0], list(model.init(0)))


# --- refusals -----------------------------------------------------------------------------------

def _mlp_setup():
    model = ri.MLP([3, 4, 2])
    x, y = np.ones((2, 3)), np.array([0, 1])
    return model, model.init(0), x, y


@pytest.mark.parametrize("arguments, error, match", [
    (dict(model="mlp"), TypeError, r"model: expected a Sequential, TiedPair, AnchoredModel, "
                                   r"Siamese or a callable"),
    (dict(model=ri.Sequential([nn.Dense("fc", 3, 2)])), ValueError,
     r"model: a Sequential without a loss"),
    (dict(batches=None), TypeError, r"batches: expected a list with one batch per step, got "
                                    r"NoneType"),
    (dict(batches="x"), TypeError, r"batches: expected a list"),
    (dict(optimizer="adam"), TypeError, r"optimizer: expected a refimpl optimizer"),
    (dict(clip=0), ValueError, r"max_norm: expected a number > 0"),
    (dict(clip="1"), TypeError, r"clip: expected None, a max_norm > 0, a ClipGradNorm"),
    (dict(clip={"max_norm": 1, "p": 2}), ValueError, r"clip: unexpected \['p'\]"),
    (dict(params={"fc1.weight": np.ones((4, 3))}), ValueError, r"params: missing"),
])
def test_bad_arguments_are_refused(arguments, error, match):
    model, params, x, y = _mlp_setup()
    given_arguments = dict(model=model, params=params, batches=[(x, y)], optimizer=SGD(0.1))
    given_arguments.update(arguments)
    with pytest.raises(error, match=match):
        train_steps(**given_arguments)


def test_a_bad_batch_is_named_by_its_step():
    model, params, x, y = _mlp_setup()
    with pytest.raises(TypeError, match=r"batches\[0\]: expected \(x, y\), got ndarray "
                                        r"\(batches holds one batch per step\)"):
        train_steps(model, params, (x, y), SGD(0.1))
    with pytest.raises(TypeError, match=r"batches\[1\]: expected \(x, y\), got a tuple of 3"):
        train_steps(model, params, [(x, y), (x, y, y)], SGD(0.1))
    with pytest.raises(ValueError, match=r"batches\[1\]: x: fc1: expected input of shape \(N, 3\)"):
        train_steps(model, params, [(x, y), (np.ones((2, 5)), y)], SGD(0.1))
    pair = TiedPair(ri.MLP([3, 4, 2]), ri.MLP([3, 4, 2]), {"fc1.weight": "fc1.weight"},
                    mode="hard")
    joined = pair.join(*pair.init(0))
    with pytest.raises(TypeError, match=r"batches\[0\]\[1\]: expected \(xb, yb\)"):
        train_steps(pair, joined, [((x, y), x)], SGD(0.1))
    with pytest.raises(TypeError, match=r"params: a TiedPair is stepped as one flat dict"):
        train_steps(pair, pair.init(0), [((x, y), (x, y))], SGD(0.1))
    siamese = nn.Siamese(ri.Sequential([nn.Dense("fc", 3, 2)]), nn.ContrastiveLoss())
    with pytest.raises(TypeError, match=r"batches\[0\]: expected \(x1, x2, y\), got a tuple "
                                        r"of 2"):
        train_steps(siamese, siamese.init(0), [(x, x)], SGD(0.1))
    with pytest.raises(TypeError, match=r"batches\[0\]: splits_b: a TiedPair needs"):
        train_steps(pair, joined, [MicroBatches(((x, y), (x, y)), [1, 1])], SGD(0.1))


def test_a_diverging_run_names_the_step():
    model = ri.MLP([3, 2], activation="identity", loss="mse")
    x, y = np.ones((2, 3)), np.full((2, 2), 1e3)         # gradients of about 1e3
    with pytest.raises(FloatingPointError, match=r"step 0: SGD step: the new value of "
                                                 r"'fc1.weight' contains inf/NaN.*lower the "
                                                 r"learning rate"):
        train_steps(model, model.init(0), [(x, y)], SGD(1e307))


# --- train: the loop over an objective ---------------------------------------------------------

def regression_problem(seed=0):
    model = ri.MLP([3, 2], activation="identity", loss="mse")
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    # MSE over N*K entries of a linear model: Hessian 2/(N K) [x 1]^T [x 1] per output; a
    # step of 1/L (L its largest eigenvalue) decreases the loss at every step.
    design = np.hstack([x, np.ones((8, 1))])
    curvature = np.linalg.eigvalsh(2 / (8 * 2) * design.T @ design).max()
    return model, model.init(seed), x, y, 1.0 / curvature


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_a_convex_problem_decreases_the_loss_at_every_step(seed):
    model, params, x, y, lr = regression_problem(seed)
    result = train(lambda p, step: model.loss_and_grads(p, x, y), params, SGD(lr), 50)
    assert result.losses.shape == (50,)
    assert np.all(np.diff(result.losses) <= 1e-12 * result.losses[0])
    # and it approaches the least-squares optimum
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    best = np.linalg.lstsq(design, y, rcond=None)[0]
    optimum = float(((design @ best - y) ** 2).mean())
    final = model.loss(result.params, x, y)
    assert optimum <= final < optimum + 0.5 * (result.losses[0] - optimum)


def test_train_is_train_steps_without_the_trajectory():
    model, params, x, y, lr = regression_problem()
    seen = []

    def objective(p, step):
        seen.append(step)
        return model.loss_and_grads(p, x, y)

    result = train(objective, params, Adam(lr), 5)
    trajectory = train_steps(model, params, [(x, y)] * 5, Adam(lr))
    assert seen == [0, 1, 2, 3, 4]
    for name in params:
        np.testing.assert_array_equal(result.params[name], trajectory.params[-1][name])
    np.testing.assert_array_equal(result.losses, trajectory.losses)
    assert set(result.state) == set(params)
    untouched = train(objective, params, SGD(0.1), 0)
    assert untouched.params == params and untouched.losses.shape == (0,)


def test_train_stops_with_a_clear_error_when_the_loss_diverges():
    model, params, x, y, lr = regression_problem()
    # The overflow warnings on the way to inf are the point of this test, not noise.
    with np.errstate(over="ignore", invalid="ignore"), \
            pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+"):
        train(lambda p, step: model.loss_and_grads(p, x, 1e150 * y), params, SGD(1e3 * lr), 200)


def test_train_rejects_bad_arguments():
    model, params, x, y, _ = regression_problem()
    with pytest.raises(TypeError, match="objective: expected a callable"):
        train("loss", params, SGD(0.1), 1)
    with pytest.raises(TypeError, match="optimizer: expected a refimpl optimizer"):
        train(lambda p, s: model.loss_and_grads(p, x, y), params, "sgd", 1)
    with pytest.raises(ValueError, match="steps: expected an int >= 0"):
        train(lambda p, s: model.loss_and_grads(p, x, y), params, SGD(0.1), -1)


def test_train_names_the_step_when_the_model_overflows():
    # a refimpl model raises FloatingPointError naming the layer; train adds the step
    model = ri.MLP([2, 3, 1], loss="mse")
    params = model.init(0)
    params["fc2.weight"] = np.full((1, 3), 1e308)
    params["fc1.bias"] = np.full(3, 10.0)   # tanh ~ 1: fc2 sums three terms of 1e308
    x, y = np.ones((4, 2)), np.zeros((4, 1))
    with pytest.raises(FloatingPointError,
                       match=r"train: the objective became non-finite \(layer 'fc2' \(Dense\): "
                             r"output contains inf/NaN from finite inputs\) at step 0; lower"):
        train(lambda p, step: model.loss_and_grads(p, x, y), params, SGD(0.1), 3)
    with pytest.raises(FloatingPointError, match=r"step 0: the objective became non-finite "
                                                 r"\(layer 'fc2'"):
        train_steps(model, params, [(x, y)], SGD(0.1))
