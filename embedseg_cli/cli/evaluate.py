"""``embedseg evaluate``: score predicted labels against the ground truth."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from embedseg_cli.cli._common import err_console, handle_errors, make_progress, out_console
from embedseg_cli.config import EvaluateConfig

if TYPE_CHECKING:
    from embedseg_cli.evaluate import EvaluationReport


class PaperDataset(StrEnum):
    """Datasets whose EmbedSeg scores the paper reports (Table 1)."""

    USIIGACI = "usiigaci"
    DSB2018 = "dsb2018"
    BBBC010 = "bbbc010"


_PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _thresholds(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise typer.BadParameter(
            f"give numbers separated by commas, such as 0.5,0.7,0.9 (got {text!r})",
            param_hint="--thresholds",
        ) from None


def evaluate_command(
    prediction: Annotated[
        Path,
        typer.Argument(
            metavar="PRED",
            help="Predicted labels: a TIFF file, a folder of TIFFs, a Zarr or OME-Zarr label "
            "array, or a project store (its predictions of the test images).",
            show_default=False,
        ),
    ],
    ground_truth: Annotated[
        Path | None,
        typer.Argument(
            metavar="[GT]",
            help="True labels in the same form (folders are paired by file name). Not needed "
            "when PRED is a project store.",
            show_default=False,
        ),
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            metavar="T1,T2,...",
            help="IoU thresholds. Default: 0.5, 0.55, ..., 0.9 in 2D; 0.1, 0.2, ..., 0.9 in 3D.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full result as JSON on stdout.")
    ] = False,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", metavar="FILE", help="Write one row per image and threshold."),
    ] = None,
    plot_path: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", help="Draw AP_dsb against the IoU threshold."),
    ] = None,
    paper: Annotated[
        PaperDataset | None,
        typer.Option(help="Show the paper's EmbedSeg scores on this dataset for comparison."),
    ] = None,
) -> None:
    """Score predicted labels against the ground truth: AP_dsb at IoU thresholds.

    Objects are matched one to one, maximising the number of pairs with IoU >= t;
    AP_dsb = TP / (TP + FP + FN) as in the EmbedSeg paper. Scores are given per image (the
    mean over images, the paper's numbers; an image with no objects in either counts as 1)
    and pooled (counts summed over all images). Prints a table of AP_dsb, F1, precision,
    recall, matched IoU, panoptic quality and the counts at each threshold.

    For example:

    - `embedseg evaluate predicted/ ground_truth/ --paper dsb2018 --plot ap.png`
    - `embedseg evaluate project.zarr --json > scores.json`
    - `embedseg evaluate labels.tif truth.tif --thresholds 0.5,0.75,0.9 --csv scores.csv`
    """
    from embedseg_cli.evaluate import evaluate, plot_ap, write_csv

    if plot_path is not None and plot_path.suffix.lower() not in _PLOT_SUFFIXES:
        msg = f"{plot_path} must end in {', '.join(_PLOT_SUFFIXES)}"
        raise typer.BadParameter(msg, param_hint="--plot")
    with handle_errors(as_json=as_json, out=csv_path or plot_path):
        config = EvaluateConfig(
            prediction=prediction, ground_truth=ground_truth, thresholds=_thresholds(thresholds)
        )
        report = evaluate(config, progress=make_progress())
        if csv_path is not None:
            write_csv(report, csv_path)
        if plot_path is not None:
            plot_ap(report, plot_path, paper=paper.value if paper else None)
    if as_json:
        out_console.print_json(json.dumps(report.to_dict()))
    else:
        out_console.print(ap_table(report, paper))
    for path in (csv_path, plot_path):
        if path is not None:
            err_console.print(f"wrote {path}", highlight=False)


def ap_table(report: EvaluationReport, paper: PaperDataset | None = None) -> Table:
    """The scores at each IoU threshold as a table (``evaluate`` and ``demo`` print it)."""
    from embedseg_cli.evaluate import PAPER_AP, PAPER_THRESHOLDS

    scores = report.scores
    table = Table(
        title=f"{scores.n_images} image(s), {report.ndim}D: scores at each IoU threshold",
        title_justify="left",
    )
    table.add_column("pooled unless named", no_wrap=True, style="bold")
    for threshold in scores.thresholds:
        table.add_column(f"{threshold:g}", justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    row("AP_dsb per image", [f"{s.ap_dsb:.3f}" for s in scores.per_image])
    row("AP_dsb pooled", [f"{s.ap_dsb:.3f}" for s in scores.pooled])
    if paper is not None:
        reference = dict(zip(PAPER_THRESHOLDS, PAPER_AP[paper.value], strict=True))
        row(
            f"paper, {paper.value}",
            [f"{reference[t]:.3f}" if t in reference else "" for t in scores.thresholds],
        )
    row("F1", [f"{s.f1:.3f}" for s in scores.pooled])
    row("precision", [f"{s.precision:.3f}" for s in scores.pooled])
    row("recall", [f"{s.recall:.3f}" for s in scores.pooled])
    row("matched IoU", [f"{s.mean_matched_iou:.3f}" for s in scores.pooled])
    row("PQ", [f"{s.panoptic_quality:.3f}" for s in scores.pooled])
    row("TP", [str(s.tp) for s in scores.pooled])
    row("FP", [str(s.fp) for s in scores.pooled])
    row("FN", [str(s.fn) for s in scores.pooled])
    return table
