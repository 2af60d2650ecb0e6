"""A picture of a segmentation at a glance: label outlines over the image.

2D images are drawn as they are. A 3D volume is drawn as two panels side by side: its middle
z slice and its maximum projection along z (the outlines of the projection are those of
the maximum-projected labels, which show every object once even where objects overlap in z).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import find_boundaries

from embedseg_cli.data.normalise import intensity_percentiles

__all__ = ["render_preview"]

_GAP = 8


def render_preview(
    labels: NDArray[np.integer[Any]], image: NDArray[Any] | None = None
) -> NDArray[np.uint8]:
    """An RGB picture (uint8, Y x X x 3) of the label outlines over ``image``.

    ``image`` is Y x X (2D) or Z x Y x X (3D), of the labels' shape; multichannel images
    are given as their first channel or a mean. Without an image the labels are drawn
    as flat colours on black.

    Examples
    --------
    >>> labels = np.zeros((8, 8), np.uint32); labels[2:6, 2:6] = 1
    >>> render_preview(labels).shape
    (8, 8, 3)
    """
    if image is not None and image.shape != labels.shape:
        msg = f"image shape {image.shape} differs from labels shape {labels.shape}"
        raise ValueError(msg)
    if labels.ndim == 2:
        return _panel(labels, image)
    if labels.ndim != 3:
        msg = f"labels must be 2D or 3D, not {labels.ndim}D"
        raise ValueError(msg)
    middle = labels.shape[0] // 2
    slice_panel = _panel(labels[middle], None if image is None else image[middle])
    projected = labels.max(axis=0)
    projection = _panel(projected, None if image is None else image.max(axis=0))
    gap = np.full((labels.shape[1], _GAP, 3), 255, np.uint8)
    return np.concatenate([slice_panel, gap, projection], axis=1)


def _panel(labels: NDArray[np.integer[Any]], image: NDArray[Any] | None) -> NDArray[np.uint8]:
    colours = _colours(labels)
    if image is None:
        rgb = colours.copy()
        rgb[labels == 0] = 0
        edges = find_boundaries(labels, mode="inner")  # type: ignore[no-untyped-call]
        rgb[edges] = 255
        return rgb
    grey = _stretch(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    edges = find_boundaries(labels, mode="inner")  # type: ignore[no-untyped-call]
    rgb[edges] = colours[edges]
    return rgb


def _stretch(image: NDArray[Any]) -> NDArray[np.uint8]:
    values = image.astype(np.float32)
    try:
        ((low, high),) = intensity_percentiles(values, channel_axis=None)
    except ValueError:  # nothing finite to stretch
        low, high = 0.0, 1.0
    scaled = np.clip((values - low) / max(float(high - low), 1e-12), 0.0, 1.0)
    return np.asarray(np.round(scaled * 255), dtype=np.uint8)


def _colours(labels: NDArray[np.integer[Any]]) -> NDArray[np.uint8]:
    """A bright colour per label that stays the same for a label in every picture."""
    ids = labels.astype(np.uint64)
    hashed = (ids * np.uint64(2654435761)) % np.uint64(2**32)
    hue = hashed.astype(np.float64) / 2**32
    sector = (hue * 6).astype(np.int64)
    fraction = hue * 6 - sector
    up = (fraction * 200 + 55).astype(np.uint8)
    down = ((1 - fraction) * 200 + 55).astype(np.uint8)
    full = np.full(labels.shape, 255, np.uint8)
    low = np.full(labels.shape, 55, np.uint8)
    table = [
        (full, up, low),
        (down, full, low),
        (low, full, up),
        (low, down, full),
        (up, low, full),
        (full, low, down),
    ]
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    for index, (r, g, b) in enumerate(table):
        where = sector == index
        rgb[where, 0], rgb[where, 1], rgb[where, 2] = r[where], g[where], b[where]
    return rgb
