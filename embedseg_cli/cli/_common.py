"""What every command shares: the consoles, logging, progress display and error handling."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgressBar

from embedseg_cli.config import parse_bytes, parse_size
from embedseg_cli.errors import EmbedsegError, OptionValueError
from embedseg_cli.presets import PRESETS

__all__ = [
    "bytes_option",
    "describe_os_error",
    "err_console",
    "handle_errors",
    "make_progress",
    "option_name",
    "out_console",
    "preset_values",
    "setup_logging",
    "size_option",
]

# Away from a terminal (a pipe, a log file) tables get room rather than the 80-column default.
out_console = Console(width=None if sys.stdout.isatty() else 160)
"""Results: tables and ``--json`` go to stdout."""
err_console = Console(stderr=True)
"""Logs, progress and errors go to stderr."""

_state = {"quiet": False}


def setup_logging(verbosity: int) -> None:
    """Send the package's log records to stderr: Rich on a terminal, plain lines otherwise."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    _state["quiet"] = verbosity < 0
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("embedseg_cli")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _duration(seconds: float) -> str:
    """A duration for a log line: seconds up to a minute, then minutes, then hours.

    Examples
    --------
    >>> _duration(42.4), _duration(80), _duration(4523)
    ('42 s', '1m20s', '1h15m')
    """
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _LogProgress:
    """Progress as plain log lines (for log files and batch jobs): one every few seconds."""

    interval = 5.0
    """Seconds between lines."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("embedseg_cli.progress")
        self._description = ""
        self._total = 0
        self._done = 0
        self._started = self._last = 0.0

    def start(self, description: str, total: int) -> None:
        self._description, self._total, self._done = description, total, 0
        self._started = self._last = time.perf_counter()

    def advance(self, steps: int = 1) -> None:
        """Log a line at the end and at most every few seconds before it."""
        self._done += steps
        now = time.perf_counter()
        if self._done < self._total and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._started
        line = f"{self._description}: {self._done}/{self._total} ({_duration(elapsed)}"
        if 0 < self._done < self._total:
            remaining = elapsed * (self._total - self._done) / self._done
            line += f", about {_duration(remaining)} left"
        self._logger.info("%s)", line)

    def finish(self) -> None:
        self._description = ""


def _bar_columns() -> tuple[ProgressColumn, ...]:
    """What the bar shows: ``network ━━━━━━━╺━━━━━ 4/10 0:00:20 elapsed 0:00:30 left``."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("elapsed"),
        TimeRemainingColumn(),
        TextColumn("left"),
    )


class _RichProgress:
    """Progress as a Rich bar on the terminal."""

    def __init__(self) -> None:
        self._bar = RichProgressBar(*_bar_columns(), console=err_console, transient=True)
        self._task: int | None = None

    def start(self, description: str, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, steps)  # type: ignore[arg-type]

    def finish(self) -> None:
        self._bar.stop()
        self._task = None


class _QuietProgress:
    def start(self, description: str, total: int) -> None:
        """Show nothing."""

    def advance(self, steps: int = 1) -> None:
        """Show nothing."""

    def finish(self) -> None:
        """Show nothing."""


def make_progress(*, log_lines: bool = True) -> _LogProgress | _RichProgress | _QuietProgress:
    """The progress display for this run: a bar on a terminal, log lines otherwise.

    With ``log_lines`` false there are no progress lines away from a terminal: the caller
    logs a line of its own per unit of work (``train`` logs one per epoch).
    """
    if _state["quiet"]:
        return _QuietProgress()
    if err_console.is_terminal:
        return _RichProgress()
    return _LogProgress() if log_lines else _QuietProgress()


_COMMANDS = {
    "PrepareConfig": ("prepare",),
    "TrainConfig": ("train",),
    "PredictConfig": ("predict",),
    "EvaluateConfig": ("evaluate",),
    "DemoConfig": ("demo",),
    "ExportModelConfig": ("export", "model"),
    "ExportLabelsConfig": ("export", "labels"),
}
"""The command whose options fill each config."""

_PARAMETERS = {"learning_rate": "lr", "input": "input_path", "format": "format_"}
"""Config fields filled by a command-line parameter of another name."""


def option_name(config: str, field: str) -> str:
    """How the command line spells the option (or argument) that sets ``config.field``.

    Examples
    --------
    >>> option_name("TrainConfig", "learning_rate"), option_name("TrainConfig", "store")
    ('--lr', 'STORE')
    """
    from embedseg_cli.cli import app  # here: the app imports this module

    command: Any = typer.main.get_command(app)
    for part in _COMMANDS.get(config, ()):
        command = command.commands[part]
    for param in command.params if config in _COMMANDS else ():
        if param.name in (field, _PARAMETERS.get(field)):
            if param.param_type_name == "argument":
                return str(param.name).upper()
            return str(max(param.opts, key=len))
    return "--" + field.replace("_", "-")


_WRITE_ERRORS = {
    errno.EACCES: "permission denied: choose another --out or fix the folder's permissions",
    errno.EPERM: "operation not permitted: choose another --out or fix the folder's permissions",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another --out",
    errno.EFBIG: "the file is too large for the file system or the file-size limit (ulimit -f): "
    "free some space, raise the limit or choose another --out",
}
"""Operating-system errors a user can fix (permissions, space), with what to do."""

_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
"""numpy's message for a write cut short (no errno): a full disk or a file-size limit."""


