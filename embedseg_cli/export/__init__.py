"""``export``: trained models and predicted labels in the formats the field uses.

Models (:func:`export_model`):

- ``bioimageio``: a bioimage.io model package (``.zip``, spec format 0.5) that produces
  instance labels by itself, see :func:`export_model` for what it holds and why the seed
  clustering is a custom postprocessing step;
- ``torchscript``: one TorchScript file of the network with the model's attributes inside
  (``embedseg predict --model model.pt`` reads it);
- ``onnx``: one ONNX file of the network (batch and spatial axes dynamic; spatial extents
  must be multiples of 8), the attributes in its metadata.

Labels (:func:`export_labels`): a label image (TIFF, Zarr, OME-Zarr or a store's predictions)
as TIFF, OME-Zarr labels, a per-object table (CSV) or a preview picture (PNG).

Every output is written all or nothing: into a hidden sibling first, then renamed into
place; an existing output is replaced only with ``overwrite``, only where it is an earlier
output of the same kind (never a folder of other files, nor one that holds an input), and is
left untouched when anything fails before that rename.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import importlib.util
import json
import logging
import math
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
import torch
from numpy.typing import NDArray

from embedseg_cli.config import (
    MODEL_SUFFIXES,
    ExportLabelsConfig,
    ExportModelConfig,
    LabelFormat,
    ModelFormat,
)
from embedseg_cli.data.objects import measure_block, object_table
from embedseg_cli.data.preview import render_preview
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.files import (
    check_output_apart,
    drop_singleton_axes,
    find_label_images,
    is_ome_zarr_label_image,
    is_zarr,
    list_tiffs,
    open_volume,
    replace_path,
    write_ome_zarr_labels,
    write_png,
)
from embedseg_cli.io.models import (
    TrainedModel,
    load_network,
    read_model,
    state_dict_of,
    write_torchscript,
)
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.method.inference import ClusterThresholds, predict_raw, segment
from embedseg_cli.method.instances import EmbedSegInstances, architecture_source
from embedseg_cli.progress import NullProgress, Progress

__all__ = [
    "CITATION",
    "LabelsExportReport",
    "ModelExportReport",
    "export_labels",
    "export_model",
]

logger = logging.getLogger(__name__)

CITATION = {
    "text": (
        "Lalit, M., Tomancak, P. and Jug, F. Embedding-based Instance Segmentation in "
        "Microscopy. Proceedings of the Fourth Conference on Medical Imaging with Deep "
        "Learning (MIDL), PMLR 143:399-415, 2021."
    ),
    "url": "https://proceedings.mlr.press/v143/lalit21a.html",
}
"""The EmbedSeg paper, cited by every exported bioimage.io package."""

_EXPORT_EXTRA = "pip install 'embedseg-cli[export]'"
_TEST_EXTENT = {2: (256, 256), 3: (32, 128, 128)}
_COVER_MIN_HEIGHT = 256
_PERCENTILES_DEFAULT = (1.0, 99.8)
_EPS = 1e-6
_DISCRETE_MISMATCH_PPM = 1000


@dataclass(frozen=True)
class ModelExportReport:
    """What ``export_model`` wrote."""

    format: str
    out: str
    origin: str
    ndim: int
    channels: int
    seconds: float


@dataclass(frozen=True)
class LabelsExportReport:
    """What ``export_labels`` wrote."""

    format: str
    out: str
    images: int
    objects: int
    seconds: float


# ---------------------------------------------------------------------------------------
# Writing all or nothing
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    """What an export writes at ``--out``, so that only an earlier one is ever replaced.

    ``layout`` is ``"file"`` (one file), ``"ome-zarr"`` (one OME-Zarr label image) or
    ``"folder"`` (a folder of ``*suffix`` entries, files or, for ``.zarr``, label images).
    """

    what: str
    layout: Literal["file", "ome-zarr", "folder"]
    suffix: str = ""

    def check_replaceable(self, out: Path) -> None:
        """Refuse to replace anything at ``out`` but an earlier output of this kind.

        Raises
        ------
        OutputExistsError
            Where ``out`` exists and is not what this export writes.
        """
        if not out.exists() and not out.is_symlink():
            return
        problem = None
        if self.layout == "file":
            if out.is_dir():
                problem = "is a folder"
        elif not out.is_dir() or out.is_symlink():
            problem = "is not a folder"
        elif self.layout == "ome-zarr":
            if any(out.iterdir()) and not is_ome_zarr_label_image(out):
                problem = "is not an OME-Zarr label image written by an export"
        else:
            problem = next(
                (
                    f"holds {entry.name}, which this export does not write"
                    for entry in sorted(out.iterdir())
                    if not self._writes(entry)
                ),
                None,
            )
        if problem is not None:
            msg = (
                f"{out} {problem}: --overwrite replaces only an earlier export of {self.what}; "
                "choose another --out, or remove it yourself"
            )
            raise OutputExistsError(msg)

    def _writes(self, entry: Path) -> bool:
        """Whether an entry of an output folder is one this export writes."""
        if entry.suffix != self.suffix or entry.is_symlink():
            return False
        if self.suffix == ".zarr":
            return entry.is_dir() and is_ome_zarr_label_image(entry)
        return entry.is_file()


def _claim(out: Path, overwrite: bool, output: _Output, inputs: dict[str, Path | None]) -> None:
    """Check, before anything is written, that ``out`` may be written.

    Raises
    ------
    InputError
        Where ``out`` is one of ``inputs`` or holds one.
    OutputExistsError
        Where ``out`` exists and is not an earlier output of this kind, or exists and
        ``overwrite`` is not set.
    """
    check_output_apart(out, inputs)
    output.check_replaceable(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        msg = f"{out} already exists: pass --overwrite to replace it, or choose another --out"
        raise OutputExistsError(msg)


@contextmanager
def _staged(out: Path, output: _Output) -> Iterator[Path]:
    """A hidden sibling path to write to; renamed to ``out`` when the block succeeds.

    What is at ``out`` is checked again just before it is replaced, in case it changed
    while the export ran.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the folder of {out} ({exc.strerror or exc}): check the path"
        raise InputError(msg) from None
    for stale in out.parent.glob(f".{out.name}.incomplete-*"):
        _remove(stale)
    staging = out.parent / f".{out.name}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        output.check_replaceable(out)
        replace_path(staging, out)
    except OSError as exc:
        msg = f"cannot write {out} ({exc.strerror or exc}): check that its folder is writable and has space"
        raise InputError(msg) from None
    except RuntimeError as exc:
        # torch's writers (jit.save, save) report a failed open or write as a RuntimeError.
        if not any(text in str(exc) for text in _TORCH_WRITE_FAILURES):
            raise
        logger.debug("writing %s: %s", staging, exc)
        reason = str(exc).rsplit("strerror:", 1)[-1].strip() if "strerror:" in str(exc) else ""
        msg = f"cannot write {out} ({reason or 'the write failed'}): check that its folder is writable and has space"
        raise InputError(msg) from None
    finally:
        _remove(staging)


