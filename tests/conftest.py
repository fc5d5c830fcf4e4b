"""Test-wide settings."""

from __future__ import annotations

import os

import torch

# Under pytest-xdist each worker is one process per core: more than one intra-op thread per worker
# oversubscribes the cores, and small ops then spend most of their time waiting for threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
