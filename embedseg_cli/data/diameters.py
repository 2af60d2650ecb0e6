"""Object size as one number: the median equivalent diameter, and the scale that matches it.

An object's equivalent diameter is the diameter of the circle (2D) or ball (3D) of the same
area or volume, in pixels along x; in 3D a z voxel counts as ``anisotropy`` x pixels, so a
ball of the same physical shape has the same diameter on any z spacing. The median over
the objects describes a data set's object size robustly (a few merged or broken objects do
not move it), as Cellpose's ``diameter`` does.

``prepare`` stores the median and quartiles of the training masks' diameters; ``predict``
measures the median of an input (on a first pass of the network) and resamples the input
by :func:`object_size_scale` so that its objects have a size the model learned: inputs
whose median lies between the training quartiles are left as they are (half the training
objects were of such sizes), others are brought to the nearer quartile. On the
dsb2018-fluo test images that scored higher than resampling everything to the median
(docs/benchmarks.md, "Object size").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.records import DataProperties

__all__ = [
    "SCALE_LIMITS",
    "SCALE_TOLERANCE",
    "ScaleChoice",
    "TrainingSize",
    "comfortable",
    "comfortable_range",
    "diameter_statistics",
    "equivalent_diameters",
    "interior_diameters",
    "object_size_scale",
    "training_size",
]

SCALE_TOLERANCE = 0.15
"""Objects within this fraction of the training median are never resampled: resampling
costs time and blurs a little, for nothing where the sizes nearly match."""

SCALE_LIMITS = (0.25, 4.0)
"""The scales an input may be resampled by; beyond them an estimate is more likely wrong
than the objects are 4 times smaller or larger than the training data's."""


def equivalent_diameters(
    sizes: NDArray[np.integer[Any]] | NDArray[np.floating[Any]],
    ndim: int,
    anisotropy: float = 1.0,
) -> NDArray[np.float64]:
    """Diameter of the circle (2D) or ball (3D) of each object's area or volume, in x pixels.

    Parameters
    ----------
    sizes : ndarray
        Pixels (2D) or voxels (3D) of each object.
    ndim : int
        2 or 3.
    anisotropy : float
        Ratio of the z to the x voxel size (3D only): a voxel holds this many x-pixel cubes.

    Examples
    --------
    >>> equivalent_diameters(np.array([314, 1257]), 2).round(1).tolist()
    [20.0, 40.0]
    >>> equivalent_diameters(np.array([2094]), 3, anisotropy=2.0).round(1).tolist()
    [20.0]
    """
    values = np.asarray(sizes, dtype=np.float64)
    if ndim == 2:
        return np.asarray(np.sqrt(4.0 * values / math.pi), dtype=np.float64)
    return np.asarray(np.cbrt(6.0 * values * anisotropy / math.pi), dtype=np.float64)


def diameter_statistics(
    sizes: NDArray[np.integer[Any]] | NDArray[np.floating[Any]],
    ndim: int,
    anisotropy: float = 1.0,
) -> tuple[float, tuple[float, float]] | None:
    """Median and quartiles (25th, 75th percentile) of the equivalent diameters of ``sizes``.

    None where there are no objects.

    Examples
    --------
    >>> diameter_statistics(np.array([314, 314, 1257]), 2)
    (19.995, (19.995, 30.0))
    >>> diameter_statistics(np.array([], np.int64), 2) is None
    True
    """
    if len(sizes) == 0:
        return None
    low, median, high = np.percentile(equivalent_diameters(sizes, ndim, anisotropy), [25, 50, 75])
    return round(float(median), 3), (round(float(low), 3), round(float(high), 3))


@dataclass(frozen=True)
class TrainingSize:
    """The object size of a model's training data, in pixels along x of its grid."""

    median: float
    """Median equivalent diameter of the objects."""
    quartiles: tuple[float, float] | None = None
    """25th and 75th percentiles of the diameters; None where not measured."""
    derived: bool = False
    """Whether ``median`` was derived from the mean extents (data prepared before the
    median diameter was measured)."""


def training_size(props: DataProperties) -> TrainingSize | None:
    """The training data's object size, as ``prepare`` measured it.

    Stores and checkpoints written before ``median_diameter`` was measured have none: it is
    then derived from the mean bounding-box extents, their geometric mean with z counted at
    the anisotropy. That is an approximation (bounding boxes of elongated objects are wider
    than their equivalent diameter, and a mean is larger than a median where sizes are
    skewed: 13% larger on the dsb2018-fluo training masks); preparing the store again
    measures the median. None where the data had no objects.

    Examples
    --------
    >>> props = DataProperties(
    ...     ndim=2, channels=1, voxel_size=(1.0, 1.0), anisotropy=1.0, n_objects=2,
    ...     min_object_size=300, mean_object_size=300.0, max_object_size=300,
    ...     mean_extent=(16.0, 25.0), std_extent=(2.0, 2.0), max_extent=(20, 30),
    ...     foreground_weight=10.0, crop_size=(64, 64), centre="medoid")
    >>> training_size(props)
    TrainingSize(median=20.0, quartiles=None, derived=True)
    >>> training_size(props.model_copy(update={"median_diameter": 19.5}))
    TrainingSize(median=19.5, quartiles=None, derived=False)
    """
    if props.median_diameter is not None:
        return TrainingSize(props.median_diameter, props.diameter_quartiles)
    extents = list(props.mean_extent)
    if props.ndim == 3:
        extents[0] *= props.anisotropy
    if props.n_objects == 0 or min(extents, default=0.0) <= 0:
        return None
    return TrainingSize(round(float(np.prod(extents) ** (1 / len(extents))), 3), derived=True)


