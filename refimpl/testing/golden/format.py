"""The golden format: constants, the NPY bytes of an array, and a case's files and manifest.

Everything here is computed, nothing is written or read: :mod:`.writing` stores what these
functions return and :mod:`.verification` recomputes it to compare.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ..._version import __version__
from ...nn.base import LAYER_TYPES
from ...nn.losses import LOSS_TYPES
from ...nn.metric_losses import METRIC_LOSS_TYPES
from ..cases import describe_inputs
from ..comparison import DTYPE_TOLERANCES, RESOLVED_FRACTION
from ..resolution import case_floors
from ..second_order import direction_seed, has_hvp, hvp_expectation, hvp_floors

FORMAT = "refimpl-golden"
#: 3: step cases (kind "steps"), and every case with an HVP expectation also stores its
#: direction and ``H v`` (roles "direction" and "hvp").
SCHEMA_VERSION = 3
#: The schema versions this refimpl reads (2: no step cases, no HVP files).
READABLE_SCHEMAS = (2, 3)
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
COMMAND = "refimpl golden --out DIR"

#: The only array dtypes a golden folder may hold (little-endian, fixed width, no objects).
ALLOWED_DTYPES = {"<f8": np.dtype("<f8"), "<i8": np.dtype("<i8")}

#: Order of the files of a case in the manifest.
ROLES = ("input", "parameter", "output", "loss", "gradient", "direction", "hvp")

#: The roles of the compared tensors: each file of these roles carries its floors.
COMPARED_ROLES = ("output", "loss", "gradient", "hvp")

COMPARISON_RULE = (
    "per compared tensor (loss, gradient, output, hvp), with scale = max_i |expected_i|, "
    "floor = the file entry's floors[dtype] (how finely any implementation in that dtype can "
    "resolve the tensor at this point) and limit = rtol * scale + floor: FAIL if "
    "max_i |actual_i - expected_i| > limit; otherwise, if expected and floor are both exactly "
    "zero, PASS only when actual is exactly zero; otherwise INCONCLUSIVE (never a pass: no "
    "implementation can be judged there in that dtype) if limit >= scale * "
    f"{RESOLVED_FRACTION:.17g}; otherwise PASS")

#: Significant digits of a stored floor: a floor is a rounding-error estimate, so three digits
#: say all it means, and a last-bit difference in the recomputation cannot change them.
FLOOR_DIGITS = 3

#: Layouts and conventions shared by every case (per-case notes are added from the layer and
#: loss types a case uses).
CONVENTIONS = {
    "arrays": "batch first: dense inputs (N, D), images (N, C, H, W) (NCHW), sequences "
              "(N, T, D) or int64 token indices (N, T); C order",
    "parameter_names": "'<layer>.weight' / '<layer>.bias' as in a PyTorch state_dict (an RNN's "
                       "'<layer>.weight_ih', 'weight_hh', 'bias_ih', 'bias_hh'); the "
                       "two models of a tied pair are prefixed 'A:' and 'B:'",
    "dense": "weight (out_features, in_features), bias (out_features,): "
             "y = x @ weight.T + bias (torch.nn.Linear)",
    "conv2d": "weight (out_channels, in_channels / groups, kH, kW), cross-correlation, output "
              "size floor((H + 2 padding - dilation (k - 1) - 1) / stride) + 1 "
              "(torch.nn.Conv2d)",
    "losses": "SoftmaxCrossEntropy: int64 labels y (N,) or (N, T) for logits (N, ..., K), "
              "mean over every label position (torch.nn.CrossEntropyLoss() on the positions "
              "flattened); MSE: mean over all elements (torch.nn.MSELoss())",
    "metric_losses": "a Siamese case applies one tower to every branch input (anchor, "
                     "positive, negative: TripletMarginLoss, p = 2, eps inside the distance "
                     "||a - p + eps||, mean over rows, torch.nn.TripletMarginLoss; x1, x2 and "
                     "int64 similarity labels y (N,), 1 similar, 0 dissimilar: "
                     "ContrastiveLoss, mean of y d^2 + (1 - y) max(0, margin - d)^2, "
                     "d = ||x1 - x2 + eps||); each tower gradient is the sum over branches",
    "micro_batches": "a micro-batch case hands over input '<name>.<i>' = micro-batch i of "
                     "the base case's input <name> (config['micro_batches'] their sizes, "
                     "config['base'] the base case); loss and gradients are the step's: the "
                     "sum over micro-batches of n_i / N times each one's, a tying or "
                     "anchoring penalty added once per step (= the full batch's)",
    "loss": "loss.npy is the total scalar loss the gradients differentiate (for a tied pair "
            "L_A + L_B + penalty)",
    "sharing": "a shared slot is not stored: only unique parameters have files, and the "
               "gradient of a unique parameter is the sum over all its uses (a transposed "
               "use's gradient transposed back)",
    "gradients": "gradient.<name>.npy = dLoss/d<name>, the shape of parameter.<name>.npy",
    "steps": "a step case (kind 'steps') runs K optimizer steps of its base case "
             "(config['steps']: the optimizer and clipping configurations, PyTorch's "
             "hyper-parameters, and K): parameter.<name>.npy is the start; step<k>/input.*.npy "
             "the batch of step k = 1..K; step<k>/loss.npy the loss at the start of step k, "
             "step<k>/grad_norm.npy the total gradient norm over the unique parameters before "
             "clipping, step<k>/parameter.<name>.npy the parameters after step k. Each of "
             "those is judged by the comparison rule with its file's floors; a parameter that "
             "passes is INCONCLUSIVE when its limit is not below a third of the step's update "
             "max|after step k - after step k-1| (the reference's), and one whose 'still' is "
             "true for the dtype must equal the implementation's own parameter before the step "
             "exactly",
    "hvp": "direction.<name>.npy = v, a seeded direction over every parameter (standard "
           "normal, numpy.random.default_rng(cases.<name>.hvp_direction_seed), parameter by "
           "parameter in the order of cases.<name>.parameters); hvp.<name>.npy = (H v) for "
           "<name>, H the Hessian of the loss of loss.npy (a tied pair's penalty and an "
           "anchor included; a micro-batch case's step = the full batch's) with respect to "
           "every parameter, shaped like parameter.<name>.npy; an implementation computes "
           "its own H v along the stored v and compares it by the rule with the hvp file's "
           "floors",
}


class GoldenError(ValueError):
    """A golden folder (or one of its files) is missing, malformed or unsafe; names the file."""


def _sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    """NPY 1.0 bytes of ``array`` (already <f8 or <i8, C order); deterministic for a NumPy."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def _golden_array(value: Any, what: str) -> np.ndarray:
    """``value`` as a C-order ``<f8`` / ``<i8`` array; refuses other dtypes and NaN / Inf."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        target = ALLOWED_DTYPES["<f8"]
    elif array.dtype.kind in "iu":
        target = ALLOWED_DTYPES["<i8"]
    else:
        raise GoldenError(f"{what}: cannot store dtype {array.dtype} (only real floats and "
                          f"integers)")
    # np.array, not np.ascontiguousarray: the latter turns a 0-d loss into shape (1,).
    array = np.array(array, dtype=target, order="C")
    if target.kind == "f" and not np.isfinite(array).all():
        raise GoldenError(f"{what}: holds NaN or Inf; golden values must be finite")
    return array


def _file_stem(name: str) -> str:
    """``name`` percent-encoded outside ``A-Z a-z 0-9 . _ - ~``."""
    return urllib.parse.quote(name, safe="")


def _json_value(value: float) -> dict[str, Any]:
    """A float as the manifest stores it: decimal and ``float.hex()``."""
    return {"value": float(value), "hex": float(value).hex()}


def _doc_summary(cls: type) -> str | None:
    """The first paragraph of a class's own docstring, on one line (None if it has none)."""
    doc = cls.__doc__ or ""
    # dataclasses invent a docstring "Name(field, ...)" for classes without one.
    if not doc.strip() or doc.startswith(f"{cls.__name__}("):
        return None
    return " ".join(doc.strip().split("\n\n")[0].split())


