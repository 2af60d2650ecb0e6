"""``embedseg train``: train the network on a prepared project store."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from embedseg_cli.cli._common import handle_errors, make_progress, out_console, preset_values
from embedseg_cli.config import TrainConfig
from embedseg_cli.presets import PRESETS

_ALWAYS = ("store", "run", "resume", "overwrite")
"""Config fields passed whether or not they were given: with ``--resume`` the others are
passed only where given, so that the library takes the run's values for the rest."""


def train_command(
    context: typer.Context,
    store: Annotated[
        Path,
        typer.Argument(
            metavar="STORE", help="A project store made by `embedseg prepare`.", show_default=False
        ),
    ],
    preset: Annotated[
        str | None,
        typer.Option(
            help="Settings of a published protocol: usiigaci, dsb2018 or bbbc010 (epochs, "
            "batches, learning rate, threshold tuning), or usiigaci-cpu; options given here win.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Number of epochs (any number).")] = 200,
    batch_size: Annotated[int, typer.Option(help="Crops per batch.")] = 2,
    virtual_batch_multiplier: Annotated[
        int, typer.Option(help="Batches whose gradients are accumulated per optimiser step.")
    ] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Initial learning rate of Adam.")] = 5e-4,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(
            help="Batches per epoch. Default: about one crop per training object.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Threads that read and augment crops ahead of the network.")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seed of weights, sampling and augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    embedding_scale: Annotated[
        float, typer.Option(help="Pixels per embedding unit (how far offsets reach).")
    ] = 1024.0,
    tune_thresholds: Annotated[
        bool, typer.Option(help="Pick the foreground threshold on the validation images.")
    ] = False,
    run: Annotated[
        str | None,
        typer.Option(help="Name of the run. Default: run- and the start time.", show_default=False),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run named by --run from its last checkpoint; options left out "
            "keep the run's values, and those that define the model cannot change."
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an existing run of the same name (at the first checkpoint)."),
    ] = False,
    validate_every: Annotated[int, typer.Option(help="Validate every this many epochs.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train the branched ERF-Net on a prepared project store.

    Crops centred on each object are read from the stored images and augmented with
    rotations and flips; Adam with a polynomial learning-rate decay over --epochs. Every
    validation runs the real pipeline (network, clustering, AP_dsb at IoU 0.5) on the
    validation images, and the best checkpoint is kept by that score, beside the last one,
    in the store's checkpoints/RUN/. Logs a line per epoch and prints a table of the epochs
    at the end. A stopped run continues with --resume (options left out keep the run's
    values); a run of an existing name is refused unless --resume or --overwrite.

    For example:

    - `embedseg train project.zarr --epochs 100 --run nuclei`
    - `embedseg train dsb.zarr --preset dsb2018 --device cuda`
    - `embedseg train project.zarr --epochs 100 --run nuclei --resume`
    """
    from embedseg_cli.train import train

    with handle_errors(as_json=as_json, out=store):
        options = preset_values(
            context,
            preset,
            "train",
            {
                "epochs": epochs,
                "batch_size": batch_size,
                "virtual_batch_multiplier": virtual_batch_multiplier,
                "lr": lr,
                "steps_per_epoch": steps_per_epoch,
                "tune_thresholds": tune_thresholds,
            },
        )
        values: dict[str, Any] = {
            "store": store,
            "epochs": options["epochs"],
            "batch_size": options["batch_size"],
            "virtual_batch_multiplier": options["virtual_batch_multiplier"],
            "learning_rate": options["lr"],
            "steps_per_epoch": options["steps_per_epoch"],
            "workers": workers,
            "seed": seed,
            "device": device,
            "embedding_scale": embedding_scale,
            "tune_thresholds": options["tune_thresholds"],
            "run": run,
            "resume": resume,
            "validate_every": validate_every,
            "overwrite": overwrite,
        }
        if resume:
            from_preset = set(PRESETS[preset].train) if preset else set()
            values = {
                field: value
                for field, value in values.items()
                if field in _ALWAYS or _given(context, field, from_preset)
            }
        config = TrainConfig.model_validate(values)
        report = train(config, progress=make_progress(log_lines=False))
    done = report.start_epoch >= report.epochs
    summary = {
        "run": report.run,
        "epochs": report.epochs,
        "start_epoch": report.start_epoch,
        "best_epoch": report.best_epoch,
        "best_val_ap50": report.best_ap,
        "foreground_threshold": report.foreground_threshold,
        "final_loss": None if math.isnan(report.final_loss) else report.final_loss,
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        out_console.print_json(json.dumps({**summary, "history": report.history}))
    elif done:
        # Exit 0: a batch job that resumes until the run is done can run once too often.
        out_console.print(
            f"run {report.run} has already reached epoch {report.start_epoch} "
            f"(--epochs {report.epochs}): nothing trained, nothing written; pass --epochs "
            f"larger than {report.start_epoch} to continue it"
        )
    else:
        out_console.print(_history_table(report.history))
        best = (
            "no validation images" if report.best_ap is None else f"val AP0.5 {report.best_ap:.3f}"
        )
        out_console.print(
            f"run {report.run}: best epoch {report.best_epoch} ({best}), "
            f"final loss {report.final_loss:.4f}, {report.seconds:.0f} s"
        )


def _given(context: typer.Context, field: str, from_preset: set[str]) -> bool:
    """Whether the option that sets ``field`` was given (on the command line or by a preset)."""
    name = "lr" if field == "learning_rate" else field
    if name in from_preset:
        return True
    source = context.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _history_table(history: list[dict[str, Any]]) -> Table:
    table = Table(title="Training", title_justify="left")
    for column in ("epoch", "lr", "loss", "instance", "variance", "seed", "val AP0.5", "s"):
        table.add_column(column, justify="right")
    for entry in history:
        ap = entry.get("val_ap50")
        table.add_row(
            str(entry["epoch"]),
            f"{entry['lr']:.2e}",
            f"{entry['loss']:.4f}",
            f"{entry['instance']:.4f}",
            f"{entry['variance']:.2e}",
            f"{entry['seed']:.4f}",
            "" if ap is None else f"{ap:.3f}",
            f"{entry['seconds']:.0f}",
        )
    return table
