"""Validated configuration of every command, as pydantic models.

A command-line call builds one of these models from its options and hands it to the library
function of the same name; Python callers build it directly. This module imports no torch,
zarr or dask, so that building a configuration (and ``embedseg --help``) stays fast.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "CentreMethod",
    "DemoConfig",
    "EvaluateConfig",
    "PredictConfig",
    "PrepareConfig",
    "TrainConfig",
    "parse_bytes",
    "parse_size",
]


class CentreMethod(StrEnum):
    """How the centre of each object is chosen."""

    MEDOID = "medoid"
    """The object pixel with the smallest mean distance to the object's other pixels."""
    APPROXIMATE_MEDOID = "approximate-medoid"
    """The object pixel closest to the per-axis median of the object's pixels."""
    CENTROID = "centroid"
    """The mean position of the object's pixels (may fall outside a non-convex object)."""


def parse_size(text: str) -> tuple[int, ...]:
    """Parse a size written as ``256`` or ``32x128x128`` (ZYX order) into integers.

    Examples
    --------
    >>> parse_size("32x128x128")
    (32, 128, 128)
    >>> parse_size("256")
    (256,)
    """
    parts = re.split(r"[x,\s]+", text.strip().lower())
    if not parts or not all(part.isdigit() for part in parts):
        msg = f"a size must be one integer or integers joined by 'x', such as 256 or 32x128x128 (got {text!r})"
        raise ValueError(msg)
    return tuple(int(part) for part in parts)


_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str) -> int:
    """Parse an amount of memory such as ``4GB``, ``500MiB`` or ``2e9`` into bytes.

    Examples
    --------
    >>> parse_bytes("4GB"), parse_bytes("512MiB"), parse_bytes("1.5g")
    (4000000000, 536870912, 1500000000)
    """
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if match is None:
        msg = f"an amount of memory must look like 4GB, 500MiB or 2e9 (got {text!r})"
        raise ValueError(msg)
    number, prefix, binary = match.groups()
    unit = 1024 ** "kmgt".index(prefix) * 1024 if binary and prefix else _UNITS[prefix]
    return int(float(number) * unit)


class _Config(BaseModel):
    # allow_inf_nan=False: an infinite or NaN option (`--lr inf`) is a usage error.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=True, allow_inf_nan=False
    )


PositiveFloat = Annotated[float, Field(gt=0)]


