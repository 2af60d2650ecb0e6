"""What ``predict`` will do with a volume: the model's settings, windows, blocks and halo.

The window size is chosen from a memory budget when not given (the largest window whose
network calls, in every task running at once, fit it), and bounded by the block, so the
memory of a run is set by the block size whatever the volume's shape.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from embedseg_cli.config import PredictConfig
from embedseg_cli.data.properties import per_axis
from embedseg_cli.errors import InputError
from embedseg_cli.io.models import load_network, read_model, resolve_device
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.predict.engine import ModelKey, cache_model
from embedseg_cli.records import BuiltinOrigin, DataProperties

__all__ = [
    "DEFAULT_MODEL",
    "NETWORK_BYTES_PER_VOXEL",
    "Geometry",
    "ModelData",
    "Plan",
    "base_plan",
    "cgroup_memory_available",
    "geometry",
    "memory_budget",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "dsb2018-fluo"
"""The built-in model used when no ``--model`` is given (2D single-channel nuclei)."""

_DEFAULTS: dict[int, dict[str, tuple[int, ...]]] = {
    2: {"tile": (512, 512), "overlap": (64, 64), "block": (1024, 1024)},
    3: {"tile": (64, 160, 160), "overlap": (16, 32, 32), "block": (64, 256, 256)},
}

# Bytes of memory per voxel of one image in the network's forward pass (measured on CPU,
# float32, batch 1-16); the window size is chosen from these when not given.
NETWORK_BYTES_PER_VOXEL = {2: 256, 3: 160}
_MAX_AUTO_WINDOW = {2: (1024, 1024), 3: (96, 256, 256)}
_MIN_AUTO_WINDOW = {2: (128, 128), 3: (32, 64, 64)}


@dataclass(frozen=True)
class Plan:
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
    model: ModelKey
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
        """What ``embedseg recluster`` needs to cluster stored outputs again."""
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


@dataclass(frozen=True)
class ModelData:
    """What predict needs to know of the model beyond its plan."""

    properties: DataProperties
    """The properties of its training data."""
    in_channels: int
    """Input channels the network expects."""
    name: str
    """The model, for messages."""
    builtin: bool
    """Whether it is a built-in model (``embedseg models``)."""


def base_plan(config: PredictConfig, store_in: ProjectStore | None) -> tuple[Plan, ModelData]:
    """Load the model once in this process.

    Returns the model-dependent part of the plan and what the model knows of its data.
    """
    model_path = config.model or (str(config.input) if store_in is not None else None)
    if model_path is None:
        model_path = DEFAULT_MODEL
        logger.info("no --model given: using the built-in model %s", DEFAULT_MODEL)
    trained = read_model(model_path, run=config.run, checkpoint=config.checkpoint)
    attrs = trained.attrs
    device = resolve_device(config.device)
    path = model_path if not Path(model_path).exists() else str(Path(model_path).absolute())
    key = ModelKey(path, attrs.get("run"), config.checkpoint, config.device)
    # Loaded here, so that a bad checkpoint fails before any work; threads of this process
    # reuse it, worker processes load their own once.
    cache_model(key, load_network(trained, device), device)
    spec, stored, data = attrs["model"], attrs["thresholds"], attrs["data"]
    ndim = int(spec["ndim"])
    halo_default = tuple(max(16, math.ceil(1.25 * e)) for e in data["max_extent"])
    base = Plan(
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
    model = ModelData(
        properties=trained.record.data,
        in_channels=int(spec["in_channels"]),
        name=trained.origin,
        builtin=isinstance(trained.provenance, BuiltinOrigin),
    )
    return base, model


# A cgroup v1 memory limit at or above this is the kernel's "no limit" (about 2**63).
_NO_LIMIT = 2**60


def _read_int(path: Path) -> int | None:
    """The integer in a cgroup file, ``None`` where it is absent, unreadable or ``max``."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(stat: Path, key: str) -> int:
    """Page cache the kernel may reclaim first, from a cgroup's ``memory.stat``."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def cgroup_memory_available(root: Path) -> int | None:
    """Bytes a process may still allocate under the cgroup memory limit at ``root``.

    ``root`` is the cgroup file system's mount point (``/sys/fs/cgroup``), read as cgroup
    v2 (``memory.max``, ``memory.current``) or else v1 (``memory/memory.limit_in_bytes``,
    ``memory/memory.usage_in_bytes``). The usage leaves out inactive page cache, which the
    kernel reclaims before it runs out of memory, as container runtimes count it. ``None``
    where there is no limit (``max``, the v1 kernel's ~2**63, no such files).
    """
    for limit_file, usage_file, stat_file, key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        if not (root / limit_file).is_file():
            continue
        limit = _read_int(root / limit_file)
        if limit is None or limit >= _NO_LIMIT:
            return None
        usage = _read_int(root / usage_file) or 0
        usage -= min(usage, _inactive_file(root / stat_file, key))
        return max(0, limit - usage)
    return None


def memory_budget(device: torch.device, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes the network may use: half the free GPU memory, else a quarter of free RAM (<= 4 GB).

    Free RAM is what the system can give without swapping, or what the cgroup memory limit
    (a container's, a batch job's) leaves, whichever is smaller.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    available = int(psutil.virtual_memory().available)
    limited = cgroup_memory_available(cgroup)
    if limited is not None:
        available = min(available, limited)
    return int(min(4 * 10**9, available // 4))


@dataclass(frozen=True)
class Geometry:
    """How a volume is cut: windows for the network, blocks for the tasks."""

    window: tuple[int, ...]
    overlap: tuple[int, ...]
    block: tuple[int, ...]
    batch_size: int | None
    windows_per_task: int
    budget: int


def geometry(
    shape: tuple[int, ...],
    config: PredictConfig,
    ndim: int,
    device: torch.device,
    parallel: int,
    stored_window: tuple[int, ...] | None = None,
) -> Geometry:
    """Window, overlap, block and batch for a volume: as given, else from the memory budget."""
    defaults = _DEFAULTS[ndim]
    budget = config.memory_budget or memory_budget(device)
    per_window = 16 if config.tta and ndim == 3 else 8 if config.tta else 1
    images = config.batch_size or per_window
    bytes_per_voxel = NETWORK_BYTES_PER_VOXEL[ndim]
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
    return Geometry(window, overlap, block, config.batch_size, windows_per_task, budget)