_TORCH_WRITE_FAILURES = ("open file failed", "file write failed", "PytorchStreamWriter failed")
"""Texts of torch's RuntimeError for a file it could not open or write."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def export_model(
    config: ExportModelConfig, *, progress: Progress | None = None
) -> ModelExportReport:
    """Write a trained model as a bioimage.io package, a TorchScript or an ONNX file.

    The bioimage.io package (spec format 0.5, built and checked with ``bioimageio.spec``)
    produces instance labels by itself. It holds:

    - the input's preprocessing, the training normalisation: per image and channel, the
      percentiles the training used (1 and 99.8) map to 0 and 1 (``scale_range``);
    - ``pytorch_state_dict`` weights with the architecture's source (``model.py``:
      embedseg's ``model.py`` followed by :func:`cluster_instances` and
      :class:`EmbedSegInstances`), and the same network as ``torchscript`` weights (the
      traced ``BranchedERFNet`` inside the scripted clustering). Both give uint32 labels,
      one channel, numbered by their seeds' positions as ``embedseg predict`` numbers them.

      Why the clustering is in the network rather than a postprocessing step: bioimage.io
      has no built-in step for EmbedSeg's clustering, and its ``custom`` postprocessing
      (a Python file in the package) must keep the tensor's shape in ``bioimageio.core``
      (0.11 asserts it), so it cannot turn the ``2 * ndim + 1`` raw channels into one
      channel of labels; a tensor that carried the labels beside unused channels would
      mislead every consumer. Inside the forward pass, as InstanSeg's packages do it, the
      clustering runs in every consumer that runs TorchScript or PyTorch (Fiji's
      deepImageJ, QuPath, ilastik, ``bioimageio.core``), and ``bioimageio.core``'s test
      checks it on the test image. :func:`cluster_instances` is a transcription of
      :func:`embedseg_cli.method.clustering.find_instances` into TorchScript-compatible torch;
      the tests check that both give the same labels;
    - a test input (an image of the store, cropped to a multiple of 8) with its expected
      labels, computed here with embedseg's pipeline, and a cover picture of that input
      beside its labels;
    - authors, licence, the citation of the EmbedSeg paper, and every attribute of the
      checkpoint (data properties, thresholds, embedding scale) under ``config.embedseg``,
      which ``embedseg predict --model model.zip`` reads back.

    Raises
    ------
    InputError
        Where the model cannot be read, the export libraries are missing, no test image is
        available for a bioimage.io package, or ``out`` is an input or holds one.
    StoreError
        Where the store has no trained checkpoint.
    OutputExistsError
        Where ``out`` exists and ``overwrite`` is not set, or ``out`` is a folder (only a
        file is ever replaced).
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    suffix = MODEL_SUFFIXES[config.format]
    if config.out.suffix.lower() != suffix:
        # Exit 1 like predict's --out x.png: the value is well formed, the file is wrong.
        msg = (
            f"--out {config.out}: a {config.format.value} model is written to a {suffix} "
            f"file: give --out {config.out.with_suffix(suffix).name}"
        )
        raise InputError(msg)
    output = _Output(f"a {config.format.value} model (a file)", "file")
    model_path = Path(config.model)
    inputs = {"MODEL": model_path if model_path.exists() else None, "--image": config.image}
    _claim(config.out, config.overwrite, output, inputs)
    trained = read_model(config.model, run=config.run, checkpoint=config.checkpoint)
    state_dict_of(trained)  # fails early, with a clear message, on weights that do not fit
    progress.start(f"Exporting {config.format.value}", total=1)
    with _staged(config.out, output) as staging:
        if config.format == ModelFormat.TORCHSCRIPT:
            write_torchscript(trained, staging)
        elif config.format == ModelFormat.ONNX:
            _write_onnx(trained, staging)
        else:
            _write_bioimageio(trained, staging, config)
    progress.advance()
    progress.finish()
    seconds = time.perf_counter() - started
    logger.info("wrote %s (%s) in %.1f s", config.out, config.format.value, seconds)
    return ModelExportReport(
        config.format.value,
        str(config.out),
        trained.origin,
        trained.ndim,
        trained.channels,
        seconds,
    )


