"""Helpers shared by the benchmark modules."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMBEDSEG_TEST_DATA", ROOT.parent / "shared" / "data"))


def data_or_skip(name: str) -> tuple[Path | None, dict[str, Any] | None]:
    """The dataset's path, or a row saying why the case was skipped."""
    path = DATA / name
    if path.is_dir():
        return path, None
    return None, {"result": "skipped", "notes": f"{path} is absent"}


def timed(function: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls after one warm-up, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def disk_usage(path: Path) -> int:
    """Bytes on disk (allocated blocks, as ``du``) of a file tree."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [*files, *dirs]:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total + os.lstat(path).st_blocks * 512