def describe_os_error(exc: OSError, path: Path | str | None = None) -> str | None:
    """One line for an error of permission or space, or None for any other ``OSError``.

    ``path`` names the output where the error does not carry a file name (a failed
    ``write`` on an open file does not).

    Examples
    --------
    >>> describe_os_error(PermissionError(13, "Permission denied", "out/a.tif"))
    "cannot write out/a.tif: permission denied: choose another --out or fix the folder's permissions"
    >>> describe_os_error(PermissionError(13, "Permission denied", "in/a.tif"), "out/b.tif")
    'cannot open in/a.tif: permission denied: check that you may read it'
    >>> describe_os_error(FileNotFoundError(2, "No such file")) is None
    True
    """
    fix = _WRITE_ERRORS.get(exc.errno) if exc.errno is not None else None
    if exc.errno is None and _SHORT_WRITE.fullmatch(str(exc)):
        # numpy's tofile (used by tifffile) reports a short write without an errno.
        fix = _WRITE_ERRORS[errno.ENOSPC].replace("is full", "is full (or a file-size limit)")
    if fix is None:
        return None
    where = exc.filename if exc.filename is not None else path
    if path is not None and where is not None and _is_staging_of(Path(where), Path(path)):
        where = path  # a hidden staging or work file of the output: name the output
    if (
        exc.errno in (errno.EACCES, errno.EPERM)
        and path is not None
        and where is not None
        and not _is_within(Path(where), Path(path))
    ):
        # Not the output: an input or a folder on the way that this user may not read.
        return f"cannot open {where}: permission denied: check that you may read it"
    return f"cannot write {where if where is not None else 'the output'}: {fix}"


def _is_staging_of(where: Path, out: Path) -> bool:
    return where.name.startswith(f".{out.name}.")


def _is_within(where: Path, out: Path) -> bool:
    """Whether ``where`` is the output, inside it, or a file beside it that belongs to it."""
    where, out = where.absolute(), out.absolute()
    return where == out or out in where.parents or _is_staging_of(where, out) or where == out.parent


def _fail(message: str | list[str], code: int, *, as_json: bool) -> NoReturn:
    """Print ``message`` (a line per problem) on stderr, with ``as_json`` an object on stdout."""
    lines = [message] if isinstance(message, str) else message
    for line in lines:
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    if as_json:
        # Scripts that read --json get an object on stdout whatever happened.
        error = {"error": "; ".join(lines), "exit_code": code}
        out_console.print_json(json.dumps(error))
    raise typer.Exit(code)


@contextlib.contextmanager
def handle_errors(*, as_json: bool = False, out: Path | str | None = None) -> Iterator[None]:
    """Turn expected errors into red lines on stderr and an exit code.

    Exit code 1 for errors in the input (the message names the file and the fix) and for a
    folder that cannot be written or a full disk, 2 for an option value out of its range or
    one that does not fit the input (:class:`~embedseg_cli.errors.OptionValueError`): usage
    errors, as for a malformed value; 130 on Ctrl-C. With ``as_json`` a failure also prints
    ``{"error": ..., "exit_code": ...}`` on stdout. ``out`` names the output in a message
    about an error of the operating system that names no file.
    """
    try:
        yield
    except OptionValueError as exc:
        _fail(str(exc), 2, as_json=as_json)
    except EmbedsegError as exc:
        _fail(str(exc), 1, as_json=as_json)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]", highlight=False)
        raise typer.Exit(130) from None
    except OSError as exc:
        message = describe_os_error(exc, out)
        if message is None:
            raise
        _fail(message, 1, as_json=as_json)
    except ValidationError as exc:
        options = exc.title.endswith("Config")  # the command's options, not a stored record
        lines = []
        for problem in exc.errors():
            message = problem["msg"].removeprefix("Value error, ")
            loc = problem["loc"]
            where = (
                (option_name(exc.title, str(loc[0])) if loc else "")
                if options
                else f"{exc.title} {'.'.join(str(part) for part in problem['loc'])}"
            )
            lines.append(f"{where}: {message}" if where else message)
        _fail(lines, 2 if options else 1, as_json=as_json)


def size_option(text: str | None, option: str) -> tuple[int, ...] | None:
    """Parse a size option (``256`` or ``32x128x128``), as a usage error if malformed."""
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def bytes_option(text: str, option: str = "--memory-budget") -> int:
    """Parse an amount of memory (``4GB``, ``500MiB``), as a usage error if malformed."""
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def preset_values(
    context: typer.Context, name: str | None, command: str, given: dict[str, Any]
) -> dict[str, Any]:
    """The options ``given`` with the preset's values for those not set on the command line.

    Raises a usage error for an unknown preset, or one that sets no option of ``command``.
    """
    if name is None:
        return given
    preset = PRESETS.get(name)
    if preset is None:
        known = ", ".join(PRESETS)
        raise typer.BadParameter(
            f"unknown preset {name!r}: use one of {known}", param_hint="--preset"
        )

    def given_here(key: str) -> bool:
        source = context.get_parameter_source(key)
        return source is not None and source.name == "COMMANDLINE"

    values: dict[str, Any] = getattr(preset, command)
    if not values:
        raise typer.BadParameter(
            f"preset {name} sets no option of {command}: leave --preset out here",
            param_hint="--preset",
        )
    chosen = {k: v for k, v in values.items() if not given_here(k)}
    return {**given, **chosen}
