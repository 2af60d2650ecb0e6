"""``prepare``: turn a folder of TIFF image/mask pairs into a project store.

It validates every pair, stores images as given (or on a coarser grid, ``downsample``) and
masks as uint32, splits train and validation images, measures the data properties the
method needs, computes one centre per object on the whole object, and builds the crop table
(one object-centred window per object, no copied pixels). Nothing is visible at the output
path until everything succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.segmentation import relabel_sequential

from embedseg_cli.blockwise.resample import resample_piece
from embedseg_cli.config import PrepareConfig
from embedseg_cli.data.centres import ObjectTable, measure_objects
from embedseg_cli.data.diameters import diameter_statistics
from embedseg_cli.data.labels import as_labels
from embedseg_cli.data.normalise import intensity_percentiles
from embedseg_cli.data.properties import (
    crop_windows,
    derive_crop_size,
    extent_statistics,
    foreground_weight,
    per_axis,
)
from embedseg_cli.errors import InputError
from embedseg_cli.io.guards import check_output_apart
from embedseg_cli.io.store import CropTable
from embedseg_cli.io.store_writer import create_store
from embedseg_cli.io.tiff import TiffPair, find_tiff_pairs, read_tiff
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.records import DataProperties, ImageRecord, Split

__all__ = ["PrepareReport", "assign_validation", "prepare"]

logger = logging.getLogger(__name__)

_IMAGE_DTYPES = ("uint8", "uint16", "float32")

# scikit-image's function is untyped; this states the part of its signature used here.
_relabel_sequential: Callable[[NDArray[np.uint32]], tuple[NDArray[np.uint32], Any, Any]] = (
    relabel_sequential
)


@dataclass(frozen=True)
class PrepareReport:
    """What ``prepare`` did."""

    store: Path
    images: dict[str, int]
    """Number of images per split."""
    objects: dict[str, int]
    """Number of objects per split."""
    properties: DataProperties
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Prepared:
    """One pair, read and checked."""

    record: ImageRecord
    image: NDArray[Any]
    mask: NDArray[np.uint32]
    objects: ObjectTable | None


def assign_validation(pairs: list[TiffPair], fraction: float, seed: int) -> list[TiffPair]:
    """Move a seeded, reproducible fraction of the training images to the validation split.

    Nothing moves where a ``val`` split already exists. At least one image moves when the
    fraction is positive and there are two or more training images; at least one stays.
    """
    if any(p.split == "val" for p in pairs) or fraction == 0:
        return pairs
    train = sorted(p.name for p in pairs if p.split == "train")
    if len(train) < 2:
        return pairs
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    chosen = set(np.random.default_rng(seed).choice(train, size=n_val, replace=False).tolist())
    return [TiffPair(p.name, "val", p.image, p.mask) if p.name in chosen else p for p in pairs]


def _spatial_layout(
    image: NDArray[Any], mask: NDArray[Any], pair: TiffPair
) -> tuple[NDArray[Any], str]:
    """Return the image with channels last and its axes, checking it against the mask."""
    if image.shape == mask.shape:
        return image, "YX" if mask.ndim == 2 else "ZYX"
    if mask.ndim == 2 and image.ndim == 3:
        if image.shape[:2] == mask.shape:
            return image, "YXC"
        if image.shape[1:] == mask.shape and image.shape[0] <= 8:
            return np.moveaxis(image, 0, -1), "YXC"
    msg = (
        f"mask {pair.mask} has shape {mask.shape} but image {pair.image} has shape {image.shape}: "
        "an image and its mask must cover the same pixels"
    )
    raise InputError(msg)


def _voxel_size(
    config: PrepareConfig,
    metadata: dict[str, float],
    anisotropy: float | None,
    ndim: int,
    pair: TiffPair,
) -> tuple[float, ...]:
    """Micrometres per axis: given, else from the metadata (in µm), else 1 (unknown).

    A volume whose Z size is unknown in micrometres keeps the shape of its voxels where the
    metadata gives it in another unit or in none (``anisotropy``, Z over X).
    """
    axes = "ZYX"[-ndim:]
    if config.voxel_size is not None:
        return tuple(config.voxel_size[-ndim:])
    x = metadata.get("X", 1.0)
    sizes = {axis: metadata.get(axis, x) for axis in axes}
    if ndim == 3 and "Z" not in metadata:
        if anisotropy is not None:
            sizes["Z"] = anisotropy * x
            logger.info(
                "%s: z spacing %.4g times the pixel width, from its metadata",
                pair.image,
                anisotropy,
            )
        else:
            logger.warning(
                "%s has no z spacing in its metadata: assuming isotropic voxels "
                "(pass --voxel-size Z Y X)",
                pair.image,
            )
    return tuple(sizes[axis] for axis in axes)


def _downsample(
    image: NDArray[Any],
    labels: NDArray[np.uint32],
    factors: tuple[int, ...],
    *,
    channels_last: bool,
) -> tuple[NDArray[Any], NDArray[np.uint32]]:
    """Resample an image (linearly, to float32) and its labels (nearest) to a coarser grid.

    It is the resampling ``predict`` applies to an input whose voxel size is finer than the
    model's, so that training and prediction see the same pixels.
    """
    shape = tuple(max(1, round(n / f)) for n, f in zip(labels.shape, factors, strict=True))
    exact = tuple(n / m for n, m in zip(labels.shape, shape, strict=True))
    origin = (0,) * labels.ndim
    pixels = np.moveaxis(image, -1, 0) if channels_last else image
    small = resample_piece(pixels, origin, shape, origin, exact, order=1)
    small_labels = resample_piece(labels, origin, shape, origin, exact, order=0)
    return (np.moveaxis(small, 0, -1) if channels_last else small), small_labels


def _read_pair(pair: TiffPair, config: PrepareConfig) -> _Prepared:
    image_file, mask_file = read_tiff(pair.image), read_tiff(pair.mask)
    image = image_file.data
    if str(image.dtype) not in _IMAGE_DTYPES:
        msg = f"image {pair.image} has {image.dtype} values: embedseg reads uint8, uint16 or float32 images; convert it"
        raise InputError(msg)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        msg = (
            f"image {pair.image} has NaN or infinite intensities: replace them (for example "
            "with the background intensity) so that it can be normalised and learnt from"
        )
        raise InputError(msg)
    labels = as_labels(mask_file.data, f"mask {pair.mask}")
    while image.ndim > labels.ndim and image.shape[0] == 1:
        image = image[0]  # a leading time point or channel of size 1, as for the mask
    image, axes = _spatial_layout(image, labels, pair)
    ndim = labels.ndim
    voxel_size = _voxel_size(
        config,
        image_file.voxel_size or mask_file.voxel_size,
        image_file.anisotropy or mask_file.anisotropy,
        ndim,
        pair,
    )
    if config.downsample is not None:
        factors = per_axis(config.downsample, ndim, "downsample")
        image, labels = _downsample(image, labels, factors, channels_last="C" in axes)
        voxel_size = tuple(v * f for v, f in zip(voxel_size, factors, strict=True))
    labels = _relabel_sequential(labels)[0].astype(np.uint32, copy=False)
    objects = None
    if pair.split in ("train", "val"):
        objects = measure_objects(labels, centre=config.centre.value, spacing=voxel_size)
    n_objects = int(labels.max()) if labels.size else 0
    record = ImageRecord(
        name=pair.name,
        split=pair.split,
        axes=axes,
        shape=image.shape,
        dtype=str(image.dtype),
        voxel_size=voxel_size,
        source_image=str(pair.image),
        source_mask=str(pair.mask),
        n_objects=n_objects,
        percentiles=intensity_percentiles(image, channel_axis=-1 if "C" in axes else None),
    )
    return _Prepared(record, np.ascontiguousarray(image), labels, objects)


def _check_has_objects(
    pairs: list[TiffPair], tables: list[tuple[int, ImageRecord, ObjectTable]]
) -> None:
    """Refuse a training set without a single object: there would be nothing to learn."""
    if any(record.split == "train" and record.n_objects for _, record, _ in tables):
        return
    folders = sorted({str(p.mask.parent) for p in pairs if p.split == "train"})
    msg = (
        f"every training mask in {', '.join(folders)} is empty (no objects): give masks that "
        "label the objects (0 background, 1, 2, ... one number per object)"
    )
    raise InputError(msg)


def _check_consistent(first: _Prepared, other: _Prepared) -> None:
    a, b = first.record, other.record
    if len(a.axes.replace("C", "")) != len(b.axes.replace("C", "")):
        msg = (
            f"{b.source_mask} is {len(b.axes.replace('C', ''))}D but {a.source_mask} is "
            f"{len(a.axes.replace('C', ''))}D: a project holds 2D images or 3D volumes, not both"
        )
        raise InputError(msg)
    channels_a = a.shape[-1] if "C" in a.axes else 1
    channels_b = b.shape[-1] if "C" in b.axes else 1
    if channels_a != channels_b:
        msg = f"{b.source_image} has {channels_b} channel(s) but {a.source_image} has {channels_a}: all images need the same channels"
        raise InputError(msg)


def prepare(config: PrepareConfig, *, progress: Progress | None = None) -> PrepareReport:
    """Build a project store from a folder of TIFF image/mask pairs.

    Parameters
    ----------
    config : PrepareConfig
        Source folder, output store and options.
    progress : Progress, optional
        Receives one step per image.

    Returns
    -------
    PrepareReport
        Counts, the measured data properties and the time taken.

    Raises
    ------
    InputError
        For a missing, unreadable or inconsistent input, or an output that is the source
        folder or holds it; nothing is written then.
    OutputExistsError
        Where the output exists and ``config.overwrite`` is false, or the output exists and
        is not a project store (``overwrite`` replaces nothing else).
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    check_output_apart(config.out, {"SRC": config.source})
    pairs = assign_validation(find_tiff_pairs(config.source), config.val_fraction, config.seed)
    warnings: list[str] = []
    tables: list[tuple[int, ImageRecord, ObjectTable]] = []
    foreground: list[int] = []
    totals: list[int] = []
    first: _Prepared | None = None
    with create_store(config.out, overwrite=config.overwrite) as writer:
        progress.start("Reading images", total=len(pairs))
        for index, pair in enumerate(pairs):
            item = _read_pair(pair, config)
            first = first or item
            _check_consistent(first, item)
            if item.record.n_objects == 0:
                message = f"mask {pair.mask} has no objects"
                logger.warning("%s", message)
                warnings.append(message)
            if item.objects is not None:
                tables.append((index, item.record, item.objects))
                foreground.append(int(np.count_nonzero(item.mask)))
                totals.append(item.mask.size)
            writer.add_image(item.record, item.image, item.mask)
            progress.advance()
        progress.finish()
        assert first is not None  # find_tiff_pairs never returns an empty list
        _check_has_objects(pairs, tables)
        properties = _properties(config, first.record, tables, foreground, totals)
        writer.write_crop_table(_crop_table(tables, properties.crop_size))
        seconds = time.perf_counter() - started
        store = writer.commit(
            properties, {"config": config.model_dump(mode="json"), "seconds": seconds}
        )
    images: dict[str, int] = {}
    objects: dict[str, int] = {}
    split: Split
    for split in ("train", "val", "test"):
        records = store.images(split)
        images[split] = len(records)
        objects[split] = sum(r.n_objects for r in records)
    logger.info("prepared %s in %.1f s", store.path, seconds)
    return PrepareReport(store.path, images, objects, properties, seconds, warnings)


