"""``embedseg export``: trained models and predicted labels in the formats the field uses."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from embedseg_cli.cli._common import handle_errors, make_progress, out_console
from embedseg_cli.config import ExportLabelsConfig, ExportModelConfig, LabelFormat, ModelFormat

app = typer.Typer(
    help=(
        "Export a trained model (bioimage.io, TorchScript, ONNX) or predicted labels "
        "(TIFF, OME-Zarr, a per-object table, a preview picture).\n\n"
        "Example: `embedseg export model project.zarr --format bioimageio --out model.zip`"
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class CheckpointTag(StrEnum):
    """Which checkpoint of a training run to export."""

    BEST = "best"
    LAST = "last"


class NgffVersion(StrEnum):
    """OME-Zarr versions written."""

    V05 = "0.5"
    V04 = "0.4"


@app.command("model", no_args_is_help=True)
def model_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A project store (one of its checkpoints), an exported model or a built-in "
            "model name.",
            show_default=False,
        ),
    ],
    format_: Annotated[
        ModelFormat,
        typer.Option(
            "--format",
            "-f",
            help="bioimageio: a bioimage.io package (.zip) that gives labels; torchscript: "
            "one .pt file of the network; onnx: one .onnx file of the network.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The file to write (.zip, .pt or .onnx).", show_default=False
        ),
    ],
    run: Annotated[
        str | None, typer.Option(help="Training run to export. Default: the newest.")
    ] = None,
    checkpoint: Annotated[CheckpointTag, typer.Option(help="Checkpoint of the run.")] = (
        CheckpointTag.BEST
    ),
    image: Annotated[
        Path | None,
        typer.Option(
            help="Image for the bioimage.io package's test input and cover. Default: one of "
            "the store's images.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Name of the bioimage.io model. Default: from the store's name."),
    ] = None,
    author: Annotated[
        list[str] | None,
        typer.Option(
            help="Author of the bioimage.io model (repeat for several). Default: your user name.",
            show_default=False,
        ),
    ] = None,
    license_: Annotated[
        str,
        typer.Option("--license", help="SPDX licence of the bioimage.io model's weights."),
    ] = "CC-BY-4.0",
    overwrite: Annotated[
        bool, typer.Option(help="Replace the file OUT if it exists (never a folder).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Export a trained model for other tools, or to predict with it anywhere.

    **bioimageio**: a bioimage.io model package (spec 0.5) with PyTorch and TorchScript
    weights whose network includes EmbedSeg's seed clustering, so that it gives instance
    labels; the training normalisation as preprocessing; a test image with its labels; a
    cover; the citation; and the checkpoint's data properties and thresholds. Needs
    `pip install 'embedseg-cli[export]'`.

    **torchscript**, **onnx**: the network alone (raw outputs), its attributes inside.

    `embedseg predict IMAGE --model model.zip` (or `model.pt`) gives the same labels as
    predicting with the store.

    Example: `embedseg export model project.zarr --format bioimageio --out model.zip`
    """
    from embedseg_cli.export import export_model

    with handle_errors(as_json=as_json, out=out):
        config = ExportModelConfig(
            model=model,
            format=format_,
            out=out,
            run=run,
            checkpoint=checkpoint.value,
            image=image,
            name=name,
            authors=tuple(author or ()),
            license=license_,
            overwrite=overwrite,
        )
        report = export_model(config, progress=make_progress())
    summary = {
        "format": report.format,
        "out": report.out,
        "model": report.origin,
        "ndim": report.ndim,
        "channels": report.channels,
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        out_console.print_json(json.dumps(summary))
    else:
        out_console.print(
            f"wrote {report.out} ({report.format}, {report.ndim}D, {report.channels} channel(s)) "
            f"from {report.origin}",
            highlight=False,
        )


@app.command("labels", no_args_is_help=True)
def labels_command(
    labels: Annotated[
        Path,
        typer.Argument(
            metavar="PRED",
            help="Labels: a TIFF file, a folder of TIFFs, a Zarr or OME-Zarr label array, or "
            "a project store (its predictions).",
            show_default=False,
        ),
    ],
    format_: Annotated[
        LabelFormat,
        typer.Option(
            "--format",
            "-f",
            help="tiff, ome-zarr, csv (one row per object) or preview (PNG).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The file to write; a folder when PRED holds several label images (not for csv).",
            show_default=False,
        ),
    ],
    image: Annotated[
        Path | None,
        typer.Option(
            help="The intensity image (or a folder of them, same names): mean intensity in "
            "csv, background of preview.",
            show_default=False,
        ),
    ] = None,
    ngff_version: Annotated[
        NgffVersion, typer.Option(help="OME-Zarr version; 0.4 for older viewers.")
    ] = NgffVersion.V05,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace an earlier export of the same format at OUT (never a folder that "
            "holds other files or the inputs)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Convert predicted labels for other tools, or measure them.

    **tiff**: uint16 with ImageJ metadata where the labels fit, else uint32 (OME-TIFF), with
    the voxel size. **ome-zarr**: an OME-Zarr label image with a pyramid, for napari and
    other OME-Zarr viewers. **csv**: one row per object: label, size, centroid, bounding
    box, mean intensity with --image. **preview**: label outlines over the image (3D: the
    middle slice and the maximum projection).

    Example: `embedseg export labels labels.tif --format csv --image image.tif --out objects.csv`
    """
    from embedseg_cli.export import export_labels

    with handle_errors(as_json=as_json, out=out):
        config = ExportLabelsConfig(
            labels=labels,
            format=format_,
            out=out,
            image=image,
            ngff_version=ngff_version.value,
            overwrite=overwrite,
        )
        report = export_labels(config, progress=make_progress())
    summary = {
        "format": report.format,
        "out": report.out,
        "images": report.images,
        "objects": report.objects,
        "seconds": round(report.seconds, 2),
    }
    if as_json:
        out_console.print_json(json.dumps(summary))
    else:
        out_console.print(
            f"wrote {report.out} ({report.format}): {report.images} image(s), "
            f"{report.objects} objects",
            highlight=False,
        )
