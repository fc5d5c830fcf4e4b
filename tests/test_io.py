"""Atomic, no-overwrite output."""

from __future__ import annotations

import os

import pytest

from flowsuite.core.errors import FlowsuiteError
from flowsuite.core.io import atomic_path


def test_atomic_write_mode_and_no_overwrite(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target, force=False) as tmp:
        tmp.write_text("a")
    assert target.read_text() == "a"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FlowsuiteError, match="--force"), atomic_path(target, force=False) as tmp:
        tmp.write_text("b")
    assert target.read_text() == "a"


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
