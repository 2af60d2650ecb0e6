"""Benchmarks of ``evaluate`` (issue: evaluate at any scale)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from _common import data_or_skip


def _perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift by one pixel, drop 3% of the objects and merge 3% into a neighbour."""
    shifted = np.roll(labels, 1, axis=-1)
    values = np.arange(int(labels.max()) + 1, dtype=np.int64)
    for index in rng.choice(
        np.arange(1, len(values)), size=max(1, len(values) // 33), replace=False
    ):
        values[index] = 0
    merge = rng.choice(np.arange(2, len(values)), size=max(1, len(values) // 33), replace=False)
    values[merge] = values[merge - 1]
    return values[shifted].astype(labels.dtype)


def _evaluate_subprocess(pred: Path, gt: Path) -> tuple[float, float, dict[str, Any]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "embedseg_cli", "-q", "evaluate", str(pred), str(gt), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak_mb, json.loads(done.stdout)


def evaluate_dsb2018_test(quick: bool = False) -> list[dict[str, Any]]:
    """The 50 test masks of dsb2018-fluo against a perturbed copy, through the CLI."""
    source, skipped = data_or_skip("dsb2018-fluo")
    if source is None:
        return [skipped or {}]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        pred = Path(tmp) / "pred"
        pred.mkdir()
        for path in sorted((source / "test" / "masks").glob("*.tif")):
            tifffile.imwrite(pred / path.name, _perturb(tifffile.imread(path), rng))
        seconds, peak_mb, result = _evaluate_subprocess(pred, source / "test" / "masks")
    ap = result["per_image"][0]["ap_dsb"]
    return [
        {
            "result": f"{result['n_images']} images, AP0.5 per image {ap:.3f}",
            "seconds": round(seconds, 2),
            "evaluate_peak_rss_mb": round(peak_mb, 1),
            "notes": "whole command incl. start-up and reading TIFFs; target < 5 s",
        }
    ]


def evaluate_3d_512(quick: bool = False) -> list[dict[str, Any]]:
    """Two 512^3 label volumes with about 50,000 objects each, as Zarr arrays, via the CLI."""
    shape = (512, 512, 512)
    z, y, x = (np.arange(n)[:, None, None] for n in shape)
    y, x = y.reshape(1, -1, 1), x.reshape(1, 1, -1)
    truth = ((z // 10) * 32 * 32 + (y // 16) * 32 + (x // 16) + 1).astype(np.uint32)
    prediction = _perturb(truth, np.random.default_rng(1))
    n_true, n_pred = len(np.unique(truth)), len(np.unique(prediction)) - 1
    with tempfile.TemporaryDirectory() as tmp:
        chunks = (64, 256, 256)
        zarr.create_array(Path(tmp) / "gt.zarr", data=truth, chunks=chunks)
        zarr.create_array(Path(tmp) / "pred.zarr", data=prediction, chunks=chunks)
        del truth, prediction
        seconds, peak_mb, result = _evaluate_subprocess(
            Path(tmp) / "pred.zarr", Path(tmp) / "gt.zarr"
        )
    pooled = result["pooled"][4]
    return [
        {
            "result": f"{n_true} / {n_pred} objects, AP0.5 {pooled['ap_dsb']:.3f}",
            "seconds": round(seconds, 2),
            "evaluate_peak_rss_mb": round(peak_mb, 1),
            "objects_true": n_true,
            "objects_pred": n_pred,
            "notes": "whole command incl. reading both volumes; target < 30 s and < 4 GB",
        }
    ]
