import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
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


def _python(*args: str, env: dict[str, str]) -> str:
    """Stdout of a Python process with these arguments and extra environment variables."""
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return result.stdout


def test_show_completion_prints_a_bash_completion_script() -> None:
    # Typer detects the running shell; this variable makes it take the shell given instead.
    env = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = _python("-m", "embedseg_cli", "--show-completion", "bash", env=env)
    assert "complete -o default -F _embedseg_completion embedseg" in script
    assert "_EMBEDSEG_COMPLETE=complete_bash" in script
    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "--install-completion" in help_text
    assert "--show-completion" in help_text


# What the completion script runs at each Tab: it must answer without the heavy imports.
_COMPLETE = (
    "import sys\n"
    "from embedseg_cli.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "heavy = sorted(m for m in ('torch', 'dask', 'zarr') if m in sys.modules)\n"
    "assert not heavy, heavy\n"
)


@pytest.mark.parametrize(
    ("words", "expected"),
    [("embedseg pr", ["prepare", "predict"]), ("embedseg predict --mo", ["--model"])],
)
def test_completion_answers_without_importing_torch_dask_or_zarr(
    words: str, expected: list[str]
) -> None:
    env = {
        "_EMBEDSEG_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    assert _python("-c", _COMPLETE, env=env).split() == expected


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


def test_progress_bar_shows_the_time_left() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from embedseg_cli.cli._common import _bar_columns

    now = [0.0]
    console = Console(file=io.StringIO(), width=100, record=True)
    bar = Progress(*_bar_columns(), console=console, get_time=lambda: now[0])
    task = bar.add_task("network", total=10)
    console.print(bar.make_tasks_table(bar.tasks))
    now[0] = 10.0
    bar.advance(task, 2)
    now[0] = 20.0
    bar.advance(task, 2)
    console.print(bar.make_tasks_table(bar.tasks))
    first, later = console.export_text().splitlines()
    assert first.endswith("0/10 0:00:00 elapsed -:--:-- left"), "unknown before any step"
    # Rich's rate: 2 steps in the 10 s between the two updates, so the 6 left take 30 s.
    assert later.endswith("4/10 0:00:20 elapsed 0:00:30 left")


# Config fields that no option sets directly (derived from other options, or fixed).
_NOT_OPTIONS = {
    "version",
    "weight_decay",
    "authors",
    "license",
    "ndim",
    "steps_per_epoch",
    "batch_size",
    "images",
    "image_shape",
    "tta",
}


def test_errors_in_option_values_name_options_that_exist() -> None:
    from embedseg_cli import config
    from embedseg_cli.cli._common import option_name

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    export = commands["export"].commands
    pairs = {
        config.PrepareConfig: commands["prepare"],
        config.TrainConfig: commands["train"],
        config.PredictConfig: commands["predict"],
        config.EvaluateConfig: commands["evaluate"],
        config.DemoConfig: commands["demo"],
        config.ExportModelConfig: export["model"],
        config.ExportLabelsConfig: export["labels"],
    }
    for model, command in pairs.items():
        names = {o for p in command.params for o in (*p.opts, str(p.name).upper())}
        for field in model.model_fields:
            if field in _NOT_OPTIONS:
                continue
            assert option_name(model.__name__, field) in names, (command.name, field)


def test_an_option_out_of_range_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path / "p.zarr"), "--lr", "-1"])
    assert result.exit_code == 2, result.output
    assert "error: --lr: Input should be greater than 0" in result.output
