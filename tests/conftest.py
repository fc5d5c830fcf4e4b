"""Test-wide settings."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist each worker is one process per core: more than one intra-op thread per worker
# oversubscribes the cores, and small ops then spend most of their time waiting for threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def _error_line(result) -> str:
    """The one ``error: ...`` line of a CliRunner result that failed as a user error (exit 2,
    no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(autouse=True)
def _same_start_for_every_test():
    """Every test starts from the same global torch seed, so what it draws (a model's
    initialisation above all) does not depend on which tests ran before it in its worker: under
    xdist the order changes whenever tests are added, and a test that held for one start could
    fail for another (tests/test_pointflow_model.py did once)."""
    torch.manual_seed(0)


@pytest.fixture
def error_line():
    """``error_line(result)``: the single error line of a ``gen`` command that failed cleanly."""
    return _error_line


class _Clock:
    """Stands in for the trainer's ``time`` module: ``monotonic()`` reads 0, 1, 2, ... seconds,
    one more at every call (the trainer reads it once when ``fit`` starts and once per step)."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        value, self.now = self.now, self.now + 1.0
        return value

    def __getattr__(self, name):
        import time

        return getattr(time, name)


@pytest.fixture
def step_clock(monkeypatch):
    """Makes a training step take one second on the trainer's clock, so ``time_limit=k`` stops a
    run after exactly ``k`` steps of that ``fit`` call."""
    import flowsuite.core.trainer as trainer_module

    clock = _Clock()
    monkeypatch.setattr(trainer_module, "time", clock)
    return clock


@pytest.fixture
def tiny_prior():
    """A factory of tiny mel priors: 8 bands, 2-frame steps, styles "a" and "b", a 3-component
    mixture, any other argument given, seeded, ActNorm initialised by a first batch."""
    import torch

    from flowsuite.musicflow.prior import MelPrior

    def make(**kw) -> MelPrior:
        torch.manual_seed(0)
        model = MelPrior(n_mel=8, block=2, hidden=12, n_flows=2, flow_hidden=[16], style_dim=3,
                         styles=["a", "b"], mixture=3, **kw)
        with torch.no_grad():
            model(torch.randn(4, 8, 6))
        return model

    return make
