"""``embedseg predict``: instance labels for new images with a trained model."""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from embedseg_cli.cli._common import (
    bytes_option,
    handle_errors,
    make_progress,
    out_console,
    size_option,
)
from embedseg_cli.config import PredictConfig

if TYPE_CHECKING:
    from embedseg_cli.predict import PredictReport


ForegroundThreshold = Annotated[
    float | None, typer.Option(help="Foreground seed threshold. Default: the model's.")
]
SeedThreshold = Annotated[float, typer.Option(help="Instances start above this seed.")]
MinObjectSize = Annotated[
    int | None, typer.Option(help="Smallest object kept. Default: the training data's.")
]
BlockSize = Annotated[
    str | None, typer.Option(metavar="SIZE", help="Output block processed as one task.")
]
"""Options that ``predict`` and ``recluster`` share."""


class NgffVersion(StrEnum):
    """OME-Zarr versions that can be written."""

    V04 = "0.4"
    V05 = "0.5"


class CheckpointTag(StrEnum):
    """Which checkpoint of a training run to use."""

    BEST = "best"
    LAST = "last"


def predict_command(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help=(
                "A TIFF file, a folder of TIFFs, a Zarr array, an OME-Zarr image, or a project "
                "store (predicts its test images)."
            ),
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
        typer.Option(
            "--out",
            "-o",
            help=(
                "Output .tif, .zarr (OME-Zarr labels) or, for a folder of images, a folder. "
                "Default for an OME-Zarr image: its labels/embedseg."
            ),
        ),
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
    foreground_threshold: ForegroundThreshold = None,
    seed_threshold: SeedThreshold = 0.9,
    min_object_size: MinObjectSize = None,
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
    block_size: BlockSize = None,
    halo: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="Context around a block for clustering. Default: largest object + 25%.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Images per network call (with --tta, the rotations and flips of a window "
            "count as images). Default: one window with all its rotations and flips."
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            metavar="BYTES",
            help="Memory the network may use, e.g. 4GB; picks the window size when "
            "--tile-size is not given. Default: half the free GPU memory, else a quarter of "
            "the available RAM or cgroup memory limit (at most 4GB).",
        ),
    ] = None,
    rescale: Annotated[
        bool,
        typer.Option(
            help="Resample inputs whose voxel size (from their metadata, in micrometres) "
            "differs from the training data's by over 5% (inputs without one: as prepare "
            "--downsample did); "
            "--no-rescale only warns."
        ),
    ] = True,
    object_size: Annotated[
        str | None,
        typer.Option(
            metavar="auto|off|PIXELS",
            help="Typical object diameter in the input, in pixels: where it is outside the "
            "sizes the model learned (the training objects' quartiles), the input is resampled "
            "to bring it inside (labels come back at its shape). auto estimates it for each "
            "image with a quick first pass; off keeps the input's scale. Default: auto for a "
            "built-in model, off for others.",
            show_default=False,
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
        bool,
        typer.Option(
            help="Keep the network outputs (float16) in a .zarr output, for `embedseg recluster`."
        ),
    ] = False,
    recluster: Annotated[
        bool,
        typer.Option(help="Deprecated: use `embedseg recluster`.", hidden=True),
    ] = False,
    table: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.csv",
            help="Also write a table of the objects: label, voxels, centroid, bounding box, "
            "seed position and seed score. For several images, one table each: FILE-NAME.csv.",
        ),
    ] = None,
    ngff_version: Annotated[
        NgffVersion,
        typer.Option(help="OME-Zarr version of a .zarr output (0.4 for older viewers)."),
    ] = NgffVersion.V05,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Print the plan (windows, blocks, halo, memory per worker) and the time "
            "expected from one measured block; write nothing."
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run into the same output.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Predict instance labels for images and volumes of any size.

    The input is read lazily and covered by overlapping network windows (averaged over
    rotations and flips unless --no-tta, blended where they overlap); each output block is
    clustered with a halo, and every object is numbered by the position of its seed, so the
    labels do not depend on the blocks, the workers or the engine (dask's threads, a local
    cluster with --workers, or a cluster with --scheduler).

    Writes OUT.tif (uint16 ImageJ TIFF where the labels fit, else uint32 OME-TIFF), OUT.zarr
    (OME-Zarr labels with a pyramid) or, for a folder of images, a folder of TIFFs, each with
    the input's voxel size in micrometres; a project store's test images get their labels
    in the store. Prints the
    number of objects and the outputs. Without --model, 2D single-channel images are
    segmented with the built-in nuclei model, each image resampled where its nuclei are
    larger or smaller than those the model learned (--object-size). --dry-run prints the plan and writes
    nothing; --resume continues a killed run from its finished blocks.

    For example:

    - `embedseg predict nuclei.tif --out labels.tif`
    - `embedseg predict big_nuclei.tif --out labels.tif --object-size 45`
    - `embedseg predict images/ --model project.zarr --out labels/`
    - `embedseg predict big_volume.zarr --model project.zarr --out labels.zarr --dry-run`
    - `embedseg predict big_volume.zarr --model project.zarr --out labels.zarr --workers 4
      --table objects.csv`
    - `embedseg predict big_volume.zarr --model project.zarr --out labels.zarr --scheduler
      scheduler.json --resume`
    """
    from embedseg_cli.predict import predict

    if recluster:
        logging.getLogger(__name__).warning(
            "predict --recluster is deprecated and will be removed: use `embedseg recluster "
            "%s` with the same options",
            input_path,
        )
    with handle_errors(as_json=as_json, out=out):
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
            batch_size=batch_size,
            memory_budget=None if memory_budget is None else bytes_option(memory_budget),
            rescale=rescale,
            object_size=object_size,
            workers=workers,
            scheduler=scheduler,
            recluster=recluster,
            table=table,
            ngff_version=ngff_version.value,
            dry_run=dry_run,
            keep_outputs=keep_outputs,
            resume=resume,
            overwrite=overwrite,
        )
        report = predict(config, progress=make_progress())
    if config.dry_run:
        _print_plans(report.plans, as_json=as_json)
        return
    print_summary(report, as_json=as_json)


def print_summary(report: PredictReport, *, as_json: bool) -> None:
    """Print what a prediction wrote: a line per output, or JSON."""
    summary = {
        "images": report.images,
        "objects": report.objects,
        "outputs": report.outputs,
        "seconds": round(report.seconds, 2),
        "network_seconds": None
        if report.network_seconds is None
        else round(report.network_seconds, 2),
        "object_size": {name: scale.as_dict() for name, scale in report.object_sizes.items()},
    }
    if as_json:
        out_console.print_json(json.dumps(summary))
    else:
        out_console.print(
            f"{report.images} image(s), {report.objects} objects in {report.seconds:.1f} s"
        )
        for output in report.outputs:
            out_console.print(f"  {output}", highlight=False)
        for name, scale in report.object_sizes.items():
            if scale.scale != 1 and scale.diameter is not None:
                out_console.print(
                    f"  {name}: objects {scale.diameter:.1f} px across, resampled by "
                    f"{scale.scale:.3g} to the model's {scale.training_diameter:.1f} px",
                    highlight=False,
                )


def _size(values: list[int]) -> str:
    return "x".join(str(v) for v in values)


def _print_plans(plans: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        out_console.print_json(json.dumps(plans))
        return
    for plan in plans:
        table = Table(title=f"{plan['source']}: plan (nothing written)", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        rows = [
            ("volume", _size(plan["input_shape"])),
            ("resampled to", _size(plan["shape"]) if plan["shape"] != plan["input_shape"] else "-"),
            ("object size", _object_size(plan["object_size"])),
            (
                "network windows",
                f"{plan['windows']} of {_size(plan['window'])}, overlap {_size(plan['overlap'])}",
            ),
            (
                "per network call",
                f"{plan['windows_per_call']} window(s), TTA {'on' if plan['tta'] else 'off'}",
            ),
            ("blocks", f"{plan['blocks']} ({_size(plan['block_grid'])}) of {_size(plan['block'])}"),
            ("halo", _size(plan["halo"])),
            ("tasks at once per worker", str(plan["parallel_tasks"])),
            (
                "peak memory per worker (est.)",
                f"{plan['estimated_peak_memory_per_worker'] / 1e9:.2f} GB",
            ),
            ("measured on block", plan["measured_block"]),
            ("network per window", f"{plan['seconds_per_window']:.2f} s"),
            ("clustering per block", f"{plan['seconds_clustering_block']:.2f} s"),
            ("expected run time", _duration(plan["estimated_seconds"])),
        ]
        for name, value in rows:
            table.add_row(name, value)
        out_console.print(table)


def _object_size(size: dict[str, Any]) -> str:
    if size["mode"] == "off":
        return "off"
    if size["diameter"] is None:
        return f"{size['mode']}: not measured, scale 1"
    how = "estimated" if size["mode"] == "auto" else "given"
    return (
        f"{size['diameter']:.1f} px ({how}), model {size['training_diameter']:.1f} px: "
        f"scale {size['scale']:.3g}"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
