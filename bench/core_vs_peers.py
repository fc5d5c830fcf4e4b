"""flowsuite's core against zuko and nflows: the same two flows, the same data, the same optimiser.

Two models, built the same way in each library:

* ``maf``: 8 masked autoregressive steps, affine, MADE hidden (64, 64); the variable order
  alternates from step to step (nflows has no order option, so it gets a reversing permutation
  between steps, its documented way).
* ``spline``: 8 rational-quadratic spline couplings, ``--bins`` bins on ``[-bound, bound]`` with
  identity (linear) tails, conditioner MLP hidden (64, 64), alternating halves.

flowsuite runs twice: ``flowsuite`` with its parameters in one flat tensor
(``flatten_parameters``, the Trainer's ``flat_parameters=True``) and ``flowsuite-per-tensor``
with ordinary per-layer parameters, so the gain of each part shows; the peers keep their
ordinary parameters.

Each is trained for ``--steps`` Adam steps (same learning rate, default flags) at batch 512 on a
stream of samples from a 2-D Gaussian mixture whose log-density is exact, so the true NLL of the
held-out set is known. Reported per library and model: steps per second after a warm-up,
held-out NLL, and for ``torch.compile`` the compile time and the graph breaks that
``torch._dynamo.explain`` finds. Repeats are interleaved (every contender once per round, in a
rotating order) and medians are reported, since the machine may be shared; "paired" is the
median over rounds of flowsuite against the fastest peer of the same round (CPU time).

    python bench/core_vs_peers.py --repeats 3 --out bench/results/core_vs_peers_cpu.json

Needs ``zuko`` and ``nflows`` (``pip install zuko nflows``); a missing peer is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

FEATURES = 2
STEPS_PER_FLOW = 8
HIDDEN = (64, 64)
BATCH = 512

# --------------------------------------------------------------------------------------------
# The target density: a Gaussian mixture with an exact log-density.
# --------------------------------------------------------------------------------------------


class Mixture:
    """A 2-D Gaussian mixture: six correlated components on a ring and one at the centre.

    Its support lies well inside ``[-4, 4]^2`` (the splines' interval), it is multi-modal and
    anisotropic, so neither model fits it exactly in a few hundred steps, and ``log_prob`` is
    exact, so the best achievable NLL on any sample is known.
    """

    def __init__(self) -> None:
        k = 6
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = torch.stack([2.2 * torch.cos(angles), 2.2 * torch.sin(angles)], -1)
        # Each ring component is stretched along the tangent of the ring.
        tangent = torch.stack([-torch.sin(angles), torch.cos(angles)], -1)
        normal = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
        covs = (0.45**2 * tangent[:, :, None] * tangent[:, None, :]
                + 0.2**2 * normal[:, :, None] * normal[:, None, :])
        self.means = torch.cat([means, torch.zeros(1, 2, dtype=torch.float64)])
        self.covs = torch.cat([covs, (0.5**2 * torch.eye(2, dtype=torch.float64))[None]])
        self.weights = torch.tensor([1.0] * k + [1.5], dtype=torch.float64)
        self.weights /= self.weights.sum()
        self.components = torch.distributions.MultivariateNormal(self.means, self.covs)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` samples ``(n, 2)`` in float64."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)[comp]
        eps = torch.randn(n, 2, 1, dtype=torch.float64, generator=generator)
        return self.means[comp] + (chol @ eps).squeeze(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """The exact log-density ``(n,)`` of ``x`` ``(n, 2)``."""
        lp = self.components.log_prob(x.double()[:, None, :]) + self.weights.log()
        return torch.logsumexp(lp, -1)


# --------------------------------------------------------------------------------------------
# The same two models in each library. Each builder returns (module, log_prob function).
# --------------------------------------------------------------------------------------------

LogProb = Callable[[Tensor], Tensor]


def build_flowsuite(model: str, bins: int, bound: float, flat: bool = True
                    ) -> tuple[nn.Module, LogProb]:
    """flowsuite's flow; ``flat``: with its parameters in one tensor (``flatten_parameters``,
    what ``TrainConfig(flat_parameters=True)`` does), otherwise ordinary per-layer ones."""
    from flowsuite.core import (
        Compose,
        Flow,
        MaskedAutoregressive,
        SplineCoupling,
        StandardNormal,
        flatten_parameters,
    )

    if model == "maf":
        steps = [MaskedAutoregressive(FEATURES, HIDDEN, order=None if i % 2 == 0 else "reverse")
                 for i in range(STEPS_PER_FLOW)]
    else:
        steps = [SplineCoupling(FEATURES, hidden=HIDDEN, bins=bins, bound=bound, parity=i % 2)
                 for i in range(STEPS_PER_FLOW)]
    flow = Flow(Compose(*steps), StandardNormal(FEATURES))
    if flat:
        flatten_parameters(flow)
    return flow, flow.log_prob


def build_zuko(model: str, bins: int, bound: float) -> tuple[nn.Module, LogProb]:
    import zuko
    from zuko.distributions import DiagNormal
    from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
    from zuko.transforms import MonotonicRQSTransform

    if model == "maf":
        # zuko's MAF alternates the variable order between steps by itself.
        flow = zuko.flows.MAF(FEATURES, transforms=STEPS_PER_FLOW, hidden_features=HIDDEN)
    else:
        steps = [GeneralCouplingTransform(
            FEATURES, mask=torch.arange(FEATURES) % 2 == i % 2,
            univariate=partial(MonotonicRQSTransform, bound=bound),
            shapes=[(bins,), (bins,), (bins - 1,)], hidden_features=HIDDEN)
            for i in range(STEPS_PER_FLOW)]
        base = UnconditionalDistribution(DiagNormal, torch.zeros(FEATURES), torch.ones(FEATURES),
                                         buffer=True)
        flow = Flow(steps, base)

    def log_prob(x: Tensor) -> Tensor:
        return flow().log_prob(x)

    return flow, log_prob


def build_nflows(model: str, bins: int, bound: float) -> tuple[nn.Module, LogProb]:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    steps: list[nn.Module] = []
    for i in range(STEPS_PER_FLOW):
        if model == "maf":
            # One feed-forward block after the first masked layer: hidden (64, 64).
            steps.append(MaskedAffineAutoregressiveTransform(
                FEATURES, HIDDEN[0], num_blocks=len(HIDDEN) - 1, use_residual_blocks=False))
            if i < STEPS_PER_FLOW - 1:
                steps.append(ReversePermutation(FEATURES))
        else:
            mask = torch.tensor([1, -1] if i % 2 == 0 else [-1, 1])
            steps.append(PiecewiseRationalQuadraticCouplingTransform(
                mask, lambda n_in, n_out: ContextFree(MLP([n_in], [n_out], list(HIDDEN))),
                num_bins=bins,
                tails="linear", tail_bound=bound))
    flow = Flow(CompositeTransform(steps), StandardNormal([FEATURES]))
    return flow, flow.log_prob


class ContextFree(nn.Module):
    """Lets a context-free net stand where nflows' couplings call ``net(x, context)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


