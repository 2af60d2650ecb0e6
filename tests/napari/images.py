"""A small synthetic fluorescence image for the napari tests."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

CENTRES = [(24, 28), (30, 92), (70, 56), (100, 24), (104, 100)]
"""Where the nuclei of :func:`nuclei` are, in its 128x128 image."""


def nuclei() -> NDArray[np.uint8]:
    """Five bright, round, blurred nuclei on a dim, noisy background, as in fluorescence."""
    yy, xx = np.mgrid[:128, :128]
    image = np.zeros((128, 128))
    for (y, x), radius in zip(CENTRES, (9, 10, 11, 9, 10), strict=True):
        image[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = 1.0
    image = ndimage.gaussian_filter(image, 1.5) * 160 + 20
    image += np.random.default_rng(0).normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
