"""Intensity normalisation: the one place that maps an image's percentiles to 0 and 1.

Training, prediction and the exported bioimage.io package all normalise the same way: per
image and channel, the intensity at the low percentile (1 by default) maps to 0 and the one
at the high percentile (99.8) to 1, as bioimage.io's ``scale_range`` preprocessing does
(``(x - low) / (high - low + 1e-6)``), so an exported model sees what training saw.
Non-finite intensities (NaN or infinite: masked or padded regions) are left out of the
percentiles and become background (0) after normalisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.records import NORMALISATION_PERCENTILES

__all__ = ["EPSILON", "NORMALISATION_PERCENTILES", "intensity_percentiles", "normalise"]

EPSILON = 1e-6
"""Added to the intensity range, as bioimage.io's ``scale_range`` does."""


def intensity_percentiles(
    image: NDArray[Any],
    *,
    channel_axis: int | None,
    percentiles: tuple[float, float] = NORMALISATION_PERCENTILES,
) -> tuple[tuple[float, float], ...]:
    """Intensities at the low and high percentiles, per channel, of the finite values.

    Parameters
    ----------
    image : ndarray
        The image, with or without a channel axis.
    channel_axis : int or None
        The channel axis, or None for a single-channel image.
    percentiles : (float, float)
        The percentiles that normalisation maps to 0 and 1.

    Returns
    -------
    tuple of (float, float)
        One ``(low, high)`` pair per channel.

    Raises
    ------
    ValueError
        Where a channel has no finite intensity.

    Examples
    --------
    >>> intensity_percentiles(np.arange(101.0), channel_axis=None, percentiles=(1, 99))
    ((1.0, 99.0),)
    >>> intensity_percentiles(np.array([0.0, np.nan, 2.0]), channel_axis=None, percentiles=(0, 100))
    ((0.0, 2.0),)
    """
    channels = [image] if channel_axis is None else list(np.moveaxis(image, channel_axis, 0))
    pairs = []
    for channel in channels:
        values = np.asarray(channel)
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size == 0:
            msg = "a channel has no finite intensity"
            raise ValueError(msg)
        low, high = np.percentile(values, percentiles)
        pairs.append((float(low), float(high)))
    return tuple(pairs)


def normalise(
    image: NDArray[Any], percentiles: tuple[tuple[float, float], ...], *, channel_axis: int | None
) -> NDArray[np.float32]:
    """Map each channel's low and high percentile intensities to 0 and 1 (float32).

    Non-finite intensities become 0 (background).

    Examples
    --------
    >>> normalise(np.array([10, 20, 30]), ((10.0, 30.0),), channel_axis=None).round(4).tolist()
    [0.0, 0.5, 1.0]
    >>> image = np.array([[0.0, 2.0], [np.nan, 4.0]])
    >>> normalise(image, ((0.0, 2.0), (0.0, 4.0)), channel_axis=0).round(4).tolist()
    [[0.0, 1.0], [0.0, 1.0]]
    """
    values = np.asarray(image, dtype=np.float32)
    low = np.array([p[0] for p in percentiles], dtype=np.float32)
    high = np.array([p[1] for p in percentiles], dtype=np.float32)
    shape = [1] * values.ndim
    if channel_axis is not None:
        shape[channel_axis] = -1
    elif len(percentiles) != 1:
        msg = f"{len(percentiles)} channels of percentiles for an image without a channel axis"
        raise ValueError(msg)
    scale = 1.0 / (high - low + np.float32(EPSILON))
    out = np.asarray((values - low.reshape(shape)) * scale.reshape(shape), dtype=np.float32)
    if not np.isfinite(out).all():
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out
