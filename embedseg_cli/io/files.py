"""Reading the user's files: TIFF pairs in folders, with their voxel size.

This module touches external files only; the project store is :mod:`embedseg_cli.io.store`.
Every problem with an input is an :class:`~embedseg_cli.errors.InputError` whose message
names the file and says what to do.

Volumes to segment (:func:`open_volume`) are opened lazily as dask arrays, and label
images are written as OME-Zarr 0.4 or 0.5 (:func:`write_ome_zarr_labels`) from dask, so
neither needs the whole image in memory.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import itertools
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numcodecs
import numpy as np
import tifffile
import zarr
from dask.array.core import normalize_chunks
from dask.utils import parse_bytes
from numpy.typing import NDArray
from PIL import Image

from embedseg_cli.errors import InputError, OutputExistsError, OutputLockedError
from embedseg_cli.records import Split

__all__ = [
    "LabelSource",
    "NgffVersion",
    "TiffImage",
    "TiffPair",
    "VolumeSource",
    "as_label_array",
    "check_output_apart",
    "drop_singleton_axes",
    "find_label_images",
    "find_tiff_pairs",
    "image_ngff_version",
    "is_ome_zarr_label_image",
    "is_zarr",
    "list_tiffs",
    "lock_output",
    "ome_zarr_label_path",
    "open_volume",
    "read_tiff",
    "read_tiff_description",
    "replace_path",
    "write_image_tiff",
    "write_labels_tiff",
    "write_ome_zarr_labels",
    "write_png",
    "write_table_csv",
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


def drop_singleton_axes(data: NDArray[Any], keep: int = 2) -> NDArray[Any]:
    """``data`` without its axes of length 1, keeping at least ``keep`` axes.

    Unlike ``np.squeeze`` it never turns a 1x1 image into a scalar.

    Examples
    --------
    >>> drop_singleton_axes(np.zeros((1, 5, 4))).shape, drop_singleton_axes(np.zeros((1, 1))).shape
    ((5, 4), (1, 1))
    """
    singletons = [axis for axis, n in enumerate(data.shape) if n == 1]
    drop = singletons[: max(0, data.ndim - keep)]
    return data.squeeze(axis=tuple(drop)) if drop else data


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


def write_labels_tiff(
    path: Path, labels: NDArray[np.uint32], description: str | None = None
) -> None:
    """Write labels as a TIFF, all or nothing (a hidden file renamed into place).

    ``description`` (7-bit ASCII) goes into the first ImageDescription tag, where
    :func:`read_tiff_description` finds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.incomplete")
    try:
        tifffile.imwrite(staging, labels, compression="zlib", description=description)
        staging.replace(path)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        msg = f"cannot write {path} ({exc.strerror}): check that its folder is writable"
        raise InputError(msg) from None


def read_tiff_description(path: Path) -> str | None:
    """The first ImageDescription of a TIFF, None where it has none or cannot be read."""
    try:
        with tifffile.TiffFile(path) as tif:
            description = tif.pages.first.description
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return description or None


def write_image_tiff(path: Path, image: NDArray[Any]) -> None:
    """Write an image as a TIFF, all or nothing (a hidden file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.incomplete")
    try:
        tifffile.imwrite(staging, image)
        staging.replace(path)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        msg = f"cannot write {path} ({exc.strerror}): check that its folder is writable"
        raise InputError(msg) from None


def write_png(path: Path, rgb: NDArray[np.uint8]) -> None:
    """Write an RGB picture (Y x X x 3, uint8) as a PNG, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.incomplete")
    try:
        Image.fromarray(np.ascontiguousarray(rgb)).save(staging, format="PNG")
        staging.replace(path)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        msg = f"cannot write {path} ({exc.strerror or exc}): check that its folder is writable"
        raise InputError(msg) from None


