"""A likelihood trainer for any module that turns a batch into a loss.

The model's ``forward(batch)`` returns a scalar loss (a negative log-likelihood, a negative ELBO)
or a dict with ``"loss"`` and other scalar metrics to log. ::

    trainer = Trainer(model, train_set, TrainConfig(steps=10_000), val_set=val, out_dir="runs/a")
    summary = trainer.fit()                  # or fit(resume=True) after an interruption
    summary = trainer.fit(time_limit=3600)   # train for an hour, then checkpoint and return
    summary = Trainer.resume("runs/a", train_set, val_set=val)   # rebuilds a registered model

A run folder holds::

    config.json            the TrainConfig
    metrics.jsonl          one JSON object per log step and per validation
    last/model.safetensors the training weights at the last checkpoint
    last/state.pt          optimizer, step, EMA weights, random generators (weights_only loadable)
    best.safetensors       the validated (EMA) weights with the lowest validation loss
    model.safetensors      the final weights, EMA by default: the ones to ship

Batches are a pure function of ``(seed, step)``: step ``s`` takes items ``[s*B, (s+1)*B)`` of an
endless stream of per-epoch permutations, each seeded by ``(seed, epoch)``, and every batch is
built with the CPU generators seeded by ``(seed, step, rank)``. Together with the saved optimizer,
EMA and generator states this makes a resumed run end with the same weights, bit for bit, as one
that was never interrupted. Under ``torchrun`` every process takes an equal slice of each global
batch of ``batch_size`` items, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data import default_collate as _default_collate
from tqdm.auto import tqdm

from flowsuite.core.checkpoint import (
    load_training_state,
    load_weights,
    model_name_of,
    read_metadata,
    save_model,
    save_training_state,
)
from flowsuite.core.distributed import (
    DistInfo,
    all_gather,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from flowsuite.core.ema import EMA
from flowsuite.core.errors import CheckpointError, FlowsuiteError
from flowsuite.core.flat import flat_parameter_shapes, flatten_parameters, is_flattened
from flowsuite.core.io import atomic_path
from flowsuite.core.rng import derive_seed, rng_state, seed_all, seeded, set_rng_state

log = logging.getLogger(__name__)

STATE_FORMAT = 1


class TrainingDiverged(FlowsuiteError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# --------------------------------------------------------------------------------------------
# Configuration


def _is_matrix(p: Tensor, flat: Mapping[Tensor, list[torch.Size]], decay: float) -> bool:
    """Whether ``p`` is a matrix or kernel (decayed), or a flat tensor of only those."""
    if p not in flat:
        return p.ndim >= 2
    kinds = {len(s) >= 2 for s in flat[p]}
    if len(kinds) > 1:
        if not decay:
            return False
        raise FlowsuiteError("a flat parameter mixes matrices and vectors, so weight decay cannot "
                             "spare the vectors; flatten with group=lambda n, p: p.ndim >= 2")
    return kinds.pop()


@dataclass
class TrainConfig:
    """Everything that shapes a training run; saved as ``config.json`` in the run folder.

    ``batch_size`` is the global batch of one step (split evenly over ``torchrun`` processes).
    ``warmup`` steps of linear warm-up lead to a cosine decay from ``lr`` to
    ``lr * min_lr_ratio`` at ``steps``. ``clip`` is the gradient-norm bound (``None``: no
    clipping, the norm is still logged). ``ema_decay=0`` turns the weight average off.
    ``device=None`` takes CUDA when present, else the CPU; ``bf16=None`` autocasts to bfloat16
    on CUDA only. ``progress=None`` shows the bar on a terminal only. ``final_weights`` says
    which weights ``model.safetensors`` gets: ``"ema"`` or ``"raw"``. ``flat_parameters``
    trains the model with all its parameters in one flat tensor (two with weight decay: matrices
    and the rest; see ``flowsuite.core.flat``): the same results, with much less per-tensor
    overhead in the optimiser, clipping and EMA for models of many small tensors.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100
    min_lr_ratio: float = 0.01
    clip: float | None = 1.0
    ema_decay: float = 0.999
    val_every: int = 500
    val_batch_size: int | None = None
    ckpt_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str | None = None
    compile: bool = False
    bf16: bool | None = None
    num_workers: int = 0
    max_consecutive_skips: int = 20
    progress: bool | None = None
    final_weights: str = "ema"
    flat_parameters: bool = False

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        positive = ["steps", "batch_size", "val_every", "ckpt_every", "log_every",
                    "max_consecutive_skips"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FlowsuiteError(f"{name} must be a positive whole number, not {v!r}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise FlowsuiteError(f"val_batch_size must be positive, not {self.val_batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FlowsuiteError(f"lr must be a positive number, not {self.lr}")
        if self.weight_decay < 0:
            raise FlowsuiteError(f"weight_decay must not be negative, not {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise FlowsuiteError(f"betas must lie in [0, 1), not {self.betas}")
        if self.warmup < 0 or self.num_workers < 0:
            raise FlowsuiteError("warmup and num_workers must not be negative")
        if not 0 <= self.min_lr_ratio <= 1:
            raise FlowsuiteError(f"min_lr_ratio must lie in [0, 1], not {self.min_lr_ratio}")
        if self.clip is not None and not self.clip > 0:
            raise FlowsuiteError(f"clip must be positive or None, not {self.clip}")
        if not 0 <= self.ema_decay < 1:
            raise FlowsuiteError(f"ema_decay must lie in [0, 1), not {self.ema_decay}")
        if self.final_weights not in ("ema", "raw"):
            raise FlowsuiteError(f"final_weights is 'ema' or 'raw', not {self.final_weights!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FlowsuiteError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the config as JSON, atomically (replacing an existing file)."""
        with atomic_path(path, force=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise FlowsuiteError(f"{path} is not a readable training config ({e})") from None


# Settings a resumed run may change without breaking the run it continues.
RESUMABLE_CHANGES = frozenset({
    "steps", "val_every", "val_batch_size", "ckpt_every", "log_every", "device", "compile",
    "num_workers", "max_consecutive_skips", "progress", "final_weights"})


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of update ``step`` (0-based): linear warm-up over ``config.warmup``
    updates to ``config.lr``, then a cosine decay to ``config.lr * config.min_lr_ratio`` at
    ``config.steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------
# Data order


class StepSampler:
    """The dataset indices of every training step, a pure function of ``(seed, step)``.

    Step ``s`` takes positions ``[s*B, (s+1)*B)`` of the endless concatenation of permutations of
    ``range(n)``, permutation ``e`` seeded by ``(seed, e)``; so every item is seen once per epoch
    and batches may straddle epochs. Process ``rank`` of ``world_size`` takes the ``rank``-th of
    ``world_size`` equal slices of each batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise FlowsuiteError("the training set is empty; give it at least one item")
        if batch_size % world_size:
            raise FlowsuiteError(f"batch_size {batch_size} does not split evenly over "
                                 f"{world_size} processes; choose a multiple of {world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, Tensor] = {}

    def epoch_of(self, step: int) -> int:
        """The epoch that step ``step`` starts in."""
        return step * self.batch_size // self.n

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def global_indices(self, step: int) -> list[int]:
        """The ``batch_size`` indices of step ``step`` over all processes."""
        out: list[int] = []
        pos, end = step * self.batch_size, (step + 1) * self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            take = min(end - pos, self.n - offset)
            out.extend(self._perm(epoch)[offset:offset + take].tolist())
            pos += take
        return out

    def indices(self, step: int) -> list[int]:
        """This process's share of step ``step``'s indices."""
        share = self.batch_size // self.world_size
        return self.global_indices(step)[self.rank * share:(self.rank + 1) * share]


class _StepBatches(Dataset):
    """Item ``s`` is the collated batch of step ``s``, built with the CPU generators seeded by
    ``(seed, step, rank)`` so random augmentation in the dataset is reproducible too."""

    def __init__(self, dataset: Dataset, sampler: StepSampler, collate: Callable[[list], Any],
                 seed: int):
        self.dataset, self.sampler, self.collate, self.seed = dataset, sampler, collate, seed

    def __getitem__(self, step: int) -> Any:
        with seeded(derive_seed(self.seed, "data", step, self.sampler.rank)):
            return self.collate([self.dataset[i] for i in self.sampler.indices(step)])


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, (list, tuple)) or isinstance(batch, Mapping):
        for v in values:
            with contextlib.suppress(TypeError):
                return _batch_len(v)
    raise TypeError(f"cannot tell the number of items in a batch of type {type(batch).__name__}")


def _split_output(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss and the other metrics of a model's output, each a 0-dim tensor."""
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise TypeError(f"the model returned a dict without 'loss' (keys: {sorted(out)})")
        loss = out["loss"]
        metrics = {k: v for k, v in out.items() if k != "loss"}
    else:
        loss, metrics = out, {}
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"the model must return a scalar loss tensor, got {shape}")
    clean: dict[str, Tensor] = {}
    for k in sorted(metrics):
        v = metrics[k]
        v = v.detach().float() if isinstance(v, Tensor) else torch.tensor(float(v))
        if v.numel() != 1:
            raise TypeError(f"metric {k!r} must be a scalar, got shape {tuple(v.shape)}")
        clean[k] = v.reshape(())
    return loss, clean


# --------------------------------------------------------------------------------------------
# The trainer


@dataclass
class FitSummary:
    """What a call to :meth:`Trainer.fit` achieved."""

    out_dir: Path
    step: int
    final_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    skipped_steps: int
    seconds: float
    model_path: Path | None
    resumed_from: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    finished: bool = True
    """False when the call stopped at its ``time_limit`` before ``config.steps``: ``last/`` holds
    the checkpoint to resume from and ``model_path`` is ``None``."""


class Trainer:
    """Fits ``model`` on ``train_set`` (a map-style dataset) as ``config`` says, writing the run
    to ``out_dir``.

    ``collate_fn`` turns a list of items into a batch (default: torch's ``default_collate``);
    batches are moved to the device whole (tensors, or dicts, lists, tuples of tensors) and
    handed to ``model(batch)``.
    """

    def __init__(self, model: nn.Module, train_set: Dataset, config: TrainConfig | None = None, *,
                 out_dir: str | os.PathLike, val_set: Dataset | None = None,
                 collate_fn: Callable[[list], Any] | None = None):
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.config = config if config is not None else TrainConfig()
        self.out_dir = Path(out_dir)
        self.collate_fn = collate_fn or _default_collate
        self.dist = DistInfo()
        self.device = torch.device("cpu")
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: EMA | None = None
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.skipped = 0
        self._consecutive_skips = 0
        self._stop_requested = False
        self._last_val: dict[str, float] = {}
        self._rng_at_step_start: dict[str, Any] | None = None

    # ---- paths

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "last"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.safetensors"

    @property
    def final_path(self) -> Path:
        return self.out_dir / "model.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def config_path(self) -> Path:
        return self.out_dir / "config.json"

    # ---- construction from a run folder

    @classmethod
    def from_run(cls, out_dir: str | os.PathLike, train_set: Dataset, *,
                 val_set: Dataset | None = None, model: nn.Module | None = None,
                 collate_fn: Callable[[list], Any] | None = None, **changes: Any) -> Trainer:
        """A trainer for the run in ``out_dir`` with its saved config (plus ``changes``, e.g. a
        larger ``steps``). Without ``model`` the model is rebuilt from the last checkpoint, which
        needs a registered model class."""
        out = Path(out_dir)
        config_file = out / "config.json"
        if not config_file.is_file():
            raise FlowsuiteError(f"{out} holds no training run (no config.json); check the folder")
        config = dataclasses.replace(TrainConfig.load(config_file), **changes)
        if model is None:
            from flowsuite.core.checkpoint import load_model

            ckpt = _find_checkpoint(out)
            if ckpt is None:
                raise FlowsuiteError(f"{out} has no checkpoint yet to rebuild the model from; "
                                     "pass the model to resume")
            if read_metadata(ckpt / "model.safetensors").model is None:
                raise FlowsuiteError(f"{out} trains an unregistered model that cannot be rebuilt "
                                     "from its checkpoint; pass model= to resume")
            model = load_model(ckpt / "model.safetensors")
        return cls(model, train_set, config, out_dir=out, val_set=val_set, collate_fn=collate_fn)

    @classmethod
    def resume(cls, out_dir: str | os.PathLike, train_set: Dataset, **kwargs: Any) -> FitSummary:
        """Continues the run in ``out_dir`` to its end; ``kwargs`` as for :meth:`from_run`."""
        return cls.from_run(out_dir, train_set, **kwargs).fit(resume=True)

    # ---- fitting

    def fit(self, resume: bool = False, time_limit: float | None = None) -> FitSummary:
        """Trains to ``config.steps`` and returns a summary.

        With ``resume=True`` the run continues from the last checkpoint in ``out_dir`` (or starts
        if there is none); without it an ``out_dir`` that holds a run is refused. Ctrl-C (or
        SIGTERM) stops after the current step, writes a checkpoint and raises
        ``KeyboardInterrupt``.

        ``time_limit`` (seconds, counted from this call) bounds one sitting of a long run, e.g.
        a job on a cluster with a wall-clock limit: once it has passed, the step under way
        finishes, a checkpoint is written and the summary comes back with ``finished=False``;
        ``fit(resume=True)`` later continues the run exactly where it stopped (the schedule is
        that of ``config.steps``, so the sittings add up to the uninterrupted run).
        """
        if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
            raise FlowsuiteError(f"time_limit must be a positive number of seconds, not "
                                 f"{time_limit!r}")
        deadline = None if time_limit is None else time.monotonic() + time_limit
        cfg = self.config
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise FlowsuiteError("device 'cuda' was asked for but CUDA is not available; "
                                 "use the CPU (device='cpu') or check the GPU driver")
        self.dist = init_distributed(device.type)
        if device.type == "cuda" and (self.dist.enabled or device.index is None):
            device = torch.device("cuda", self.dist.local_rank if self.dist.enabled else 0)
        self.device = device
        try:
            with self._deferred_interrupts():
                return self._fit(resume, deadline)
        finally:
            shutdown(self.dist)

    def _fit(self, resume: bool, deadline: float | None = None) -> FitSummary:
        cfg, dist = self.config, self.dist
        t_start = time.perf_counter()
        ckpt = self._check_out_dir(resume)
        barrier(dist)
        if dist.is_main:
            self._start_out_dir(ckpt)
        barrier(dist)

        sampler = StepSampler(len(self.train_set), cfg.batch_size, cfg.seed, dist.rank,
                              dist.world_size)
        model = self.model.to(self.device)
        state = None
        if ckpt is not None:
            state = load_training_state(ckpt / "state.pt")
            # A registered model must match the checkpoint's by name; any model by its weights.
            name = model_name_of(model)
            saved_name = read_metadata(ckpt / "model.safetensors").model
            load_weights(model, ckpt / "model.safetensors",
                         expected=name if name and saved_name else None)
        else:
            seed_all(derive_seed(cfg.seed, "train", dist.rank))
            with seeded(derive_seed(cfg.seed, "init")):
                first = self.collate_fn([self.train_set[i] for i in sampler.global_indices(0)])
            self.model_initialise(move_to(first, self.device))

        if cfg.flat_parameters and not is_flattened(model):
            # After the weights are set (loaded, or initialised from data), before the optimizer,
            # the EMA copy and DDP see the parameters. The per-layer names of checkpoints stay.
            flatten_parameters(model, group=lambda name, p: p.ndim >= 2)
        train_model: nn.Module = model
        if dist.enabled:  # wrapping broadcasts rank 0's weights to every process
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=ids)
        self.optimizer = self._make_optimizer(model)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        resumed_from = None
        if state is not None:
            self._restore(state)
            resumed_from = self.step
            if dist.is_main:
                log.info("resuming %s at step %d", self.out_dir, self.step)
        if cfg.compile:
            train_model = torch.compile(train_model)

        final_loss = (self._loop(train_model, sampler, deadline) if self.step < cfg.steps
                      else None)
        finished = self.step >= cfg.steps
        model_path = self._finish() if finished else None
        return FitSummary(out_dir=self.out_dir, step=self.step, final_loss=final_loss,
                          last_val_loss=self._last_val.get("val_loss"), best_val_loss=self.best_val,
                          best_step=self.best_step, skipped_steps=self.skipped,
                          seconds=time.perf_counter() - t_start, model_path=model_path,
                          resumed_from=resumed_from, metrics=dict(self._last_val),
                          finished=finished)

    @torch.no_grad()
    def model_initialise(self, batch: Any) -> None:
        """One forward pass in training mode without gradients, so layers with data-dependent
        initialisation (ActNorm) set themselves up before the optimizer and the EMA copy exist.
        Harmless for other models."""
        self.model.train()
        with self._autocast():
            self.model(batch)

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # Weight decay on matrices and kernels only; not on biases, scales and other vectors.
        decay, no_decay = [], []
        flat = flat_parameter_shapes(model)
        for p in model.parameters():
            if p.requires_grad:
                (decay if _is_matrix(p, flat, self.config.weight_decay) else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.config.lr,
                                 betas=self.config.betas)

    def _autocast(self) -> contextlib.AbstractContextManager:
        bf16 = self.config.bf16 if self.config.bf16 is not None else self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _loop(self, train_model: nn.Module, sampler: StepSampler,
              deadline: float | None = None) -> float | None:
        cfg, dist = self.config, self.dist
        assert self.optimizer is not None
        params = [p for p in self.model.parameters() if p.requires_grad]
        loader = DataLoader(
            _StepBatches(self.train_set, sampler, self.collate_fn, cfg.seed),
            batch_size=None, sampler=range(self.step, cfg.steps), num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            # A private generator keeps the loader from drawing on the global one.
            generator=torch.Generator().manual_seed(cfg.seed))
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=True if not dist.is_main or cfg.progress is False
                   else (None if cfg.progress is None else False))
        window = _Window()
        final_loss = None
        timed_out = False
        try:
            for batch in loader:
                self._rng_at_step_start = rng_state()
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                train_model.train()
                self.optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    out = train_model(move_to(batch, self.device))
                loss, metrics = _split_output(out)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip or math.inf)
                # One reduction per step gives every process the same view: the mean loss and
                # metrics, the gradient norm, whether any process was asked to stop and whether
                # any process's clock has passed the time limit.
                names = list(metrics)
                late = deadline is not None and time.monotonic() >= deadline
                vec = torch.stack([loss.detach().float(), norm.detach().float().to(self.device),
                                   torch.tensor(float(self._stop_requested), device=self.device),
                                   torch.tensor(float(late), device=self.device),
                                   *[m.to(self.device) for m in metrics.values()]])
                vals = (all_reduce_sum(vec, dist) / dist.world_size).tolist()
                loss_v, norm_v, stop, late = vals[0], vals[1], vals[2] > 0, vals[3] > 0
                if math.isfinite(loss_v) and math.isfinite(norm_v):
                    self.optimizer.step()
                    if self.ema is not None:
                        self.ema.update(self.model)
                    self._consecutive_skips = 0
                    window.add(loss_v, norm_v, dict(zip(names, vals[4:], strict=True)))
                    final_loss = loss_v
                else:
                    self._skip(loss_v, norm_v)
                    window.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self._rng_at_step_start = None  # between steps the generators are as saved
                bar.update(1)
                window.items += cfg.batch_size
                self._after_step(window, lr, bar, sampler)
                if stop:
                    self._stop_requested = True
                    break
                if late and self.step < cfg.steps:
                    timed_out = True
                    break
        except KeyboardInterrupt:
            # Raised inside a step (not through the deferred handler): the weights are those of
            # the last finished step; the generators go back to where that step left them.
            if not dist.enabled:
                if self._rng_at_step_start is not None:
                    set_rng_state(self._rng_at_step_start)
                self._save_checkpoint()
                log.warning("interrupted; checkpoint of step %d saved in %s", self.step,
                            self.last_dir)
            raise
        finally:
            bar.close()
        if self._stop_requested and self.step < cfg.steps:
            if self.step % cfg.ckpt_every and self.step != cfg.steps:
                self._save_checkpoint()
            if dist.is_main:
                log.warning("stopped at step %d; checkpoint saved in %s; resume with "
                            "resume=True", self.step, self.last_dir)
            raise KeyboardInterrupt
        if timed_out:
            if self.step % cfg.ckpt_every:
                self._save_checkpoint()
            if dist.is_main:
                log.warning("time limit reached at step %d of %d; checkpoint saved in %s; "
                            "resume with resume=True", self.step, cfg.steps, self.last_dir)
        return final_loss

    def _skip(self, loss: float, norm: float) -> None:
        self.skipped += 1
        self._consecutive_skips += 1
        n, limit = self._consecutive_skips, self.config.max_consecutive_skips
        if self.dist.is_main:
            log.warning("step %d skipped: loss %s, gradient norm %s (%d in a row, %d in all)",
                        self.step, loss, norm, n, self.skipped)
        if n >= limit:
            raise TrainingDiverged(
                f"training diverged: {n} steps in a row up to step {self.step} had a non-finite "
                f"loss or gradient; lower the learning rate (lr={self.config.lr}) or check the "
                f"data, then resume from the last checkpoint")

    def _after_step(self, window: _Window, lr: float, bar: tqdm, sampler: StepSampler) -> None:
        cfg, step, last = self.config, self.step, self.step == self.config.steps
        if step % cfg.log_every == 0 or last:
            record = window.flush(step, sampler.epoch_of(step - 1), lr)
            if self.dist.is_main:
                self._log_record(record)
                if record["loss"] is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr:.3g}", refresh=False)
        if self.val_set is not None and (step % cfg.val_every == 0 or last):
            self._validate_and_keep_best()
        if step % cfg.ckpt_every == 0 or last:
            self._save_checkpoint()

    # ---- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss and metrics of the EMA model (or the model, without EMA) over the
        validation set, weighted by batch size: ``{"val_loss": ..., "val_<metric>": ...}``."""
        if self.val_set is None:
            return {}
        cfg, dist = self.config, self.dist
        module = self.ema.shadow if self.ema is not None else self.model
        was_training = module.training
        module.eval()
        n_val = len(self.val_set)
        sharded = dist.enabled and n_val >= dist.world_size
        subset = Subset(self.val_set, range(dist.rank, n_val, dist.world_size)) if sharded \
            else self.val_set
        loader = DataLoader(subset, batch_size=cfg.val_batch_size or cfg.batch_size,
                            shuffle=False, collate_fn=self.collate_fn,
                            num_workers=cfg.num_workers)
        sums: dict[str, float] = {}
        count = 0
        seed = derive_seed(cfg.seed, "val", self.step, dist.rank)
        with contextlib.ExitStack() as stack:
            if self.device.type == "cuda":
                stack.enter_context(torch.random.fork_rng(devices=[self.device]))
                torch.cuda.manual_seed(seed)
            stack.enter_context(seeded(seed))
            for batch in loader:
                n = _batch_len(batch)
                with self._autocast():
                    loss, metrics = _split_output(module(move_to(batch, self.device)))
                for k, v in {"loss": loss.detach().float(), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                count += n
        module.train(was_training)
        names = sorted(sums)
        if sharded:
            vec = torch.tensor([count, *[sums[k] for k in names]], dtype=torch.float64,
                               device=self.device)
            vals = all_reduce_sum(vec, dist).tolist()
            count, sums = int(vals[0]), dict(zip(names, vals[1:], strict=True))
        return {f"val_{k}": sums[k] / max(count, 1) for k in names}

    def _validate_and_keep_best(self) -> None:
        result = self.validate()
        self._last_val = result
        val_loss = result.get("val_loss", math.nan)
        if self.dist.is_main:
            self._log_record({"step": self.step, **result})
            log.info("step %d: val_loss %.5g", self.step, val_loss)
        if math.isfinite(val_loss) and (self.best_val is None or val_loss < self.best_val):
            self.best_val, self.best_step = val_loss, self.step
            if self.dist.is_main:
                save_model(self._shipped_module("ema"), self.best_path,
                           metadata={"step": str(self.step), "val_loss": repr(val_loss)})

    # ---- checkpoints and the run folder

    def _shipped_module(self, which: str) -> nn.Module:
        return self.ema.shadow if which == "ema" and self.ema is not None else self.model

    def _save_checkpoint(self) -> None:
        """Writes ``last/`` (weights and training state) as one unit: the new folder is
        complete before it replaces the old one."""
        rngs = all_gather(rng_state(), self.dist)
        if self.dist.is_main:
            assert self.optimizer is not None
            state = {
                "format": STATE_FORMAT, "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rngs, "world_size": self.dist.world_size,
                "best_val": self.best_val, "best_step": self.best_step,
                "skipped": self.skipped, "consecutive_skips": self._consecutive_skips,
                "last_val": dict(self._last_val), "config": self.config.to_dict(),
            }
            tmp = Path(tempfile.mkdtemp(prefix=".last-", dir=self.out_dir))
            try:
                save_model(self.model, tmp / "model.safetensors",
                           metadata={"step": str(self.step)})
                save_training_state(state, tmp / "state.pt")
                prev = self.out_dir / "last.prev"
                if self.last_dir.exists():
                    if prev.exists():
                        shutil.rmtree(prev)
                    os.replace(self.last_dir, prev)
                os.replace(tmp, self.last_dir)
                shutil.rmtree(prev, ignore_errors=True)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        barrier(self.dist)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.last_dir}/state.pt has an unknown format "
                                  f"{state.get('format')!r}; start a new run")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state["ema"] is None:
                raise FlowsuiteError(f"{self.out_dir} was trained without EMA; resume it with "
                                     "ema_decay=0")
            self.ema.load_state_dict(state["ema"])
        rngs = state["rng"]
        if len(rngs) != self.dist.world_size and self.dist.is_main:
            log.warning("resuming a %d-process run with %d processes: the data order is kept, "
                        "the random streams are not", len(rngs), self.dist.world_size)
        set_rng_state(rngs[self.dist.rank % len(rngs)])
        self.step = int(state["step"])
        self.best_val, self.best_step = state["best_val"], state["best_step"]
        self.skipped = int(state["skipped"])
        self._consecutive_skips = int(state["consecutive_skips"])
        self._last_val = dict(state["last_val"])

    def _check_out_dir(self, resume: bool) -> Path | None:
        """The checkpoint to resume from; refuses a folder that holds another run."""
        out, cfg = self.out_dir, self.config
        if out.exists() and not out.is_dir():
            raise FlowsuiteError(f"{out} is a file; give a folder for the training run")
        ckpt = _find_checkpoint(out)
        has_run = self.config_path.exists() or ckpt is not None
        if has_run and not resume:
            raise FlowsuiteError(f"{out} already holds a training run ({self._describe_run(ckpt)});"
                                 " resume it or choose another output folder")
        if resume and ckpt is not None and self.config_path.exists():
            saved = TrainConfig.load(self.config_path)
            diffs = [f.name for f in dataclasses.fields(TrainConfig)
                     if f.name not in RESUMABLE_CHANGES
                     and getattr(saved, f.name) != getattr(cfg, f.name)]
            if diffs:
                what = ", ".join(f"{n}={getattr(saved, n)!r} there, {getattr(cfg, n)!r} here"
                                 for n in diffs[:3])
                raise FlowsuiteError(f"{out} holds a run with other settings ({what}); resume it "
                                     "with its own settings or choose another output folder")
        return ckpt

    def _describe_run(self, ckpt: Path | None) -> str:
        if ckpt is None:
            return "no checkpoint yet"
        try:
            step = read_metadata(ckpt / "model.safetensors").user.get("step", "?")
        except CheckpointError:
            step = "?"
        done = "finished" if self.final_path.exists() else "stopped"
        return f"{done} at step {step}"

    def _start_out_dir(self, ckpt: Path | None) -> None:
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".last-*"):  # a checkpoint folder that was never completed
            shutil.rmtree(stale, ignore_errors=True)
        self.config.save(self.config_path)
        if ckpt is None:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
            return
        # Log lines after the checkpoint belong to steps that will be trained again.
        step = int(read_metadata(ckpt / "model.safetensors").user.get("step", "0"))
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and _record_step(line) <= step]
            with atomic_path(self.metrics_path, force=True) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    def _log_record(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _finish(self) -> Path | None:
        which = self.config.final_weights
        path = None
        if self.dist.is_main:
            meta = {"step": str(self.step), "weights": "ema" if which == "ema" and self.ema
                    else "raw"}
            if "val_loss" in self._last_val:
                meta["val_loss"] = repr(self._last_val["val_loss"])
            path = save_model(self._shipped_module(which), self.final_path, metadata=meta)
            log.info("training finished at step %d; weights in %s", self.step, path)
        barrier(self.dist)
        return path

    @contextlib.contextmanager
    def _deferred_interrupts(self) -> Iterator[None]:
        """Turns the first Ctrl-C (or SIGTERM) into a request to stop after the current step,
        so that a step is never torn; a second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                raise KeyboardInterrupt
            self._stop_requested = True
            if self.dist.is_main:
                log.warning("stopping after this step (press Ctrl-C again to stop at once)")

        for sig, default in ((signal.SIGINT, signal.default_int_handler),
                             (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) is default:
                previous[sig] = signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Window:
    """Running sums of the steps since the last log record."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.reset()

    def reset(self) -> None:
        self.n = self.skipped = self.items = 0
        self.loss = self.norm = 0.0
        self.metrics: dict[str, float] = {}

    def add(self, loss: float, norm: float, metrics: Mapping[str, float]) -> None:
        self.n += 1
        self.loss += loss
        self.norm += norm
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v

    def flush(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        now = time.perf_counter()
        n = self.n
        record: dict[str, Any] = {
            "step": step, "epoch": epoch, "loss": self.loss / n if n else None, "lr": lr,
            "grad_norm": self.norm / n if n else None,
            "items_per_s": self.items / max(now - self.t0, 1e-9), "skipped": self.skipped,
            **{k: v / n for k, v in self.metrics.items()}}
        self.t0 = now
        self.reset()
        return record


def _find_checkpoint(out: Path) -> Path | None:
    """``last/``, or ``last.prev/`` when a run died between the two renames of a checkpoint."""
    for name in ("last", "last.prev"):
        d = out / name
        if (d / "model.safetensors").is_file() and (d / "state.pt").is_file():
            return d
    return None


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1


__all__ = ["TrainConfig", "Trainer", "FitSummary", "StepSampler", "TrainingDiverged", "lr_at",
           "move_to", "RESUMABLE_CHANGES"]
