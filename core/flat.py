"""Flat parameters: all floating parameters of a module in one contiguous tensor.

    flow = flatten_parameters(maf(2))          # in place; returns the module
    opt = torch.optim.Adam(flow.parameters())  # steps one tensor instead of dozens

After :func:`flatten_parameters`, the module has one ``nn.Parameter`` per (dtype, device,
requires_grad) group, ``flat_parameters_0`` etc., and every sub-module still reads its weights
under their old names (``layer.weight``): they are views of the flat tensor, re-made by one
``split`` whenever the flat tensor changed (an optimiser step, ``load_state_dict``, ``.to()``)
or the grad mode did. Autograd then sums the gradient into the flat tensor in one step
(one ``cat`` instead of one accumulation per tensor), and an optimiser, gradient clipping and
an EMA each touch one tensor.

When it helps: models of many small tensors trained with per-tensor optimiser loops, above all
on the CPU, where ``torch.optim.Adam`` steps tensor by tensor (it is not ``foreach`` there) and
each step of a small tensor costs microseconds of overhead: an 8-step MAF of hidden width 64
has 48 parameter tensors. On a GPU the fused/foreach optimisers already batch the tensors, so
the gain is smaller (fewer kernel launches in the backward and in clipping). For models of a
few large tensors it changes nothing measurable.

What stays the same: ``state_dict()`` has the ordinary per-layer names and shapes (checkpoints
are interchangeable with the unflattened model), ``load_state_dict`` takes them, gradients are
identical, ``inverse``/``sample``/context work, ``torch.compile`` traces it without graph breaks,
``copy.deepcopy`` works (the EMA copy), and the version counter of a view is the flat tensor's,
so caches keyed on parameter versions (``InvertibleLinear``'s inverse) see optimiser steps.

What changes: ``parameters()`` yields the flat tensors, so per-tensor optimiser settings (weight
decay on matrices only, per-layer learning rates) need :func:`flatten_parameters`'s ``group``
to keep such tensors in separate flat tensors. Flatten after construction and initialisation:
assigning a new ``nn.Parameter`` to a flattened name is refused, and a layer that sets its
parameters from the first batch (``ActNorm``) must have seen it (``Trainer`` does this before
it flattens) or see it under ``torch.no_grad()``, since writing into one view changes the
version of all of them within a graph that is being recorded. Pickling the whole module
(``torch.save(model)``) is not supported (its sub-modules' classes are generated); save the
``state_dict`` or use ``save_model``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor, nn

_PREFIX = "flat_parameters_"
_GENERATED: dict[tuple[type, frozenset[str], bool], type] = {}


class _FlatGroup:
    """One flat parameter of ``root`` and the views of it that sub-modules read."""

    def __init__(self, root: nn.Module, name: str, shapes: list[torch.Size]):
        self.root, self.name, self.shapes = root, name, shapes
        self.numels = [s.numel() for s in shapes]
        self.offsets = [sum(self.numels[:i]) for i in range(len(shapes))]
        self._flat: Tensor | None = None
        self.trace_views: list[Tensor] | None = None
        self._key: tuple = ()
        self._views: list[Tensor] = []

    def flat(self) -> Tensor:
        return self.root._parameters[self.name]

    def views(self) -> list[Tensor]:
        """Views ``(shape_i)`` of the flat tensor, made anew when it or the grad mode changed."""
        flat = self.root._parameters[self.name]
        key = (flat.data_ptr(), flat._version, torch.is_grad_enabled(),
               torch.is_inference_mode_enabled(), flat.requires_grad)
        if flat is not self._flat or key != self._key:
            self._views = self.split()
            self._flat, self._key = flat, key
        return self._views

    def split(self) -> list[Tensor]:
        return _shaped(self.flat().split(self.numels), self.shapes)

    def view(self, i: int) -> Tensor:
        if torch.compiler.is_compiling():
            # Traced code keeps no cache across calls. Within a call through one of the root's
            # methods, one split serves every view (its backward is one cat); elsewhere each
            # use slices (correct, but its backward sums one full-size tensor per view).
            if self.trace_views is not None:
                return self.trace_views[i]
            return self.flat().narrow(0, self.offsets[i], self.numels[i]).view(self.shapes[i])
        return self.views()[i]

    def __getstate__(self) -> dict[str, Any]:
        # Views are derived data (and non-leaf tensors, which deepcopy refuses).
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_flat", "_key", "_views", "trace_views")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _flat=None, _key=(), _views=[], trace_views=None)


def _shaped(chunks: tuple[Tensor, ...], shapes: list[torch.Size]) -> list[Tensor]:
    """The chunks of a split in their parameters' shapes; a vector's chunk is used as it is
    (no view node for autograd to walk back through: half the nodes of an MLP's parameters)."""
    return [c if c.shape == s else c.view(s) for c, s in zip(chunks, shapes, strict=True)]


def _flat_property(name: str) -> property:
    def get(self: nn.Module) -> Tensor:
        group, i = self.__dict__["_flat_slots"][name]
        return group.view(i)

    def set_(self: nn.Module, value: Any) -> None:
        raise AttributeError(f"{name!r} of this module is a view of a flat parameter "
                             "(flatten_parameters); copy values into it under torch.no_grad() "
                             "or unflatten_parameters() first")

    return property(get, set_, doc=f"``{name}``: a view of the module's flat parameter.")


def _entry(method: Callable) -> Callable:
    """Wraps a public method of the flattened root: under ``torch.compile`` it splits the flat
    tensors once for the whole call."""
    @functools.wraps(method)
    def call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        groups = self.__dict__["_flat_groups"]
        if not torch.compiler.is_compiling() or groups[0].trace_views is not None:
            return method(self, *args, **kwargs)
        for g in groups:
            g.trace_views = g.split()
        try:
            return method(self, *args, **kwargs)
        finally:
            for g in groups:
                g.trace_views = None

    return call


def _root_methods(cls: type) -> dict[str, Callable]:
    """The public methods (and ``forward``) that ``cls`` defines above ``nn.Module``."""
    out: dict[str, Callable] = {}
    for klass in reversed(cls.__mro__):
        if klass in nn.Module.__mro__:
            continue
        for name, value in vars(klass).items():
            if inspect.isfunction(value) and (name == "forward" or not name.startswith("_")):
                out[name] = value
    return out


def _swap_class(module: nn.Module, names: frozenset[str], root: bool = False) -> None:
    cls = type(module)
    key = (cls, names, root)
    if key not in _GENERATED:
        attrs: dict[str, Any] = {n: _flat_property(n) for n in names}
        if root:
            attrs.update({n: _entry(f) for n, f in _root_methods(cls).items()})
        attrs["_flat_original_class"] = cls
        _GENERATED[key] = type(f"Flat{cls.__name__}", (cls,), attrs)
    module.__class__ = _GENERATED[key]


def is_flattened(module: nn.Module) -> bool:
    """Whether ``module`` or any module inside it has flat parameters."""
    return any("_flat_slots" in m.__dict__ or "_flat_groups" in m.__dict__
               for m in module.modules())


def flatten_parameters(module: nn.Module,
                       group: Callable[[str, nn.Parameter], Hashable] | None = None
                       ) -> nn.Module:
    """Moves every parameter of ``module`` into flat ``nn.Parameter`` tensors, in place.

    Parameters are grouped by dtype, device and ``requires_grad`` (one flat tensor per group,
    in ``named_parameters`` order); ``group(name, parameter)`` may split them further, e.g.
    ``lambda n, p: p.ndim >= 2`` keeps matrices apart for weight decay. Tied parameters stay
    tied (one slot). Returns ``module``. See the module docstring for what changes.
    """
    if is_flattened(module):
        raise ValueError("this module (or one inside it) has flat parameters already")
    named = list(module.named_parameters(remove_duplicate=True))
    if not named:
        return module
    keys: dict[Hashable, list[tuple[str, nn.Parameter]]] = {}
    for name, p in named:
        k = (p.dtype, p.device, p.requires_grad, group(name, p) if group else None)
        keys.setdefault(k, []).append((name, p))
    owners = {id(p): [] for _, p in named}  # every (module, attribute) holding each parameter
    for mod in module.modules():
        for attr, p in mod._parameters.items():
            if p is not None:
                owners[id(p)].append((mod, attr))
    state_keys = list(module.state_dict(keep_vars=True))
    slot_of: dict[int, tuple[_FlatGroup, int]] = {}
    groups: list[_FlatGroup] = []
    for gi, members in enumerate(keys.values()):
        params = [p for _, p in members]
        g = _FlatGroup(module, f"{_PREFIX}{gi}", [p.shape for p in params])
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params])
        slot_of.update({id(p): (g, i) for i, p in enumerate(params)})
        groups.append(g)
        new = nn.Parameter(flat, requires_grad=params[0].requires_grad)
        for p in params:
            for mod, attr in owners[id(p)]:
                del mod._parameters[attr]
        module.register_parameter(g.name, new)
    # Which slot every (module, attribute) reads.
    for _, p in named:
        for mod, attr in owners[id(p)]:
            mod.__dict__.setdefault("_flat_slots", {})[attr] = slot_of[id(p)]
    for mod in module.modules():
        slots = mod.__dict__.get("_flat_slots", {})
        if slots or mod is module:
            _swap_class(mod, frozenset(slots), root=mod is module)
    # state_dict key of each slot, in the original order.
    prefix_of = {id(m): n for n, m in module.named_modules(remove_duplicate=False)}
    slot_keys: list[tuple[str, _FlatGroup, int]] = []
    for mod in module.modules():
        for attr, (g, i) in mod.__dict__.get("_flat_slots", {}).items():
            pre = prefix_of[id(mod)]
            key = f"{pre}.{attr}" if pre else attr
            if key in state_keys:
                slot_keys.append((key, g, i))
    module.__dict__["_flat_groups"] = groups
    module.__dict__["_flat_state_keys"] = state_keys
    module.__dict__["_flat_slot_keys"] = slot_keys
    module.__dict__["_flat_hooks"] = (
        module.register_state_dict_post_hook(_state_dict_hook),
        module.register_load_state_dict_pre_hook(_load_state_dict_hook))
    return module


