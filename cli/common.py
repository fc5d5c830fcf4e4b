"""Helpers shared by the gen commands."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from flowsuite.core.checkpoint import model_file as model_file  # re-exported for the commands
from flowsuite.core.errors import FlowsuiteError

F = TypeVar("F", bound=Callable[..., Any])


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` is CUDA when present, else the CPU; ``cuda`` without CUDA is an
    error a user can fix."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FlowsuiteError("--device cuda was asked for but CUDA is not available; use "
                             "--device cpu or check the GPU driver")
    return name


def category_list(text: str | None) -> list[str] | None:
    """``--categories a,b``: the names, or ``None`` (all) when not given."""
    if not text:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise FlowsuiteError("--categories is empty; give names separated by commas")
    return names


# ---- --config FILE.toml -----------------------------------------------------------------------

def read_config(path: Path) -> dict[str, Any]:
    """The top-level ``key = value`` pairs of a TOML recipe; a one-line error for a missing or
    malformed file."""
    import tomllib

    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise FlowsuiteError(f"--config {path} does not exist; give a TOML recipe file") from None
    except IsADirectoryError:
        raise FlowsuiteError(f"--config {path} is a folder; give a TOML recipe file") from None
    except tomllib.TOMLDecodeError as e:
        raise FlowsuiteError(f"--config {path} is not valid TOML ({e}); fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FlowsuiteError(f"--config {path} cannot be read ({e})") from None
    for key, value in values.items():
        if isinstance(value, dict):
            raise FlowsuiteError(f"--config {path}: [{key}] is a table; a recipe holds plain "
                                 "`option = value` lines")
    return values


def _apply_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Eager callback of ``--config``: the file's values become the command's option defaults,
    so options given on the command line still win."""
    if value is None:
        return
    options: dict[str, click.Option] = {}
    for p in ctx.command.params:
        if isinstance(p, click.Option) and p is not param and p.name:
            options[p.name] = p
            options.update({o[2:]: p for o in p.opts if o.startswith("--")})
    defaults = dict(ctx.default_map or {})
    for key, raw in read_config(value).items():
        option = options.get(key)
        if option is None:
            known = sorted({_long_name(o) for o in options.values()})
            raise FlowsuiteError(f"--config {value}: unknown option {key!r} for this command; "
                                 f"it takes {', '.join(known)}")
        try:
            option.type_cast_value(ctx, raw)
        except click.BadParameter as e:
            why = e.message.rstrip(".")
            raise FlowsuiteError(f"--config {value}: {key} = {raw!r} is not valid ({why})"
                                 ) from None
        defaults[option.name] = raw
    ctx.default_map = defaults


def _long_name(option: click.Option) -> str:
    longs = [o[2:] for o in option.opts if o.startswith("--")]
    return longs[0] if longs else str(option.name)


def config_option(command: F) -> F:
    """Decorator for a click command: ``--config FILE.toml`` supplies the command's option values
    from the file's top-level ``name = value`` lines (long option names, ``batch-size`` or
    ``batch_size``); options given on the command line override the file. Unknown keys, wrong
    values and unreadable files end in one line."""
    return click.option(
        "--config", type=click.Path(path_type=Path), default=None, is_eager=True,
        expose_value=False, callback=_apply_config,
        help="TOML recipe of option values (e.g. recipes/pointflow.toml); flags given on the "
             "command line win.")(command)


# ---- --time-limit DURATION ---------------------------------------------------------------------

EXIT_TIME_LIMIT = 3
"""Exit status of a training command that stopped at its ``--time-limit`` (checkpoint saved)."""

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)\s*([hms]))", re.IGNORECASE)


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as ``45s``, ``30m``, ``2h``, ``1h30m`` or ``1.5h``; a bare
    number is minutes. Raises ``ValueError`` for anything else or for a length that is not
    positive."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 60.0
    else:
        raw = str(text).strip().replace(" ", "")
        try:
            seconds = float(raw) * 60.0
        except ValueError:
            parts = _DURATION.findall(raw)
            if not parts or "".join(n + u for n, u in parts).lower() != raw.lower():
                raise ValueError(f"{text!r} is not a duration (e.g. 45s, 30m, 2h, 1h30m)"
                                 ) from None
            scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(n) * scale[u.lower()] for n, u in parts)
    if not (seconds > 0 and seconds < float("inf")):
        raise ValueError(f"{text!r} is not a positive, finite duration")
    return seconds


class Duration(click.ParamType):
    """A click type for :func:`parse_duration`: the value is seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def time_limit_option(command: F) -> F:
    """Decorator for a training command: ``--time-limit DURATION`` (seconds, or ``None``)."""
    return click.option(
        "--time-limit", type=Duration(), default=None,
        help="Train for at most this long (45s, 30m, 2h, 1h30m; a bare number is minutes), "
             "then save a checkpoint and stop with exit status 3; the same command with "
             "--resume continues exactly where it stopped.")(command)


PRECISIONS = ("auto", "bf16", "fp32")


def precision_option(command: F) -> F:
    """Decorator for a training command: ``--precision auto|bf16|fp32`` (see :func:`bf16_of`)."""
    return click.option(
        "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
        help="bf16: matrix products in bfloat16 under autocast, log-determinants and weights in "
             "float32; auto takes bf16 on a GPU and fp32 on a CPU. On a CPU with bfloat16 "
             "hardware (AMX, AVX512-BF16) bf16 trains about 1.4x faster, at a slightly worse "
             "likelihood (BENCHMARKS.md).")(command)


def bf16_of(precision: str) -> bool | None:
    """``--precision`` as ``TrainConfig.bf16`` (``None``: the trainer's own choice, bf16 on
    CUDA only)."""
    return {"auto": None, "bf16": True, "fp32": False}[precision]


def deadline_after(seconds: float | None) -> float | None:
    """The ``time.monotonic()`` reading ``seconds`` from now (``None`` for no limit)."""
    return None if seconds is None else time.monotonic() + seconds


def seconds_left(deadline: float | None) -> float | None:
    """What is left of a :func:`deadline_after` deadline (a few milliseconds once it passed, so
    a training call still finishes one step and checkpoints)."""
    return None if deadline is None else max(deadline - time.monotonic(), 1e-3)


def stop_if_unfinished(summary: Any, out: Path) -> None:
    """After ``Trainer.fit``: when the run stopped at its time limit, says so in one line and
    exits with :data:`EXIT_TIME_LIMIT`."""
    if getattr(summary, "finished", True):
        return
    click.echo(f"time limit reached: stopped at step {summary.step}; the checkpoint is in "
               f"{Path(out) / 'last'}; run the same command with --resume to continue",
               err=True)
    click.get_current_context().exit(EXIT_TIME_LIMIT)


def run_warmup(out: Path, steps: int, resume: bool, cap: int = 100) -> int:
    """Warm-up steps of a run of ``steps`` steps in ``out``: a tenth of the steps (at most
    ``cap``) for a new run; a resumed run keeps its own, since the warm-up is fixed for the life
    of a run (resuming with more steps must not change it)."""
    from flowsuite.core.trainer import TrainConfig

    if resume and (out / "config.json").is_file():
        return TrainConfig.load(out / "config.json").warmup
    return min(cap, steps // 10)