def _properties(
    config: PrepareConfig,
    first: ImageRecord,
    tables: list[tuple[int, ImageRecord, ObjectTable]],
    foreground: list[int],
    totals: list[int],
) -> DataProperties:
    ndim = len(first.axes.replace("C", ""))
    objects = [table for _, _, table in tables]
    sizes = np.concatenate([t.sizes for t in objects]) if objects else np.zeros(0, np.int64)
    mean_extent, std_extent, max_extent = extent_statistics(objects, ndim)
    if config.crop_size is None:
        crop_size = derive_crop_size(mean_extent, std_extent)
    else:
        crop_size = per_axis(config.crop_size, ndim, "crop-size")
    voxel_size = next((r.voxel_size for _, r, _ in tables), first.voxel_size)
    anisotropy = voxel_size[0] / voxel_size[-1] if ndim == 3 else 1.0
    diameters = diameter_statistics(sizes, ndim, anisotropy)
    return DataProperties(
        ndim=ndim,
        channels=first.shape[-1] if "C" in first.axes else 1,
        voxel_size=voxel_size,
        anisotropy=anisotropy,
        n_objects=len(sizes),
        min_object_size=int(sizes.min()) if len(sizes) else 0,
        mean_object_size=float(sizes.mean()) if len(sizes) else 0.0,
        max_object_size=int(sizes.max()) if len(sizes) else 0,
        mean_extent=mean_extent,
        std_extent=std_extent,
        max_extent=max_extent,
        median_diameter=None if diameters is None else diameters[0],
        diameter_quartiles=None if diameters is None else diameters[1],
        foreground_weight=foreground_weight(foreground, totals, ndim),
        crop_size=crop_size,
        centre=config.centre.value,
        downsample=None
        if config.downsample is None
        else per_axis(config.downsample, ndim, "downsample"),
    )


def _crop_table(
    tables: list[tuple[int, ImageRecord, ObjectTable]], crop_size: tuple[int, ...]
) -> CropTable:
    ndim = len(crop_size)
    parts = []
    for index, record, objects in tables:
        spatial_shape = record.shape[:ndim]
        parts.append(
            CropTable(
                image=np.full(len(objects), index, dtype=np.uint32),
                label=objects.labels,
                size=objects.sizes,
                bbox_start=objects.bbox_start,
                bbox_stop=objects.bbox_stop,
                centre=objects.centres,
                window_start=crop_windows(objects.centres, spatial_shape, crop_size),
            )
        )
    return CropTable.concatenate(parts, ndim)
