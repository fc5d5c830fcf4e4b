"""Model checkpoints: weights in safetensors, the model's name and configuration in its metadata.

A checkpoint rebuilds its model from the file alone and loading never unpickles code. A model is
checkpointable when its class is registered with :func:`register_model` and its constructor takes
JSON-serialisable keyword arguments that it exposes as ``model.config``; :class:`Configurable`
records them automatically::

    @register_model("gaussian")
    class Gaussian(Configurable, nn.Module):
        def __init__(self, dim: int = 2):
            super().__init__()
            ...

    save_model(Gaussian(dim=3), "g.safetensors")
    model = load_model("g.safetensors", expected="gaussian")   # Gaussian(dim=3), weights loaded

Training state (optimizer, step, random generators, EMA weights) is stored separately with
:func:`save_training_state` as plain tensors and containers that load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from flowsuite.core.errors import CheckpointError, FlowsuiteError
from flowsuite.core.io import atomic_path

FORMAT_VERSION = 1
# Metadata keys written by flowsuite; user metadata may not use them.
_KEY_FORMAT = "flowsuite.format"
_KEY_MODEL = "flowsuite.model"
_KEY_CLASS = "flowsuite.class"
_KEY_CONFIG = "flowsuite.config"
_KEY_VERSION = "flowsuite.version"
_KEY_DTYPE = "flowsuite.dtype"
_KEY_ALIASES = "flowsuite.aliases"
_RESERVED = {"format", _KEY_FORMAT, _KEY_MODEL, _KEY_CLASS, _KEY_CONFIG, _KEY_VERSION, _KEY_DTYPE,
             _KEY_ALIASES}
# A safetensors header longer than this is taken as a sign the file is not safetensors at all.
_MAX_HEADER = 100 * 1024 * 1024

M = TypeVar("M", bound=type)

_REGISTRY: dict[str, type[nn.Module]] = {}


# --------------------------------------------------------------------------------------------
# Registry and configuration


class Configurable:
    """Mixin that records the constructor's keyword arguments as ``self.config`` (a dict).

    Put it before ``nn.Module`` in the bases. Positional arguments are recorded by their names,
    defaults are filled in, and ``**kwargs`` are flattened into the dict, so
    ``type(model)(**model.config)`` builds an equal model. For a subclass chain the outermost
    constructor's arguments win. Values should be JSON-serialisable (tuples come back as lists).
    """

    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            self.config = _bound_config(signature, self, args, kw, cls.__qualname__)

        recording_init._records_config = True  # type: ignore[attr-defined]
        cls.__init__ = recording_init  # type: ignore[misc]


def _bound_config(signature: inspect.Signature, self: Any, args: tuple, kwargs: dict,
                  owner: str) -> dict[str, Any]:
    bound = signature.bind(self, *args, **kwargs)
    bound.apply_defaults()
    config: dict[str, Any] = {}
    for i, (name, param) in enumerate(signature.parameters.items()):
        if i == 0:  # self
            continue
        value = bound.arguments.get(name)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"{owner}: *{name} cannot be recorded in a config; "
                                "take these arguments by keyword")
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            config.update(value or {})
        else:
            config[name] = value
    try:  # normalise to what a checkpoint gives back (tuples -> lists), and copy
        return json.loads(json.dumps(config))
    except (TypeError, ValueError):
        return config  # not checkpointable; save_model says so if it is ever asked to


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: registers a checkpointable model class under ``name``.

    The name is what checkpoints record and what ``load_model(expected=...)`` checks. Registering
    another class under a taken name is an error; re-registering the same class (a module reload)
    is allowed.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a model name is a non-empty string without outer spaces: {name!r}")

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_model({name!r}) decorates nn.Module classes, not {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and _class_path(old) != _class_path(cls):
            raise ValueError(f"model name {name!r} is already taken by {_class_path(old)}")
        _REGISTRY[name] = cls
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def registered_models() -> list[str]:
    """The names of all registered model classes, sorted."""
    return sorted(_REGISTRY)


def model_class(model: nn.Module) -> type:
    """``model``'s own class: for a model with flat parameters (``flatten_parameters``), the
    class it had before (flattening gives it a generated subclass)."""
    return type(model).__dict__.get("_flat_original_class", type(model))


def model_name_of(model: nn.Module) -> str | None:
    """The registered name of ``model``'s class, or ``None`` if it is not registered."""
    for name, cls in _REGISTRY.items():
        if model_class(model) is cls:
            return name
    return None


