"""What a project store records about its data, as validated models.

These models are the contract between the step that measures the data (``prepare``), the
store that keeps it (:mod:`embedseg_cli.io.store`) and the steps that use it (training,
prediction). They hold plain values only, so this module stays as light as ``config``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CHECKPOINT_FORMAT",
    "NORMALISATION_PERCENTILES",
    "BuiltinOrigin",
    "CheckpointRecord",
    "DataProperties",
    "FileOrigin",
    "ImageRecord",
    "ModelOrigin",
    "ModelSpec",
    "Split",
    "StoreOrigin",
    "StoreRecord",
    "Thresholds",
]

CHECKPOINT_FORMAT: Literal[1] = 1
"""Version of the checkpoint attributes (``format``); readers refuse others."""

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
    median_diameter: float | None = Field(default=None, gt=0)
    """Median over the objects of the diameter of the circle (2D) or ball (3D) of the same
    area or volume, in pixels along x of the project's grid (a z voxel counts as
    ``anisotropy`` x pixels). ``predict --object-size`` measures inputs against it. ``None`` in
    stores and checkpoints written before it was measured: it is then derived from
    ``mean_extent`` (:func:`embedseg_cli.data.diameters.training_size`)."""
    diameter_quartiles: tuple[float, float] | None = None
    """The 25th and 75th percentiles over the objects of that diameter: objects whose
    median lies between them are not resampled. ``None`` where ``median_diameter`` is."""
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


class StoreRecord(_Record):
    """The root attributes of a project store (``docs/store.md``), read and written by the store."""

    schema_version: int
    """Layout version of the store."""
    complete: bool
    """Written true last: a store without it was left by an interrupted run."""
    properties: DataProperties
    """The data properties measured by ``prepare``."""
    images: tuple[ImageRecord, ...]
    """The store's images, in store order."""
    history: tuple[dict[str, Any], ...] = ()
    """The steps that wrote the store, oldest first (free-form records of each step)."""


class ModelSpec(_Record):
    """What network a checkpoint holds and how its outputs map to the image."""

    architecture: Literal["BranchedERFNet"] = "BranchedERFNet"
    """The network class."""
    in_channels: int = Field(ge=1)
    """Input channels the network expects."""
    ndim: Literal[2, 3]
    """Spatial dimensions."""
    embedding_scale: float = Field(gt=0)
    """Pixels (along x) per embedding unit."""
    spacing: tuple[float, ...]
    """Pixel spacing per spatial axis, relative to x (the anisotropy)."""


class Thresholds(_Record):
    """The clustering thresholds a checkpoint was validated with."""

    foreground: float = Field(ge=0, le=1)
    """Foreground where the seed score is above this."""
    seed: float = Field(ge=0, le=1)
    """Instances start at seeds at or above this."""
    min_object_size: int = Field(ge=0)
    """Instances need more pixels than this."""


class BuiltinOrigin(_Record):
    """A model shipped inside the package (``embedseg models``) that a run started from."""

    kind: Literal["builtin"] = "builtin"
    """What the source was."""
    name: str
    """The built-in model's name (``dsb2018-fluo``)."""
    version: str
    """The version of embedseg-cli that shipped it."""
    sha256: str
    """Hex SHA-256 of the built-in model's file: which weights exactly."""
    started_from: ModelOrigin | None = None
    """Where the built-in model itself started from, if it was fine-tuned."""

    def describe(self) -> str:
        """One line for people: which model, which weights.

        Examples
        --------
        >>> BuiltinOrigin(name="dsb2018-fluo", version="0.1.0", sha256="eaba75f8a6cf").describe()
        'the built-in model dsb2018-fluo of embedseg-cli 0.1.0 (SHA-256 eaba75f8a6cf)'
        """
        return (
            f"the built-in model {self.name} of embedseg-cli {self.version} "
            f"(SHA-256 {self.sha256[:12]})"
        )


class FileOrigin(_Record):
    """An exported model file (``.zip``, ``.pt``, ``.npz``) that a run started from."""

    kind: Literal["file"] = "file"
    """What the source was."""
    path: str
    """The file's absolute path when the run started."""
    sha256: str
    """Hex SHA-256 of the file: which file exactly, wherever it is moved."""
    started_from: ModelOrigin | None = None
    """Where the file's model itself started from, if it was fine-tuned."""

    def describe(self) -> str:
        """One line for people: which file, which bytes.

        Examples
        --------
        >>> FileOrigin(path="/data/nuclei.zip", sha256="0123456789abcdef").describe()
        'the model file /data/nuclei.zip (SHA-256 0123456789ab)'
        """
        return f"the model file {self.path} (SHA-256 {self.sha256[:12]})"


class StoreOrigin(_Record):
    """A checkpoint of a project store that a run started from."""

    kind: Literal["store"] = "store"
    """What the source was."""
    path: str
    """The store's absolute path when the run started."""
    run: str
    """The training run of the checkpoint."""
    checkpoint: Literal["best", "last"]
    """Which of the run's checkpoints."""
    epoch: int
    """The checkpoint's epoch (0-based, as its ``epoch``)."""
    started_from: ModelOrigin | None = None
    """Where that run itself started from, if it was fine-tuned."""

    def describe(self) -> str:
        """One line for people: which store, run, checkpoint and epoch.

        Examples
        --------
        >>> StoreOrigin(path="/data/p.zarr", run="m", checkpoint="best", epoch=11).describe()
        'checkpoint m/best (epoch 12) of the project store /data/p.zarr'
        """
        return (
            f"checkpoint {self.run}/{self.checkpoint} (epoch {self.epoch + 1}) of the project "
            f"store {self.path}"
        )


ModelOrigin = Annotated[BuiltinOrigin | FileOrigin | StoreOrigin, Field(discriminator="kind")]
"""Where a run's initial weights came from (``train --from``), told apart by ``kind``."""


class CheckpointRecord(_Record):
    """The attributes of a checkpoint (``docs/store.md``): all prediction needs besides weights.

    Every source of a model (a store's checkpoint, a compact ``.npz``, an exported package or
    TorchScript file, a built-in model) carries these, validated here in one place.
    """

    complete: bool = True
    """Written true last: a checkpoint without it is ignored."""
    time: float | None = None
    """When it was written (seconds since the epoch)."""
    format: Literal[1] = CHECKPOINT_FORMAT
    """Version of this layout."""
    run: str | None = None
    """The training run."""
    epoch: int
    """The epoch (0-based) at whose end it was saved; -1 for a run's initial state."""
    best_ap: float | None = None
    """The best validation AP_dsb at IoU 0.5 of the run so far."""
    best_epoch: int | None = None
    """The epoch of ``best_ap``."""
    model: ModelSpec
    """The network."""
    thresholds: Thresholds
    """The clustering thresholds."""
    data: DataProperties
    """The data properties of the store it was trained on."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The training configuration (``TrainConfig`` as JSON)."""
    optimizer: tuple[dict[str, Any], ...] | None = None
    """In ``last``: the optimiser's parameter groups."""
    packed: tuple[dict[str, Any], ...] | None = None
    """In ``last``: name, dtype, shape and offset of each tensor packed into ``packed.<dtype>``."""
    tensors: dict[str, dict[str, Any]] | None = None
    """Per stored array: ``dtype``, ``shape`` and ``sha256``."""
    builtin: dict[str, Any] | None = None
    """For a built-in model: its description, training data, license and scores."""
    started_from: ModelOrigin | None = None
    """Where the run's initial weights came from (``train --from``); ``None`` for a run
    that started from random weights, and in checkpoints written before fine-tuning
    existed."""