def write_table_csv(path: Path, columns: dict[str, NDArray[Any]]) -> None:
    """Write equal-length columns as a CSV file with a header, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.incomplete")
    rows = zip(*(np.asarray(c).tolist() for c in columns.values()), strict=True)
    try:
        with staging.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(
                [round(v, 3) if isinstance(v, float) else v for v in row] for row in rows
            )
        staging.replace(path)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        msg = f"cannot write {path} ({exc.strerror or exc}): check that its folder is writable"
        raise InputError(msg) from None


# Volumes to segment, opened lazily ---------------------------------------------------------

NgffVersion = Literal["0.4", "0.5"]
"""The OME-Zarr (NGFF) versions written: 0.4 on Zarr v2, 0.5 on Zarr v3."""

_NGFF_AXES = "TCZYX"
_VOLUME_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")


@dataclass(frozen=True)
class VolumeSource:
    """An image on disk, opened lazily as a dask array.

    Attributes
    ----------
    path : Path
        The TIFF file, Zarr array or OME-Zarr image that was opened.
    array : dask.array.Array
        The pixels, not yet read. Its chunks are whole multiples of the source's (TIFF
        pages, strips or tiles; Zarr chunks or shards), joined up to dask's
        ``array.chunk-size`` (default 128 MiB). It pickles, so it can be computed on a ``dask.distributed``
        cluster whose workers see the same file system.
    axes : str
        One upper-case letter per axis of ``array``: ``T``, ``C``, ``Z``, ``Y``, ``X`` as
        found (e.g. ``"YX"``, ``"ZYX"``, ``"CYX"``, ``"YXC"`` for an RGB TIFF); a TIFF may
        also give ``Q`` or ``I`` for an axis it does not name.
    voxel_size : dict of str to float
        Pixel size per spatial axis (``Z``, ``Y``, ``X``) where the metadata gives it, in the
        source's unit.
    name : str
        The file or folder name without its extensions (``.ome.tif``, ``.zarr``, ...).
    """

    path: Path
    array: da.Array
    axes: str
    voxel_size: dict[str, float]
    name: str


def open_volume(path: Path) -> VolumeSource:
    """Open an image lazily: a TIFF file, a Zarr array or an OME-Zarr image.

    Only metadata is read here; pixels are read chunk by chunk when the dask array is
    computed, so a volume larger than memory can be processed block-wise.

    ``path`` may be

    * a TIFF file (OME-TIFF, ImageJ or plain): its first series at full resolution, with
      the voxel size from OME-XML, the ImageJ ``spacing`` and the resolution tags. The axis
      letters are tifffile's, except that samples (``S``, e.g. RGB) become ``C`` and the
      unnamed first axis of a 3-D stack (``Q`` or ``I``) becomes ``Z``;
    * a Zarr array (v2 or v3): axes from its ``dimension_names`` (v3) or
      ``_ARRAY_DIMENSIONS`` (v2) where it has them, else ``YX`` or ``ZYX``. A level of an
      OME-Zarr image takes its axes and voxel size from the image's metadata;
    * an OME-Zarr image (NGFF 0.4 or 0.5; of a ``bioformats2raw`` collection, the first
      image): level 0 of its first multiscale, with the axes of its ``axes`` metadata and
      the voxel size of that level's ``scale`` transformation. A first ``t`` axis of size 1
      is dropped; ``c`` is kept.

    A folder of TIFF files is not a volume: list its files with :func:`list_tiffs`.

    Raises
    ------
    InputError
        Where ``path`` does not exist, is neither a TIFF file nor a Zarr array or OME-Zarr
        image, or cannot be read.
    """
    if not path.exists():
        msg = f"{path} does not exist: give a TIFF file, a Zarr array or an OME-Zarr image"
        raise InputError(msg)
    if path.is_file():
        if path.suffix.lower() not in TIFF_SUFFIXES:
            msg = (
                f"{path} is not a TIFF file: give a TIFF file, a Zarr array or an OME-Zarr "
                "image (convert other formats to one of these)"
            )
            raise InputError(msg)
        return _not_empty(_open_tiff_volume(path))
    node_type = _zarr_node_type(path)
    if node_type == "array":
        return _not_empty(_open_zarr_volume(path))
    if node_type == "group":
        return _not_empty(_open_ome_zarr_volume(path))
    msg = (
        f"{path} is a folder but not a Zarr array or OME-Zarr image: give a TIFF file, "
        "a Zarr array or an OME-Zarr image (TIFFs in a folder are read one file at a time)"
    )
    raise InputError(msg)


def _not_empty(source: VolumeSource) -> VolumeSource:
    """Refuse a volume with an axis of length 0: it has no pixels to work on."""
    if 0 in source.array.shape:
        shape = "x".join(str(n) for n in source.array.shape)
        msg = (
            f"{source.path} is empty (shape {shape}, axes {source.axes}): give an image with pixels"
        )
        raise InputError(msg)
    return source


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _dask_chunks(
    shape: tuple[int, ...], source: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[int, ...] | tuple[tuple[int, ...], ...]:
    """Chunks that are whole multiples of the source's, up to dask's ``array.chunk-size``."""
    source = tuple(max(1, min(c, s)) for c, s in zip(source, shape, strict=True))
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    if 0 in shape or math.prod(source) * dtype.itemsize >= limit:
        return source
    chunks: tuple[tuple[int, ...], ...] = normalize_chunks(  # type: ignore[no-untyped-call]
        "auto", shape, limit=limit, dtype=dtype, previous_chunks=source
    )
    return chunks


class _LazyTiff:
    """The first series of a TIFF file at full resolution, read region by region.

    The file is opened at the first read and kept open for the next ones. Pickling leaves
    the open file behind, so dask.distributed workers open the file themselves.
    """

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], chunks: tuple[int, ...]
    ) -> None:
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)
        self.chunks = chunks
        self._lock = threading.Lock()
        self._store: Any = None
        self._array: zarr.Array[Any] | None = None

    def __del__(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype, "chunks": self.chunks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.shape = state["shape"]
        self.dtype = state["dtype"]
        self.ndim = len(self.shape)
        self.chunks = state["chunks"]
        self._lock = threading.Lock()
        self._store = None
        self._array = None

    def __dask_tokenize__(self) -> tuple[object, ...]:
        try:
            stat = self.path.stat()
            version: tuple[int, int] = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            version = (0, 0)
        return ("embedseg-tiff", str(self.path.absolute()), *version, self.shape, str(self.dtype))

    def __getitem__(self, key: Any) -> NDArray[Any]:
        try:
            with self._lock:
                if self._array is None:
                    self._store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
                    self._array = zarr.open_array(self._store, mode="r")
                array = self._array
            return np.asarray(array[key])
        except (OSError, KeyError, IndexError, tifffile.TiffFileError) as exc:
            msg = f"{self.path} cannot be read ({exc}): check that the file is complete and still there"
            raise InputError(msg) from None


def _tiff_axes(axes: str) -> str:
    axes = axes.upper()
    if "S" in axes and "C" not in axes:
        axes = axes.replace("S", "C")
    if len(axes) == 3 and axes[0] in "QI" and axes[1:] == "YX":
        axes = "Z" + axes[1:]
    return axes


def _open_tiff_volume(path: Path) -> VolumeSource:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            tiff_axes = str(series.axes)
            voxel_size = _voxel_size(tif)
            store = series.aszarr(level=0)
            try:
                level0 = zarr.open_array(store, mode="r")
                shape = tuple(int(n) for n in level0.shape)
                dtype = np.dtype(level0.dtype)
                source_chunks = tuple(int(n) for n in level0.chunks)
            finally:
                store.close()
    except (
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        tifffile.TiffFileError,
    ) as exc:
        msg = f"{path} cannot be read as a TIFF ({exc}): check that the file is complete"
        raise InputError(msg) from None
    axes = _tiff_axes(tiff_axes)
    if len(axes) != len(shape):
        msg = f"{path} has axes {tiff_axes} for a {len(shape)}-D image: save it again as a plain or ImageJ TIFF"
        raise InputError(msg)
    reader = _LazyTiff(path, shape, dtype, source_chunks)
    array: da.Array = da.from_array(  # type: ignore[no-untyped-call]
        reader,
        chunks=_dask_chunks(shape, source_chunks, dtype),
        asarray=True,
        fancy=False,
        meta=np.empty((0,) * len(shape), dtype=dtype),
    )
    spatial = {axis: size for axis, size in voxel_size.items() if axis in axes}
    return VolumeSource(path, array, axes, spatial, _volume_name(path))


def _open_zarr_array(path: Path) -> zarr.Array[Any]:
    try:
        return zarr.open_array(path, mode="r")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{path} cannot be read as a Zarr array ({exc}): check that it is complete"
        raise InputError(msg) from None


def _dask_from_zarr(array: zarr.Array[Any]) -> da.Array:
    shape = tuple(int(n) for n in array.shape)
    source = tuple(int(n) for n in (array.shards or array.chunks))
    chunks = _dask_chunks(shape, source, np.dtype(array.dtype))
    volume: da.Array = da.from_zarr(array, chunks=chunks)  # type: ignore[no-untyped-call]
    return volume


def _zarr_dimension_names(array: zarr.Array[Any]) -> str | None:
    """The axis letters a Zarr array names itself, if it names them all with known letters."""
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if not isinstance(names, list | tuple) or len(names) != array.ndim:
        return None
    axes = "".join(str(n).upper() for n in names if isinstance(n, str))
    if len(axes) != array.ndim or len(set(axes)) != len(axes) or set(axes) - set(_NGFF_AXES):
        return None
    return axes


def _open_zarr_volume(path: Path) -> VolumeSource:
    array = _open_zarr_array(path)
    parent = path.parent
    multiscale = (
        _ome_multiscale(_read_attrs(parent)) if _zarr_node_type(parent) == "group" else None
    )
    datasets = multiscale.get("datasets", []) if multiscale is not None else []
    paths = [str(d.get("path")) for d in datasets if isinstance(d, dict)]
    if multiscale is not None and path.name in paths:
        # A level of an OME-Zarr image: its metadata say what the axes and pixels are.
        axes, voxel_size = _ome_axes_and_scale(parent, multiscale, paths.index(path.name), array)
        return VolumeSource(path, _dask_from_zarr(array), axes, voxel_size, _volume_name(parent))
    named = _zarr_dimension_names(array)
    if named is None:
        if array.ndim not in (2, 3):
            msg = (
                f"{path} is a {array.ndim}-D Zarr array without axis names: give it "
                "dimension_names (Zarr v3) or write it as an OME-Zarr image"
            )
            raise InputError(msg)
        named = "YX" if array.ndim == 2 else "ZYX"
    return VolumeSource(path, _dask_from_zarr(array), named, {}, _volume_name(path))


def _read_attrs(path: Path) -> dict[str, Any]:
    try:
        return _zarr_attrs(path)
    except (OSError, ValueError) as exc:
        msg = f"the Zarr metadata of {path} cannot be read ({exc}): check that it is complete"
        raise InputError(msg) from None


def _ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME-Zarr metadata: under ``ome`` in 0.5, the attributes themselves before."""
    ome = attrs.get("ome", attrs)
    return ome if isinstance(ome, dict) else {}


