"""Progress reporting as a callback, so that library code never draws on a terminal.

Long-running library functions accept a :class:`Progress`. The command-line interface passes
one that draws a Rich progress bar on a terminal, or writes plain log lines otherwise; library
callers may pass their own or nothing (:class:`NullProgress`). A :class:`Progress` may also
stop the task by raising :class:`CancelledError` from ``start`` or ``advance`` (the napari
plugin's cancel button works this way).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CancelledError", "NullProgress", "Progress"]


class CancelledError(Exception):
    """Raised by a :class:`Progress` to stop the task it reports on.

    It is raised between steps and the library lets it through like an interruption.
    ``predict`` on dask's threads waits for the tasks already running first, so nothing is
    written after it has returned (on a dask cluster, tasks already running finish there);
    it leaves an interrupted run's work folder, as a killed run does.
    """


class Progress(Protocol):
    """Receives the progress of one long task at a time."""

    def start(self, description: str, total: int) -> None:
        """Begin a task of ``total`` steps; may raise :class:`CancelledError` to stop it."""

    def advance(self, steps: int = 1) -> None:
        """Record ``steps`` more completed steps; may raise :class:`CancelledError` to stop."""

    def finish(self) -> None:
        """End the current task."""


class NullProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, description: str, total: int) -> None:
        """Ignore the start of a task."""

    def advance(self, steps: int = 1) -> None:
        """Ignore progress."""

    def finish(self) -> None:
        """Ignore the end of a task."""
