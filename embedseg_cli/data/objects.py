"""Per-object measurements of a label image, block by block.

Each block of a (possibly larger than memory) label image is measured on its own
(:func:`measure_block`: voxel count, coordinate sums, bounding box and, with an intensity
image, the intensity sum of every label in it) and the partial results are merged
(:func:`merge`), so the table of a huge volume needs one block in memory at a time. All
work is vectorised (``bincount`` and ``find_objects``), never a loop over voxels.

:func:`object_table` is the one per-object table of the project (``predict --table`` and
``export labels --format csv``), with one set of column names:

- ``label``, ``voxels`` (pixels in 2D);
- ``centroid_z``, ``centroid_y``, ``centroid_x`` (mean voxel position, in voxels; ``z`` in 3D);
- ``bbox_start_*`` and ``bbox_stop_*``: the bounding box as Python slices, start inclusive
  and stop exclusive (``labels[start:stop]`` holds the object);
- where known, ``seed_*`` (the position of the object's seed) and ``seed_score``;
- where an intensity image is given, ``mean_intensity`` (one channel) or
  ``mean_intensity_<c>`` (one column per channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["ObjectStats", "measure_block", "merge", "object_table"]


@dataclass(frozen=True)
class ObjectStats:
    """Measurements of labelled objects, one row per label (sorted by label)."""

    labels: NDArray[np.uint64]
    voxels: NDArray[np.int64]
    coordinate_sums: NDArray[np.float64]
    """Sum of each object's voxel coordinates, (N, ndim)."""
    bbox_start: NDArray[np.int64]
    """First voxel of each object's bounding box, (N, ndim)."""
    bbox_stop: NDArray[np.int64]
    """One past the last voxel of each object's bounding box, (N, ndim)."""
    intensity_sums: NDArray[np.float64] | None = None

    @property
    def centroids(self) -> NDArray[np.float64]:
        """Mean voxel position of each object, (N, ndim)."""
        return self.coordinate_sums / np.maximum(self.voxels, 1)[:, None]

    @property
    def mean_intensities(self) -> NDArray[np.float64] | None:
        """Mean intensity of each object, where intensities were measured."""
        if self.intensity_sums is None:
            return None
        return self.intensity_sums / np.maximum(self.voxels, 1)

    @classmethod
    def empty(cls, ndim: int, *, intensity: bool = False) -> ObjectStats:
        """No objects."""
        return cls(
            np.zeros(0, np.uint64),
            np.zeros(0, np.int64),
            np.zeros((0, ndim)),
            np.zeros((0, ndim), np.int64),
            np.zeros((0, ndim), np.int64),
            np.zeros(0) if intensity else None,
        )


def measure_block(
    labels: NDArray[np.integer[Any]],
    offset: Sequence[int] | None = None,
    intensity: NDArray[Any] | None = None,
) -> ObjectStats:
    """Measure every label (> 0) of a block whose first voxel is at ``offset``.

    Examples
    --------
    >>> block = np.array([[0, 2, 2], [0, 0, 2]], np.uint32)
    >>> stats = measure_block(block, offset=(10, 20))
    >>> stats.labels.tolist(), stats.voxels.tolist(), stats.bbox_start.tolist()
    ([2], [3], [[10, 21]])
    """
    ndim = labels.ndim
    offset = tuple(offset) if offset is not None else (0,) * ndim
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    keep = ids > 0
    if not keep.any():
        return ObjectStats.empty(ndim, intensity=intensity is not None)
    n = len(ids)
    voxels = np.bincount(inverse.ravel(), minlength=n)
    grids: tuple[NDArray[np.intp], ...] = tuple(np.indices(labels.shape, sparse=True))
    sums = np.stack(
        [
            np.bincount(
                inverse.ravel(),
                weights=np.broadcast_to(grid + start, labels.shape).ravel().astype(np.float64),
                minlength=n,
            )
            for grid, start in zip(grids, offset, strict=True)
        ],
        axis=1,
    )
    # find_objects numbers from 1: shift so that index 0 (the smallest id) is label 1.
    boxes = ndimage.find_objects(inverse + 1, max_label=n)
    starts = np.array([[s.start + o for s, o in zip(box, offset, strict=True)] for box in boxes])
    stops = np.array([[s.stop + o for s, o in zip(box, offset, strict=True)] for box in boxes])
    intensities = None
    if intensity is not None:
        intensities = np.bincount(
            inverse.ravel(), weights=intensity.astype(np.float64).ravel(), minlength=n
        )[keep]
    return ObjectStats(
        ids[keep].astype(np.uint64),
        voxels[keep].astype(np.int64),
        sums[keep],
        starts[keep].astype(np.int64),
        stops[keep].astype(np.int64),
        intensities,
    )