def _types_in(config: Any) -> list[str]:
    """Every ``"type"`` value in a (nested) configuration, in order of first appearance."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            kind = node.get("type")
            if isinstance(kind, str) and kind not in found:
                found.append(kind)
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(config)
    return found


def _case_conventions(config: Mapping[str, Any]) -> dict[str, str]:
    """A one-line description of each layer / loss type the case's configuration uses."""

    notes = {}
    for kind in _types_in(config):
        cls = LAYER_TYPES.get(kind) or LOSS_TYPES.get(kind) or METRIC_LOSS_TYPES.get(kind)
        summary = _doc_summary(cls) if cls is not None else None
        if summary:
            notes[kind] = summary
    if isinstance(config, Mapping) and isinstance(config.get("base"), Mapping):
        notes["micro_batches"] = CONVENTIONS["micro_batches"]
    return notes


def _normalised(config: Any) -> Any:
    """The configuration as JSON sees it (tuples become lists); raises on NaN/Inf."""
    return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))


def _tolerances_json() -> dict[str, dict[str, float]]:
    """The default tolerances per dtype, as the manifest stores them."""
    return {name: {"rtol": tol.rtol, "atol": tol.atol} for name, tol in DTYPE_TOLERANCES.items()}


class _Tensor(NamedTuple):
    """One array of a case: its role (input, parameter, ...), name and value."""
    role: str
    name: str
    array: np.ndarray


