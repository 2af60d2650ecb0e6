"""``predict --dry-run``: the plan of each volume, with its memory and time estimated.

One block is run in memory (network, blending and clustering) to measure the time per
window and per block; nothing is written.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedseg_cli.blockwise.grid import Block, block_grid, tile_grid, tiles_overlapping
from embedseg_cli.io.work import WindowFiles, memory_work
from embedseg_cli.predict.jobs import Job
from embedseg_cli.predict.plan import NETWORK_BYTES_PER_VOXEL, Plan
from embedseg_cli.predict.source import Source
from embedseg_cli.predict.stages import assemble, cluster_block, compute_windows

__all__ = ["dry_run"]

_BASE_MEMORY = 400 * 10**6
"""Python, torch and the model in a worker process, before any data (measured on CPU)."""


def dry_run(
    job: Job, plan: Plan, parallel: int, workers: int, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The plan of one volume, with memory estimated and time measured on one block.

    The block nearest the volume's centre goes through the network (with its halo) and
    the clustering in memory; nothing is written.
    """
    ndim, channels = plan.ndim, 2 * plan.ndim + 1
    blocks = block_grid(plan.shape, plan.block)
    tiles = tile_grid(plan.shape, plan.window, plan.overlap)
    centre = np.asarray(plan.shape) / 2
    block = min(
        blocks,
        key=lambda b: float(np.sum(((np.asarray(b.start) + b.stop) / 2 - centre) ** 2)),
    )
    grown = Block(block.index, *block.grown(plan.halo, plan.shape))
    touching = tiles_overlapping(tiles, plan.window, grown.start, grown.stop)
    outputs, keys = memory_work(plan.shape, plan.block, channels)
    source = Source(job.source, job.pixels)
    k = plan.windows_per_task
    with tempfile.TemporaryDirectory() as folder:
        files = WindowFiles(Path(folder))
        started = time.perf_counter()
        for i in range(0, len(touching), k):
            part = touching[i : i + k]
            compute_windows(source, files, part, [tiles[j] for j in part], block.key, plan)
        network = time.perf_counter() - started
        started = time.perf_counter()
        users = [[grown.key] for _ in touching]
        origins = [tiles[j] for j in touching]
        assemble(grown, origins, touching, users, files, plan, outputs, Path(folder) / "n")
        assembling = (
            (time.perf_counter() - started) * math.prod(block.shape) / math.prod(grown.shape)
        )
        started = time.perf_counter()
        cluster_block(block, plan, outputs, keys, Path(folder) / "c")
        clustering = time.perf_counter() - started
    per_window = network / max(1, len(touching))
    per_call = min(plan.batch_size or 10**9, (16 if ndim == 3 else 8) if plan.tta else 1) * k
    window_voxels = math.prod(plan.window)
    task_bytes = (
        per_call * window_voxels * NETWORK_BYTES_PER_VOXEL[ndim]
        + window_voxels * channels * 4  # a window's outputs, float16, computed and loaded
        + max(math.prod(block.shape) * channels * 8, math.prod(grown.shape) * channels * 12)
    )
    seconds = (per_window * len(tiles) + (assembling + clustering) * len(blocks)) / workers
    return {
        "name": job.name,
        "source": job.source,
        "input_shape": list(input_shape),
        "shape": list(plan.shape),
        "window": list(plan.window),
        "overlap": list(plan.overlap),
        "windows": len(tiles),
        "windows_per_call": k,
        "batch_size": plan.batch_size,
        "block": list(plan.block),
        "blocks": len(blocks),
        "block_grid": [math.ceil(n / b) for n, b in zip(plan.shape, plan.block, strict=True)],
        "halo": list(plan.halo),
        "tta": plan.tta,
        "parallel_tasks": parallel,
        "estimated_peak_memory_per_worker": int(_BASE_MEMORY + task_bytes * parallel),
        "measured_block": block.key,
        "seconds_per_window": per_window,
        "seconds_clustering_block": clustering,
        "estimated_seconds": seconds,
    }