def _state_dict_hook(module: nn.Module, state: dict[str, Any], prefix: str,
                     local_metadata: dict) -> None:
    """Replaces the flat tensors in ``state`` by the per-layer tensors, in the original order."""
    views = {id(g): g.views() if not torch.compiler.is_compiling() else None
             for g in module.__dict__["_flat_groups"]}
    by_key = {key: (g, i) for key, g, i in module.__dict__["_flat_slot_keys"]}
    for g in module.__dict__["_flat_groups"]:
        state.pop(prefix + g.name, None)
    rest = {k: state.pop(k) for k in list(state) if k.startswith(prefix)}
    for key in module.__dict__["_flat_state_keys"]:
        if key in by_key:
            g, i = by_key[key]
            state[prefix + key] = views[id(g)][i].detach()
        elif prefix + key in rest:
            state[prefix + key] = rest.pop(prefix + key)
    state.update(rest)


def _load_state_dict_hook(module: nn.Module, state: dict[str, Any], prefix: str,
                          local_metadata: dict, strict: bool, missing: list[str],
                          unexpected: list[str], errors: list[str]) -> None:
    """Assembles the flat tensors from per-layer entries of ``state`` (a missing or misshapen
    entry keeps the current value and is reported as ``load_state_dict`` reports them)."""
    for g in module.__dict__["_flat_groups"]:
        if prefix + g.name in state:  # a state of the flat layout itself
            continue
        with torch.no_grad():
            parts = [v.detach().reshape(-1) for v in g.views()]
        found = False
        for key, kg, i in module.__dict__["_flat_slot_keys"]:
            if kg is not g:
                continue
            full = prefix + key
            if full not in state:
                missing.append(full)
                continue
            value = state.pop(full)
            if not isinstance(value, Tensor) or value.shape != g.shapes[i]:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value)
                errors.append(f"size mismatch for {full}: copying a param with shape {shape} "
                              f"from checkpoint, the shape in current model is "
                              f"{tuple(g.shapes[i])}.")
                continue
            parts[i] = value.reshape(-1)
            found = True
        if found:
            flat = g.flat()
            state[prefix + g.name] = torch.cat([p.to(flat.device, flat.dtype) for p in parts])
        else:
            # Nothing for this group: let load_state_dict report the per-layer names only.
            state[prefix + g.name] = g.flat().detach()


