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


@pytest.fixture
def error_line():
    """``error_line(result)``: the single error line of a ``gen`` command that failed cleanly."""
    return _error_line
