"""Safe file output: every file flowsuite writes appears whole or not at all, and a file the user
already has is never replaced unless they ask for it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flowsuite.core.errors import FlowsuiteError


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Raises a one-line ``FlowsuiteError`` if ``path`` exists and ``force`` is not set, or if it
    names a folder. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise FlowsuiteError(f"{p} is a folder; give a file name for the output")
    if p.exists() and not force:
        raise FlowsuiteError(f"{p} already exists; choose another name or pass --force to "
                             "replace it")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without an error the temporary
    file is renamed over ``path`` in one step, otherwise it is removed.

    With ``force=False`` an existing ``path`` is an error (checked before and at the rename).
    """
    target = check_writable(path, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix,
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not force and target.exists():
            raise FlowsuiteError(f"{target} appeared while it was being written; not replaced")
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_folder(out: Path, force: bool, ours: bool, what: str) -> None:
    """Refuses to write a ``what`` (e.g. "shape set") into ``out`` if it is a file, or a non-empty
    folder without ``force``; with ``force`` only a folder that is ``ours`` (an earlier set of
    the same kind) may be replaced, so a mistyped path never wipes a user's files."""
    if out.exists() and not out.is_dir():
        raise FlowsuiteError(f"{out} is a file; give a folder for the {what}")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FlowsuiteError(f"{out} is not empty; choose a new folder or pass --force to "
                                 f"replace the {what} in it")
        if not ours:
            raise FlowsuiteError(f"{out} is not empty and is not a flowsuite {what}; not "
                                 "replacing it even with --force: choose a new or empty folder")
