"""Commands whose implementation has not landed yet: they say so and exit with code 1."""

from __future__ import annotations

from embedseg_cli.cli._common import handle_errors
from embedseg_cli.errors import NotImplementedYetError


def _not_yet(command: str) -> None:
    with handle_errors():
        msg = f"`embedseg {command}` is not implemented yet in this version"
        raise NotImplementedYetError(msg)


def export_command() -> None:
    """Export a model or predictions to other formats (not implemented yet)."""
    _not_yet("export")