def build_model(name: str, config: Mapping[str, Any]) -> nn.Module:
    """Builds the registered model ``name`` from its keyword arguments ``config``."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise FlowsuiteError(f"unknown model {name!r}; known models: {_known()}")
    return cls(**dict(config))


def _known() -> str:
    return ", ".join(registered_models()) or "none registered"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _flowsuite_version() -> str:
    try:
        return version("flowsuite")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# Saving


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says.

    ``model`` and ``config`` are ``None`` for the weights of an unregistered model class.
    ``user`` holds the metadata given to :func:`save_model`.
    """

    path: Path
    format: int
    model: str | None
    model_class: str
    config: dict[str, Any] | None
    version: str
    dtype: str | None
    user: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def save_model(model: nn.Module, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
               metadata: Mapping[str, str] | None = None, force: bool = True) -> Path:
    """Writes ``model``'s parameters and persistent buffers to a safetensors file, atomically.

    The metadata records a format tag, the registered model name and its JSON config (when the
    class is registered), the flowsuite version and ``metadata`` (str -> str). With
    ``dtype=torch.float16`` (or bfloat16) floating-point tensors are stored in that precision;
    loading casts them back to the model's dtype. Tensors that share memory are stored once.
    With ``force=False`` an existing file is an error. A model wrapped by ``torch.compile`` or
    ``DistributedDataParallel`` is saved as the model inside. Returns the path.
    """
    model = unwrap(model)
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, not {dtype}")
    user = dict(metadata or {})
    for k, v in user.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"checkpoint metadata maps str to str; got {k!r}: {v!r}")
        if k in _RESERVED:
            raise ValueError(f"metadata key {k!r} is reserved by flowsuite")

    meta = {"format": "pt", _KEY_FORMAT: str(FORMAT_VERSION),
            _KEY_CLASS: _class_path(model_class(model)), _KEY_VERSION: _flowsuite_version()}
    name = model_name_of(model)
    if name is not None:
        config = getattr(model, "config", None)
        if not isinstance(config, dict):
            raise TypeError(f"{type(model).__name__} is registered as {name!r} but has no `config` "
                            "dict; derive it from Configurable or set self.config in __init__")
        try:
            meta[_KEY_CONFIG] = json.dumps(config, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"the config of model {name!r} is not JSON-serialisable: {e}") from e
        meta[_KEY_MODEL] = name
    if dtype is not None:
        meta[_KEY_DTYPE] = str(dtype).removeprefix("torch.")

    tensors, aliases = _storable_state(model.state_dict(), dtype)
    if aliases:
        meta[_KEY_ALIASES] = json.dumps(aliases, sort_keys=True)
    meta.update(user)
    with atomic_path(path, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _storable_state(state: Mapping[str, Tensor], dtype: torch.dtype | None
                    ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Detached, contiguous CPU copies of ``state``; a tensor identical to an earlier one (tied
    weights) becomes an alias ``{name: earlier name}`` instead of a second copy."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        t = t.detach()
        if t.numel() > 0:
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                   t.stride(), t.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        if dtype is not None and t.is_floating_point():
            t = _narrowed(name, t, dtype)
        # A fresh, contiguous CPU copy: partly overlapping views must not share memory in the file.
        tensors[name] = t.to("cpu", copy=True).contiguous()
    return tensors, aliases


def _narrowed(name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``; an error when a finite value does not fit (float16 ends at 65504)."""
    out = t.to(dtype)
    if t.dtype.itemsize > dtype.itemsize and bool((torch.isfinite(t) & ~torch.isfinite(out)).any()):
        big = t[torch.isfinite(t)].abs().max().item()
        raise FlowsuiteError(f"tensor {name} holds values up to {big:.4g}, beyond the range of "
                             f"{str(dtype).removeprefix('torch.')}; store the model in bfloat16 "
                             "or float32")
    return out


# --------------------------------------------------------------------------------------------
# Loading


def model_file(path: str | os.PathLike) -> Path:
    """The weights file a path names: a ``.safetensors`` file, or a training run's folder (its
    final ``model.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FlowsuiteError(f"model file {p} does not exist; give a training run's folder or "
                             "its model.safetensors")
    return p


def read_metadata(path: str | os.PathLike) -> CheckpointInfo:
    """Reads and checks a checkpoint's metadata without loading its weights.

    Raises ``CheckpointError`` (one line) for a missing, truncated, corrupt or foreign file.
    """
    p = Path(path)
    header = _read_header(p)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or _KEY_FORMAT not in meta:
        raise CheckpointError(f"{p} is a safetensors file but not a flowsuite checkpoint (it has "
                              "no flowsuite metadata); give a model file saved by flowsuite")
    try:
        fmt = int(meta[_KEY_FORMAT])
    except ValueError:
        raise CheckpointError(f"{p} has an unreadable format tag {meta[_KEY_FORMAT]!r}; "
                              "the file is damaged, save the model again") from None
    if fmt > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer flowsuite (format {fmt}, this one reads "
                              f"{FORMAT_VERSION}); upgrade flowsuite to load it")
    try:
        config = json.loads(meta[_KEY_CONFIG]) if _KEY_CONFIG in meta else None
        aliases = json.loads(meta[_KEY_ALIASES]) if _KEY_ALIASES in meta else {}
    except json.JSONDecodeError:
        raise CheckpointError(f"{p} has a damaged model configuration in its metadata; "
                              "save the model again") from None
    user = {k: v for k, v in meta.items() if k not in _RESERVED}
    return CheckpointInfo(path=p, format=fmt, model=meta.get(_KEY_MODEL),
                          model_class=meta.get(_KEY_CLASS, "unknown"), config=config,
                          version=meta.get(_KEY_VERSION, "unknown"), dtype=meta.get(_KEY_DTYPE),
                          user=user, aliases=aliases)


def load_model(path: str | os.PathLike, *, expected: str | tuple[str, ...] | None = None,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuilds the model saved in ``path`` from its metadata and loads its weights strictly.

    ``expected`` names the model (or models) the caller can use; a checkpoint of another model is
    a ``CheckpointError``. The model comes back in eval mode on ``map_location``, in the dtype its
    constructor gives (half-precision files are cast back).
    """
    info = read_metadata(path)
    p = info.path
    if info.model is None:
        raise CheckpointError(f"{p} holds the weights of an unregistered model "
                              f"({info.model_class}) and cannot be rebuilt from the file; build "
                              "that model yourself and use load_weights(model, path)")
    _check_expected(info, expected)
    cls = _REGISTRY.get(info.model)
    if cls is None:
        _import_defining_module(info.model_class)
        cls = _REGISTRY.get(info.model)
    if cls is None:
        raise CheckpointError(f"{p} holds a model {info.model!r} that this flowsuite does not know "
                              f"(known: {_known()}); upgrade flowsuite or check the file")
    try:
        model = cls(**(info.config or {}))
    except Exception as e:  # noqa: BLE001 - any constructor failure means the config does not fit
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{p}: its configuration does not fit model {info.model!r} ({msg}); "
                              "the file may come from another flowsuite version") from e
    _load_state(model, p, info)
    return model.to(map_location).eval()


def load_weights(model: nn.Module, path: str | os.PathLike, *,
                 expected: str | tuple[str, ...] | None = None) -> nn.Module:
    """Loads the weights in ``path`` into an existing ``model`` (strictly) and returns it.

    Works for unregistered models too; the tensors are cast to the model's dtypes and devices.
    """
    info = read_metadata(path)
    _check_expected(info, expected)
    _load_state(model, info.path, info)
    return model


def transfer_weights(source: nn.Module, target: nn.Module, what: str = "model") -> None:
    """Copies into ``target`` every weight and buffer of ``source`` whose name it shares (a
    trained model into a grown architecture: the new parts keep their initialisation).

    A new layer that can be the identity (one with a ``reset_identity()`` method, such as
    ``ActNorm`` and ``InvertibleLinear``) is made the identity, so flow steps added to a trained
    flow (whose couplings start at zero as built) leave what it computes unchanged at first.
    Raises ``FlowsuiteError`` when a shared entry's shape differs (a change of size cannot start
    from the trained weights); ``what`` names the source in that message.
    """
    own, theirs = target.state_dict(), source.state_dict()
    for name, value in theirs.items():
        if name in own and own[name].shape != value.shape:
            raise FlowsuiteError(f"cannot start from the trained {what}: its {name} is "
                                 f"{tuple(value.shape)}, the new model's {tuple(own[name].shape)}")
    target.load_state_dict({k: v for k, v in theirs.items() if k in own}, strict=False)
    for prefix, module in target.named_modules():
        if (callable(getattr(module, "reset_identity", None))
                and not any(k.startswith(f"{prefix}.") for k in theirs)):
            module.reset_identity()


def _check_expected(info: CheckpointInfo, expected: str | tuple[str, ...] | None) -> None:
    if expected is None:
        return
    names = (expected,) if isinstance(expected, str) else tuple(expected)
    if info.model in names:
        return
    what = f"a {info.model}" if info.model else f"an unregistered ({info.model_class})"
    need = f"a {names[0]} model" if len(names) == 1 else f"one of: {', '.join(names)}"
    raise CheckpointError(f"{info.path} is {what} checkpoint; this command needs {need}")


def _import_defining_module(class_path: str) -> None:
    """Imports the flowsuite module that defines a checkpoint's class so that it registers itself.

    Only modules inside flowsuite are imported: a file's metadata never chooses arbitrary code.
    """
    module = class_path.rpartition(".")[0]
    if not module.startswith("flowsuite."):
        return
    try:
        importlib.import_module(module)
    except ImportError:
        pass


def _load_state(model: nn.Module, path: Path, info: CheckpointInfo) -> None:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged data
        raise CheckpointError(f"{path} is damaged ({str(e).splitlines()[0] if str(e) else e!r}); "
                              "save or copy it again") from None
    for name, target in info.aliases.items():
        if target in state:
            state[name] = state[target]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append("missing " + _few(missing))
        if unexpected:
            parts.append("unexpected " + _few(unexpected))
        if wrong:
            parts.append("shape of " + _few(wrong))
        what = repr(info.model) if info.model else type(model).__name__
        raise CheckpointError(f"{path} does not fit model {what}: {'; '.join(parts)}; "
                              "it was saved from a differently configured model")
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _read_header(p: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, with the file checked for truncation."""
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; check the path")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; give the path of a .safetensors model file")
    size = p.stat().st_size
    not_st = f"{p} is not a safetensors model file; give a model file saved by flowsuite"
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{p} is empty or truncated ({size} bytes); "
                                      "save or copy it again")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER:
                raise CheckpointError(not_st)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{p} cannot be read ({e.strerror}); check its permissions") from None
    if not raw.startswith(b"{"):
        raise CheckpointError(not_st)
    if len(raw) < n:
        raise CheckpointError(f"{p} is truncated ({size} bytes, the header alone needs {8 + n}); "
                              "save or copy it again")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(not_st) from None
    if not isinstance(header, dict):
        raise CheckpointError(not_st)
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            end = max(end, int(v["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(not_st) from None
    if size < 8 + n + end:
        raise CheckpointError(f"{p} is truncated ({size} of {8 + n + end} bytes); "
                              "save or copy it again")
    return header


# --------------------------------------------------------------------------------------------
# Training state


def save_training_state(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Writes a training state (tensors, numbers, strings, lists, tuples and dicts of them)
    atomically with ``torch.save``; it loads back with ``weights_only=True``."""
    with atomic_path(path, force=True) as tmp:
        torch.save(dict(state), tmp)
    return Path(path)


def load_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                        ) -> dict[str, Any]:
    """Reads a training state written by :func:`save_training_state` without unpickling code."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} does not exist; the run has no training state to resume from")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{p} is not a readable training state ({msg}); "
                              "resume from another checkpoint or start a new run") from None