def _ome_multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The first multiscale of an OME-Zarr image's attributes, if it has one with levels."""
    multiscales = _ome_attrs(attrs).get("multiscales")
    if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict):
        datasets = multiscales[0].get("datasets")
        if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
            return multiscales[0]
    return None


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    if not isinstance(transforms, list):
        return None
    for transform in transforms:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = transform.get("scale")
            if isinstance(scale, list) and len(scale) == ndim:
                return [float(value) for value in scale]
    return None


def _ome_axes_and_scale(
    path: Path, multiscale: dict[str, Any], level: int, array: zarr.Array[Any]
) -> tuple[str, dict[str, float]]:
    """Axis letters and voxel size of one level of an OME-Zarr multiscale."""
    raw_axes = multiscale.get("axes")
    if raw_axes is None:  # NGFF 0.1 and 0.2: always five axes
        raw_axes = list("tczyx")
    names: list[str] = []
    types: list[str | None] = []
    for axis in raw_axes if isinstance(raw_axes, list) else []:
        if isinstance(axis, dict):
            names.append(str(axis.get("name", "")))
            types.append(axis.get("type"))
        else:
            names.append(str(axis))
            types.append(None)
    if len(names) != array.ndim:
        msg = f"{path} lists {len(names)} axes for a {array.ndim}-D array: fix its multiscales axes metadata"
        raise InputError(msg)
    axes = "".join(name.upper() for name in names)
    if len(axes) != array.ndim or set(axes) - set(_NGFF_AXES) or len(set(axes)) != len(axes):
        msg = f"{path} has axes {names}: embedseg reads images with t, c, z, y and x axes"
        raise InputError(msg)
    datasets = multiscale["datasets"]
    scale = _scale_of(datasets[level].get("coordinateTransformations"), array.ndim)
    overall = _scale_of(multiscale.get("coordinateTransformations"), array.ndim)
    if scale is None and overall is None:
        return axes, {}
    scale = [
        a * b
        for a, b in zip(scale or [1.0] * array.ndim, overall or [1.0] * array.ndim, strict=True)
    ]
    voxel_size = {
        axis: value
        for axis, kind, value in zip(axes, types, scale, strict=True)
        if axis in "ZYX" and kind in (None, "space") and value > 0
    }
    return axes, voxel_size


