"""An image written as a one-level OME-Zarr 0.5 image, with its axes and voxel size.

This is how an image held in memory (or as a dask array, written chunk by chunk) becomes an
input that ``predict`` reads like any file: :func:`~embedseg_cli.io.volumes.open_volume`
takes its axes and voxel size back from the metadata written here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.core.common import JSON

from embedseg_cli.io.atomic import cannot_write
from embedseg_cli.io.units import NGFF_MICROMETRE
from embedseg_cli.io.zarr_meta import NGFF_AXES

__all__ = ["write_ome_zarr_image"]

_CHUNK = {"T": 1, "C": 1, "Z": 32, "Y": 256, "X": 256}
"""Chunk edge per axis of a volume; images (no ``Z``) get 1024x1024 planes."""


def write_ome_zarr_image(
    path: Path,
    image: da.Array | NDArray[Any],
    *,
    axes: str,
    voxel_size: Sequence[float] | None = None,
) -> None:
    """Write ``image`` to ``path`` as an OME-Zarr 0.5 image of one level (Zarr v3).

    A dask array is written chunk by chunk, so it need not fit in memory. The dtype is
    kept. Nothing is staged: this writes scratch inputs, which their caller removes.

    Parameters
    ----------
    path : Path
        The image to create; it must not exist.
    image : dask.array.Array or ndarray
        The pixels, one axis per letter of ``axes``.
    axes : str
        Axis letters in OME-Zarr order, e.g. ``"YX"``, ``"CYX"``, ``"ZYX"``.
    voxel_size : sequence of float, optional
        Pixel size in micrometres along each spatial axis (``Z``, ``Y``, ``X`` among
        ``axes``), written as the level's ``scale`` with the axes' unit ``micrometer``.
        None writes no ``scale`` and no unit: embedseg then reads the voxel size as unknown,
        where OME-Zarr 0.5 readers that require one may refuse the image.

    Raises
    ------
    ValueError
        For axes that do not match the image or are out of OME-Zarr order, or a voxel size
        that is not one positive number per spatial axis.
    FileExistsError
        Where ``path`` exists.
    InputError
        Where the image cannot be written (no space, no permission).

    Examples
    --------
    >>> import tempfile
    >>> from embedseg_cli.io.volumes import open_volume
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_ome_zarr_image(
    ...         Path(tmp) / "a.zarr", np.zeros((4, 6), np.uint8), axes="YX", voxel_size=(0.5, 0.25)
    ...     )
    ...     volume = open_volume(Path(tmp) / "a.zarr")
    >>> volume.axes, volume.voxel_size, volume.array.shape
    ('YX', {'Y': 0.5, 'X': 0.25}, (4, 6))
    """
    letters = _checked_axes(axes, image.ndim)
    scale = _scale(letters, voxel_size)
    if path.exists():
        msg = f"{path} exists: give a new path"
        raise FileExistsError(msg)
    shape = tuple(int(n) for n in image.shape)
    edges = _CHUNK if "Z" in letters else {**_CHUNK, "Y": 1024, "X": 1024}
    chunks = tuple(max(1, min(edges[a], n)) for a, n in zip(letters, shape, strict=True))
    pixels = image if isinstance(image, da.Array) else da.from_array(image, chunks=chunks)  # type: ignore[no-untyped-call]
    try:
        root = zarr.open_group(path, mode="w-", zarr_format=3)
        level = root.create_array(
            "0",
            shape=shape,
            chunks=chunks,
            dtype=np.dtype(image.dtype),
            dimension_names=[a.lower() for a in letters],
        )
        aligned: da.Array = pixels.rechunk(chunks)
        da.store(aligned, level, lock=False)  # type: ignore[arg-type]
        dataset: dict[str, JSON] = {"path": "0"}
        if scale is not None:
            dataset["coordinateTransformations"] = [{"type": "scale", "scale": list(scale)}]
        axes_meta: list[JSON] = [_axis(a, known=scale is not None) for a in letters]
        multiscale: dict[str, JSON] = {"name": path.stem, "axes": axes_meta, "datasets": [dataset]}
        root.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    except OSError as exc:
        raise cannot_write(path, exc, "check that its folder is writable and has space") from None


def _checked_axes(axes: str, ndim: int) -> str:
    letters = axes.upper()
    order = [NGFF_AXES.find(a) for a in letters]
    if (
        len(letters) != ndim
        or min(order, default=-1) < 0
        or any(a >= b for a, b in itertools.pairwise(order))
        or not {"Y", "X"} <= set(letters)
    ):
        msg = f"axes {axes!r} must name the {ndim} axes as some of t, c, z, y, x in that order"
        raise ValueError(msg)
    return letters


def _scale(letters: str, voxel_size: Sequence[float] | None) -> list[float] | None:
    if voxel_size is None:
        return None
    values = [float(v) for v in voxel_size]
    spatial = [a for a in letters if a in "ZYX"]
    if len(values) != len(spatial) or not all(math.isfinite(v) and v > 0 for v in values):
        msg = f"voxel_size {tuple(values)} must be one positive size per axis of {''.join(spatial)}"
        raise ValueError(msg)
    sizes = iter(values)
    return [next(sizes) if a in "ZYX" else 1.0 for a in letters]


def _axis(letter: str, *, known: bool) -> JSON:
    kind = {"T": "time", "C": "channel"}.get(letter, "space")
    if kind == "space" and known:
        return {"name": letter.lower(), "type": kind, "unit": NGFF_MICROMETRE}
    return {"name": letter.lower(), "type": kind}
