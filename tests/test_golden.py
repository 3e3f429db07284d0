"""Tests for refimpl/testing/golden/: golden folders are reproducible, self-checking, atomic, and
never unpickle anything.

The whole catalogue is written once (``fresh``) and verified once, untouched. The tests that
tamper with a folder and verify it use a folder of a small catalogue (``small``, with
``small_catalogue`` standing in for the catalogue): verify checks every file and every case
against its own recomputation and the catalogue as a list (its order, the cases a folder
lacks), so what it catches in a folder of these cases it catches in a folder of them all. The
slow tier (``-m slow``) flips bytes all over the whole catalogue's folder, and runs the
``refimpl golden`` processes killed at random moments and racing each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_io import read_only_folder

import refimpl.testing.cases.rebuild as rebuild_module
from refimpl.cli import golden as golden_command
from refimpl.nn import MLP, Sequential
from refimpl.testing import DTYPE_TOLERANCES, golden
from refimpl.testing.cases import all_cases, get_case
from refimpl.testing.cases.mlp import model_case
from refimpl.testing.golden import format as golden_format
from refimpl.testing.golden import install as golden_install
from refimpl.testing.golden import verification as golden_verification
from refimpl.testing.golden import writing as golden_writing


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """One golden folder of the whole catalogue for the read-only tests."""
    out = tmp_path_factory.mktemp("golden") / "vectors"
    golden.write(out)
    return out


#: The small catalogue, in the catalogue's order: an MLP (the first case, which the tests name
#: by position), a tied pair (integer labels ya and yb), a convention probe and a step case.
SMALL = ("mlp-tanh-ce", "tied-soft-l2", "probe-relu-at-zero", "probe-steps-clip-eps")
_SMALL_CASES = [case for case in all_cases() if case.name in SMALL]
assert _SMALL_CASES[0].name == all_cases()[0].name and len(_SMALL_CASES) == len(SMALL)

#: Two of the cases cheapest to write and verify, for the writers killed or racing (each
#: writes and verifies a folder dozens of times).
_CHEAP_CASES = [case for case in all_cases()
                if case.name in ("probe-relu-at-zero", "probe-leaky-relu-at-zero")]
assert len(_CHEAP_CASES) == 2


def _use_catalogue(monkeypatch: pytest.MonkeyPatch, cases: list) -> None:
    """Make ``cases`` the catalogue of golden.write, verify, ``refimpl golden`` and of this
    module's tests (they look it up as ``all_cases()``); forked children inherit it."""
    for module in (golden_writing, golden_verification, golden_command, sys.modules[__name__]):
        monkeypatch.setattr(module, "all_cases", lambda: list(cases))


def _use_small_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_catalogue(monkeypatch, _SMALL_CASES)


@pytest.fixture
def small_catalogue(monkeypatch) -> None:
    _use_small_catalogue(monkeypatch)


@pytest.fixture
def cheap_catalogue(monkeypatch) -> None:
    _use_catalogue(monkeypatch, _CHEAP_CASES)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A golden folder of the small catalogue, written as ``refimpl golden`` writes the whole
    one (no --case): a complete folder as far as verify, under ``small_catalogue``, knows."""
    out = tmp_path_factory.mktemp("small") / "vectors"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _use_small_catalogue(monkeypatch)
        golden.write(out)
    return out


@pytest.fixture
def copy(small, small_catalogue, tmp_path) -> Path:
    """A copy of ``small`` to tamper with, its catalogue in place."""
    target = tmp_path / "copy"
    shutil.copytree(small, target)
    return target


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _failures(report: golden.VerifyReport) -> dict[str, list[str]]:
    failed: dict[str, list[str]] = {}
    for entry in report.failures:
        failed.setdefault(entry.file, []).append(entry.message)
    return failed


def _tamper(folder: Path, edit=None) -> None:
    """Apply ``edit(manifest)``, then make every listed file's SHA-256 and size, the manifest
    and SHA256SUMS agree with what is on disk, so that only verify's own checks can tell."""
    manifest_path = folder / golden.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if edit is not None:
        edit(manifest)
    for entry in manifest["cases"].values():
        for file_entry in entry["files"]:
            path = folder / file_entry["path"]
            if path.is_file():
                file_entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                file_entry["bytes"] = path.stat().st_size
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    manifest_path.write_text(text)
    lines = [f"{hashlib.sha256(text.encode()).hexdigest()}  {golden.MANIFEST}"]
    for name in manifest["case_order"]:
        lines += [f"{f['sha256']}  {f['path']}" for f in manifest["cases"][name]["files"]]
    (folder / golden.CHECKSUMS).write_text("\n".join(lines) + "\n")


# --- reproducible, complete, readable ---------------------------------------------------------

def _one_case_per_kind() -> list[str]:
    kinds: dict[str, str] = {}
    for case in all_cases():
        kinds.setdefault(case.kind, case.name)
    return list(kinds.values())


@pytest.fixture(scope="module")
def per_kind(tmp_path_factory) -> Path:
    """A golden folder of one case of each kind."""
    return golden.write(tmp_path_factory.mktemp("per-kind") / "vectors",
                        cases=_one_case_per_kind())


def test_two_runs_give_identical_files_for_a_case_of_each_kind(fresh, per_kind):
    names, second = _one_case_per_kind(), per_kind
    written = _files(second)
    assert {path.split("/")[0] for path in written} >= set(names)
    for path, data in written.items():
        if "/" in path:
            assert data == (fresh / path).read_bytes(), path
    manifest, whole = golden.read_manifest(second), golden.read_manifest(fresh)
    assert {name: manifest["cases"][name] for name in names} == \
        {name: whole["cases"][name] for name in names}


@pytest.mark.slow
def test_two_runs_give_identical_files(fresh, tmp_path):
    second = tmp_path / "second"
    golden.write(second)
    assert (second / "SHA256SUMS").read_bytes() == (fresh / "SHA256SUMS").read_bytes()
    assert _files(second) == _files(fresh)


def test_every_catalogue_case_is_written(fresh):
    manifest = golden.read_manifest(fresh)
    names = [case.name for case in all_cases()]
    assert manifest["case_order"] == names
    assert sorted(manifest["cases"]) == sorted(names)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum missing")
def test_sha256sum_checks_every_file(fresh):
    result = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=fresh,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = {line.split("  ", 1)[1] for line in (fresh / "SHA256SUMS").read_text().splitlines()}
    assert listed == set(_files(fresh)) - {"SHA256SUMS"}


def test_verify_passes_on_a_folder_of_a_case_of_each_kind(per_kind):
    report = golden.verify(per_kind)
    assert report.ok, str(report)
    assert {entry.case for entry in report.entries if entry.case} - set(report.absent) == \
        set(_one_case_per_kind())


@pytest.mark.slow
def test_verify_passes_on_a_fresh_folder(fresh):
    report = golden.verify(fresh)
    assert report.ok, str(report)
    checked = {entry.file for entry in report.entries}
    assert set(_files(fresh)) - {"SHA256SUMS"} <= checked


