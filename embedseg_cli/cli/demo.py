"""``embedseg demo``: the whole tool at work on synthetic cells, without any data of yours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from embedseg_cli.cli._common import err_console, handle_errors, make_progress, out_console
from embedseg_cli.cli.evaluate import ap_table
from embedseg_cli.config import DemoConfig


def demo_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Working folder for the data, project store, labels and preview."
        ),
    ] = Path("embedseg-demo"),
    three_d: Annotated[
        bool, typer.Option("--3d", help="Volumes (Z, Y, X) instead of 2D images.")
    ] = False,
    epochs: Annotated[
        int | None,
        typer.Option(help="Training epochs. Default: the demo's schedule.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and the training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an earlier demo's results in --out (never other files)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Run the whole tool on synthetic cells: prepare, train, predict, evaluate.

    Synthesises touching, non-convex cells (ellipses, crescents, bent rods, lobed nuclei) on
    an uneven, noisy background, writes them as TIFF pairs, and runs the same steps you would
    run on your own data with a short training schedule: a few minutes on a laptop CPU.
    Prints the scores on the test images and writes a preview of the predicted outlines.

    Example: `embedseg demo --out embedseg-demo` (add `--3d` for volumes)
    """
    from embedseg_cli.demo import demo

    with handle_errors(as_json=as_json, out=out):
        config = DemoConfig(
            out=out,
            ndim=3 if three_d else 2,
            epochs=epochs,
            seed=seed,
            device=device,
            overwrite=overwrite,
        )
        report = demo(
            config, progress=make_progress(), train_progress=make_progress(log_lines=False)
        )
    if as_json:
        out_console.print_json(json.dumps(report.to_dict()))
        return
    out_console.print(ap_table(report.evaluation))
    timings = ", ".join(f"{stage} {s:.0f} s" for stage, s in report.seconds.items())
    out_console.print(f"time: {timings}", highlight=False)
    out_console.print(f"project store  {report.store}", highlight=False, soft_wrap=True)
    out_console.print(f"labels         {report.labels}", highlight=False, soft_wrap=True)
    out_console.print(f"preview        {report.preview}", highlight=False, soft_wrap=True)
    err_console.print(
        f"next: embedseg predict YOUR_IMAGES --model {report.store} --out labels/",
        highlight=False,
        soft_wrap=True,
    )
