"""Tests for refimpl/golden.py: golden folders are reproducible, self-checking, atomic, and
never unpickle anything."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import golden
from refimpl.cases import all_cases
from refimpl.model import Sequential
from refimpl.testing import DTYPE_TOLERANCES


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """One golden folder for the read-only tests (copied before any mutation)."""
    out = tmp_path_factory.mktemp("golden") / "vectors"
    golden.write(out)
    return out


@pytest.fixture
def copy(fresh, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(fresh, target)
    return target


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _failures(report: golden.VerifyReport) -> dict[str, list[str]]:
    failed: dict[str, list[str]] = {}
    for entry in report.failures:
        failed.setdefault(entry.file, []).append(entry.message)
    return failed


def _rehash(folder: Path, relative: str) -> None:
    """After a deliberate change to ``relative``, make the manifest and SHA256SUMS agree with
    it, so that only the content checks (header, values) can catch the change."""
    manifest_path = folder / golden.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    digest = hashlib.sha256((folder / relative).read_bytes()).hexdigest()
    for entry in manifest["cases"].values():
        for file_entry in entry["files"]:
            if file_entry["path"] == relative:
                file_entry["sha256"] = digest
                file_entry["bytes"] = (folder / relative).stat().st_size
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    manifest_path.write_text(text)
    lines = [f"{hashlib.sha256(text.encode()).hexdigest()}  {golden.MANIFEST}"]
    for name in manifest["case_order"]:
        lines += [f"{f['sha256']}  {f['path']}" for f in manifest["cases"][name]["files"]]
    (folder / golden.CHECKSUMS).write_text("\n".join(lines) + "\n")


# --- reproducible, complete, readable ---------------------------------------------------------

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
    assert manifest["format"] == "refimpl-golden" and manifest["schema_version"] == 1
    generator = manifest["generator"]
    assert generator["numpy"] == np.__version__ and generator["command"].startswith(
        "refimpl golden")
    assert manifest["tolerances"] == {name: {"rtol": t.rtol, "atol": t.atol}
                                      for name, t in DTYPE_TOLERANCES.items()}
    assert json.dumps(manifest, indent=2, sort_keys=True) + "\n" == text   # sorted, stable
    for name, entry in manifest["cases"].items():
        assert entry["tolerances"] == manifest["tolerances"]
        assert entry["conventions"], name
        roles = [f["role"] for f in entry["files"]]
        assert roles == sorted(roles, key=golden.ROLES.index), name
        assert roles.count("loss") == 1
        params = [f["name"] for f in entry["files"] if f["role"] == "parameter"]
        grads = [f["name"] for f in entry["files"] if f["role"] == "gradient"]
        assert params == grads == entry["parameters"]
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
        if "model" not in config or "layers" not in config["model"]:
            continue
        model = Sequential.from_config(config["model"])
        data = golden.load_case(fresh, name)
        np.testing.assert_array_equal(model.forward(data.params, data.inputs["x"]),
                                      data.outputs["out"])
        rebuilt += 1
    assert rebuilt > 0


def test_file_names_are_safe_and_distinct():
    assert golden._file_name("parameter", "A:fc1.weight") == "parameter.A%3Afc1.weight.npy"
    assert golden._file_name("input", "w0:fc1.weight") == "input.w0%3Afc1.weight.npy"
    assert golden._file_name("loss", "loss") == "loss.npy"
    assert golden._file_name("gradient", "a/b") == "gradient.a%2Fb.npy"


# --- verify fails, naming the file ------------------------------------------------------------

@settings(max_examples=20)
@given(data=st.data())
def test_any_flipped_byte_fails_naming_the_file(fresh, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("flip") / "g"
    shutil.copytree(fresh, folder)
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
    text = (copy / "manifest.json").read_text().replace('"schema_version": 1',
                                                        '"schema_version": NaN')
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
    _rehash(copy, relative)
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
    assert any(entry.case == "no-such-case" and "catalogue" in entry.message
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
    _rehash(copy, relative)      # hashes agree: only the header check stands in the way

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
    status = golden.run_golden(argparse.Namespace(out=str(out), force=False, case=None))
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

    original = golden._write_case
    monkeypatch.setattr(golden, "_write_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        golden.write(copy, force=True)
    assert _files(copy) == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy"]


def test_empty_folder_is_used_and_file_is_refused(tmp_path):
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
    golden.add_golden_arguments(commands.add_parser("golden"))
    golden.add_verify_arguments(commands.add_parser("verify"))
    return parser


def test_command_line_golden_and_verify(tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parser().parse_args(["golden", "--out", str(out)])
    assert golden.run_golden(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert golden.run_verify(_parser().parse_args(["verify", str(out)])) == 0
    assert "OK" in capsys.readouterr().out
    (out / "manifest.json").write_text("[")
    assert golden.run_verify(_parser().parse_args(["verify", "--quiet", str(out)])) == 1
    output = capsys.readouterr().out
    assert "FAIL  manifest.json" in output and "FAILED" in output
    args = _parser().parse_args(["golden", "--out", str(out), "--force"])
    assert args.force