def test_manifest_describes_every_file(fresh):
    text = (fresh / "manifest.json").read_text()

    def no_constants(name):
        raise AssertionError(f"{name} in the manifest")

    manifest = json.loads(text, parse_constant=no_constants)
    assert manifest["format"] == "refimpl-golden" and manifest["schema_version"] == 3
    generator = manifest["generator"]
    assert generator["numpy"] == np.__version__ and generator["command"].startswith(
        "refimpl golden")
    assert manifest["tolerances"] == {name: {"rtol": t.rtol, "atol": t.atol}
                                      for name, t in DTYPE_TOLERANCES.items()}
    assert json.dumps(manifest, indent=2, sort_keys=True) + "\n" == text   # sorted, stable
    for name, entry in manifest["cases"].items():
        assert entry["tolerances"] == manifest["tolerances"]
        assert entry["conventions"], name
        if entry["kind"] == "steps":         # tests/test_step_cases.py
            continue
        roles = [f["role"] for f in entry["files"]]
        assert roles == sorted(roles, key=golden.ROLES.index), name
        assert roles.count("loss") == 1
        params = [f["name"] for f in entry["files"] if f["role"] == "parameter"]
        grads = [f["name"] for f in entry["files"] if f["role"] == "gradient"]
        assert params == grads == entry["parameters"]
        for role in ("direction", "hvp"):     # every catalogue case stores its H v
            assert [f["name"] for f in entry["files"] if f["role"] == role] == params, name
        for file_entry in entry["files"]:
            path = fresh / file_entry["path"]
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == file_entry["sha256"]
            assert len(data) == file_entry["bytes"]
            assert data[:8] == b"\x93NUMPY\x01\x00"            # NPY format 1.0
            header = data[10:10 + int.from_bytes(data[8:10], "little")].decode("latin1")
            assert f"'descr': '{file_entry['dtype']}'" in header
            assert "'fortran_order': False" in header
            array = np.load(path, allow_pickle=False)
            assert array.dtype.str in ("<f8", "<i8")
            assert list(array.shape) == file_entry["shape"]
            if file_entry["role"] == "loss":
                assert float.fromhex(file_entry["hex"]) == float(array)
                assert float.fromhex(entry["loss"]["hex"]) == float(array) \
                    == entry["loss"]["value"]


def test_golden_arrays_are_the_catalogue_arrays(fresh):
    for case in all_cases():
        if case.kind == "steps":             # tests/test_step_cases.py
            continue
        stored = golden.load_case(fresh, case.name)
        loss, grads = case.loss_and_grads(case.params)
        assert stored.loss == loss
        for name in case.params:
            np.testing.assert_array_equal(stored.params[name], case.params[name])
            np.testing.assert_array_equal(stored.grads[name], grads[name])
        for name, value in case.inputs.items():
            np.testing.assert_array_equal(stored.inputs[name], value)
            assert stored.inputs[name].dtype == (np.int64 if value.dtype.kind in "iu"
                                                 else np.float64)
        for name, value in case.outputs(case.params).items():
            np.testing.assert_array_equal(stored.outputs[name], value)


def test_model_configuration_rebuilds_the_model(fresh):
    """The manifest's configuration is enough to rebuild every single-model case."""
    manifest = golden.read_manifest(fresh)
    rebuilt = 0
    for name, entry in manifest["cases"].items():
        config = entry["config"]
        if "model" not in config or "layers" not in config["model"] or entry["kind"] == "steps":
            continue
        model = Sequential.from_config(config["model"])
        data = golden.load_case(fresh, name)
        np.testing.assert_array_equal(model.forward(data.params, data.inputs["x"]),
                                      data.outputs["out"])
        rebuilt += 1
    assert rebuilt > 0


def test_file_names_are_safe_and_distinct():
    assert golden_format._file_name("parameter", "A:fc1.weight") == "parameter.A%3Afc1.weight.npy"
    assert golden_format._file_name("input", "w0:fc1.weight") == "input.w0%3Afc1.weight.npy"
    assert golden_format._file_name("loss", "loss") == "loss.npy"
    assert golden_format._file_name("gradient", "a/b") == "gradient.a%2Fb.npy"


# --- verify fails, naming the file ------------------------------------------------------------

def _flip_a_byte_and_verify(template: Path, folder: Path, data: st.DataObject) -> None:
    """Copy ``template`` to ``folder``, flip a drawn byte of a drawn file: verify fails
    naming that file."""
    shutil.copytree(template, folder)
    files = sorted(_files(folder))
    relative = data.draw(st.sampled_from(files), label="file")
    path = folder / relative
    content = bytearray(path.read_bytes())
    offset = data.draw(st.integers(0, len(content) - 1), label="offset")
    content[offset] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(content))
    report = golden.verify(folder)
    assert not report.ok
    assert relative in _failures(report), str(report)


@settings(max_examples=20)
@given(data=st.data())
def test_any_flipped_byte_fails_naming_the_file(small, tmp_path_factory, data):
    with pytest.MonkeyPatch.context() as monkeypatch:
        _use_small_catalogue(monkeypatch)
        _flip_a_byte_and_verify(small, tmp_path_factory.mktemp("flip") / "g", data)


@pytest.mark.slow
@settings(max_examples=20)      # each verifies the whole catalogue (seconds)
@given(data=st.data())
def test_any_flipped_byte_of_the_whole_catalogue_fails_naming_the_file(fresh, tmp_path_factory,
                                                                       data):
    _flip_a_byte_and_verify(fresh, tmp_path_factory.mktemp("flip") / "g", data)


def test_flipped_data_byte_is_reported_as_a_changed_file(copy):
    relative = next(p for p in _files(copy) if p.endswith("gradient.fc1.weight.npy"))
    content = bytearray((copy / relative).read_bytes())
    content[-3] ^= 0x10
    (copy / relative).write_bytes(bytes(content))
    report = golden.verify(copy)
    messages = _failures(report)[relative]
    assert any("SHA-256" in m and "the file changed" in m for m in messages)
    assert "FAIL" in str(report) and relative in str(report)


@pytest.mark.parametrize("which", ["npy", "manifest.json", "SHA256SUMS"])
def test_missing_file_fails_naming_it(copy, which):
    relative = which if which != "npy" else sorted(p for p in _files(copy)
                                                   if p.endswith(".npy"))[0]
    (copy / relative).unlink()
    failed = _failures(golden.verify(copy))
    assert relative in failed
    assert any("missing" in m for m in failed[relative])


def test_unparsable_manifest_fails_naming_it(copy):
    (copy / "manifest.json").write_text('{"format": "refimpl-golden", ')
    failed = _failures(golden.verify(copy))
    assert list(failed) == ["manifest.json"]
    assert "does not parse as JSON" in failed["manifest.json"][0]


def test_manifest_with_nan_is_refused(copy):
    text = (copy / "manifest.json").read_text().replace(
        f'"schema_version": {golden.SCHEMA_VERSION}', '"schema_version": NaN')
    (copy / "manifest.json").write_text(text)
    failed = _failures(golden.verify(copy))
    assert "NaN" in failed["manifest.json"][0]


def test_extra_file_fails_naming_it(copy):
    case = all_cases()[0].name
    (copy / case / "stray.npy").write_bytes(b"")
    assert f"{case}/stray.npy" in _failures(golden.verify(copy))


def test_changed_values_with_consistent_hashes_fail_by_recomputation(copy):
    """A value changed *and* re-hashed everywhere is still caught: verify recomputes."""
    case = all_cases()[0]
    relative = f"{case.name}/gradient.{next(iter(case.params))}.npy"
    array = np.load(copy / relative)
    array.reshape(-1)[0] *= 1 + 1e-6
    np.save(copy / relative, array, allow_pickle=False)
    _tamper(copy)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative]
    assert "recomputed values differ" in failed[relative][0]


def test_unsafe_path_in_manifest_is_refused(copy):
    case = all_cases()[0].name
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["cases"][case]["files"][0]["path"] = "../outside.npy"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = golden.verify(copy)
    assert any("unsafe path" in entry.message for entry in report.failures)


