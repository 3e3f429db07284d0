"""The two tiers of the suite and their Hypothesis profiles.

Tiers
-----
``python -m pytest`` runs the default tier: setup.cfg's ``addopts`` deselects the tests marked
``@pytest.mark.slow``. It is sized to a couple of minutes of CPU: property tests draw the
default profile's examples, end-to-end commands run on a few cases, and expensive fixtures
(golden folders, catalogues) are built once.

``python -m pytest -m slow`` runs the second tier (a ``-m`` on the command line replaces the
one of ``addopts``): the PyTorch and JAX adapters, conformance runs and distributed engines,
multi-process runs, end-to-end commands over every case and the exhaustive versions of the
sampled tests of the default tier. CI runs both.

A module whose every test is slow says so with a module-level ``pytestmark =
pytest.mark.slow``; the default tier then does not even import it (see
:func:`pytest_ignore_collect`), so that importing PyTorch or JAX costs it nothing.

Hypothesis profiles
-------------------
Under CI (:data:`IN_CI`) both profiles are derandomized, as Hypothesis's own "ci" profile is:
CI checks the same examples on every run of a commit; local runs draw fresh ones and find
what CI does not look at.

``default`` (``profiles.DEFAULT_EXAMPLES`` = 20 examples per property) in the default tier;
``thorough`` (ten times as many) in the slow tier, loaded when the ``-m`` expression is
exactly ``slow``. The slow tier also runs every property test of the default tier again,
with the thorough profile (:func:`pytest_collection_modifyitems`): the default tier samples
a property, CI explores it. ``HYPOTHESIS_PROFILE=NAME`` (or Hypothesis's own
``--hypothesis-profile NAME``) chooses a profile for any run, e.g.
``HYPOTHESIS_PROFILE=thorough python -m pytest`` for the default tier with ten times as many
examples. Numerical tests have no deadline: their run time depends on the drawn sizes, not on
a bug. A test that sets its own number of examples and should grow with the profile passes it
through ``profiles.scaled`` (tests/test_hessian.py) or leaves it to the profile.
"""

from __future__ import annotations

import ast
import gc
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, is_hypothesis_test, settings
from profiles import DEFAULT_EXAMPLES, THOROUGH_EXAMPLES

#: Whether this is a CI run: Hypothesis loads its built-in "ci" profile when it detects one
#: (the ``CI`` environment variable and the like; .ci/run sets ``CI``).
IN_CI = getattr(settings, "get_current_profile_name", lambda: None)() == "ci"
#: Under CI both profiles follow Hypothesis's "ci" profile: derandomized (every CI run of a
#: commit draws the same examples, so its verdict depends on the code, not on the draw), no
#: example database, a failure's reproduction blob printed. A local run explores fresh ones.
CI_SETTINGS = {"derandomize": True, "database": None, "print_blob": True} if IN_CI else {}

settings.register_profile(
    "default", max_examples=DEFAULT_EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow], **CI_SETTINGS,
)
settings.register_profile(
    "thorough", max_examples=THOROUGH_EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.too_slow], **CI_SETTINGS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: The -m expression of the default tier (setup.cfg's addopts) and of the slow tier.
DEFAULT_TIER, SLOW_TIER = "not slow", "slow"


def _tier(config) -> str:
    """The ``-m`` expression of the run, stripped."""
    return (config.getoption("markexpr", "") or "").strip()


def pytest_configure(config):
    """The thorough profile for the slow tier, unless a profile was chosen explicitly."""
    chosen = "HYPOTHESIS_PROFILE" in os.environ or config.getoption("--hypothesis-profile",
                                                                    None)
    if not chosen and _tier(config) == SLOW_TIER:
        settings.load_profile("thorough")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """In the slow tier, every property test of the default tier runs again (with the
    thorough profile): marked slow here, before ``-m`` selects the tier's tests."""
    if _tier(config) != SLOW_TIER:
        return
    for item in items:
        if isinstance(item, pytest.Function) and is_hypothesis_test(item.obj) \
                and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session):
    """Collecting imported every module and built every test item, strategy and catalogue the
    session keeps to its end: take them out of the cyclic garbage collector's reach (after a
    last collection), which would otherwise walk them all at each full collection of the run."""
    gc.collect()
    gc.freeze()


def _marked_slow_as_a_whole(path: Path) -> bool:
    """Whether a test module assigns ``pytestmark = pytest.mark.slow`` (or a list or tuple
    holding it) at its top level; read from the source, without importing the module."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False      # let pytest import it and report the error
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "pytestmark"
                for target in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) \
                else [node.value]
            return any(ast.unparse(mark) == "pytest.mark.slow" for mark in marks)
    return False


def pytest_ignore_collect(collection_path, config):
    """Skip importing a module whose every test is slow when the run is the default tier.

    The default tier would deselect each of its tests anyway; not importing the module saves
    the import of the frameworks it needs. Only the exact default expression is recognised:
    any other ``-m`` collects every module as usual.
    """
    if (collection_path.suffix == ".py" and collection_path.name.startswith("test_")
            and _tier(config) == DEFAULT_TIER
            and _marked_slow_as_a_whole(collection_path)):
        return True
    return None