BUILDERS: dict[str, Callable[[str, int, float], tuple[nn.Module, LogProb]]] = {
    "flowsuite": build_flowsuite,
    "flowsuite-per-tensor": partial(build_flowsuite, flat=False),
    "zuko": build_zuko, "nflows": build_nflows}
DISTRIBUTIONS = {"flowsuite": "flowsuite", "flowsuite-per-tensor": "flowsuite", "zuko": "zuko",
                 "nflows": "nflows"}


def available_libraries() -> list[str]:
    libs = []
    for lib in BUILDERS:
        try:
            __import__(DISTRIBUTIONS[lib])
        except Exception as err:  # a broken peer is reported and skipped, not fatal
            print(f"skipping {lib}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        libs.append(lib)
    return libs


# --------------------------------------------------------------------------------------------
# One contender: a model, its (maybe compiled) loss, and its timings over the repeats.
# --------------------------------------------------------------------------------------------


@dataclass
class Contender:
    lib: str
    model: str
    mode: str  # "eager" or "compiled"
    module: nn.Module
    loss: Callable[[Tensor], Tensor]
    log_prob: LogProb
    steps_per_s: list[float] = field(default_factory=list)
    steps_per_cpu_s: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    first_step_s: list[float] = field(default_factory=list)
    graph: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.lib}/{self.model}/{self.mode}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_contender(lib: str, model: str, mode: str, args: argparse.Namespace,
                   device: torch.device, probe: Tensor) -> Contender:
    torch.manual_seed(0)
    module, log_prob = BUILDERS[lib](model, args.bins, args.bound)
    module.to(device)

    def loss(x: Tensor) -> Tensor:
        return -log_prob(x).mean()

    graph: dict = {}
    if mode == "compiled":
        graph = graph_breaks(loss, probe)
        loss = torch.compile(loss)
    return Contender(lib, model, mode, module, loss, log_prob, graph=graph)


