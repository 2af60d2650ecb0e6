"""``predict``: instance labels for images and volumes of any size with a trained model.

One code path serves every size; a small image is a volume of one block.

1. **Network.** The (normalised) input is covered by a global grid of overlapping windows.
   Each window goes through the network (averaged over rotations and flips with ``tta``);
   overlapping outputs are blended with weights that fall off towards window edges. Each
   block of the output gathers the windows that touch it and stores its part of the raw
   outputs (float16). The grid depends only on the volume, so a pixel's output does not
   depend on the blocks.
2. **Clustering.** Each block clusters its outputs grown by a halo larger than the largest
   object, with embeddings in whole-volume coordinates. An instance is named after the
   volume position of its seed, and each block writes the names of the instances in its own
   core; an instance found from two blocks gets the same name in both.
3. **Labels.** The names are numbered 1..N in the order of their seeds' positions: the same
   input gives the same uint32 labels with any block size, worker count or engine.

Each stage is a dask graph run on dask's threaded scheduler, a local ``dask.distributed``
cluster (``workers``) or an existing one (``scheduler``); each process loads the model once.
Finished blocks are recorded, so ``resume`` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import zarr
from dask import config as dask_config
from dask.base import compute as dask_compute
from dask.callbacks import Callback
from dask.delayed import delayed
from numpy.typing import NDArray

from embedseg_cli.blockwise.grid import (
    Block,
    blend_profiles,
    block_grid,
    relabel_keys,
    tile_grid,
    tiles_overlapping,
)
from embedseg_cli.blockwise.resample import resample_piece, source_range
from embedseg_cli.config import PredictConfig
from embedseg_cli.data.objects import measure_block, merge, object_table
from embedseg_cli.data.properties import per_axis
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.guards import check_output_apart, lock_output
from embedseg_cli.io.models import load_network, read_model, resolve_device
from embedseg_cli.io.ome_zarr import NgffVersion, write_ome_zarr_labels
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.tables import write_table_csv
from embedseg_cli.io.tiff import list_tiffs, read_tiff_description, write_labels_tiff
from embedseg_cli.io.volumes import open_volume
from embedseg_cli.io.zarr_meta import is_zarr
from embedseg_cli.method.heads import seediness_of
from embedseg_cli.method.inference import ClusterThresholds, pad_to_multiple, segment
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.method.tta import forward_in_batches, predict_tta_batch
from embedseg_cli.progress import NullProgress, Progress

__all__ = ["PredictReport", "predict"]

logger = logging.getLogger(__name__)

_DEFAULTS: dict[int, dict[str, tuple[int, ...]]] = {
    2: {"tile": (512, 512), "overlap": (64, 64), "block": (1024, 1024)},
    3: {"tile": (64, 160, 160), "overlap": (16, 32, 32), "block": (64, 256, 256)},
}
_SUBSAMPLE_VOXELS = 16_000_000
DEFAULT_MODEL = "dsb2018-fluo"
"""The built-in model used when no ``--model`` is given (2D single-channel nuclei)."""


@dataclass(frozen=True)
class PredictReport:
    """What ``predict`` did."""

    images: int
    objects: int
    outputs: list[str]
    seconds: float
    network_seconds: float | None = None
    """Time in the network itself (threaded engine only; workers keep their own clocks)."""
    plans: list[dict[str, Any]] = field(default_factory=list)
    """With ``dry_run``: the plan of each volume and its estimated memory and time."""


@dataclass(frozen=True)
class _ModelKey:
    """What a worker needs to load the model (once per process)."""

    path: str
    run: str | None
    tag: str
    device: str


_MODELS: dict[_ModelKey, tuple[BranchedERFNet, torch.device]] = {}
_MODELS_LOCK = threading.Lock()
# When the network ran in this process: (start, end) of every call, to measure its share.
_NETWORK_CALLS: list[tuple[float, float]] = []


def _glibc() -> Any:
    """The C library where it is glibc (Linux), for its memory calls; else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc has it; musl does not)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
_M_ARENA_MAX = -8


