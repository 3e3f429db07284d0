"""Tests of refimpl/hessian/products.py and of the models' R-operator (``Sequential.hvp``,
``Siamese.hvp``, their ``jvp``): Hessian-vector and Jacobian-vector products of every model
kind, checked, not trusted.

* ``H v`` against the complex step of the explicit gradient over drawn models of every kind
  (plain, CNN, shared, tied soft / hard / L1, anchored, sequence, Siamese, micro-batches), and
  against central differences at kink-free points;
* symmetry ``u . (H v) = v . (H u)``;
* the JVP: ``loss_dot = <grad, v>`` and the outputs' tangents against the complex step;
* sharing: the Hessian of a shared parameter is the sum over every pair of its uses, cross
  terms included, and a planted R-operator without the cross terms (or without transposing a
  transposed use back) is caught; tying: the penalty's block ``2 lam [[I, -I], [-I, I]]``,
  and a planted product without it is caught; micro-batches give the full batch's ``H v``.

Comparisons of two computations exact to rounding use :func:`refimpl.gradcheck.assert_close`
with the complex method's tolerance of :data:`refimpl.hessian.HVP_TOLERANCES`.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hessian_drawing import anchored_points, model_of
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from profiles import scaled

import refimpl as ri
from refimpl import nn
from refimpl.gradcheck import assert_close
from refimpl.hessian import (
    HVP_TOLERANCES,
    check,
    check_hvp,
    check_hvp_function,
    gradient_function,
    loss_grads_and_hvp,
    products,
)
from refimpl.testing import strategies as rs

EXACT = HVP_TOLERANCES["complex"]
STEP = 1e-20
SEEDS = st.integers(0, 2**32 - 1)

#: Drawn cases of every kind, small (the default tier draws a few of each).
KINDS = {
    "mlp-cnn-shared-tied": lambda: rs.cases(max_batch=2),
    "sequence": lambda: rs.sequence_cases(max_batch=2, max_steps=3),
    "siamese": lambda: rs.siamese_cases(max_batch=3),
    "microbatch": lambda: rs.microbatch_cases(max_batch=3),
}
#: Examples at the default profile; the slow tier's thorough profile makes the slow ones 150.
TIERS = [pytest.param(10, id="default"), pytest.param(15, id="slow", marks=pytest.mark.slow)]


def run(check, examples, *strategies):
    """``check(*drawn)`` as a Hypothesis test of ``examples`` examples (scaled by the
    profile: tests/profiles.py)."""
    settings(max_examples=scaled(examples))(given(*strategies)(check))()


def direction(params, seed):
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(np.shape(value)) for key, value in params.items()}


# --- H v against numerical derivatives of the gradient, every kind ------------------------------

def _complex_step_agrees(case, seed):
    model, data, splits, splits_b = model_of(case)
    report = check_hvp(model, case.params, data, splits=splits, splits_b=splits_b, directions=1,
                       seed=seed)
    assert report.ok, report


@pytest.mark.parametrize("examples", TIERS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hvp_is_the_complex_step_of_the_gradient(kind, examples):
    run(_complex_step_agrees, examples, KINDS[kind](), SEEDS)


def _anchored_agrees(drawn, seed):
    model, params, data = drawn
    report = check_hvp(model, params, data, directions=1, seed=seed)
    assert report.ok, report


@pytest.mark.parametrize("examples", TIERS)
def test_hvp_of_anchored_models_is_the_complex_step_of_the_gradient(examples):
    run(_anchored_agrees, examples, anchored_points(), SEEDS)


#: How far every distance a Siamese loss takes must be from 0, where the Euclidean norm has a
#: kink of its own: central differences of the gradient (a step ~6e-6) are truncated by
#: ~h^2 / d^3 near it, so their two estimates disagree (at d(a, n) = 0.016 a triplet's H v
#: from steps h and h/2 differ by ~1e-6 relative: inconclusive). The complex-step tests above
#: keep such points.
NORM_KINK_GAP = 0.1


def _distances(case):
    """Every distance a Siamese case's loss takes, per row (an empty list for other kinds)."""
    if case.kind != "siamese":
        return []
    out = case.outputs(case.params)
    pairs = ([("out_anchor", "out_positive"), ("out_anchor", "out_negative")]
             if "out_anchor" in out else [("out_x1", "out_x2")])
    return [np.sqrt(((out[u] - out[v]) ** 2).sum(axis=1)) for u, v in pairs]