def _open_ome_zarr_volume(path: Path) -> VolumeSource:
    attrs = _read_attrs(path)
    multiscale = _ome_multiscale(attrs)
    if multiscale is None:
        if "bioformats2raw.layout" in _ome_attrs(attrs) and _zarr_node_type(path / "0"):
            inner = _open_ome_zarr_volume(path / "0")
            return VolumeSource(
                inner.path, inner.array, inner.axes, inner.voxel_size, _volume_name(path)
            )
        arrays = sorted(p.name for p in path.iterdir() if _zarr_node_type(p) == "array")
        hint = f" (e.g. {path / arrays[0]})" if arrays else ""
        msg = f"{path} is a Zarr group but not an OME-Zarr image: give the array to read{hint}"
        raise InputError(msg)
    level_path = str(multiscale["datasets"][0].get("path", ""))
    array = _open_zarr_array(path / level_path)
    axes, voxel_size = _ome_axes_and_scale(path, multiscale, 0, array)
    volume = _dask_from_zarr(array)
    if axes.startswith("T") and volume.shape[0] == 1:
        volume, axes = volume[0], axes[1:]
    return VolumeSource(path, volume, axes, voxel_size, _volume_name(path))


# OME-Zarr label images ---------------------------------------------------------------------

_MIN_PYRAMID_SIZE = 256
"""Levels are added until the last one is smaller than this in y and x."""


