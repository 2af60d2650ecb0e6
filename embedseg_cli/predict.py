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

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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

from embedseg_cli.blocks import (
    Block,
    blend_weights,
    block_grid,
    relabel_keys,
    tile_grid,
    tiles_overlapping,
)
from embedseg_cli.clustering import find_instances
from embedseg_cli.config import PredictConfig
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.fileio import (
    is_zarr,
    list_tiffs,
    open_volume,
    write_labels_tiff,
    write_ome_zarr_labels,
)
from embedseg_cli.inference import pad_to_multiple
from embedseg_cli.model import BranchedERFNet, activate, embed
from embedseg_cli.modelio import load_network, read_model, resolve_device
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.store import ProjectStore, is_project_store
from embedseg_cli.tta import predict_tta

__all__ = ["PredictReport", "predict"]

logger = logging.getLogger(__name__)

_DEFAULTS: dict[int, dict[str, tuple[int, ...]]] = {
    2: {"tile": (512, 512), "overlap": (64, 64), "block": (2048, 2048)},
    3: {"tile": (64, 160, 160), "overlap": (16, 32, 32), "block": (128, 512, 512)},
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


def _model(key: _ModelKey) -> tuple[BranchedERFNet, torch.device]:
    with _MODELS_LOCK:
        if key not in _MODELS:
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


def _per_axis(
    value: tuple[int, ...] | None, default: tuple[int, ...], ndim: int, name: str
) -> tuple[int, ...]:
    if value is None:
        return default
    if len(value) == 1:
        return value * ndim
    if len(value) != ndim:
        msg = f"--{name} has {len(value)} values but the data is {ndim}D: give 1 or {ndim}"
        raise InputError(msg)
    return value


# ---------------------------------------------------------------------------------------
# Tasks (run on workers)
# ---------------------------------------------------------------------------------------


def _tile_outputs(pixels: NDArray[Any], plan: _Plan) -> NDArray[np.float16]:
    """Raw outputs of one window, in float16: they wait in memory for the blocks they touch."""
    model, device = _model(plan.model)
    low = np.asarray(plan.low, np.float32).reshape(-1, *([1] * plan.ndim))
    high = np.asarray(plan.high, np.float32).reshape(-1, *([1] * plan.ndim))
    image = (pixels.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
    tensor, crop = pad_to_multiple(torch.from_numpy(image).to(device), plan.ndim)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            out: torch.Tensor = model(x)
        return out.float()

    started = time.perf_counter()
    with torch.no_grad():
        output = predict_tta(forward, tensor, plan.ndim) if plan.tta else forward(tensor[None])[0]
    with _MODELS_LOCK:
        _NETWORK_CALLS.append((started, time.perf_counter()))
    return np.asarray(output[(slice(None), *crop)].cpu().numpy(), dtype=np.float16)


def _assemble(
    block: Block,
    origins: Sequence[tuple[int, ...]],
    tiles: Sequence[NDArray[np.float16]],
    plan: _Plan,
    outputs: zarr.Array[Any],
    marker: Path,
) -> None:
    """Blend the windows that touch ``block`` into its raw outputs and store them."""
    extent = tuple(b - a for a, b in zip(block.start, block.stop, strict=True))
    total = np.zeros((outputs.shape[0], *extent), np.float32)
    weight = np.zeros(extent, np.float32)
    for origin, values in zip(origins, tiles, strict=True):
        extent_tile = values.shape[1:]
        overlap = [min(o, e // 2) for o, e in zip(plan.overlap, extent_tile, strict=True)]
        weights = blend_weights(extent_tile, overlap, origin, plan.shape)
        inside = []
        source = []
        for o, n, a, b in zip(origin, weights.shape, block.start, block.stop, strict=True):
            lo, hi = max(o, a), min(o + n, b)
            inside.append(slice(lo - a, hi - a))
            source.append(slice(lo - o, hi - o))
        total[(slice(None), *inside)] += values[(slice(None), *source)] * weights[tuple(source)]
        weight[tuple(inside)] += weights[tuple(source)]
    outputs[(slice(None), *block.slices)] = (total / np.maximum(weight, 1e-12)).astype(np.float16)
    marker.touch()


def _cluster_block(
    block: Block, plan: _Plan, outputs: zarr.Array[Any], keys: zarr.Array[Any], marker: Path
) -> None:
    """Cluster a block with its halo; store the seed names of the instances in its core."""
    start, stop = block.grown(plan.halo, plan.shape)
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    raw = torch.from_numpy(np.asarray(outputs[(slice(None), *region)], dtype=np.float32))[None]
    ndim = plan.ndim
    activations = activate(raw, ndim)
    embedding = embed(raw[:, :ndim], origin=start, spacing=plan.spacing, scale=plan.scale)
    result = find_instances(
        embedding[0].numpy(),
        activations.bandwidth[0].numpy(),
        activations.seed[0, 0].numpy(),
        foreground_threshold=plan.foreground,
        seed_threshold=plan.seed,
        min_object_size=plan.min_object_size,
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

    def run(self, tasks: list[Any], description: str) -> list[Any]:
        self.progress.start(description, total=len(tasks))
        try:
            if not tasks:
                return []
            if self.client is not None:
                from distributed import as_completed  # noqa: PLC0415

                futures = self.client.compute(tasks)
                for _ in as_completed(futures):
                    self.progress.advance()
                return list(self.client.gather(futures))
            names = {task.key for task in tasks}
            progress = self.progress

            def posttask(key: Any, *_: Any) -> None:
                if key in names:
                    progress.advance()

            with Callback(posttask=posttask):
                return list(dask_compute(*tasks, scheduler="threads"))
        finally:
            self.progress.finish()

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
    write: Callable[[da.Array, tuple[float, ...]], str]
    work: Path


def _percentiles(pixels: da.Array, ndim: int) -> tuple[tuple[float, float], ...]:
    """Percentiles 1 and 99.8 per channel, on a regular subsample of a large volume."""
    spatial = pixels.shape[1:]
    step = max(1, math.ceil((math.prod(spatial) / _SUBSAMPLE_VOXELS) ** (1 / ndim)))
    sample = np.asarray(pixels[(slice(None), *([slice(None, None, step)] * ndim))].compute())
    return tuple((float(np.percentile(c, 1.0)), float(np.percentile(c, 99.8))) for c in sample)


def _run_volume(
    job: _Job, config: PredictConfig, base: _Plan, engine: _Engine
) -> tuple[da.Array, int]:
    ndim = base.ndim
    shape = tuple(int(n) for n in job.pixels.shape[1:])
    percentiles = job.percentiles or _percentiles(job.pixels, ndim)
    defaults = _DEFAULTS[ndim]
    window = _per_axis(config.tile_size, defaults["tile"], ndim, "tile-size")
    if any(w % 8 for w in window):
        msg = (
            f"--tile-size must be multiples of 8, as the network downsamples 3 times (got {window})"
        )
        raise InputError(msg)
    window = tuple(min(w, 8 * math.ceil(n / 8)) for w, n in zip(window, shape, strict=True))
    window = tuple(min(w, n) for w, n in zip(window, shape, strict=True))
    overlap = _per_axis(config.overlap, defaults["overlap"], ndim, "overlap")
    overlap = tuple(min(o, w // 2) for o, w in zip(overlap, window, strict=True))
    block = _per_axis(config.block_size, defaults["block"], ndim, "block-size")
    plan = _Plan(
        **{
            **base.__dict__,
            "shape": shape,
            "window": window,
            "overlap": overlap,
            "block": block,
            "low": tuple(p[0] for p in percentiles),
            "high": tuple(p[1] for p in percentiles),
        }
    )
    work = job.work
    state_path = work / "state.json"
    if work.exists() and not config.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    signature = {
        "shape": list(shape),
        "block": list(block),
        "window": list(window),
        "overlap": list(overlap),
        "halo": list(plan.halo),
        "tta": plan.tta,
    }
    if state_path.exists() and json.loads(state_path.read_text()) != signature:
        msg = f"{work} holds an interrupted run with other settings: run again with the same options, or without --resume"
        raise InputError(msg)
    state_path.write_text(json.dumps(signature))
    outputs = zarr.open_array(
        work / "outputs",
        mode="a",
        shape=(2 * ndim + 1, *shape),
        chunks=(2 * ndim + 1, *block),
        dtype="float16",
        zarr_format=3,
    )
    keys = zarr.open_array(
        work / "keys", mode="a", shape=shape, chunks=block, dtype="uint64", zarr_format=3
    )
    done_net, done_cluster = work / "network", work / "clustering"
    done_net.mkdir(exist_ok=True)
    done_cluster.mkdir(exist_ok=True)
    blocks = block_grid(shape, block)
    tiles = tile_grid(shape, window, overlap)

    # Stage 1: network outputs, each window computed once and shared by the blocks it touches.
    tile_tasks: dict[int, Any] = {}

    def tile_task(index: int) -> Any:
        if index not in tile_tasks:
            origin = tiles[index]
            region = tuple(slice(o, o + w) for o, w in zip(origin, window, strict=True))
            tile_tasks[index] = delayed(_tile_outputs, pure=True)(
                job.pixels[(slice(None), *region)], plan
            )
        return tile_tasks[index]

    stage1 = []
    for blk in blocks:
        if (done_net / blk.key).exists():
            continue
        touching = tiles_overlapping(tiles, window, blk.start, blk.stop)
        stage1.append(
            delayed(_assemble)(
                blk,
                [tiles[i] for i in touching],
                [tile_task(i) for i in touching],
                plan,
                outputs,
                done_net / blk.key,
            )
        )
    engine.run(stage1, f"{job.name}: network")

    # Stage 2: clustering per block with its halo.
    stage2 = [
        delayed(_cluster_block)(blk, plan, outputs, keys, done_cluster / blk.key)
        for blk in blocks
        if not (done_cluster / blk.key).exists()
    ]
    engine.run(stage2, f"{job.name}: clustering")

    # Stage 3: number the instances by their seeds' positions.
    names = [np.load(done_cluster / blk.key) for blk in blocks]
    mapping = np.unique(np.concatenate(names)) if names else np.zeros(0, np.uint64)
    labels = da.from_zarr(keys).map_blocks(relabel_keys, mapping, dtype=np.uint32)
    return labels, len(mapping)


# ---------------------------------------------------------------------------------------
# The workflow
# ---------------------------------------------------------------------------------------


def _channels_first(pixels: da.Array, axes: str, ndim: int, channels: int, name: str) -> da.Array:
    axes = axes.upper()
    if "C" in axes:
        pixels = da.moveaxis(pixels, axes.index("C"), 0)
        spatial = axes.replace("C", "")
    else:
        pixels = pixels[None]
        spatial = axes
    spatial_axes = [a for a in spatial if a in "ZYX"]
    if len(spatial_axes) != ndim or pixels.shape[0] != channels or pixels.ndim != ndim + 1:
        msg = (
            f"{name} has axes {axes} and shape {tuple(pixels.shape)} but the model takes {ndim}D "
            f"images with {channels} channel(s): use a model trained on data like this"
        )
        raise InputError(msg)
    return pixels


def _jobs(
    config: PredictConfig, store_in: ProjectStore | None, ndim: int, channels: int
) -> list[_Job]:
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

        def writer(name: str) -> Callable[[da.Array, tuple[float, ...]], str]:
            def write(labels: da.Array, voxel_size: tuple[float, ...]) -> str:
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
        if not into_image and out.exists() and not (config.overwrite or config.resume):
            msg = (
                f"{out} already exists: pass --overwrite to replace it (or --resume to continue it)"
            )
            raise OutputExistsError(msg)
        work = out.with_name(f".{out.name}.embedseg-work")
        if into_image:
            work = source / "labels" / ".embedseg-work"
        jobs.append(
            _Job(
                name,
                _channels_first(volume.array, volume.axes, ndim, channels, str(source)),
                None,
                tuple(volume.voxel_size.get(a, 1.0) for a in "ZYX"[-ndim:]),
                _file_writer(out, into_image, config.overwrite),
                work,
            )
        )
    return jobs


def _file_writer(
    out: Path, into_image: bool, overwrite: bool
) -> Callable[[da.Array, tuple[float, ...]], str]:
    def write(labels: da.Array, voxel_size: tuple[float, ...]) -> str:
        axes = "ZYX"[-labels.ndim :]
        if into_image:
            write_ome_zarr_labels(out, labels, axes=axes, voxel_size=voxel_size, image_group=True)
            return f"{out}/labels/embedseg"
        if out.suffix.lower() == ".zarr":
            write_ome_zarr_labels(out, labels, axes=axes, voxel_size=voxel_size)
            group = zarr.open_group(out, mode="r+")
            group.attrs["embedseg"] = {"complete": True, "time": time.time()}
            return str(out)
        write_labels_tiff(out, np.asarray(labels.compute(), dtype=np.uint32))
        return str(out)

    return write


@contextmanager
def _engine(config: PredictConfig, progress: Progress) -> Iterator[_Engine]:
    engine = _Engine(config, progress)
    try:
        yield engine
    finally:
        engine.close()


def predict(config: PredictConfig, *, progress: Progress | None = None) -> PredictReport:
    """Predict instance labels for every input image or volume.

    Raises
    ------
    InputError
        For a missing model, an input of the wrong dimensionality or channel count, or an
        unreadable input.
    OutputExistsError
        Where an output exists and neither ``overwrite`` nor ``resume`` is set.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    store_in = ProjectStore.open(config.input) if is_project_store(config.input) else None
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
    ndim, channels = int(spec["ndim"]), int(spec["in_channels"])
    halo_default = tuple(max(16, math.ceil(1.25 * e)) for e in data["max_extent"])
    base = _Plan(
        shape=(),
        ndim=ndim,
        window=(),
        overlap=(),
        block=(),
        halo=_per_axis(config.halo, halo_default, ndim, "halo"),
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
    jobs = _jobs(config, store_in, ndim, channels)
    outputs: list[str] = []
    objects = 0
    calls_before = len(_NETWORK_CALLS)
    with _engine(config, progress) as engine:
        for job in jobs:
            labels, count = _run_volume(job, config, base, engine)
            voxel_size = job.voxel_size or tuple(data["voxel_size"])
            outputs.append(job.write(labels, voxel_size))
            objects += count
            kept = Path(outputs[-1]) / "embedseg_outputs"
            if config.keep_outputs and kept.parent.suffix == ".zarr" and kept.parent.is_dir():
                shutil.rmtree(kept, ignore_errors=True)
                (job.work / "outputs").rename(kept)
            shutil.rmtree(job.work, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info("predicted %d image(s), %d objects in %.1f s", len(jobs), objects, seconds)
    local = config.workers is None and config.scheduler is None
    network = _busy_seconds(_NETWORK_CALLS[calls_before:]) if local else None
    return PredictReport(len(jobs), objects, outputs, seconds, network)


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals (calls that overlap count once)."""
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total