def graph_breaks(fn: Callable[[Tensor], Tensor], x: Tensor) -> dict:
    """The graphs and graph breaks that dynamo finds when it traces ``fn(x)``."""
    torch._dynamo.reset()
    try:
        out = torch._dynamo.explain(fn)(x)
    except Exception as err:  # report, do not die: a peer may not trace at all
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    finally:
        torch._dynamo.reset()
    reasons = sorted({str(getattr(r, "reason", r)).splitlines()[0][:160]
                      for r in out.break_reasons})
    return {"graphs": out.graph_count, "graph_breaks": out.graph_break_count,
            "reasons": reasons}


def run_once(c: Contender, data: Tensor, test: Tensor, args: argparse.Namespace, seed: int,
             device: torch.device) -> None:
    """Re-initialises ``c``'s model from ``seed``, trains it on ``data`` and records its speed
    and held-out NLL."""
    torch.manual_seed(seed)
    fresh, _ = BUILDERS[c.lib](c.model, args.bins, args.bound)
    c.module.load_state_dict(fresh.state_dict())  # in place: a compiled loss stays valid
    opt = torch.optim.Adam(c.module.parameters(), lr=args.lr)
    c.module.train()
    warm = min(args.warmup, args.steps - 1)
    t_start = t_warm = time.perf_counter()
    cpu_warm = time.process_time()
    for step in range(args.steps):
        if step == warm:
            synchronize(device)
            t_warm, cpu_warm = time.perf_counter(), time.process_time()
        loss = c.loss(data[step])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 0:
            synchronize(device)
            c.first_step_s.append(time.perf_counter() - t_start)
    synchronize(device)
    c.steps_per_s.append((args.steps - warm) / (time.perf_counter() - t_warm))
    c.steps_per_cpu_s.append((args.steps - warm) / (time.process_time() - cpu_warm))
    c.module.eval()
    with torch.no_grad():
        nll = torch.cat([-c.log_prob(chunk) for chunk in test.split(8192)]).mean()
    c.nll.append(float(nll))