def image_ngff_version(path: Path) -> NgffVersion | None:
    """The OME-Zarr version labels added to the image at ``path`` must be written in.

    That is ``"0.5"`` for an OME-Zarr image on Zarr v3 and ``"0.4"`` for one on Zarr v2;
    ``None`` where ``path`` is no OME-Zarr image.
    """
    if _zarr_node_type(path) != "group":
        return None
    try:
        attrs = _zarr_attrs(path)
    except (OSError, ValueError):
        return None
    if _ome_multiscale(attrs) is None:
        return None
    return "0.5" if (path / "zarr.json").is_file() else "0.4"


def ome_zarr_label_path(image: Path, name: str = "embedseg") -> Path:
    """Where :func:`write_ome_zarr_labels` puts the labels ``name`` of an OME-Zarr image."""
    return image / "labels" / name


def write_ome_zarr_labels(
    path: Path,
    labels: da.Array | NDArray[np.integer[Any]],
    *,
    axes: str,
    voxel_size: Sequence[float],
    name: str = "embedseg",
    levels: int | None = None,
    ngff_version: NgffVersion = "0.5",
    image_group: bool = False,
    unit: str | None = None,
) -> None:
    """Write a label image as OME-Zarr, with a multiscale pyramid.

    The labels are written level by level from dask, each level read back from the one
    written before, so labels larger than memory (and lazy predictions, computed once) can
    be written. Level ``k + 1`` keeps every 2nd voxel of level ``k`` (nearest neighbour) in
    y and x, and in z where the z voxel size is at most twice the y voxel size at level
    ``k``; levels are added until one is smaller than 256 pixels in y and x, or there are
    ``levels`` of them. Each level's ``scale`` transformation is ``voxel_size`` times its
    downsampling factors. The label dtype is kept. Everything is written to a hidden
    sibling folder first and renamed into place, so an interrupted write leaves no partial
    label image; an existing label image at the destination is replaced.

    Parameters
    ----------
    path : Path
        With ``image_group=False``, the label image to write: a multiscale group whose
        attributes hold ``multiscales`` and ``image-label``, with arrays ``0``, ``1``, ...
        With ``image_group=True``, an existing OME-Zarr image; the labels go to
        ``path/labels/<name>`` and ``name`` is added to the list in ``path/labels``.
    labels : dask.array.Array or ndarray
        Integer labels (0 = background), one axis per letter of ``axes``.
    axes : str
        Axis letters in OME-Zarr order, e.g. ``"YX"``, ``"ZYX"``, ``"CZYX"``.
    voxel_size : sequence of float
        Pixel size per spatial axis (``z``, ``y``, ``x`` among ``axes``), or per axis.
    name : str
        Name of the label image (and of its multiscale).
    levels : int, optional
        Number of pyramid levels. By default the rule above, or, with ``image_group``, as
        many as the image has (OME-Zarr 0.5 requires it), downsampled like the image.
    ngff_version : {"0.5", "0.4"}
        OME-Zarr 0.5 (Zarr v3, metadata under the ``ome`` attribute, ``dimension_names``)
        or 0.4 (Zarr v2, ``.zattrs``, Blosc-compressed chunks). With ``image_group``, it
        must match the image (see :func:`image_ngff_version`).
    image_group : bool
        Whether ``path`` is an OME-Zarr image to add the labels to.
    unit : str, optional
        Unit of ``voxel_size`` for the spatial axes (e.g. ``"micrometer"``); none is
        written by default.

    Raises
    ------
    ValueError
        For labels that are not integers or do not match ``axes``, axes out of OME-Zarr
        order, a bad ``voxel_size``, ``levels`` or ``name``.
    InputError
        Where ``image_group`` is set and ``path`` is not an OME-Zarr image of
        ``ngff_version``, or the labels cannot be written.
    OutputExistsError
        Where the destination exists and is not an OME-Zarr label image.
    """
    if ngff_version not in ("0.4", "0.5"):
        msg = f"ngff_version must be '0.4' or '0.5', not {ngff_version!r}"
        raise ValueError(msg)
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        msg = f"label image name {name!r} must be a plain folder name"
        raise ValueError(msg)
    if levels is not None and levels < 1:
        msg = f"levels must be at least 1, not {levels}"
        raise ValueError(msg)
    ndim = labels.ndim
    letters = _label_axes(axes, ndim)
    dtype = np.dtype(labels.dtype)
    if not np.issubdtype(dtype, np.integer):
        msg = f"labels must have an integer dtype, not {dtype}"
        raise ValueError(msg)
    scale = _axis_scale(letters, voxel_size)
    shape = tuple(int(n) for n in labels.shape)
    chunks = _label_chunks(labels, letters)
    array: da.Array
    if isinstance(labels, da.Array):
        array = labels
    else:
        array = da.from_array(np.asarray(labels), chunks=chunks)  # type: ignore[no-untyped-call]

    steps: list[tuple[int, ...]] | None = None
    if image_group:
        _check_image_group(path, ngff_version)
        target = ome_zarr_label_path(path, name)
        image_levels, image_steps = _image_levels(path, letters, shape)
        if levels is None:
            levels, steps = image_levels, image_steps
    else:
        target = path
    if steps is None:
        steps = _pyramid_steps(shape, letters, scale, levels)
    _check_replaceable(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.incomplete-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = target.parent / f".{target.name}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        _write_label_pyramid(
            staging,
            array,
            letters=letters,
            scale=scale,
            steps=steps,
            chunks=chunks,
            version=ngff_version,
            name=name,
            source_image=image_group,
            unit=unit,
        )
        replace_path(staging, target)
        if image_group:
            _list_label(path / "labels", name, ngff_version)
    except OSError as exc:
        msg = f"cannot write {target} ({exc.strerror or exc}): check that its folder is writable and has space"
        raise InputError(msg) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _label_axes(axes: str, ndim: int) -> str:
    letters = axes.upper()
    if len(letters) != ndim:
        msg = f"axes {axes!r} name {len(letters)} axes but the labels have {ndim}"
        raise ValueError(msg)
    order = [_NGFF_AXES.find(letter) for letter in letters]
    if (
        "Y" not in letters
        or "X" not in letters
        or min(order) < 0
        or any(a >= b for a, b in itertools.pairwise(order))
    ):
        msg = f"axes {axes!r} must be some of t, c, z, y, x in that order, with y and x"
        raise ValueError(msg)
    return letters