def _bound_memory() -> None:
    """One malloc arena per process: the task threads' freed memory is reused, not kept."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, 1)


def _release_memory() -> None:
    """Give memory freed by a task back to the system (glibc keeps it otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _model(key: _ModelKey) -> tuple[BranchedERFNet, torch.device]:
    with _MODELS_LOCK:
        if key not in _MODELS:
            _bound_memory()
            device = resolve_device(key.device)
            trained = read_model(key.path, run=key.run, checkpoint=key.tag)
            _MODELS[key] = (load_network(trained, device), device)
        return _MODELS[key]


@dataclass(frozen=True)
class _Plan:
    """Everything a task needs, small and picklable."""

    shape: tuple[int, ...]
    ndim: int
    window: tuple[int, ...]
    overlap: tuple[int, ...]
    block: tuple[int, ...]
    halo: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    tta: bool
    model: _ModelKey
    spacing: tuple[float, ...]
    scale: float
    foreground: float
    seed: float
    min_object_size: int
    batch_size: int | None = None
    """Most images per network call (None: one window with all its rotations and flips)."""
    windows_per_task: int = 1
    """Windows that go through the network together."""

    def attrs(self) -> dict[str, Any]:
        """What ``--recluster`` needs to cluster stored outputs again."""
        return {
            "shape": list(self.shape),
            "ndim": self.ndim,
            "block": list(self.block),
            "halo": list(self.halo),
            "spacing": list(self.spacing),
            "scale": self.scale,
            "foreground": self.foreground,
            "seed": self.seed,
            "min_object_size": self.min_object_size,
            "tta": self.tta,
        }


# ---------------------------------------------------------------------------------------
# Tasks (run on workers)
# ---------------------------------------------------------------------------------------


class _Source:
    """The input's lazy pixels, held so that dask passes them to a task unread.

    Each window task reads its own region (with dask's synchronous scheduler, inside the
    task), so dask keeps no input chunks in flight between blocks, and a read that fails
    is reported with the region and block it was for.
    """

    __slots__ = ("name", "pixels")

    def __init__(self, name: str, pixels: da.Array) -> None:
        self.name = name
        self.pixels = pixels

    def __getstate__(self) -> tuple[str, da.Array]:
        return self.name, self.pixels

    def __setstate__(self, state: tuple[str, da.Array]) -> None:
        self.name, self.pixels = state

    def read(self, origin: Sequence[int], extent: Sequence[int], block: str) -> NDArray[Any]:
        region = tuple(slice(o, o + n) for o, n in zip(origin, extent, strict=True))
        try:
            return np.asarray(self.pixels[(slice(None), *region)].compute(scheduler="sync"))
        except Exception as error:  # noqa: BLE001 (a damaged input raises what its codec raises)
            where = " x ".join(f"{r.start}:{r.stop}" for r in region)
            msg = (
                f"cannot read {self.name} at voxels {where} (block {block}): "
                f"{type(error).__name__}: {error}. The input is damaged or incomplete there: "
                "repair or rewrite it, then run again with --resume to keep the finished blocks"
            )
            raise InputError(msg) from None


def _window_outputs(
    source: _Source, origins: Sequence[tuple[int, ...]], block: str, plan: _Plan
) -> list[NDArray[np.float16]]:
    """Raw outputs of windows of one shape, in float16: they wait for the blocks they touch."""
    pixels = np.stack([source.read(origin, plan.window, block) for origin in origins])
    model, device = _model(plan.model)
    shape = (1, -1, *([1] * plan.ndim))
    low = np.asarray(plan.low, np.float32).reshape(shape)
    high = np.asarray(plan.high, np.float32).reshape(shape)
    images = (pixels.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
    if pixels.dtype.kind == "f":
        # NaN and infinite intensities (masked or padded regions) become background.
        np.nan_to_num(images, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    tensor, crop = pad_to_multiple(torch.from_numpy(images).to(device), plan.ndim)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            out: torch.Tensor = model(x)
        return out.float()

    started = time.perf_counter()
    with torch.no_grad():
        if plan.tta:
            output = predict_tta_batch(forward, tensor, plan.ndim, batch_size=plan.batch_size)
        else:
            output = forward_in_batches(forward, tensor, plan.batch_size)
    with _MODELS_LOCK:
        _NETWORK_CALLS.append((started, time.perf_counter()))
    values = output[(slice(None), slice(None), *crop)].cpu().numpy().astype(np.float16)
    return list(values)


class _WindowFiles:
    """Network outputs of windows, kept on disk until every block that needs them has them.

    A window's outputs are written once (float16, renamed into place) and read by each
    block it touches; the last of those blocks deletes them. Memory then holds only the
    windows being computed or blended, whatever the size of the volume, and a resumed run
    reuses the windows already written.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, index: int) -> Path:
        return self.folder / f"{index}.npy"

    def save(self, index: int, values: NDArray[np.float16]) -> None:
        staging = self.folder / f".{index}.npy.tmp"
        with staging.open("wb") as handle:
            np.save(handle, values)
        staging.replace(self.path(index))

    def load(self, index: int) -> NDArray[np.float16]:
        return np.asarray(np.load(self.path(index)))

    def release(self, index: int, block: str, consumers: Sequence[str]) -> None:
        """Record that ``block`` is done with window ``index``; delete it after the last."""
        (self.folder / f"{index}.{block}.used").touch()
        if all((self.folder / f"{index}.{other}.used").exists() for other in consumers):
            self.path(index).unlink(missing_ok=True)
            for other in consumers:
                (self.folder / f"{index}.{other}.used").unlink(missing_ok=True)


def _compute_windows(
    source: _Source,
    files: _WindowFiles,
    indices: Sequence[int],
    origins: Sequence[tuple[int, ...]],
    block: str,
    plan: _Plan,
) -> None:
    """Compute the windows of ``indices`` not on disk yet and write them."""
    missing = [(i, o) for i, o in zip(indices, origins, strict=True) if not files.path(i).exists()]
    if not missing:
        return
    values = _window_outputs(source, [o for _, o in missing], block, plan)
    for (index, _), value in zip(missing, values, strict=True):
        files.save(index, value)
    del values
    _release_memory()


def _assemble(
    block: Block,
    origins: Sequence[tuple[int, ...]],
    windows: Sequence[int],
    consumers: Sequence[Sequence[str]],
    files: _WindowFiles,
    plan: _Plan,
    outputs: zarr.Array[Any],
    marker: Path,
    after: Sequence[None] = (),
) -> None:
    """Blend the windows that touch ``block`` into its raw outputs and store them.

    ``after`` holds the results of the window tasks that had to finish first (unused).
    """
    extent = tuple(b - a for a, b in zip(block.start, block.stop, strict=True))
    # torch rather than numpy: float16 -> float32 and the weighted sums are several times
    # faster there (vectorised and threaded), and blending is most of the time outside the
    # network.
    total = torch.zeros((outputs.shape[0], *extent), dtype=torch.float32)
    weight = torch.zeros(extent, dtype=torch.float32)
    for origin, index in zip(origins, windows, strict=True):
        values = torch.from_numpy(files.load(index))
        extent_tile = values.shape[1:]
        overlap = [min(o, e // 2) for o, e in zip(plan.overlap, extent_tile, strict=True)]
        profiles = blend_profiles(extent_tile, overlap, origin, plan.shape)
        inside = []
        source = []
        weights = torch.ones(())
        for axis, (o, n, a, b) in enumerate(
            zip(origin, extent_tile, block.start, block.stop, strict=True)
        ):
            lo, hi = max(o, a), min(o + n, b)
            inside.append(slice(lo - a, hi - a))
            source.append(slice(lo - o, hi - o))
            view = [1] * plan.ndim
            view[axis] = hi - lo
            weights = weights * torch.from_numpy(profiles[axis][lo - o : hi - o]).reshape(view)
        total[(slice(None), *inside)].addcmul_(values[(slice(None), *source)], weights)
        weight[tuple(inside)] += weights
        del values
    total /= weight.clamp_(min=1e-12)
    outputs[(slice(None), *block.slices)] = total.half().numpy()
    marker.touch()
    for index, users in zip(windows, consumers, strict=True):
        files.release(index, block.key, users)
    del total, weight
    _release_memory()


def _cluster_block(
    block: Block,
    plan: _Plan,
    outputs: zarr.Array[Any],
    keys: zarr.Array[Any],
    marker: Path,
    after: Sequence[None] = (),
) -> None:
    """Cluster a block with its halo; store the seed names of the instances in its core.

    ``after`` holds the results of the tasks that had to finish first (unused).
    """
    start, stop = block.grown(plan.halo, plan.shape)
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    raw = torch.from_numpy(np.asarray(outputs[(slice(None), *region)]))
    result = segment(
        raw,
        plan.ndim,
        origin=start,
        spacing=plan.spacing,
        scale=plan.scale,
        thresholds=ClusterThresholds(plan.foreground, plan.seed, plan.min_object_size),
    )
    seeds = result.seeds + np.asarray(start)
    names = np.zeros(len(seeds) + 1, np.uint64)
    if len(seeds):
        names[1:] = np.ravel_multi_index(tuple(seeds.T), plan.shape).astype(np.uint64) + 1
    core = tuple(
        slice(a - s, b - s) for a, b, s in zip(block.start, block.stop, start, strict=True)
    )
    core_names = names[result.labels[core]]
    keys[block.slices] = core_names
    np.save(marker.with_name(f"{marker.name}.tmp.npy"), np.unique(core_names[core_names > 0]))
    marker.with_name(f"{marker.name}.tmp.npy").replace(marker)
    del raw, result
    _release_memory()


# ---------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------


class _Engine:
    """Runs lists of dask tasks on the threaded scheduler or a distributed cluster."""

    def __init__(self, config: PredictConfig, progress: Progress) -> None:
        self.progress = progress
        self.client: Any = None
        self._cluster: Any = None
        if config.scheduler or config.workers:
            from distributed import Client, LocalCluster  # noqa: PLC0415 (only when asked)

            if config.scheduler:
                target = config.scheduler
                if Path(target).is_file():
                    self.client = Client(scheduler_file=target)
                else:
                    self.client = Client(target)
            else:
                self._cluster = LocalCluster(
                    n_workers=config.workers,
                    threads_per_worker=1,
                    host="127.0.0.1",
                    dashboard_address=None,
                    processes=True,
                )
                self.client = Client(self._cluster)

    def run(
        self, tasks: list[Any], description: str, units: Sequence[str] | None = None
    ) -> list[Any]:
        """Compute ``tasks``; progress counts the tasks, or the keys ``units`` (threads)."""
        threaded = self.client is None
        counted = set(units) if units is not None and threaded else {t.key for t in tasks}
        self.progress.start(description, total=len(counted))
        try:
            if not tasks:
                return []
            if not threaded:
                from distributed import as_completed  # noqa: PLC0415

                futures = self.client.compute(tasks)
                for _ in as_completed(futures):
                    self.progress.advance()
                return list(self.client.gather(futures))
            progress = self.progress

            def posttask(key: Any, *_: Any) -> None:
                if key in counted:
                    progress.advance()

            with Callback(posttask=posttask):
                return list(dask_compute(*tasks, scheduler="threads", num_workers=self.parallel))
        finally:
            self.progress.finish()

    @property
    def parallel(self) -> int:
        """Tasks that run at once in one process (threads of the threaded scheduler)."""
        return 1 if self.client is not None else min(4, os.cpu_count() or 1)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---------------------------------------------------------------------------------------
# One volume
# ---------------------------------------------------------------------------------------


@dataclass
class _Job:
    name: str
    pixels: da.Array  # channels first: (C, *S)
    percentiles: tuple[tuple[float, float], ...] | None
    voxel_size: tuple[float, ...] | None
    write: Callable[[da.Array, tuple[float, ...], dict[str, Any]], str]
    """Writes the labels with a record of how they were made (the finished signature)."""
    work: Path
    source: str
    """The input, for messages."""
    output: Path | None = None
    """What the finished job leaves (None: a project store's prediction)."""
    voxel_size_known: bool = True
    """Whether the voxel size comes from the input's metadata."""


def _percentiles(pixels: da.Array, ndim: int, name: str) -> tuple[tuple[float, float], ...]:
    """Percentiles 1 and 99.8 per channel, on a regular subsample of a large volume."""
    spatial = pixels.shape[1:]
    step = max(1, math.ceil((math.prod(spatial) / _SUBSAMPLE_VOXELS) ** (1 / ndim)))
    try:
        sample = np.asarray(pixels[(slice(None), *([slice(None, None, step)] * ndim))].compute())
    except Exception:
        _raise_unreadable_chunk(pixels, name)
        raise
    finite = np.isfinite(sample)
    if not finite.all():
        if not finite.any(axis=tuple(range(1, sample.ndim))).all():
            msg = f"{name} has no finite intensity (all NaN or infinite): give another image"
            raise InputError(msg)
        logger.warning("%s has NaN or infinite intensities: they are predicted as background", name)
    return tuple(
        (float(np.percentile(c[f], 1.0)), float(np.percentile(c[f], 99.8)))
        for c, f in zip(sample, finite, strict=True)
    )


def _raise_unreadable_chunk(pixels: da.Array, name: str) -> None:
    """Find the first chunk of ``pixels`` that cannot be read and raise an error naming it."""
    for index in np.ndindex(*pixels.numblocks):
        try:
            pixels.blocks[index].compute(scheduler="sync")
        except Exception as error:  # noqa: BLE001
            starts = [sum(c[:i]) for c, i in zip(pixels.chunks, index, strict=True)]
            stops = [a + c[i] for a, c, i in zip(starts, pixels.chunks, index, strict=True)]
            where = " x ".join(f"{a}:{b}" for a, b in list(zip(starts, stops, strict=True))[1:])
            msg = (
                f"cannot read {name} at voxels {where}: {type(error).__name__}: {error}. The "
                "input is damaged or incomplete there: repair or rewrite it, then run again"
            )
            raise InputError(msg) from None


# Bytes of memory per voxel of one image in the network's forward pass (measured on CPU,
# float32, batch 1-16); the window size is chosen from these when not given.
_NETWORK_BYTES_PER_VOXEL = {2: 256, 3: 160}
_MAX_AUTO_WINDOW = {2: (1024, 1024), 3: (96, 256, 256)}
_MIN_AUTO_WINDOW = {2: (128, 128), 3: (32, 64, 64)}


def memory_budget(device: torch.device) -> int:
    """Bytes the network may use: half the free GPU memory, else a quarter of free RAM (<= 4 GB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 * 10**9
    return int(min(4 * 10**9, available // 4))


@dataclass(frozen=True)
class _Geometry:
    window: tuple[int, ...]
    overlap: tuple[int, ...]
    block: tuple[int, ...]
    batch_size: int | None
    windows_per_task: int
    budget: int


def _geometry(
    shape: tuple[int, ...],
    config: PredictConfig,
    ndim: int,
    device: torch.device,
    parallel: int,
    stored_window: tuple[int, ...] | None = None,
) -> _Geometry:
    """Window, overlap, block and batch for a volume: as given, else from the memory budget."""
    defaults = _DEFAULTS[ndim]
    budget = config.memory_budget or memory_budget(device)
    per_window = 16 if config.tta and ndim == 3 else 8 if config.tta else 1
    images = config.batch_size or per_window
    bytes_per_voxel = _NETWORK_BYTES_PER_VOXEL[ndim]
    block = (
        defaults["block"]
        if config.block_size is None
        else per_axis(config.block_size, ndim, "block-size")
    )
    if stored_window is not None:
        window = stored_window
    elif config.tile_size is not None:
        window = per_axis(config.tile_size, ndim, "tile-size")
        if any(w % 8 for w in window):
            msg = f"--tile-size must be multiples of 8, as the network downsamples 3 times (got {window})"
            raise InputError(msg)
    else:
        # The largest window (within bounds, and not larger than a block) whose images of
        # one call, in every task running at once, fit the budget. Bounded by the block, the
        # memory of a run is set by the block size whatever the volume's shape.
        voxels = budget / (bytes_per_voxel * min(images, per_window) * parallel)
        default = defaults["tile"]
        factor = (voxels / math.prod(default)) ** (1 / ndim)
        window = tuple(
            max(lo, min(hi, 8 * (b // 8), 8 * int(d * factor // 8)))
            for d, lo, hi, b in zip(
                default, _MIN_AUTO_WINDOW[ndim], _MAX_AUTO_WINDOW[ndim], block, strict=True
            )
        )
    asked = window
    window = tuple(min(w, 8 * math.ceil(n / 8)) for w, n in zip(window, shape, strict=True))
    window = tuple(min(w, n) for w, n in zip(window, shape, strict=True))
    if config.tile_size is not None and stored_window is None and window != asked:
        logger.warning(
            "--tile-size %s is larger than the input (%s): reduced to %s",
            "x".join(map(str, asked)),
            "x".join(map(str, shape)),
            "x".join(map(str, window)),
        )
    overlap = (
        defaults["overlap"] if config.overlap is None else per_axis(config.overlap, ndim, "overlap")
    )
    halved = tuple(min(o, w // 2) for o, w in zip(overlap, window, strict=True))
    if config.overlap is not None and halved != overlap:
        logger.warning(
            "--overlap %s is more than half of the window %s: using %s",
            "x".join(map(str, overlap)),
            "x".join(map(str, window)),
            "x".join(map(str, halved)),
        )
    overlap = halved
    windows_per_task = max(1, images // per_window)
    if config.batch_size is None and device.type == "cuda":
        # On a GPU, as many windows per call as the budget holds (at most 8).
        fit = int(budget // (bytes_per_voxel * math.prod(window) * per_window))
        windows_per_task = max(1, min(8, fit))
    return _Geometry(window, overlap, block, config.batch_size, windows_per_task, budget)


@dataclass(frozen=True)
class _Volume:
    """The result of one volume, before writing."""

    labels: da.Array
    mapping: NDArray[np.uint64]
    """Seed names (flat seed index + 1) of labels 1..N."""
    plan: _Plan
    outputs: Path
    """The network outputs (float16 Zarr array) in the work folder."""


def _plan_volume(job: _Job, config: PredictConfig, base: _Plan, engine: _Engine) -> _Plan:
    ndim = base.ndim
    shape = tuple(int(n) for n in job.pixels.shape[1:])
    percentiles = job.percentiles or _percentiles(job.pixels, ndim, job.source)
    state = job.work / "state.json"
    stored = None
    if config.resume and config.tile_size is None and state.exists():
        # A resumed run keeps the window chosen when it started (free memory may differ now).
        stored = tuple(json.loads(state.read_text())["window"])
    device = _model(base.model)[1]
    geometry = _geometry(shape, config, ndim, device, engine.parallel, stored)
    return _Plan(
        **{
            **base.__dict__,
            "shape": shape,
            "window": geometry.window,
            "overlap": geometry.overlap,
            "block": geometry.block,
            "low": tuple(p[0] for p in percentiles),
            "high": tuple(p[1] for p in percentiles),
            "batch_size": geometry.batch_size,
            "windows_per_task": geometry.windows_per_task,
        }
    )


def _inner_chunk(block: int, ndim: int) -> int:
    """A divisor of ``block`` near 256 (2D) or 64 (3D) voxels: the outputs' chunk."""
    target = 256 if ndim == 2 else 64
    divisors = [d for d in range(target // 4, target + 1) if block % d == 0]
    return block if block <= target or not divisors else max(divisors)


def _open_work(
    work: Path, plan: _Plan, resume: bool, extra: dict[str, Any] | None = None
) -> tuple[zarr.Array[Any], zarr.Array[Any], Path, Path]:
    """The work folder's output arrays and block markers, fresh or (``resume``) as left."""
    state_path = work / "state.json"
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    signature = {
        "shape": list(plan.shape),
        "block": list(plan.block),
        "window": list(plan.window),
        "overlap": list(plan.overlap),
        "halo": list(plan.halo),
        "tta": plan.tta,
        **(extra or {}),
    }
    if state_path.exists():
        before = json.loads(state_path.read_text())
        changed = sorted(k for k in {*before, *signature} if before.get(k) != signature.get(k))
        if changed:
            what = ", ".join(f"{k} {before.get(k)} then {signature.get(k)}" for k in changed)
            msg = (
                f"{work} holds an interrupted run with other settings ({what}): run again with "
                "the same input, model and options, or without --resume to start over"
            )
            raise InputError(msg)
    state_path.write_text(json.dumps(signature))
    channels = 2 * plan.ndim + 1
    block = tuple(min(b, n) for b, n in zip(plan.block, plan.shape, strict=True))
    # Chunks that tile each block (a block's task writes all of its chunks, no other task
    # touches them) and are small, so that clustering a block reads only thin slices of
    # its neighbours under its halo. Not compressed: float16 network outputs shrink by
    # ~15% at several times the cost.
    if (work / "outputs" / "zarr.json").is_file():
        outputs = zarr.open_array(work / "outputs", mode="r+")
    else:
        outputs = zarr.create_array(
            work / "outputs",
            shape=(channels, *plan.shape),
            chunks=(channels, *(_inner_chunk(n, plan.ndim) for n in block)),
            compressors=None,
            dtype="float16",
            overwrite=True,
        )
    keys = zarr.open_array(
        work / "keys", mode="a", shape=plan.shape, chunks=plan.block, dtype="uint64", zarr_format=3
    )
    done_net, done_cluster = work / "network", work / "clustering"
    done_net.mkdir(exist_ok=True)
    done_cluster.mkdir(exist_ok=True)
    return outputs, keys, done_net, done_cluster


def _network_tasks(
    job: _Job, plan: _Plan, blocks: Sequence[Block], outputs: zarr.Array[Any], done: Path
) -> tuple[dict[str, Any], list[str]]:
    """Stage 1: a task per block assembling its outputs, each window computed once.

    Returns the block tasks (by block key, unfinished blocks only) and the keys of the
    window tasks (to count progress by).
    """
    tiles = tile_grid(plan.shape, plan.window, plan.overlap)
    k = plan.windows_per_task
    source = _Source(job.source, job.pixels)
    files = _WindowFiles(job.work / "windows")
    files.folder.mkdir(exist_ok=True)
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
            groups[group] = delayed(_compute_windows)(
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
        tasks[blk.key] = delayed(_assemble)(
            blk,
            [tiles[i] for i in indices],
            indices,
            [users[i] for i in indices],
            files,
            plan,
            outputs,
            done / blk.key,
            after,
        )
    return tasks, [f"windows-{token}-{g}" for g in groups]


def _settings(job: _Job, plan: _Plan) -> dict[str, Any]:
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


def _finished_signature(job: _Job, plan: _Plan) -> dict[str, Any]:
    """What a finished output records of how it was made (JSON-normalised, to compare)."""
    signature = {
        **_settings(job, plan),
        "shape": list(plan.shape),
        "halo": list(plan.halo),
        "tta": plan.tta,
    }
    loaded: dict[str, Any] = json.loads(json.dumps(signature))
    return loaded


_TIFF_RECORD = "embedseg predict "
"""How a TIFF output's description starts: then the record of how it was made, as JSON."""


def _recorded_signature(output: Path) -> dict[str, Any] | None:
    """The signature a finished output records, None where it records none."""
    record: Any = None
    if output.is_dir():
        try:
            record = zarr.open_group(output, mode="r").attrs.asdict().get("embedseg")
        except (OSError, ValueError, zarr.errors.NodeTypeValidationError):
            return None
    elif output.suffix.lower() in (".tif", ".tiff"):
        description = read_tiff_description(output) or ""
        if not description.startswith(_TIFF_RECORD):
            return None
        try:
            record = json.loads(description.removeprefix(_TIFF_RECORD))
        except ValueError:
            return None
    if not isinstance(record, dict) or not record.get("complete"):
        return None
    signature = record.get("signature")
    return signature if isinstance(signature, dict) else None


def _interrupted(work: Path) -> str | None:
    """How far the run that left ``work`` got ("N of M blocks done"); None: no such run."""
    if not work.is_dir():
        return None
    try:
        state = json.loads((work / "state.json").read_text())
        total = len(block_grid(tuple(state["shape"]), tuple(state["block"])))
    except (OSError, ValueError, KeyError, TypeError):
        return "no block done"
    network = work / "network"
    done = (
        sum(1 for p in network.iterdir() if not p.name.startswith(".")) if network.is_dir() else 0
    )
    return f"{done} of {total} blocks done"


def _check_claim(job: _Job, config: PredictConfig) -> None:
    """Refuse to start ``job`` where its output or an interrupted run would be lost.

    Without ``resume`` or ``overwrite``, an existing output and an interrupted run's work
    folder are both refused. With ``resume`` and no interrupted run, an existing output is
    refused unless it can say how it was made (checked by :func:`_check_finished` once the
    job is planned).
    """
    target = job.output if job.output is not None else job.work
    interrupted = _interrupted(job.work)
    if config.overwrite or (config.resume and interrupted is not None):
        return
    if interrupted is not None:
        msg = (
            f"{target} has an interrupted run ({interrupted}): pass --resume to continue it "
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


def _already_complete(job: _Job, config: PredictConfig, plan: _Plan) -> bool:
    """Whether ``resume`` finds ``job`` finished with the same settings (then nothing runs).

    Raises
    ------
    OutputExistsError
        Where the finished output was made from another input, model or settings.
    """
    if not config.resume or job.output is None or job.work.exists() or not job.output.exists():
        return False
    recorded = _recorded_signature(job.output)
    wanted = _finished_signature(job, plan)
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


def _lock(job: _Job) -> Path:
    """The lock file of ``job``'s output and work folder (beside the work folder)."""
    return job.work.with_name(f"{job.work.name}.lock")


def _run_volume(job: _Job, config: PredictConfig, plan: _Plan, engine: _Engine) -> _Volume:
    settings = _settings(job, plan)
    if config.overwrite and job.work.exists():
        logger.warning(
            "%s: starting over (--overwrite), the interrupted run's work (%s) is discarded",
            job.output or job.work,
            _interrupted(job.work),
        )
    outputs, keys, done_net, done_cluster = _open_work(job.work, plan, config.resume, settings)
    outputs.attrs["embedseg"] = {**plan.attrs(), "complete": False}
    blocks = block_grid(plan.shape, plan.block)
    stage1, units = _network_tasks(job, plan, blocks, outputs, done_net)
    # One graph: a block is clustered as soon as the blocks under its halo have their
    # outputs, while the network goes on with other windows.
    stage2 = _cluster_tasks(plan, blocks, outputs, keys, done_cluster, stage1)
    engine.run(
        [*stage1.values(), *stage2.values()],
        f"{job.name}: network and clustering",
        units=[*units, *(task.key for task in stage2.values())],
    )
    outputs.attrs["embedseg"] = {**plan.attrs(), "complete": True}
    labels, mapping = _number(plan, blocks, keys, done_cluster)
    return _Volume(labels, mapping, plan, job.work / "outputs")


def _cluster_tasks(
    plan: _Plan,
    blocks: Sequence[Block],
    outputs: zarr.Array[Any],
    keys: zarr.Array[Any],
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
        tasks[blk.key] = delayed(_cluster_block)(blk, plan, outputs, keys, done / blk.key, after)
    return tasks


def _number(
    plan: _Plan, blocks: Sequence[Block], keys: zarr.Array[Any], done: Path
) -> tuple[da.Array, NDArray[np.uint64]]:
    """Stage 3: number the instances 1..N in the order of their seeds' positions."""
    names = [np.load(done / blk.key) for blk in blocks]
    mapping = np.unique(np.concatenate(names)) if names else np.zeros(0, np.uint64)
    labels = da.from_zarr(keys).map_blocks(relabel_keys, mapping, dtype=np.uint32)
    return labels, mapping.astype(np.uint64)


# ---------------------------------------------------------------------------------------
# Voxel size
# ---------------------------------------------------------------------------------------


def _rescale_factors(
    job: _Job, data: dict[str, Any], config: PredictConfig
) -> tuple[float, ...] | None:
    """Input voxels per model voxel along each axis, where the two differ by over 5%.

    A model whose voxel size is 1 along every axis was trained without a known voxel size
    (unless its images were downsampled); it is never rescaled to. An input without a voxel size is taken to have the voxel size
    of the model's source images: where those were downsampled for training (``prepare
    --downsample``), the input is downsampled the same way.
    """
    downsample = tuple(data.get("downsample") or ())
    downsampled = any(d != 1 for d in downsample)
    if job.voxel_size is None or not job.voxel_size_known:
        if not downsampled:
            return None
        factors = tuple(1 / d for d in downsample)
        coarser = "x".join(str(d) for d in downsample)
        if not config.rescale:
            logger.warning(
                "the model was trained on images downsampled %s times (prepare --downsample) "
                "and %s has no voxel size: leave out --no-rescale to downsample it the same way",
                coarser,
                job.source,
            )
            return None
        logger.info(
            "%s has no voxel size: downsampling it %s times, as the model's training images",
            job.source,
            coarser,
        )
        return factors
    model = tuple(float(v) for v in data["voxel_size"])
    if all(v == 1.0 for v in model) and not downsampled:
        return None
    factors = tuple(i / m for i, m in zip(job.voxel_size, model, strict=True))
    if all(abs(f - 1) <= 0.05 for f in factors):
        return None
    sizes = ", ".join(f"{v:g}" for v in job.voxel_size)
    trained = ", ".join(f"{v:g}" for v in model)
    if not config.rescale:
        logger.warning(
            "%s has voxel size %s but the model was trained on %s: objects may be missed; "
            "leave out --no-rescale to resample it to the model's voxel size",
            job.source,
            sizes,
            trained,
        )
        return None
    logger.info("resampling %s from voxel size %s to the model's %s", job.source, sizes, trained)
    return factors


def _resample(array: da.Array, shape: tuple[int, ...], order: int) -> da.Array:
    """Resample the last ``len(shape)`` axes of ``array`` lazily, chunk by chunk."""
    ndim = len(shape)
    lead = tuple(array.shape[: array.ndim - ndim])
    source_shape = tuple(int(n) for n in array.shape[-ndim:])
    factors = tuple(n / m for n, m in zip(source_shape, shape, strict=True))
    step = 1024 if ndim == 2 else 128
    ranges = [[(a, min(a + step, n)) for a in range(0, n, step)] for n in shape]

    def piece(index: tuple[int, ...]) -> da.Array:
        bounds = [ranges[axis][i] for axis, i in enumerate(index)]
        sources = [
            source_range(a, b, f, n)
            for (a, b), f, n in zip(bounds, factors, source_shape, strict=True)
        ]
        part = array[(Ellipsis, *(slice(lo, hi) for lo, hi in sources))]
        value = delayed(resample_piece)(
            part,
            [a for a, _ in bounds],
            [b for _, b in bounds],
            [lo for lo, _ in sources],
            factors,
            order,
        )
        extent = tuple(b - a for a, b in bounds)
        dtype = array.dtype if order == 0 else np.float32
        result: da.Array = da.from_delayed(value, shape=(*lead, *extent), dtype=dtype)
        return result

    def nest(prefix: tuple[int, ...]) -> Any:
        axis = len(prefix)
        if axis == ndim:
            return piece(prefix)
        return [nest((*prefix, i)) for i in range(len(ranges[axis]))]

    resampled: da.Array = da.block(nest(()))
    return resampled


# ---------------------------------------------------------------------------------------
# Per-object table
# ---------------------------------------------------------------------------------------


def _object_table(
    labels: da.Array,
    mapping: NDArray[np.uint64],
    outputs: zarr.Array[Any],
    factors: tuple[float, ...] | None,
    engine: _Engine,
) -> dict[str, NDArray[Any]]:
    """Label, voxel count, centroid, bounding box, seed position and seed score per object."""
    ndim = labels.ndim
    parts = []
    for index in np.ndindex(*labels.numblocks):
        offset = tuple(sum(c[:i]) for c, i in zip(labels.chunks, index, strict=True))
        parts.append(delayed(measure_block)(labels.blocks[index], offset))
    stats = merge(engine.run(parts, "objects"), ndim)
    names = mapping[stats.labels.astype(np.intp) - 1]
    shape = tuple(int(n) for n in outputs.shape[1:])
    seeds = np.stack(np.unravel_index((names - 1).astype(np.intp), shape), axis=1)
    scores = np.asarray(outputs.vindex[(np.full(len(seeds), 2 * ndim), *seeds.T)], np.float32)
    positions = seeds.astype(np.float64)
    if factors is not None:
        positions = (positions + 0.5) * np.asarray(factors) - 0.5
    seed_scores = seediness_of(torch.from_numpy(scores.astype(np.float64))).numpy()
    return object_table(stats, seeds=positions, seed_scores=seed_scores)


# ---------------------------------------------------------------------------------------
# The workflow
# ---------------------------------------------------------------------------------------


def _channels_first(pixels: da.Array, axes: str, ndim: int, channels: int, name: str) -> da.Array:
    axes = axes.upper()
    shape = tuple(pixels.shape)
    if pixels.dtype == np.bool_ or pixels.dtype.kind not in "uif":
        msg = (
            f"{name} holds {pixels.dtype} values: give an image of integer or floating-point "
            "intensities"
        )
        raise InputError(msg)
    if "C" in axes:
        pixels = da.moveaxis(pixels, axes.index("C"), 0)
        spatial = axes.replace("C", "")
    else:
        pixels = pixels[None]
        spatial = axes
    spatial_axes = [a for a in spatial if a in "ZYX"]
    if len(spatial_axes) != ndim or pixels.shape[0] != channels or pixels.ndim != ndim + 1:
        msg = (
            f"{name} has axes {axes} and shape {shape} but the model takes {ndim}D "
            f"images with {channels} channel(s): use a model trained on data like this"
        )
        raise InputError(msg)
    return pixels


def _jobs(
    config: PredictConfig, store_in: ProjectStore | None, ndim: int, channels: int
) -> list[_Job]:
    _check_apart(config)
    if store_in is not None:
        if config.out is not None:
            msg = "a project store's predictions are written into the store: leave out --out"
            raise InputError(msg)
        records = store_in.images("test")
        if not records:
            msg = f"{config.input} has no test images to predict: give an image instead"
            raise InputError(msg)
        clash = [r.name for r in records if r.name in set(store_in.prediction_names())]
        if clash and not (config.overwrite or config.resume):
            msg = f"{config.input} already has predictions (e.g. {clash[0]!r}): pass --overwrite to replace them"
            raise OutputExistsError(msg)
        store = store_in

        def writer(name: str) -> Callable[[da.Array, tuple[float, ...], dict[str, Any]], str]:
            def write(labels: da.Array, voxel_size: tuple[float, ...], _: dict[str, Any]) -> str:
                store.write_prediction(name, np.asarray(labels.compute(), dtype=np.uint32))
                return f"{store.path}/predictions/{name}"

            return write

        return [
            _Job(
                r.name,
                _channels_first(da.from_zarr(store.image(r.name)), r.axes, ndim, channels, r.name),
                r.percentiles,
                r.voxel_size,
                writer(r.name),
                store.path.parent / f".{store.path.name}.predict-{r.name}",
                f"image {r.name} of {store.path}",
            )
            for r in records
        ]
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
    jobs = []
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
        work = out.with_name(f".{out.name}.embedseg-work")
        if into_image:
            work = source / "labels" / ".embedseg-work"
        jobs.append(
            _Job(
                name,
                _channels_first(volume.array, volume.axes, ndim, channels, str(source)),
                None,
                tuple(volume.voxel_size.get(a, 1.0) for a in "ZYX"[-ndim:]),
                _file_writer(out, into_image, config.overwrite, config.ngff_version),
                work,
                str(source),
                existing,
                voxel_size_known=all(a in volume.voxel_size for a in "ZYX"[-ndim:]),
            )
        )
    # Every output is checked before any is written; each is checked again under its lock.
    for job in jobs:
        with nullcontext() if config.dry_run or not job.work.exists() else _hold(job):
            _check_claim(job, config)
    return jobs


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


def _hold(job: _Job) -> Any:
    """Hold the lock of ``job``'s output and work folder (refuse where another run has it)."""
    return lock_output(_lock(job), job.output if job.output is not None else job.work)


def _file_writer(
    out: Path, into_image: bool, overwrite: bool, ngff_version: NgffVersion = "0.5"
) -> Callable[[da.Array, tuple[float, ...], dict[str, Any]], str]:
    def write(labels: da.Array, voxel_size: tuple[float, ...], signature: dict[str, Any]) -> str:
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
            group = zarr.open_group(out / "labels" / "embedseg", mode="r+")
            group.attrs["embedseg"] = record
            return f"{out}/labels/embedseg"
        if out.suffix.lower() == ".zarr":
            write_ome_zarr_labels(
                out, labels, axes=axes, voxel_size=voxel_size, ngff_version=ngff_version
            )
            group = zarr.open_group(out, mode="r+")
            group.attrs["embedseg"] = record
            return str(out)
        # Not a bare JSON object: tifffile would read that as its own shape metadata.
        description = f"{_TIFF_RECORD}{json.dumps(record, ensure_ascii=True)}"
        write_labels_tiff(out, np.asarray(labels.compute(), dtype=np.uint32), description)
        return str(out)

    return write


@contextmanager
def _engine(config: PredictConfig, progress: Progress) -> Iterator[_Engine]:
    engine = _Engine(config, progress)
    try:
        yield engine
    finally:
        engine.close()


def _load(config: PredictConfig, store_in: ProjectStore | None) -> tuple[_Plan, dict[str, Any]]:
    """Load the model once in this process.

    Returns the model-dependent part of the plan and the model's training-data properties.
    """
    model_path = config.model or (str(config.input) if store_in is not None else None)
    if model_path is None:
        model_path = DEFAULT_MODEL
        logger.info("no --model given: using the built-in model %s", DEFAULT_MODEL)
    trained = read_model(model_path, run=config.run, checkpoint=config.checkpoint)
    attrs = trained.attrs
    device = resolve_device(config.device)
    path = model_path if not Path(model_path).exists() else str(Path(model_path).absolute())
    key = _ModelKey(path, attrs.get("run"), config.checkpoint, config.device)
    # Loaded here, so that a bad checkpoint fails before any work; threads of this process
    # reuse it, worker processes load their own once.
    with _MODELS_LOCK:
        _MODELS[key] = (load_network(trained, device), device)
    spec, stored, data = attrs["model"], attrs["thresholds"], attrs["data"]
    ndim = int(spec["ndim"])
    halo_default = tuple(max(16, math.ceil(1.25 * e)) for e in data["max_extent"])
    base = _Plan(
        shape=(),
        ndim=ndim,
        window=(),
        overlap=(),
        block=(),
        halo=halo_default if config.halo is None else per_axis(config.halo, ndim, "halo"),
        low=(),
        high=(),
        tta=config.tta,
        model=key,
        spacing=tuple(float(a) for a in spec["spacing"]),
        scale=float(spec["embedding_scale"]),
        foreground=config.foreground_threshold or float(stored["foreground"]),
        seed=config.seed_threshold,
        min_object_size=config.min_object_size
        if config.min_object_size is not None
        else int(stored["min_object_size"]),
    )
    return base, {**data, "in_channels": int(spec["in_channels"])}


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
    _bound_memory()
    progress = progress or NullProgress()
    if config.recluster:
        return _recluster(config, progress, started)
    store_in = ProjectStore.open(config.input) if is_project_store(config.input) else None
    base, data = _load(config, store_in)
    try:
        jobs = _jobs(config, store_in, base.ndim, data["in_channels"])
    except InputError as error:
        if config.model is None and store_in is None:
            msg = (
                f"{error} (no --model was given, so the built-in model {DEFAULT_MODEL} for 2D "
                "single-channel nuclei was used: give --model for other data)"
            )
            raise InputError(msg) from None
        raise
    outputs: list[str] = []
    plans: list[dict[str, Any]] = []
    objects = 0
    calls_before = len(_NETWORK_CALLS)
    with _engine(config, progress) as engine:
        for job in jobs:
            # The lock is held from the first look at the work folder to the last write, so
            # a second run into the same output refuses instead of mixing its results in.
            with nullcontext() if config.dry_run else _hold(job):
                if not config.dry_run:
                    _check_claim(job, config)
                result = _predict_job(job, config, data, base, engine, len(jobs))
            if isinstance(result, dict):
                plans.append(result)
            elif result is not None:
                outputs.extend(result[0])
                objects += result[1]
    seconds = time.perf_counter() - started
    if config.dry_run:
        logger.info("planned %d image(s) in %.1f s (nothing written)", len(jobs), seconds)
    else:
        logger.info("predicted %d image(s), %d objects in %.1f s", len(jobs), objects, seconds)
    local = config.workers is None and config.scheduler is None
    network = _busy_seconds(_NETWORK_CALLS[calls_before:]) if local else None
    return PredictReport(len(jobs), objects, outputs, seconds, network, plans)


def _predict_job(
    job: _Job,
    config: PredictConfig,
    data: dict[str, Any],
    base: _Plan,
    engine: _Engine,
    n_jobs: int,
) -> dict[str, Any] | tuple[list[str], int] | None:
    """Predict one input.

    Returns its plan (``dry_run``), its outputs and object count, or None where ``resume``
    finds it already complete.
    """
    shape = tuple(int(n) for n in job.pixels.shape[1:])
    factors = _rescale_factors(job, data, config)
    if factors is not None:
        scaled = tuple(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))
        job.pixels = _resample(job.pixels, scaled, order=1)
    plan = _plan_volume(job, config, base, engine)
    if config.dry_run:
        return _dry_run(job, plan, engine.parallel, config.workers or 1, shape)
    if _already_complete(job, config, plan):
        return None
    volume = _run_volume(job, config, plan, engine)
    labels = volume.labels if factors is None else _resample(volume.labels, shape, 0)
    voxel_size = job.voxel_size or tuple(data["voxel_size"])
    kept = zarr.open_array(volume.outputs, mode="r+")
    kept.attrs["embedseg"] = {
        **kept.attrs["embedseg"],  # type: ignore[dict-item]
        "input_shape": list(shape),
        "voxel_size": list(voxel_size),
    }
    outputs = [job.write(labels, voxel_size, _finished_signature(job, plan))]
    if config.table is not None:
        table = config.table
        if n_jobs > 1:
            table = table.with_name(f"{table.stem}-{job.name}{table.suffix}")
        outputs_array = zarr.open_array(volume.outputs, mode="r")
        written = _written_labels(outputs[0], labels)
        columns = _object_table(written, volume.mapping, outputs_array, factors, engine)
        write_table_csv(table, columns)
        outputs.append(str(table))
    _keep_or_drop_outputs(config, job, Path(outputs[0]))
    return outputs, len(volume.mapping)


def _written_labels(output: str, labels: da.Array) -> da.Array:
    """The labels as written (read back from a Zarr output rather than computed again)."""
    path = Path(output)
    if (path / "0").is_dir():
        written: da.Array = da.from_zarr(zarr.open_array(path / "0", mode="r"))
        return written
    return labels


def _keep_or_drop_outputs(config: PredictConfig, job: _Job, output: Path) -> None:
    kept = output / "embedseg_outputs"
    if config.keep_outputs and output.suffix == ".zarr" and output.is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        (job.work / "outputs").rename(kept)
    elif config.keep_outputs:
        logger.warning("--keep-outputs keeps the network outputs only in a .zarr output")
    shutil.rmtree(job.work, ignore_errors=True)


def _dry_run(
    job: _Job, plan: _Plan, parallel: int, workers: int, input_shape: tuple[int, ...]
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
    memory = zarr.storage.MemoryStore()
    outputs = zarr.create_array(
        memory,
        name="outputs",
        shape=(channels, *plan.shape),
        chunks=(channels, *plan.block),
        dtype="float16",
    )
    keys = zarr.create_array(
        memory, name="keys", shape=plan.shape, chunks=plan.block, dtype="uint64"
    )
    source = _Source(job.source, job.pixels)
    k = plan.windows_per_task
    with tempfile.TemporaryDirectory() as folder:
        files = _WindowFiles(Path(folder))
        started = time.perf_counter()
        for i in range(0, len(touching), k):
            part = touching[i : i + k]
            _compute_windows(source, files, part, [tiles[j] for j in part], block.key, plan)
        network = time.perf_counter() - started
        started = time.perf_counter()
        users = [[grown.key] for _ in touching]
        origins = [tiles[j] for j in touching]
        _assemble(grown, origins, touching, users, files, plan, outputs, Path(folder) / "n")
        assembling = (
            (time.perf_counter() - started) * math.prod(block.shape) / math.prod(grown.shape)
        )
        started = time.perf_counter()
        _cluster_block(block, plan, outputs, keys, Path(folder) / "c")
        clustering = time.perf_counter() - started
    per_window = network / max(1, len(touching))
    per_call = min(plan.batch_size or 10**9, (16 if ndim == 3 else 8) if plan.tta else 1) * k
    window_voxels = math.prod(plan.window)
    task_bytes = (
        per_call * window_voxels * _NETWORK_BYTES_PER_VOXEL[ndim]
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


_BASE_MEMORY = 400 * 10**6
"""Python, torch and the model in a worker process, before any data (measured on CPU)."""


def _recluster(config: PredictConfig, progress: Progress, started: float) -> PredictReport:
    """Cluster network outputs kept in a ``.zarr`` output again, with other thresholds."""
    work = config.input.with_name(f".{config.input.name}.embedseg-work")
    with lock_output(work.with_name(f"{work.name}.lock"), config.input):
        return _recluster_locked(config, progress, started)


def _recluster_locked(config: PredictConfig, progress: Progress, started: float) -> PredictReport:
    source = config.input
    work = source.with_name(f".{source.name}.embedseg-work")
    kept = source / "embedseg_outputs"
    if not kept.is_dir() and not (work / "outputs").is_dir():
        msg = (
            f"{source} holds no network outputs: predict into a .zarr output with "
            "--keep-outputs first, then --recluster it"
        )
        raise InputError(msg)
    if kept.is_dir():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        kept.rename(work / "outputs")
    outputs = zarr.open_array(work / "outputs", mode="r")
    info: dict[str, Any] = json.loads(json.dumps(outputs.attrs.asdict().get("embedseg", {})))
    if not info.get("complete"):
        msg = f"the network outputs in {source} are incomplete: predict it again"
        raise InputError(msg)
    ndim = int(info["ndim"])
    plan = _Plan(
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
        model=_ModelKey("", None, "best", "cpu"),
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
    with _engine(config, progress) as engine:
        keys = zarr.open_array(
            work / "keys", mode="w", shape=plan.shape, chunks=plan.block, dtype="uint64"
        )
        done = work / "clustering"
        shutil.rmtree(done, ignore_errors=True)
        done.mkdir()
        blocks = block_grid(plan.shape, plan.block)
        stage2 = _cluster_tasks(plan, blocks, outputs, keys, done)
        engine.run(list(stage2.values()), f"{source.stem}: clustering")
        labels, mapping = _number(plan, blocks, keys, done)
        input_shape = tuple(info.get("input_shape", plan.shape))
        factors = None
        if input_shape != plan.shape:
            factors = tuple(n / m for n, m in zip(input_shape, plan.shape, strict=True))
            labels = _resample(labels, input_shape, 0)
        voxel_size = tuple(info.get("voxel_size", (1.0,) * ndim))
        write = _file_writer(out, False, True, config.ngff_version)
        results.append(write(labels, voxel_size, {"reclustered": str(source.resolve())}))
        if config.table is not None:
            columns = _object_table(
                _written_labels(results[0], labels), mapping, outputs, factors, engine
            )
            write_table_csv(config.table, columns)
            results.append(str(config.table))
    home = source if source.is_dir() else Path(results[0])
    (work / "outputs").rename(home / "embedseg_outputs")
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    return PredictReport(1, len(mapping), results, seconds)


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals (calls that overlap count once)."""
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total
