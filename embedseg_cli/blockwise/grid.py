"""Geometry of block-wise prediction: the window grid, blending weights, blocks and halos.

Pure functions on shapes. The tile grid depends only on the volume's shape, the window and
the overlap, never on the blocks, so a pixel's blended network output (and therefore its
label) is the same whatever the block size, worker count or engine.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Block",
    "blend_profiles",
    "block_grid",
    "relabel_keys",
    "sample_windows",
    "tile_grid",
    "tile_starts",
    "tiles_overlapping",
]

Box = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class Block:
    """One block of the output: its index in the grid and its extent (``stop`` exclusive)."""

    index: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        """The block's region as slices."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """The block's extent per axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def key(self) -> str:
        """A name of the block for file names and logs, such as ``0.3.1``."""
        return ".".join(str(i) for i in self.index)

    def grown(self, halo: Sequence[int], shape: Sequence[int]) -> Box:
        """The block grown by ``halo`` on every side, clipped to ``shape``."""
        start = tuple(max(0, a - h) for a, h in zip(self.start, halo, strict=True))
        stop = tuple(min(n, b + h) for b, h, n in zip(self.stop, halo, shape, strict=True))
        return start, stop


def block_grid(shape: Sequence[int], block_shape: Sequence[int]) -> list[Block]:
    """Cut ``shape`` into blocks of ``block_shape`` (the last ones smaller), in C order.

    Examples
    --------
    >>> [(b.start, b.stop) for b in block_grid((5, 4), (3, 4))]
    [((0, 0), (3, 4)), ((3, 0), (5, 4))]
    """
    ranges = [range(math.ceil(n / b)) for n, b in zip(shape, block_shape, strict=True)]
    blocks = []
    for index in itertools.product(*ranges):
        start = tuple(i * b for i, b in zip(index, block_shape, strict=True))
        stop = tuple(min(n, s + b) for n, s, b in zip(shape, start, block_shape, strict=True))
        blocks.append(Block(tuple(index), start, stop))
    return blocks


def tile_starts(size: int, window: int, overlap: int) -> list[int]:
    """Starts of the network windows along one axis.

    Windows step by ``window - overlap`` and the last one ends at the volume's end; an axis
    shorter than the window gets one window, starting at 0.

    Examples
    --------
    >>> tile_starts(1000, 256, 64)
    [0, 192, 384, 576, 744]
    >>> tile_starts(100, 256, 64)
    [0]
    """
    if size <= window:
        return [0]
    step = window - overlap
    if step <= 0:
        msg = f"the overlap ({overlap}) must be smaller than the window ({window})"
        raise ValueError(msg)
    starts = list(range(0, size - window, step))
    return [*starts, size - window]


def tile_grid(
    shape: Sequence[int], window: Sequence[int], overlap: Sequence[int]
) -> list[tuple[int, ...]]:
    """Start of every network window covering ``shape``, in C order."""
    axes = [tile_starts(n, w, o) for n, w, o in zip(shape, window, overlap, strict=True)]
    return list(itertools.product(*axes))


def sample_windows(
    shape: Sequence[int], window: Sequence[int], count: int
) -> list[tuple[int, ...]]:
    """Starts of up to ``count`` windows spread over a volume, to sample it cheaply.

    The volume is cut into equal parts, more along the axes that hold more windows, and a
    window is centred in each part (shifted inside the volume). A volume no larger than
    the window is one window.

    Examples
    --------
    >>> sample_windows((1024, 1024), (512, 512), 4)
    [(0, 0), (0, 512), (512, 0), (512, 512)]
    >>> sample_windows((300, 2000), (256, 256), 4)
    [(22, 122), (22, 622), (22, 1122), (22, 1622)]
    >>> sample_windows((100, 100), (512, 512), 4)
    [(0, 0)]
    """
    parts = [1] * len(shape)
    while True:
        room = [n / (w * k) for n, w, k in zip(shape, window, parts, strict=True)]
        axis = int(np.argmax(room))
        if room[axis] <= 1 or math.prod(parts) // parts[axis] * (parts[axis] + 1) > count:
            break
        parts[axis] += 1
    axes = [
        [min(max(0, round((i + 0.5) * n / k - w / 2)), max(0, n - w)) for i in range(k)]
        for n, w, k in zip(shape, window, parts, strict=True)
    ]
    return list(itertools.product(*axes))


def tiles_overlapping(
    tiles: Sequence[tuple[int, ...]],
    window: Sequence[int],
    start: Sequence[int],
    stop: Sequence[int],
) -> list[int]:
    """Indices of the tiles whose window intersects the region ``start:stop``."""
    return [
        i
        for i, origin in enumerate(tiles)
        if all(o < b and o + w > a for o, w, a, b in zip(origin, window, start, stop, strict=True))
    ]


def blend_profiles(
    window: Sequence[int],
    overlap: Sequence[int],
    origin: Sequence[int],
    shape: Sequence[int],
) -> list[NDArray[np.float32]]:
    """The blending weights of one window along each axis; a pixel's weight is their product.

    The weight ramps linearly from near 0 at a window edge to 1 at ``overlap`` pixels inside
    it, so each pixel's output comes mostly from the window where it has the most context
    around it; edges on the volume's border keep full weight (no neighbour takes over there).

    Examples
    --------
    >>> [p.tolist() for p in blend_profiles((4,), (2,), (2,), (8,))]
    [[0.25, 0.75, 0.75, 0.25]]
    """
    profiles = []
    for w, o, start, n in zip(window, overlap, origin, shape, strict=True):
        profile = np.ones(w, dtype=np.float32)
        if o > 0:
            ramp = ((np.arange(o, dtype=np.float32) + 0.5) / o).astype(np.float32)
            if start > 0:
                profile[:o] = np.minimum(profile[:o], ramp)
            if start + w < n:
                profile[w - o :] = np.minimum(profile[w - o :], ramp[::-1])
        profiles.append(profile)
    return profiles


def relabel_keys(keys: NDArray[np.uint64], mapping: NDArray[np.uint64]) -> NDArray[np.uint32]:
    """Replace instance keys by their rank in ``mapping`` (sorted, unique) plus one; 0 stays 0.

    Examples
    --------
    >>> relabel_keys(np.array([0, 70, 9], np.uint64), np.array([9, 70], np.uint64)).tolist()
    [0, 2, 1]
    """
    out = np.zeros(keys.shape, dtype=np.uint32)
    foreground = keys > 0
    out[foreground] = (np.searchsorted(mapping, keys[foreground]) + 1).astype(np.uint32)
    return out