def unflatten_parameters(module: nn.Module) -> nn.Module:
    """Undoes :func:`flatten_parameters` in place: every sub-module gets ordinary parameters
    again (copies of the current values; tied parameters stay tied). Returns ``module``."""
    groups = module.__dict__.get("_flat_groups")
    if groups is None:
        raise ValueError("this module has no flat parameters (flatten_parameters was not called "
                         "on it)")
    with torch.no_grad():
        values = {id(g): [v.detach().clone() for v in g.views()] for g in groups}
    made: dict[tuple[int, int], nn.Parameter] = {}
    module.__class__ = module._flat_original_class
    for mod in module.modules():
        slots = mod.__dict__.pop("_flat_slots", None)
        if not slots:
            continue
        if hasattr(mod, "_flat_original_class"):
            mod.__class__ = mod._flat_original_class
        for attr, (g, i) in slots.items():
            if (id(g), i) not in made:
                made[(id(g), i)] = nn.Parameter(values[id(g)][i],
                                                requires_grad=g.flat().requires_grad)
            mod._parameters[attr] = made[(id(g), i)]
    for h in module.__dict__.pop("_flat_hooks"):
        h.remove()
    for g in groups:
        del module._parameters[g.name]
    for k in ("_flat_groups", "_flat_state_keys", "_flat_slot_keys"):
        module.__dict__.pop(k, None)
    return module


def flat_parameter_shapes(module: nn.Module) -> dict[nn.Parameter, list[torch.Size]]:
    """Every flat parameter inside ``module`` with the shapes of the tensors it holds (for
    per-tensor decisions such as weight decay on matrices only)."""
    out: dict[nn.Parameter, list[torch.Size]] = {}
    for m in module.modules():
        for g in m.__dict__.get("_flat_groups", ()):
            out[g.flat()] = list(g.shapes)
    return out
