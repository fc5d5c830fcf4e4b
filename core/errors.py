"""Errors a user can cause, reported by the command line as one line without a traceback."""

from __future__ import annotations


class FlowsuiteError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint): the message says what is
    wrong and what to do. ``gen`` prints it on one line and exits with status 2."""


class CheckpointError(FlowsuiteError):
    """A checkpoint file that is missing, truncated, foreign or of another model."""