def _axis_scale(letters: str, voxel_size: Sequence[float]) -> list[float]:
    values = [float(v) for v in voxel_size]
    spatial = [i for i, letter in enumerate(letters) if letter in "ZYX"]
    if len(values) == len(letters):
        scale = values
    elif len(values) == len(spatial):
        scale = [1.0] * len(letters)
        for i, value in zip(spatial, values, strict=True):
            scale[i] = value
    else:
        msg = f"voxel_size {tuple(values)} must give one size per spatial axis of {letters!r}"
        raise ValueError(msg)
    if not all(math.isfinite(v) and v > 0 for v in scale):
        msg = f"voxel_size {tuple(values)} must be positive"
        raise ValueError(msg)
    return scale


def _label_chunks(labels: Any, letters: str) -> tuple[int, ...]:
    """Zarr chunks: the dask array's where regular and of a sensible size, else a default."""
    itemsize = np.dtype(labels.dtype).itemsize
    if isinstance(labels, da.Array) and all(
        all(c == dim[0] for c in dim[:-1]) and dim[-1] <= dim[0] for dim in labels.chunks if dim
    ):
        size = tuple(int(c) for c in labels.chunksize)
        if 2**18 <= math.prod(size) * itemsize <= 2**24:
            return size
    default = {"T": 1, "C": 1, "Z": 64, "Y": 256, "X": 256} if "Z" in letters else {}
    default = default or {"T": 1, "C": 1, "Y": 1024, "X": 1024}
    return tuple(
        max(1, min(default[letter], int(n)))
        for letter, n in zip(letters, labels.shape, strict=True)
    )