class PrepareConfig(_Config):
    """Options of ``embedseg prepare``: turn a folder of TIFF pairs into a project store."""

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    source: Path
    """Folder with ``images/`` and ``masks/``, or with ``train/``, ``val/``, ``test/`` holding them."""
    out: Path
    """The project store to create (a Zarr v3 directory, conventionally ``*.zarr``)."""
    val_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    """Fraction of the training images held out for validation (ignored when ``val/`` exists)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the train/validation split."""
    voxel_size: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = None
    """Voxel size in micrometres (Z, Y, X); Z is ignored for 2D data. ``None`` reads it from
    the TIFF metadata, converted from its unit."""
    crop_size: tuple[int, ...] | None = None
    """Training crop size, one value for all axes or one per axis (ZYX). ``None`` derives it."""
    centre: CentreMethod = CentreMethod.MEDOID
    """How each object's centre is chosen."""
    downsample: tuple[int, ...] | None = None
    """Store the data on a grid this many times coarser, one value for all axes or one per
    axis (ZYX); the voxel size grows by the same factor. ``None`` keeps the pixels."""
    overwrite: bool = False
    """Replace an existing store at ``out``."""

    @field_validator("downsample")
    @classmethod
    def _downsample_is_positive(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= 3:
            msg = f"the downsampling factor has one value or one per axis (got {len(value)} values)"
            raise ValueError(msg)
        if min(value) < 1:
            msg = f"downsampling factors are whole numbers of at least 1 (got {min(value)})"
            raise ValueError(msg)
        return value

    @field_validator("crop_size")
    @classmethod
    def _crop_size_is_multiple_of_8(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= 3:
            msg = f"the crop size has one value or one per axis (got {len(value)} values)"
            raise ValueError(msg)
        bad = [size for size in value if size < 8 or size % 8]
        if bad:
            msg = f"crop sizes must be positive multiples of 8, as the network downsamples 3 times (got {bad[0]})"
            raise ValueError(msg)
        return value


class EvaluateConfig(_Config):
    """Options of ``embedseg evaluate``: score predicted labels against the ground truth."""

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    prediction: Path
    """Predicted labels: a TIFF file, a folder of TIFFs, a Zarr array or a project store."""
    ground_truth: Path | None = None
    """True labels in the same form; ``None`` when ``prediction`` is a project store."""
    thresholds: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] | None = None
    """IoU thresholds; ``None`` uses 0.5, 0.55, ..., 0.9 in 2D and 0.1, 0.2, ..., 0.9 in 3D."""


class TrainConfig(_Config):
    """Options of ``embedseg train``: train the network on a prepared project store."""

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    store: Path
    """The prepared project store."""
    epochs: int = Field(default=200, ge=1)
    """Number of epochs; the learning rate decays polynomially to 0 over them."""
    batch_size: int = Field(default=2, ge=1)
    """Crops per optimiser step (before the virtual batch multiplier)."""
    virtual_batch_multiplier: int = Field(default=8, ge=1)
    """Gradients of this many batches are accumulated before each optimiser step."""
    learning_rate: float = Field(default=5e-4, gt=0, le=1)
    """Initial learning rate of Adam (at most 1: larger steps overflow the weights)."""
    weight_decay: float = Field(default=1e-4, ge=0)
    """Weight decay of Adam."""
    steps_per_epoch: int | None = Field(default=None, ge=1)
    """Batches per epoch; None draws about one crop per training object."""
    workers: int = Field(default=2, ge=0)
    """Threads that read and augment crops ahead of the network (0: none)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the weights, the crop sampling and the augmentation."""
    device: str = "auto"
    """Torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    embedding_scale: float = Field(default=1024.0, gt=0)
    """Pixels per embedding unit: offsets reach this far (fixed and stored with the model)."""
    tune_thresholds: bool = False
    """Pick the foreground threshold on the validation images at each validation."""
    run: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Name of the training run; default: ``run-`` and the start time."""
    resume: bool = False
    """Continue the run from its last checkpoint. Options that define the model (the
    embedding scale, the seed, threshold tuning, the weight decay) must be the run's; those
    not set take the run's values, except ``device`` and ``workers``."""
    validate_every: int = Field(default=1, ge=1)
    """Validate (and maybe keep a best checkpoint) every this many epochs."""
    overwrite: bool = False
    """Replace an existing run of the same name (at the new run's first checkpoint)."""
    from_model: str | None = None
    """Start the network from this trained model's weights (fine-tuning): a built-in
    model's name, a project store or an exported model (``.zip``, ``.pt``, ``.npz``), as
    ``predict --model`` takes. Its network configuration and embedding scale are kept; the
    optimiser, schedule and data properties are this run's. ``None``: random weights."""
    from_run: str | None = None
    """With a store as ``from_model``: the run whose checkpoint to start from; None takes
    the newest."""
    from_checkpoint: Literal["best", "last"] = "best"
    """With a store as ``from_model``: which checkpoint of the run."""
    train_layers: Literal["all", "decoders"] = "all"
    """Which layers training changes: ``all``, or ``decoders``, where the encoder keeps the
    weights and batch statistics of ``from_model`` (which it needs)."""

    @field_validator("resume")
    @classmethod
    def _resume_names_its_run(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("run") is None:
            msg = "name the run to continue with --run NAME"
            raise ValueError(msg)
        return value

    @field_validator("overwrite")
    @classmethod
    def _overwrite_or_resume(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("resume"):
            msg = "--resume continues the run and --overwrite replaces it: pass only one"
            raise ValueError(msg)
        return value

    @field_validator("from_model", mode="before")
    @classmethod
    def _model_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("from_model")
    @classmethod
    def _from_or_resume(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("resume"):
            msg = (
                "--resume continues its run from the run's own last checkpoint and --from "
                "starts a new run from another model: pass only one"
            )
            raise ValueError(msg)
        return value

    @field_validator("from_run", "from_checkpoint")
    @classmethod
    def _store_source_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The default "best" is never validated: only a value that was given gets here.
        if value not in (None, "best") and info.data.get("from_model") is None:
            msg = "it picks the checkpoint of the store given with --from: give --from STORE"
            raise ValueError(msg)
        return value

    @field_validator("train_layers")
    @classmethod
    def _frozen_layers_need_a_model(cls, value: str, info: ValidationInfo) -> str:
        needs_model = value != "all" and not info.data.get("resume")
        if needs_model and info.data.get("from_model") is None:
            msg = (
                f"{value} keeps the other layers' weights as they are: start from a trained "
                "model with --from MODEL"
            )
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _embedding_scale_of_the_model(self) -> TrainConfig:
        if self.from_model is not None and "embedding_scale" in self.model_fields_set:
            msg = (
                "--embedding-scale belongs to the model given with --from (its offsets are in "
                "that scale): leave it out to keep the model's"
            )
            raise ValueError(msg)
        return self


class PredictConfig(_Config):
    """Options of ``embedseg predict``: labels for new images with a trained model."""

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    input: Path
    """A TIFF file, a folder of TIFFs, a Zarr or OME-Zarr image, or a project store (its test
    images)."""
    model: str | None = None
    """A project store, an exported model (.zip, .pt, .npz) or a built-in model's name; None
    uses ``input`` when it is a store, else the built-in default model."""
    out: Path | None = None
    """Output ``.tif``, ``.zarr`` (OME-Zarr labels) or folder; None writes into the input store
    (its predictions) or the input OME-Zarr image (its ``labels/``)."""
    run: str | None = None
    """Training run whose checkpoint is used; None takes the newest."""
    checkpoint: Literal["best", "last"] = "best"
    """Which checkpoint of the run."""
    tta: bool = True
    """Average over the 8 (2D) or 16 (3D) rotations and flips."""
    device: str = "auto"
    """Torch device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    foreground_threshold: float | None = Field(default=None, gt=0, lt=1)
    """Seed threshold of foreground; None uses the checkpoint's."""
    seed_threshold: float = Field(default=0.9, gt=0, lt=1)
    """Instances start only at seeds above this."""
    min_object_size: int | None = Field(default=None, ge=0)
    """Smallest object kept; None uses the training data's smallest object."""
    tile_size: tuple[int, ...] | None = None
    """Network window per axis (multiples of 8); None: 512 in 2D, 64x160x160 in 3D."""
    overlap: tuple[int, ...] | None = None
    """Overlap of neighbouring windows, blended; None: 64 in 2D, 16x32x32 in 3D."""
    block_size: tuple[int, ...] | None = None
    """Block of the output processed as one task; None: 1024 in 2D, 64x256x256 in 3D."""
    halo: tuple[int, ...] | None = None
    """Context around a block for clustering; None: the largest training object + 25%."""
    workers: int | None = Field(default=None, ge=1)
    """Start a local dask.distributed cluster of this many worker processes."""
    scheduler: str | None = None
    """Address (tcp://host:port) or scheduler file of an existing dask.distributed cluster."""
    batch_size: int | None = Field(default=None, ge=1)
    """Images per network call (windows, or their rotations and flips with ``tta``); None: one
    window with all its rotations and flips."""
    memory_budget: int | None = Field(default=None, gt=0)
    """Bytes the network's windows may use; None: half the free GPU memory on CUDA, else a
    quarter of the available memory (at most 4 GB)."""
    rescale: bool = True
    """Resample inputs whose voxel size differs from the training data's to the model's."""
    object_size: Literal["auto", "off"] | float | None = None
    """Typical object diameter in the input, in pixels: where it lies outside the training
    objects' diameters (their quartiles), the input is resampled to bring it to the nearer
    one, and the labels come back at its shape. ``auto`` estimates it for each image from a
    first pass of the network, ``off`` keeps the input's scale. None: ``auto`` for a
    built-in model, ``off`` for others."""
    ngff_version: Literal["0.4", "0.5"] = "0.5"
    """OME-Zarr version of ``.zarr`` outputs (0.4: Zarr v2, for older viewers)."""
    table: Path | None = None
    """Write a per-object table (CSV): label, voxels, centroid, bounding box, seed score."""
    recluster: bool = False
    """Cluster the network outputs kept in ``input`` (a ``.zarr`` written with
    ``keep_outputs``) again, with other thresholds, without the network."""
    dry_run: bool = False
    """Print the plan and a one-block time measurement; write nothing."""
    keep_outputs: bool = False
    """Keep the network outputs (float16) in the output, for ``embedseg recluster``."""
    resume: bool = False
    """Continue an interrupted run into the same output (one left by a run that has ended);
    an output finished with the same input, model and settings is left as it is."""
    overwrite: bool = False
    """Replace existing outputs and start interrupted runs over (never an input)."""

    @field_validator("overwrite")
    @classmethod
    def _overwrite_or_resume(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("resume"):
            msg = "--resume continues the run and --overwrite replaces it: pass only one"
            raise ValueError(msg)
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("object_size", mode="before")
    @classmethod
    def _object_size(cls, value: object) -> object:
        """``auto``, ``off`` or a diameter: a finite number of pixels above 0."""
        if value is None:
            return None
        number: object = value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("auto", "off"):
                return text
            try:
                number = float(text)
            except ValueError:
                number = None
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or number <= 0
        ):
            msg = (
                "give auto, off, or the typical diameter of the objects in pixels, a number "
                f"above 0 (got {value!r})"
            )
            raise ValueError(msg)
        return float(number)

    @field_validator("tile_size", "overlap", "block_size", "halo")
    @classmethod
    def _sizes(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not 1 <= len(value) <= 3 or any(v < 0 for v in value)):
            msg = f"give one size, or one per axis, of non-negative integers (got {value})"
            raise ValueError(msg)
        return value

    @field_validator("tile_size")
    @classmethod
    def _tile_size_is_multiple_of_8(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        bad = [size for size in value or () if size < 8 or size % 8]
        if bad:
            msg = f"window sizes must be positive multiples of 8, as the network downsamples 3 times (got {bad[0]})"
            raise ValueError(msg)
        return value


class DemoConfig(_Config):
    """Options of ``embedseg demo``: the whole tool on synthetic data, from nothing to labels.

    The defaults are the demo's tuned schedule; the data and schedule fields exist so that
    tests can run the same chain in seconds.
    """

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    out: Path = Path("embedseg-demo")
    """Working folder: the synthetic TIFFs, the project store, the labels and the preview."""
    ndim: Literal[2, 3] = 2
    """2 for images, 3 for volumes."""
    seed: int = Field(default=0, ge=0)
    """Seed of the synthetic data, the split and the training."""
    epochs: int | None = Field(default=None, ge=1)
    """Training epochs; None uses the demo's schedule for ``ndim``."""
    steps_per_epoch: int | None = Field(default=None, ge=1)
    """Batches per epoch; None uses the demo's schedule."""
    batch_size: int | None = Field(default=None, ge=1)
    """Crops per batch; None uses the demo's schedule."""
    images: tuple[int, int, int] | None = None
    """Number of synthetic (train, val, test) images; None uses the demo's data set."""
    image_shape: tuple[int, ...] | None = None
    """Shape of each synthetic image, (Y, X) or (Z, Y, X); None uses the demo's."""
    device: str = "auto"
    """Torch device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    tta: bool = True
    """Predict with test-time augmentation."""
    overwrite: bool = False
    """Replace the results of an earlier demo in ``out`` (never other files)."""

    @field_validator("images")
    @classmethod
    def _enough_images(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and (value[0] < 1 or value[1] < 0 or value[2] < 1):
            msg = f"the demo needs at least one training and one test image (got {value})"
            raise ValueError(msg)
        return value

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, value: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        ndim = info.data.get("ndim", 2)
        if value is not None and (len(value) != ndim or min(value) < 16):
            msg = f"give {'(Y, X)' if ndim == 2 else '(Z, Y, X)'} of at least 16 pixels each (got {value})"
            raise ValueError(msg)
        return value


class ModelFormat(StrEnum):
    """What ``embedseg export model`` writes."""

    BIOIMAGEIO = "bioimageio"
    """A bioimage.io model package (``.zip``): weights, test data, documentation, clustering."""
    TORCHSCRIPT = "torchscript"
    """One TorchScript file (``.pt``) of the network, with the model's attributes inside."""
    ONNX = "onnx"
    """One ONNX file (``.onnx``) of the network, with the model's attributes as metadata."""


MODEL_SUFFIXES: dict[ModelFormat, str] = {
    ModelFormat.BIOIMAGEIO: ".zip",
    ModelFormat.TORCHSCRIPT: ".pt",
    ModelFormat.ONNX: ".onnx",
}
"""The file extension of each model format (what ``--model`` recognises a file by)."""


class ExportModelConfig(_Config):
    """Options of ``embedseg export model``: a trained model in a format other tools read."""

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    model: str
    """A project store (one of its checkpoints), an exported model or a built-in model name."""
    format: ModelFormat
    """What to write."""
    out: Path
    """The file to write; its extension must be the format's (``.zip``, ``.pt``, ``.onnx``)."""
    run: str | None = None
    """Training run whose checkpoint is exported; None takes the newest."""
    checkpoint: Literal["best", "last"] = "best"
    """Which checkpoint of the run."""
    image: Path | None = None
    """Image for the bioimage.io package's test input and cover; None takes one of the
    store's images (needed when ``model`` is not a store)."""
    name: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_+\- ()]+$"
    )
    """Name of the bioimage.io model (letters, digits, spaces and ``_+-()``); None derives
    one from the store's name."""
    authors: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    """Authors of the bioimage.io model; none given: the user running the export."""
    license: str = "CC-BY-4.0"
    """SPDX licence identifier of the bioimage.io model's weights."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""

    @field_validator("model", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value


class LabelFormat(StrEnum):
    """What ``embedseg export labels`` writes."""

    TIFF = "tiff"
    """A TIFF (uint16 where the labels fit, else uint32) with the voxel size."""
    OME_ZARR = "ome-zarr"
    """An OME-Zarr label image with a multiscale pyramid."""
    CSV = "csv"
    """A table with one row per object: size, centroid, bounding box, mean intensity."""
    PREVIEW = "preview"
    """A PNG of the label outlines over the image (3D: middle slice and maximum projection)."""


class ExportLabelsConfig(_Config):
    """Options of ``embedseg export labels``: predicted labels in a format other tools read."""

    version: Literal["1"] = "1"
    """Version of this configuration's layout."""
    labels: Path
    """A TIFF file, a folder of TIFFs, a Zarr or OME-Zarr label array, or a project store
    (its predictions)."""
    format: LabelFormat
    """What to write."""
    out: Path
    """The file to write; a folder where ``labels`` holds several label images (except for
    ``csv``, which always writes one table)."""
    image: Path | None = None
    """The intensity image (or a folder of them, matched by name) for the mean intensity and
    the preview; a store's own images are used for its predictions."""
    ngff_version: Literal["0.4", "0.5"] = "0.5"
    """OME-Zarr version of ``ome-zarr`` output: 0.5 (Zarr v3) or 0.4 (Zarr v2, older viewers)."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""
