"""``predict --recluster``: cluster the network outputs kept in a ``.zarr`` output again.

Outputs kept with ``--keep-outputs`` carry what clustering needs (shape, blocks, halo,
embedding scale, thresholds); new thresholds or blocks give new labels without running the
network again.
"""

from __future__ import annotations

import time
from pathlib import Path

from embedseg_cli.blockwise.grid import block_grid
from embedseg_cli.config import PredictConfig
from embedseg_cli.data.properties import per_axis
from embedseg_cli.errors import InputError
from embedseg_cli.io.guards import lock_output
from embedseg_cli.io.tables import write_table_csv
from embedseg_cli.io.work import (
    discard_work,
    keep_outputs,
    read_outputs_record,
    restart_clustering,
    take_kept_outputs,
    work_beside,
)
from embedseg_cli.predict.engine import ModelKey, engine
from embedseg_cli.predict.jobs import file_writer
from embedseg_cli.predict.plan import Plan
from embedseg_cli.predict.report import PredictReport
from embedseg_cli.predict.resample import resample
from embedseg_cli.predict.stages import number
from embedseg_cli.predict.table import labels_as_written, objects_table
from embedseg_cli.predict.volume import cluster_tasks
from embedseg_cli.progress import Progress

__all__ = ["recluster"]


def recluster(config: PredictConfig, progress: Progress, started: float) -> PredictReport:
    """Cluster network outputs kept in a ``.zarr`` output again, with other thresholds."""
    work = work_beside(config.input)
    with lock_output(work.with_name(f"{work.name}.lock"), config.input):
        return _recluster_locked(config, progress, started)


def _recluster_locked(config: PredictConfig, progress: Progress, started: float) -> PredictReport:
    source = config.input
    work = work_beside(source)
    outputs = take_kept_outputs(source, work)
    if outputs is None:
        msg = (
            f"{source} holds no network outputs: predict into a .zarr output with "
            "--keep-outputs first, then --recluster it"
        )
        raise InputError(msg)
    info = read_outputs_record(outputs)
    if not info.get("complete"):
        msg = f"the network outputs in {source} are incomplete: predict it again"
        raise InputError(msg)
    ndim = int(info["ndim"])
    plan = Plan(
        shape=tuple(info["shape"]),
        ndim=ndim,
        window=(),
        overlap=(),
        block=tuple(info["block"])
        if config.block_size is None
        else per_axis(config.block_size, ndim, "block-size"),
        halo=tuple(info["halo"]) if config.halo is None else per_axis(config.halo, ndim, "halo"),
        low=(),
        high=(),
        tta=bool(info["tta"]),
        model=ModelKey("", None, "best", "cpu"),
        spacing=tuple(info["spacing"]),
        scale=float(info["scale"]),
        foreground=config.foreground_threshold or float(info["foreground"]),
        seed=config.seed_threshold,
        min_object_size=config.min_object_size
        if config.min_object_size is not None
        else int(info["min_object_size"]),
    )
    out = config.out or source
    results: list[str] = []
    with engine(config, progress) as running:
        keys, done = restart_clustering(work, plan.shape, plan.block)
        blocks = block_grid(plan.shape, plan.block)
        stage2 = cluster_tasks(plan, blocks, outputs, keys, done)
        running.run(list(stage2.values()), f"{source.stem}: clustering")
        labels, mapping = number(blocks, keys, done)
        input_shape = tuple(info.get("input_shape", plan.shape))
        factors = None
        if input_shape != plan.shape:
            factors = tuple(n / m for n, m in zip(input_shape, plan.shape, strict=True))
            labels = resample(labels, input_shape, 0)
        voxel_size = tuple(info.get("voxel_size") or (None,) * ndim)  # µm, None: unknown
        write = file_writer(out, False, True, config.ngff_version)
        results.append(write(labels, voxel_size, {"reclustered": str(source.resolve())}))
        if config.table is not None:
            written = labels_as_written(results[0], labels)
            columns = objects_table(written, mapping, outputs, factors, running)
            write_table_csv(config.table, columns)
            results.append(str(config.table))
    home = source if source.is_dir() else Path(results[0])
    keep_outputs(work, home)
    discard_work(work)
    seconds = time.perf_counter() - started
    return PredictReport(1, len(mapping), results, seconds)
