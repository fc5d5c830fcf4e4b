"""The trainer on tiny CPU problems: a 2-D Gaussian fitted by its negative log-likelihood."""

from __future__ import annotations

import json
import logging
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from flowsuite.core.checkpoint import Configurable, load_model, register_model
from flowsuite.core.ema import EMA
from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.trainer import (
    StepSampler,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    lr_at,
    move_to,
)

LOG2PI = math.log(2 * math.pi)


@register_model("test-gaussian")
class Gaussian(Configurable, nn.Module):
    """A tiny flow: ``z = ((I + M) x - mu) / sigma`` with a standard normal base, so that a
    matrix (weight decay) and vectors (no decay) both exist.

    ``noise`` adds random noise to the batch (a stand-in for dequantisation or the sampled latent
    of an ELBO), so exact resume needs the random generators restored too."""

    def __init__(self, dim: int = 2, noise: float = 0.0):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))
        self.log_sigma = nn.Parameter(torch.zeros(dim))
        self.mix = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.mix.weight)
        self.noise = noise
        self.calls = 0

    def forward(self, batch):
        x = batch["x"] if isinstance(batch, dict) else batch[0]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        x = x + self.mix(x)
        z = (x - self.mu) * torch.exp(-self.log_sigma)
        logdet = torch.linalg.slogdet(torch.eye(len(self.mu)) + self.mix.weight).logabsdet
        nll = 0.5 * z.pow(2).sum(-1) + self.log_sigma.sum() - logdet + 0.5 * x.shape[-1] * LOG2PI
        self.calls += 1
        return {"loss": nll.mean(), "sigma": self.log_sigma.exp().mean()}


