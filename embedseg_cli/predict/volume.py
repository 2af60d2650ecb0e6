"""One volume: its plan, and the dask graph of its stages over the blocks.

The network's windows and the blocks' clustering are one graph: a block is clustered as
soon as the blocks under its halo have their outputs, while the network goes on with other
windows. Finished blocks are marked in the work folder and left out of a resumed run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.delayed import delayed
from numpy.typing import NDArray

from embedseg_cli.blockwise.grid import Block, block_grid, tile_grid, tiles_overlapping
from embedseg_cli.config import PredictConfig
from embedseg_cli.io.work import Work, WorkArray, open_work, read_state, write_outputs_record
from embedseg_cli.predict.engine import Engine, loaded_model
from embedseg_cli.predict.jobs import Job, interrupted, settings
from embedseg_cli.predict.plan import Plan, geometry
from embedseg_cli.predict.source import Source, percentiles
from embedseg_cli.predict.stages import assemble, cluster_block, compute_windows, number

__all__ = ["Volume", "cluster_tasks", "plan_volume", "run_volume"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Volume:
    """The result of one volume, before writing."""

    labels: da.Array
    mapping: NDArray[np.uint64]
    """Seed names (flat seed index + 1) of labels 1..N."""
    plan: Plan
    outputs: Path
    """The network outputs (float16 Zarr array) in the work folder."""


def plan_volume(job: Job, config: PredictConfig, base: Plan, engine: Engine) -> Plan:
    """The plan of ``job``'s volume: ``base`` with its shape, geometry and normalisation."""
    ndim = base.ndim
    shape = tuple(int(n) for n in job.pixels.shape[1:])
    intensities = job.percentiles or percentiles(job.pixels, ndim, job.source)
    stored = None
    if config.resume and config.tile_size is None and (job.work / "state.json").exists():
        # A resumed run keeps the window chosen when it started (free memory may differ now).
        stored = tuple(read_state(job.work)["window"])
    device = loaded_model(base.model)[1]
    chosen = geometry(shape, config, ndim, device, engine.parallel, stored)
    return Plan(
        **{
            **base.__dict__,
            "shape": shape,
            "window": chosen.window,
            "overlap": chosen.overlap,
            "block": chosen.block,
            "low": tuple(p[0] for p in intensities),
            "high": tuple(p[1] for p in intensities),
            "batch_size": chosen.batch_size,
            "windows_per_task": chosen.windows_per_task,
        }
    )


def run_volume(job: Job, config: PredictConfig, plan: Plan, engine: Engine) -> Volume:
    """Run the network and the clustering of ``job`` in its work folder; number the labels."""
    if config.overwrite and job.work.exists():
        logger.warning(
            "%s: starting over (--overwrite), the interrupted run's work (%s) is discarded",
            job.output or job.work,
            interrupted(job.work),
        )
    state = {
        "shape": list(plan.shape),
        "block": list(plan.block),
        "window": list(plan.window),
        "overlap": list(plan.overlap),
        "halo": list(plan.halo),
        "tta": plan.tta,
        **settings(job, plan),
    }
    work = open_work(
        job.work,
        state,
        shape=plan.shape,
        block=plan.block,
        channels=2 * plan.ndim + 1,
        resume=config.resume,
    )
    write_outputs_record(work.outputs, {**plan.attrs(), "complete": False})
    blocks = block_grid(plan.shape, plan.block)
    stage1, units = _network_tasks(job, plan, blocks, work)
    # One graph: a block is clustered as soon as the blocks under its halo have their
    # outputs, while the network goes on with other windows.
    stage2 = cluster_tasks(plan, blocks, work.outputs, work.keys, work.clustering, stage1)
    engine.run(
        [*stage1.values(), *stage2.values()],
        f"{job.name}: network and clustering",
        units=[*units, *(task.key for task in stage2.values())],
    )
    write_outputs_record(work.outputs, {**plan.attrs(), "complete": True})
    labels, mapping = number(blocks, work.keys, work.clustering)
    return Volume(labels, mapping, plan, job.work / "outputs")


def _network_tasks(
    job: Job, plan: Plan, blocks: Sequence[Block], work: Work
) -> tuple[dict[str, Any], list[str]]:
    """Stage 1: a task per block assembling its outputs, each window computed once.

    Returns the block tasks (by block key, unfinished blocks only) and the keys of the
    window tasks (to count progress by).
    """
    tiles = tile_grid(plan.shape, plan.window, plan.overlap)
    k = plan.windows_per_task
    source = Source(job.source, job.pixels)
    files, done = work.windows, work.network
    token = uuid.uuid4().hex[:8]
    todo = [blk for blk in blocks if not (done / blk.key).exists()]
    touching = {blk.key: tiles_overlapping(tiles, plan.window, blk.start, blk.stop) for blk in todo}
    users: dict[int, list[str]] = {}
    for key, indices in touching.items():
        for index in indices:
            users.setdefault(index, []).append(key)
    groups: dict[int, Any] = {}

    def group_task(index: int, block: str) -> Any:
        group = index // k
        if group not in groups:
            members = [i for i in range(group * k, min((group + 1) * k, len(tiles))) if i in users]
            groups[group] = delayed(compute_windows)(
                source,
                files,
                members,
                [tiles[i] for i in members],
                block,
                plan,
                dask_key_name=f"windows-{token}-{group}",
            )
        return groups[group]

    tasks = {}
    for blk in todo:
        indices = touching[blk.key]
        after = list({id(t): t for t in (group_task(i, blk.key) for i in indices)}.values())
        tasks[blk.key] = delayed(assemble)(
            blk,
            [tiles[i] for i in indices],
            indices,
            [users[i] for i in indices],
            files,
            plan,
            work.outputs,
            done / blk.key,
            after,
        )
    return tasks, [f"windows-{token}-{g}" for g in groups]


def cluster_tasks(
    plan: Plan,
    blocks: Sequence[Block],
    outputs: WorkArray,
    keys: WorkArray,
    done: Path,
    network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stage 2: a task per unfinished block clustering it with its halo.

    Each waits for the ``network`` tasks of the blocks its halo reaches.
    """
    network = network or {}
    tasks = {}
    for blk in blocks:
        if (done / blk.key).exists():
            continue
        start, stop = blk.grown(plan.halo, plan.shape)
        after = [
            network[other.key]
            for other in blocks
            if other.key in network
            and all(
                a < d and c < b
                for a, b, c, d in zip(start, stop, other.start, other.stop, strict=True)
            )
        ]
        tasks[blk.key] = delayed(cluster_block)(blk, plan, outputs, keys, done / blk.key, after)
    return tasks