def _case_tensors(case: Any) -> list[_Tensor]:
    """Every array of a case in the fixed file order, computed by refimpl."""
    loss, grads = case.loss_and_grads(case.params)
    outputs = case.outputs(case.params)
    loss_array = np.asarray(loss)
    if loss_array.dtype.kind == "c" or any(np.asarray(g).dtype.kind == "c"
                                           for g in grads.values()):
        raise GoldenError(f"case {case.name!r}: complex results for real parameters")
    if list(grads) != list(case.params):
        raise GoldenError(f"case {case.name!r}: gradient keys {list(grads)} differ from the "
                          f"parameter keys {list(case.params)}")
    tensors = [_Tensor("input", name, value) for name, value in case.inputs.items()]
    tensors += [_Tensor("parameter", name, value) for name, value in case.params.items()]
    tensors += [_Tensor("output", name, value) for name, value in outputs.items()]
    tensors.append(_Tensor("loss", "loss", loss_array.reshape(())))
    tensors += [_Tensor("gradient", name, value) for name, value in grads.items()]
    if has_hvp(case):
        expected = hvp_expectation(case)
        tensors += [_Tensor("direction", name, value)
                    for name, value in expected.direction.items()]
        tensors += [_Tensor("hvp", name, value) for name, value in expected.hvp.items()]
    return tensors


def _file_name(role: str, name: str) -> str:
    """The file name of a tensor within its case folder."""
    return "loss.npy" if role == "loss" else f"{role}.{_file_stem(name)}.npy"


_CASE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class _File(NamedTuple):
    """One file of a case as refimpl writes it: its manifest entry, array and NPY bytes."""

    entry: dict[str, Any]
    array: np.ndarray
    data: bytes