def test_unknown_case_in_manifest_fails(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    name = manifest["case_order"][0]
    manifest["cases"]["no-such-case"] = manifest["cases"].pop(name)
    manifest["case_order"][0] = "no-such-case"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = golden.verify(copy)
    assert any(entry.case == "no-such-case" and "cannot be verified" in entry.message
               for entry in report.failures)


def test_subset_folder_verifies_and_reports_the_rest(tmp_path):
    name = all_cases()[-1].name
    out = golden.write(tmp_path / "one", cases=[name])
    manifest = golden.read_manifest(out)
    assert list(manifest["cases"]) == [name]
    assert manifest["generator"]["command"].endswith(f"--case {name}")
    report = golden.verify(out)
    assert report.ok, str(report)
    assert any("not in this golden folder" in e.message for e in report.entries) == \
        (len(all_cases()) > 1)
    with pytest.raises(ValueError, match="unknown case"):
        golden.write(tmp_path / "two", cases=["no-such-case"])


# --- pickles are never loaded ---------------------------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: the visible side effect a pickle could have."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickled_npy(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_pickled_npy_is_refused_without_being_loaded(copy, tmp_path):
    marker = tmp_path / "unpickled"
    case = all_cases()[0]
    relative = f"{case.name}/gradient.{next(iter(case.params))}.npy"
    (copy / relative).write_bytes(_pickled_npy(marker))
    _tamper(copy)      # hashes agree: only the header check stands in the way

    report = golden.verify(copy)
    failed = _failures(report)
    assert relative in failed and "never loaded" in failed[relative][0], str(report)
    with pytest.raises(golden.GoldenError, match="object arrays would need pickle"):
        golden.load_npy(copy / relative)
    with pytest.raises(golden.GoldenError, match="never loaded"):
        golden.load_case(copy, case.name)
    assert not marker.exists()

    # The control: the same file *does* run its payload when loaded with pickle allowed,
    # so the assertions above are meaningful.
    np.load(copy / relative, allow_pickle=True)
    assert marker.exists()


def test_load_npy_checks_the_header_against_the_manifest(fresh, tmp_path):
    entry = golden.read_manifest(fresh)["cases"][all_cases()[0].name]["files"][0]
    path = fresh / entry["path"]
    assert golden.load_npy(path, entry["dtype"], entry["shape"]).shape == tuple(entry["shape"])
    with pytest.raises(golden.GoldenError, match="the manifest says"):
        golden.load_npy(path, "<i8" if entry["dtype"] == "<f8" else "<f8")
    with pytest.raises(golden.GoldenError, match="shape"):
        golden.load_npy(path, shape=[*entry["shape"], 1])
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(np.ones((2, 3))))
    with pytest.raises(golden.GoldenError, match="Fortran"):
        golden.load_npy(fortran)
    big_endian = tmp_path / "be.npy"
    np.save(big_endian, np.ones(3, dtype=">f8"))
    with pytest.raises(golden.GoldenError, match="refused"):
        golden.load_npy(big_endian)
    garbage = tmp_path / "g.npy"
    garbage.write_bytes(b"not an npy file at all")
    with pytest.raises(golden.GoldenError, match="not a valid .npy"):
        golden.load_npy(garbage)


# --- atomic writes, nothing lost ------------------------------------------------------------