def _central_agrees(case, seed):
    assume(all(d.min() >= NORM_KINK_GAP for d in _distances(case)))
    model, data, splits, splits_b = model_of(case)
    report = check_hvp(model, case.params, data, splits=splits, splits_b=splits_b,
                       method="central", directions=1, seed=seed)
    assert report.ok, report


@pytest.mark.parametrize("examples", [pytest.param(5, id="default"),
                                      pytest.param(60, id="slow", marks=pytest.mark.slow)])
def test_central_differences_agree_at_kink_free_points(examples):
    kink_free = st.one_of(rs.cases(kink_free=True, max_batch=2),
                          rs.sequence_cases(max_batch=2, max_steps=3, kink_margin=0.05),
                          rs.siamese_cases(max_batch=3))
    run(_central_agrees, examples, kink_free, SEEDS)


# --- symmetry and the JVP ----------------------------------------------------------------------

def _symmetric(case, seed):
    model, data, splits, splits_b = model_of(case)
    u, v = direction(case.params, seed), direction(case.params, seed + 1)
    hu = ri.hvp(model, case.params, data, u, splits=splits, splits_b=splits_b)
    hv = ri.hvp(model, case.params, data, v, splits=splits, splits_b=splits_b)
    terms = [u[key] * hv[key] for key in u] + [v[key] * hu[key] for key in v]
    scale = sum(float(np.abs(term).sum()) for term in terms)   # before they cancel
    assert_close(sum(float((u[key] * hv[key]).sum()) for key in u),
                 sum(float((v[key] * hu[key]).sum()) for key in v),
                 EXACT._replace(atol=EXACT.atol + EXACT.rtol * scale), "u.Hv against v.Hu")


@pytest.mark.parametrize("examples", TIERS)
def test_hessian_is_symmetric(examples):
    run(_symmetric, examples, st.one_of([strategy() for strategy in KINDS.values()]), SEEDS)


def _jvp_agrees(case, seed):
    model, data, splits, splits_b = model_of(case)
    v = direction(case.params, seed)
    result = ri.jvp(model, case.params, data, v, splits=splits, splits_b=splits_b)
    loss, grads = case.loss_and_grads(case.params)
    inner = [grads[key] * v[key] for key in v]
    scale = sum(float(np.abs(term).sum()) for term in inner)
    assert result.loss == pytest.approx(loss, rel=1e-13, abs=1e-15)
    assert_close(result.loss_dot, sum(float(term.sum()) for term in inner),
                 EXACT._replace(atol=EXACT.atol + EXACT.rtol * scale), "loss_dot")
    moved = case.outputs({key: case.params[key] + 1j * STEP * v[key] for key in v})
    assert set(result.outputs_dot) == set(moved)   # the cases' names of the outputs
    for name, value in moved.items():
        assert_close(result.outputs[name], value.real, EXACT, name)
        assert_close(result.outputs_dot[name], value.imag / STEP, EXACT, f"{name}: tangent")


@pytest.mark.parametrize("examples", TIERS)
def test_jvp_is_the_complex_step_of_outputs_and_loss(examples):
    run(_jvp_agrees, examples, st.one_of([strategy() for strategy in KINDS.values()]), SEEDS)


def _anchored_jvp_agrees(drawn, seed):
    model, params, data = drawn
    v = direction(params, seed)
    result = ri.jvp(model, params, data, v)
    moved = model.loss_and_grads({key: params[key] + 1j * STEP * v[key] for key in v}, *data)[0]
    assert_close(result.loss_dot, moved.imag / STEP, EXACT, "loss_dot")
    assert_close(result.outputs_dot["out"], model.model.forward(
        {key: params[key] + 1j * STEP * v[key] for key in v}, data[0]).imag / STEP, EXACT)


