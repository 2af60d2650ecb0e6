"""The input's pixels: read window by window, and its intensities measured for normalisation.

A read that fails names the region of the input it was for, so that a damaged input is
reported where it is damaged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import NDArray

from embedseg_cli.data.normalise import intensity_percentiles
from embedseg_cli.errors import InputError

__all__ = ["Source", "percentiles", "raise_unreadable_chunk"]

logger = logging.getLogger(__name__)

_SUBSAMPLE_VOXELS = 16_000_000


class Source:
    """The input's lazy pixels, held so that dask passes them to a task unread.

    Each window task reads its own region (with dask's synchronous scheduler, inside the
    task), so dask keeps no input chunks in flight between blocks, and a read that fails
    is reported with the region and block it was for.
    """

    __slots__ = ("name", "pixels")

    def __init__(self, name: str, pixels: da.Array) -> None:
        self.name = name
        self.pixels = pixels

    def __getstate__(self) -> tuple[str, da.Array]:
        return self.name, self.pixels

    def __setstate__(self, state: tuple[str, da.Array]) -> None:
        self.name, self.pixels = state

    def read(self, origin: Sequence[int], extent: Sequence[int], block: str) -> NDArray[Any]:
        """The pixels of the window at ``origin`` (for ``block``, named in errors)."""
        region = tuple(slice(o, o + n) for o, n in zip(origin, extent, strict=True))
        try:
            return np.asarray(self.pixels[(slice(None), *region)].compute(scheduler="sync"))
        except Exception as error:  # noqa: BLE001 (a damaged input raises what its codec raises)
            where = " x ".join(f"{r.start}:{r.stop}" for r in region)
            msg = (
                f"cannot read {self.name} at voxels {where} (block {block}): "
                f"{type(error).__name__}: {error}. The input is damaged or incomplete there: "
                "repair or rewrite it, then run again with --resume to keep the finished blocks"
            )
            raise InputError(msg) from None


def percentiles(pixels: da.Array, ndim: int, name: str) -> tuple[tuple[float, float], ...]:
    """Normalisation percentiles per channel, on a regular subsample of a large volume."""
    spatial = pixels.shape[1:]
    step = max(1, math.ceil((math.prod(spatial) / _SUBSAMPLE_VOXELS) ** (1 / ndim)))
    try:
        sample = np.asarray(pixels[(slice(None), *([slice(None, None, step)] * ndim))].compute())
    except Exception:
        raise_unreadable_chunk(pixels, name)
        raise
    finite = np.isfinite(sample)
    if not finite.all():
        if not finite.any(axis=tuple(range(1, sample.ndim))).all():
            msg = f"{name} has no finite intensity (all NaN or infinite): give another image"
            raise InputError(msg)
        logger.warning("%s has NaN or infinite intensities: they are predicted as background", name)
    return intensity_percentiles(sample, channel_axis=0)


def raise_unreadable_chunk(pixels: da.Array, name: str) -> None:
    """Find the first chunk of ``pixels`` that cannot be read and raise an error naming it."""
    for index in np.ndindex(*pixels.numblocks):
        try:
            pixels.blocks[index].compute(scheduler="sync")
        except Exception as error:  # noqa: BLE001
            starts = [sum(c[:i]) for c, i in zip(pixels.chunks, index, strict=True)]
            stops = [a + c[i] for a, c, i in zip(starts, pixels.chunks, index, strict=True)]
            where = " x ".join(f"{a}:{b}" for a, b in list(zip(starts, stops, strict=True))[1:])
            msg = (
                f"cannot read {name} at voxels {where}: {type(error).__name__}: {error}. The "
                "input is damaged or incomplete there: repair or rewrite it, then run again"
            )
            raise InputError(msg) from None
