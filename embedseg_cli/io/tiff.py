"""TIFF files: image/mask pairs in folders, their pixels and voxel size, and TIFF outputs.

Every problem with an input is an :class:`~embedseg_cli.errors.InputError` whose message
names the file and says what to do. Every TIFF written is written all or nothing
(:func:`embedseg_cli.io.atomic.staged`). Large TIFF volumes are opened lazily by
:func:`embedseg_cli.io.volumes.open_volume`, not here.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray

from embedseg_cli.errors import InputError
from embedseg_cli.io.atomic import cannot_write, staged
from embedseg_cli.records import Split

__all__ = [
    "TIFF_SUFFIXES",
    "TiffImage",
    "TiffPair",
    "find_tiff_pairs",
    "list_tiffs",
    "read_tiff",
    "read_tiff_description",
    "tiff_voxel_size",
    "write_image_tiff",
    "write_labels_tiff",
    "write_labels_tiff_with_voxel_size",
]

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class TiffPair:
    """An image file and its mask file, matched by name."""

    name: str
    split: Split
    image: Path
    mask: Path


@dataclass(frozen=True)
class TiffImage:
    """The pixels of a TIFF file and what its metadata says about them."""

    path: Path
    data: NDArray[Any]
    voxel_size: dict[str, float]
    """Pixel size per axis name (``Z``, ``Y``, ``X``) where the metadata gives it."""


def list_tiffs(folder: Path) -> dict[str, Path]:
    """Map the name (file name without extension) of each TIFF in ``folder`` to its path.

    Hidden files are ignored; any other file that is not a TIFF is an error, so that a
    folder of PNGs is not silently taken for an empty one.
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in TIFF_SUFFIXES:
            msg = f"{path} is not a TIFF file: convert it to TIFF or move it out of {folder}"
            raise InputError(msg)
        if path.stem in found:
            msg = f"{path} and {found[path.stem]} have the same name: rename one of them"
            raise InputError(msg)
        found[path.stem] = path
    return found


def _pairs_in(folder: Path, split: Split) -> list[TiffPair]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        msg = f"{folder} has no images/ folder: put the images in {images_dir}"
        raise InputError(msg)
    if not masks_dir.is_dir():
        msg = f"{images_dir} has no masks/ beside it: put the label images in {masks_dir}, with the same file names"
        raise InputError(msg)
    images, masks = list_tiffs(images_dir), list_tiffs(masks_dir)
    for name, path in images.items():
        if name not in masks:
            msg = f"image {path} has no mask: add {masks_dir / path.name} or remove the image"
            raise InputError(msg)
    for name, path in masks.items():
        if name not in images:
            msg = f"mask {path} has no image: add {images_dir / path.name} or remove the mask"
            raise InputError(msg)
    return [TiffPair(name, split, images[name], masks[name]) for name in sorted(images)]


def find_tiff_pairs(source: Path) -> list[TiffPair]:
    """Find the image/mask pairs of a source folder and the split each belongs to.

    Two layouts are understood: ``source/images`` + ``source/masks`` (all pairs are
    ``train``; validation is split off later), and ``source/{train,val,test}/`` each holding
    ``images/`` + ``masks/``.

    Raises
    ------
    InputError
        Where the folder is missing, holds neither layout, has unmatched or non-TIFF files,
        or holds no images at all.
    """
    if not source.is_dir():
        msg = f"{source} is not a folder: give the folder that holds images/ and masks/"
        raise InputError(msg)
    split_dirs = [(split, source / split) for split in SPLITS if (source / split).is_dir()]
    if split_dirs:
        pairs = [pair for split, folder in split_dirs for pair in _pairs_in(folder, split)]
    elif (source / "images").is_dir() or (source / "masks").is_dir():
        pairs = _pairs_in(source, "train")
    else:
        msg = (
            f"{source} holds neither images/ and masks/ nor train/, val/ or test/ folders with them"
        )
        raise InputError(msg)
    if not pairs:
        msg = (
            f"{source} holds no TIFF images: add image/mask pairs to its images/ and masks/ folders"
        )
        raise InputError(msg)
    seen: dict[str, TiffPair] = {}
    for pair in pairs:
        if pair.name in seen:
            msg = f"{pair.image} and {seen[pair.name].image} have the same name: names must be unique across splits"
            raise InputError(msg)
        seen[pair.name] = pair
    if not any(pair.split in ("train", "val") for pair in pairs):
        msg = f"{source} has no training images: add a train/ folder (or images/ and masks/)"
        raise InputError(msg)
    return pairs


