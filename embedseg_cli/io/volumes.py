"""Volumes to segment, opened lazily: TIFF files, Zarr arrays and OME-Zarr images.

:func:`open_volume` reads only metadata and returns a dask array whose chunks follow the
source's, so a volume larger than memory is read block by block when computed, on the
local scheduler or on a ``dask.distributed`` cluster. Every problem with an input is an
:class:`~embedseg_cli.errors.InputError` whose message names the file and says what to do.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import tifffile
import zarr
from dask.array.core import normalize_chunks
from dask.utils import parse_bytes
from numpy.typing import NDArray

from embedseg_cli.errors import InputError
from embedseg_cli.io.tiff import TIFF_SUFFIXES, tiff_voxel_size
from embedseg_cli.io.units import micrometres_per
from embedseg_cli.io.zarr_meta import (
    NGFF_AXES,
    ome_attrs,
    ome_multiscale,
    open_zarr_array,
    read_zarr_attrs,
    scale_of,
    zarr_node_type,
)

__all__ = ["VolumeSource", "open_volume"]

logger = logging.getLogger(__name__)

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
        Micrometres per spatial axis (``Z``, ``Y``, ``X``) where the metadata gives the
        size with a unit; an axis left out is of unknown size.
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
      the voxel size from OME-XML, the ImageJ ``spacing`` and the resolution tags, in
      their units (:func:`~embedseg_cli.io.tiff.tiff_voxel_size`). The axis
      letters are tifffile's, except that samples (``S``, e.g. RGB) become ``C`` and the
      unnamed first axis of a 3-D stack (``Q`` or ``I``) becomes ``Z``;
    * a Zarr array (v2 or v3): axes from its ``dimension_names`` (v3) or
      ``_ARRAY_DIMENSIONS`` (v2) where it has them, else ``YX`` or ``ZYX``. A level of an
      OME-Zarr image takes its axes and voxel size from the image's metadata;
    * an OME-Zarr image (NGFF 0.4 or 0.5; of a ``bioformats2raw`` collection, the first
      image): level 0 of its first multiscale, with the axes of its ``axes`` metadata and
      the voxel size of that level's ``scale`` transformation, in the axes' ``unit`` (a
      space axis without one is of unknown size). A first ``t`` axis of size 1
      is dropped; ``c`` is kept.

    A folder of TIFF files is not a volume: list its files with
    :func:`~embedseg_cli.io.tiff.list_tiffs`.

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
    node_type = zarr_node_type(path)
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
            voxel_size = tiff_voxel_size(tif)
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
    if len(axes) != array.ndim or len(set(axes)) != len(axes) or set(axes) - set(NGFF_AXES):
        return None
    return axes


def _open_zarr_volume(path: Path) -> VolumeSource:
    array = open_zarr_array(path)
    parent = path.parent
    multiscale = (
        ome_multiscale(read_zarr_attrs(parent)) if zarr_node_type(parent) == "group" else None
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


def _ome_axes_and_scale(
    path: Path, multiscale: dict[str, Any], level: int, array: zarr.Array[Any]
) -> tuple[str, dict[str, float]]:
    """Axis letters and voxel size (micrometres) of one level of an OME-Zarr multiscale.

    A space axis has a voxel size where its ``unit`` is a length
    (:func:`~embedseg_cli.io.units.micrometres_per`); without one (or in NGFF 0.1 to 0.3,
    which have no units) it is unknown, with a warning where the scale says anything but 1.
    """
    raw_axes = multiscale.get("axes")
    if raw_axes is None:  # NGFF 0.1 and 0.2: always five axes
        raw_axes = list("tczyx")
    names: list[str] = []
    types: list[str | None] = []
    units: list[str | None] = []
    for axis in raw_axes if isinstance(raw_axes, list) else []:
        if isinstance(axis, dict):
            names.append(str(axis.get("name", "")))
            types.append(axis.get("type"))
            units.append(None if axis.get("unit") is None else str(axis.get("unit")))
        else:
            names.append(str(axis))
            types.append(None)
            units.append(None)
    if len(names) != array.ndim:
        msg = f"{path} lists {len(names)} axes for a {array.ndim}-D array: fix its multiscales axes metadata"
        raise InputError(msg)
    axes = "".join(name.upper() for name in names)
    if len(axes) != array.ndim or set(axes) - set(NGFF_AXES) or len(set(axes)) != len(axes):
        msg = f"{path} has axes {names}: embedseg reads images with t, c, z, y and x axes"
        raise InputError(msg)
    datasets = multiscale["datasets"]
    scale = scale_of(datasets[level].get("coordinateTransformations"), array.ndim)
    overall = scale_of(multiscale.get("coordinateTransformations"), array.ndim)
    if scale is None and overall is None:
        return axes, {}
    scale = [
        a * b
        for a, b in zip(scale or [1.0] * array.ndim, overall or [1.0] * array.ndim, strict=True)
    ]
    voxel_size: dict[str, float] = {}
    unknown: list[str] = []
    for axis, kind, unit, value in zip(axes, types, units, scale, strict=True):
        if axis not in "ZYX" or kind not in (None, "space") or value <= 0:
            continue
        factor = micrometres_per(unit)
        if factor is not None:
            voxel_size[axis] = value * factor
        elif unit or value != 1:
            unknown.append(f"{axis.lower()} ({value:g} {unit or 'without a unit'})")
    if unknown:
        logger.warning(
            "%s gives the scale of %s in no length unit embedseg knows: its voxel size "
            "there is taken as unknown",
            path,
            ", ".join(unknown),
        )
    return axes, voxel_size


def _open_ome_zarr_volume(path: Path) -> VolumeSource:
    attrs = read_zarr_attrs(path)
    multiscale = ome_multiscale(attrs)
    if multiscale is None:
        if "bioformats2raw.layout" in ome_attrs(attrs) and zarr_node_type(path / "0"):
            inner = _open_ome_zarr_volume(path / "0")
            return VolumeSource(
                inner.path, inner.array, inner.axes, inner.voxel_size, _volume_name(path)
            )
        arrays = sorted(p.name for p in path.iterdir() if zarr_node_type(p) == "array")
        hint = f" (e.g. {path / arrays[0]})" if arrays else ""
        msg = f"{path} is a Zarr group but not an OME-Zarr image: give the array to read{hint}"
        raise InputError(msg)
    level_path = str(multiscale["datasets"][0].get("path", ""))
    array = open_zarr_array(path / level_path)
    axes, voxel_size = _ome_axes_and_scale(path, multiscale, 0, array)
    volume = _dask_from_zarr(array)
    if axes.startswith("T") and volume.shape[0] == 1:
        volume, axes = volume[0], axes[1:]
    return VolumeSource(path, volume, axes, voxel_size, _volume_name(path))
