"""TIFF files: image/mask pairs in folders, their pixels and voxel size, and TIFF outputs.

Every problem with an input is an :class:`~embedseg_cli.errors.InputError` whose message
names the file and says what to do. Every TIFF written is written all or nothing
(:func:`embedseg_cli.io.atomic.staged`). Large TIFF volumes are opened lazily by
:func:`embedseg_cli.io.volumes.open_volume`, not here.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray

from embedseg_cli.errors import InputError
from embedseg_cli.io.atomic import cannot_write, staged
from embedseg_cli.io.units import IMAGEJ_MICROMETRE, OME_MICROMETRE, micrometres_per
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
]

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})

_RESOLUTION_UNITS: dict[int, str] = {
    tifffile.RESUNIT.INCH: "inch",
    tifffile.RESUNIT.CENTIMETER: "cm",
    tifffile.RESUNIT.MILLIMETER: "mm",
    tifffile.RESUNIT.MICROMETER: "um",
}
"""ResolutionUnit values as unit names (NONE has none; 4 and 5 are tifffile's own)."""
_PRINT_UNITS = (25400.0, 1e4)
"""Inch and centimetre (in µm): the units print software gives a resolution in."""
_PRINT_PIXEL = 10.0
"""The smallest pixel (µm) in a print unit taken as a print resolution rather than a
calibration: 2540 dpi. 72, 96, 150, 300, 600 and 1200 dpi are all coarser."""
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
    """Micrometres per axis name (``Z``, ``Y``, ``X``) where the metadata gives them
    (:func:`tiff_voxel_size`)."""
    anisotropy: float | None = None
    """The Z size over the X size where the metadata gives both in one unit, even a unit it
    does not name (:func:`tiff_anisotropy`)."""


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
            anisotropy = tiff_anisotropy(tif)
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as exc:
        msg = f"{path} cannot be read as a TIFF ({exc}): check that the file is complete"
        raise InputError(msg) from None
    return TiffImage(path=path, data=data, voxel_size=voxel_size, anisotropy=anisotropy)


def tiff_anisotropy(tif: tifffile.TiffFile) -> float | None:
    """The Z voxel size over the X pixel size, where the metadata gives both in one unit.

    An ImageJ ``spacing`` is in the unit of the pixel width, named or not: a TIFF that says
    "Z steps of 2.18 pixels" without a length unit still knows its voxels' shape.
    """
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_image(tif.ome_metadata).get("Pixels")
        if isinstance(pixels, dict):
            z, x = pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeX")
            same_unit = pixels.get("PhysicalSizeZUnit") == pixels.get("PhysicalSizeXUnit")
            if isinstance(z, int | float) and isinstance(x, int | float) and z > 0 and x > 0:
                return float(z) / float(x) if same_unit else None
    imagej = tif.imagej_metadata or {}
    spacing = imagej.get("spacing")
    if not isinstance(spacing, int | float) or spacing <= 0:
        return None
    if imagej.get("zunit", imagej.get("unit")) != imagej.get("unit"):
        return None
    page = tif.pages.first
    width = 1.0
    if 282 in page.tags:
        per_unit_x = page.get_resolution()[0]
        if per_unit_x > 0:
            width = 1.0 / per_unit_x
    return float(spacing) / width


def tiff_voxel_size(tif: tifffile.TiffFile) -> dict[str, float]:
    """The voxel size in micrometres per axis (``Z``, ``Y``, ``X``) a TIFF's metadata gives.

    Read from the OME-XML where it gives a ``PhysicalSize`` (in its ``PhysicalSize*Unit``,
    micrometres where it names none, as the OME schema says), else from the resolution tags
    (pixels per unit) with the ImageJ ``unit`` (and ``yunit``, ``zunit``) or else the
    ResolutionUnit tag, and the ImageJ ``spacing`` for Z. An axis is left out where its
    size or unit is missing or unknown (ResolutionUnit NONE or absent, ImageJ ``pixel``, a
    name :func:`~embedseg_cli.io.units.micrometres_per` does not know); where the metadata
    gives a size without a usable unit, a warning names the file.

    A pixel of 10 µm or more given in inches or centimetres (2540 pixels per inch or
    fewer) is a print resolution, such as the 72 or 300 dpi of a screenshot or an
    exported figure, rather than a microscope's calibration: the voxel size is then
    unknown too, with a warning, so that it never makes ``predict`` resample an image.
    """
    where = str(tif.filehandle.path)
    if tif.is_ome and tif.ome_metadata:
        sizes = _ome_voxel_size(tif.ome_metadata, where)
        if sizes is not None:
            return sizes
    return _resolution_voxel_size(tif, where)


def _ome_image(xml: str) -> dict[str, Any]:
    """The first ``Image`` of OME-XML as a dict (empty where there is none)."""
    try:
        ome = tifffile.xml2dict(xml).get("OME")
    except (ET.ParseError, ValueError):
        return {}
    image = ome.get("Image") if isinstance(ome, dict) else None
    if isinstance(image, list):
        image = image[0] if image else None
    return image if isinstance(image, dict) else {}


def _ome_voxel_size(xml: str, where: str) -> dict[str, float] | None:
    """Micrometres per axis from OME-XML; None where it gives no physical size at all."""
    pixels = _ome_image(xml).get("Pixels")
    if not isinstance(pixels, dict):
        return None
    given = {
        axis: (float(value), str(pixels.get(f"PhysicalSize{axis}Unit", OME_MICROMETRE)))
        for axis in "ZYX"
        if isinstance(value := pixels.get(f"PhysicalSize{axis}"), int | float) and value > 0
    }
    return _in_micrometres(given, where) if given else None


def _resolution_voxel_size(tif: tifffile.TiffFile, where: str) -> dict[str, float]:
    """Micrometres per axis from the resolution tags, the ImageJ unit and spacing."""
    page = tif.pages.first
    imagej = tif.imagej_metadata or {}
    unit = imagej.get("unit")
    # Without a ResolutionUnit tag there is no unit: TIFF's default (inch) is seldom meant.
    if unit is None and 296 in page.tags:
        unit = _RESOLUTION_UNITS.get(page.resolutionunit)
    given: dict[str, tuple[float, str | None]] = {}
    if 282 in page.tags and 283 in page.tags:
        per_unit_x, per_unit_y = page.get_resolution()
        if per_unit_x > 0 and per_unit_y > 0:
            given["Y"] = (1.0 / per_unit_y, _name(imagej.get("yunit", unit)))
            given["X"] = (1.0 / per_unit_x, _name(unit))
    spacing = imagej.get("spacing")
    if isinstance(spacing, int | float) and spacing > 0:
        given["Z"] = (float(spacing), _name(imagej.get("zunit", unit)))
    sizes = _in_micrometres(given, where)
    printed = [
        sizes[axis]
        for axis in "YX"
        if axis in sizes and micrometres_per(given[axis][1]) in _PRINT_UNITS
    ]
    if printed and min(printed) >= _PRINT_PIXEL:
        logger.warning(
            "%s gives its pixel size as %.4g pixels per inch, a print resolution rather "
            "than a microscope's calibration: its voxel size is taken as unknown",
            where,
            25400.0 / min(printed),
        )
        return {}
    return sizes


def _name(unit: object) -> str | None:
    return None if unit is None else str(unit)


def _in_micrometres(given: Mapping[str, tuple[float, str | None]], where: str) -> dict[str, float]:
    """Sizes given in their units, in micrometres; a warning for those in no known unit.

    1 pixel per no unit (or per pixel) is not warned about: it is what TIFF writers put
    where they know no size.
    """
    sizes: dict[str, float] = {}
    unknown: list[str | None] = []
    for axis, (value, unit) in given.items():
        factor = micrometres_per(unit)
        if factor is not None:
            sizes[axis] = value * factor
        elif value != 1 or (unit or "pixel").strip().lower() not in ("pixel", "pixels"):
            unknown.append(unit)
    if unknown:
        named = f"in {unknown[0]!r}, which is no length unit embedseg knows"
        logger.warning(
            "%s gives its pixel size %s: its voxel size is taken as unknown",
            where,
            named if unknown[0] else "without a unit",
        )
    return sizes


def read_tiff_description(path: Path) -> str | None:
    """The description a TIFF carries of its pixels, None where it has none or cannot be read.

    That is the ImageJ ``Info`` of an ImageJ TIFF, the first image's ``Description`` of an
    OME-TIFF, or else the first ImageDescription tag (as :func:`write_labels_tiff` and
    earlier embedseg versions wrote them).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_imagej:
                description = (tif.imagej_metadata or {}).get("Info")
            elif tif.is_ome and tif.ome_metadata:
                description = _ome_image(tif.ome_metadata).get("Description")
            else:
                description = tif.pages.first.description
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return str(description) if description else None


def write_labels_tiff(
    path: Path,
    labels: NDArray[np.integer[Any]],
    voxel_size: Sequence[float | None] | None = None,
    *,
    description: str | None = None,
) -> None:
    """Write 2D or 3D labels as a TIFF with their voxel size, all or nothing.

    uint16 with ImageJ metadata where the labels fit, else uint32 OME-TIFF: ImageJ's TIFF
    flavour has no 32-bit integer type; OME-TIFF has, and Fiji reads it through
    Bio-Formats. Both are zlib-compressed.

    The voxel size is written where it is known, so that Fiji, napari and tifffile show
    the labels in micrometres: ImageJ's unit ``micron`` with the resolution tags in pixels
    per micron and the ``spacing`` for Z, or OME's ``PhysicalSize*`` in ``µm`` with the
    resolution tags in pixels per centimetre. An unknown size is written as unknown: no
    unit, no resolution tags, no ``PhysicalSize``. (ImageJ cannot say that only Z is
    unknown: for 3D labels with a known Y and X but no Z, ImageJ shows a Z of 1 micron.)

    Parameters
    ----------
    path : Path
        The TIFF file to write (replaced where it exists).
    labels : ndarray
        Integer labels (0 = background), ``(Y, X)`` or ``(Z, Y, X)``.
    voxel_size : sequence of float or None, optional
        Micrometres per axis (ZYX order, one per axis of ``labels``), None along an
        unknown axis; None: all unknown.
    description : str, optional
        How the labels were made, stored as the ImageJ ``Info`` or the OME image
        ``Description``, where :func:`read_tiff_description` finds it.
    """
    ndim = labels.ndim
    axes = "ZYX"[-ndim:]
    sizes = dict(zip(axes, voxel_size or (None,) * ndim, strict=True))
    planar = (sizes["Y"], sizes["X"])
    options: dict[str, Any] = {"compression": "zlib"}
    if labels.size == 0 or int(labels.max()) <= np.iinfo(np.uint16).max:
        imagej: dict[str, Any] = {"axes": axes}
        if planar[0] is not None and planar[1] is not None:
            imagej["unit"] = IMAGEJ_MICROMETRE
            options["resolution"] = (1.0 / planar[1], 1.0 / planar[0])
            if sizes.get("Z") is not None:
                imagej["spacing"] = sizes["Z"]
        if description:
            imagej["Info"] = description
        _write(path, labels.astype(np.uint16), imagej=True, metadata=imagej, **options)
        return
    ome: dict[str, Any] = {"axes": axes}
    for axis, size in sizes.items():
        if size is not None:
            ome[f"PhysicalSize{axis}"] = size
            ome[f"PhysicalSize{axis}Unit"] = OME_MICROMETRE
    if planar[0] is not None and planar[1] is not None:
        options["resolution"] = (1e4 / planar[1], 1e4 / planar[0])  # pixels per centimetre
        options["resolutionunit"] = tifffile.RESUNIT.CENTIMETER
    if description:
        ome["Description"] = description
    _write(path, labels.astype(np.uint32), ome=True, metadata=ome, **options)


def write_image_tiff(path: Path, image: NDArray[Any]) -> None:
    """Write an image as a TIFF, all or nothing."""
    _write(path, image)


def _write(path: Path, data: NDArray[Any], **options: Any) -> None:
    """``tifffile.imwrite`` into a hidden sibling, renamed to ``path`` when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(path) as staging:
            tifffile.imwrite(staging, data, **options)
    except OSError as exc:
        raise cannot_write(path, exc) from None