def test_existing_nonempty_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        golden.write(out)
    status = golden_command.run_golden(argparse.Namespace(out=str(out), force=False, case=None))
    assert status == 2 and "--force" in capsys.readouterr().err
    assert _files(out) == {"keep.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no temporary left


def test_force_refuses_a_folder_that_is_not_golden(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(golden.GoldenError, match="not, so it was left alone"):
        golden.write(out, force=True)
    assert _files(out) == {"keep.txt": b"mine"}


def test_force_replaces_a_golden_folder(copy):
    (copy / "stray.txt").write_text("old")
    golden.write(copy, force=True)
    assert "stray.txt" not in _files(copy)
    assert golden.verify(copy).ok
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy"]


def test_failed_forced_write_keeps_the_old_folder(copy, monkeypatch):
    (copy / "stray.txt").write_text("old")
    before = _files(copy)
    calls = []

    def failing(case, folder):
        calls.append(case.name)
        if len(calls) > 1:
            raise RuntimeError("disk full")
        return original(case, folder)

    original = golden_writing._write_case
    monkeypatch.setattr(golden_writing, "_write_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        golden.write(copy, force=True)
    assert _files(copy) == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy"]


def test_empty_folder_is_used_and_file_is_refused(tmp_path, small_catalogue):
    empty = tmp_path / "empty"
    empty.mkdir()
    golden.write(empty)
    assert golden.verify(empty).ok
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(golden.GoldenError, match="not a folder"):
        golden.write(a_file)


def test_verify_of_a_missing_folder_fails(tmp_path):
    report = golden.verify(tmp_path / "nothing")
    assert not report.ok and "not a folder" in str(report)


# --- command line ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refimpl")
    commands = parser.add_subparsers(dest="command", required=True)
    golden_command.add_golden_arguments(commands.add_parser("golden"))
    golden_command.add_verify_arguments(commands.add_parser("verify"))
    return parser


def test_command_line_golden_and_verify(tmp_path, capsys, small_catalogue):
    out = tmp_path / "cli"
    args = _parser().parse_args(["golden", "--out", str(out)])
    assert golden_command.run_golden(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert golden_command.run_verify(_parser().parse_args(["verify", str(out)])) == 0
    assert "OK" in capsys.readouterr().out
    (out / "manifest.json").write_text("[")
    assert golden_command.run_verify(_parser().parse_args(["verify", "--quiet", str(out)])) == 1
    output = capsys.readouterr().out
    assert "FAIL  manifest.json" in output and "FAILED" in output
    args = _parser().parse_args(["golden", "--out", str(out), "--force"])
    assert args.force


# --- tampering that re-hashes everything consistently (as an attacker would) -------------------

def _case_entry(manifest, case_name):
    return manifest["cases"][case_name]


def _first_case_with(folder: Path, file_name: str) -> str:
    manifest = golden.read_manifest(folder)
    return next(name for name in manifest["case_order"]
                if (folder / name / file_name).is_file())


def test_tampering_helper_alone_keeps_the_folder_valid(copy):
    """The control for every test below: re-hashing an untouched folder changes nothing."""
    _tamper(copy)
    assert golden.verify(copy).ok


@pytest.mark.parametrize("file_name", ["input.y.npy", "input.ya.npy", "input.yb.npy"])
def test_changed_labels_with_consistent_hashes_fail_naming_the_file(copy, file_name):
    case = _first_case_with(copy, file_name)
    relative = f"{case}/{file_name}"
    labels = np.load(copy / relative)
    assert labels.dtype == np.int64
    labels[0] = labels[0] + 1
    np.save(copy / relative, labels, allow_pickle=False)
    _tamper(copy)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed
    assert "integer values differ" in failed[relative][0]


@pytest.mark.parametrize("role", golden.ROLES)
def test_a_removed_tensor_fails_naming_it(copy, role):
    case = all_cases()[0].name

    def remove(manifest):
        files = _case_entry(manifest, case)["files"]
        removed = next(f for f in files if f["role"] == role)
        files.remove(removed)
        (copy / removed["path"]).unlink()
        names.append(removed["path"])

    names: list[str] = []
    _tamper(copy, remove)
    failed = _failures(golden.verify(copy))
    assert names[0] in failed, failed
    assert any("the manifest lists no file" in m for m in failed[names[0]])


def test_a_removed_case_fails_naming_it(copy):
    name = all_cases()[1].name

    def remove(manifest):
        del manifest["cases"][name]
        manifest["case_order"].remove(name)
        shutil.rmtree(copy / name)

    _tamper(copy, remove)
    report = golden.verify(copy)
    failed = _failures(report)
    assert list(failed) == [f"{name}/"], failed
    assert "missing" in failed[f"{name}/"][0]


def test_a_declared_subset_passes_but_lists_what_it_lacks(copy):
    """--case folders are legitimate; verify says which catalogue cases they do not hold."""
    names = [case.name for case in all_cases()]
    kept = names[:2]

    def keep_two(manifest):
        for name in names[2:]:
            del manifest["cases"][name]
            shutil.rmtree(copy / name)
        manifest["case_order"] = kept
        manifest["generator"]["command"] += "".join(f" --case {name}" for name in kept)

    _tamper(copy, keep_two)
    report = golden.verify(copy)
    assert report.ok, str(report)
    lacking = {e.case for e in report.entries if "not in this golden folder" in e.message}
    assert lacking == set(names[2:]) == set(report.absent)
    assert str(report).splitlines()[-1].endswith(
        f"OK - 2 cases, {len(report.entries)} checks, 0 failed; a --case subset: "
        f"{len(names) - 2} catalogue cases not in it")


def _loss_edits():
    def case_hex(entry):
        entry["loss"]["hex"] = (entry["loss"]["value"] * 2).hex()

    def case_value(entry):
        entry["loss"]["value"] *= 2

    def file_hex(entry):
        loss = next(f for f in entry["files"] if f["role"] == "loss")
        loss["hex"] = (loss["value"] * 2).hex()

    def file_value(entry):
        loss = next(f for f in entry["files"] if f["role"] == "loss")
        loss["value"] *= 2

    def file_hex_removed(entry):
        del next(f for f in entry["files"] if f["role"] == "loss")["hex"]

    return [case_hex, case_value, file_hex, file_value, file_hex_removed]


@pytest.mark.parametrize("edit", _loss_edits(), ids=lambda edit: edit.__name__)
def test_an_edited_loss_in_the_manifest_fails_naming_the_file(copy, edit):
    case = all_cases()[0].name
    _tamper(copy, lambda manifest: edit(_case_entry(manifest, case)))
    failed = _failures(golden.verify(copy))
    assert set(failed) & {golden.MANIFEST, f"{case}/loss.npy"}, failed
    assert all(path in (golden.MANIFEST, f"{case}/loss.npy") for path in failed), failed


def test_a_consistently_changed_dtype_fails_naming_the_file(copy):
    case = _first_case_with(copy, "input.y.npy")
    relative = f"{case}/input.y.npy"
    np.save(copy / relative, np.load(copy / relative).astype(np.float64), allow_pickle=False)

    def retype(manifest):
        next(f for f in _case_entry(manifest, case)["files"]
             if f["path"] == relative)["dtype"] = "<f8"

    _tamper(copy, retype)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed
    assert any("dtype" in m for m in failed[relative])


def test_a_consistently_changed_shape_fails_naming_the_file(copy):
    case = all_cases()[0].name
    relative = f"{case}/input.x.npy"
    flat = np.load(copy / relative).reshape(-1)
    np.save(copy / relative, flat, allow_pickle=False)

    def reshape(manifest):
        next(f for f in _case_entry(manifest, case)["files"]
             if f["path"] == relative)["shape"] = list(flat.shape)

    _tamper(copy, reshape)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed
    assert any("shape" in m for m in failed[relative])


def _manifest_edits():
    first = all_cases()[0].name

    def loosened_tolerances(manifest):
        manifest["tolerances"]["float64"]["rtol"] = 1.0

    def case_tolerances(manifest):
        manifest["cases"][first]["tolerances"]["float64"]["atol"] = 1.0

    def comparison_rule(manifest):
        manifest["comparison_rule"] = "pass iff anything"

    def conventions(manifest):
        manifest["conventions"]["dense"] = "weight (in, out)"

    def case_conventions(manifest):
        manifest["cases"][first]["conventions"] = {}

    def npy(manifest):
        manifest["npy"]["pickle"] = True

    def command(manifest):
        manifest["generator"]["command"] = "something else"

    def kind(manifest):
        manifest["cases"][first]["kind"] = "cnn"

    def seed(manifest):
        manifest["cases"][first]["seed"] = 12345

    def config(manifest):
        manifest["cases"][first]["config"]["seed"] = 12345

    def parameter_list(manifest):
        manifest["cases"][first]["parameters"].reverse()

    def case_order(manifest):
        manifest["case_order"].reverse()

    def extra_field(manifest):
        manifest["note"] = "trust me"

    def extra_case_field(manifest):
        manifest["cases"][first]["rtol"] = 1.0

    def file_order(manifest):
        manifest["cases"][first]["files"].reverse()

    def probe_convention(manifest):
        manifest["cases"][PROBE]["convention"]["refimpl_rule"] = "relu'(0) = 1"

    def probe_convention_in_config(manifest):
        manifest["cases"][PROBE]["config"]["convention"]["name"] = "relu'(0) = 1"

    def convention_of_a_non_probe(manifest):
        manifest["cases"][first]["convention"] = {"name": "anything"}

    def input_role(manifest):
        manifest["cases"][first]["inputs"]["y"]["role"] = "targets"

    def input_shape(manifest):
        manifest["cases"][first]["inputs"]["x"]["shape"][0] += 1

    def input_description_in_config(manifest):
        manifest["cases"][first]["config"]["inputs"]["x"]["dtype"] = "float32"

    return [loosened_tolerances, case_tolerances, comparison_rule, conventions,
            case_conventions, npy, command, kind, seed, config, parameter_list, case_order,
            extra_field, extra_case_field, file_order, probe_convention,
            probe_convention_in_config, convention_of_a_non_probe, input_role, input_shape,
            input_description_in_config]


@pytest.mark.parametrize("edit", _manifest_edits(), ids=lambda edit: edit.__name__)
def test_an_edited_manifest_field_fails_on_the_manifest(copy, edit):
    _tamper(copy, edit)
    report = golden.verify(copy)
    failed = _failures(report)
    assert golden.MANIFEST in failed, str(report)


PROBE = "probe-relu-at-zero"


def test_the_manifest_records_each_probe_convention_and_describes_inputs(fresh):
    manifest = golden.read_manifest(fresh)
    probes = [case for case in all_cases() if case.kind == "probe"]
    assert len(probes) == 14
    for case in all_cases():
        entry = manifest["cases"][case.name]
        assert entry["convention"] == case.config.get("convention")
        assert (entry["convention"] is not None) == ("convention" in case.config)
        assert entry["inputs"] == case.config["inputs"]
        assert sorted(entry["inputs"]) == sorted(case.inputs)    # the manifest's keys sort
        for name, value in case.inputs.items():
            assert entry["inputs"][name]["shape"] == list(value.shape)
            assert entry["inputs"][name]["dtype"] == str(value.dtype)
    assert manifest["cases"]["tied-soft-lasserre"]["inputs"]["xb"]["role"] == \
        "features and targets"
    assert manifest["cases"]["tied-anchored-l2sp"]["inputs"]["w0:fc1.weight"]["role"] == \
        "reference weights"


# --- cases outside the catalogue (drawn cases) ------------------------------------------------

def _drawn(seed: int):
    return model_case(f"handmade-test-{seed}", "mlp", MLP([3, 4, 2], activation="tanh"), (3,), 4,
                      seed)


def test_a_case_outside_the_catalogue_is_written_and_never_verified_unchecked(tmp_path):
    out = golden.write(tmp_path / "drawn", cases=[_drawn(7), "mlp-tanh-ce"])
    manifest = golden.read_manifest(out)
    assert manifest["case_order"] == ["mlp-tanh-ce", "handmade-test-7"]
    assert manifest["cases"]["handmade-test-7"]["seed"] == 7
    data = golden.load_case(out, "handmade-test-7")
    assert np.array_equal(data.inputs["x"], _drawn(7).inputs["x"])
    report = golden.verify(out)
    assert not report.ok
    assert [(entry.case, entry.message) for entry in report.failures] == [
        ("handmade-test-7", golden_verification.NOT_REBUILT)]


def test_a_registered_rebuilder_verifies_a_drawn_case_and_catches_tampering(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setitem(rebuild_module.REBUILDERS, "handmade-test-", _drawn)
    out = golden.write(tmp_path / "drawn", cases=[_drawn(7)])
    assert golden.verify(out).ok

    def other_seed(manifest):
        manifest["cases"]["handmade-test-7"]["config"]["seed"] = 8
    _tamper(out, other_seed)
    report = golden.verify(out)
    assert not report.ok and any(entry.case == "handmade-test-7" for entry in report.failures)


def test_a_drawn_case_whose_seed_rebuilds_another_case_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(rebuild_module.REBUILDERS, "handmade-test-", lambda seed: _drawn(seed + 1))
    out = golden.write(tmp_path / "drawn", cases=[_drawn(7)])
    report = golden.verify(out)
    assert any(entry.case == "handmade-test-7" and "rebuilds a case called 'handmade-test-8'"
               in entry.message for entry in report.failures)


def test_a_changed_catalogue_case_written_as_an_object_fails_verify(tmp_path):
    case = get_case("mlp-tanh-ce")
    changed = dataclasses.replace(case, params={k: v + 1.0 for k, v in case.params.items()})
    out = golden.write(tmp_path / "changed", cases=[changed])
    failed = _failures(golden.verify(out))
    assert any(path.startswith("mlp-tanh-ce/parameter.") for path in failed)


def test_write_refuses_what_is_not_a_case_and_a_case_given_twice(tmp_path):
    with pytest.raises(TypeError, match="cases: expected case names or"):
        golden.write(tmp_path / "a", cases=[3])
    with pytest.raises(ValueError, match="'handmade-test-7' is given twice"):
        golden.write(tmp_path / "b", cases=[_drawn(7), _drawn(7)])
    with pytest.raises(ValueError, match="'mlp-tanh-ce' is given twice"):
        golden.write(tmp_path / "c", cases=["mlp-tanh-ce", get_case("mlp-tanh-ce")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bytes_after_the_data_fail_naming_the_file(copy):
    relative = f"{all_cases()[0].name}/input.y.npy"
    (copy / relative).write_bytes((copy / relative).read_bytes() + b"\0" * 8)
    _tamper(copy)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed
    assert any("not the NPY 1.0 bytes refimpl writes" in m for m in failed[relative])


def test_a_rewritten_header_fails_naming_the_file(copy):
    relative = f"{all_cases()[0].name}/gradient.{next(iter(all_cases()[0].params))}.npy"
    array = np.load(copy / relative)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(2, 0), allow_pickle=False)
    (copy / relative).write_bytes(buffer.getvalue())
    _tamper(copy)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed


def test_a_sha256sums_line_listed_twice_fails(copy):
    sums = copy / golden.CHECKSUMS
    lines = sums.read_text().splitlines()
    sums.write_text("\n".join(lines + [lines[1]]) + "\n")
    failed = _failures(golden.verify(copy))
    assert list(failed) == [golden.CHECKSUMS]
    assert "a second time" in failed[golden.CHECKSUMS][0]


# --- a golden folder is a plain tree: no symbolic links ---------------------------------------

def test_a_symlinked_npy_file_is_refused_naming_it(copy, tmp_path):
    relative = f"{all_cases()[0].name}/input.x.npy"
    outside = tmp_path / "elsewhere.npy"
    shutil.copy(copy / relative, outside)
    (copy / relative).unlink()
    (copy / relative).symlink_to(outside)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed
    assert all("symbolic link" in m for m in failed[relative])
    with pytest.raises(golden.GoldenError, match="symbolic link"):
        golden.load_case(copy, all_cases()[0].name)
    with pytest.raises(golden.GoldenError, match="symbolic link"):
        golden.load_npy(copy / relative)


def test_a_symlinked_case_folder_is_refused_naming_it(copy, tmp_path):
    name = all_cases()[0].name
    outside = tmp_path / "elsewhere"
    shutil.copytree(copy / name, outside)
    shutil.rmtree(copy / name)
    (copy / name).symlink_to(outside, target_is_directory=True)
    report = golden.verify(copy)
    failed = _failures(report)
    assert name in failed and "symbolic link" in failed[name][0], str(report)
    assert all(path == name or path.startswith(f"{name}/") for path in failed)
    with pytest.raises(golden.GoldenError, match=f"{name}: a symbolic link"):
        golden.load_case(copy, name)


def test_a_symlinked_manifest_is_refused(copy, tmp_path):
    outside = tmp_path / "manifest.json"
    shutil.copy(copy / golden.MANIFEST, outside)
    (copy / golden.MANIFEST).unlink()
    (copy / golden.MANIFEST).symlink_to(outside)
    failed = _failures(golden.verify(copy))
    assert "symbolic link" in failed[golden.MANIFEST][0]
    with pytest.raises(golden.GoldenError, match="symbolic link"):
        golden.read_manifest(copy)


def test_a_fifo_under_a_golden_name_is_refused_without_hanging(copy):
    relative = f"{all_cases()[0].name}/input.x.npy"
    (copy / relative).unlink()
    os.mkfifo(copy / relative)
    failed = _failures(golden.verify(copy))
    assert relative in failed


# --- interrupted and concurrent writers: all or nothing, nothing left behind ------------------

ROOT = Path(__file__).resolve().parent.parent
CRASHED = 77


def _names(folder: Path) -> list[str]:
    return golden.read_manifest(folder)["case_order"]


def _assert_whole(out: Path, allowed: list[list[str]]) -> None:
    """``out`` is a complete golden folder holding one of the ``allowed`` case lists."""
    report = golden.verify(out)
    assert report.ok, str(report)
    assert _names(out) in allowed


def _write_and_crash_after(step: int, out: Path, cases: list[str], force: bool,
                           exchange: bool) -> int:
    """Run golden.write in a forked child that dies (os._exit, no clean-up, as SIGKILL) right
    after the ``step``-th file-system step; return the child's exit status."""
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        try:
            count = [0]
            if not exchange:
                golden_install._exchange = lambda first, second: False
            for module, name in ((tempfile, "mkdtemp"), (os, "fsync"), (os, "rename"),
                                 (golden_install, "_exchange"), (shutil, "rmtree")):
                original = getattr(module, name)

                def crashing(*args, _original=original, **kwargs):
                    result = _original(*args, **kwargs)
                    count[0] += 1
                    if count[0] == step:
                        os._exit(CRASHED)
                    return result

                setattr(module, name, crashing)
            golden.write(out, force=force, cases=cases)
            os._exit(0)
        except BaseException:   # noqa: BLE001 - any exception is a failure of the child
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("scenario", ["fresh", "replace-exchange", "replace-two-renames"])
def test_a_writer_killed_after_any_step_leaves_a_whole_folder(tmp_path, scenario,
                                                              cheap_catalogue):
    names = [case.name for case in all_cases()]
    old_cases, new_cases = [names[0]], [names[1]]
    exchange = scenario != "replace-two-renames"
    if exchange and scenario != "fresh" and not golden_install._exchange(tmp_path, tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    template = golden.write(tmp_path / "old", cases=old_cases)
    crashes = 0
    for step in range(1, 200):
        case_root = tmp_path / f"step{step}"
        case_root.mkdir()
        out = case_root / "X"
        if scenario != "fresh":
            shutil.copytree(template, out)
        status = _write_and_crash_after(step, out, new_cases, force=scenario != "fresh",
                                        exchange=exchange)
        if status == 0:
            _assert_whole(out, [new_cases])
            assert os.listdir(case_root) == ["X"]
            break
        assert status == CRASHED
        crashes += 1
        allowed = [new_cases] if scenario == "fresh" else [old_cases, new_cases]
        if out.exists():
            _assert_whole(out, allowed)
        elif scenario != "fresh":
            # Only between the two renames: verify names the copy set aside, and the next
            # writer puts it back before anything else.
            assert scenario == "replace-two-renames"
            assert ".X.old-" in str(golden.verify(out))
            with pytest.raises(FileExistsError):
                golden.write(out, cases=new_cases)
            _assert_whole(out, [old_cases])
        golden.write(out, force=True, cases=new_cases)
        _assert_whole(out, [new_cases])
        assert os.listdir(case_root) == ["X"], os.listdir(case_root)
    else:
        pytest.fail("the write never completed")
    assert crashes >= 5   # mkdtemp, the files' fsyncs, the switch, the clean-up


def test_leftovers_of_dead_writers_are_removed_and_others_kept(tmp_path, cheap_catalogue):
    out = tmp_path / "X"
    golden.write(out, cases=[all_cases()[0].name])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    leftovers = [f".X.tmp-{dead}-a1b2", f".X.tmp-{dead}-c3d4", f".X.old-{dead}-e5f6"]
    kept = [".Y.tmp-123-abc", ".X.tmp-notapid", "X.tmp-1-abc", "unrelated"]
    for name in leftovers + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("partial")
    golden.write(out, force=True, cases=[all_cases()[1].name])
    assert sorted(os.listdir(tmp_path)) == sorted(["X"] + kept)
    _assert_whole(out, [[all_cases()[1].name]])


def test_an_old_copy_set_aside_is_restored_when_the_folder_is_missing(tmp_path,
                                                                       cheap_catalogue):
    name = all_cases()[0].name
    out = tmp_path / "X"
    golden.write(out, cases=[name])
    aside = tmp_path / ".X.old-999999999-abcd"   # a pid no process has
    os.rename(out, aside)
    report = golden.verify(out)
    assert not report.ok and ".X.old-999999999-abcd" in str(report)
    with pytest.raises(FileExistsError):
        golden.write(out)
    assert os.listdir(tmp_path) == ["X"]
    _assert_whole(out, [[name]])


def test_the_exchange_swaps_two_folders(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "one").write_text("1")
    (second / "two").write_text("2")
    if not golden_install._exchange(first, second):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert os.listdir(first) == ["two"] and os.listdir(second) == ["one"]


@pytest.mark.parametrize("exchange", [True, False])
def test_force_replaces_with_or_without_the_exchange(copy, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(golden_install, "_exchange", lambda first, second: False)
    name = all_cases()[0].name
    golden.write(copy, force=True, cases=[name])
    _assert_whole(copy, [[name]])
    assert os.listdir(copy.parent) == ["copy"]


def _golden_process(out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "refimpl", "golden", "--out", str(out),
                             *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_writers_killed_at_random_moments_leave_a_whole_folder(tmp_path):
    generator = random.Random(20261129)
    names = [case.name for case in all_cases()]
    out = tmp_path / "X"
    golden.write(out, cases=[names[0]])
    for _ in range(5):
        process = _golden_process(out, "--force")
        try:
            process.wait(timeout=generator.uniform(0.2, 0.9))
        except subprocess.TimeoutExpired:
            process.kill()
        process.communicate(timeout=60)
        _assert_whole(out, [[names[0]], names])
    golden.write(out, force=True)
    _assert_whole(out, [names])
    assert os.listdir(tmp_path) == ["X"]


def _forked_writers(out: Path, name: str, force: bool, count: int = 3) -> list[tuple[int, str]]:
    """``count`` forked children run ``refimpl golden --out out --case name`` (the command's
    own run_golden), all released at the same moment; their exit statuses and stderr."""
    release_read, release_write = os.pipe()
    children = []
    for _ in range(count):
        err_read, err_write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: never returns into pytest
            status = 1
            try:
                os.close(release_write)
                os.close(err_read)
                sys.stderr = os.fdopen(err_write, "w")
                os.read(release_read, 1)          # wait until every writer is forked
                status = golden_command.run_golden(
                    argparse.Namespace(out=str(out), force=force, case=[name]))
            except BaseException:   # noqa: BLE001 - shown to the test as a traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)
        os.close(err_write)
        children.append((pid, err_read))
    os.close(release_read)
    os.write(release_write, b"x" * count)
    os.close(release_write)
    results = []
    for pid, err_read in children:
        with os.fdopen(err_read) as err:
            text = err.read()
        _, status = os.waitpid(pid, 0)
        results.append((os.waitstatus_to_exitcode(status), text))
    return results


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("force", [False, True])
def test_concurrent_forked_writers_of_a_fresh_folder(tmp_path, force, cheap_catalogue):
    """The race of test_concurrent_writers_of_a_fresh_folder (slow tier: whole processes)
    between forked writers released at once: one writer wins a fresh folder, the others say
    it exists (or all replace it with --force), and the folder is whole."""
    name = all_cases()[0].name
    for attempt in range(3):
        out = tmp_path / f"X{attempt}"
        results = _forked_writers(out, name, force)
        for _, err_text in results:
            assert "Traceback" not in err_text, err_text
        statuses = sorted(status for status, _ in results)
        if force:
            assert statuses == [0, 0, 0], results
        else:
            assert statuses == [0, 2, 2], results
            for status, err_text in results:
                if status == 2:
                    assert len(err_text.splitlines()) == 1
                    assert "exists and is not empty" in err_text
        _assert_whole(out, [[name]])
    assert sorted(os.listdir(tmp_path)) == ["X0", "X1", "X2"]


@pytest.mark.slow
@pytest.mark.parametrize("force", [False, True])
def test_concurrent_writers_of_a_fresh_folder(tmp_path, force):
    name = all_cases()[0].name
    for attempt in range(3):
        out = tmp_path / f"X{attempt}"
        processes = [_golden_process(out, "--case", name, *(["--force"] if force else []))
                     for _ in range(3)]
        results = [(process.wait(timeout=120), *process.communicate()) for process in processes]
        for _, out_text, err_text in results:
            assert "Traceback" not in out_text + err_text, err_text
        statuses = sorted(status for status, _, _ in results)
        if force:
            assert statuses == [0, 0, 0], results
        else:
            assert statuses == [0, 2, 2], results
            for status, _, err_text in results:
                if status == 2:
                    assert len(err_text.splitlines()) == 1
                    assert "exists and is not empty" in err_text
        _assert_whole(out, [[name]])
    assert sorted(os.listdir(tmp_path)) == ["X0", "X1", "X2"]


@pytest.mark.parametrize("target, number", [
    ("mkdtemp", errno.EACCES), ("mkdtemp", errno.EROFS), ("fsync", errno.ENOSPC),
    ("rename", errno.EROFS), ("exchange", errno.EACCES),
])
def test_golden_on_a_refusing_file_system_is_one_line_naming_out(copy, monkeypatch, capsys,
                                                                 target, number):
    before = _files(copy)

    def refuse(*args, **kwargs):
        raise OSError(number, os.strerror(number), str(args[0]) if args else None)

    module, name = {"mkdtemp": (tempfile, "mkdtemp"), "fsync": (os, "fsync"),
                    "rename": (os, "rename"), "exchange": (golden_install, "_exchange")}[target]
    if target == "rename":
        monkeypatch.setattr(golden_install, "_exchange", lambda first, second: False)
    monkeypatch.setattr(module, name, refuse)
    args = argparse.Namespace(out=str(copy), force=True, case=[all_cases()[0].name])
    assert golden_command.run_golden(args) == 1
    captured = capsys.readouterr()
    assert captured.err == f"refimpl golden: --out {copy}: {os.strerror(number)}\n"
    assert _files(copy) == before
    assert os.listdir(copy.parent) == ["copy"]


def test_golden_into_a_path_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "X"
    assert golden_command.run_golden(argparse.Namespace(out=str(out), force=False, case=None)) == 1
    assert capsys.readouterr().err == f"refimpl golden: --out {out}: Not a directory\n"


def test_out_may_not_be_the_current_folder(tmp_path, monkeypatch):
    inside = tmp_path / "X" / "sub"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    for out in (".", "..", str(tmp_path / "X")):
        with pytest.raises(golden.GoldenError, match="is the current folder or contains it"):
            golden.write(out, force=True)
    assert os.listdir(tmp_path / "X") == ["sub"]


def test_sha256sums_lines_out_of_order_fail(copy):
    sums = copy / golden.CHECKSUMS
    lines = sums.read_text().splitlines()
    sums.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    failed = _failures(golden.verify(copy))
    assert list(failed) == [golden.CHECKSUMS]
    assert "not the text refimpl writes" in failed[golden.CHECKSUMS][0]


def test_a_consistently_renamed_file_fails_naming_it(copy):
    """The manifest's path of every tensor is the one refimpl writes, not any file that
    happens to hold the right values."""
    case = all_cases()[0].name
    relative, renamed = f"{case}/input.x.npy", f"{case}/input.z.npy"
    os.rename(copy / relative, copy / renamed)

    def rename(manifest):
        next(f for f in _case_entry(manifest, case)["files"]
             if f["path"] == relative)["path"] = renamed

    _tamper(copy, rename)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [renamed], failed
    assert "manifest path" in failed[renamed][0]


def test_an_extra_field_in_a_file_entry_fails_naming_the_file(copy):
    case = all_cases()[0].name
    relative = f"{case}/gradient.{next(iter(all_cases()[0].params))}.npy"

    def add_field(manifest):
        next(f for f in _case_entry(manifest, case)["files"]
             if f["path"] == relative)["rtol"] = 1.0

    _tamper(copy, add_field)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [relative], failed
    assert "manifest fields" in failed[relative][0]


def test_golden_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    with read_only_folder(tmp_path / "read-only") as folder:
        out = folder / "X"
        args = argparse.Namespace(out=str(out), force=False, case=[all_cases()[0].name])
        assert golden_command.run_golden(args) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"refimpl golden: --out {out}: ") and len(err.splitlines()) == 1
        assert os.listdir(folder) == []


def _rule_from_the_manifest(expected, actual, rtol, floor):
    """The manifest's comparison_rule, written out as a C++ or Rust reader would."""
    scale = float(np.max(np.abs(expected), initial=0.0))
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    limit = rtol * scale + floor
    if error > limit:
        return "fail"
    if scale == 0.0 and floor == 0.0:
        return "pass" if error == 0.0 else "fail"
    return "inconclusive" if limit >= scale / 3 else "pass"


def test_every_compared_file_carries_a_floor_per_dtype_that_judges_like_the_oracle(fresh):
    manifest = golden.read_manifest(fresh)
    assert "floors[dtype]" in manifest["comparison_rule"]
    judged = 0
    for entry in manifest["cases"].values():
        if entry["kind"] == "steps":             # tests/test_step_cases.py
            continue
        for file_entry in entry["files"]:
            if file_entry["role"] not in ("loss", "gradient", "output", "hvp"):
                assert "floors" not in file_entry
                continue
            floors = file_entry["floors"]
            assert sorted(floors) == sorted(DTYPE_TOLERANCES)
            assert all(np.isfinite(value) and value >= 0 for value in floors.values())
            # A coarser dtype can never resolve more finely.
            assert floors["float64"] <= floors["float32"] <= floors["tf32"]
            expected = np.load(fresh / file_entry["path"])
            if not np.any(expected):
                continue
            for dtype, tolerance in manifest["tolerances"].items():
                rtol, floor = tolerance["rtol"], floors[dtype]
                assert _rule_from_the_manifest(expected, expected, rtol, floor) != "fail"
                for wrong in (-expected, 2 * expected, expected / 2):
                    assert _rule_from_the_manifest(expected, wrong, rtol, floor) != "pass", (
                        file_entry["path"], dtype)
                judged += 1
    assert judged > 300


def test_an_edited_floor_fails_naming_the_file(copy):
    edited = []

    def loosen(manifest):
        entry = next(iter(manifest["cases"].values()))
        gradient = next(f for f in entry["files"] if f["role"] == "gradient")
        gradient["floors"]["float32"] *= 1000
        edited.append(gradient["path"])

    _tamper(copy, loosen)
    failed = _failures(golden.verify(copy))
    assert list(failed) == edited, failed
    assert "manifest floors" in failed[edited[0]][0]


def test_conventions_name_the_metric_losses_micro_batches_and_label_positions():
    for name, needed in (("siamese-triplet-cnn", "TripletMarginLoss"),
                         ("siamese-contrastive-all-active", "ContrastiveLoss"),
                         ("microbatch-siamese-triplet", "TripletMarginLoss"),
                         ("microbatch-mlp", "micro_batches"),
                         ("sequence-rnn-labelling", "RNN")):
        notes = golden_format._case_conventions(get_case(name).config)
        assert needed in notes, (name, sorted(notes))
    assert "micro_batches" not in golden_format._case_conventions(
        get_case("mlp-tanh-ce").config)
    losses = golden_format.CONVENTIONS["losses"]
    assert "int64 labels y (N,) or (N, T) for logits (N, ..., K)" in losses
    assert "mean over every label position" in losses
    assert "'<name>.<i>'" in golden_format.CONVENTIONS["micro_batches"]
    assert "similarity labels" in golden_format.CONVENTIONS["metric_losses"]


# --- verify: the manifest's own SHA256SUMS line, and JSON types -------------------------------

GOLDEN_CASE = "mlp-tanh-ce"


def _only_the_manifest_edits():
    """Edits of manifest.json alone (SHA256SUMS untouched) that the field-by-field rebuild of
    the manifest cannot see: only manifest.json's own line in SHA256SUMS can."""

    def reformatted(text):                 # the same document, other whitespace
        return json.dumps(json.loads(text), indent=4, sort_keys=True) + "\n"

    def other_version(text):               # another writer's version string: noted, not failed
        manifest = json.loads(text)
        manifest["generator"]["refimpl"] = "0.0.0-somebody-else"
        return json.dumps(manifest, indent=2, sort_keys=True) + "\n"

    return [reformatted, other_version]


@pytest.mark.parametrize("edit", _only_the_manifest_edits(), ids=lambda edit: edit.__name__)
def test_an_edit_of_the_manifest_alone_fails_verify_by_its_sha256sums_line(tmp_path, edit):
    """docs/golden-format.md, `refimpl verify`: manifest.json's own line in SHA256SUMS is
    checked. These edits change nothing a rebuilt field compares, so without that line
    verify would pass them."""
    folder = golden.write(tmp_path / "one", cases=[GOLDEN_CASE])
    path = folder / golden.MANIFEST
    path.write_text(edit(path.read_text()))
    failed = _failures(golden.verify(folder))
    assert set(failed) == {golden.MANIFEST, golden.CHECKSUMS}, failed
    assert any("differs from its line in SHA256SUMS" in m for m in failed[golden.MANIFEST])


@pytest.mark.parametrize("edit", ["lam", "tolerance", "shape"])
def test_an_edit_of_a_lambda_tolerance_or_shape_in_the_manifest_alone_fails_verify(tmp_path,
                                                                                   edit):
    """An edit of manifest.json alone (SHA256SUMS untouched) fails verify on manifest.json's
    line in SHA256SUMS, whatever else sees it too."""
    folder = golden.write(tmp_path / "pair", cases=["tied-soft-l2"])
    path = folder / golden.MANIFEST
    manifest = json.loads(path.read_text())
    entry = manifest["cases"]["tied-soft-l2"]
    if edit == "lam":
        entry["config"]["pair"]["lam"]["fc1.weight"] *= 2
    elif edit == "tolerance":
        manifest["tolerances"]["float64"]["rtol"] *= 10
    else:
        entry["files"][0]["shape"] = [1, *entry["files"][0]["shape"]]
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    messages = [entry.message for entry in golden.verify(folder).failures
                if entry.file == golden.MANIFEST]
    assert any("differs from its line in SHA256SUMS" in m for m in messages), messages


def test_a_float_schema_version_is_refused_by_readers_and_verify(copy):
    """docs/golden-format.md: schema_version is a JSON integer; 3.0 is refused (a typed reader
    refuses it too)."""
    _tamper(copy, lambda manifest: manifest.__setitem__("schema_version", 3.0))
    with pytest.raises(golden.GoldenError, match="schema_version 3.0"):
        golden.read_manifest(copy)
    failed = _failures(golden.verify(copy))
    assert list(failed) == [golden.MANIFEST] and "schema_version 3.0" in failed[
        golden.MANIFEST][0], failed


def test_verify_compares_manifest_numbers_with_their_json_type(tmp_path):
    """An integer written as a float (a shape [5.0, 3]) is another document for a typed
    reader: verify fails it even where the values compare equal."""
    folder = golden.write(tmp_path / "one", cases=[GOLDEN_CASE])

    def float_shape(manifest):
        entry = manifest["cases"][GOLDEN_CASE]["inputs"]["x"]
        entry["shape"] = [float(size) for size in entry["shape"]]

    _tamper(folder, float_shape)
    failed = _failures(golden.verify(folder))
    assert list(failed) == [golden.MANIFEST], failed
    assert any("inputs" in message for message in failed[golden.MANIFEST])


# --- compare_with_golden trusts nothing in the folder either ------------------------------------

def _refimpl_impl(sign: float = 1.0, scaled: str | None = None):
    """refimpl itself as an implementation under test, its gradients times ``sign`` (and the
    gradient ``scaled`` times 2): ``sign = -1`` is a negated implementation."""
    case = get_case(GOLDEN_CASE)

    def impl(params, inputs):
        loss, grads = case.loss_and_grads({k: np.asarray(v, np.float64) for k, v in
                                           params.items()})
        grads = {name: sign * value * (2 if name == scaled else 1)
                 for name, value in grads.items()}
        return loss, grads
    return impl


def _negate_gradients(folder: Path) -> None:
    """Negate every stored gradient of GOLDEN_CASE (as valid .npy files)."""
    for path in (folder / GOLDEN_CASE).glob("gradient.*.npy"):
        np.save(path, -np.load(path), allow_pickle=False)


def _rehash_manifest_only(folder: Path) -> None:
    """Re-hash every file in manifest.json, leaving SHA256SUMS as it was."""
    manifest_path = folder / golden.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for file_entry in manifest["cases"][GOLDEN_CASE]["files"]:
        data = (folder / file_entry["path"]).read_bytes()
        file_entry["sha256"] = hashlib.sha256(data).hexdigest()
        file_entry["bytes"] = len(data)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_compare_with_golden_refuses_gradients_negated_and_rehashed_in_the_manifest(copy):
    """docs/golden-format.md, "Comparing with a golden folder": SHA256SUMS must agree with the
    manifest. Negated gradients re-hashed in manifest.json (SHA256SUMS left stale) would let a
    negated implementation pass."""
    from refimpl.testing import compare_with_golden

    assert compare_with_golden(_refimpl_impl(), copy, GOLDEN_CASE)[0].ok
    assert not compare_with_golden(_refimpl_impl(-1.0), copy, GOLDEN_CASE)[0].ok
    _negate_gradients(copy)
    _rehash_manifest_only(copy)
    with pytest.raises(golden.GoldenError, match=r"manifest\.json: SHA-256 .* differs from its "
                                                 r"line in SHA256SUMS"):
        compare_with_golden(_refimpl_impl(-1.0), copy, GOLDEN_CASE)


def test_compare_with_golden_refuses_gradients_negated_and_rehashed_everywhere(copy):
    """docs/golden-format.md: every stored tensor must equal refimpl's recomputation, however
    consistently the hashes were redone."""
    from refimpl.testing import compare_with_golden

    _negate_gradients(copy)
    _tamper(copy)
    with pytest.raises(golden.GoldenError, match=rf"{GOLDEN_CASE}/gradient\.fc\d\.\w+\.npy: "
                                                 r"the stored gradient .* is not this "
                                                 r"refimpl's"):
        compare_with_golden(_refimpl_impl(-1.0), copy, GOLDEN_CASE)


def test_compare_with_golden_compares_a_gradient_the_manifest_no_longer_lists(copy):
    """docs/golden-format.md: every tensor of the rebuilt case is compared. A gradient entry
    dropped from the manifest (hashes redone) would leave that parameter uncompared, and an
    implementation wrong there would pass."""
    from refimpl.testing import compare_with_golden

    def drop(manifest):
        files = manifest["cases"][GOLDEN_CASE]["files"]
        files[:] = [f for f in files if f["name"] != "fc1.bias" or f["role"] != "gradient"]

    assert not compare_with_golden(_refimpl_impl(scaled="fc1.bias"), copy, GOLDEN_CASE)[0].ok
    _tamper(copy, drop)
    with pytest.raises(golden.GoldenError, match="lists no file for gradient 'fc1.bias'"):
        compare_with_golden(_refimpl_impl(scaled="fc1.bias"), copy, GOLDEN_CASE)


def test_compare_with_golden_refuses_a_changed_sha256sums_line(copy):
    from refimpl.testing import compare_with_golden

    sums = copy / golden.CHECKSUMS
    lines = sums.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if f"{GOLDEN_CASE}/loss.npy" in line)
    lines[index] = "0" * 64 + lines[index][64:]
    sums.write_text("\n".join(lines) + "\n")
    with pytest.raises(golden.GoldenError, match=rf"SHA256SUMS: its line for "
                                                 rf"'{GOLDEN_CASE}/loss.npy'"):
        compare_with_golden(_refimpl_impl(), copy, GOLDEN_CASE)