# --------------------------------------------------------------------------------------------
# Machine description, report and main.
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    versions = {}
    for lib in ("flowsuite", "zuko", "nflows", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[lib] = importlib.metadata.version(lib)
    info = {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads":
        torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device), "versions": versions,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(contenders: list[Contender], truth: dict, args: argparse.Namespace) -> list[dict]:
    rows = []
    for c in contenders:
        row = {"library": c.lib, "model": c.model, "mode": c.mode,
               "steps_per_s": median(c.steps_per_s), "steps_per_s_all": c.steps_per_s,
               "steps_per_cpu_s": median(c.steps_per_cpu_s),
               "steps_per_cpu_s_all": c.steps_per_cpu_s,
               "nll": median(c.nll), "nll_all": c.nll,
               "nll_gap": median(c.nll) - truth["test_nll"],
               "first_step_s": c.first_step_s[0] if c.first_step_s else float("nan")}
        if c.mode == "compiled":
            row["graph"] = c.graph
        rows.append(row)
    by_key = {(r["library"], r["model"], r["mode"]): r for r in rows}
    for r in rows:
        eager = by_key.get((r["library"], r["model"], "eager"))
        if r["mode"] == "compiled" and eager:
            r["compile_speedup"] = r["steps_per_s"] / eager["steps_per_s"]
            r["compile_speedup_cpu"] = r["steps_per_cpu_s"] / eager["steps_per_cpu_s"]
        peers = [p for k, p in by_key.items()
                 if not k[0].startswith("flowsuite") and k[1:] == (r["model"], r["mode"])]
        if r["library"].startswith("flowsuite") and peers:
            best = max(peers, key=lambda p: p["steps_per_s"])
            r["speedup_vs_fastest_peer"] = r["steps_per_s"] / best["steps_per_s"]
            r["fastest_peer"] = best["library"]
            best_cpu = max(peers, key=lambda p: p["steps_per_cpu_s"])
            r["cpu_speedup_vs_fastest_peer"] = r["steps_per_cpu_s"] / best_cpu["steps_per_cpu_s"]
            r["nll_minus_best_peer"] = r["nll"] - min(p["nll"] for p in peers)
            # Paired: each round against the fastest peer of the same round (run minutes
            # apart at most), which cancels much of the drift of a shared machine's load.
            for key, out_key in (("steps_per_s_all", "paired_speedup_vs_fastest_peer"),
                                 ("steps_per_cpu_s_all", "paired_cpu_speedup_vs_fastest_peer")):
                ratios = [mine / max(p[key][i] for p in peers)
                          for i, mine in enumerate(r[key])]
                r[out_key + "_all"] = ratios
                r[out_key] = median(ratios)

    print(f"\ntrue NLL of the held-out set: {truth['test_nll']:.4f} nats "
          f"(entropy by Monte Carlo: {truth['entropy']:.4f} +- {truth['entropy_se']:.4f})")
    head = (f"{'model':7} {'mode':8} {'library':20} {'steps/s':>8} {'vs peer':>8} "
            f"{'steps/cpu-s':>11} {'vs peer':>8} {'paired':>7} {'NLL':>7} {'gap':>7} "
            f"{'1st step s':>10} {'compile x':>9}  graph breaks")
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (r["model"], r["mode"],
                                         not r["library"].startswith("flowsuite"),
                                         r["library"])):
        vs = f"{r['speedup_vs_fastest_peer']:.2f}x" if "speedup_vs_fastest_peer" in r else ""
        vsc = (f"{r['cpu_speedup_vs_fastest_peer']:.2f}x"
               if "cpu_speedup_vs_fastest_peer" in r else "")
        pair = (f"{r['paired_cpu_speedup_vs_fastest_peer']:.2f}x"
                if "paired_cpu_speedup_vs_fastest_peer" in r else "")
        cx = f"{r['compile_speedup_cpu']:.2f}x" if "compile_speedup_cpu" in r else ""
        g = r.get("graph", {})
        gb = ("" if not g else g.get("error", f"{g['graph_breaks']} ({g['graphs']} graphs)"))
        print(f"{r['model']:7} {r['mode']:8} {r['library']:20} {r['steps_per_s']:8.1f} "
              f"{vs:>8} {r['steps_per_cpu_s']:11.1f} {vsc:>8} {pair:>7} {r['nll']:7.4f} "
              f"{r['nll_gap']:7.4f} {r['first_step_s']:10.2f} {cx:>9}  {gb}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--warmup", type=int, default=25, help="steps left out of the timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--bound", type=float, default=4.0)
    p.add_argument("--libraries", nargs="+", default=list(BUILDERS))
    p.add_argument("--models", nargs="+", default=["maf", "spline"], choices=["maf", "spline"])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                   choices=["eager", "compiled"])
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (1 by default: steadier on a shared machine)")
    p.add_argument("--test-size", type=int, default=20000)
    p.add_argument("--data-seed", type=int, default=1234,
                   help="seed of the training stream and the held-out set (another seed, another "
                        "draw of the same mixture: how much the NLLs depend on the draw)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default bench/results/core_vs_peers_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    out = args.out or Path(__file__).parent / "results" / f"core_vs_peers_{device.type}.json"
    warnings.filterwarnings("ignore", message="Inputs to the softmax are not scaled down")

    # One data stream and one held-out set for everyone.
    target = Mixture()
    g = torch.Generator().manual_seed(args.data_seed)
    data = target.sample(args.steps * BATCH, g).float().reshape(args.steps, BATCH, FEATURES)
    test = target.sample(args.test_size, g)
    mc = target.log_prob(target.sample(2_000_000, g))
    truth = {"test_nll": float(-target.log_prob(test).mean()), "entropy": float(-mc.mean()),
             "entropy_se": float(mc.std() / math.sqrt(mc.numel()))}
    data, test = data.to(device), test.float().to(device)

    for name in ("recompile_limit", "cache_size_limit"):  # one compiled loss per contender
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    # Cold compiles for everyone: no library profits from graphs cached on disk by an earlier run.
    for module, flag in (("torch._inductor.config", "fx_graph_cache"),
                         ("torch._functorch.config", "enable_autograd_cache")):
        with contextlib.suppress(ImportError):
            setattr(importlib.import_module(module), flag, False)
    load_before = os.getloadavg()
    libs = [lib for lib in available_libraries() if lib in args.libraries]
    contenders = [make_contender(lib, model, mode, args, device, data[0])
                  for mode in args.modes for model in args.models for lib in libs]
    for rep in range(args.repeats):
        # Rotate the order so that no library always runs first (or last) in a round.
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        for c in order:
            run_once(c, data, test, args, seed=rep, device=device)
            print(f"round {rep + 1}/{args.repeats} {c.name:38} {c.steps_per_s[-1]:7.1f} steps/s "
                  f"{c.steps_per_cpu_s[-1]:7.1f} steps/cpu-s  NLL {c.nll[-1]:.4f}  "
                  f"first step {c.first_step_s[-1]:.2f} s", flush=True)

    rows = report(contenders, truth, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "machine": machine(device), "truth": truth, "results": rows,
              "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()}}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
