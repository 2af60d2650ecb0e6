"""Where ``predict``'s tasks run: dask's threads, a local cluster or a given scheduler.

Holds what lives once per process: the model (loaded once per worker, not once per
block), the clock of the network's calls, and glibc's memory settings, which hand the
memory freed by a task back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from dask.base import compute as dask_compute
from dask.callbacks import Callback

from embedseg_cli.config import PredictConfig
from embedseg_cli.io.models import load_network, read_model, resolve_device
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.progress import Progress

__all__ = [
    "NETWORK_CALLS",
    "Engine",
    "ModelKey",
    "bound_memory",
    "busy_seconds",
    "cache_model",
    "engine",
    "loaded_model",
    "record_network_call",
    "release_memory",
]


@dataclass(frozen=True)
class ModelKey:
    """What a worker needs to load the model (once per process)."""

    path: str
    run: str | None
    tag: str
    device: str


_MODELS: dict[ModelKey, tuple[BranchedERFNet, torch.device]] = {}
_MODELS_LOCK = threading.Lock()
NETWORK_CALLS: list[tuple[float, float]] = []
"""When the network ran in this process: (start, end) of every call, to measure its share."""


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


def bound_memory() -> None:
    """One malloc arena per process: the task threads' freed memory is reused, not kept."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, 1)


def release_memory() -> None:
    """Give memory freed by a task back to the system (glibc keeps it otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def loaded_model(key: ModelKey) -> tuple[BranchedERFNet, torch.device]:
    """The network of ``key`` and its device, loaded at the first call in this process."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            bound_memory()
            device = resolve_device(key.device)
            trained = read_model(key.path, run=key.run, checkpoint=key.tag)
            _MODELS[key] = (load_network(trained, device), device)
        return _MODELS[key]


def cache_model(key: ModelKey, network: BranchedERFNet, device: torch.device) -> None:
    """Keep a network loaded in this process for the tasks that ask :func:`loaded_model` for it."""
    with _MODELS_LOCK:
        _MODELS[key] = (network, device)


def record_network_call(started: float, stopped: float) -> None:
    """Record when one network call ran (see :data:`NETWORK_CALLS`)."""
    with _MODELS_LOCK:
        NETWORK_CALLS.append((started, stopped))


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals (calls that overlap count once).

    Examples
    --------
    >>> busy_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)])
    4.0
    """
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


class Engine:
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

            # A pool of this run's own, shut down with it: where the progress stops the run
            # (CancelledError) or a task fails, the tasks already running finish before the
            # error leaves, so none of them writes into the work folder afterwards.
            with ThreadPoolExecutor(self.parallel) as pool, Callback(posttask=posttask):
                return list(dask_compute(*tasks, scheduler="threads", pool=pool))
        finally:
            self.progress.finish()

    @property
    def parallel(self) -> int:
        """Tasks that run at once in one process (threads of the threaded scheduler)."""
        return 1 if self.client is not None else min(4, os.cpu_count() or 1)

    def close(self) -> None:
        """Close the client and the local cluster, where there are any."""
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


@contextmanager
def engine(config: PredictConfig, progress: Progress) -> Iterator[Engine]:
    """An :class:`Engine` for ``config``, closed (with its cluster) on leaving."""
    running = Engine(config, progress)
    try:
        yield running
    finally:
        running.close()