def _pyramid_steps(
    shape: tuple[int, ...], letters: str, scale: list[float], levels: int | None
) -> list[tuple[int, ...]]:
    """Downsampling factor per axis from each level to the next."""
    size = list(shape)
    current = list(scale)
    y, x, z = letters.index("Y"), letters.index("X"), letters.find("Z")
    steps: list[tuple[int, ...]] = []
    while True:
        if levels is not None:
            if len(steps) + 1 >= levels:
                break
        elif max(size[y], size[x]) < _MIN_PYRAMID_SIZE:
            break
        step = [1] * len(size)
        for axis in (y, x):
            if size[axis] > 1:
                step[axis] = 2
        if z >= 0 and size[z] > 1 and current[z] <= 2 * current[y]:
            step[z] = 2
        steps.append(tuple(step))
        size = [-(-n // s) for n, s in zip(size, step, strict=True)]
        current = [c * s for c, s in zip(current, step, strict=True)]
    return steps


def _image_levels(
    image: Path, letters: str, shape: tuple[int, ...]
) -> tuple[int, list[tuple[int, ...]] | None]:
    """Level count of an OME-Zarr image, and its steps along ``letters`` if integer.

    Raises
    ------
    InputError
        Where the labels' ``shape`` differs from the image's along a spatial axis.
    """
    multiscale = _ome_multiscale(_read_attrs(image))
    if multiscale is None:  # checked by the caller
        return 1, []
    datasets = multiscale["datasets"]
    raw_axes = multiscale.get("axes") or list("tczyx")
    names = [str(a.get("name", "")) if isinstance(a, dict) else str(a) for a in raw_axes]
    index = {n.upper(): i for i, n in enumerate(names)}
    level0 = _open_zarr_array(image / str(datasets[0].get("path", "")))
    image_shape = tuple(int(n) for n in level0.shape)
    for letter, size in zip(letters, shape, strict=True):
        i = index.get(letter)
        if letter in "ZYX" and i is not None and i < len(image_shape) and image_shape[i] != size:
            msg = (
                f"labels of shape {shape} ({letters}) do not fit the image {image} of shape "
                f"{image_shape} ({''.join(names).upper()}): segment the image itself, at full resolution"
            )
            raise InputError(msg)
    scales = [_scale_of(d.get("coordinateTransformations"), len(names)) for d in datasets]
    if any(s is None for s in scales):
        return len(datasets), None
    steps: list[tuple[int, ...]] = []
    for before, after in itertools.pairwise(scales):
        assert before is not None
        assert after is not None
        step = []
        for letter in letters:
            i = index.get(letter)
            ratio = 1.0 if i is None or before[i] <= 0 else after[i] / before[i]
            factor = round(ratio)
            if factor < 1 or abs(ratio - factor) > 1e-3 * factor:
                return len(datasets), None
            step.append(factor)
        steps.append(tuple(step))
    return len(datasets), steps


def _zarr_format_of(path: Path) -> int | None:
    if (path / "zarr.json").is_file():
        return 3
    if (path / ".zgroup").is_file() or (path / ".zarray").is_file():
        return 2
    return None


def _check_image_group(image: Path, version: NgffVersion) -> None:
    if not image.exists():
        msg = f"{image} does not exist: labels can be added only to an existing OME-Zarr image"
        raise InputError(msg)
    found = image_ngff_version(image)
    if found is None:
        msg = f"{image} is not an OME-Zarr image: write the labels to a separate OME-Zarr instead"
        raise InputError(msg)
    if found != version:
        msg = f"{image} is an OME-Zarr {found} image: write its labels as OME-Zarr {found} (--ngff-version {found})"
        raise InputError(msg)
    labels_dir = image / "labels"
    wanted = 3 if version == "0.5" else 2
    if labels_dir.exists() and (
        not labels_dir.is_dir()
        or _zarr_node_type(labels_dir) == "array"
        or _zarr_format_of(labels_dir) not in (None, wanted)
    ):
        msg = f"{labels_dir} is not an OME-Zarr {version} labels group: move it out of the image"
        raise InputError(msg)


def _check_replaceable(target: Path) -> None:
    """Refuse to replace anything but an OME-Zarr label image (or an empty folder)."""
    if not target.exists():
        return
    if target.is_dir():
        if not any(target.iterdir()):
            return
        try:
            if "image-label" in _ome_attrs(_zarr_attrs(target)):
                return
        except (OSError, ValueError):
            pass
    msg = f"{target} exists and is not an OME-Zarr label image: remove it or write the labels elsewhere"
    raise OutputExistsError(msg)


def _write_label_pyramid(
    folder: Path,
    labels: da.Array,
    *,
    letters: str,
    scale: list[float],
    steps: list[tuple[int, ...]],
    chunks: tuple[int, ...],
    version: NgffVersion,
    name: str,
    source_image: bool,
    unit: str | None,
) -> None:
    options: dict[str, Any]
    if version == "0.5":
        group = zarr.open_group(folder, mode="w", zarr_format=3)
        options = {"dimension_names": list(letters.lower())}
    else:
        group = zarr.open_group(folder, mode="w", zarr_format=2)
        options = {
            "chunk_key_encoding": {"name": "v2", "separator": "/"},
            "compressors": numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
        }
    factors = [1] * len(letters)
    datasets: list[dict[str, Any]] = []
    level = labels
    stored: zarr.Array[Any] | None = None
    for k in range(len(steps) + 1):
        if stored is not None:
            # Each level is read back from the one written before: a lazy input is computed once.
            step = steps[k - 1]
            above: da.Array = da.from_zarr(stored)  # type: ignore[no-untyped-call]
            level = above[tuple(slice(None, None, s) for s in step)]
            factors = [f * s for f, s in zip(factors, step, strict=True)]
        level_chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, level.shape, strict=True))
        stored = group.create_array(
            str(k),
            shape=tuple(int(n) for n in level.shape),
            chunks=level_chunks,
            dtype=level.dtype,
            fill_value=0,
            **options,
        )
        aligned: da.Array = level.rechunk(level_chunks)  # type: ignore[no-untyped-call]
        da.store(aligned, stored, lock=False)  # type: ignore[arg-type]
        level_scale = [s * f for s, f in zip(scale, factors, strict=True)]
        datasets.append(
            {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": level_scale}]}
        )

    kinds = {"T": "time", "C": "channel"}
    axes_meta: list[dict[str, str]] = []
    for letter in letters:
        axis = {"name": letter.lower(), "type": kinds.get(letter, "space")}
        if unit is not None and axis["type"] == "space":
            axis["unit"] = unit
        axes_meta.append(axis)
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": axes_meta,
        "datasets": datasets,
        "type": "nearest",
        "metadata": {"method": "every 2nd voxel of the level above, per downsampled axis"},
    }
    image_label: dict[str, Any] = {"source": {"image": "../../"}} if source_image else {}
    if version == "0.5":
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [multiscale],
            "image-label": image_label,
        }
    else:
        multiscale = {"version": "0.4", **multiscale}
        group.attrs.update(
            {"multiscales": [multiscale], "image-label": {"version": "0.4", **image_label}}
        )