@pytest.mark.parametrize("examples", TIERS)
def test_jvp_of_anchored_models(examples):
    run(_anchored_jvp_agrees, examples, anchored_points(), SEEDS)


def test_sequential_jvp_moves_the_input_too():
    model = nn.CNN((2, 5, 5), [{"out_channels": 3, "kernel_size": 3, "stride": 2}], [4],
                   activation="tanh", pool=None, loss=None)
    params = model.init(seed=1)
    rng = np.random.default_rng(1)
    x, x_dot = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((2, 2, 5, 5))
    v = direction(params, 2)
    out, out_dot = model.jvp(params, x, v, x_dot=x_dot)
    moved = model.forward({key: params[key] + 1j * STEP * v[key] for key in v},
                          x + 1j * STEP * x_dot)
    assert_close(out, moved.real, EXACT)
    assert_close(out_dot, moved.imag / STEP, EXACT)


# --- micro-batches -----------------------------------------------------------------------------

def _microbatch_is_full_batch(case, seed):
    model, data, splits, splits_b = model_of(case)
    v = direction(case.params, seed)
    accumulated = loss_grads_and_hvp(model, case.params, data, v, splits=splits,
                                     splits_b=splits_b)
    full = loss_grads_and_hvp(model, case.params, data, v)
    assert accumulated.loss == pytest.approx(full.loss, rel=1e-13, abs=1e-15)
    for key in case.params:
        assert_close(accumulated.grads[key], full.grads[key], EXACT, f"grads[{key!r}]")
        assert_close(accumulated.hvp[key], full.hvp[key], EXACT, f"hvp[{key!r}]")


@pytest.mark.parametrize("examples", TIERS)
def test_micro_batch_hvp_is_the_full_batch_hvp(examples):
    run(_microbatch_is_full_batch, examples, KINDS["microbatch"](), SEEDS)


def _anchored_micro_batches(drawn, data, seed):
    """An anchored model's H v over micro-batches (index lists too): the full batch's, the
    penalty's ``2 lam v`` added once (added per micro-batch it would be M times too strong)."""
    model, params, batch = drawn
    splits = data.draw(rs.micro_batch_splits(len(batch[0]), min_count=2, index_lists=None)
                       if len(batch[0]) > 1 else st.just([1]))
    v = direction(params, seed)
    accumulated = ri.hvp(model, params, batch, v, splits=splits)
    assert_close_dicts(accumulated, ri.hvp(model, params, batch, v))
    result = ri.jvp(model, params, batch, v, splits=splits)
    assert result.loss_dot == pytest.approx(ri.jvp(model, params, batch, v).loss_dot,
                                            rel=1e-12, abs=1e-13)
    assert sorted(result.outputs) == [f"out.{i}" for i in range(len(splits))]


@pytest.mark.parametrize("examples", TIERS)
def test_anchored_micro_batches_add_the_penalty_once(examples):
    run(_anchored_micro_batches, examples, anchored_points(), st.data(), SEEDS)


# --- sharing: every pair of uses, cross terms included --------------------------------------------

def _twin(model):
    """The unshared twin (every slot its own parameter) and the map of slot values."""
    twin = nn.Sequential(model.layers, loss=model.loss_spec)
    uses = model.slot_uses()

    def slots(values):   # a root-keyed dict -> a slot-keyed one (transposed uses transposed)
        return {slot: values[root].T if transpose else values[root]
                for slot, (root, transpose) in uses.items()}
    return twin, uses, slots


def _per_use_hvp(model, params, data, v, *, cross_terms=True, transpose_back=True):
    """``H v`` of a shared model from its unshared twin's products: for every use ``u`` of a
    root, ``P_u^T [H_twin (P v)]_u`` summed onto the root. ``cross_terms=False`` zeroes the
    direction on the root's *other* uses (the planted error "a missing cross term between two
    uses"); ``transpose_back=False`` forgets to transpose a transposed use's block back."""
    twin, uses, slots = _twin(model)
    twin_params, twin_v = slots(params), slots(v)
    result = {}
    for slot, (root, transpose) in uses.items():
        direction_ = dict(twin_v)
        if not cross_terms:
            for other, (other_root, _) in uses.items():
                if other != slot and other_root == root:
                    direction_[other] = np.zeros_like(direction_[other])
        block = twin.hvp(twin_params, *data, direction_)[2][slot]
        block = block.T if transpose and transpose_back else block
        result[root] = result[root] + block if root in result else block
    return {key: result[key] for key in params}


