"""Public Hypothesis strategies: models, points, data and whole cases for property tests.

Import them into any test suite (Hypothesis is needed; refimpl itself does not need it)::

    from hypothesis import given
    from refimpl.testing import strategies as rs
    from refimpl.testing import assert_matches_oracle

    @given(rs.cases(kinds=("mlp", "cnn"), kink_free=True))
    def test_my_implementation(case):
        assert_matches_oracle(my_impl_for(case.config), case)

What there is
-------------
=================================  ==========================================================
``arrays(shape, ...)``             float64 arrays; ``kink_free`` (``|x - kink| >= margin``) and
                                   ``distinct`` (no ties) by construction
``mlps(...)``                      ``Sequential`` MLPs (depth, widths, activations, losses)
``conv_geometries(...)``           :class:`ConvGeometry`: kernel, stride, padding, dilation,
                                   groups, and input sizes whose output size rounds down
``cnns(...)``                      :class:`ModelExample` (a CNN and its input shape)
``sharing_maps(model, ...)``       valid ``share={slot: source}`` maps for a model
``shared_mlps(...)``               MLPs with a non-empty sharing map (identity / transposed)
``tied_pairs(...)``                ``TiedPair`` of two MLPs (soft / hard, l2 / l1)
``parameters(model, ...)``         a parameter dict for a model (or a pair, "A:"/"B:" keys)
``batches(model, ...)``            ``{"x": ..., "y": ...}`` for a model
``points(model, ...)``             :class:`Point` (params and inputs), optionally kink-free
``cases(...)``                     a whole :class:`refimpl.testing.cases.Case`, ready for
                                   ``refimpl.testing.assert_matches_oracle`` or
                                   ``refimpl.check_gradients(case.loss_and_grads, case.params)``
``embedding_models``, ``rnns``,    sequence models (embeddings with repeated indices, RNNs,
``tied_lms``, ``sequence_cases``   tied language models) and whole sequence cases
``siamese_models``,                Siamese towers with a triplet or contrastive loss, their
``siamese_cases``                  cases (rows kept away from the losses' kinks)
``micro_batch_splits``,            splits of a batch into micro-batches, and whole cases whose
``microbatch_cases``               implementation receives micro-batches
=================================  ==========================================================

Every strategy takes keyword overrides (sizes, ranges, choices) and validates them when it is
*created*: a bad override is a ``ValueError`` / ``TypeError`` naming it, not a failure deep
inside a test.

Arrays are drawn from a NumPy generator seeded by Hypothesis (an integer that shrinks to 0),
not element by element: fast for arrays of thousands of entries, reproducible, and Hypothesis
still shrinks every size and choice.

Kink-free points, by construction
---------------------------------
``points(model, kink_free=True)`` (and ``cases(kink_free=True)``) return a point at which every
ReLU / LeakyReLU pre-activation is at least ``margin`` away from 0, without discarding
examples: layer by layer, each bias entry feeding a kinked activation is moved to the nearest
value at which none of the pre-activations it shifts lies within ``margin`` of the kink (the
forbidden set is a finite union of intervals, so such a value always exists). A kinked
activation directly on the input gets an input drawn with ``arrays(kink_free=True)``; a max
pool directly on the input gets ``distinct`` inputs. This needs every kinked activation to
follow a layer with its own (unshared) bias, so kink-free cases are built with biases and
never share or pair a bias. The L1 tying penalty's kink (``a == b``) is kept ``margin`` away
by construction too. Max pooling *after* a layer cannot be made tie-free by moving a bias (it
shifts a whole window at once); there a near-tie (two positive window values closer than
``margin * 1e-3`` but not equal) is rejected with ``hypothesis.reject()``, a measure-zero
event for continuous draws (none in 1,500 drawn kink-free CNN cases). Exact ties are kept:
they come from windows that read only zero padding, whose values are all the bias — one
function of the parameters, so whichever entry wins gets the same gradient.

Modules: :mod:`.models` (MLPs, sharing maps, MLPs that share, tied pairs),
:mod:`.convolution` (convolution geometries, CNNs), :mod:`.data` (arrays, parameters,
batches, points), :mod:`.kink_free` (the construction above), :mod:`.drawn_cases` (whole
cases), :mod:`.sequence` (embeddings, RNNs, tied LMs) and :mod:`.siamese` (Siamese towers,
micro-batches); every strategy is re-exported here.
"""

try:
    import hypothesis  # noqa: F401 - only to fail early with a clear message
except ImportError as error:  # pragma: no cover - exercised only without Hypothesis
    raise ImportError(
        "refimpl.testing.strategies needs Hypothesis, an optional (test) dependency of refimpl: "
        "pip install hypothesis  (or pip install 'refimpl[test]')") from error

from .convolution import ConvGeometry, ModelExample, cnns, conv_geometries
from .data import Point, arrays, batches, parameters, points
from .drawn_cases import CASE_KINDS, RESOLVED_IN, cases
from .kink_free import KINKED_ACTIVATIONS
from .models import mlps, shared_mlps, sharing_maps, tied_pairs
from .sequence import LABELS, SEQUENCE_KINDS, embedding_models, rnns, sequence_cases, tied_lms
from .siamese import (
    METRIC_LOSSES,
    SMOOTH_ACTIVATIONS,
    micro_batch_splits,
    microbatch_cases,
    siamese_cases,
    siamese_models,
)

__all__ = [
    "arrays", "mlps", "ConvGeometry", "conv_geometries", "ModelExample", "cnns",
    "sharing_maps", "shared_mlps", "tied_pairs", "parameters", "batches", "Point", "points",
    "cases", "KINKED_ACTIVATIONS", "CASE_KINDS", "RESOLVED_IN",
    "embedding_models", "rnns", "tied_lms", "sequence_cases", "LABELS", "SEQUENCE_KINDS",
    "siamese_models", "siamese_cases", "micro_batch_splits", "microbatch_cases",
    "METRIC_LOSSES", "SMOOTH_ACTIVATIONS",
]