def merge(parts: Sequence[ObjectStats], ndim: int) -> ObjectStats:
    """Combine the measurements of blocks into one row per label.

    Examples
    --------
    >>> a = measure_block(np.array([[1, 1]]), offset=(0, 0))
    >>> b = measure_block(np.array([[1, 3]]), offset=(0, 2))
    >>> m = merge([a, b], 2)
    >>> m.labels.tolist(), m.voxels.tolist(), m.bbox_stop.tolist()
    ([1, 3], [3, 1], [[1, 3], [1, 4]])
    """
    parts = [p for p in parts if len(p.labels)]
    with_intensity = bool(parts) and all(p.intensity_sums is not None for p in parts)
    if not parts:
        return ObjectStats.empty(ndim)
    labels = np.concatenate([p.labels for p in parts])
    ids, index = np.unique(labels, return_inverse=True)
    n = len(ids)
    voxels = np.zeros(n, np.int64)
    np.add.at(voxels, index, np.concatenate([p.voxels for p in parts]))
    sums = np.zeros((n, ndim))
    np.add.at(sums, index, np.concatenate([p.coordinate_sums for p in parts]))
    starts = np.full((n, ndim), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(starts, index, np.concatenate([p.bbox_start for p in parts]))
    stops = np.full((n, ndim), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(stops, index, np.concatenate([p.bbox_stop for p in parts]))
    intensities = None
    if with_intensity:
        intensities = np.zeros(n)
        np.add.at(
            intensities,
            index,
            np.concatenate([p.intensity_sums for p in parts if p.intensity_sums is not None]),
        )
    return ObjectStats(ids, voxels, sums, starts, stops, intensities)


def object_table(
    stats: ObjectStats,
    *,
    seeds: NDArray[np.float64] | None = None,
    seed_scores: NDArray[Any] | None = None,
    mean_intensities: Sequence[NDArray[np.float64]] = (),
) -> dict[str, NDArray[Any]]:
    """The per-object table: one column per measure, one row per object (see the module).

    Parameters
    ----------
    stats : ObjectStats
        The objects' measurements.
    seeds : ndarray of shape (N, ndim), optional
        Each object's seed position, in voxels.
    seed_scores : ndarray of shape (N,), optional
        Each object's seed score.
    mean_intensities : sequence of ndarray of shape (N,)
        Mean intensity per channel.

    Examples
    --------
    >>> stats = measure_block(np.array([[0, 4, 4], [0, 0, 4]]))
    >>> table = object_table(stats)
    >>> list(table)
    ['label', 'voxels', 'centroid_y', 'centroid_x', 'bbox_start_y', 'bbox_start_x', \
'bbox_stop_y', 'bbox_stop_x']
    >>> [table[k].tolist() for k in ("label", "voxels", "bbox_start_x", "bbox_stop_x")]
    [[4], [3], [1], [3]]
    """
    ndim = stats.bbox_start.shape[1]
    axes = "zyx"[-ndim:]
    columns: dict[str, NDArray[Any]] = {"label": stats.labels, "voxels": stats.voxels}
    per_axis = [("centroid", stats.centroids), ("bbox_start", stats.bbox_start)]
    per_axis.append(("bbox_stop", stats.bbox_stop))
    if seeds is not None:
        per_axis.append(("seed", seeds))
    for name, values in per_axis:
        for i, axis in enumerate(axes):
            columns[f"{name}_{axis}"] = values[:, i]
    if seed_scores is not None:
        columns["seed_score"] = np.asarray(seed_scores)
    for c, means in enumerate(mean_intensities):
        columns["mean_intensity" if len(mean_intensities) == 1 else f"mean_intensity_{c}"] = means
    return columns
