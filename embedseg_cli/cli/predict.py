"""``embedseg predict``: instance labels for new images with a trained model."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from embedseg_cli.cli._common import handle_errors, make_progress, out_console
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
        Path | None,
        typer.Option(help="Project store with a trained model. Default: INPUT when it is a store."),
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
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Predict instance labels (uint32) for new images with a trained model.

    Each image is normalised like the training images, passed through the network (averaged
    over rotations and flips unless --no-tta), and its seeds are clustered into objects.

    Example: `embedseg predict images/ --model project.zarr --out labels/`
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
            overwrite=overwrite,
        )
        report = predict(config, progress=make_progress())
    summary = {
        "images": report.images,
        "objects": report.objects,
        "outputs": report.outputs,
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        out_console.print_json(json.dumps(summary))
    else:
        out_console.print(
            f"{report.images} image(s), {report.objects} objects in {report.seconds:.1f} s"
        )