def test_shared_hessian_is_the_sum_of_every_pair_of_uses():
    """Full Hessians by unit vectors: the shared parameter's block is ``H11 + H12 + H21 +
    H22`` of its two uses (one read transposed), and the cross terms are not negligible."""
    model = nn.Sequential([nn.Dense("enc", 3, 3), nn.Tanh(), nn.Dense("dec", 3, 3),
                           nn.Tanh(), nn.Dense("out", 3, 2)], loss=nn.SoftmaxCrossEntropy(),
                          share={"dec.weight": nn.transposed("enc.weight")})
    params = model.init(seed=4)
    rng = np.random.default_rng(4)
    data = (rng.standard_normal((5, 3)), rng.integers(0, 2, size=5))
    twin, _, slots = _twin(model)
    twin_params = slots(params)

    def hessian(of_model, at, name_in, name_out):   # d(grad[name_out]) / d(name_in), 9 x 9
        columns = []
        for index in range(9):
            unit = {key: np.zeros_like(value) for key, value in at.items()}
            unit[name_in].flat[index] = 1.0
            columns.append(of_model.hvp(at, *data, unit)[2][name_out].reshape(-1))
        return np.array(columns).T

    shared = hessian(model, params, "enc.weight", "enc.weight")
    blocks = {(a, b): hessian(twin, twin_params, b, a)
              for a in ("enc.weight", "dec.weight") for b in ("enc.weight", "dec.weight")}
    transpose = np.arange(9).reshape(3, 3).T.reshape(-1)   # vec(W.T) = T vec(W)
    p = {"enc.weight": np.eye(9), "dec.weight": np.eye(9)[transpose]}
    expected = sum(p[a].T @ blocks[a, b] @ p[b] for a, b in blocks)
    diagonal = sum(p[a].T @ blocks[a, a] @ p[a] for a in p)
    assert_close(shared, expected, EXACT, "shared Hessian")
    assert np.abs(shared - diagonal).max() > 0.1 * np.abs(shared).max()   # cross terms matter


