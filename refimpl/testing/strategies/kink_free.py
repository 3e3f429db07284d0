"""Kink-free points by construction: move each bias that feeds a kinked activation.

See :mod:`refimpl.testing.strategies` for the construction and its limits (max pooling after
a layer, shared or paired biases).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...nn import Sequential

#: Activation layer types with a kink, and where the kink is.
KINKED_ACTIVATIONS = {"ReLU": 0.0, "LeakyReLU": 0.0}


def _is_pair(model: Any) -> bool:
    """Whether ``model`` is a ``TiedPair`` (duck-typed: it joins two models' gradients)."""
    return hasattr(model, "joined_loss_and_grads")


def _nearest_allowed(current: float, shifted: np.ndarray, kink: float, margin: float) -> float:
    """The bias value nearest ``current`` such that every ``shifted + bias`` is at least
    ``margin`` away from ``kink`` (shifted: the pre-activations without this bias entry)."""
    centres = kink - shifted.reshape(-1)                    # bias values that hit the kink
    if centres.size == 0 or np.min(np.abs(current - centres)) >= margin:
        return current
    wide = margin * (1 + 1e-9) + 1e-12                      # strictly outside, after rounding
    candidates = np.concatenate([centres - wide, centres + wide])
    distance = np.abs(candidates[:, None] - centres[None, :]).min(axis=1)
    allowed = candidates[distance >= margin]
    return float(allowed[np.argmin(np.abs(allowed - current))])


def _make_kink_free(model: Sequential, params: dict[str, np.ndarray], x: np.ndarray,
                    margin: float) -> dict[str, np.ndarray]:
    """Move the biases feeding kinked activations (see the module docstring)."""
    params = {name: value.copy() for name, value in params.items()}
    uses = model.slot_uses()
    h = x
    for index, layer in enumerate(model.layers):
        following = model.layers[index + 1] if index + 1 < len(model.layers) else None
        kink = KINKED_ACTIVATIONS.get(type(following).__name__)
        local = model.layer_params(layer, params)
        if kink is not None and layer.name is not None:
            slot = f"{layer.name}.bias"
            if slot not in uses:
                raise ValueError(f"model: kink_free needs a bias in {layer.name!r}, which feeds "
                                 f"{type(following).__name__}")
            if uses[slot] != (slot, False):
                raise ValueError(f"model: kink_free cannot move the shared bias {slot!r} "
                                 f"(it reads {uses[slot][0]!r}); share weights only")
            bias = params[slot]
            without = layer.forward(h, {**local, "bias": np.zeros_like(bias)})[0]
            # The bias has the shape of out.shape[1 : 1 + bias.ndim] and is broadcast over the
            # batch and any trailing axes: gather, for each bias entry, what it shifts.
            moved = np.moveaxis(without, 0, bias.ndim).reshape(*bias.shape, -1)
            new_bias = bias.copy()
            for entry in np.ndindex(bias.shape):
                new_bias[entry] = _nearest_allowed(float(bias[entry]), moved[entry], kink, margin)
            params[slot] = new_bias
            local = model.layer_params(layer, params)
        elif kink is not None and index == 0:
            pass  # the kinked activation is first: the input was drawn kink-free
        elif kink is not None:
            raise ValueError(f"model: kink_free needs a layer with a bias before "
                             f"{type(following).__name__} (layer {index + 1})")
        h = layer.forward(h, local)[0]
    return params


def _has_pool_near_tie(model: Sequential, params: Mapping[str, np.ndarray], x: np.ndarray,
                       gap: float) -> bool:
    """True when a max-pool window (after the input layer) has two positive values closer
    than ``gap`` — the one kink moving a bias cannot remove."""
    h = x
    for index, layer in enumerate(model.layers):
        if type(layer).__name__ == "MaxPool2D" and index > 0:
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
            padded = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
            out_h = (padded.shape[2] - kh) // sh + 1
            out_w = (padded.shape[3] - kw) // sw + 1
            windows = np.stack([padded[:, :, i:i + sh * (out_h - 1) + 1:sh,
                                       j:j + sw * (out_w - 1) + 1:sw]
                                for i in range(kh) for j in range(kw)], axis=-1)
            ordered = np.sort(windows, axis=-1)
            top, second = ordered[..., -1], ordered[..., -2] if kh * kw > 1 else None
            # Exact ties are allowed: they come from windows that read only zero padding
            # (both values are the bias: one function of the parameters, one gradient).
            close = (second > 0) & (top - second < gap) & (top != second) \
                if second is not None else None
            if close is not None and np.any(close):
                return True
        h = layer.forward(h, model.layer_params(layer, params))[0]
    return False



def _kinked_biases(model: Sequential) -> dict[str, str]:
    """``{bias slot: problem}`` for the biases a kink-free point must move, with a problem
    text ("" when the bias can be moved). Raises nothing; see :func:`_kink_free_problems`."""
    uses = model.slot_uses()
    found = {}
    for index, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if kind not in KINKED_ACTIVATIONS or index == 0:
            continue
        before = model.layers[index - 1]
        slot = f"{before.name}.bias" if before.name is not None else None
        if slot is None or slot not in uses:
            found[f"layer {index - 1}"] = (f"{kind} (layer {index}) follows "
                                           f"{type(before).__name__} without a bias")
        elif uses[slot] != (slot, False):
            found[slot] = f"the bias {slot!r} feeding {kind} is shared (it reads " \
                          f"{uses[slot][0]!r})"
        else:
            found[slot] = ""
    return found


def _kink_free_problems(model: Any) -> list[str]:
    """Why a kink-free point cannot be built for ``model`` by moving biases (empty: it can)."""
    if not _is_pair(model):
        return [problem for problem in _kinked_biases(model).values() if problem]
    problems = []
    for tag, member in (("model_a", model.model_a), ("model_b", model.model_b)):
        problems += [f"{tag}: {p}" for p in _kinked_biases(member).values() if p]
    moving_a, moving_b = _kinked_biases(model.model_a), _kinked_biases(model.model_b)
    l1 = model.mode == "soft" and model.penalty_name == "l1"
    for tie in model.pairs:
        if (model.mode == "hard" or l1) and (tie.name_a in moving_a or tie.name_b in moving_b):
            problems.append(f"the paired bias {tie.name_a!r} / {tie.name_b!r} feeds a kinked "
                            f"activation and is {'shared' if model.mode == 'hard' else 'L1-tied'}"
                            f"; pair weights only")
    return problems

