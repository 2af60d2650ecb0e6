"""The inputs and outputs of a ``predict`` run, and its claim on each output.

An output is never an input; each job locks its output and work folder, and starts only
where nothing would be lost: an existing output is replaced only with ``overwrite``, an
interrupted run is continued only with ``resume``, and a finished output records how it
was made, so that ``resume`` can tell it is complete.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask import config as dask_config

from embedseg_cli.blockwise.grid import block_grid
from embedseg_cli.config import PredictConfig
from embedseg_cli.data.channels import channels_first
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.guards import check_output_apart, lock_output
from embedseg_cli.io.ome_zarr import NgffVersion, write_ome_zarr_labels
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.io.tiff import list_tiffs, write_labels_tiff
from embedseg_cli.io.units import VoxelSize
from embedseg_cli.io.volumes import open_volume
from embedseg_cli.io.work import (
    count_done,
    read_output_record,
    read_state,
    record_description,
    work_beside,
    write_output_record,
)
from embedseg_cli.io.zarr_meta import is_zarr
from embedseg_cli.predict.plan import Plan

__all__ = [
    "Job",
    "Writer",
    "already_complete",
    "check_claim",
    "file_writer",
    "finished_signature",
    "hold",
    "interrupted",
    "jobs",
    "settings",
]

logger = logging.getLogger(__name__)

Writer = Callable[[da.Array, VoxelSize, dict[str, Any]], str]
"""Writes labels with their voxel size (µm, None where unknown) and the signature of how
they were made."""

_FIX = "use a model trained on data like this"


@dataclass
class Job:
    """One input to predict and where its labels go."""

    name: str
    pixels: da.Array  # channels first: (C, *S)
    percentiles: tuple[tuple[float, float], ...] | None
    voxel_size: VoxelSize
    """Micrometres per spatial axis (ZYX), None along an axis the input's metadata does not
    give (with a unit)."""
    write: Writer
    """Writes the labels with a record of how they were made (the finished signature)."""
    work: Path
    source: str
    """The input, for messages."""
    output: Path | None = None
    """What the finished job leaves (None: a project store's prediction)."""

    @property
    def voxel_size_known(self) -> bool:
        """Whether the input's voxel size is known along every axis."""
        return all(v is not None for v in self.voxel_size)


def jobs(
    config: PredictConfig, store_in: ProjectStore | None, ndim: int, channels: int
) -> list[Job]:
    """The jobs of a run: one per input image, each checked against its output."""
    _check_apart(config)
    if store_in is not None:
        return _store_jobs(config, store_in, ndim, channels)
    paths: dict[str, tuple[Path, Path | None]] = {}
    if config.input.is_dir() and not is_zarr(config.input):
        if config.out is None:
            msg = "give --out: a folder for the labels of a folder of images"
            raise InputError(msg)
        paths = {
            name: (path, config.out / f"{name}.tif")
            for name, path in list_tiffs(config.input).items()
        }
        if not paths:
            msg = f"{config.input} holds no TIFF images"
            raise InputError(msg)
    else:
        if config.out is None and not is_zarr(config.input):
            msg = "give --out: a .tif or .zarr file for the labels"
            raise InputError(msg)
        paths = {config.input.stem: (config.input, config.out)}
    found = []
    for name, (source, target) in paths.items():
        # Small input chunks: every window reads only what it needs, and memory stays bounded
        # by the windows in flight rather than by dask's default 128 MiB chunks.
        with dask_config.set({"array.chunk-size": "8MiB"}):
            volume = open_volume(source)
        into_image = target is None
        out = source if target is None else target
        if out.suffix.lower() not in (".tif", ".tiff", ".zarr") and not into_image:
            msg = f"--out {out} must end in .tif or .zarr"
            raise InputError(msg)
        existing = source / "labels" / "embedseg" if into_image else out
        work = source / "labels" / ".embedseg-work" if into_image else work_beside(out)
        pixels = channels_first(
            volume.array, volume.axes, ndim=ndim, channels=channels, where=str(source), fix=_FIX
        )
        found.append(
            Job(
                name,
                pixels,
                None,
                tuple(volume.voxel_size.get(a) for a in "ZYX"[-ndim:]),
                file_writer(out, into_image, config.overwrite, config.ngff_version),
                work,
                str(source),
                existing,
            )
        )
    # Every output is checked before any is written; each is checked again under its lock.
    for job in found:
        with nullcontext() if config.dry_run or not job.work.exists() else hold(job):
            check_claim(job, config)
    return found


def _store_jobs(config: PredictConfig, store: ProjectStore, ndim: int, channels: int) -> list[Job]:
    """The jobs of a project store's test split: predictions written into the store."""
    if config.out is not None:
        msg = "a project store's predictions are written into the store: leave out --out"
        raise InputError(msg)
    records = store.images("test")
    if not records:
        msg = f"{config.input} has no test images to predict: give an image instead"
        raise InputError(msg)
    clash = [r.name for r in records if r.name in set(store.prediction_names())]
    if clash and not (config.overwrite or config.resume):
        msg = f"{config.input} already has predictions (e.g. {clash[0]!r}): pass --overwrite to replace them"
        raise OutputExistsError(msg)

    def writer(name: str) -> Writer:
        def write(labels: da.Array, voxel_size: VoxelSize, _: dict[str, Any]) -> str:
            store.write_prediction(name, np.asarray(labels.compute(), dtype=np.uint32))
            return f"{store.path}/predictions/{name}"

        return write

    return [
        Job(
            r.name,
            channels_first(
                da.from_zarr(store.image(r.name)),
                r.axes,
                ndim=ndim,
                channels=channels,
                where=r.name,
                fix=_FIX,
            ),
            r.percentiles,
            r.voxel_size,
            writer(r.name),
            store.path.parent / f".{store.path.name}.predict-{r.name}",
            f"image {r.name} of {store.path}",
        )
        for r in records
    ]


def _check_apart(config: PredictConfig) -> None:
    """Refuse outputs that are, hold or lie inside an input (INPUT, --model).

    Labels written into an OME-Zarr image (no ``--out``) are the one output allowed inside
    an input: they go to its ``labels/`` group, which OME-Zarr keeps for them.
    """
    inputs: dict[str, Path | None] = {"INPUT": config.input}
    if config.model is not None and Path(config.model).exists():
        inputs["--model"] = Path(config.model)
    if config.out is not None:
        check_output_apart(config.out, inputs)
    if config.table is not None:
        check_output_apart(config.table, inputs, option="--table")


def file_writer(
    out: Path, into_image: bool, overwrite: bool, ngff_version: NgffVersion = "0.5"
) -> Writer:
    """Writes labels to ``out`` (TIFF or OME-Zarr), or into the OME-Zarr image ``out``."""

    def write(labels: da.Array, voxel_size: VoxelSize, signature: dict[str, Any]) -> str:
        axes = "ZYX"[-labels.ndim :]
        record: dict[str, Any] = {"complete": True, "time": time.time(), "signature": signature}
        if into_image:
            write_ome_zarr_labels(
                out,
                labels,
                axes=axes,
                voxel_size=voxel_size,
                image_group=True,
                ngff_version=ngff_version,
            )
            write_output_record(out / "labels" / "embedseg", record)
            return f"{out}/labels/embedseg"
        if out.suffix.lower() == ".zarr":
            write_ome_zarr_labels(
                out, labels, axes=axes, voxel_size=voxel_size, ngff_version=ngff_version
            )
            write_output_record(out, record)
            return str(out)
        write_labels_tiff(
            out,
            np.asarray(labels.compute(), dtype=np.uint32),
            voxel_size,
            description=record_description(record),
        )
        return str(out)

    return write


def hold(job: Job) -> Any:
    """Hold the lock of ``job``'s output and work folder (refuse where another run has it)."""
    lock = job.work.with_name(f"{job.work.name}.lock")
    return lock_output(lock, job.output if job.output is not None else job.work)


def settings(job: Job, plan: Plan) -> dict[str, Any]:
    """What the labels depend on: a resumed run must not mix in other settings.

    Paths are resolved, so the same input typed as a relative or an absolute path (or
    through a symbolic link) is the same input.
    """
    source = Path(job.source)
    model = Path(plan.model.path)
    return {
        "input": str(source.resolve()) if source.exists() else job.source,
        "model": [
            str(model.resolve()) if model.exists() else plan.model.path,
            plan.model.run,
            plan.model.tag,
        ],
        "normalisation": [list(plan.low), list(plan.high)],
        "thresholds": [plan.foreground, plan.seed, plan.min_object_size],
    }


def finished_signature(job: Job, plan: Plan) -> dict[str, Any]:
    """What a finished output records of how it was made (JSON-normalised, to compare)."""
    signature = {
        **settings(job, plan),
        "shape": list(plan.shape),
        "halo": list(plan.halo),
        "tta": plan.tta,
    }
    loaded: dict[str, Any] = json.loads(json.dumps(signature))
    return loaded


def _recorded_signature(output: Path) -> dict[str, Any] | None:
    """The signature a finished output records, None where it records none."""
    record = read_output_record(output)
    if record is None or not record.get("complete"):
        return None
    signature = record.get("signature")
    return signature if isinstance(signature, dict) else None


def interrupted(work: Path) -> str | None:
    """How far the run that left ``work`` got ("N of M blocks done"); None: no such run."""
    if not work.is_dir():
        return None
    try:
        state = read_state(work)
        total = len(block_grid(tuple(state["shape"]), tuple(state["block"])))
    except (OSError, ValueError, KeyError, TypeError):
        return "no block done"
    return f"{count_done(work / 'network')} of {total} blocks done"


def check_claim(job: Job, config: PredictConfig) -> None:
    """Refuse to start ``job`` where its output or an interrupted run would be lost.

    Without ``resume`` or ``overwrite``, an existing output and an interrupted run's work
    folder are both refused. With ``resume`` and no interrupted run, an existing output is
    refused unless it can say how it was made (checked by :func:`already_complete` once the
    job is planned).
    """
    target = job.output if job.output is not None else job.work
    left = interrupted(job.work)
    if config.overwrite or (config.resume and left is not None):
        return
    if left is not None:
        msg = (
            f"{target} has an interrupted run ({left}): pass --resume to continue it "
            "or --overwrite to start over"
        )
        raise OutputExistsError(msg)
    if job.output is None or not (job.output.exists() or job.output.is_symlink()):
        return
    if not config.resume:
        msg = f"{job.output} already exists: pass --overwrite to replace it"
        raise OutputExistsError(msg)
    if _recorded_signature(job.output) is None:
        msg = (
            f"{job.output} exists and there is no interrupted run to resume, nor a record of "
            "how it was made: pass --overwrite to replace it"
        )
        raise OutputExistsError(msg)


def already_complete(job: Job, config: PredictConfig, plan: Plan) -> bool:
    """Whether ``resume`` finds ``job`` finished with the same settings (then nothing runs).

    Raises
    ------
    OutputExistsError
        Where the finished output was made from another input, model or settings.
    """
    if not config.resume or job.output is None or job.work.exists() or not job.output.exists():
        return False
    recorded = _recorded_signature(job.output)
    wanted = finished_signature(job, plan)
    if recorded == wanted:
        logger.info(
            "%s is already complete (same input, model and settings): nothing written", job.output
        )
        return True
    changed = sorted(
        k for k in {*(recorded or {}), *wanted} if (recorded or {}).get(k) != wanted.get(k)
    )
    msg = (
        f"{job.output} was made with other settings ({', '.join(changed)}) and there is no "
        "interrupted run to resume: pass --overwrite to replace it"
    )
    raise OutputExistsError(msg)
