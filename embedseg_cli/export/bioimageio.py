"""The bioimage.io model package: a zip that produces instance labels by itself.

What the package holds and why the seed clustering is inside the network rather than a
postprocessing step is written in :func:`embedseg_cli.export.export_model`. Its
preprocessing is the training normalisation (:mod:`embedseg_cli.data.normalise`, the same
``scale_range`` as bioimage.io's), so the test output computed here with embedseg's own
pipeline is what ``bioimageio.core`` reproduces.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import math
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.config import ExportModelConfig
from embedseg_cli.data.channels import channels_first
from embedseg_cli.data.normalise import EPSILON, intensity_percentiles, normalise
from embedseg_cli.data.preview import render_preview
from embedseg_cli.errors import InputError
from embedseg_cli.io.models import TrainedModel, load_network, state_dict_of
from embedseg_cli.io.png import write_png
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.volumes import open_volume
from embedseg_cli.method.inference import ClusterThresholds, predict_raw, segment
from embedseg_cli.method.instances import EmbedSegInstances, architecture_source
from embedseg_cli.records import NORMALISATION_PERCENTILES

__all__ = ["CITATION", "EXPORT_EXTRA", "spatial_axes", "write_bioimageio"]

CITATION = {
    "text": (
        "Lalit, M., Tomancak, P. and Jug, F. Embedding-based Instance Segmentation in "
        "Microscopy. Proceedings of the Fourth Conference on Medical Imaging with Deep "
        "Learning (MIDL), PMLR 143:399-415, 2021."
    ),
    "url": "https://proceedings.mlr.press/v143/lalit21a.html",
}
"""The EmbedSeg paper, cited by every exported bioimage.io package."""

EXPORT_EXTRA = "pip install 'embedseg-cli[export]'"
"""How to install what the model exports need."""

_TEST_EXTENT = {2: (256, 256), 3: (32, 128, 128)}
_COVER_MIN_HEIGHT = 256
_DISCRETE_MISMATCH_PPM = 1000


def spatial_axes(ndim: int) -> list[str]:
    """The lower-case names of ``ndim`` spatial axes, as bioimage.io and ONNX name them."""
    return list("zyx"[-ndim:])


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


def _example_image(trained: TrainedModel, config: ExportModelConfig) -> NDArray[np.float32]:
    """An image for the package's test input: channels first, cropped to multiples of 8."""
    if config.image is not None:
        volume = open_volume(config.image)
        pixels, axes, where = np.asarray(volume.array), volume.axes, str(config.image)
    elif is_project_store(config.model):
        store = ProjectStore.open(config.model)
        records = store.images("test") or store.images("val") or store.images()
        if not records:
            msg = f"{config.model} holds no images: give one with --image for the package's test input"
            raise InputError(msg)
        record = records[0]
        pixels, axes = np.asarray(store.image(record.name)[...]), record.axes
        where = f"{config.model}/images/{record.name}"
    else:
        msg = (
            f"{config.model} is not a project store: give an image like the training data "
            "with --image, for the package's test input and cover"
        )
        raise InputError(msg)
    image = channels_first(
        pixels,
        axes,
        ndim=trained.ndim,
        channels=trained.channels,
        where=where,
        fix="give an image like the training data with --image",
    )
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
    """The percentiles the model's training data was normalised with."""
    values = trained.attrs.get("data", {}).get("normalisation") or NORMALISATION_PERCENTILES
    return float(values[0]), float(values[1])


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
{_fine_tuned_from(trained)}"""


def _fine_tuned_from(trained: TrainedModel) -> str:
    """The README's section on the model training started from (empty where none)."""
    origin = trained.record.started_from
    if origin is None:
        return ""
    chain = [origin.describe()]
    while origin.started_from is not None:
        origin = origin.started_from
        chain.append(origin.describe())
    earlier = "".join(f", which was fine-tuned from {text}" for text in chain[1:])
    return f"""
## Fine-tuned from

Training started from the weights of {chain[0]}{earlier}; the data properties and
thresholds are those of this model's own training data. The record is `started_from` in
`config.embedseg`.
"""


def write_bioimageio(trained: TrainedModel, path: Path, config: ExportModelConfig) -> None:
    """Write ``trained`` as a bioimage.io package at ``path`` (see :func:`export_model`)."""
    if importlib.util.find_spec("bioimageio") is None or (
        importlib.util.find_spec("bioimageio.spec") is None
    ):
        msg = f"--format bioimageio needs the bioimageio.spec package: {EXPORT_EXTRA}"
        raise InputError(msg)
    _check_bioimageio_works()
    image = _example_image(trained, config)
    low, high = _percentiles(trained)
    channels = intensity_percentiles(image, channel_axis=0, percentiles=(low, high))
    labels = _expected_labels(trained, normalise(image, channels, channel_axis=0))
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
    spatial = spatial_axes(ndim)
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
                        eps=EPSILON,
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
                + (
                    " Fine-tuned from another EmbedSeg model (the documentation says which)."
                    if trained.record.started_from
                    else ""
                )
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
