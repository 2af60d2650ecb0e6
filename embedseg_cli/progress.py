"""Progress reporting as a callback, so that library code never draws on a terminal.

Long-running library functions accept a :class:`Progress`. The command-line interface passes
one that draws a Rich progress bar on a terminal, or writes plain log lines otherwise; library
callers may pass their own or nothing (:class:`NullProgress`).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullProgress", "Progress"]


class Progress(Protocol):
    """Receives the progress of one long task at a time."""

    def start(self, description: str, total: int) -> None:
        """Begin a task of ``total`` steps."""

    def advance(self, steps: int = 1) -> None:
        """Record ``steps`` more completed steps of the current task."""

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