def interior_diameters(
    labels: NDArray[np.integer[Any]], anisotropy: float = 1.0
) -> NDArray[np.float64]:
    """Equivalent diameters of the objects of ``labels`` that do not touch its border.

    An object cut by the border of a window is smaller than it is: its diameter would
    pull a median down. Where every object touches the border (a window smaller than its
    objects), all are measured rather than none.

    Examples
    --------
    >>> labels = np.zeros((8, 8), np.uint32)
    >>> labels[2:4, 2:4] = 1   # 4 pixels, inside
    >>> labels[5:8, 5:8] = 2   # touches the border
    >>> interior_diameters(labels).round(2).tolist()
    [2.26]
    """
    counts = np.bincount(np.asarray(labels, dtype=np.intp).ravel())
    present = np.flatnonzero(counts)
    present = present[present > 0]
    faces = [
        np.take(labels, index, axis=axis)
        for axis in range(labels.ndim)
        for index in (0, labels.shape[axis] - 1)
    ]
    touching = np.unique(np.concatenate([f.ravel() for f in faces]))
    inside = np.setdiff1d(present, touching)
    chosen = inside if len(inside) else present
    return equivalent_diameters(counts[chosen], labels.ndim, anisotropy)


def comfortable_range(
    trained: TrainingSize, tolerance: float = SCALE_TOLERANCE
) -> tuple[float, float]:
    """The object diameters left at their size for a model of ``trained``.

    Those between the training diameters' quartiles (half the training objects were of
    such sizes) or within ``tolerance`` of the training median, whichever is wider.

    Examples
    --------
    >>> comfortable_range(TrainingSize(20.0, (12.0, 28.0)))
    (12.0, 28.0)
    >>> [round(d, 2) for d in comfortable_range(TrainingSize(20.0))]  # no quartiles: 15%
    [17.39, 23.0]
    """
    low, high = trained.median / (1 + tolerance), trained.median * (1 + tolerance)
    if trained.quartiles is not None:
        low, high = min(low, trained.quartiles[0]), max(high, trained.quartiles[1])
    return low, high


def comfortable(diameter: float, trained: TrainingSize, tolerance: float = SCALE_TOLERANCE) -> bool:
    """Whether objects of ``diameter`` pixels are left at their size (:func:`comfortable_range`).

    Examples
    --------
    >>> size = TrainingSize(20.0, (12.0, 28.0))
    >>> comfortable(13.0, size), comfortable(11.0, size), comfortable(30.0, size)
    (True, False, False)
    """
    low, high = comfortable_range(trained, tolerance)
    return low <= diameter <= high


@dataclass(frozen=True)
class ScaleChoice:
    """The scale an input is resampled by so that its objects have a size the model learned."""

    scale: float
    """Model pixels per input pixel beyond the voxel size (1: not resampled)."""
    wanted: float
    """The scale that brings the objects into the :func:`comfortable_range`, before the
    limits."""
    clamped: bool
    """Whether ``wanted`` was beyond :data:`SCALE_LIMITS`."""


def object_size_scale(
    diameter: float,
    trained: TrainingSize,
    *,
    tolerance: float = SCALE_TOLERANCE,
    limits: Sequence[float] = SCALE_LIMITS,
) -> ScaleChoice:
    """The least scale that brings objects of ``diameter`` pixels to a size the model learned.

    1 where the objects are :func:`comfortable` at their size; else the scale that brings
    them to the nearer end of the :func:`comfortable_range` (resampling costs accuracy, so
    the less of it the better: on the dsb2018-fluo test images, to the nearer quartile
    scored higher than to the median at 1x and 0.5x, and a little lower at 2x), bounded by
    ``limits``.

    Examples
    --------
    >>> size = TrainingSize(20.0, (12.0, 28.0))
    >>> object_size_scale(56.0, size).scale, object_size_scale(6.0, size).scale
    (0.5, 2.0)
    >>> object_size_scale(13.0, size).scale  # between the quartiles: not resampled
    1.0
    >>> object_size_scale(40.0, TrainingSize(20.0)).scale  # no quartiles: to within 15%
    0.575
    >>> choice = object_size_scale(280.0, size)
    >>> choice.scale, choice.wanted, choice.clamped
    (0.25, 0.1, True)
    """
    if comfortable(diameter, trained, tolerance):
        return ScaleChoice(1.0, 1.0, clamped=False)
    low, high = comfortable_range(trained, tolerance)
    wanted = (low if diameter < low else high) / diameter
    smallest, largest = limits
    scale = min(max(wanted, smallest), largest)
    return ScaleChoice(scale, wanted, clamped=not smallest <= wanted <= largest)
