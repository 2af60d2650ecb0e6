"""Every preset names options its command has, so none is silently ignored."""

from typing import Any

import pytest
import typer.main

from embedseg_cli.cli import app
from embedseg_cli.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_sets_only_options_of_its_commands(name: str) -> None:
    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert PRESETS[name].train, f"{name} sets no train option"
    for command in ("prepare", "train"):
        options = getattr(PRESETS[name], command)
        params = {p.name for p in commands[command].params}
        assert set(options) <= params, f"{name}: {command} has no {set(options) - params}"