def check_output_apart(
    out: Path, inputs: Mapping[str, Path | None], *, option: str = "--out"
) -> None:
    """Refuse an output path that is one of the inputs, holds one or lies inside one.

    Replacing such an output (``--overwrite``) would delete the inputs with it, and an
    output written inside an input changes that input (a folder of images gains a file the
    next run reads as an image). Paths are compared resolved, so relative paths and
    symbolic links cannot hide an overlap.

    Parameters
    ----------
    out : Path
        The path the command writes (it need not exist).
    inputs : mapping of str to Path or None
        The command's inputs by the name the user knows them by (``"SRC"``, ``"--image"``);
        None values are skipped.
    option : str
        How the message names ``out``: the option that gave it (``"--table"``) or what it
        is (``"the work folder"``).

    Raises
    ------
    InputError
        Where ``out`` is an input, an ancestor of one or inside one.

    Examples
    --------
    >>> check_output_apart(Path("results/labels.tif"), {"PRED": Path("predictions")})
    """
    target = out.resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = path.resolve()
        if target == source:
            msg = (
                f"{option} {out} is the input {name} {path}: choose another {option} "
                "(an output never replaces an input)"
            )
            raise InputError(msg)
        if target in source.parents:
            msg = (
                f"{option} {out} contains the input {name} {path}: choose an {option} outside "
                "it (replacing it would delete the input)"
            )
            raise InputError(msg)
        if source in target.parents:
            msg = (
                f"{option} {out} is inside the input {name} {path}: choose an {option} outside "
                "it (an output never changes an input)"
            )
            raise InputError(msg)


@contextlib.contextmanager
def lock_output(lock: Path, output: Path) -> Iterator[None]:
    """Hold ``lock`` (an OS file lock) while writing ``output``, or refuse at once.

    The lock file names the holder (process id, host, start time) for the refusal message.
    The operating system releases the lock when the process ends, killed or not, so a lock
    file left by a dead run is taken over. The file is removed on release while still
    held, and a lock taken on a file that was removed meanwhile is taken again on the new
    file, so two processes never hold the lock of one path at once. ``flock`` locks are
    reliable on local disks; on network file systems they are as reliable as the server.

    Raises
    ------
    OutputLockedError
        Where another process holds the lock.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 1024).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            msg = (
                f"{output} is being written by another run ({holder}): wait for it to finish, "
                "or choose another --out"
            )
            raise OutputLockedError(msg) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def is_ome_zarr_label_image(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr label image and holds nothing else.

    It is a Zarr group with ``image-label`` metadata whose entries are its metadata files
    and the levels its multiscale lists, which is what :func:`write_ome_zarr_labels` writes.
    """
    if path.is_symlink() or _zarr_node_type(path) != "group":
        return False
    try:
        attrs = _zarr_attrs(path)
    except (OSError, ValueError):
        return False
    ome = _ome_attrs(attrs)
    multiscales = ome.get("multiscales")
    if "image-label" not in ome or not isinstance(multiscales, list) or not multiscales:
        return False
    levels = {
        str(dataset.get("path"))
        for multiscale in multiscales
        if isinstance(multiscale, dict)
        for dataset in multiscale.get("datasets", [])
        if isinstance(dataset, dict)
    }
    allowed = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"} | levels
    return all(entry.name in allowed for entry in path.iterdir())


def replace_path(staging: Path, target: Path) -> None:
    """Put ``staging`` (a file or folder) in place of ``target``, which is kept on failure."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        old.rename(target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _list_label(labels_dir: Path, name: str, version: NgffVersion) -> None:
    """Add ``name`` to the label images listed by an OME-Zarr image's ``labels`` group."""
    group = zarr.open_group(labels_dir, mode="a", zarr_format=3 if version == "0.5" else 2)
    attrs: dict[str, Any] = dict(group.attrs)
    if version == "0.5":
        ome = dict(attrs.get("ome") or {})
        names = [str(n) for n in ome.get("labels", [])]
        ome.update(version="0.5", labels=[*names, name] if name not in names else names)
        group.attrs["ome"] = ome
    else:
        names = [str(n) for n in attrs.get("labels", [])]
        group.attrs["labels"] = [*names, name] if name not in names else names
