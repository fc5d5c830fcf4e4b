"""Pack a trained model into the package: data/models/<name>.safetensors plus its model card.

    python recipes/pack.py RUN_OR_MODEL --name NAME --card CARD.md [--dtype float16] \
        [--set KEY=JSON ...] [--force]

RUN_OR_MODEL is a training run's folder (its model.safetensors) or a model file. The weights are
stored in half precision (float16) unless --dtype says otherwise; the metadata of the file (the
categories and normalisation of a point-cloud model, for instance) is kept. The card must have
every required front-matter field (recipes/README.md); its ``model`` must be the model in the file
and its ``parameters`` the model's parameter count. ``--set KEY=JSON`` writes a value into the
model's config, for settings measured after training that the packed model should carry (a mel
prior's per-style sampling ``temperatures``); the weights must load into the model so built. A
file over 25 MB, or a set of shipped files over 80 MB, is refused. Errors end in one line and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowsuite.core.checkpoint import (
    build_model,
    load_model,
    model_file,
    read_metadata,
    save_model,
)
from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.io import atomic_path, check_writable
from flowsuite.data import pretrained as pt

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}


def parse_settings(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=JSON`` items -> a dict; a ``FlowsuiteError`` for one that is not so."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise FlowsuiteError(f"--set takes KEY=JSON, e.g. temperatures='{{\"chorale\": 1.0}}', "
                                 f"not {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError as e:
            raise FlowsuiteError(f"--set {key.strip()}: {value!r} is not JSON ({e.msg})") from None
    return out


def with_settings(model: torch.nn.Module, name: str, settings: dict[str, Any]
                  ) -> torch.nn.Module:
    """``model`` rebuilt with ``settings`` over its config (registered as ``name``), its
    weights loaded strictly; a ``FlowsuiteError`` for a key the config lacks or a value the
    model refuses."""
    if not settings:
        return model
    config = dict(model.config)
    if unknown := sorted(set(settings) - set(config)):
        raise FlowsuiteError(f"--set: {', '.join(unknown)} not in the {name} model's config "
                             f"(it has {', '.join(sorted(config))})")
    try:
        rebuilt = build_model(name, {**config, **settings})
        rebuilt.load_state_dict(model.state_dict())
    except (ValueError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlowsuiteError(f"--set: the model refuses {settings}: {first}") from None
    return rebuilt.eval()


def pack(source: str | os.PathLike, name: str, card_file: str | os.PathLike,
         dtype: str = "float16", force: bool = False, models_dir: Path | None = None,
         settings: dict[str, Any] | None = None) -> Path:
    """Writes ``models_dir/<name>.safetensors`` (default: the package's models folder) and its card;
    returns the weights' path. ``settings`` are written into the model's config (see the
    module's doc). A ``FlowsuiteError`` (one line) for anything that does not fit."""
    if name not in pt.SHIPPED:
        raise FlowsuiteError(f"--name must be one of {', '.join(pt.SHIPPED)}, not {name!r}")
    if dtype not in DTYPES:
        raise FlowsuiteError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out_dir = Path(models_dir) if models_dir is not None else pt.MODELS_DIR
    target, card_target = out_dir / f"{name}.safetensors", out_dir / f"{name}.md"
    for p in (target, card_target):
        check_writable(p, force)
    card = pt.read_card(card_file).check()

    src = model_file(source)
    info = read_metadata(src)
    want = pt.MODEL_OF[name]
    if info.model != want:
        raise FlowsuiteError(f"{src} holds a {info.model or 'unregistered'} model; the shipped "
                             f"{name} must be a {want} model")
    if card.fields["model"] != want:
        raise FlowsuiteError(f"{card_file} says model: {card.fields['model']}, but the shipped "
                             f"{name} is a {want} model; write model: {want}")
    model = with_settings(load_model(src, expected=want), want, settings or {})
    count = sum(p.numel() for p in model.parameters())
    if card.parameter_count() != count:
        raise FlowsuiteError(f"{card_file} says parameters: {card.fields['parameters']}, but the "
                             f"model in {src} has {count}; write parameters: {count}")

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        packed = save_model(model, Path(tmp) / target.name, dtype=DTYPES[dtype],
                            metadata=info.user)
        size = packed.stat().st_size
        if size > pt.MAX_FILE_BYTES:
            raise FlowsuiteError(f"{name} packs to {size / 1e6:.1f} MB in {dtype}, over the "
                                 f"{pt.MAX_FILE_BYTES / 1e6:.0f} MB limit of one shipped file; "
                                 "ship a smaller model")
        others = sum(p.stat().st_size for p in out_dir.iterdir()
                     if p.is_file() and p.name not in (target.name, card_target.name))
        total = others + size + Path(card_file).stat().st_size
        if total > pt.MAX_TOTAL_BYTES:
            raise FlowsuiteError(f"with {name} the shipped models come to {total / 1e6:.1f} MB, "
                                 f"over the {pt.MAX_TOTAL_BYTES / 1e6:.0f} MB limit of the set; "
                                 "ship smaller models")
        change = _largest_change(model, load_model(packed))
        os.replace(packed, target)
    with atomic_path(card_target, force=True) as tmp_card:
        tmp_card.write_text(Path(card_file).read_text(encoding="utf-8"), encoding="utf-8")
    print(f"packed {src} -> {target} ({size / 1e6:.2f} MB, {dtype}, {count:,} parameters; "
          f"largest relative weight change {change:.2e}) and {card_target}")
    return target


def _largest_change(model: torch.nn.Module, packed: torch.nn.Module) -> float:
    """The largest change of a floating-point tensor through packing, relative to its largest
    magnitude; an error when packing made a tensor non-finite."""
    worst = 0.0
    ours = packed.state_dict()
    for key, t in model.state_dict().items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        q = ours[key].to(t.dtype)
        if not torch.isfinite(q).all() and torch.isfinite(t).all():
            raise FlowsuiteError(f"packing made {key} non-finite; use --dtype bfloat16 or float32")
        scale = t.abs().max().item()
        if scale > 0:
            worst = max(worst, (q - t).abs().max().item() / scale)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="RUN_OR_MODEL",
                        help="a training run's folder or its model.safetensors")
    parser.add_argument("--name", required=True, help=f"one of {', '.join(pt.SHIPPED)}")
    parser.add_argument("--card", required=True, help="the model card (Markdown, see README)")
    parser.add_argument("--dtype", default="float16", choices=list(DTYPES),
                        help="storage precision of floating-point weights (default float16)")
    parser.add_argument("--set", dest="settings", action="append", metavar="KEY=JSON",
                        help="write a value into the model's config (repeatable), e.g. "
                             "temperatures='{\"chorale\": 1.0}' for a mel prior")
    parser.add_argument("--force", action="store_true", help="replace a packed model")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where to write (default: the package's data/models)")
    args = parser.parse_args(argv)
    try:
        pack(args.source, args.name, args.card, args.dtype, args.force, args.models_dir,
             parse_settings(args.settings))
    except FlowsuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
