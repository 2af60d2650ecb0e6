"""Reading the user's files: TIFF pairs in folders, with their voxel size.

This module touches external files only; the project store is :mod:`embedseg_cli.store`.
Every problem with an input is an :class:`~embedseg_cli.errors.InputError` whose message
names the file and says what to do.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from numpy.typing import NDArray

from embedseg_cli.errors import InputError
from embedseg_cli.records import Split

__all__ = [
    "LabelSource",
    "TiffImage",
    "TiffPair",
    "as_label_array",
    "find_label_images",
    "find_tiff_pairs",
    "is_zarr",
    "list_tiffs",
    "read_tiff",
]

logger = logging.getLogger(__name__)

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
            voxel_size = _voxel_size(tif)
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as exc:
        msg = f"{path} cannot be read as a TIFF ({exc}): check that the file is complete"
        raise InputError(msg) from None
    return TiffImage(path=path, data=data, voxel_size=voxel_size)


def _voxel_size(tif: tifffile.TiffFile) -> dict[str, float]:
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


def as_label_array(data: NDArray[Any], path: Path) -> NDArray[np.uint32]:
    """Check that ``data`` holds instance labels and return them as uint32.

    Raises
    ------
    InputError
        For float, boolean or negative labels, or values that do not fit in uint32.
    """
    if not np.issubdtype(data.dtype, np.integer):
        msg = f"mask {path} has {data.dtype} values: masks must hold integer instance labels (0 = background)"
        raise InputError(msg)
    if data.size and np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0:
        msg = f"mask {path} has negative labels: use 0 for background and positive integers for objects"
        raise InputError(msg)
    if data.size and data.max() > np.iinfo(np.uint32).max:
        msg = f"mask {path} has labels above 2**32 - 1: relabel it with consecutive integers"
        raise InputError(msg)
    return data.astype(np.uint32, copy=False)


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


def _zarr_node_type(path: Path) -> str | None:
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("node_type"))
        except (OSError, ValueError):
            return None
    if (path / ".zarray").is_file():
        return "array"
    if (path / ".zgroup").is_file():
        return "group"
    return None


def _zarr_attrs(path: Path) -> dict[str, Any]:
    meta = path / "zarr.json"
    if meta.is_file():
        attrs = json.loads(meta.read_text()).get("attributes", {})
        return dict(attrs) if isinstance(attrs, dict) else {}
    legacy = path / ".zattrs"
    return dict(json.loads(legacy.read_text())) if legacy.is_file() else {}


def _ome_level0(attrs: dict[str, Any]) -> str | None:
    """Path of the full-resolution array of an OME-Zarr multiscale group, if it is one."""
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if isinstance(multiscales, list) and multiscales:
        datasets = multiscales[0].get("datasets", [])
        if datasets:
            return str(datasets[0]["path"])
    return None


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a Zarr array or group (v2 or v3)."""
    return path.is_dir() and _zarr_node_type(path) is not None


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
    node_type = _zarr_node_type(path)
    name = path.name.removesuffix(".zarr")
    if node_type == "array":
        return {name: LabelSource(name, path)}
    if node_type == "group":
        labels_dir = path / "labels"
        listed = _zarr_attrs(labels_dir) if labels_dir.is_dir() else {}
        label_names = listed.get("ome", listed).get("labels", [])
        if label_names:
            # An OME-Zarr image: its first listed label image, at full resolution.
            label_group = labels_dir / str(label_names[0])
            level = _ome_level0(_zarr_attrs(label_group)) or "0"
            return {name: LabelSource(name, path, f"labels/{label_names[0]}/{level}")}
        level0 = _ome_level0(_zarr_attrs(path))
        if level0 is not None:
            return {name: LabelSource(name, path, level0)}
        msg = f"{path} is a Zarr group without label arrays: give the array itself (e.g. {path}/labels)"
        raise InputError(msg)
    found = {n: LabelSource(n, p) for n, p in list_tiffs(path).items()}
    if not found:
        msg = f"{path} holds no TIFF files: give a folder of label TIFFs"
        raise InputError(msg)
    return found


def write_labels_tiff(path: Path, labels: NDArray[np.uint32]) -> None:
    """Write labels as a TIFF, all or nothing (a hidden file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.incomplete")
    try:
        tifffile.imwrite(staging, labels, compression="zlib")
        staging.replace(path)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        msg = f"cannot write {path} ({exc.strerror}): check that its folder is writable"
        raise InputError(msg) from None
