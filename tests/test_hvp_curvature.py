"""Tests of refimpl/study/curvature.py, refimpl/hessian/branches.py and `refimpl explain
--hessian` (refimpl/cli/explain.py): a parameter's e^T H e split into its uses' diagonal blocks,
the cross terms between uses and a penalty's share, against an explicit Hessian matrix and
against refimpl.hvp of the whole model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import refimpl as ri
from refimpl import cli, nn
from refimpl.hessian.branches import branch_products, vjp_derivative
from refimpl.study.curvature import model_curvature
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.models import case_model
from refimpl.testing.second_order import hvp_expectation

CATALOGUE = {case.name: case for case in all_cases()}


def blocks_of(name):
    case = CATALOGUE[name]
    model, data, _, _ = case_model(case)
    return case, model_curvature(model, case.params, data, hvp_expectation(case).direction)


def test_every_catalogue_block_sums_to_refimpls_hvp():
    """The terms of every block add up to <e, H e> of refimpl.hvp of the whole model: a term
    left out (a cross term, a penalty, a model of a pair) would not."""
    for name in CATALOGUE:
        case, blocks = blocks_of(name)
        listed = [key for block in blocks for key in block.names]    # each parameter once
        assert sorted(listed) == sorted(case.params) and len(set(listed)) == len(listed), name
        for block in blocks:
            assert block.value == pytest.approx(block.product, rel=1e-9,
                                                abs=1e-12 * max(1.0, abs(block.product))), \
                (name, block)


def _full_hessian(model, params, x, y):
    """The twin's Hessian as a matrix over its slots, one unit direction at a time."""
    keys = list(params)
    sizes = [params[key].size for key in keys]
    columns = []
    for key, size in zip(keys, sizes, strict=True):
        for index in range(size):
            unit = {k: np.zeros_like(v) for k, v in params.items()}
            unit[key].flat[index] = 1.0
            product = model.hvp(params, x, y, unit)[2]
            columns.append(np.concatenate([product[k].ravel() for k in keys]))
    starts = np.cumsum([0, *sizes])
    return np.array(columns).T, {key: slice(starts[i], starts[i + 1])
                                 for i, key in enumerate(keys)}


def test_the_terms_are_the_explicit_hessians_blocks():
    """Against the twin's Hessian written out entry by entry: the diagonal block of each use
    and P_u^T H_uu' P_u' of each pair, read off the matrix."""
    model = nn.Sequential([nn.Dense("enc", 3, 3), nn.Tanh(), nn.Dense("dec", 3, 3), nn.Tanh(),
                           nn.Dense("out", 3, 2)], loss=nn.SoftmaxCrossEntropy(),
                          share={"dec.weight": nn.transposed("enc.weight")})
    params = model.init(4)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    v = {key: rng.standard_normal(value.shape) for key, value in params.items()}
    twin = nn.Sequential(model.layers, loss=model.loss_spec)
    twin_params = {**params, "dec.weight": params["enc.weight"].T}
    hessian, where = _full_hessian(twin, twin_params, x, y)
    d_enc, d_dec = v["enc.weight"].ravel(), v["enc.weight"].T.ravel()
    enc, dec = where["enc.weight"], where["dec.weight"]
    block = model_curvature(model, params, (x, y), v)[0]
    assert block.names == ("enc.weight",)
    values = {term.label: term.value for term in block.terms}
    assert values["enc.weight"] == pytest.approx(d_enc @ hessian[enc, enc] @ d_enc, rel=1e-10)
    assert values["dec.weight^T"] == pytest.approx(d_dec @ hessian[dec, dec] @ d_dec,
                                                   rel=1e-10)
    assert values["enc.weight x dec.weight^T"] == pytest.approx(
        2 * d_enc @ hessian[enc, dec] @ d_dec, rel=1e-10)
    assert abs(values["enc.weight x dec.weight^T"]) > 0.1 * abs(block.value)   # not negligible


def test_a_soft_tie_is_one_block_whose_penalty_is_2_lam_norm_squared():
    case, blocks = blocks_of("tied-soft-lasserre")
    v = hvp_expectation(case).direction
    lam = case.config["pair"]["lam"]["fc1.weight"]
    [block] = [b for b in blocks if b.names == ("A:fc1.weight", "B:enc.weight")]
    assert [term.kind for term in block.terms] == ["use", "use", "penalty"]
    penalty = block.terms[-1]
    assert penalty.label == "penalty (l2)"
    assert penalty.value == pytest.approx(
        2 * lam * np.sum((v["A:fc1.weight"] - v["B:enc.weight"]) ** 2), rel=1e-12)
    _, l1_blocks = blocks_of("tied-soft-l1")
    assert {term.value for b in l1_blocks for term in b.terms if term.kind == "penalty"} == {0}


