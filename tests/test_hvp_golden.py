"""Tests of the HVP files of a golden folder (refimpl/testing/golden, schema 3): every case
stores its direction and H v with floors per dtype, verify recomputes them, and
compare_with_golden judges an implementation's hvp along the stored direction."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import refimpl as ri
from refimpl.testing import compare_with_golden, golden
from refimpl.testing.cases import get_case
from refimpl.testing.cases.models import model_from_config
from refimpl.testing.second_order import direction_seed, hvp_expectation, hvp_floors

NAMES = ["mlp-tanh-ce", "tied-hard-lasserre-transposed", "microbatch-anchored"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("hvp-golden") / "g"
    golden.write(path, cases=NAMES)
    return path


def _hvp(config):
    def hvp(params, inputs, vector):
        model, data, splits, splits_b = model_from_config(config, inputs)
        return ri.hvp(model, params, data, vector, splits=splits, splits_b=splits_b)
    return hvp


def _impl(entry, fault=None):
    case = get_case(entry)

    def impl(params, inputs):
        return case.evaluate(params, inputs)

    def hvp(params, inputs, vector):
        products = _hvp(case.config)(params, inputs, vector)
        return products if fault is None else fault(products)
    impl.hvp = hvp
    return impl


def test_every_case_stores_its_direction_and_hvp_with_floors(folder):
    manifest = golden.read_manifest(folder)
    assert manifest["schema_version"] == 3 == golden.SCHEMA_VERSION
    assert "hvp.<name>.npy" in manifest["conventions"]["hvp"]
    for name in NAMES:
        case, entry = get_case(name), manifest["cases"][name]
        expected = hvp_expectation(case)
        assert entry["hvp_direction_seed"] == direction_seed(case)
        files = {(f["role"], f["name"]): f for f in entry["files"]}
        stored = golden.load_case(folder, name)
        assert list(stored.direction) == list(stored.hvp) == list(case.params)
        for key in case.params:
            np.testing.assert_array_equal(stored.direction[key], expected.direction[key])
            np.testing.assert_array_equal(stored.hvp[key], expected.hvp[key])
            assert "floors" not in files[("direction", key)]
            floors = files[("hvp", key)]["floors"]
            for dtype, floor in floors.items():
                assert floor == float(f"{hvp_floors(case, dtype)[('hvp', key)]:.3g}")
        # the stored direction is the documented draw: default_rng(seed), parameter by
        # parameter in the manifest's order
        rng = np.random.default_rng(entry["hvp_direction_seed"])
        for key in entry["parameters"]:
            np.testing.assert_array_equal(stored.direction[key],
                                          rng.standard_normal(stored.params[key].shape))
    assert golden.verify(folder).ok


def _rewrite(folder, path, array):
    """Replace one file's values and re-hash it everywhere (manifest and SHA256SUMS): only
    the recomputation can tell."""
    data_path = folder / path
    np.save(data_path, array)
    digest = hashlib.sha256(data_path.read_bytes()).hexdigest()
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["cases"].values():
        for file_entry in entry["files"]:
            if file_entry["path"] == path:
                file_entry["sha256"], file_entry["bytes"] = digest, data_path.stat().st_size
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    manifest_path.write_text(text)
    lines = []
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        old, name = line.split("  ", 1)
        if name == "manifest.json":
            old = hashlib.sha256(text.encode()).hexdigest()
        elif name == path:
            old = digest
        lines.append(f"{old}  {name}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("role", ["hvp", "direction"])
def test_a_rewritten_and_rehashed_hvp_or_direction_fails_verify_naming_the_file(
        folder, tmp_path, role):
    import shutil
    copy = tmp_path / "g"
    shutil.copytree(folder, copy)
    path = f"tied-hard-lasserre-transposed/{role}.A%3Afc1.weight.npy"
    _rewrite(copy, path, -np.load(copy / path))
    report = golden.verify(copy)
    assert not report.ok
    assert {entry.file for entry in report.failures} == {path}, str(report)
    with pytest.raises(golden.GoldenError, match=role):
        compare_with_golden(_impl("tied-hard-lasserre-transposed"), copy,
                            case="tied-hard-lasserre-transposed")


def test_compare_with_golden_judges_impl_hvp_along_the_stored_direction(folder):
    for name in NAMES:
        [report] = compare_with_golden(_impl(name), folder, case=name)
        assert report.ok, str(report)
        assert [row.label for row in report.rows if row.role == "hvp"] == [
            f"hvp {key!r}" for key in get_case(name).params]
    [report] = compare_with_golden(
        _impl("microbatch-anchored", lambda hv: {k: 2 * v for k, v in hv.items()}), folder,
        case="microbatch-anchored")
    assert report.verdict == "fail"
    assert {row.role for row in report.failures} == {"hvp"}


def test_an_implementation_without_hvp_is_compared_on_its_gradients_only(folder):
    case = get_case("mlp-tanh-ce")
    [report] = compare_with_golden(lambda params, inputs: case.evaluate(params, inputs),
                                   folder, case="mlp-tanh-ce")
    assert report.ok and {row.role for row in report.rows} == {"loss", "gradient", "output"}
