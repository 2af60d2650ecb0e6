"""Data properties the method needs: normalisation, object statistics, crop size, weights.

Pure functions on arrays and on :class:`~embedseg_cli.data.centres.ObjectTable` rows; the same
code serves 2D and 3D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.data.centres import ObjectTable
from embedseg_cli.errors import InputError

__all__ = [
    "FOREGROUND_WEIGHT_2D",
    "crop_windows",
    "derive_crop_size",
    "extent_statistics",
    "foreground_weight",
    "per_axis",
]

FOREGROUND_WEIGHT_2D = 10.0
"""Weight of foreground pixels in the 2D seed loss, as in the paper."""


def extent_statistics(
    tables: Sequence[ObjectTable], ndim: int
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """Mean, standard deviation and maximum of the objects' bounding-box extents per axis."""
    extents = np.concatenate([t.extents for t in tables]) if tables else np.empty((0, ndim))
    if len(extents) == 0:
        zeros = (0.0,) * ndim
        return zeros, zeros, (0,) * ndim
    return (
        tuple(float(v) for v in extents.mean(axis=0)),
        tuple(float(v) for v in extents.std(axis=0)),
        tuple(int(v) for v in extents.max(axis=0)),
    )


def derive_crop_size(mean_extent: Sequence[float], std_extent: Sequence[float]) -> tuple[int, ...]:
    """Crop size from the object extents: mean + 5 std, rounded up to a multiple of 8.

    Y and X share the larger of their two values; Z (in 3D) is derived on its own. At least
    16 pixels along each axis, so that a crop always survives the network's downsampling.

    Examples
    --------
    >>> derive_crop_size([20.0, 24.0], [2.0, 3.0])
    (40, 40)
    >>> derive_crop_size([6.0, 20.0, 20.0], [1.0, 2.0, 2.0])
    (16, 32, 32)
    """

    def round_up(value: float) -> int:
        return max(16, 8 * math.ceil(value / 8))

    sizes = [round_up(m + 5 * s) for m, s in zip(mean_extent, std_extent, strict=True)]
    yx = max(sizes[-2:])
    return (*sizes[:-2], yx, yx)


def foreground_weight(foreground: Sequence[int], total: Sequence[int], ndim: int) -> float:
    """Weight of foreground pixels in the seed loss.

    10 in 2D, as the paper; in 3D the mean over the masks of the ratio of background to
    foreground voxels, so that both contribute equally to the loss.

    Parameters
    ----------
    foreground, total : sequence of int
        Foreground and total voxel counts, one per mask.
    ndim : int
        Number of spatial dimensions.

    Examples
    --------
    >>> foreground_weight([10, 20], [110, 220], ndim=3)
    10.0
    """
    if ndim == 2:
        return FOREGROUND_WEIGHT_2D
    ratios = [(t - f) / f for f, t in zip(foreground, total, strict=True) if f]
    return float(np.mean(ratios)) if ratios else 1.0


def crop_windows(
    centres: NDArray[np.float64], shape: Sequence[int], crop_size: Sequence[int]
) -> NDArray[np.int64]:
    """Start of an object-centred crop window for each centre.

    A window is centred on its object and shifted inside the image where it would cross the
    border. Along an axis where the image is smaller than the crop, the window starts at a
    negative position that centres the image in it: such crops are padded when read, never
    dropped.

    Parameters
    ----------
    centres : ndarray of shape (n, ndim)
        Object centres in pixel coordinates.
    shape : sequence of int
        Spatial shape of the image.
    crop_size : sequence of int
        Crop size along each spatial axis.

    Returns
    -------
    ndarray of shape (n, ndim)
        Window starts; each window spans ``start`` to ``start + crop_size``.

    Examples
    --------
    >>> crop_windows(np.array([[2.0, 50.0]]), (100, 100), (16, 16)).tolist()
    [[0, 42]]
    >>> crop_windows(np.array([[5.0, 5.0]]), (10, 40), (16, 16)).tolist()
    [[-3, 0]]
    """
    shape_a = np.asarray(shape, dtype=np.int64)
    crop = np.asarray(crop_size, dtype=np.int64)
    start = np.round(centres).astype(np.int64) - crop // 2
    upper = np.maximum(shape_a - crop, 0)
    start = np.clip(start, 0, upper)
    small = shape_a < crop
    return np.where(small, -((crop - shape_a) // 2), start)


def per_axis(value: tuple[int, ...], ndim: int, option: str) -> tuple[int, ...]:
    """One value per spatial axis from a command-line size: one value for all axes, or ``ndim``.

    Raises
    ------
    InputError
        Naming ``--option`` where the number of values is neither 1 nor ``ndim``.

    Examples
    --------
    >>> per_axis((256,), 2, "crop-size"), per_axis((16, 64, 64), 3, "tile-size")
    ((256, 256), (16, 64, 64))
    """
    if len(value) == 1:
        return value * ndim
    if len(value) != ndim:
        msg = f"--{option} has {len(value)} values but the data is {ndim}D: give 1 or {ndim}"
        raise InputError(msg)
    return value
