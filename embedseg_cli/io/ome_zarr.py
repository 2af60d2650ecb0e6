"""OME-Zarr label images: written as multiscale pyramids, listed in their image, recognised.

Label images are written as OME-Zarr 0.5 (Zarr v3) or 0.4 (Zarr v2), level by level from
dask, so neither the labels nor a lazy prediction need to fit in memory; each is written all
or nothing (:func:`embedseg_cli.io.atomic.staged`). Labels added to an OME-Zarr image are
written in the image's NGFF version and listed in its ``labels`` group.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numcodecs
import numpy as np
import zarr
from numpy.typing import NDArray

from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.atomic import cannot_write, staged
from embedseg_cli.io.units import NGFF_MICROMETRE
from embedseg_cli.io.zarr_meta import (
    NGFF_AXES,
    group_attrs,
    ome_attrs,
    ome_multiscale,
    open_zarr_array,
    read_zarr_attrs,
    scale_of,
    zarr_attrs,
    zarr_format_of,
    zarr_node_type,
)

__all__ = [
    "NgffVersion",
    "image_ngff_version",
    "is_ome_zarr_label_image",
    "ome_zarr_label_path",
    "write_ome_zarr_labels",
]

NgffVersion = Literal["0.4", "0.5"]
"""The OME-Zarr (NGFF) versions written: 0.4 on Zarr v2, 0.5 on Zarr v3."""


_MIN_PYRAMID_SIZE = 256
"""Levels are added until the last one is smaller than this in y and x."""


def image_ngff_version(path: Path) -> NgffVersion | None:
    """The OME-Zarr version labels added to the image at ``path`` must be written in.

    That is ``"0.5"`` for an OME-Zarr image on Zarr v3 and ``"0.4"`` for one on Zarr v2;
    ``None`` where ``path`` is no OME-Zarr image.
    """
    attrs = group_attrs(path)
    if attrs is None or ome_multiscale(attrs) is None:
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
    voxel_size: Sequence[float | None] | None = None,
    name: str = "embedseg",
    levels: int | None = None,
    ngff_version: NgffVersion = "0.5",
    image_group: bool = False,
) -> None:
    """Write a label image as OME-Zarr, with a multiscale pyramid.

    The labels are written level by level from dask, each level read back from the one
    written before, so labels larger than memory (and lazy predictions, computed once) can
    be written. Level ``k + 1`` keeps every 2nd voxel of level ``k`` (nearest neighbour) in
    y and x, and in z where the z voxel size is at most twice the y voxel size at level
    ``k``; levels are added until one is smaller than 256 pixels in y and x, or there are
    ``levels`` of them. Each level's ``scale`` transformation is ``voxel_size`` times its
    downsampling factors, and each space axis of known size has the ``unit``
    ``micrometer``; one of unknown size has a scale of 1 and no unit. Labels added to an
    image take the scale and units of the image's axes instead, so that the two line up in
    any viewer, whatever their unit. The label dtype is kept. Everything is written to a hidden
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
    voxel_size : sequence of float or None, optional
        Micrometres per spatial axis (``z``, ``y``, ``x`` among ``axes``), or per axis;
        None along an axis of unknown size. None: all unknown. Not used with
        ``image_group``.
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
    scale, units = _axis_scale(letters, voxel_size)
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
        image_levels, image_steps, scale, units = _image_levels(path, letters, shape)
        if levels is None:
            levels, steps = image_levels, image_steps
    else:
        target = path
    if steps is None:
        steps = _pyramid_steps(shape, letters, scale, levels)
    _check_replaceable(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(target, check=_check_replaceable) as staging:
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
                units=units,
            )
        if image_group:
            _list_label(path / "labels", name, ngff_version)
    except OSError as exc:
        raise cannot_write(target, exc, "check that its folder is writable and has space") from None


def _label_axes(axes: str, ndim: int) -> str:
    letters = axes.upper()
    if len(letters) != ndim:
        msg = f"axes {axes!r} name {len(letters)} axes but the labels have {ndim}"
        raise ValueError(msg)
    order = [NGFF_AXES.find(letter) for letter in letters]
    if (
        "Y" not in letters
        or "X" not in letters
        or min(order) < 0
        or any(a >= b for a, b in itertools.pairwise(order))
    ):
        msg = f"axes {axes!r} must be some of t, c, z, y, x in that order, with y and x"
        raise ValueError(msg)
    return letters