def _spatial_axes(ndim: int) -> list[str]:
    return list("zyx"[-ndim:])


def _write_onnx(trained: TrainedModel, path: Path) -> None:
    """The network as ONNX (opset 17), the attributes as metadata ``embedseg``."""
    if importlib.util.find_spec("onnx") is None:
        msg = f"--format onnx needs the onnx package: {_EXPORT_EXTRA}"
        raise InputError(msg)
    import onnx  # noqa: PLC0415 (optional dependency)

    network = load_network(trained, torch.device("cpu"))
    example = torch.zeros(1, trained.channels, *([16] * trained.ndim))
    dynamic = {0: "batch", **{2 + k: axis for k, axis in enumerate(_spatial_axes(trained.ndim))}}
    with warnings.catch_warnings():
        # torch's export-based exporter specialises the batch axis of this network and
        # needs onnxscript; the TorchScript-based one (deprecated, still supported) keeps
        # every axis dynamic. It warns about both, and that shape checks are not traced.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["raw"],
            dynamic_axes={"image": dynamic, "raw": dynamic},
            opset_version=17,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "embedseg", json.dumps(trained.attrs)
    proto.producer_name = "embedseg-cli"
    onnx.save(proto, str(path))


def _instances_kwargs(trained: TrainedModel) -> dict[str, Any]:
    spec, thresholds = trained.attrs["model"], trained.attrs["thresholds"]
    return {
        "in_channels": trained.channels,
        "ndim": trained.ndim,
        "spacing": [float(a) for a in spec["spacing"]],
        "embedding_scale": float(spec["embedding_scale"]),
        "foreground_threshold": float(thresholds["foreground"]),
        "seed_threshold": float(thresholds["seed"]),
        "min_object_size": int(thresholds["min_object_size"]),
    }


