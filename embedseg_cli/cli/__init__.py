"""The ``embedseg`` command line: a thin Typer layer over the library's workflows.

Each command parses its options, builds a configuration model, calls one workflow function
and renders its result. Workflows (and with them torch, zarr and dask) are imported inside
the command bodies, so ``embedseg --help`` starts fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from embedseg_cli import __version__
from embedseg_cli.cli import demo, evaluate, export, models, predict, prepare, recluster, train
from embedseg_cli.cli._common import setup_logging

__all__ = ["app", "main"]

app = typer.Typer(
    name="embedseg",
    help=(
        "Segment every cell or nucleus in 2D images and 3D volumes from light microscopy "
        "with EmbedSeg (Lalit, Tomancak & Jug, MIDL 2021).\n\n"
        "A project lives in one Zarr store: **prepare** it from TIFF pairs, "
        "**train** a model, **predict** labels for new data, "
        "**evaluate** them, **export** models and results.\n\n"
        "For example:\n\n"
        "- `embedseg demo` (synthetic cells, from nothing to scored labels)\n"
        "- `embedseg predict nuclei.tif --out labels.tif` (the built-in nuclei model)\n"
        "- `embedseg prepare ./tiffs --out project.zarr`\n"
        "- `embedseg train project.zarr --run nuclei`\n"
        "- `embedseg predict images/ --model project.zarr --out labels/`\n"
        "- `embedseg evaluate labels/ ground_truth/`\n\n"
        "`embedseg COMMAND --help` explains a command, with examples."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"embedseg {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Show more detail (debug messages).")
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show only warnings and errors, no progress.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    setup_logging(-1 if quiet else verbose)


app.command("prepare", no_args_is_help=True)(prepare.prepare_command)
app.command("train", no_args_is_help=True)(train.train_command)
app.command("predict", no_args_is_help=True)(predict.predict_command)
app.command("recluster", no_args_is_help=True)(recluster.recluster_command)
app.command("evaluate", no_args_is_help=True)(evaluate.evaluate_command)
app.command("models")(models.models_command)
app.command("demo")(demo.demo_command)
app.add_typer(export.app, name="export")


def main() -> None:
    """Run the command line (the ``embedseg`` console script)."""
    try:
        # The command's name also under `python -m embedseg_cli`: usage lines and the shell
        # completion script (`--show-completion`) name the installed `embedseg` command.
        app(prog_name="embedseg")
    finally:
        _stop_zarr_io_thread()


def _stop_zarr_io_thread() -> None:
    """Let zarr's I/O thread end before the interpreter exits.

    zarr stops its event-loop thread in an exit hook that waits 0.2 s and then closes the
    loop; on a busy machine the loop is still running then, and closing it prints a
    traceback after the command has finished. Stopping the loop here, with time to end,
    leaves that hook nothing to wait for. Nothing happens where zarr was never used.
    """
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    thread = getattr(sync, "iothread", [None])[0]
    if loop is None or thread is None or not thread.is_alive():
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
