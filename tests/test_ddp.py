"""Data-parallel training: two CPU processes on gloo launched by torchrun."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(cmd: list[str], out: Path, flat: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLOWSUITE_TEST_FLAT": "1" if flat else "0"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    proc = subprocess.run([*cmd, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0 and "(SIGABRT)" in proc.stderr:
        # Once in a few full-suite runs on 2 loaded cores a gloo rank died of SIGABRT (not
        # reproduced in isolation); one more launch tells that apart from a real failure, which
        # aborts again or fails the comparisons below.
        first = proc.stderr[-1500:]
        shutil.rmtree(out, ignore_errors=True)  # the aborted run's folder would refuse the next
        proc = subprocess.run([*cmd, str(WORKER), str(out)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, first + "\n--- retried ---\n" + proc.stderr[-1500:]
    assert proc.returncode == 0, proc.stderr[-3000:]


def _single_process(out: Path) -> None:
    """The reference run, in this process (saves starting another interpreter)."""
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.main(str(out))


@pytest.mark.slow
@pytest.mark.parametrize("flat", [False, True], ids=["per-tensor", "flat"])
def test_two_processes_agree_and_match_one(tmp_path, flat):
    """With ``flat``, the two processes train with flat parameters and still match the
    single process with ordinary ones."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
         ddp, flat)
    single.mkdir()
    _single_process(single)

    r0, r1 = load_file(ddp / "rank0.safetensors"), load_file(ddp / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # Each process took half of every global batch: the same updates as one process, up to the
    # order of floating-point sums.
    ref = load_file(single / "rank0.safetensors")
    for k in ref:
        assert torch.allclose(r0[k], ref[k], rtol=1e-4, atol=1e-5), k

    lines = [json.loads(s) for s in (ddp / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train] == [10, 20, 30, 40]  # written once, by rank 0
    assert train[-1]["loss"] < 0.3 * train[0]["loss"]
    assert sorted(p.name for p in (ddp / "run").iterdir()) == [
        "best.safetensors", "config.json", "last", "metrics.jsonl", "model.safetensors"]