def _instances_network(trained: TrainedModel) -> EmbedSegInstances:
    instances = EmbedSegInstances(**_instances_kwargs(trained))
    instances.network.load_state_dict(state_dict_of(trained))
    return instances.eval()


def _write_instances_torchscript(trained: TrainedModel, path: Path) -> None:
    """The package's TorchScript weights: the traced network inside the scripted clustering."""
    instances = _instances_network(trained)
    example = torch.zeros(1, trained.channels, *([16] * trained.ndim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instances.network = torch.jit.trace(  # type: ignore[no-untyped-call]
            instances.network, example, check_trace=False
        )
        scripted = torch.jit.script(instances)
        torch.jit.save(scripted, str(path))


def _renumber_by_seed(labels: NDArray[np.uint32], seeds: NDArray[np.int64]) -> NDArray[np.uint32]:
    """Number instances by their seeds' flat positions, as ``predict`` does."""
    if len(seeds) == 0:
        return labels
    order = np.argsort(np.ravel_multi_index(tuple(seeds.T), labels.shape), kind="stable")
    lookup = np.zeros(len(order) + 1, dtype=np.uint32)
    lookup[order + 1] = np.arange(1, len(order) + 1, dtype=np.uint32)
    return lookup[labels]


def _channels_first(
    array: NDArray[Any], axes: str, trained: TrainedModel, where: str
) -> NDArray[Any]:
    axes = axes.upper()
    if "C" in axes:
        array = np.moveaxis(array, axes.index("C"), 0)
        axes = "C" + axes.replace("C", "")
    else:
        array = array[None]
        axes = "C" + axes
    while array.ndim > trained.ndim + 1 and array.shape[1] == 1:
        array, axes = array[:, 0], axes[0] + axes[2:]  # drop a leading size-1 axis (T)
    if array.ndim != trained.ndim + 1 or array.shape[0] != trained.channels:
        msg = (
            f"{where} has axes {axes} and shape {array.shape[1:]} but the model takes "
            f"{trained.ndim}D images with {trained.channels} channel(s): give an image like "
            "the training data with --image"
        )
        raise InputError(msg)
    return array


def _example_image(trained: TrainedModel, config: ExportModelConfig) -> NDArray[np.float32]:
    """An image for the package's test input: channels first, cropped to multiples of 8."""
    if config.image is not None:
        volume = open_volume(config.image)
        image = _channels_first(np.asarray(volume.array), volume.axes, trained, str(config.image))
    elif is_project_store(config.model):
        store = ProjectStore.open(config.model)
        records = store.images("test") or store.images("val") or store.images()
        if not records:
            msg = f"{config.model} holds no images: give one with --image for the package's test input"
            raise InputError(msg)
        record = records[0]
        pixels = np.asarray(store.image(record.name)[...])
        image = _channels_first(
            pixels, record.axes, trained, f"{config.model}/images/{record.name}"
        )
    else:
        msg = (
            f"{config.model} is not a project store: give an image like the training data "
            "with --image, for the package's test input and cover"
        )
        raise InputError(msg)
    extent = _TEST_EXTENT[trained.ndim]
    crop = []
    for size, cap in zip(image.shape[1:], extent, strict=True):
        kept = min(cap, size - size % 8)
        start = (size - kept) // 2 if kept else 0
        crop.append(slice(start, start + kept) if kept else slice(None))
    image = image[(slice(None), *crop)]
    padding = [(0, 0)] + [(0, (-n) % 8) for n in image.shape[1:]]
    if any(p for _, p in padding):
        image = np.pad(image, padding, mode="edge")  # an axis shorter than 8
    return np.ascontiguousarray(image, dtype=np.float32)


def _percentiles(trained: TrainedModel) -> tuple[float, float]:
    values = trained.attrs.get("data", {}).get("normalisation") or _PERCENTILES_DEFAULT
    return float(values[0]), float(values[1])


def _normalise(image: NDArray[np.float32], low: float, high: float) -> NDArray[np.float32]:
    """bioimage.io's ``scale_range`` per channel: the percentiles map to 0 and 1."""
    axes = tuple(range(1, image.ndim))
    lo = np.percentile(image, low, axis=axes, keepdims=True)
    hi = np.percentile(image, high, axis=axes, keepdims=True)
    return np.asarray((image - lo) / (hi - lo + _EPS), dtype=np.float32)


def _expected_labels(trained: TrainedModel, normalised: NDArray[np.float32]) -> NDArray[np.uint32]:
    """The labels embedseg's own pipeline gives one normalised image (no augmentation)."""
    kwargs = _instances_kwargs(trained)
    network = load_network(trained, torch.device("cpu"))
    raw = predict_raw(network, torch.from_numpy(normalised), trained.ndim)
    result = segment(
        raw,
        trained.ndim,
        origin=(0,) * trained.ndim,
        spacing=kwargs["spacing"],
        scale=kwargs["embedding_scale"],
        thresholds=ClusterThresholds(
            foreground=kwargs["foreground_threshold"],
            seed=kwargs["seed_threshold"],
            min_object_size=kwargs["min_object_size"],
        ),
    )
    return _renumber_by_seed(result.labels, result.seeds)


def _cover(image: NDArray[np.float32], labels: NDArray[np.uint32]) -> NDArray[np.uint8]:
    """The input (first channel) beside its label outlines, about 2:1 (2D) or 1:1 (3D).

    A volume's panels are its middle slice and maximum projection side by side, so the
    input goes above its outlines rather than beside them.
    """
    plain = render_preview(np.zeros_like(labels), image[0])
    outlined = render_preview(labels, image[0])
    axis = 0 if labels.ndim == 3 else 1
    gap_shape = (8, plain.shape[1], 3) if axis == 0 else (plain.shape[0], 8, 3)
    gap = np.full(gap_shape, 255, np.uint8)
    picture = np.concatenate([plain, gap, outlined], axis=axis)
    factor = max(1, math.ceil(_COVER_MIN_HEIGHT / picture.shape[0]))
    return np.asarray(picture.repeat(factor, axis=0).repeat(factor, axis=1))


def _readme(trained: TrainedModel, name: str, low: float, high: float) -> str:
    kwargs = _instances_kwargs(trained)
    ndim, channels = trained.ndim, trained.channels
    data = trained.attrs.get("data", {})
    return f"""# {name}

An EmbedSeg model (Lalit, Tomancak and Jug, MIDL 2021) for instance segmentation of
{ndim}D images with {channels} channel(s), trained and exported with embedseg-cli.

## What it does

1. **Preprocessing**: per image and channel, the intensities at the percentiles
   {low:g} and {high:g} are mapped to 0 and 1, as in training.
2. **Network** (`model.py`, `EmbedSegInstances`): the branched ERF-Net
   (`BranchedERFNet`, its parameters under `network.`) predicts for every pixel {ndim}
   offsets, {ndim} sigmas and a seed score; then, in the same forward pass, the
   activations (`tanh`, `exp(10 * sigma)`, `sigmoid`), the embeddings in whole-image
   coordinates (spacing {kwargs["spacing"]}, {kwargs["embedding_scale"]:g} pixels per
   unit) and EmbedSeg's greedy seed clustering: foreground where the seed is above
   {kwargs["foreground_threshold"]:g}; instances start at seeds of at least
   {kwargs["seed_threshold"]:g} and gather the foreground pixels inside their Gaussian
   (membership above 0.5); they are kept when larger than {kwargs["min_object_size"]}
   pixels and mostly new.
3. **Output**: uint32 instance labels, one channel, numbered 1..N in the order of the
   positions of their seeds.

Spatial extents must be multiples of 8. The clustering needs the whole image at once:
predict without tiling (blocking). `embedseg predict IMAGE --model this.zip` runs the
same model on images of any size (tiled, blended, clustered block by block) and averages
over rotations and flips (test-time augmentation).

## Validation

The test input is an image of the training project; its expected output was computed by
embedseg's own pipeline (network, activations, bucketed clustering) and is reproduced
exactly by both weight formats (`bioimageio test`).

## Training data

Voxel size {data.get("voxel_size")}; {data.get("n_objects")} objects of
{data.get("min_object_size")} to {data.get("max_object_size")} pixels. All the data
properties and thresholds are in `config.embedseg` of `rdf.yaml`.
"""


def _write_bioimageio(trained: TrainedModel, path: Path, config: ExportModelConfig) -> None:
    if importlib.util.find_spec("bioimageio") is None or (
        importlib.util.find_spec("bioimageio.spec") is None
    ):
        msg = f"--format bioimageio needs the bioimageio.spec package: {_EXPORT_EXTRA}"
        raise InputError(msg)
    _check_bioimageio_works()
    image = _example_image(trained, config)
    low, high = _percentiles(trained)
    labels = _expected_labels(trained, _normalise(image, low, high))
    if not labels.any():
        msg = (
            f"{trained.origin} finds no objects in the package's test image (of shape "
            f"{image.shape[1:]}), and a bioimage.io package needs a test output with objects: "
            "give an image with objects with --image (or train the model longer)"
        )
        raise InputError(msg)
    path = path.absolute()  # bioimageio.spec resolves relative paths against the folder
    folder = path.parent / f"{path.name}.files"
    folder.mkdir()
    try:
        instances = _instances_network(trained)
        torch.save(instances.state_dict(), folder / "weights.pt")
        _write_instances_torchscript(trained, folder / "weights_torchscript.pt")
        (folder / "model.py").write_text(architecture_source(), encoding="utf-8")
        np.save(folder / "test_input.npy", image[None])
        np.save(folder / "test_output.npy", labels[None, None])
        write_png(folder / "cover.png", _cover(image, labels))
        name = config.name or _default_name(config.model)
        (folder / "README.md").write_text(_readme(trained, name, low, high), encoding="utf-8")
        _package(trained, config, folder, path, name, low, high)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_bioimageio_works() -> None:
    """Refuse, with the fix, the one known broken combination of versions.

    bioimageio.spec before 0.5.14 (0.5.12 is what bioimageio.core 0.11 requires) passes
    pydantic's serialisation info where pydantic 2.14 expects an index, so describing any
    file (weights, architecture, test tensors) fails.
    """
    import pydantic  # noqa: PLC0415
    from bioimageio.spec import __version__ as spec_version  # noqa: PLC0415

    def numbers(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())

    if numbers(spec_version) < (0, 5, 14) and numbers(pydantic.VERSION) >= (2, 14):
        msg = (
            f"bioimageio.spec {spec_version} does not work with pydantic {pydantic.VERSION}: "
            "pip install 'pydantic<2.14' (or bioimageio.spec 0.5.14 or newer)"
        )
        raise InputError(msg)


def _default_name(model: str) -> str:
    """``EmbedSeg <store name>``, in the characters bioimage.io allows in a name."""
    stem = Path(model.removeprefix("builtin:")).name
    for suffix in (".zarr", ".zip", ".pt", ".npz"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", stem).strip() or "model"
    return f"EmbedSeg {stem}"[:128]


def _package(
    trained: TrainedModel,
    config: ExportModelConfig,
    folder: Path,
    path: Path,
    name: str,
    low: float,
    high: float,
) -> None:
    """Describe the files in ``folder`` with bioimageio.spec and zip them into ``path``."""
    from bioimageio.spec import ValidationContext, save_bioimageio_package  # noqa: PLC0415
    from bioimageio.spec.model import v0_5  # noqa: PLC0415

    ndim, channels = trained.ndim, trained.channels
    spatial = _spatial_axes(ndim)
    input_id = v0_5.TensorId("image")
    output_id = v0_5.TensorId("labels")
    with ValidationContext(root=folder, perform_io_checks=False):
        input_axes: list[Any] = [
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(f"c{i}") for i in range(channels)]),
            *(
                v0_5.SpaceInputAxis(
                    id=v0_5.AxisId(axis), size=v0_5.ParameterizedSize(min=8, step=8)
                )
                for axis in spatial
            ),
        ]
        output_axes: list[Any] = [
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier("labels")]),
            *(
                v0_5.SpaceOutputAxis(
                    id=v0_5.AxisId(axis),
                    size=v0_5.SizeReference(tensor_id=input_id, axis_id=v0_5.AxisId(axis)),
                )
                for axis in spatial
            ),
        ]
        inputs = v0_5.InputTensorDescr(
            id=input_id,
            description="The image, in any intensity range (it is normalised by its percentiles).",
            axes=input_axes,
            test_tensor=_file(v0_5, folder / "test_input.npy"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                v0_5.ScaleRangeDescr(
                    kwargs=v0_5.ScaleRangeKwargs(
                        axes=[v0_5.AxisId(a) for a in spatial],
                        min_percentile=low,
                        max_percentile=high,
                        eps=_EPS,
                    )
                ),
            ],
        )
        outputs = v0_5.OutputTensorDescr(
            id=output_id,
            description="Instance labels (0 = background), numbered by the positions of their seeds.",
            axes=output_axes,
            test_tensor=_file(v0_5, folder / "test_output.npy"),
            data=v0_5.IntervalOrRatioDataDescr(type="uint32"),
            postprocessing=[v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="uint32"))],
        )
        pytorch_version = torch.__version__.split("+")[0]
        weights = v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt",
                sha256=_sha256(folder / "weights.pt"),
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=folder / "model.py",
                    sha256=_sha256(folder / "model.py"),
                    callable=v0_5.Identifier("EmbedSegInstances"),
                    kwargs=_instances_kwargs(trained),
                ),
                pytorch_version=pytorch_version,
            ),
            torchscript=v0_5.TorchscriptWeightsDescr(
                source=folder / "weights_torchscript.pt",
                sha256=_sha256(folder / "weights_torchscript.pt"),
                pytorch_version=pytorch_version,
                parent="pytorch_state_dict",
            ),
        )
        authors = config.authors or (_user_name(),)
        description = v0_5.ModelDescr(
            name=name,
            description=(
                f"EmbedSeg instance segmentation of {ndim}D microscopy images "
                f"({channels} channel(s)): network and seed clustering."
            ),
            authors=[v0_5.Author(name=author) for author in authors],
            cite=[v0_5.CiteEntry(text=CITATION["text"], url=CITATION["url"])],
            license=v0_5.LicenseId(config.license),
            documentation=_file(v0_5, folder / "README.md"),
            covers=[_file(v0_5, folder / "cover.png")],
            tags=["embedseg", "instance-segmentation", f"{ndim}d", "pytorch", "microscopy"],
            inputs=[inputs],
            outputs=[outputs],
            weights=weights,
            config=v0_5.Config(
                bioimageio=v0_5.BioimageioConfig(
                    reproducibility_tolerance=[
                        # Labels are discrete: equal or not. A pixel whose seed or membership
                        # lies within rounding of a threshold may flip on other hardware.
                        v0_5.ReproducibilityTolerance(
                            relative_tolerance=0.0,
                            absolute_tolerance=0.0,
                            mismatched_elements_per_million=_DISCRETE_MISMATCH_PPM,
                            output_ids=[output_id],
                        )
                    ],
                    architecture_type="branched ERF-Net",
                    task="instance segmentation",
                ),
                embedseg=trained.attrs,
            ),
        )
    summary = description.validation_summary
    if summary.status == "failed":
        msg = f"bioimage.io rejected the description of {config.out}: {summary.display()}"
        raise RuntimeError(msg)
    save_bioimageio_package(description, output_path=path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(v0_5: Any, path: Path) -> Any:
    return v0_5.FileDescr(source=path, sha256=_sha256(path))


def _user_name() -> str:
    try:
        return getpass.getuser() or "unknown"
    except (KeyError, OSError):
        return "unknown"


# ---------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LabelImage:
    """One label image to export, read when asked."""

    name: str
    where: str
    read: Callable[[], NDArray[Any]]
    voxel_size: Callable[[], tuple[float, ...] | None]
    image: Callable[[], NDArray[Any] | None]
    """Its intensity image, channels first, or None."""


def _voxel_size_of(path: Path) -> tuple[float, ...] | None:
    """The voxel size (ZYX) the metadata of ``path`` gives, 1 for an axis it does not."""
    try:
        volume = open_volume(path)
    except InputError:
        return None
    spatial = [a for a in volume.axes if a in "ZYX"]
    if not any(a in volume.voxel_size for a in spatial):
        return None
    return tuple(float(volume.voxel_size.get(a, 1.0)) for a in spatial)


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
                lambda name=name: tuple(records[name].voxel_size) if name in records else None,  # type: ignore[misc]
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


def _checked_labels(data: NDArray[Any], where: str) -> NDArray[Any]:
    if not np.issubdtype(data.dtype, np.integer):
        msg = (
            f"{where} has {data.dtype} values: labels must be integers (0 = background); "
            "give the label image, not a probability map or an intensity image"
        )
        raise InputError(msg)
    data = drop_singleton_axes(data)
    if data.ndim not in (2, 3):
        msg = f"{where} has shape {data.shape}: labels must be 2D or 3D"
        raise InputError(msg)
    if data.size and np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0:
        msg = f"{where} has negative labels: use 0 for background and positive integers for objects"
        raise InputError(msg)
    if data.size and int(data.max()) > np.iinfo(np.uint32).max:
        msg = f"{where} has labels above 2**32 - 1: relabel it with consecutive integers"
        raise InputError(msg)
    return data.astype(np.uint32, copy=False)


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
        output = _Output(f"{what} (a folder of {suffix} outputs)", "folder", suffix)
    elif config.format == LabelFormat.OME_ZARR:
        output = _Output(f"{what} (an OME-Zarr label image)", "ome-zarr")
    else:
        output = _Output(f"{what} (a file)", "file")
    _claim(config.out, config.overwrite, output, inputs)
    objects = 0
    rows: list[dict[str, Any]] = []
    progress.start(f"Exporting labels as {config.format.value}", total=len(items))
    with _staged(config.out, output) as staging:
        if many:
            staging.mkdir()
        for item in items:
            labels = _checked_labels(item.read(), item.where)
            target = staging / f"{item.name}{suffix}" if many else staging
            if config.format == LabelFormat.TIFF:
                _write_tiff(target, labels, item.voxel_size())
            elif config.format == LabelFormat.OME_ZARR:
                write_ome_zarr_labels(
                    target,
                    labels,
                    axes="ZYX"[-labels.ndim :],
                    voxel_size=_voxel_size_or_ones(item.voxel_size(), labels.ndim),
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
            _write_csv(staging, rows)
    progress.finish()
    seconds = time.perf_counter() - started
    logger.info(
        "wrote %s: %d image(s), %d objects in %.1f s", config.out, len(items), objects, seconds
    )
    return LabelsExportReport(config.format.value, str(config.out), len(items), objects, seconds)


def _voxel_size_or_ones(voxel_size: tuple[float, ...] | None, ndim: int) -> tuple[float, ...]:
    if voxel_size is None or len(voxel_size) != ndim:
        return (1.0,) * ndim
    return voxel_size


def _write_tiff(
    path: Path, labels: NDArray[np.uint32], voxel_size: tuple[float, ...] | None
) -> None:
    """uint16 with ImageJ metadata where the labels fit, else uint32 with OME metadata.

    ImageJ's TIFF flavour has no 32-bit integer type; OME-TIFF does, and carries the
    voxel size just the same. Both also set the resolution tags (pixels per unit).
    """
    ndim = labels.ndim
    sizes = _voxel_size_or_ones(voxel_size, ndim)
    resolution = (1.0 / sizes[-1], 1.0 / sizes[-2])
    if labels.size == 0 or int(labels.max()) <= np.iinfo(np.uint16).max:
        metadata: dict[str, Any] = {"axes": "ZYX"[-ndim:], "unit": "micron"}
        if ndim == 3:
            metadata["spacing"] = sizes[0]
        tifffile.imwrite(
            path,
            labels.astype(np.uint16),
            imagej=True,
            resolution=resolution,
            metadata=metadata,
            compression="zlib",
        )
        return
    ome: dict[str, Any] = {
        "axes": "ZYX"[-ndim:],
        "PhysicalSizeX": sizes[-1],
        "PhysicalSizeY": sizes[-2],
    }
    if ndim == 3:
        ome["PhysicalSizeZ"] = sizes[0]
    tifffile.imwrite(
        path, labels, ome=True, resolution=resolution, metadata=ome, compression="zlib"
    )


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


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    columns = columns or ["image", "label", "voxels"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
