"""Resampling part of a grid, so that a volume larger than memory is resampled piece by piece.

Linear interpolation for images, nearest voxel for labels; voxel centres stay aligned, so
the pieces of a resampled volume join without seams whatever the pieces are.

An image is smoothed before it is downsampled, as scikit-image's ``rescale(...,
anti_aliasing=True)`` does: a Gaussian along each axis made coarser, with sigma
``(factor - 1) / 2`` source voxels. Without it, downsampling by any factor other than 2
keeps only some of the source voxels (by 3, one in three), and a pattern finer than the new
grid turns into a coarser, false one. Axes that are kept or upsampled are not smoothed, and
labels never are: their values are names, not intensities. A piece is smoothed with a
source halo wide enough for the whole kernel, so pieces still join without seams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["resample_piece", "smoothing_sigma", "source_range"]

# Kernel half-widths in standard deviations, scipy's default truncation.
_TRUNCATE = 4.0


def smoothing_sigma(factor: float, order: int) -> float:
    """Standard deviation, in source voxels, of the smoothing before resampling by ``factor``.

    ``factor`` is source voxels per output voxel; only images (``order`` 1) downsampled
    (``factor`` over 1) are smoothed.

    Examples
    --------
    >>> smoothing_sigma(3.0, 1), smoothing_sigma(0.5, 1), smoothing_sigma(3.0, 0)
    (1.0, 0.0, 0.0)
    """
    return max(0.0, (factor - 1) / 2) if order == 1 else 0.0


def _radius(sigma: float) -> int:
    """Half-width in voxels of the smoothing kernel (scipy's for the same truncation)."""
    return int(_TRUNCATE * sigma + 0.5)


def source_range(
    start: int, stop: int, factor: float, size: int, order: int = 1
) -> tuple[int, int]:
    """Source voxels needed to resample output voxels ``start:stop`` (see :func:`resample_piece`).

    The interpolated positions with a voxel either side, and, where an image is downsampled,
    the half-width of the smoothing kernel beyond them.

    Examples
    --------
    >>> source_range(0, 4, 0.5, 10)
    (0, 4)
    >>> source_range(10, 20, 3.0, 100)  # positions 31 to 58, smoothed with sigma 1
    (26, 64)
    >>> source_range(10, 20, 3.0, 100, order=0)
    (30, 60)
    """
    radius = _radius(smoothing_sigma(factor, order))
    low = math.floor((start + 0.5) * factor - 0.5) - 1 - radius
    high = math.ceil((stop - 0.5) * factor - 0.5) + 2 + radius
    return max(0, low), min(size, high)


def resample_piece(
    piece: NDArray[Any],
    start: Sequence[int],
    stop: Sequence[int],
    source_start: Sequence[int],
    factors: Sequence[float],
    order: int,
) -> NDArray[Any]:
    """Resample part of a grid: output voxels ``start:stop`` of the last axes.

    Output voxel ``i`` sits at source position ``(i + 0.5) * factor - 0.5`` (voxel centres
    aligned); ``piece`` holds the source from ``source_start`` on (leading axes are kept),
    as :func:`source_range` gives it. ``order`` 0 takes the nearest voxel (labels), 1
    interpolates linearly (images) after smoothing the axes that are downsampled (see
    :func:`smoothing_sigma`; the source's own edges are mirrored, as scikit-image does).

    Examples
    --------
    >>> resample_piece(np.array([[1, 2]]), (0, 0), (2, 4), (0, 0), (0.5, 0.5), 0).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]

    Downsampling a stripe pattern by 3 averages it rather than picking every third stripe:

    >>> stripes = np.tile([0.0, 1.0], 6)[None]
    >>> resample_piece(stripes, (0, 0), (1, 4), (0, 0), (1, 3), 1).round(1).tolist()
    [[0.5, 0.5, 0.5, 0.5]]
    """
    ndim = len(start)
    lead = piece.ndim - ndim
    coords = [
        np.clip((np.arange(a, b) + 0.5) * f - 0.5 - s, 0, n - 1)
        for a, b, f, s, n in zip(
            start, stop, factors, source_start, piece.shape[lead:], strict=True
        )
    ]
    if order == 0:
        index = np.ix_(*[np.floor(c + 0.5).astype(np.intp) for c in coords])
        return piece[(Ellipsis, *index)]
    source = piece.astype(np.float32)
    for axis, factor in enumerate(factors):
        sigma = smoothing_sigma(factor, order)
        if _radius(sigma) > 0:
            source = ndimage.gaussian_filter1d(
                source, sigma, axis=lead + axis, mode="mirror", radius=_radius(sigma)
            )
    grid = np.meshgrid(*coords, indexing="ij")
    flat = source.reshape(-1, *source.shape[lead:])
    out = np.stack([ndimage.map_coordinates(channel, grid, order=1) for channel in flat])
    return out.reshape(*piece.shape[:lead], *out.shape[1:])
