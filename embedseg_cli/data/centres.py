"""Per-object measurements and centres (medoid, approximate medoid, centroid) of label images.

Every function works on 2D and 3D label images alike. Centres are computed on the whole
object, in physical units where voxels are anisotropic, and returned in pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.distance import cdist

__all__ = [
    "ObjectTable",
    "approximate_medoid_index",
    "mean_distances",
    "measure_objects",
    "medoid_index",
]

CentreName = Literal["medoid", "approximate-medoid", "centroid"]

# Rows of the distance matrix computed at once: bounds the extra memory of the medoid to
# _BLOCK_ROWS x n float64 values (4 MB for an 11,000-pixel object).
_BLOCK_ROWS = 48


def mean_distances(
    candidates: NDArray[np.float64], points: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Mean Euclidean distance from each candidate to all points, in bounded memory.

    Parameters
    ----------
    candidates : ndarray of shape (k, ndim)
        Positions whose mean distance is wanted.
    points : ndarray of shape (n, ndim)
        The positions the distances are measured to.

    Returns
    -------
    ndarray of shape (k,)
        ``mean_j |candidates[i] - points[j]|`` for each ``i``.

    Examples
    --------
    >>> pts = np.array([[0.0, 0.0], [0.0, 2.0]])
    >>> mean_distances(pts, pts).tolist()
    [1.0, 1.0]
    """
    out = np.empty(len(candidates), dtype=np.float64)
    for start in range(0, len(candidates), _BLOCK_ROWS):
        block = cdist(candidates[start : start + _BLOCK_ROWS], points)
        out[start : start + _BLOCK_ROWS] = block.mean(axis=1)
    return out


def medoid_index(
    points: NDArray[np.float64],
    *,
    exact_max_points: int = 512,
    sample_size: int = 256,
    n_candidates: int = 16,
    seed: int = 0,
) -> int:
    """Index of the medoid of a point set: the point with the smallest mean distance to all.

    Up to ``exact_max_points`` points the medoid is exact. For larger sets the mean distance
    of every point is first estimated against a random sample of ``sample_size`` points, and
    the ``n_candidates`` best points and the ``n_candidates`` nearest neighbours of the best
    of them are then evaluated exactly. Time and memory are linear
    in the number of points (the exact medoid is quadratic).

    Parameters
    ----------
    points : ndarray of shape (n, ndim)
        Point positions, in physical units.
    exact_max_points : int
        Largest set whose medoid is computed exactly.
    sample_size : int
        Size of the random sample that estimates mean distances of large sets.
    n_candidates : int
        Number of best-estimated points whose mean distance is computed exactly.
    seed : int
        Seed of the sample, so that the result is reproducible.

    Returns
    -------
    int
        The index of the medoid in ``points``.

    Examples
    --------
    >>> pts = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 10.0]])
    >>> medoid_index(pts)
    1
    """
    n = len(points)
    if n == 0:
        msg = "the medoid of an empty point set is undefined"
        raise ValueError(msg)
    if n <= exact_max_points:
        return int(np.argmin(mean_distances(points, points)))
    rng = np.random.default_rng(seed)
    sample = points[rng.choice(n, size=sample_size, replace=False)]
    estimate = mean_distances(points, sample)
    candidates = np.argpartition(estimate, n_candidates)[:n_candidates]
    best = candidates[np.argmin(mean_distances(points[candidates], points))]
    # The sampled estimate is noisy but its error is smooth in space: the true medoid lies
    # next to the best candidate, so its neighbours are evaluated exactly as well.
    near = np.argpartition(((points - points[best]) ** 2).sum(axis=1), n_candidates)
    near = near[: n_candidates + 1]
    return int(near[np.argmin(mean_distances(points[near], points))])


def approximate_medoid_index(points: NDArray[np.float64]) -> int:
    """Index of the point closest to the per-axis median of a point set.

    Examples
    --------
    >>> pts = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [5.0, 9.0]])
    >>> approximate_medoid_index(pts)
    1
    """
    median = np.median(points, axis=0)
    return int(np.argmin(((points - median) ** 2).sum(axis=1)))


@dataclass(frozen=True)
class ObjectTable:
    """Measurements of the objects of one label image, one row per object.

    Attributes
    ----------
    labels : ndarray of shape (n,)
        The label value of each object, increasing.
    sizes : ndarray of shape (n,)
        Number of pixels of each object.
    bbox_start, bbox_stop : ndarray of shape (n, ndim)
        Bounding box of each object, ``stop`` exclusive.
    centres : ndarray of shape (n, ndim)
        Centre of each object in pixel coordinates (integers for the medoids).
    """

    labels: NDArray[np.uint32]
    sizes: NDArray[np.int64]
    bbox_start: NDArray[np.int64]
    bbox_stop: NDArray[np.int64]
    centres: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def extents(self) -> NDArray[np.int64]:
        """Bounding-box extent of each object along each axis, in pixels."""
        return self.bbox_stop - self.bbox_start


def measure_objects(
    labels: NDArray[np.integer],
    *,
    centre: CentreName = "medoid",
    spacing: tuple[float, ...] | None = None,
) -> ObjectTable:
    """Measure size, bounding box and centre of every object of a label image.

    One pass over the image finds the bounding boxes; each object is then measured inside
    its own box, so the work is linear in the image size plus the object sizes.

    Parameters
    ----------
    labels : ndarray of shape (Y, X) or (Z, Y, X)
        Instance labels, 0 for background.
    centre : {"medoid", "approximate-medoid", "centroid"}
        How each object's centre is chosen.
    spacing : tuple of float, optional
        Voxel size along each axis; distances are measured in these units. Default: 1.

    Returns
    -------
    ObjectTable
        One row per label present in the image.

    Examples
    --------
    >>> labels = np.zeros((5, 7), dtype=np.uint32)
    >>> labels[1:4, 1:4] = 3
    >>> table = measure_objects(labels)
    >>> table.labels.tolist(), table.sizes.tolist(), table.centres.tolist()
    ([3], [9], [[2.0, 2.0]])
    """
    ndim = labels.ndim
    scale = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (ndim,):
        msg = f"spacing needs one value per axis of the {ndim}D labels (got {spacing})"
        raise ValueError(msg)
    found = ndimage.find_objects(labels)
    present = [(value + 1, box) for value, box in enumerate(found) if box is not None]
    n = len(present)
    table = ObjectTable(
        labels=np.empty(n, dtype=np.uint32),
        sizes=np.empty(n, dtype=np.int64),
        bbox_start=np.empty((n, ndim), dtype=np.int64),
        bbox_stop=np.empty((n, ndim), dtype=np.int64),
        centres=np.empty((n, ndim), dtype=np.float64),
    )
    for row, (value, box) in enumerate(present):
        start = np.array([s.start for s in box], dtype=np.int64)
        pixels = np.stack(np.nonzero(labels[box] == value), axis=1) + start
        table.labels[row] = value
        table.sizes[row] = len(pixels)
        table.bbox_start[row] = start
        table.bbox_stop[row] = [s.stop for s in box]
        table.centres[row] = _centre(pixels, scale, centre)
    return table


def _centre(
    pixels: NDArray[np.int64], scale: NDArray[np.float64], centre: CentreName
) -> NDArray[np.float64]:
    if centre == "centroid":
        return np.asarray(pixels.mean(axis=0), dtype=np.float64)
    physical = pixels * scale
    if centre == "medoid":
        return np.asarray(pixels[medoid_index(physical)], dtype=np.float64)
    return np.asarray(pixels[approximate_medoid_index(physical)], dtype=np.float64)