def _case_files(case: Any) -> list[_File]:
    """Every file of one case, computed (nothing written), in manifest order."""
    if not _CASE_NAME.match(case.name):
        raise GoldenError(f"case {case.name!r}: a golden case name must match [a-z0-9-]+")
    files: list[_File] = []
    seen: dict[str, str] = {}
    floors = {dtype: case_floors(case, dtype) for dtype in DTYPE_TOLERANCES}
    if has_hvp(case):
        for dtype, by_tensor in floors.items():
            by_tensor.update(hvp_floors(case, dtype))
    for tensor in _case_tensors(case):
        array = _golden_array(tensor.array, f"case {case.name!r}, {tensor.role} "
                                            f"{tensor.name!r}")
        file_name = _file_name(tensor.role, tensor.name)
        # Case-insensitive file systems (macOS, Windows) must not merge two files.
        if file_name.lower() in seen:
            raise GoldenError(f"case {case.name!r}: {tensor.name!r} and {seen[file_name.lower()]!r}"
                              f" map to the same file name {file_name!r}")
        seen[file_name.lower()] = tensor.name
        data = _npy_bytes(array)
        entry = {
            "path": f"{case.name}/{file_name}", "role": tensor.role, "name": tensor.name,
            "shape": list(array.shape), "dtype": array.dtype.str, "bytes": len(data),
            "sha256": _sha256(data),
        }
        if array.ndim == 0 and array.dtype.kind == "f":
            entry.update(_json_value(array.item()))
        if tensor.role in COMPARED_ROLES:
            key = (tensor.role, tensor.name)
            entry["floors"] = {dtype: float(f"{by_tensor[key]:.{FLOOR_DIGITS}g}")
                               for dtype, by_tensor in floors.items()}
        files.append(_File(entry, array, data))
    return files


def _case_entry(case: Any, files: list[_File]) -> dict[str, Any]:
    """The manifest entry of one case whose files are ``files``."""
    loss = next(file.array.item() for file in files if file.entry["role"] == "loss")
    config = _normalised(case.config)
    return {
        "kind": case.kind,
        "config": config,
        "seed": config.get("seed") if isinstance(config, Mapping) else None,
        "conventions": _case_conventions(config),
        # a probe's convention (what it isolates, refimpl's rule); null for other cases
        "convention": config.get("convention") if isinstance(config, Mapping) else None,
        "tolerances": _tolerances_json(),
        "loss": _json_value(loss),
        "inputs": _normalised(describe_inputs(case.inputs)),
        "parameters": list(case.params),
        # the seed of the stored direction (null: the case stores no H v)
        "hvp_direction_seed": direction_seed(case) if has_hvp(case) else None,
        "files": [file.entry for file in files],
    }


def _case_record(case: Any) -> tuple[list[_File], dict[str, Any]]:
    """Every file of one case and its manifest entry: what is written and what is verified."""
    files = _case_files(case)
    return files, _case_entry(case, files)


def _command(case_names: list[str] | None) -> str:
    """The generating command: every case, or a selection named by ``--case`` flags."""
    return COMMAND + "".join(f" --case {name}" for name in case_names or ())


def _manifest_header(command: str, case_order: list[str]) -> dict[str, Any]:
    """Everything in the manifest but the cases (so that verify can rebuild it)."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generator": {
            "refimpl": __version__, "numpy": np.__version__, "command": command,
            "seed": "each case is built by refimpl.testing.cases from its own fixed seed, "
                    "recorded as cases.<name>.seed (null when the case has none)",
        },
        "npy": {"version": "1.0", "dtypes": sorted(ALLOWED_DTYPES), "order": "C",
                "pickle": False},
        "comparison_rule": COMPARISON_RULE,
        "tolerances": _tolerances_json(),
        "conventions": CONVENTIONS,
        "case_order": list(case_order),
    }



def _checksums_text(manifest: Mapping[str, Any], manifest_sum: str) -> str | None:
    """The SHA256SUMS refimpl writes for ``manifest`` (None if the manifest is too broken)."""
    try:
        lines = [f"{manifest_sum}  {MANIFEST}"]
        for name in manifest["case_order"]:
            lines += [f"{entry['sha256']}  {entry['path']}"
                      for entry in manifest["cases"][name]["files"]]
    except (KeyError, TypeError):
        return None
    return "\n".join(lines) + "\n"