class Points(Dataset):
    """Points around (3, -1); with ``jitter`` every access adds fresh random noise (an
    augmentation drawing on the global generator)."""

    def __init__(self, n: int = 256, jitter: float = 0.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([3.0, -1.0])
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        if self.jitter:
            x = x + self.jitter * torch.randn(2)
        return {"x": x}


def cfg(**kw) -> TrainConfig:
    base = dict(steps=30, batch_size=16, lr=0.05, warmup=5, val_every=10, ckpt_every=10,
                log_every=5, ema_decay=0.9, progress=False, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def records(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_fits_a_gaussian_and_writes_the_run(tmp_path):
    torch.manual_seed(0)
    model = Gaussian()
    summary = Trainer(model, Points(), cfg(steps=120, lr=0.1), val_set=Points(64, seed=1),
                      out_dir=tmp_path).fit()
    assert summary.step == 120 and summary.skipped_steps == 0
    train = [r for r in records(tmp_path) if "loss" in r]
    val = [r for r in records(tmp_path) if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(5, 121, 5))
    assert [r["step"] for r in val] == list(range(10, 121, 10))
    for r in train:
        assert {"step", "epoch", "loss", "lr", "grad_norm", "items_per_s", "skipped",
                "sigma"} <= set(r)
        assert r["items_per_s"] > 0 and r["grad_norm"] >= 0
    assert train[-1]["loss"] < train[0]["loss"] - 2
    # the NLL of N((3, -1), 0.25 I) is about 2 * (0.5 + log 0.5 + 0.5 log 2 pi) = 1.45
    assert summary.best_val_loss < 1.7 and "val_sigma" in val[-1]
    with torch.no_grad():
        mean = torch.linalg.solve(torch.eye(2) + model.mix.weight, model.mu)
    assert torch.allclose(mean, torch.tensor([3.0, -1.0]), atol=0.25)
    assert TrainConfig.load(tmp_path / "config.json") == cfg(steps=120, lr=0.1)
    shipped = load_model(summary.model_path, expected="test-gaussian")
    assert shipped.config == {"dim": 2, "noise": 0.0}
    assert sorted(os.listdir(tmp_path / "last")) == ["model.safetensors", "state.pt"]
    assert (tmp_path / "best.safetensors").exists()
    state = torch.load(tmp_path / "last" / "state.pt", weights_only=True)
    assert state["step"] == 120 and state["ema"]["updates"] == 120


def test_lr_schedule_warmup_and_cosine_floor():
    c = TrainConfig(steps=110, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(4, c) == pytest.approx(0.5)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(500, c) == pytest.approx(0.1)
    lrs = [lr_at(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lr_at(0, TrainConfig(steps=5, lr=0.3, warmup=0)) == pytest.approx(0.3)


def test_logged_lr_follows_the_schedule(tmp_path):
    c = cfg(steps=20, log_every=1, ema_decay=0)
    Trainer(Gaussian(), Points(), c, out_dir=tmp_path).fit()
    logged = [r["lr"] for r in records(tmp_path)]
    assert logged == pytest.approx([lr_at(s, c) for s in range(20)])


class Flaky(Gaussian):
    """Returns a NaN loss on the given calls, or an infinite gradient."""

    def __init__(self, bad: set[int], kind: str = "loss"):
        super().__init__()
        self.bad, self.kind = bad, kind

    def forward(self, batch):
        out = super().forward(batch)
        if self.calls - 1 in self.bad:  # call 0 is the initialisation pass
            if self.kind == "loss":
                out["loss"] = out["loss"] * float("nan")
            else:  # sqrt(0) = 0 leaves the loss finite; its gradient is 0 / 0
                out["loss"] = out["loss"] + (self.mu * 0).sqrt().sum()
        return out


def test_non_finite_steps_are_skipped(tmp_path, caplog):
    model = Flaky({3, 4, 11})
    with caplog.at_level(logging.WARNING, "flowsuite.core.trainer"):
        summary = Trainer(model, Points(), cfg(steps=20), out_dir=tmp_path).fit()
    assert summary.skipped_steps == 3
    assert sum(r.get("skipped", 0) for r in records(tmp_path)) == 3
    assert sum("skipped" in m for m in caplog.messages) == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.load(tmp_path / "last" / "state.pt", weights_only=True)["ema"]["updates"] == 17


def test_non_finite_gradient_is_skipped(tmp_path, caplog):
    model = Flaky({2}, kind="grad")
    with caplog.at_level(logging.WARNING, "flowsuite.core.trainer"):
        summary = Trainer(model, Points(), cfg(steps=6), out_dir=tmp_path).fit()
    assert summary.skipped_steps == 1
    assert len(caplog.messages) == 1 and "gradient norm nan" in caplog.messages[0]
    assert "loss nan" not in caplog.messages[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_consecutive_skips_stop_with_a_clear_error(tmp_path):
    model = Flaky(set(range(5, 100)))
    with pytest.raises(TrainingDiverged) as e:
        Trainer(model, Points(), cfg(steps=50, max_consecutive_skips=4), out_dir=tmp_path).fit()
    msg = str(e.value)
    assert "\n" not in msg and "4 steps in a row" in msg and "lower the learning rate" in msg
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ema_follows_its_formula():
    lin = nn.Linear(3, 1)
    ema = EMA(lin, decay=0.5)
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    d = ema.current_decay()
    assert d == pytest.approx(min(0.5, 2 / 11))
    ema.update(lin)
    assert torch.allclose(ema.shadow.weight, d * start + (1 - d) * lin.weight)
    assert not ema.shadow.weight.requires_grad
    for _ in range(20):
        ema.update(lin)
    assert torch.allclose(ema.shadow.weight, lin.weight, atol=1e-5)


def test_shipped_weights_are_the_ema_ones(tmp_path):
    Trainer(Gaussian(), Points(), cfg(steps=12, ema_decay=0.95), out_dir=tmp_path / "a").fit()
    raw = load_file(tmp_path / "a" / "last" / "model.safetensors")
    shipped = load_file(tmp_path / "a" / "model.safetensors")
    ema = torch.load(tmp_path / "a" / "last" / "state.pt", weights_only=True)["ema"]["weights"]
    assert torch.equal(shipped["mu"], ema["mu"]) and not torch.equal(shipped["mu"], raw["mu"])
    Trainer(Gaussian(), Points(), cfg(steps=12, ema_decay=0.95, final_weights="raw"),
            out_dir=tmp_path / "b").fit()
    assert torch.equal(load_file(tmp_path / "b" / "model.safetensors")["mu"],
                       load_file(tmp_path / "b" / "last" / "model.safetensors")["mu"])


class DataInit(nn.Module):
    """An ActNorm-like shift that sets itself to minus the mean of the first batch it sees."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(2))
        self.register_buffer("initialized", torch.tensor(False))
        self.first_mean = None

    def forward(self, batch):
        x = batch["x"]
        if not self.initialized:
            with torch.no_grad():
                self.shift.copy_(-x.mean(0))
                self.initialized.fill_(True)
                self.first_mean = x.mean(0).clone()
        return 0.5 * (x + self.shift).pow(2).sum(-1).mean()


def test_data_dependent_initialisation_happens_before_optimizer_and_ema(tmp_path):
    model = DataInit()
    trainer = Trainer(model, Points(), cfg(steps=1, lr=1e-4, ema_decay=0.5), out_dir=tmp_path)
    trainer.fit()
    assert model.first_mean is not None and not model.first_mean.requires_grad
    assert bool(trainer.ema.shadow.initialized)
    assert torch.allclose(trainer.ema.shadow.shift, -model.first_mean, atol=1e-3)
    batch0 = torch.stack([Points()[i]["x"] for i in StepSampler(256, 16, 1).global_indices(0)])
    assert torch.allclose(model.first_mean, batch0.mean(0))


def test_step_sampler_is_a_function_of_seed_and_step():
    s = StepSampler(10, 4, seed=3)
    epoch0 = s.global_indices(0) + s.global_indices(1) + s.global_indices(2)[:2]
    assert sorted(epoch0) == list(range(10))
    assert s.epoch_of(2) == 0 and s.epoch_of(3) == 1
    fresh = StepSampler(10, 4, seed=3)
    assert [fresh.global_indices(k) for k in (7, 2, 5)] == [s.global_indices(k) for k in (7, 2, 5)]
    assert StepSampler(10, 4, seed=4).global_indices(0) != s.global_indices(0)
    shards = [StepSampler(10, 4, 3, rank=r, world_size=2).indices(5) for r in (0, 1)]
    assert shards[0] + shards[1] == s.global_indices(5)
    with pytest.raises(FlowsuiteError):
        StepSampler(10, 5, 0, rank=0, world_size=2)
    with pytest.raises(FlowsuiteError):
        StepSampler(0, 4, 0)


def test_move_to_handles_nested_batches():
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(1), 3]), "name": "a"}
    moved = move_to(batch, torch.device("meta"))
    assert moved["x"].is_meta and moved["pair"][0].is_meta and moved["pair"][1][0].is_meta
    assert moved["pair"][1][1] == 3 and moved["name"] == "a" and isinstance(moved["pair"], tuple)


def _all_weights(out_dir) -> dict[str, torch.Tensor]:
    w = {f"raw.{k}": v for k, v in load_file(out_dir / "last" / "model.safetensors").items()}
    w.update({f"final.{k}": v for k, v in load_file(out_dir / "model.safetensors").items()})
    state = torch.load(out_dir / "last" / "state.pt", weights_only=True)
    w.update({f"ema.{k}": v for k, v in state["ema"]["weights"].items()})
    for i, s in state["optimizer"]["state"].items():
        w.update({f"adam.{i}.{k}": v for k, v in s.items()})
    return w


def _assert_same_weights(a, b) -> None:
    wa, wb = _all_weights(a), _all_weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 8
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


class Crash(RuntimeError):
    pass


class Dies(Gaussian):
    """Fails on training call ``at`` (the process dying), or raises what ``exc`` makes."""

    def __init__(self, at: int, exc=Crash, **kw):
        super().__init__(**kw)
        self.at, self.exc = at, exc

    def forward(self, batch):
        if self.training and self.calls == self.at:
            self.calls += 1
            if self.exc == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # handled at the end of this step
            else:
                raise self.exc("killed")
        return super().forward(batch)


RESUME_CFG = dict(steps=24, ckpt_every=5, val_every=6, log_every=2)


def _straight(tmp_path):
    torch.manual_seed(0)
    data = Points(jitter=0.05)
    Trainer(Gaussian(noise=0.1), data, cfg(**RESUME_CFG), val_set=Points(32, seed=2),
            out_dir=tmp_path / "straight").fit()
    return tmp_path / "straight"


def test_exact_resume_after_a_crash(tmp_path):
    straight = _straight(tmp_path)
    run = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(Crash):  # call 0 initialises; training call 13 is step 12
        Trainer(Dies(13, noise=0.1), Points(jitter=0.05), cfg(**RESUME_CFG),
                val_set=Points(32, seed=2), out_dir=run).fit()
    assert torch.load(run / "last" / "state.pt", weights_only=True)["step"] == 10
    assert max(r["step"] for r in records(run)) == 12
    torch.manual_seed(123)  # a different process, a different initialisation: all overwritten
    summary = Trainer(Gaussian(noise=0.1), Points(jitter=0.05), cfg(**RESUME_CFG),
                      val_set=Points(32, seed=2), out_dir=run).fit(resume=True)
    assert summary.resumed_from == 10 and summary.step == 24
    _assert_same_weights(straight, run)
    strip = [{k: v for k, v in r.items() if k != "items_per_s"} for r in records(straight)]
    assert strip == [{k: v for k, v in r.items() if k != "items_per_s"} for r in records(run)]


def test_exact_resume_after_ctrl_c(tmp_path):
    straight = _straight(tmp_path)
    run = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during step 7: it finishes, then stops
        Trainer(Dies(8, exc="sigint", noise=0.1), Points(jitter=0.05), cfg(**RESUME_CFG),
                val_set=Points(32, seed=2), out_dir=run).fit()
    assert torch.load(run / "last" / "state.pt", weights_only=True)["step"] == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(FlowsuiteError, match="pass model="):  # Dies is not registered
        Trainer.resume(run, Points(jitter=0.05))
    summary = Trainer.resume(run, Points(jitter=0.05), val_set=Points(32, seed=2),
                             model=Gaussian(noise=0.1))
    assert summary.resumed_from == 8
    _assert_same_weights(straight, run)


def test_keyboard_interrupt_inside_a_step_saves_the_last_finished_step(tmp_path):
    straight = _straight(tmp_path)
    run = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(Dies(17, exc=KeyboardInterrupt, noise=0.1), Points(jitter=0.05),
                cfg(**RESUME_CFG), val_set=Points(32, seed=2), out_dir=run).fit()
    assert torch.load(run / "last" / "state.pt", weights_only=True)["step"] == 16
    Trainer(Gaussian(noise=0.1), Points(jitter=0.05), cfg(**RESUME_CFG),
            val_set=Points(32, seed=2), out_dir=run).fit(resume=True)
    _assert_same_weights(straight, run)


def test_time_limit_checkpoints_and_a_resumed_run_ends_the_same(tmp_path, step_clock, caplog):
    straight = _straight(tmp_path)
    run = tmp_path / "run"
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="flowsuite.core.trainer"):
        summary = Trainer(Gaussian(noise=0.1), Points(jitter=0.05), cfg(**RESUME_CFG),
                          val_set=Points(32, seed=2), out_dir=run).fit(time_limit=7)
    # The clock reads 1, 2, ... after steps 0, 1, ...: the limit is seen during step 6.
    assert not summary.finished and summary.step == 7 and summary.model_path is None
    assert "time limit reached at step 7 of 24" in caplog.text
    assert torch.load(run / "last" / "state.pt", weights_only=True)["step"] == 7
    assert not (run / "model.safetensors").exists()
    # A second sitting with a limit it does not reach finishes the run.
    summary = Trainer(Gaussian(noise=0.1), Points(jitter=0.05), cfg(**RESUME_CFG),
                      val_set=Points(32, seed=2), out_dir=run).fit(resume=True, time_limit=1e6)
    assert summary.finished and summary.resumed_from == 7 and summary.step == 24
    _assert_same_weights(straight, run)


@pytest.mark.parametrize("limit", [0, -1.0, math.inf, math.nan])
def test_time_limit_must_be_positive_and_finite(tmp_path, limit):
    with pytest.raises(FlowsuiteError, match="time_limit"):
        Trainer(Gaussian(), Points(), cfg(), out_dir=tmp_path / "r").fit(time_limit=limit)
    assert not (tmp_path / "r").exists()


def test_an_existing_run_is_never_overwritten(tmp_path):
    data = TensorDataset(torch.randn(64, 2))
    Trainer(Gaussian(), data, cfg(steps=5), out_dir=tmp_path).fit()
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(FlowsuiteError) as e:
        Trainer(Gaussian(), data, cfg(steps=5), out_dir=tmp_path).fit()
    assert "already holds a training run (finished at step 5)" in str(e.value)
    with pytest.raises(FlowsuiteError) as e:
        Trainer(Gaussian(), data, cfg(steps=5, lr=0.5), out_dir=tmp_path).fit(resume=True)
    assert "lr=0.05 there, 0.5 here" in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    summary = Trainer(Gaussian(), data, cfg(steps=5), out_dir=tmp_path).fit(resume=True)
    assert summary.step == 5 and summary.final_loss is None  # nothing left to do
    with pytest.raises(FlowsuiteError):
        Trainer(nn.Linear(2, 2), data, cfg(steps=5), out_dir=tmp_path / "model.safetensors").fit()


def test_resume_rebuilds_a_registered_model_and_extends_the_run(tmp_path):
    Trainer(Gaussian(dim=2), Points(), cfg(steps=10), out_dir=tmp_path).fit()
    summary = Trainer.resume(tmp_path, Points(), steps=14)
    assert summary.resumed_from == 10 and summary.step == 14
    assert TrainConfig.load(tmp_path / "config.json").steps == 14


def test_plain_tensor_loss_and_tuple_batches(tmp_path):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

        def forward(self, batch):
            x, y = batch
            return ((x @ self.w) - y).pow(2).mean()

    # 150 steps: at 60 about a third of random data sets ended 0.10-0.12 from the answer
    # (measured over 30 seeds); at 150 the worst of 30 is 0.002 off.
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, x @ torch.tensor([1.5, -2.0]))
    model = Plain()
    summary = Trainer(model, data, cfg(steps=150, lr=0.1, ema_decay=0), out_dir=tmp_path).fit()
    assert summary.final_loss < 0.05
    assert torch.allclose(model.w.detach(), torch.tensor([1.5, -2.0]), atol=0.1)


def test_bad_settings_are_one_line_errors():
    for bad in (dict(steps=0), dict(lr=-1.0), dict(ema_decay=1.0), dict(final_weights="best")):
        with pytest.raises(FlowsuiteError) as e:
            TrainConfig(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(FlowsuiteError):
        TrainConfig.from_dict({"steps": 3, "colour": "red"})


def test_compile_flag_compiles_the_training_module(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = Gaussian()
    Trainer(model, Points(), cfg(steps=3, compile=True), out_dir=tmp_path).fit()
    assert compiled == [model]


def test_bf16_autocast_can_be_asked_for_on_cpu(tmp_path):
    class Probe(Gaussian):
        dtypes: list = []

        def forward(self, batch):
            Probe.dtypes.append(self.mix(batch["x"]).dtype)
            return super().forward(batch)

    Trainer(Probe(), Points(), cfg(steps=2), out_dir=tmp_path / "a").fit()
    assert set(Probe.dtypes) == {torch.float32}  # off on the CPU by default
    Probe.dtypes.clear()
    Trainer(Probe(), Points(), cfg(steps=2, bf16=True), out_dir=tmp_path / "b").fit()
    assert set(Probe.dtypes) == {torch.bfloat16}


def test_loader_workers_do_not_change_the_result(tmp_path):
    for workers in (0, 2):
        torch.manual_seed(0)
        Trainer(Gaussian(), Points(jitter=0.1), cfg(steps=8, ckpt_every=8, num_workers=workers),
                out_dir=tmp_path / str(workers)).fit()
    _assert_same_weights(tmp_path / "0", tmp_path / "2")
