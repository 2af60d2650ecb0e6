import logging
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from embedseg_cli import __version__
from embedseg_cli.cli import app

COMMANDS = ["prepare", "train", "predict", "evaluate", "demo", "export"]


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


def test_export_lists_its_subcommands() -> None:
    result = CliRunner().invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    assert "model" in result.output
    assert "labels" in result.output
    for sub in ("model", "labels"):
        sub_help = CliRunner().invoke(app, ["export", sub, "--help"])
        assert sub_help.exit_code == 0
        assert f"Usage: embedseg export {sub}" in sub_help.output


def test_progress_in_logs_is_a_line_every_few_seconds(caplog: pytest.LogCaptureFixture) -> None:
    from embedseg_cli.cli._common import _LogProgress

    progress = _LogProgress()
    with caplog.at_level(logging.INFO, logger="embedseg_cli.progress"):
        progress.start("network", total=4)
        for _ in range(3):
            progress.advance()
        assert caplog.records == [], "no line before a few seconds have passed"
        progress.interval = 0.0
        progress.advance(0)
        progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("network: 3/4 (")
    assert "left" in lines[0]
    assert lines[-1].startswith("network: 4/4 (")
