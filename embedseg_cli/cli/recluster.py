"""``embedseg recluster``: labels with other thresholds from the network outputs kept by predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedseg_cli.cli._common import handle_errors, make_progress, size_option
from embedseg_cli.cli.predict import (
    BlockSize,
    ForegroundThreshold,
    MinObjectSize,
    SeedThreshold,
    print_summary,
)
from embedseg_cli.config import PredictConfig


def recluster_command(
    labels: Annotated[
        Path,
        typer.Argument(
            metavar="LABELS.zarr",
            help="A .zarr output of `embedseg predict --keep-outputs`.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="OUT", help="Write the labels here (.zarr or .tif). Default: into LABELS."
        ),
    ] = None,
    foreground_threshold: ForegroundThreshold = None,
    seed_threshold: SeedThreshold = 0.9,
    min_object_size: MinObjectSize = None,
    block_size: BlockSize = None,
    halo: Annotated[
        str | None,
        typer.Option(metavar="SIZE", help="Context around each block. Default: from the model."),
    ] = None,
    table: Annotated[
        Path | None,
        typer.Option(metavar="FILE.csv", help="Also write the table of the objects."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Cluster the network outputs kept by `predict --keep-outputs` again, without the network.

    Seconds instead of the network's minutes or hours: try other thresholds on a large
    volume. The labels equal those of a fresh prediction with these thresholds; the kept
    outputs stay for the next try.

    For example:

    - `embedseg predict volume.zarr --model project.zarr --out labels.zarr --keep-outputs`
    - `embedseg recluster labels.zarr --seed-threshold 0.8 --min-object-size 50`
    - `embedseg recluster labels.zarr --foreground-threshold 0.4 --out labels-fg04.zarr`
    """
    from embedseg_cli.predict import predict

    with handle_errors(as_json=as_json, out=out):
        config = PredictConfig(
            input=labels,
            out=out,
            foreground_threshold=foreground_threshold,
            seed_threshold=seed_threshold,
            min_object_size=min_object_size,
            block_size=size_option(block_size, "--block-size"),
            halo=size_option(halo, "--halo"),
            table=table,
            recluster=True,
            overwrite=overwrite,
        )
        report = predict(config, progress=make_progress())
    print_summary(report, as_json=as_json)
