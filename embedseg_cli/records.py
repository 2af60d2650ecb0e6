"""What a project store records about its data, as validated models.

These models are the contract between the step that measures the data (``prepare``), the
store that keeps it (:mod:`embedseg_cli.io.store`) and the steps that use it (training,
prediction). They hold plain values only, so this module stays as light as ``config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NORMALISATION_PERCENTILES", "DataProperties", "ImageRecord", "Split"]

NORMALISATION_PERCENTILES = (1.0, 99.8)
"""The intensity percentiles that normalisation maps to 0 and 1, as in the paper."""

Split = Literal["train", "val", "test"]
"""The split an image belongs to."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRecord(_Record):
    """One image of the project and its mask, as stored."""

    name: str
    """Name of the image in the store (its file name without the extension)."""
    split: Split
    """Which split the image belongs to."""
    axes: str
    """Axes of the stored image: ``YX``, ``YXC`` or ``ZYX`` (the mask has the spatial ones)."""
    shape: tuple[int, ...]
    """Shape of the stored image."""
    dtype: str
    """Data type of the stored image (``uint8``, ``uint16`` or ``float32``)."""
    voxel_size: tuple[float, ...]
    """Size of a pixel or voxel along each spatial axis, in the source's unit."""
    source_image: str
    """Path of the image file it was read from."""
    source_mask: str
    """Path of the mask file it was read from."""
    n_objects: int = Field(ge=0)
    """Number of objects in the mask."""
    percentiles: tuple[tuple[float, float], ...]
    """Per channel, the intensities at the low and high normalisation percentiles."""


class DataProperties(_Record):
    """What the method needs to know about the data, measured on the train and val masks."""

    ndim: Literal[2, 3]
    """Number of spatial dimensions."""
    channels: int = Field(ge=1)
    """Number of image channels."""
    voxel_size: tuple[float, ...]
    """Voxel size of the project along each spatial axis (ZYX order)."""
    anisotropy: float = Field(gt=0)
    """Ratio of the z to the x voxel size (1 in 2D)."""
    n_objects: int = Field(ge=0)
    """Number of objects in the train and val masks."""
    min_object_size: int = Field(ge=0)
    """Smallest object, in pixels or voxels."""
    mean_object_size: float = Field(ge=0)
    """Mean object size, in pixels or voxels."""
    max_object_size: int = Field(ge=0)
    """Largest object, in pixels or voxels."""
    mean_extent: tuple[float, ...]
    """Mean bounding-box extent of the objects along each spatial axis, in pixels."""
    std_extent: tuple[float, ...]
    """Standard deviation of the bounding-box extents along each spatial axis, in pixels."""
    max_extent: tuple[int, ...]
    """Largest bounding-box extent along each spatial axis, in pixels."""
    foreground_weight: float = Field(gt=0)
    """Weight of foreground pixels in the seed loss (10 in 2D, background/foreground in 3D)."""
    crop_size: tuple[int, ...]
    """Size of the object-centred training crops along each spatial axis."""
    centre: Literal["medoid", "approximate-medoid", "centroid"]
    """How the object centres were chosen."""
    normalisation: tuple[float, float] = NORMALISATION_PERCENTILES
    """Low and high percentiles that map an image's intensities to 0 and 1."""
    downsample: tuple[int, ...] | None = None
    """How many times coarser than the source images the project's grid is, along each
    spatial axis (``prepare --downsample``); ``None`` where the pixels were kept."""
