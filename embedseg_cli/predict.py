"""``predict``: instance labels for new images with a trained model.

The model is a checkpoint of a project store; it carries its data properties (embedding
scale, voxel spacing, minimum object size, thresholds), so nothing else is needed. Each image
is normalised like the training images (percentiles 1 and 99.8), passed through the network
(averaged over the rotations and flips with ``tta``), and clustered into uint32 labels.
Outputs are written complete or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.config import PredictConfig
from embedseg_cli.crops import normalise
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.fileio import list_tiffs, read_tiff, write_labels_tiff
from embedseg_cli.inference import ClusterThresholds, pad_to_multiple, segment
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.properties import intensity_percentiles
from embedseg_cli.store import ProjectStore, is_project_store
from embedseg_cli.train import load_model, resolve_device
from embedseg_cli.tta import predict_tta

__all__ = ["PredictReport", "predict"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictReport:
    """What ``predict`` did."""

    images: int
    objects: int
    outputs: list[str]
    seconds: float


@dataclass(frozen=True)
class _Item:
    name: str
    read: Callable[[], tuple[NDArray[Any], tuple[tuple[float, float], ...] | None]]
    write: Callable[[NDArray[np.uint32]], str]


def _items(config: PredictConfig, store_in: ProjectStore | None, ndim: int) -> list[_Item]:
    if store_in is not None:
        if config.out is not None:
            msg = "a project store's predictions are written into the store: leave out --out"
            raise InputError(msg)
        records = store_in.images("test")
        if not records:
            msg = f"{config.input} has no test images to predict: give TIFF files instead"
            raise InputError(msg)
        existing = set(store_in.prediction_names())
        clash = [r.name for r in records if r.name in existing]
        if clash and not config.overwrite:
            msg = f"{config.input} already has predictions (e.g. {clash[0]!r}): pass --overwrite to replace them"
            raise OutputExistsError(msg)
        store = store_in

        def reader(name: str, percentiles: tuple[tuple[float, float], ...]) -> Callable[[], Any]:
            return lambda: (np.asarray(store.image(name)[...]), percentiles)

        def writer(name: str) -> Callable[[NDArray[np.uint32]], str]:
            def write(labels: NDArray[np.uint32]) -> str:
                store.write_prediction(name, labels)
                return f"{store.path}/predictions/{name}"

            return write

        return [_Item(r.name, reader(r.name, r.percentiles), writer(r.name)) for r in records]
    if config.out is None:
        msg = "give --out: a .tif file for one image, a folder for a folder of images"
        raise InputError(msg)
    if config.input.is_dir():
        sources = list_tiffs(config.input)
        if not sources:
            msg = f"{config.input} holds no TIFF images"
            raise InputError(msg)
        targets = {name: config.out / path.name for name, path in sources.items()}
    else:
        sources = {config.input.stem: config.input}
        targets = {config.input.stem: config.out}
    for target in targets.values():
        if target.exists() and not config.overwrite:
            msg = f"{target} already exists: pass --overwrite to replace it"
            raise OutputExistsError(msg)

    def read_file(path: Path) -> Callable[[], Any]:
        return lambda: (read_tiff(path).data, None)

    def write_file(path: Path) -> Callable[[NDArray[np.uint32]], str]:
        def write(labels: NDArray[np.uint32]) -> str:
            write_labels_tiff(path, labels)
            return str(path)

        return write

    return [_Item(n, read_file(p), write_file(targets[n])) for n, p in sources.items()]


def predict(config: PredictConfig, *, progress: Progress | None = None) -> PredictReport:
    """Predict instance labels for every input image.

    Raises
    ------
    InputError
        For a missing model, an input of the wrong dimensionality or channel count, or an
        unreadable input.
    OutputExistsError
        Where an output exists and ``config.overwrite`` is false.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    store_in = ProjectStore.open(config.input) if is_project_store(config.input) else None
    model_path = config.model or (config.input if store_in is not None else None)
    if model_path is None:
        msg = "give --model: the project store whose trained network to use"
        raise InputError(msg)
    model_store = ProjectStore.open(model_path)
    tensors, attrs = model_store.read_checkpoint(config.run, config.checkpoint)
    device = resolve_device(config.device)
    model = load_model(tensors, attrs, device)
    spec, stored = attrs["model"], attrs["thresholds"]
    ndim, channels = int(spec["ndim"]), int(spec["in_channels"])
    thresholds = ClusterThresholds(
        foreground=config.foreground_threshold or float(stored["foreground"]),
        seed=config.seed_threshold,
        min_object_size=(
            config.min_object_size
            if config.min_object_size is not None
            else int(stored["min_object_size"])
        ),
    )
    items = _items(config, store_in, ndim)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            output: torch.Tensor = model(x)
        return output.float()

    outputs: list[str] = []
    objects = 0
    progress.start("Predicting", total=len(items))
    for item in items:
        pixels, percentiles = item.read()
        image = _as_channels_first(np.squeeze(pixels), ndim, channels, item.name)
        if percentiles is None:
            percentiles = intensity_percentiles(image, channel_axis=0)
        normalised = normalise(image, percentiles, channel_axis=0)
        tensor, crop = pad_to_multiple(torch.from_numpy(normalised).to(device), ndim)
        with torch.no_grad():
            raw = predict_tta(forward, tensor, ndim) if config.tta else forward(tensor[None])[0]
        raw = raw[(slice(None), *crop)]
        result = segment(
            raw,
            ndim,
            origin=(0,) * ndim,
            spacing=spec["spacing"],
            scale=float(spec["embedding_scale"]),
            thresholds=thresholds,
        )
        outputs.append(item.write(result.labels))
        objects += len(result)
        progress.advance()
    progress.finish()
    seconds = time.perf_counter() - started
    logger.info("predicted %d image(s), %d objects in %.1f s", len(items), objects, seconds)
    return PredictReport(len(items), objects, outputs, seconds)


def _as_channels_first(image: NDArray[Any], ndim: int, channels: int, name: str) -> NDArray[Any]:
    if image.ndim == ndim and channels == 1:
        return image[None]
    if image.ndim == ndim + 1:
        if image.shape[-1] == channels:
            return np.moveaxis(image, -1, 0)
        if image.shape[0] == channels:
            return image
    msg = (
        f"{name} has shape {image.shape} but the model takes {ndim}D images with {channels} "
        "channel(s): use a model trained on data like this"
    )
    raise InputError(msg)
