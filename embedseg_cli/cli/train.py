"""``embedseg train``: train the network on a prepared project store."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from embedseg_cli.cli._common import handle_errors, make_progress, out_console, preset_values
from embedseg_cli.cli.predict import CheckpointTag
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
            "batches, learning rate, threshold tuning), or usiigaci-cpu; finetune (with --from): "
            "a smaller learning rate, fewer and shorter epochs; options given here win.",
            show_default=False,
        ),
    ] = None,
    from_model: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="MODEL",
            help="Fine-tune: start from this trained model's weights, a built-in model "
            "(`embedseg models`), a project store or an exported model (.zip, .pt, .npz). Its "
            "dimensions and channels must be the store's; its embedding scale is kept.",
            show_default=False,
        ),
    ] = None,
    from_run: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="With --from STORE: the run to start from. Default: the newest.",
            show_default=False,
        ),
    ] = None,
    from_checkpoint: Annotated[
        CheckpointTag, typer.Option(help="With --from STORE: the run's checkpoint.")
    ] = CheckpointTag.BEST,
    train_layers: Annotated[
        Literal["all", "decoders"],
        typer.Option(
            help="Layers to train: all, or decoders (the encoder keeps the --from model's weights)."
        ),
    ] = "all",
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
        float,
        typer.Option(
            help="Pixels per embedding unit (how far offsets reach); with --from, the model's."
        ),
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
    - `embedseg train mine.zarr --from dsb2018-fluo --preset finetune`

    With --from the network starts from a trained model's weights (fine-tuning) instead of
    random ones; the optimiser, the schedule and the data properties (normalisation, object
    sizes, thresholds) are this store's, and the checkpoints record the model started from.
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
            "from_model": from_model,
            "from_run": from_run,
            "from_checkpoint": from_checkpoint.value,
            "train_layers": train_layers,
        }
        _check_preset_source(preset, from_model, resume=resume)
        if from_model is not None and not _given(context, "embedding_scale", set()):
            del values["embedding_scale"]  # the model's, not the default
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
        "started_from": (
            None if report.started_from is None else report.started_from.model_dump(mode="json")
        ),
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
        if report.started_from is not None:
            out_console.print(f"started from {report.started_from.describe()}")


def _check_preset_source(preset: str | None, from_model: str | None, *, resume: bool) -> None:
    """Refuse a preset that fine-tunes without a model to start from (a usage error)."""
    if preset is None or from_model is not None or resume:
        return
    if PRESETS[preset].needs_model:
        raise typer.BadParameter(
            f"{preset} fine-tunes a trained model: give the model to start from with --from "
            "MODEL (for example --from dsb2018-fluo, `embedseg models` lists the built-in ones)",
            param_hint="--preset",
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