def test_an_anchor_adds_2_lam_norm_squared_and_a_hard_tie_adds_model_bs_uses():
    case, blocks = blocks_of("tied-anchored-l2sp")
    v = hvp_expectation(case).direction
    lam = case.config["anchored"]["lam"]["fc1.weight"]
    [block] = [b for b in blocks if b.names == ("fc1.weight",)]
    assert block.terms[-1].value == pytest.approx(2 * lam * np.sum(v["fc1.weight"] ** 2))
    _, blocks = blocks_of("tied-hard-lasserre-transposed")
    assert [term.label for term in blocks[0].terms] == ["A:fc1.weight", "B:dec.weight^T"]


def test_siamese_branches_are_uses_coupled_by_the_metric_loss():
    _, blocks = blocks_of("siamese-contrastive-all-active")
    labels = [term.label for term in blocks[0].terms]
    assert labels == ["x1:fc1.weight", "x2:fc1.weight", "x1:fc1.weight x x2:fc1.weight"]
    assert blocks[0].terms[-1].value != 0


def test_branch_products_sum_to_siameses_hvp_and_vjp_derivative_is_the_r_operator():
    case = CATALOGUE["siamese-triplet-all-active"]
    model, data, _, _ = case_model(case)
    v = hvp_expectation(case).direction
    products = branch_products(model, [case.params] * 3, data, [v] * 3)
    total = {key: sum(product[key] for product in products) for key in case.params}
    expected = hvp_expectation(case).hvp
    for key in case.params:
        np.testing.assert_allclose(total[key], expected[key], rtol=1e-11, atol=1e-13)
    tower = model.tower
    dout = np.random.default_rng(0).standard_normal(tower.forward(case.params, data[0]).shape)
    derivative = vjp_derivative(tower, case.params, data[0], dout, v)
    h = 1e-6
    plus = tower.vjp({k: p + h * v[k] for k, p in case.params.items()}, data[0], dout)[2]
    minus = tower.vjp({k: p - h * v[k] for k, p in case.params.items()}, data[0], dout)[2]
    for key in case.params:
        np.testing.assert_allclose(derivative[key], (plus[key] - minus[key]) / (2 * h),
                                   rtol=1e-6, atol=1e-8)


def test_model_curvature_checks_its_arguments_as_hvp_does():
    model = ri.MLP([2, 3, 2])
    params = model.init(0)
    with pytest.raises(ValueError, match="v"):
        model_curvature(model, params, (np.ones((2, 2)), np.array([0, 1])),
                        {"fc1.weight": np.ones((3, 2))})


def test_explain_hessian_text_json_and_plot(tmp_path, capsys):
    assert cli.main(["explain", "--hessian", "shared-tied-autoencoder", "--json",
                     str(tmp_path / "h.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("refimpl explain --hessian shared-tied-autoencoder: the curvature "
                             "e^T H e of every parameter along the case's direction v (seed "
                             "200;")
    row = next(line for line in out if line.startswith("enc.weight"))
    assert "enc.weight x dec.weight^T" in row and "dec.weight^T" in row
    document = json.loads((tmp_path / "h.json").read_text())
    assert document["case"] == "shared-tied-autoencoder" and document["direction_seed"] == 200
    first = document["parameters"][0]
    assert first["names"] == ["enc.weight"]
    assert [term["kind"] for term in first["terms"]] == ["use", "use", "cross"]
    assert sum(term["share"] for term in first["terms"]) == pytest.approx(1.0)
    assert cli.main(["explain", "--hessian", "tied-soft-l2", "--plot",
                     str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "A:fc1.weight ~ B:fc1.weight" in capsys.readouterr().out


def test_explain_hessian_of_an_unknown_case_is_a_usage_error(capsys):
    assert cli.main(["explain", "--hessian", "no-such-case"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_explain_hessian_of_a_micro_batch_case_is_its_full_batchs():
    _, blocks = blocks_of("microbatch-shared")
    base = get_case("microbatch-shared")
    model, data, _, _ = case_model(base)
    assert [b.value for b in blocks] == [b.value for b in model_curvature(
        model, base.params, data, hvp_expectation(base).direction)]
