"""Augmentation: the axis-aligned rotations and flips of training and test-time augmentation.

The same transforms serve training augmentation and test-time augmentation: in 2D the eight
elements of the dihedral group D4 (four 90-degree rotations in YX, each with and without a
Y flip), in 3D the sixteen transforms of the paper (four YX rotations, each with no flip, a
Y flip, a Z flip or both). Rotations never mix Z with Y or X, so anisotropic voxels stay
anisotropic along the same axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Transform", "apply_transform", "transform_points", "transforms"]


@dataclass(frozen=True)
class Transform:
    """Flip the listed spatial axes, then rotate by ``rot90`` quarter turns in the YX plane.

    Axes count the spatial axes from the first: ``0`` is Z in 3D and Y in 2D.
    """

    rot90: int
    flips: tuple[int, ...]


def transforms(ndim: int) -> tuple[Transform, ...]:
    """The augmentation group: 8 transforms in 2D, 16 in 3D (the first is the identity).

    Examples
    --------
    >>> len(transforms(2)), len(transforms(3)), transforms(2)[0]
    (8, 16, Transform(rot90=0, flips=()))
    """
    if ndim == 2:
        flip_sets: tuple[tuple[int, ...], ...] = ((), (0,))
    elif ndim == 3:
        flip_sets = ((), (1,), (0,), (0, 1))
    else:
        msg = f"transforms exist for 2D and 3D (got ndim={ndim})"
        raise ValueError(msg)
    return tuple(Transform(k, flips) for flips in flip_sets for k in range(4))


def apply_transform(array: NDArray[Any], transform: Transform, ndim: int) -> NDArray[Any]:
    """Apply ``transform`` to the last ``ndim`` axes of ``array`` (leading axes: channels)."""
    lead = array.ndim - ndim
    out = array
    for axis in transform.flips:
        out = np.flip(out, axis=lead + axis)
    return np.rot90(out, transform.rot90, axes=(-2, -1))


def transform_points(
    points: NDArray[np.float64], shape: tuple[int, ...], transform: Transform
) -> NDArray[np.float64]:
    """Where pixel positions go under ``transform`` applied to an array of ``shape``.

    Points may lie outside the array (the centres of objects cut by a crop).

    Examples
    --------
    >>> t = Transform(rot90=1, flips=())
    >>> transform_points(np.array([[0.0, 0.0]]), (3, 5), t).tolist()
    [[4.0, 0.0]]
    """
    out = np.array(points, dtype=np.float64, copy=True)
    size = list(shape)
    for axis in transform.flips:
        out[:, axis] = size[axis] - 1 - out[:, axis]
    for _ in range(transform.rot90 % 4):
        # np.rot90 maps (y, x) of an (H, W) array to (W - 1 - x, y) of a (W, H) array.
        y, x = out[:, -2].copy(), out[:, -1].copy()
        out[:, -2], out[:, -1] = size[-1] - 1 - x, y
        size[-2], size[-1] = size[-1], size[-2]
    return out
