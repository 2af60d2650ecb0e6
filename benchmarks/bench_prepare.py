"""Benchmarks of ``prepare`` and of the medoid (issue: foundation and prepare)."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from _common import data_or_skip, disk_usage, timed


def medoid_11k(quick: bool = False) -> list[dict[str, Any]]:
    """The medoid of one 11,000-pixel object: time and extra memory, against the exact one."""
    from embedseg_cli.data.centres import mean_distances, medoid_index

    yy, xx = np.mgrid[-60:61, -60:61]
    points = np.stack(np.nonzero(np.hypot(yy, xx) < 59.2), axis=1).astype(np.float64)
    seconds, index = timed(lambda: medoid_index(points), repeats=5)
    tracemalloc.start()
    medoid_index(points)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    exact_seconds, costs = timed(lambda: mean_distances(points, points), repeats=1)
    excess = costs[index] / costs.min() - 1
    return [
        {
            "result": f"{len(points)} px, {seconds * 1e3:.1f} ms, +{peak / 1e6:.1f} MB",
            "seconds": round(seconds, 4),
            "pixels": len(points),
            "extra_memory_mb": round(peak / 1e6, 2),
            "exact_seconds": round(exact_seconds, 3),
            "speedup_vs_exact": round(exact_seconds / seconds, 1),
            "mean_distance_excess": excess,
            "notes": f"exact medoid (blocked, same run) {exact_seconds:.2f} s: {exact_seconds / seconds:.0f}x; "
            f"mean distance {excess * 100:.3f}% above exact; original 0.9-2.5 s, +1 GB",
        }
    ]


def _prepare_case(name: str) -> list[dict[str, Any]]:
    from embedseg_cli.config import PrepareConfig
    from embedseg_cli.prepare import prepare

    source, skipped = data_or_skip(name)
    if source is None:
        return [skipped or {}]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.zarr"
        started = time.perf_counter()
        report = prepare(PrepareConfig(source=source, out=out))
        seconds = time.perf_counter() - started
        store_bytes = disk_usage(out)
    input_bytes = disk_usage(source)
    objects = sum(report.objects.values())
    ratio = store_bytes / input_bytes
    return [
        {
            "result": f"{sum(report.images.values())} images, {objects} objects, store {ratio:.2f}x input",
            "seconds": round(seconds, 2),
            "images": report.images,
            "objects": objects,
            "store_mb": round(store_bytes / 1e6, 1),
            "input_mb": round(input_bytes / 1e6, 1),
            "store_to_input": round(ratio, 3),
            "notes": "target < 60 s, store <= 1.5x the input TIFFs (original crops: 4.1x)",
        }
    ]


def prepare_dsb2018(quick: bool = False) -> list[dict[str, Any]]:
    """``prepare`` on dsb2018-fluo: 541 images, about 23,000 objects."""
    return _prepare_case("dsb2018-fluo")


def prepare_usiigaci(quick: bool = False) -> list[dict[str, Any]]:
    """``prepare`` on usiigaci: 50 images of 1022x1024, 3,225 objects."""
    return _prepare_case("usiigaci")
