"""refimpl's parameter names and a ``torch.nn.Module``'s, both ways, for params and gradients.

refimpl names parameters as a ``state_dict`` does (``"fc1.weight"``, PyTorch's layouts), so a
module whose attributes are named like refimpl's layers needs no glue at all. Two things still
differ, and :class:`TorchNames` bridges them:

* **nn.RNN's names**: refimpl's ``RNN("rnn", ...)`` has ``rnn.weight_ih``, ``rnn.weight_hh``,
  ``rnn.bias_ih``, ``rnn.bias_hh``; ``torch.nn.RNN`` (one layer, one direction) has the same
  tensors as ``rnn.weight_ih_l0``, ... (``_l0``: layer 0).
* **a tied slot**: with ``share={"out.weight": "embed.weight"}`` refimpl stores the one
  unique parameter ``embed.weight`` and its ``params`` and ``grads`` omit the slot
  ``out.weight``. A module ties by assigning one ``Parameter`` to both attributes
  (``self.out.weight = self.embed.weight``): its ``state_dict()`` lists the tensor under
  both names, ``named_parameters()`` once (under the name it meets first), and that one
  tensor's ``.grad`` is the sum over both uses: refimpl's gradient of ``embed.weight``. A
  module may also read the source in its forward pass without a parameter of the slot's name
  (``F.linear(h, self.embed.weight)``), which is the only way to tie a slot that refimpl
  reads *transposed* (``transposed("enc.weight")``: no tensor is its own transpose).

Layer names may differ too (``torch.nn.Sequential`` names its layers ``"0"``, ``"1"``, ...):
``layers={"fc1": "0", "fc2": "2"}`` maps refimpl's layer names to the module's paths.

Every mismatch is a ``ValueError`` naming both sides: a refimpl parameter the module lacks
(with the closest module names), a module parameter refimpl does not have, a shape that
differs, a tied slot whose tensor is not the source's tensor (the tie forgotten in the
module), two refimpl parameters held by one module tensor (a tie refimpl does not have).

Examples
--------
>>> import torch
>>> from refimpl.adapters.torch_names import TorchNames
>>> class TiedLM(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.embed = torch.nn.Embedding(11, 4)
...         self.rnn = torch.nn.RNN(4, 4, batch_first=True)
...         self.out = torch.nn.Linear(4, 11)
...         self.out.weight = self.embed.weight        # tied: one Parameter, two names
>>> names = TorchNames("sequence-tied-lm", TiedLM())
>>> names.torch_names["embed.weight"], names.torch_names["rnn.weight_ih"]
(('embed.weight', 'out.weight'), ('rnn.weight_ih_l0',))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

try:
    import torch
except ImportError as error:
    raise ImportError("refimpl.adapters.torch_names needs PyTorch: pip install "
                      "'refimpl[torch]'") from error

from .._validate import check_keys, did_you_mean
from ..nn import RNN, Sequential, Siamese
from ..testing.cases import Case, get_case
from ..tying import AnchoredModel, TiedPair

__all__ = ["TorchNames", "torch_layer_names"]


def torch_layer_names(model: Sequential, layers: Mapping[str, str] | None = None
                      ) -> dict[str, str]:
    """Every slot of ``model`` (shared ones included) and the name PyTorch gives it.

    Parameters
    ----------
    model : refimpl.nn.Sequential
    layers : mapping of str to str, optional
        refimpl layer name -> the module's path to that layer (default: the same name).

    Returns
    -------
    dict of str to str
        ``{"fc1.weight": "fc1.weight", "rnn.weight_ih": "rnn.weight_ih_l0", ...}``, in layer
        order.
    """
    layers = dict(layers or {})
    slots = {}
    for layer in model.layers:
        for local in layer.parameter_shapes():
            suffix = "_l0" if isinstance(layer, RNN) else ""    # nn.RNN: layer 0 of 1
            slots[f"{layer.name}.{local}"] = f"{layers.get(layer.name, layer.name)}.{local}" \
                                             f"{suffix}"
    return slots


class TorchNames:
    """The correspondence between refimpl's parameters and a module's, checked once.

    Parameters
    ----------
    model : refimpl.nn.Sequential, Siamese, AnchoredModel, Case, str or dict
        refimpl's side: a model (a Siamese model's tower, an anchored model's model), a
        :class:`~refimpl.testing.cases.Case`, the name of a built-in case, or a case
        configuration (``{"model": ...}``, ``{"siamese": ...}``, ``{"anchored": ...}`` or a
        micro-batch case's ``{"base": ...}``). A tied pair has two models: give each its own
        ``TorchNames`` (and the ``"A:"`` / ``"B:"`` prefixes of the pair's keys are yours).
    module : torch.nn.Module or mapping of str to torch.Tensor
        The module, or its ``state_dict()`` (a tied tensor listed under each of its names,
        as ``state_dict()`` does).
    layers : mapping of str to str, optional
        refimpl layer name -> the module's path to that layer, where they differ
        (``{"fc1": "0", "fc2": "2"}`` for a ``torch.nn.Sequential``,
        ``{"fc1": "encoder.fc1"}`` for a nested module).

    Attributes
    ----------
    torch_names : dict of str to tuple of str
        Every unique refimpl parameter and the module's names of its tensor: the first is the
        name ``named_parameters()`` lists it under, the others the tied slots the module holds
        as the same tensor.
    shapes : dict of str to tuple of int
        refimpl's parameter shapes (the module's are the same).

    Raises
    ------
    TypeError, ValueError
        For a model that is not one of the above, and for every mismatch of names, shapes or
        ties (module docstring), naming both sides.
    """

    def __init__(self, model: Any, module: Any, *, layers: Mapping[str, str] | None = None
                 ) -> None:
        sequential = _sequential(model)
        if layers is not None and not isinstance(layers, Mapping):
            raise TypeError(f"layers: expected a dict {{refimpl layer name: module path}}, got "
                            f"{type(layers).__name__}")
        slots = torch_layer_names(sequential, layers)
        unknown = [name for name in layers or {}
                   if not any(slot.startswith(f"{name}.") for slot in slots)]
        if unknown:
            raise ValueError(f"layers: {unknown} are not layers of the refimpl model with "
                             f"parameters; those are "
                             f"{list(dict.fromkeys(slot.split('.')[0] for slot in slots))}")
        self.shapes: dict[str, tuple[int, ...]] = sequential.parameter_shapes()
        self._uses = sequential.slot_uses()
        entries = _entries(module, "module")
        groups = _groups(entries)
        names: dict[str, list[str]] = {unique: [] for unique in self.shapes}
        for slot, torch_name in slots.items():
            root, transpose = self._uses[slot]
            present = torch_name in entries
            if slot == root:
                if not present:
                    raise ValueError(
                        f"module: refimpl's parameter {slot!r} {self.shapes[slot]} has no "
                        f"module parameter {torch_name!r}"
                        f"{did_you_mean(torch_name, entries)}; the module has {list(entries)}"
                        + ("" if layers else "; pass layers={refimpl layer: module path} "
                                             "where the layer names differ"))
                names[root].insert(0, torch_name)
            elif present and transpose:
                raise ValueError(
                    f"module: {torch_name!r} is a parameter of the module, but refimpl's slot "
                    f"{slot!r} reads {root!r} transposed, and no tensor is its own transpose: "
                    f"read {slots[root]}.T in the module's forward pass instead")
            elif present:
                names[root].append(torch_name)
        self.torch_names: dict[str, tuple[str, ...]] = {}
        for unique, found in names.items():
            # named_parameters() lists a tied tensor under the name it meets first.
            order = sorted(found, key=list(entries).index)
            self.torch_names[unique] = tuple(order)
        self._order = list(entries)       # the module's registration order: its state_dict's
        mapped = {name: unique for unique, found in self.torch_names.items() for name in found}
        extra = [name for name in entries if name not in mapped]
        if extra:
            raise ValueError(f"module: {extra} map to no parameter of the refimpl model "
                             f"(refimpl's slots are named {list(slots.values())} in PyTorch)")
        self._check(entries, groups, "module")

    # --- refimpl -> PyTorch -------------------------------------------------------------------

    def state_dict(self, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """refimpl's ``params`` as the module's ``state_dict``: ``module.load_state_dict(...)``.

        Parameters
        ----------
        params : mapping of str to array_like
            Keyed exactly like refimpl's parameters, each of its shape.

        Returns
        -------
        dict of str to torch.Tensor
            Every module name of every parameter, in the module's order; a tied parameter is
            one tensor under each of its names. Fresh CPU tensors of the arrays' dtype
            (``load_state_dict`` copies them into the module's dtype and device).
        """
        arrays = self._refimpl_arrays(params, "params")
        tensors = {}
        for unique, array in arrays.items():
            tensor = torch.from_numpy(np.array(array))          # a copy: params are not shared
            for name in self.torch_names[unique]:
                tensors[name] = tensor
        return {name: tensors[name] for name in self._order}

    def torch_grads(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """refimpl's ``grads`` keyed like the module's ``named_parameters()`` (a tied
        parameter once, under its first name), as NumPy arrays."""
        return {self.torch_names[unique][0]: np.asarray(array)
                for unique, array in self._refimpl_arrays(grads, "grads").items()}

    # --- PyTorch -> refimpl -------------------------------------------------------------------

    def params(self, module: Any) -> dict[str, np.ndarray]:
        """The module's parameters (or a ``state_dict``) keyed like refimpl's ``params``.

        Parameters
        ----------
        module : torch.nn.Module or mapping of str to torch.Tensor
            A module with the names this correspondence was built on, or a mapping of them
            (a ``state_dict()``, ``dict(module.named_parameters())``: a tied parameter under
            one of its names at least); a tied slot must hold the source's tensor itself (not
            a copy: the tie would be broken).

        Returns
        -------
        dict of str to ndarray
            In refimpl's parameter order; copies, in the tensors' dtype.
        """
        entries = _entries(module, "module")
        self._check(entries, _groups(entries), "module")
        return {unique: _numpy(next(entries[name] for name in names if name in entries))
                for unique, names in self.torch_names.items()}

    def grads(self, source: Any) -> dict[str, np.ndarray]:
        """The module's gradients keyed like refimpl's ``grads``.

        Parameters
        ----------
        source : torch.nn.Module or mapping of str to tensor or array
            A module after ``loss.backward()`` (each parameter's ``.grad``: a tied tensor's
            is already the sum over its uses), or gradients keyed by module names (``{name:
            p.grad for name, p in module.named_parameters()}``): a tied parameter's under
            one of its names, or under several only if they are one tensor.

        Returns
        -------
        dict of str to ndarray
            In refimpl's parameter order; copies, in the gradients' dtype.

        Raises
        ------
        ValueError
            For a parameter without a gradient (``.grad`` None: no ``backward()``, or
            ``requires_grad`` off), a name that does not map, a missing gradient, two
            different gradients for one tied tensor, or a shape that differs.
        """
        if isinstance(source, torch.nn.Module):
            entries = _entries(source, "source")
            self._check(entries, _groups(entries), "source")
            grads = {}
            for unique, names in self.torch_names.items():
                grad = entries[names[0]].grad
                if grad is None:
                    raise ValueError(f"source: the module parameter {names[0]!r} has no "
                                     f"gradient (.grad is None): call loss.backward() first, "
                                     f"with requires_grad on")
                grads[unique] = _numpy(grad)
            return grads
        if not isinstance(source, Mapping):
            raise TypeError(f"source: expected a torch.nn.Module or a dict of gradients keyed "
                            f"by module names, got {type(source).__name__}")
        owner = {name: unique for unique, names in self.torch_names.items() for name in names}
        unknown = [name for name in source if name not in owner]
        if unknown:
            hints = "".join(did_you_mean(name, owner) for name in unknown[:1])
            raise ValueError(f"source: {unknown} are not module names of refimpl's "
                             f"parameters{hints}; expected {list(owner)}")
        grads = {}
        for unique, names in self.torch_names.items():
            given = [name for name in names if name in source]
            if not given:
                raise ValueError(f"source: no gradient of {' / '.join(map(repr, names))} "
                                 f"(refimpl's {unique!r})")
            first = source[given[0]]
            for other in given[1:]:
                if not _same(source[other], first):
                    raise ValueError(
                        f"source: {given[0]!r} and {other!r} are one tied tensor of the module "
                        f"but got two different gradients; give the tensor's gradient (the "
                        f"sum over its uses, as .grad holds it) once")
            array = _numpy(first)
            if array.shape != self.shapes[unique]:
                raise ValueError(f"source[{given[0]!r}]: expected shape {self.shapes[unique]} "
                                 f"(refimpl's {unique!r}), got {array.shape}")
            grads[unique] = array
        return grads

    # --- checks -----------------------------------------------------------------------------

    def _check(self, entries: Mapping[str, Any], groups: list[list[str]], what: str) -> None:
        """Names, shapes and ties of ``entries`` against this correspondence. A module must
        have every name; a mapping (a ``state_dict``, ``dict(named_parameters())``) at least
        one name of each parameter, its other names the same tensor."""
        owner = {name: unique for unique, names in self.torch_names.items() for name in names}
        extra = [name for name in entries if name not in owner]
        missing = [name for name in owner if name not in entries]
        if extra or (missing and isinstance(entries, _ModuleEntries)):
            raise ValueError(f"{what}: other names than the module this correspondence was "
                             f"built on: missing {missing}, unexpected {extra}")
        for unique, names in self.torch_names.items():
            present = [name for name in names if name in entries]
            if not present:
                raise ValueError(f"{what}: no tensor of {' / '.join(map(repr, names))} "
                                 f"(refimpl's {unique!r})")
            shape = tuple(entries[present[0]].shape)
            if shape != self.shapes[unique]:
                raise ValueError(f"{what}: {present[0]!r} has shape {shape}, refimpl's "
                                 f"{unique!r} {self.shapes[unique]}")
            for name in present[1:]:
                if not _same(entries[name], entries[present[0]]):
                    raise ValueError(
                        f"{what}: refimpl ties {name!r} to {present[0]!r} (one parameter, "
                        f"{unique!r}), but the module holds another tensor at {name!r}: tie "
                        f"them (module.{name} = module.{present[0]}) so that one tensor "
                        f"collects the gradients of both uses")
        for group in groups:
            held = sorted({owner[name] for name in group})
            if len(held) > 1:
                raise ValueError(f"{what}: {group} are one tensor of the module, but refimpl "
                                 f"has separate parameters {held} there (a tie refimpl's model "
                                 f"does not have)")

    def _refimpl_arrays(self, values: Mapping[str, Any], what: str) -> dict[str, Any]:
        """``values`` keyed exactly like refimpl's parameters, each of its shape."""
        check_keys(values, list(self.shapes), what=what, explain=self._explain_shared)
        arrays = {}
        for unique in self.shapes:
            array = np.asarray(values[unique])
            if array.shape != self.shapes[unique]:
                raise ValueError(f"{what}[{unique!r}]: expected shape {self.shapes[unique]}, "
                                 f"got {array.shape}")
            arrays[unique] = array
        return arrays

    def _explain_shared(self, unexpected: list[str]) -> str:
        shared = [key for key in unexpected if key in self._uses and self._uses[key][0] != key]
        return (f"({shared} are tied slots: refimpl stores only the parameter they read)"
                if shared else "")

    def __repr__(self) -> str:
        pairs = ", ".join(f"{unique} = {' = '.join(names)}" if (unique,) != names else unique
                          for unique, names in self.torch_names.items())
        return f"TorchNames({pairs})"


def _sequential(model: Any) -> Sequential:
    """refimpl's one ``Sequential`` of ``model`` (see :class:`TorchNames`)."""
    if isinstance(model, str):
        model = get_case(model)
    if isinstance(model, Case):
        model = model.config
    if isinstance(model, Mapping):
        config = model
        while "base" in config:                       # a micro-batch case: its base case's
            config = config["base"]
        if "model" in config:
            return Sequential.from_config(config["model"], "model['model']")
        if "siamese" in config:
            return Siamese.from_config(config["siamese"], "model['siamese']").tower
        if "anchored" in config:
            return Sequential.from_config(config["anchored"]["model"],
                                          "model['anchored']['model']")
        if "pair" in config:
            model = TiedPair.from_config(config["pair"])
        else:
            raise ValueError(f"model: a case configuration needs a key 'model', 'siamese', "
                             f"'anchored' or 'base'; got {sorted(map(str, config))}")
    if isinstance(model, Siamese):
        return model.tower
    if isinstance(model, AnchoredModel):
        return model.model
    if isinstance(model, TiedPair):
        raise TypeError("model: a tied pair has two models: build one TorchNames per model "
                        "(pair.model_a, pair.model_b) and prefix the keys 'A:' / 'B:' yourself")
    if not isinstance(model, Sequential):
        raise TypeError(f"model: expected a refimpl Sequential, Siamese or AnchoredModel, a "
                        f"Case, a case name or a case configuration, got "
                        f"{type(model).__name__}")
    return model


class _ModuleEntries(dict):
    """The named parameters of a module (every name of a tied one): a module must show every
    name of the correspondence, a mapping only one of each parameter."""


def _entries(module: Any, what: str) -> dict[str, Any]:
    """The named tensors of a module (every name of a tied parameter, in registration order)
    or of a ``state_dict``."""
    if isinstance(module, torch.nn.Module):
        found = _ModuleEntries(module.named_parameters(remove_duplicate=False))
        # A persistent buffer is in the state_dict too, and refimpl has none: a state_dict
        # made of refimpl's parameters would not load.
        buffers = [name for name in module.state_dict(keep_vars=True) if name not in found]
        if buffers:
            raise ValueError(f"{what}: the buffers {buffers} are in the module's state_dict "
                             f"but refimpl's models have none (register them with "
                             f"persistent=False)")
        return found
    if isinstance(module, Mapping):
        bad = [name for name, value in module.items()
               if not isinstance(name, str) or not hasattr(value, "shape")]
        if bad:
            raise TypeError(f"{what}: expected a state_dict {{name: tensor}}, got an entry "
                            f"{bad[0]!r} of type {type(module[bad[0]]).__name__}")
        return dict(module)
    raise TypeError(f"{what}: expected a torch.nn.Module or its state_dict, got "
                    f"{type(module).__name__}")


def _groups(entries: Mapping[str, Any]) -> list[list[str]]:
    """The names of ``entries`` that are one tensor, in groups of two or more."""
    groups: list[list[str]] = []
    for name, value in entries.items():
        for group in groups:
            if _same(entries[group[0]], value):
                group.append(name)
                break
        else:
            groups.append([name])
    return [group for group in groups if len(group) > 1]


def _same(first: Any, second: Any) -> bool:
    """Whether two entries are one tensor: the same object, or views of the same memory with
    the same offset, shape, strides and dtype (a ``state_dict``'s detached tensors, the
    ``.numpy()`` of one tensor taken twice)."""
    if first is second:
        return True
    if isinstance(first, np.ndarray) and isinstance(second, np.ndarray):
        return (first.dtype == second.dtype and first.shape == second.shape
                and first.strides == second.strides
                and first.__array_interface__["data"][0] == second.__array_interface__["data"][0])
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)):
        return False
    if first.device != second.device or first.device.type == "meta":
        return False      # a meta tensor has no storage to compare
    return (first.dtype == second.dtype and first.shape == second.shape
            and first.stride() == second.stride()
            and first.storage_offset() == second.storage_offset()
            and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr())


def _numpy(value: Any) -> np.ndarray:
    """A tensor or array as a NumPy copy (detached, on the CPU), its dtype kept."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return np.array(value)
