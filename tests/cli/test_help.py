import subprocess
import sys

import pytest
from typer.testing import CliRunner

from embedseg_cli import __version__
from embedseg_cli.cli import app

COMMANDS = ["prepare", "train", "predict", "evaluate", "export"]


def test_help_imports_no_torch_dask_or_zarr() -> None:
    code = (
        "import sys\n"
        "from embedseg_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"for args in [['--help']] + [[c, '--help'] for c in {COMMANDS!r}] + [['--version']]:\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "heavy = sorted(m for m in ('torch', 'dask', 'zarr') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "embedseg_cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"embedseg {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_an_example_or_a_notice(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: embedseg " + command in result.output


def test_no_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "prepare" in result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("command", ["export"])
def test_commands_not_landed_yet_say_so(command: str) -> None:
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 1
    assert "not implemented yet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