def read_tiff(path: Path) -> TiffImage:
    """Read a TIFF file's pixels and its pixel size from OME, ImageJ or resolution metadata."""
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
            voxel_size = tiff_voxel_size(tif)
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as exc:
        msg = f"{path} cannot be read as a TIFF ({exc}): check that the file is complete"
        raise InputError(msg) from None
    return TiffImage(path=path, data=data, voxel_size=voxel_size)


def tiff_voxel_size(tif: tifffile.TiffFile) -> dict[str, float]:
    """The pixel size per axis (``Z``, ``Y``, ``X``) from OME-XML, ImageJ or resolution tags."""
    sizes: dict[str, float]
    if tif.is_ome and tif.ome_metadata:
        sizes = _ome_voxel_size(tif.ome_metadata)
        if sizes:
            return sizes
    sizes = {}
    page = tif.pages.first
    for axis, tag_name in (("X", "XResolution"), ("Y", "YResolution")):
        tag = page.tags.get(tag_name)
        if tag is not None:
            numerator, denominator = tag.value
            if numerator > 0 and denominator > 0:
                sizes[axis] = denominator / numerator
    spacing = (tif.imagej_metadata or {}).get("spacing")
    if isinstance(spacing, int | float) and spacing > 0:
        sizes["Z"] = float(spacing)
    return sizes


def _ome_voxel_size(xml: str) -> dict[str, float]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    for element in root.iter():
        if re.sub(r"^\{.*\}", "", element.tag) == "Pixels":
            sizes = {}
            for axis in "ZYX":
                value = element.get(f"PhysicalSize{axis}")
                if value is not None and float(value) > 0:
                    sizes[axis] = float(value)
            return sizes
    return {}


def read_tiff_description(path: Path) -> str | None:
    """The first ImageDescription of a TIFF, None where it has none or cannot be read."""
    try:
        with tifffile.TiffFile(path) as tif:
            description = tif.pages.first.description
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return description or None


def write_labels_tiff(
    path: Path, labels: NDArray[np.uint32], description: str | None = None
) -> None:
    """Write labels as a zlib-compressed TIFF, all or nothing.

    ``description`` (7-bit ASCII) goes into the first ImageDescription tag, where
    :func:`read_tiff_description` finds it.
    """
    _write(path, labels, compression="zlib", description=description)


def write_image_tiff(path: Path, image: NDArray[Any]) -> None:
    """Write an image as a TIFF, all or nothing."""
    _write(path, image)


def write_labels_tiff_with_voxel_size(
    path: Path, labels: NDArray[np.uint32], voxel_size: Sequence[float]
) -> None:
    """Write 2D or 3D labels with their voxel size (ZYX), readable by ImageJ where they fit.

    uint16 with ImageJ metadata where the labels fit, else uint32 with OME metadata:
    ImageJ's TIFF flavour has no 32-bit integer type; OME-TIFF does, and carries the voxel
    size just the same. Both also set the resolution tags (pixels per unit).
    """
    ndim = labels.ndim
    sizes = [float(v) for v in voxel_size]
    resolution = (1.0 / sizes[-1], 1.0 / sizes[-2])
    if labels.size == 0 or int(labels.max()) <= np.iinfo(np.uint16).max:
        metadata: dict[str, Any] = {"axes": "ZYX"[-ndim:], "unit": "micron"}
        if ndim == 3:
            metadata["spacing"] = sizes[0]
        _write(
            path,
            labels.astype(np.uint16),
            imagej=True,
            resolution=resolution,
            metadata=metadata,
            compression="zlib",
        )
        return
    ome: dict[str, Any] = {
        "axes": "ZYX"[-ndim:],
        "PhysicalSizeX": sizes[-1],
        "PhysicalSizeY": sizes[-2],
    }
    if ndim == 3:
        ome["PhysicalSizeZ"] = sizes[0]
    _write(path, labels, ome=True, resolution=resolution, metadata=ome, compression="zlib")


def _write(path: Path, data: NDArray[Any], **options: Any) -> None:
    """``tifffile.imwrite`` into a hidden sibling, renamed to ``path`` when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(path) as staging:
            tifffile.imwrite(staging, data, **options)
    except OSError as exc:
        raise cannot_write(path, exc) from None
