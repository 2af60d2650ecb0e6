"""PNG pictures: previews of labels and the covers of exported model packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from embedseg_cli.io.atomic import cannot_write, staged

__all__ = ["write_png"]


def write_png(path: Path, rgb: NDArray[np.uint8]) -> None:
    """Write an RGB picture (Y x X x 3, uint8) as a PNG, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(path) as staging:
            Image.fromarray(np.ascontiguousarray(rgb)).save(staging, format="PNG")
    except OSError as exc:
        raise cannot_write(path, exc) from None
