"""``export labels``: label images as TIFF, OME-Zarr labels, a per-object table or a preview.

The labels may be a TIFF file or folder, a Zarr or OME-Zarr label image, or a project
store's predictions; each is checked (:func:`embedseg_cli.data.labels.as_labels`) and
written through :mod:`embedseg_cli.io`, all or nothing (:mod:`embedseg_cli.export.outputs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.config import ExportLabelsConfig, LabelFormat
from embedseg_cli.data.labels import as_labels
from embedseg_cli.data.objects import measure_block, object_table
from embedseg_cli.data.preview import render_preview
from embedseg_cli.errors import InputError
from embedseg_cli.export.outputs import Output, claim, staged_output
from embedseg_cli.io.guards import check_output_apart
from embedseg_cli.io.labels import find_label_images
from embedseg_cli.io.ome_zarr import write_ome_zarr_labels
from embedseg_cli.io.png import write_png
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.tables import write_csv
from embedseg_cli.io.tiff import list_tiffs, write_labels_tiff
from embedseg_cli.io.units import VoxelSize
from embedseg_cli.io.volumes import open_volume
from embedseg_cli.io.zarr_meta import is_zarr
from embedseg_cli.progress import NullProgress, Progress

__all__ = ["LabelsExportReport", "export_labels"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelsExportReport:
    """What ``export_labels`` wrote."""

    format: str
    out: str
    images: int
    objects: int
    seconds: float


@dataclass(frozen=True)
class _LabelImage:
    """One label image to export, read when asked."""

    name: str
    where: str
    read: Callable[[], NDArray[Any]]
    voxel_size: Callable[[], VoxelSize | None]
    """Micrometres per spatial axis (ZYX), None along an unknown axis; None: all unknown."""
    image: Callable[[], NDArray[Any] | None]
    """Its intensity image, channels first, or None."""


def _voxel_size_of(path: Path) -> VoxelSize | None:
    """The voxel size (µm, ZYX) the metadata of ``path`` gives, None for an axis it does not."""
    try:
        volume = open_volume(path)
    except InputError:
        return None
    return tuple(volume.voxel_size.get(a) for a in volume.axes if a in "ZYX")


def _stored_voxel_size(voxel_size: tuple[float, ...]) -> VoxelSize | None:
    """A store's voxel size; None (unknown) where it is 1 along every axis.

    That is what ``prepare`` stores where it knows none, and how ``predict`` reads a
    model's voxel size too.
    """
    return None if all(v == 1.0 for v in voxel_size) else voxel_size


def _read_intensity(path: Path) -> NDArray[Any]:
    volume = open_volume(path)
    pixels = np.asarray(volume.array)
    axes = volume.axes.upper()
    if "C" in axes:
        pixels = np.moveaxis(pixels, axes.index("C"), 0)
        axes = axes.replace("C", "")
    else:
        pixels = pixels[None]
    keep = [i for i, a in enumerate(axes) if a in "ZYX"]
    squeeze = tuple(
        1 + i for i, a in enumerate(axes) if a not in "ZYX" and pixels.shape[1 + i] == 1
    )
    if squeeze:
        pixels = np.squeeze(pixels, axis=squeeze)
    if pixels.ndim != len(keep) + 1:
        msg = f"image {path} has axes {volume.axes}: give a 2D or 3D image (channels allowed)"
        raise InputError(msg)
    return pixels


def _label_images(config: ExportLabelsConfig) -> list[_LabelImage]:
    source = config.labels
    if is_project_store(source):
        if config.image is not None:
            msg = "a project store's predictions are shown on the store's own images: leave out --image"
            raise InputError(msg)
        store = ProjectStore.open(source)
        names = store.prediction_names()
        if not names:
            msg = f"{source} has no predictions: run `embedseg predict {source}` first"
            raise InputError(msg)
        records = {r.name: r for r in store.images()}

        def store_image(name: str) -> NDArray[Any] | None:
            record = records.get(name)
            if record is None:
                return None
            pixels = np.asarray(store.image(name)[...])
            if "C" in record.axes.upper():
                return np.moveaxis(pixels, record.axes.upper().index("C"), 0)
            return pixels[None]

        return [
            _LabelImage(
                name,
                f"{source}/predictions/{name}",
                lambda name=name: np.asarray(store.prediction(name)[...]),  # type: ignore[misc]
                lambda name=name: (
                    _stored_voxel_size(records[name].voxel_size)  # type: ignore[misc]
                    if name in records
                    else None
                ),
                lambda name=name: store_image(name),  # type: ignore[misc]
            )
            for name in names
        ]
    found = find_label_images(source)
    images = _intensity_paths(config.image, list(found))
    result = []
    for name, label_source in found.items():
        location = Path(str(label_source))
        image_path = images.get(name)
        result.append(
            _LabelImage(
                name,
                str(label_source),
                label_source.read,
                lambda location=location: _voxel_size_of(location),  # type: ignore[misc]
                (lambda p=image_path: None if p is None else _read_intensity(p)),  # type: ignore[misc]
            )
        )
    return result


def _intensity_paths(image: Path | None, names: list[str]) -> dict[str, Path]:
    if image is None:
        return {}
    if not image.exists():
        msg = f"image {image} does not exist: give the image the labels were predicted from"
        raise InputError(msg)
    if len(names) == 1:
        return {names[0]: image}
    if not image.is_dir() or is_zarr(image):
        msg = f"the labels are {len(names)} images: give --image as a folder of TIFFs with the same names"
        raise InputError(msg)
    found = list_tiffs(image)
    missing = [n for n in names if n not in found]
    if missing:
        msg = f"{image} has no image for the labels {missing[0]!r}: add {image / (missing[0] + '.tif')}"
        raise InputError(msg)
    return {n: found[n] for n in names}


def _fit_image(image: NDArray[Any] | None, labels: NDArray[Any], where: str) -> NDArray[Any] | None:
    if image is None:
        return None
    if image.shape[1:] != labels.shape:
        msg = (
            f"the image of {where} has shape {image.shape[1:]} but the labels have "
            f"{labels.shape}: give the image the labels were predicted from"
        )
        raise InputError(msg)
    return image


def export_labels(
    config: ExportLabelsConfig, *, progress: Progress | None = None
) -> LabelsExportReport:
    """Write label images as TIFF, OME-Zarr labels, a per-object CSV table or a preview.

    One label image is written to ``out`` itself; several (a folder, a store's predictions)
    go into the folder ``out``, one file per image named after it, except ``csv``, which
    writes one table with an ``image`` column.

    Raises
    ------
    InputError
        Where the labels are missing, not integers, or do not fit the image, or ``out`` is
        one of the inputs (the labels, the image) or holds one.
    OutputExistsError
        Where ``out`` exists and ``overwrite`` is not set, or ``out`` exists and is not an
        earlier export of this format: a folder holding anything but the files this
        export writes, a folder where it writes a file, or a file where it writes a folder.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    inputs = {"PRED": config.labels, "--image": config.image}
    check_output_apart(config.out, inputs)
    items = _label_images(config)
    many = len(items) > 1 and config.format != LabelFormat.CSV
    suffix = {
        LabelFormat.TIFF: ".tif",
        LabelFormat.OME_ZARR: ".zarr",
        LabelFormat.PREVIEW: ".png",
        LabelFormat.CSV: ".csv",
    }[config.format]
    what = f"{config.format.value} labels"
    if many:
        output = Output(f"{what} (a folder of {suffix} outputs)", "folder", suffix)
    elif config.format == LabelFormat.OME_ZARR:
        output = Output(f"{what} (an OME-Zarr label image)", "ome-zarr")
    else:
        output = Output(f"{what} (a file)", "file")
    claim(config.out, config.overwrite, output, inputs)
    objects = 0
    rows: list[dict[str, Any]] = []
    progress.start(f"Exporting labels as {config.format.value}", total=len(items))
    with staged_output(config.out, output) as staging:
        if many:
            staging.mkdir()
        for item in items:
            labels = as_labels(item.read(), item.where)
            target = staging / f"{item.name}{suffix}" if many else staging
            if config.format == LabelFormat.TIFF:
                write_labels_tiff(target, labels, _fit_voxel_size(item.voxel_size(), labels.ndim))
            elif config.format == LabelFormat.OME_ZARR:
                write_ome_zarr_labels(
                    target,
                    labels,
                    axes="ZYX"[-labels.ndim :],
                    voxel_size=_fit_voxel_size(item.voxel_size(), labels.ndim),
                    name=item.name,
                    ngff_version=config.ngff_version,
                )
            elif config.format == LabelFormat.PREVIEW:
                image = _fit_image(item.image(), labels, item.where)
                write_png(target, render_preview(labels, None if image is None else image[0]))
            else:
                image = _fit_image(item.image(), labels, item.where)
                rows += _table_rows(item.name, labels, image)
            objects += int(np.count_nonzero(np.unique(labels)))
            progress.advance()
        if config.format == LabelFormat.CSV:
            write_csv(staging, rows, _columns(rows))
    progress.finish()
    seconds = time.perf_counter() - started
    logger.info(
        "wrote %s: %d image(s), %d objects in %.1f s", config.out, len(items), objects, seconds
    )
    return LabelsExportReport(config.format.value, str(config.out), len(items), objects, seconds)


def _fit_voxel_size(voxel_size: VoxelSize | None, ndim: int) -> VoxelSize | None:
    """The voxel size of labels with ``ndim`` axes; None (unknown) where it has other axes."""
    if voxel_size is None or len(voxel_size) != ndim:
        return None
    return voxel_size


def _object_table(
    labels: NDArray[np.integer[Any]], image: NDArray[Any] | None = None
) -> dict[str, NDArray[Any]]:
    """The per-object table (:func:`embedseg_cli.data.objects.object_table`) of one image."""
    stats = measure_block(labels)
    means = (
        []
        if image is None
        else [measure_block(labels, intensity=channel).mean_intensities for channel in image]
    )
    return object_table(stats, mean_intensities=[m for m in means if m is not None])


def _table_rows(
    name: str, labels: NDArray[np.uint32], image: NDArray[Any] | None
) -> list[dict[str, Any]]:
    table = _object_table(labels, image)
    keys = list(table)
    columns = [table[key].tolist() for key in keys]
    return [
        {"image": name, **dict(zip(keys, row, strict=True))} for row in zip(*columns, strict=True)
    ]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: every key of the rows, in the order they first appear."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns or ["image", "label", "voxels"]
