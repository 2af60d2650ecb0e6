"""The ``predict`` workflow: load the model, then plan, run and write each job in turn."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from embedseg_cli.config import PredictConfig
from embedseg_cli.errors import InputError
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.tables import write_table_csv
from embedseg_cli.io.work import add_to_outputs_record, discard_work, keep_outputs, open_outputs
from embedseg_cli.predict.dryrun import dry_run
from embedseg_cli.predict.engine import NETWORK_CALLS, Engine, bound_memory, busy_seconds, engine
from embedseg_cli.predict.jobs import (
    Job,
    already_complete,
    check_claim,
    finished_signature,
    hold,
    jobs,
)
from embedseg_cli.predict.objectsize import (
    ObjectScale,
    check_object_size,
    choose_object_scale,
    object_size_columns,
)
from embedseg_cli.predict.plan import DEFAULT_MODEL, ModelData, Plan, base_plan
from embedseg_cli.predict.recluster import recluster
from embedseg_cli.predict.report import PredictReport
from embedseg_cli.predict.resample import resample, rescale_factors
from embedseg_cli.predict.table import labels_as_written, objects_table
from embedseg_cli.predict.volume import plan_volume, run_volume
from embedseg_cli.progress import NullProgress, Progress

__all__ = ["predict"]

logger = logging.getLogger(__name__)


def predict(config: PredictConfig, *, progress: Progress | None = None) -> PredictReport:
    """Predict instance labels for every input image or volume.

    Raises
    ------
    InputError
        For a missing model, an input of the wrong dimensionality or channel count, or an
        unreadable input.
        Also where ``out`` or ``table`` is, holds or lies inside the input or the model.
    OutputExistsError
        Where an output or an interrupted run's work folder exists and neither
        ``overwrite`` nor ``resume`` is set, or ``resume`` finds no interrupted run and an
        output made otherwise.
    OutputLockedError
        Where another running process is writing the same output.
    """
    started = time.perf_counter()
    bound_memory()
    progress = progress or NullProgress()
    if config.recluster:
        return recluster(config, progress, started)
    store_in = ProjectStore.open(config.input) if is_project_store(config.input) else None
    base, model = base_plan(config, store_in)
    try:
        found = jobs(config, store_in, base.ndim, model.in_channels)
    except InputError as error:
        if config.model is None and store_in is None:
            msg = (
                f"{error} (no --model was given, so the built-in model {DEFAULT_MODEL} for 2D "
                "single-channel nuclei was used: give --model for other data)"
            )
            raise InputError(msg) from None
        raise
    check_object_size(config, found)
    outputs: list[str] = []
    plans: list[dict[str, Any]] = []
    scales: dict[str, ObjectScale] = {}
    objects = 0
    calls_before = len(NETWORK_CALLS)
    with engine(config, progress) as running:
        for job in found:
            # The lock is held from the first look at the work folder to the last write, so
            # a second run into the same output refuses instead of mixing its results in.
            with nullcontext() if config.dry_run else hold(job):
                if not config.dry_run:
                    check_claim(job, config)
                scale, result = _predict_job(job, config, model, base, running, len(found))
            scales[job.name] = scale
            if isinstance(result, dict):
                plans.append(result)
            elif result is not None:
                outputs.extend(result[0])
                objects += result[1]
    seconds = time.perf_counter() - started
    if config.dry_run:
        logger.info("planned %d image(s) in %.1f s (nothing written)", len(found), seconds)
    else:
        logger.info("predicted %d image(s), %d objects in %.1f s", len(found), objects, seconds)
    local = config.workers is None and config.scheduler is None
    network = busy_seconds(NETWORK_CALLS[calls_before:]) if local else None
    return PredictReport(len(found), objects, outputs, seconds, network, plans, scales)


def _predict_job(
    job: Job,
    config: PredictConfig,
    model: ModelData,
    base: Plan,
    running: Engine,
    n_jobs: int,
) -> tuple[ObjectScale, dict[str, Any] | tuple[list[str], int] | None]:
    """Predict one input.

    Returns how it was scaled for its object size, and its plan (``dry_run``), its outputs
    and object count, or None where ``resume`` finds it already complete.
    """
    shape = tuple(int(n) for n in job.pixels.shape[1:])
    voxel = rescale_factors(job, model.properties, config)
    object_scale = choose_object_scale(job, config, model, base, voxel)
    # One resampling for both: model voxels per input voxel, the object scale on every axis.
    factors = tuple(f * object_scale.scale for f in voxel or (1.0,) * len(shape))
    scaled = tuple(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))
    resampled = scaled != shape
    if resampled:
        job.pixels = resample(job.pixels, scaled, order=1)
    plan = plan_volume(job, config, base, running)
    if config.dry_run:
        planned = dry_run(job, plan, running.parallel, config.workers or 1, shape)
        return object_scale, {**planned, "object_size": object_scale.as_dict()}
    if already_complete(job, config, plan):
        return object_scale, None
    volume = run_volume(job, config, plan, running)
    labels = resample(volume.labels, shape, 0) if resampled else volume.labels
    add_to_outputs_record(
        volume.outputs, {"input_shape": list(shape), "voxel_size": list(job.voxel_size)}
    )
    outputs = [job.write(labels, job.voxel_size, finished_signature(job, plan))]
    if config.table is not None:
        table = config.table
        if n_jobs > 1:
            table = table.with_name(f"{table.stem}-{job.name}{table.suffix}")
        written = labels_as_written(outputs[0], labels)
        # Input voxels per model voxel: where the seeds (found on the model's grid) sit.
        back = tuple(n / m for n, m in zip(shape, scaled, strict=True)) if resampled else None
        columns = objects_table(
            written, volume.mapping, open_outputs(volume.outputs), back, running
        )
        write_table_csv(
            table, {**columns, **object_size_columns(object_scale, len(volume.mapping))}
        )
        outputs.append(str(table))
    _keep_or_drop_outputs(config, job, Path(outputs[0]))
    return object_scale, (outputs, len(volume.mapping))


def _keep_or_drop_outputs(config: PredictConfig, job: Job, output: Path) -> None:
    """Move the network outputs into a ``.zarr`` output (``keep_outputs``); drop the work."""
    if config.keep_outputs and output.suffix == ".zarr" and output.is_dir():
        keep_outputs(job.work, output)
    elif config.keep_outputs:
        logger.warning("--keep-outputs keeps the network outputs only in a .zarr output")
    discard_work(job.work)
