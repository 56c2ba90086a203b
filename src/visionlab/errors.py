"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations

__all__ = ["VisionlabError", "Interrupted", "TrainingInterrupted", "PeerFailed"]


class VisionlabError(Exception):
    """An error caused by the user's input (path, task, config, data, checkpoint).

    The CLI prints ``str(err)`` on one line and exits non-zero, without a traceback
    unless ``--debug`` is given. ``hint`` says what to do about it.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


class Interrupted(VisionlabError):
    """A command stopped by Ctrl-C or SIGTERM; the message says what it had written (the CLI exits 130)."""


class TrainingInterrupted(Interrupted):
    """Training stopped by Ctrl-C or SIGTERM; the message says what was saved (the CLI exits 130)."""


class PeerFailed(VisionlabError):
    """Another process of a distributed job failed, and this one was stopped for it (not by the user)."""
