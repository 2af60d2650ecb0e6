"""``embedseg evaluate``: score predicted labels against the ground truth."""

from __future__ import annotations

from embedseg_cli.cli.unavailable import _not_yet


def evaluate_command() -> None:
    """Score predicted labels against the ground truth (not implemented yet)."""
    _not_yet("evaluate")