def _axis_scale(
    letters: str, voxel_size: Sequence[float | None] | None
) -> tuple[list[float], list[str | None]]:
    """Scale and unit per axis: micrometres where known, 1 and no unit where not."""
    spatial = [i for i, letter in enumerate(letters) if letter in "ZYX"]
    values = [None if v is None else float(v) for v in voxel_size or [None] * len(spatial)]
    sizes: list[float | None]
    if len(values) == len(letters):
        sizes = values
    elif len(values) == len(spatial):
        sizes = [None] * len(letters)
        for i, value in zip(spatial, values, strict=True):
            sizes[i] = value
    else:
        msg = f"voxel_size {tuple(values)} must give one size per spatial axis of {letters!r}"
        raise ValueError(msg)
    if not all(v is None or (math.isfinite(v) and v > 0) for v in sizes):
        msg = f"voxel_size {tuple(values)} must be positive"
        raise ValueError(msg)
    scale = [1.0 if v is None else v for v in sizes]
    units = [
        NGFF_MICROMETRE if letter in "ZYX" and v is not None else None
        for letter, v in zip(letters, sizes, strict=True)
    ]
    return scale, units


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
) -> tuple[int, list[tuple[int, ...]] | None, list[float], list[str | None]]:
    """Level count, steps, level-0 scale and units of an OME-Zarr image along ``letters``.

    The steps are None where they are not integers; an axis the image lacks has a scale
    of 1 and no unit.

    Raises
    ------
    InputError
        Where the labels' ``shape`` differs from the image's along a spatial axis.
    """
    multiscale = ome_multiscale(read_zarr_attrs(image))
    if multiscale is None:  # checked by the caller
        return 1, [], [1.0] * len(letters), [None] * len(letters)
    datasets = multiscale["datasets"]
    raw_axes = multiscale.get("axes") or list("tczyx")
    names = [str(a.get("name", "")) if isinstance(a, dict) else str(a) for a in raw_axes]
    index = {n.upper(): i for i, n in enumerate(names)}
    axis_units = [
        str(a["unit"]) if isinstance(a, dict) and a.get("unit") is not None else None
        for a in raw_axes
    ]
    first = scale_of(datasets[0].get("coordinateTransformations"), len(names))
    overall = scale_of(multiscale.get("coordinateTransformations"), len(names))
    image_scale = [
        a * b
        for a, b in zip(first or [1.0] * len(names), overall or [1.0] * len(names), strict=True)
    ]
    positions = [index.get(letter) for letter in letters]
    scale = [1.0 if i is None else image_scale[i] for i in positions]
    units = [None if i is None else axis_units[i] for i in positions]
    level0 = open_zarr_array(image / str(datasets[0].get("path", "")))
    image_shape = tuple(int(n) for n in level0.shape)
    for letter, size in zip(letters, shape, strict=True):
        i = index.get(letter)
        if letter in "ZYX" and i is not None and i < len(image_shape) and image_shape[i] != size:
            msg = (
                f"labels of shape {shape} ({letters}) do not fit the image {image} of shape "
                f"{image_shape} ({''.join(names).upper()}): segment the image itself, at full resolution"
            )
            raise InputError(msg)
    scales = [scale_of(d.get("coordinateTransformations"), len(names)) for d in datasets]
    if any(s is None for s in scales):
        return len(datasets), None, scale, units
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
                return len(datasets), None, scale, units
            step.append(factor)
        steps.append(tuple(step))
    return len(datasets), steps, scale, units


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
        or zarr_node_type(labels_dir) == "array"
        or zarr_format_of(labels_dir) not in (None, wanted)
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
            if "image-label" in ome_attrs(zarr_attrs(target)):
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
    units: list[str | None],
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
    for letter, unit in zip(letters, units, strict=True):
        axis = {"name": letter.lower(), "type": kinds.get(letter, "space")}
        if unit is not None:
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


def is_ome_zarr_label_image(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr label image and holds nothing else.

    It is a Zarr group with ``image-label`` metadata whose entries are its metadata files
    and the levels its multiscale lists, which is what :func:`write_ome_zarr_labels` writes.
    """
    attrs = None if path.is_symlink() else group_attrs(path)
    if attrs is None:
        return False
    ome = ome_attrs(attrs)
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