def test_recurrence_is_sharing_across_time_for_the_hessian_too():
    """The unrolled RNN whose per-step copies are tied back by its sharing map has the RNN's
    ``H v``: the cross terms between time steps fall out of the sharing sums."""
    rnn = nn.Sequential([nn.RNN("rnn", 3, 4), nn.LastStep(), nn.Dense("fc", 4, 2)],
                        loss=nn.SoftmaxCrossEntropy())
    unrolled = nn.UnrolledRNN("rnn", 3, 4, steps=5)
    tied = nn.Sequential([unrolled, nn.LastStep(), nn.Dense("fc", 4, 2)],
                         loss=nn.SoftmaxCrossEntropy(), share=unrolled.sharing_map())
    params = rnn.init(seed=0)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((3, 5, 3)), rng.integers(0, 2, size=3))
    v = direction(params, 1)
    first = {f"rnn.{local}": f"rnn.{local}_{1 if local == 'weight_hh' else 0}"
             for local in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    first.update({"fc.weight": "fc.weight", "fc.bias": "fc.bias"})
    expected = ri.hvp(rnn, params, data, v)
    got = ri.hvp(tied, {first[key]: value for key, value in params.items()}, data,
                 {first[key]: value for key, value in v.items()})
    for key in params:
        assert_close(got[first[key]], expected[key], EXACT, key)


def _cross_terms_are_needed(model, point, seed):
    model_, params, data = model, point.params, (point.inputs["x"], point.inputs["y"])
    v = direction(params, seed)
    explicit = ri.hvp(model_, params, data, v)
    assert_close_dicts(_per_use_hvp(model_, params, data, v), explicit)
    planted = _per_use_hvp(model_, params, data, v, cross_terms=False)
    assume(_differs(planted, explicit))   # a draw whose cross terms are negligible shows nothing
    f = gradient_function(model_, data)
    report = check_hvp_function(f, lambda d: _per_use_hvp(model_, params, data, d,
                                                          cross_terms=False), params, v=v)
    assert not report.ok, report


@st.composite
def shared_points(draw, transposed=True):
    model = draw(rs.shared_mlps(transposed=transposed, max_width=4))
    return model, draw(rs.points(model, max_batch=3))


def assert_close_dicts(actual, expected):
    for key in expected:
        assert_close(actual[key], expected[key], EXACT, key)


def _differs(planted, explicit):
    return any(np.abs(planted[key] - explicit[key]).max()
               > 1e3 * (EXACT.atol + EXACT.rtol * np.abs(explicit[key]).max())
               for key in explicit)


@pytest.mark.parametrize("examples", TIERS)
def test_a_missing_cross_term_between_two_uses_is_caught(examples):
    run(lambda drawn, seed: _cross_terms_are_needed(*drawn, seed), examples, shared_points(),
        SEEDS)


def test_a_transposed_block_is_caught():
    """A transposed use whose block is not transposed back (square, so the shapes fit)."""
    model = nn.Sequential([nn.Dense("enc", 4, 4), nn.Tanh(), nn.Dense("dec", 4, 4), nn.Tanh(),
                           nn.Dense("out", 4, 3)], loss=nn.SoftmaxCrossEntropy(),
                          share={"dec.weight": nn.transposed("enc.weight")})
    params = model.init(seed=2)
    rng = np.random.default_rng(2)
    data = (rng.standard_normal((4, 4)), rng.integers(0, 3, size=4))
    f = gradient_function(model, data)
    assert check_hvp_function(f, lambda d: _per_use_hvp(model, params, data, d), params).ok
    report = check_hvp_function(
        f, lambda d: _per_use_hvp(model, params, data, d, transpose_back=False), params)
    assert not report.ok
    assert {row.name for row in report.rows if row.status == "mismatch"} == {"enc.weight"}


# --- tying: the penalty's block -----------------------------------------------------------------

@st.composite
def pair_points(draw, **options):
    pair = draw(rs.tied_pairs(max_width=4, **options))
    return pair, draw(rs.points(pair, max_batch=3))


def _pair_data(point):
    inputs = point.inputs
    return (inputs["xa"], inputs["ya"]), (inputs["xb"], inputs.get("yb", inputs["xb"]))


def _penalty_block(pair, point, seed):
    """``H v`` of a pair minus its two models' products is the penalty's block:
    ``+-2 lam (vA - vB)`` on each soft L2 pair, 0 for L1 and elsewhere; hard mode adds B's
    product of a shared parameter to A's."""
    params, data = point.params, _pair_data(point)
    v = direction(params, seed)
    explicit = ri.hvp(pair, params, data, v)
    params_a, params_b = pair.split(params)
    v_a, v_b = pair.split(v)
    full_b, v_full_b = dict(params_b), dict(v_b)
    for name_b, (name_a, transpose) in pair.shared_b().items():
        full_b[name_b] = params_a[name_a].T if transpose else params_a[name_a]
        v_full_b[name_b] = v_a[name_a].T if transpose else v_a[name_a]
    expected_a = pair.model_a.hvp(params_a, *data[0], v_a)[2]
    expected_b = pair.model_b.hvp(full_b, *data[1], v_full_b)[2]
    for name_b, (name_a, transpose) in pair.shared_b().items():
        shared = expected_b.pop(name_b)
        expected_a[name_a] = expected_a[name_a] + (shared.T if transpose else shared)
    if pair.mode == "soft" and pair.penalty_name == "l2":
        for tie in pair.pairs:
            b_dot = v_b[tie.name_b].T if tie.transpose else v_b[tie.name_b]
            pull = 2 * tie.lam * (v_a[tie.name_a] - b_dot)
            expected_a[tie.name_a] = expected_a[tie.name_a] + pull
            expected_b[tie.name_b] = expected_b[tie.name_b] - (pull.T if tie.transpose
                                                               else pull)
    assert_close_dicts(explicit, pair.join(expected_a, expected_b))


@pytest.mark.parametrize("examples", TIERS)
def test_tying_adds_the_penalty_block(examples):
    run(lambda drawn, seed: _penalty_block(*drawn, seed), examples, pair_points(), SEEDS)


def _dropping_the_penalty_is_caught(pair, point, seed):
    params, data = point.params, _pair_data(point)
    v = direction(params, seed)
    assume(_differs(_dropped_penalty(pair, params, data, v), ri.hvp(pair, params, data, v)))
    report = check_hvp_function(gradient_function(pair, data),
                                lambda d: _dropped_penalty(pair, params, data, d), params, v=v)
    assert not report.ok, report


@pytest.mark.parametrize("examples", TIERS)
def test_the_penalty_hessian_dropped_is_caught(examples):
    run(lambda drawn, seed: _dropping_the_penalty_is_caught(*drawn, seed), examples,
        pair_points(modes=["soft"], penalties=["l2"]), SEEDS)


def _dropped_penalty(pair, params, data, v):
    """The planted error "the penalty's Hessian dropped": the pair's H v without its
    ``+-2 lam (vA - vB)`` terms (every pair L2, soft)."""
    explicit = ri.hvp(pair, params, data, v)
    v_a, v_b = pair.split(v)
    dropped_a, dropped_b = pair.split(explicit)
    for tie in pair.pairs:
        b_dot = v_b[tie.name_b].T if tie.transpose else v_b[tie.name_b]
        pull = 2 * tie.lam * (v_a[tie.name_a] - b_dot)
        dropped_a[tie.name_a] = dropped_a[tie.name_a] - pull
        dropped_b[tie.name_b] = dropped_b[tie.name_b] + (pull.T if tie.transpose else pull)
    return pair.join(dropped_a, dropped_b)


def test_penalty_hessian_is_two_lambda_identity_blocks():
    """``lam ||wA - wB||^2`` alone (two models whose losses do not depend on the paired
    weights' values... here: the pair's H v minus lam = 0's H v) is ``2 lam [[I, -I], [-I,
    I]]`` applied to the direction, exactly."""
    model_a = nn.MLP([3, 4, 2], activation="tanh")
    model_b = nn.MLP([3, 4, 2], activation="sigmoid", loss="mse")
    rng = np.random.default_rng(5)
    data = ((rng.standard_normal((4, 3)), rng.integers(0, 2, size=4)),
            (rng.standard_normal((3, 3)), rng.standard_normal((3, 2))))
    pair = ri.TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight"}, lam=0.7)
    free = ri.TiedPair(model_a, model_b, {"fc1.weight": "fc1.weight"}, lam=0.0)
    params = pair.join(*pair.init(seed=5))
    v = direction(params, 6)
    difference = {key: value - ri.hvp(free, params, data, v)[key]
                  for key, value in ri.hvp(pair, params, data, v).items()}
    pull = 2 * 0.7 * (v["A:fc1.weight"] - v["B:fc1.weight"])
    assert_close(difference["A:fc1.weight"], pull, EXACT)
    assert_close(difference["B:fc1.weight"], -pull, EXACT)
    for key in difference:
        if key not in ("A:fc1.weight", "B:fc1.weight"):
            np.testing.assert_array_equal(difference[key], 0.0)


def test_anchored_penalty_adds_two_lambda_v_or_nothing():
    model = nn.MLP([3, 4, 2], activation="tanh")
    params = model.init(seed=7)
    rng = np.random.default_rng(7)
    data = (rng.standard_normal((4, 3)), rng.integers(0, 2, size=4))
    v = direction(params, 8)
    base = model.hvp(params, *data, v)[2]
    for penalty, factor in (("l2", 2 * 0.3), ("l1", 0.0)):
        anchored = ri.AnchoredModel(model, lam=0.3, names=["fc1.weight"], penalty=penalty)
        hv = ri.hvp(anchored, params, data, v)
        assert_close(hv["fc1.weight"] - base["fc1.weight"], factor * v["fc1.weight"], EXACT)
        np.testing.assert_array_equal(hv["fc2.weight"], base["fc2.weight"])


# --- edges and arguments --------------------------------------------------------------------------

def test_a_model_without_parameters():
    model = nn.Sequential([nn.Tanh()], loss=nn.MSE())
    x, y = np.ones((2, 3)), np.zeros((2, 3))
    assert ri.hvp(model, {}, (x, y), {}) == {}
    result = ri.jvp(model, {}, (x, y), {})
    assert result.loss_dot == 0.0
    np.testing.assert_array_equal(result.outputs_dot["out"], 0.0)


def test_bad_arguments_are_errors_naming_them():
    model = nn.MLP([3, 4, 2])
    params = model.init(seed=0)
    data = (np.ones((2, 3)), np.array([0, 1]))
    v = {key: np.ones_like(value) for key, value in params.items()}
    with pytest.raises(TypeError, match="model: expected a refimpl Sequential"):
        ri.hvp(object(), params, data, v)
    with pytest.raises(ValueError, match=r"v \(a direction: the keys of params\): missing "
                                         r"\['fc2.bias'\]"):
        ri.hvp(model, params, data, {k: a for k, a in v.items() if k != "fc2.bias"})
    with pytest.raises(ValueError, match=r"v\['fc1.weight'\]: expected shape \(4, 3\)"):
        ri.hvp(model, params, data, {**v, "fc1.weight": np.ones((3, 4))})
    with pytest.raises(TypeError, match=r"v\['fc1.bias'\]: expected a real array"):
        ri.hvp(model, params, data, {**v, "fc1.bias": np.ones(4) * 1j})
    with pytest.raises(ValueError, match=r"v\['fc1.bias'\]: contains 1 NaN"):
        ri.hvp(model, params, data, {**v, "fc1.bias": np.array([1.0, np.nan, 0.0, 0.0])})
    with pytest.raises(TypeError, match=r"data: expected \(x, y\)"):
        ri.hvp(model, params, np.ones((2, 3)), v)
    with pytest.raises(TypeError, match="splits_b: given without splits"):
        ri.hvp(model, params, data, v, splits_b=[1, 1])
    with pytest.raises(ValueError, match="splits: micro-batch sizes"):
        ri.hvp(model, params, data, v, splits=[1, 2])
    with pytest.raises(ValueError, match="loss: this model was built without a loss"):
        ri.hvp(nn.MLP([3, 2], loss=None), nn.MLP([3, 2], loss=None).init(0), data,
               {"fc1.weight": np.ones((2, 3)), "fc1.bias": np.ones(2)})
    pair = ri.TiedPair(model, nn.MLP([3, 4, 2]), {"fc1.weight": "fc1.weight"}, lam=0.1)
    joined = pair.join(*pair.init(seed=0))
    with pytest.raises(TypeError, match=r"data: a TiedPair takes \(\(xa, ya\), \(xb, yb\)\)"):
        ri.hvp(pair, joined, data, {k: np.ones_like(a) for k, a in joined.items()})
    with pytest.raises(TypeError, match="splits_b: a TiedPair needs"):
        ri.hvp(pair, joined, (data, data), {k: np.ones_like(a) for k, a in joined.items()},
               splits=[1, 1])
    language = nn.Sequential([nn.Embedding("embed", 5, 3), nn.Dense("fc", 3, 2)],
                             loss=nn.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="x_dot: the model's input is integer indices"):
        language.jvp(language.init(0), np.array([[0, 1]]),
                     {k: np.ones_like(a) for k, a in language.init(0).items()},
                     x_dot=np.ones((1, 2)))
    siamese = nn.Siamese(nn.Sequential([nn.Dense("fc", 3, 2)]), nn.TripletMarginLoss())
    with pytest.raises(TypeError, match=r"data: a Siamese model with TripletMarginLoss takes "
                                        r"\(anchor, positive, negative\)"):
        ri.hvp(siamese, siamese.init(0), (np.ones((2, 3)),) * 2,
               {k: np.ones_like(a) for k, a in siamese.init(0).items()})


@pytest.mark.parametrize("module", [products, check])
def test_the_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted and not result.failed
