"""Shared fixtures: tiny synthetic TIFF datasets and the location of the real data."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMBEDSEG_TEST_DATA", ROOT.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """Path of a real dataset in ../shared/data, skipping the test where it is absent."""
    path = DATA / name
    if not path.is_dir():
        pytest.skip(
            f"real data {path} is absent (set EMBEDSEG_TEST_DATA to the shared data folder)"
        )
    return path


def disks(
    shape: tuple[int, ...], n: int, rng: np.random.Generator, radius: tuple[int, int] = (3, 6)
) -> tuple[NDArray[np.uint16], NDArray[np.uint16]]:
    """A noisy image and the labels of ``n`` non-overlapping disks (2D) or balls (3D)."""
    labels = np.zeros(shape, dtype=np.uint16)
    grid = np.indices(shape)
    placed = 0
    for _ in range(50 * n):
        if placed == n:
            break
        r = rng.integers(*radius)
        centre = [rng.integers(0, s) for s in shape]
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= r * r
        if inside.any() and not labels[inside].any():
            placed += 1
            labels[inside] = placed
    image = (rng.normal(100, 10, shape) + 200 * (labels > 0)).clip(0, 65535).astype(np.uint16)
    return image, labels


def write_pair(
    folder: Path,
    name: str,
    image: NDArray[np.generic],
    mask: NDArray[np.generic],
    **tiff_kwargs: object,
) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "images" / f"{name}.tif", image, **tiff_kwargs)  # type: ignore[arg-type]
    tifffile.imwrite(folder / "masks" / f"{name}.tif", mask, **tiff_kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _package_logger_restored() -> Iterator[None]:
    """Undo what a CLI call does to the package logger (``-q`` level, own handler, no propagation).

    Without it a test that reads ``caplog`` would depend on which CLI tests ran before it.
    """
    logger = logging.getLogger("embedseg_cli")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def make_dataset(tmp_path: Path, rng: np.random.Generator) -> Callable[..., Path]:
    """Write a small folder of 2D (or 3D) TIFF pairs and return its path."""

    def make(
        n_images: int = 4,
        shape: tuple[int, ...] = (48, 48),
        n_objects: int = 5,
        splits: tuple[str, ...] | None = None,
        name: str = "src",
    ) -> Path:
        source = tmp_path / name
        for i in range(n_images):
            image, mask = disks(shape, n_objects, rng)
            folder = source if splits is None else source / splits[i % len(splits)]
            write_pair(folder, f"img{i:02d}", image, mask)
        return source

    return make
