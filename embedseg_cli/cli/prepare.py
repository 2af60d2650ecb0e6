"""``embedseg prepare``: build a project store from TIFF image/mask pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from embedseg_cli.cli._common import (
    handle_errors,
    make_progress,
    out_console,
    preset_values,
    size_option,
)
from embedseg_cli.config import CentreMethod, PrepareConfig

if TYPE_CHECKING:
    from embedseg_cli.prepare import PrepareReport


def prepare_command(
    context: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SRC",
            help="Folder with images/ and masks/ (TIFF pairs with the same file names), "
            "or with train/, val/, test/ folders that each hold them.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The project store to create, e.g. project.zarr.")
    ],
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Fraction of training images held out for validation (unless val/ exists)."
        ),
    ] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 0,
    voxel_size: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            metavar="Z Y X",
            help="Voxel size in micrometres; otherwise read from the TIFF metadata in its "
            "unit (Z is ignored for 2D data).",
            show_default=False,
        ),
    ] = None,
    crop_size: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="Training crop size: 256, or one value per axis as 32x128x128 (ZYX). "
            "Default: derived from the object sizes.",
            show_default=False,
        ),
    ] = None,
    centre: Annotated[
        CentreMethod, typer.Option(help="How the centre of each object is chosen.")
    ] = CentreMethod.MEDOID,
    downsample: Annotated[
        str | None,
        typer.Option(
            metavar="FACTOR",
            help="Store the data on a coarser grid: 2 halves every axis, 1x2x2 only Y and X. "
            "The voxel size grows by the same factor, so predict resamples its inputs to "
            "match. For large objects: a model sees more of them and trains faster.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Settings of a published protocol: usiigaci, dsb2018 or bbbc010 "
            "(crop size, validation fraction), or usiigaci-cpu; options given here win.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace the project store at --out if it exists (nothing but a project "
            "store is ever replaced)."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Build a project store from a folder of TIFF image/mask pairs.

    SRC holds images/ and masks/ with the same file names, or train/, val/ and test/
    folders that each hold such a pair of folders. A mask holds 0 for background and one
    integer per object. Images are 2D (YX, YXC or CYX) or 3D (ZYX).

    Checks every pair, stores the images and uint32 masks, splits off validation images,
    measures the data (object sizes, crop size, foreground weight, anisotropy, intensity
    percentiles), computes one centre per object and builds the crop table. Prints a
    summary. Nothing appears at --out unless everything succeeds.

    For example:

    - `embedseg prepare ./tiffs --out project.zarr`
    - `embedseg prepare ./dsb2018 --out dsb.zarr --preset dsb2018`
    - `embedseg prepare ./volumes --out organoids.zarr --voxel-size 1.0 0.17 0.17`
    """
    from embedseg_cli.prepare import prepare

    with handle_errors(as_json=as_json, out=out):
        options = preset_values(
            context,
            preset,
            "prepare",
            {
                "val_fraction": val_fraction,
                "crop_size": crop_size,
                "centre": centre,
                "downsample": downsample,
            },
        )
        config = PrepareConfig(
            source=source,
            out=out,
            val_fraction=options["val_fraction"],
            seed=seed,
            voxel_size=voxel_size,
            crop_size=size_option(options["crop_size"], "--crop-size"),
            centre=options["centre"],
            downsample=size_option(options["downsample"], "--downsample"),
            overwrite=overwrite,
        )
        report = prepare(config, progress=make_progress())
    if as_json:
        out_console.print_json(json.dumps(_summary(report)))
    else:
        out_console.print(_table(report))


def _summary(report: PrepareReport) -> dict[str, object]:
    return {
        "store": str(report.store),
        "images": report.images,
        "objects": report.objects,
        "properties": report.properties.model_dump(mode="json"),
        "seconds": round(report.seconds, 3),
        "warnings": report.warnings,
    }


def _table(report: PrepareReport) -> Table:
    props = report.properties
    table = Table(title=f"Prepared {report.store}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    splits = ("train", "val", "test")
    table.add_row("images", "  ".join(f"{s} {report.images[s]}" for s in splits))
    table.add_row("objects", "  ".join(f"{s} {report.objects[s]}" for s in splits))
    table.add_row(
        "object size",
        f"{props.min_object_size} to {props.max_object_size} px (mean {props.mean_object_size:.0f})",
    )
    if props.median_diameter is not None:
        table.add_row("median object diameter", f"{props.median_diameter:.1f} px")
    table.add_row("crop size", " x ".join(str(s) for s in props.crop_size))
    table.add_row("foreground weight", f"{props.foreground_weight:.2f}")
    if props.ndim == 3:
        table.add_row("anisotropy (z/x)", f"{props.anisotropy:.3g}")
    table.add_row("channels", str(props.channels))
    table.add_row("time", f"{report.seconds:.1f} s")
    if report.warnings:
        table.add_row("warnings", str(len(report.warnings)))
    return table
