"""Golden test vectors: every built-in case as ``.npy`` files any language can read.

``refimpl golden --out DIR`` writes, for every case of :func:`refimpl.testing.cases.all_cases`::

    DIR/manifest.json              what everything is (see below)
    DIR/SHA256SUMS                 `cd DIR && sha256sum -c SHA256SUMS` checks every file
    DIR/<case>/input.<name>.npy    x, y (or xa, ya, xb, yb for a tied pair)
    DIR/<case>/parameter.<name>.npy  the point: every unique parameter
    DIR/<case>/output.<name>.npy   the forward outputs (e.g. output.out.npy, the logits)
    DIR/<case>/loss.npy            the loss, a 0-d array
    DIR/<case>/gradient.<name>.npy dLoss/d<name>, shaped like parameter.<name>.npy

File format: NPY version 1.0, little-endian float64 (``<f8``) or int64 (``<i8``), C order,
never pickled. ``<name>`` is the parameter name (``fc1.weight``) with every character other
than ``A-Z a-z 0-9 . _ - ~`` percent-encoded (``A:fc1.weight`` -> ``A%3Afc1.weight``); the
manifest maps each file to its name anyway.

``manifest.json`` (sorted keys, no NaN/Inf) holds the schema version, the refimpl and NumPy
versions, the generating command, the comparison rule and default tolerances per dtype, and
per case: kind, model configuration (``Sequential.from_config`` rebuilds it; enough for any
other implementation to build the same model), seed, layouts and conventions, a convention
probe's ``convention``, every input described as data (shape, dtype, role), the loss as a
decimal and as ``float.hex()``, and every file with role, name, shape, dtype, size and
SHA-256. :func:`write` also takes ``Case`` objects (a drawn case); :func:`verify` rebuilds such
a case from its seed with a registered rebuilder, or fails it ("cannot be verified").

Writes are all-or-nothing and reproducible: everything is written (and fsynced) into a
temporary sibling folder ``.DIR.tmp-<pid>-<random>``, then switched into place; an existing
non-empty folder is refused unless ``force=True``, and even then it is replaced only after the
new folder is complete (and only if it is a golden folder). On Linux the switch is one
``renameat2(RENAME_EXCHANGE)``, so DIR always exists; writers of one folder take turns (a lock
on its parent folder), and each removes what killed writers left behind, or puts back an old
copy an interrupted replacement had set aside (the crash states are listed at
:mod:`.install`). Two runs with the same refimpl and NumPy give byte-identical files.

``refimpl verify DIR`` trusts nothing in DIR: it recomputes every case and compares every file
by SHA-256, by its exact NPY bytes and by value (the float64 rule of :mod:`refimpl.testing`),
rebuilds every manifest field from the catalogue, and fails on extra files and on symbolic
links (a golden folder is a plain tree; DIR itself may be a link). ``.npy`` headers are
checked before anything is loaded, so an object (pickle) array is refused without ever being
unpickled. A folder written with ``--case`` passes and says which catalogue cases it lacks.

The package, by concept: :mod:`.format` (constants, NPY bytes, a case's files and manifest
entry), :mod:`.read` (safe reading), :mod:`.install` (the all-or-nothing replacement of a
folder), :mod:`.writing` (:func:`write`) and :mod:`.verification` (:func:`verify`).
"""

from .format import (
    ALLOWED_DTYPES,
    CHECKSUMS,
    COMMAND,
    COMPARISON_RULE,
    CONVENTIONS,
    FLOOR_DIGITS,
    FORMAT,
    MANIFEST,
    ROLES,
    SCHEMA_VERSION,
    GoldenError,
)
from .read import LINK_REFUSED, GoldenCase, load_case, load_npy, read_manifest, select_cases
from .step_comparison import compare_steps_with_golden
from .steps import GoldenSteps, load_steps
from .verification import ABSENT, VerifyEntry, VerifyReport, check_stored_case, verify
from .writing import write

__all__ = [
    "write", "verify", "read_manifest", "select_cases", "load_case", "load_npy",
    "check_stored_case",
    "GoldenCase", "GoldenError", "VerifyReport", "VerifyEntry", "SCHEMA_VERSION", "FORMAT",
    "MANIFEST", "CHECKSUMS", "COMMAND", "COMPARISON_RULE", "CONVENTIONS", "ALLOWED_DTYPES",
    "ROLES", "FLOOR_DIGITS", "LINK_REFUSED", "ABSENT", "GoldenSteps", "load_steps",
    "compare_steps_with_golden",
]
