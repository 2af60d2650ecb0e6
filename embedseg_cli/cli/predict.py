"""``embedseg predict``: instance labels for new images with a trained model."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from embedseg_cli.cli._common import handle_errors, make_progress, out_console, size_option
from embedseg_cli.config import PredictConfig


class CheckpointTag(StrEnum):
    """Which checkpoint of a training run to use."""

    BEST = "best"
    LAST = "last"


def predict_command(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A TIFF file, a folder of TIFFs, or a project store (predicts its test images).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help=(
                "A project store, an exported model (.zip, .pt, .npz) or a built-in model "
                "(`embedseg models`). Default: INPUT when it is a store, else the built-in "
                "nuclei model."
            ),
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output .tif (one image) or folder (a folder of images)."),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="Training run to use. Default: the newest.")
    ] = None,
    checkpoint: Annotated[CheckpointTag, typer.Option(help="Checkpoint of the run.")] = (
        CheckpointTag.BEST
    ),
    tta: Annotated[
        bool, typer.Option(help="Average over the 8 (2D) or 16 (3D) rotations and flips.")
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    foreground_threshold: Annotated[
        float | None, typer.Option(help="Foreground seed threshold. Default: the model's.")
    ] = None,
    seed_threshold: Annotated[float, typer.Option(help="Instances start above this seed.")] = 0.9,
    min_object_size: Annotated[
        int | None, typer.Option(help="Smallest object kept. Default: the training data's.")
    ] = None,
    tile_size: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE", help="Network window: 512, or 64x160x160 (ZYX). Multiples of 8."
        ),
    ] = None,
    overlap: Annotated[
        str | None,
        typer.Option(metavar="SIZE", help="Overlap of neighbouring windows (blended)."),
    ] = None,
    block_size: Annotated[
        str | None,
        typer.Option(metavar="SIZE", help="Output block processed as one task."),
    ] = None,
    halo: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="Context around a block for clustering. Default: largest object + 25%.",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Start a local dask.distributed cluster of N processes.")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Use an existing dask cluster: tcp://host:port or a scheduler file."),
    ] = None,
    keep_outputs: Annotated[
        bool, typer.Option(help="Keep the network outputs (float16) in a .zarr output.")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run into the same output.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Predict instance labels (uint32) for images and volumes of any size.

    The input is read lazily and covered by overlapping network windows (averaged over
    rotations and flips unless --no-tta, blended where they overlap); each output block is
    clustered with a halo, and every object is numbered by the position of its seed, so the
    labels do not depend on the blocks, the workers or the engine (dask's threads, a local
    cluster with --workers, or a cluster with --scheduler).

    Example: `embedseg predict big_volume.zarr --model project.zarr --out labels.zarr`
    """
    from embedseg_cli.predict import predict

    with handle_errors():
        config = PredictConfig(
            input=input_path,
            model=model,
            out=out,
            run=run,
            checkpoint=checkpoint.value,
            tta=tta,
            device=device,
            foreground_threshold=foreground_threshold,
            seed_threshold=seed_threshold,
            min_object_size=min_object_size,
            tile_size=size_option(tile_size, "--tile-size"),
            overlap=size_option(overlap, "--overlap"),
            block_size=size_option(block_size, "--block-size"),
            halo=size_option(halo, "--halo"),
            workers=workers,
            scheduler=scheduler,
            keep_outputs=keep_outputs,
            resume=resume,
            overwrite=overwrite,
        )
        report = predict(config, progress=make_progress())
    summary = {
        "images": report.images,
        "objects": report.objects,
        "outputs": report.outputs,
        "seconds": round(report.seconds, 2),
        "network_seconds": None
        if report.network_seconds is None
        else round(report.network_seconds, 2),
    }
    if as_json:
        out_console.print_json(json.dumps(summary))
    else:
        out_console.print(
            f"{report.images} image(s), {report.objects} objects in {report.seconds:.1f} s"
        )
