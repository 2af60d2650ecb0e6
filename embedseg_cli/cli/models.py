"""``embedseg models``: the models shipped with embedseg."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from embedseg_cli.cli._common import handle_errors, out_console


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the built-in models: what they were trained on, their license and measured AP.

    `embedseg predict` uses the default one (dsb2018-fluo, 2D fluorescence nuclei) when no
    --model is given and the input is a 2D single-channel image; `--model NAME` picks one
    by name.

    For example:

    - `embedseg models`
    - `embedseg predict nuclei.tif --model dsb2018-fluo --out labels.tif`
    """
    from embedseg_cli.io.models import builtin_models

    with handle_errors(as_json=as_json):
        models = builtin_models()
    rows = [
        {
            "name": m.name,
            "description": m.description,
            "training_data": m.training_data,
            "license": m.license,
            "scores": m.scores,
            "size_mb": round(m.path.stat().st_size / 1e6, 2),
        }
        for m in models
    ]
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    if not rows:
        out_console.print("no built-in models in this installation")
        return
    table = Table(title="Built-in models", title_justify="left")
    for column in ("name", "what", "trained on", "license", "AP_dsb@0.5 test", "MB"):
        table.add_column(column)
    for model, row in zip(models, rows, strict=True):
        ap = model.scores.get("ap50_tta")
        table.add_row(
            str(row["name"]),
            str(row["description"]),
            str(row["training_data"]),
            str(row["license"]),
            "" if ap is None else f"{ap:.3f} (TTA)",
            f"{row['size_mb']:.1f}",
        )
    out_console.print(table)
