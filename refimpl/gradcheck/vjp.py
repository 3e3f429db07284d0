"""check_vjp (one operation's backward pass against numerical derivatives) and assert_close
(two arrays by the checker's comparison rule)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .._validate import as_float_array, check_tolerance
from .arguments import Params, _check_grads, _check_options, _check_params, _pair
from .checker import check_gradients
from .report import TOLERANCES, GradcheckReport, Tolerance, _unravel

__all__ = ["check_vjp", "assert_close"]


def check_vjp(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[Any, Any], Any],
    inputs: Mapping[str, Any],
    *,
    static: Mapping[str, Any] | None = None,
    dout: Any = None,
    seed: int = 0,
    method: str = "complex",
    mode: str = "full",
    names: Iterable[str] | None = None,
    directions: int = 8,
    rtol: float | None = None,
    atol: float | None = None,
) -> GradcheckReport:
    """Check one operation's backward pass (a vector-Jacobian product) numerically.

    The scalar checked is ``<forward(inputs), dout>``, whose gradient is exactly what
    ``backward(dout, cache)`` returns. Every argument is validated before ``forward`` is
    called.

    Parameters
    ----------
    forward : callable
        ``forward(**inputs, **static) -> (out, cache)``.
    backward : callable
        ``backward(dout, cache) ->`` the gradients of the inputs, in the order of ``inputs``
        (a tuple; a single array when there is one input). Gradients past the inputs are
        not checked.
    inputs : dict of str to array_like
        The differentiable arguments by name (real arrays).
    static : dict, optional
        Non-differentiable keyword arguments (labels, strides, ...).
    dout : array_like, optional
        The upstream gradient, shaped like ``out``; default
        ``np.random.default_rng(seed).standard_normal(out.shape)``, never all-ones, which
        hides mixed-up batch rows (``dout[::-1]``) and sums replaced by ``N * dout[0]``.
    seed : int
        A non-negative int; seeds the default ``dout`` and, in directional mode, the
        directions.
    method, mode, names, directions, rtol, atol
        As in :func:`~refimpl.gradcheck.check_gradients`.

    Returns
    -------
    refimpl.gradcheck.GradcheckReport
        One row per checked input (full mode) or per direction (directional mode).

    Raises
    ------
    TypeError, ValueError
        Naming the argument (``forward``, ``backward``, ``static``, ``inputs``, ``dout``,
        ...) for a bad argument or a bad value returned.
    """
    if not callable(forward):
        raise TypeError(f"forward: expected a callable forward(**inputs, **static) -> "
                        f"(out, cache), got {forward!r:.80}")
    if not callable(backward):
        raise TypeError(f"backward: expected a callable backward(dout, cache), got "
                        f"{backward!r:.80}")
    if static is not None and not isinstance(static, Mapping):
        raise TypeError(f"static: expected a dict of keyword arguments or None, got "
                        f"{type(static).__name__}")
    static = dict(static or {})
    inputs = _check_params(inputs, "inputs")
    _check_options(method, mode, names, directions, seed, rtol, atol, inputs)
    out, cache = _pair(forward(**inputs, **static), "forward", "forward(**inputs, **static)",
                       "(out, cache)")
    out = np.asarray(out)
    if out.dtype.kind not in "fiuc":
        raise TypeError(f"forward: expected out to be a numeric array, got dtype {out.dtype}")
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(out.shape)
    dout = as_float_array(dout, "dout", allow_complex=False)
    if dout.shape != out.shape:
        raise ValueError(f"dout: expected shape {out.shape}, got {dout.shape}")
    grads = _backward_grads(backward(dout, cache), inputs)
    scalar = _projected_output(forward, static, dout)
    return check_gradients(lambda p: (scalar(p), grads), inputs, method=method, mode=mode,
                           names=names, directions=directions, seed=seed, rtol=rtol,
                           atol=atol, loss_fn=scalar)


def _backward_grads(analytic: Any, inputs: Params) -> Params:
    """The gradients ``backward`` returned, keyed like ``inputs``, or a clear error."""
    if len(inputs) == 1 and not isinstance(analytic, tuple):
        analytic = (analytic,)
    if not isinstance(analytic, tuple) or len(analytic) < len(inputs):
        raise TypeError(f"backward: expected a tuple of {len(inputs)} gradients (one per "
                        f"input {list(inputs)}), got {analytic!r:.200}")
    # Gradients past the inputs (a None bias gradient, or one for an argument passed in
    # ``static``) are not checked.
    return _check_grads(dict(zip(inputs, analytic, strict=False)), inputs, "backward")


def _projected_output(forward: Callable[..., tuple[Any, Any]], static: dict[str, Any],
                      dout: np.ndarray) -> Callable[[Params], Any]:
    """The scalar ``p -> <forward(**p, **static), dout>``, refusing a change of out's shape."""
    def scalar(p: Params) -> Any:
        value, _ = _pair(forward(**p, **static), "forward", "forward(**inputs, **static)",
                         "(out, cache)")
        value = np.asarray(value)
        if value.shape != dout.shape:
            raise ValueError(f"forward: out has shape {value.shape} at a perturbed point, "
                             f"{dout.shape} at the point itself")
        return (value * dout).sum()
    return scalar


def assert_close(actual: Any, expected: Any, tolerance: Tolerance = TOLERANCES["complex"],
                 name: str = "array") -> None:
    """Assert that two arrays agree by the checker's comparison rule.

    For results that should be equal up to rounding (a different summation order, complex
    against real BLAS kernels)::

        max_i |actual_i - expected_i|  <=  atol + rtol * max(max|actual|, max|expected|)

    Parameters
    ----------
    actual, expected : array_like
        Arrays of exactly the same shape.
    tolerance : refimpl.gradcheck.Tolerance
        ``(rtol, atol)``, finite and non-negative; default the complex-step tolerances
        (rounding-level agreement).
    name : str
        What the arrays are, for the message.

    Raises
    ------
    AssertionError
        Naming the worst index and both values, or the two shapes.
    TypeError, ValueError
        For a ``tolerance`` that is not a pair of finite, non-negative numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from refimpl.gradcheck import assert_close
    >>> assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-15]))
    """
    __tracebackhide__ = True   # pytest: the user's test line, not this helper, is the failure
    if not isinstance(tolerance, tuple) or len(tolerance) != 2:
        raise TypeError(f"tolerance: expected a Tolerance(rtol, atol), got {tolerance!r:.80}")
    tolerance = Tolerance(check_tolerance(tolerance[0], "tolerance.rtol"),
                          check_tolerance(tolerance[1], "tolerance.atol"))
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if actual.size == 0:
        return
    error = np.abs(actual - expected)
    scale = float(max(np.max(np.abs(actual)), np.max(np.abs(expected))))
    limit = tolerance.atol + tolerance.rtol * scale
    worst = int(np.argmax(error))
    if not error.flat[worst] <= limit:
        index = _unravel(worst, actual.shape)
        raise AssertionError(
            f"{name}: max |error| {error.flat[worst]:.3e} at {index} exceeds "
            f"{tolerance.atol:g} + {tolerance.rtol:g} * {scale:.3e}: "
            f"actual {actual.flat[worst].item()!r}, expected {expected.flat[worst].item()!r}")
