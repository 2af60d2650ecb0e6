"""Objects brought to the size the model learned: inputs resampled to its voxel size.

An input whose voxel size differs from the model's by over 5% along an axis is resampled
lazily, chunk by chunk, before the network; its labels are resampled back to its shape.
The scale for the objects' size (:mod:`~embedseg_cli.predict.objectsize`) multiplies these
factors: one resampling serves both.
"""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np
from dask.delayed import delayed

from embedseg_cli.blockwise.resample import resample_piece, source_range
from embedseg_cli.config import PredictConfig
from embedseg_cli.predict.jobs import Job
from embedseg_cli.records import DataProperties

__all__ = ["resample", "rescale_factors"]

logger = logging.getLogger(__name__)


def rescale_factors(
    job: Job, data: DataProperties, config: PredictConfig
) -> tuple[float, ...] | None:
    """Model voxels per input voxel along each axis, where the two differ by over 5%.

    Both voxel sizes are in micrometres: the input's as its metadata gives it, converted
    from its unit (:mod:`embedseg_cli.io.units`), the model's as ``prepare`` stored it.
    A model whose voxel size is 1 along every axis was trained without a known voxel size
    (unless its images were downsampled); it is never rescaled to. An input whose voxel
    size is unknown along any axis (no metadata, or a size without a unit) is taken to have
    the voxel size of the model's source images: it is not resampled, except where those
    were downsampled for training (``prepare --downsample``): then the input is
    downsampled the same way.
    """
    downsample = tuple(data.downsample or ())
    downsampled = any(d != 1 for d in downsample)
    sizes = tuple(v for v in job.voxel_size if v is not None)
    if len(sizes) != len(job.voxel_size):
        if not downsampled:
            return None
        factors = tuple(1 / d for d in downsample)
        coarser = "x".join(str(d) for d in downsample)
        if not config.rescale:
            logger.warning(
                "the model was trained on images downsampled %s times (prepare --downsample) "
                "and %s has no voxel size: leave out --no-rescale to downsample it the same way",
                coarser,
                job.source,
            )
            return None
        logger.info(
            "%s has no voxel size: downsampling it %s times, as the model's training images",
            job.source,
            coarser,
        )
        return factors
    model = tuple(float(v) for v in data.voxel_size)
    if all(v == 1.0 for v in model) and not downsampled:
        return None
    factors = tuple(i / m for i, m in zip(sizes, model, strict=True))
    if all(abs(f - 1) <= 0.05 for f in factors):
        return None
    given = ", ".join(f"{v:g}" for v in sizes)
    trained = ", ".join(f"{v:g}" for v in model)
    if not config.rescale:
        logger.warning(
            "%s has voxel size %s µm but the model was trained on %s µm: objects may be "
            "missed; leave out --no-rescale to resample it to the model's voxel size",
            job.source,
            given,
            trained,
        )
        return None
    logger.info(
        "resampling %s from voxel size %s µm to the model's %s µm", job.source, given, trained
    )
    return factors


def resample(array: da.Array, shape: tuple[int, ...], order: int) -> da.Array:
    """Resample the last ``len(shape)`` axes of ``array`` lazily, chunk by chunk.

    ``order`` 1 for images (anti-aliased where downsampled), 0 for labels; the pieces are
    those of :func:`~embedseg_cli.blockwise.resample.resample_piece`, as in ``prepare``.
    """
    ndim = len(shape)
    lead = tuple(array.shape[: array.ndim - ndim])
    source_shape = tuple(int(n) for n in array.shape[-ndim:])
    factors = tuple(n / m for n, m in zip(source_shape, shape, strict=True))
    step = 1024 if ndim == 2 else 128
    ranges = [[(a, min(a + step, n)) for a in range(0, n, step)] for n in shape]

    def piece(index: tuple[int, ...]) -> da.Array:
        bounds = [ranges[axis][i] for axis, i in enumerate(index)]
        sources = [
            source_range(a, b, f, n, order)
            for (a, b), f, n in zip(bounds, factors, source_shape, strict=True)
        ]
        part = array[(Ellipsis, *(slice(lo, hi) for lo, hi in sources))]
        value = delayed(resample_piece)(
            part,
            [a for a, _ in bounds],
            [b for _, b in bounds],
            [lo for lo, _ in sources],
            factors,
            order,
        )
        extent = tuple(b - a for a, b in bounds)
        dtype = array.dtype if order == 0 else np.float32
        result: da.Array = da.from_delayed(value, shape=(*lead, *extent), dtype=dtype)
        return result

    def nest(prefix: tuple[int, ...]) -> Any:
        axis = len(prefix)
        if axis == ndim:
            return piece(prefix)
        return [nest((*prefix, i)) for i in range(len(ranges[axis]))]

    resampled: da.Array = da.block(nest(()))
    return resampled
