"""Resampling part of a grid, so that a volume larger than memory is resampled piece by piece.

Linear interpolation for images, nearest voxel for labels; voxel centres stay aligned, so
the pieces of a resampled volume join without seams whatever the pieces are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["resample_piece", "source_range"]


def source_range(start: int, stop: int, factor: float, size: int) -> tuple[int, int]:
    """Source voxels needed to resample output voxels ``start:stop`` (see :func:`resample_piece`).

    Examples
    --------
    >>> source_range(0, 4, 0.5, 10)
    (0, 4)
    """
    low = math.floor((start + 0.5) * factor - 0.5) - 1
    high = math.ceil((stop - 0.5) * factor - 0.5) + 2
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
    aligned); ``piece`` holds the source from ``source_start`` on (leading axes are kept).
    ``order`` 0 takes the nearest voxel (labels), 1 interpolates linearly (images).

    Examples
    --------
    >>> resample_piece(np.array([[1, 2]]), (0, 0), (2, 4), (0, 0), (0.5, 0.5), 0).tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2]]
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
    grid = np.meshgrid(*coords, indexing="ij")
    flat = piece.reshape(-1, *piece.shape[lead:]).astype(np.float32)
    out = np.stack([ndimage.map_coordinates(channel, grid, order=1) for channel in flat])
    return out.reshape(*piece.shape[:lead], *out.shape[1:])
