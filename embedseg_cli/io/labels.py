"""Label images on disk, found by name, for ``evaluate`` and ``export labels``.

A label image may be a TIFF file, a folder of TIFF files, a Zarr array, an OME-Zarr
multiscale label group or an OME-Zarr image with a ``labels`` group. Each is found here and
read whole when asked; what makes its values labels is checked by
:func:`embedseg_cli.data.labels.as_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from embedseg_cli.errors import InputError
from embedseg_cli.io.tiff import TIFF_SUFFIXES, list_tiffs, read_tiff
from embedseg_cli.io.zarr_meta import ome_level0, zarr_attrs, zarr_node_type

__all__ = ["LabelSource", "find_label_images"]


@dataclass(frozen=True)
class LabelSource:
    """One label image on disk (a TIFF file or a Zarr array), read when asked."""

    name: str
    path: Path
    zarr_path: str | None = None
    """Path of the array inside a Zarr group, or None for a TIFF file or a bare array."""

    def __str__(self) -> str:
        return str(self.path if self.zarr_path is None else self.path / self.zarr_path)

    def read(self) -> NDArray[Any]:
        """Read the whole label image into memory."""
        if self.zarr_path is None and self.path.suffix.lower() in TIFF_SUFFIXES:
            return read_tiff(self.path).data
        try:
            node = zarr.open_array(self.path, mode="r", path=self.zarr_path or "")
            return np.asarray(node[...])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            msg = f"{self} cannot be read as a Zarr array ({exc}): check the path"
            raise InputError(msg) from None


def find_label_images(path: Path) -> dict[str, LabelSource]:
    """Find the label images at ``path``, by name.

    ``path`` may be a TIFF file, a folder of TIFF files, a Zarr array, an OME-Zarr
    multiscale label group, or an OME-Zarr image whose ``labels/`` group lists label images
    (the first listed is used).

    Raises
    ------
    InputError
        Where ``path`` does not exist or holds no label images.
    """
    if not path.exists():
        msg = f"{path} does not exist: give a TIFF file, a folder of TIFFs or a Zarr array"
        raise InputError(msg)
    if path.is_file():
        if path.suffix.lower() not in TIFF_SUFFIXES:
            msg = f"{path} is not a TIFF file: give a TIFF file, a folder of TIFFs or a Zarr array"
            raise InputError(msg)
        return {path.stem: LabelSource(path.stem, path)}
    node_type = zarr_node_type(path)
    name = path.name.removesuffix(".zarr")
    if node_type == "array":
        return {name: LabelSource(name, path)}
    if node_type == "group":
        labels_dir = path / "labels"
        listed = zarr_attrs(labels_dir) if labels_dir.is_dir() else {}
        label_names = listed.get("ome", listed).get("labels", [])
        if label_names:
            # An OME-Zarr image: its first listed label image, at full resolution.
            label_group = labels_dir / str(label_names[0])
            level = ome_level0(zarr_attrs(label_group)) or "0"
            return {name: LabelSource(name, path, f"labels/{label_names[0]}/{level}")}
        level0 = ome_level0(zarr_attrs(path))
        if level0 is not None:
            return {name: LabelSource(name, path, level0)}
        msg = f"{path} is a Zarr group without label arrays: give the array itself (e.g. {path}/labels)"
        raise InputError(msg)
    found = {n: LabelSource(n, p) for n, p in list_tiffs(path).items()}
    if not found:
        msg = f"{path} holds no TIFF files: give a folder of label TIFFs"
        raise InputError(msg)
    return found
