"""``train``: train the branched ERF-Net on a prepared project store.

Object-centred crops are read from the stored images on the fly (one window per object from
the crop table, padded where the image is smaller), normalised with the image's percentiles
and augmented with a random element of the rotation and flip group. Adam with a polynomial
learning-rate decay over the configured number of epochs (any number). Every validation runs
the real pipeline on the validation images (network, clustering, AP_dsb at IoU 0.5) and the
best checkpoint is chosen by that. Checkpoints (``best`` and ``last``, with the optimiser
state for resuming) are stored as one array per tensor, never pickled, with everything
prediction needs: the data properties, the embedding scale, the thresholds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.config import TrainConfig
from embedseg_cli.crops import apply_transform, normalise, transform_points, transforms
from embedseg_cli.errors import InputError
from embedseg_cli.inference import ClusterThresholds, predict_raw, segment
from embedseg_cli.loss import embedseg_loss
from embedseg_cli.metrics import evaluate_image
from embedseg_cli.model import BranchedERFNet
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.records import DataProperties, ImageRecord
from embedseg_cli.store import CropTable, ProjectStore

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainReport",
    "load_model",
    "poly_learning_rate",
    "resolve_device",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint attributes written by :func:`train`."""
_FOREGROUND_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass(frozen=True)
class TrainReport:
    """What ``train`` did."""

    run: str
    epochs: int
    best_epoch: int | None
    best_ap: float | None
    """Best validation AP_dsb at IoU 0.5 (None without validation images)."""
    foreground_threshold: float
    final_loss: float
    seconds: float
    history: list[dict[str, Any]]


def poly_learning_rate(initial: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """Learning rate of ``epoch`` (0-based) under polynomial decay to 0 over ``epochs``.

    Examples
    --------
    >>> poly_learning_rate(1.0, 0, 10), round(poly_learning_rate(1.0, 5, 10), 4)
    (1.0, 0.5359)
    """
    return float(initial * (1.0 - epoch / epochs) ** power)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` (``auto``: CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        msg = f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps"
        raise InputError(msg) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {name!r} asked for but CUDA is not available: use --device cpu"
        raise InputError(msg)
    return device


def _spacing(props: DataProperties) -> tuple[float, ...]:
    return (props.anisotropy, 1.0, 1.0) if props.ndim == 3 else (1.0, 1.0)


@dataclass(frozen=True)
class _Crop:
    image: NDArray[np.float32]  # (C, *S)
    labels: NDArray[np.int64]  # (*S)
    ids: NDArray[np.int64]
    centres: NDArray[np.float64]  # (n, ndim), crop pixel coordinates


class _CropSampler:
    """Reads object-centred, augmented crops from the store."""

    def __init__(self, store: ProjectStore, table: CropTable, props: DataProperties) -> None:
        self.store = store
        self.props = props
        self.records = store.images()
        self.size = props.crop_size
        self.group = transforms(props.ndim)
        # Per image: its objects' labels (sorted) and centres, to find the centre of every
        # object a crop shows, including objects whose centre lies outside the crop.
        self.objects: dict[int, tuple[NDArray[np.uint32], NDArray[np.float64]]] = {}
        for index in np.unique(table.image):
            rows = np.flatnonzero(table.image == index)
            order = np.argsort(table.label[rows])
            self.objects[int(index)] = (table.label[rows][order], table.centre[rows][order])
        self.table = table

    def crop(self, row: int, rng: np.random.Generator) -> _Crop:
        index = int(self.table.image[row])
        record = self.records[index]
        start = [int(v) for v in self.table.window_start[row]]
        fill = record.percentiles[0][0]
        raw = self.store.read_window("images", record.name, start, self.size, fill=fill)
        channels = "C" in record.axes
        image = normalise(raw, record.percentiles, channel_axis=-1 if channels else None)
        image = np.moveaxis(image, -1, 0) if channels else image[None]
        labels = self.store.read_window("masks", record.name, start, self.size).astype(np.int64)
        ids = np.unique(labels)
        ids = ids[ids > 0]
        known, centres = self.objects[index]
        position = np.searchsorted(known, ids)
        centres_crop = centres[position] - np.asarray(start, dtype=np.float64)
        transform = self.group[int(rng.integers(len(self.group)))]
        ndim = self.props.ndim
        return _Crop(
            image=np.ascontiguousarray(apply_transform(image, transform, ndim)),
            labels=np.ascontiguousarray(apply_transform(labels, transform, ndim)),
            ids=ids,
            centres=transform_points(centres_crop, tuple(self.size), transform),
        )


def _batches(rows: NDArray[np.int64], batch_size: int) -> Iterator[NDArray[np.int64]]:
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def _model_tensors(model: torch.nn.Module) -> dict[str, NDArray[Any]]:
    return {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, NDArray[Any]]:
    state = optimizer.state_dict()["state"]
    return {
        f"optimizer.{index}.{key}": torch.as_tensor(value).detach().cpu().numpy()
        for index, values in state.items()
        for key, value in values.items()
    }


def load_model(
    tensors: dict[str, NDArray[Any]], attrs: dict[str, Any], device: torch.device
) -> BranchedERFNet:
    """Rebuild the network of a checkpoint (its tensors and attributes) in eval mode."""
    if attrs.get("format") != CHECKPOINT_FORMAT:
        msg = f"checkpoint format {attrs.get('format')} is not the format {CHECKPOINT_FORMAT} this embedseg reads"
        raise InputError(msg)
    spec = attrs["model"]
    model = BranchedERFNet(spec["in_channels"], spec["ndim"])
    state = {
        k.removeprefix("model."): torch.from_numpy(v)
        for k, v in tensors.items()
        if k.startswith("model.")
    }
    model.load_state_dict(state)
    return model.to(device).eval()


def _validate(
    model: BranchedERFNet,
    store: ProjectStore,
    records: list[ImageRecord],
    props: DataProperties,
    scale: float,
    device: torch.device,
    candidates: tuple[float, ...],
) -> dict[float, float]:
    """Mean AP_dsb at IoU 0.5 over the validation images, per foreground threshold."""
    model.eval()
    scores: dict[float, list[float]] = {t: [] for t in candidates}
    for record in records:
        raw_image = np.asarray(store.image(record.name)[...])
        channels = "C" in record.axes
        image = normalise(raw_image, record.percentiles, channel_axis=-1 if channels else None)
        image = np.moveaxis(image, -1, 0) if channels else image[None]
        raw = predict_raw(
            model, torch.from_numpy(np.ascontiguousarray(image)).to(device), props.ndim
        )
        truth = np.asarray(store.mask(record.name)[...])
        for threshold in candidates:
            result = segment(
                raw,
                props.ndim,
                origin=(0,) * props.ndim,
                spacing=_spacing(props),
                scale=scale,
                thresholds=ClusterThresholds(
                    foreground=threshold, min_object_size=props.min_object_size
                ),
            )
            scores[threshold].append(evaluate_image(truth, result.labels, [0.5])[0].ap_dsb)
    return {t: float(np.mean(v)) for t, v in scores.items()}


def train(config: TrainConfig, *, progress: Progress | None = None) -> TrainReport:
    """Train the network on a prepared project store.

    Parameters
    ----------
    config : TrainConfig
        The store and the training options.
    progress : Progress, optional
        Receives one step per batch of each epoch.

    Returns
    -------
    TrainReport
        The run's name, best validation AP and per-epoch history.

    Raises
    ------
    InputError
        Where the store has no training objects, or the device is unavailable.
    StoreError
        Where the store cannot be used, or ``resume`` finds no checkpoint.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    store = ProjectStore.open(config.store)
    props = store.properties
    records = store.images()
    table = store.crop_table()
    train_rows = np.flatnonzero([records[i].split == "train" for i in table.image])
    if len(train_rows) == 0:
        msg = f"{config.store} has no training objects: prepare it from masks that hold objects"
        raise InputError(msg)
    val_records = store.images("val")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = BranchedERFNet(props.channels, props.ndim).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    run = config.run or time.strftime("run-%Y%m%d-%H%M%S")
    history: list[dict[str, Any]] = []
    first_epoch = 0
    best_ap: float | None = None
    best_epoch: int | None = None
    foreground = 0.5
    if config.resume:
        tensors, attrs = store.read_checkpoint(run, "last")
        model.load_state_dict(
            {
                k.removeprefix("model."): torch.from_numpy(v)
                for k, v in tensors.items()
                if k.startswith("model.")
            }
        )
        optimizer.load_state_dict(_optimizer_state(tensors, attrs))
        torch.set_rng_state(torch.from_numpy(tensors["rng.torch"]))
        first_epoch = int(attrs["epoch"]) + 1
        history = store.run_metrics(run)
        best_ap, best_epoch = attrs.get("best_ap"), attrs.get("best_epoch")
        foreground = float(attrs["thresholds"]["foreground"])
        logger.info("resuming %s at epoch %d", run, first_epoch + 1)
    sampler = _CropSampler(store, table, props)
    crops_per_epoch = config.crops_per_epoch or len(train_rows)
    spacing = _spacing(props)
    candidates = _FOREGROUND_CANDIDATES if config.tune_thresholds else (0.5,)
    loss_value = math.nan
    for epoch in range(first_epoch, config.epochs):
        epoch_started = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        learning_rate = poly_learning_rate(config.learning_rate, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        rows = rng.choice(
            train_rows, size=crops_per_epoch, replace=crops_per_epoch > len(train_rows)
        )
        model.train()
        totals = {"loss": 0.0, "instance": 0.0, "variance": 0.0, "seed": 0.0}
        n_batches = math.ceil(crops_per_epoch / config.batch_size)
        progress.start(f"Epoch {epoch + 1}/{config.epochs}", total=n_batches)
        optimizer.zero_grad()
        for number, batch in enumerate(_batches(rows, config.batch_size), start=1):
            crops = [sampler.crop(int(row), rng) for row in batch]
            images = torch.from_numpy(np.stack([c.image for c in crops])).to(device)
            labels = torch.from_numpy(np.stack([c.labels for c in crops])).to(device)
            centres = [
                (torch.from_numpy(c.ids).to(device), torch.from_numpy(c.centres).to(device))
                for c in crops
            ]
            raw = model(images)
            loss, terms = embedseg_loss(
                raw,
                labels,
                centres,
                foreground_weight=props.foreground_weight,
                spacing=spacing,
                scale=config.embedding_scale,
            )
            if not torch.isfinite(loss):
                msg = f"the loss became {loss.item()} at epoch {epoch + 1}: lower --lr and train again"
                raise InputError(msg)
            scaled: torch.Tensor = loss / config.virtual_batch_multiplier
            scaled.backward()  # type: ignore[no-untyped-call]
            if number % config.virtual_batch_multiplier == 0 or number == n_batches:
                optimizer.step()
                optimizer.zero_grad()
            totals["loss"] += float(loss.detach())
            for key, value in terms.items():
                totals[key] += float(value.detach())
            progress.advance()
        progress.finish()
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": learning_rate}
        entry.update({k: v / n_batches for k, v in totals.items()})
        loss_value = entry["loss"]
        improved = False
        if val_records and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs):
            scores = _validate(
                model, store, val_records, props, config.embedding_scale, device, candidates
            )
            threshold = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
            entry["val_ap50"] = scores[threshold]
            entry["foreground_threshold"] = threshold
            if best_ap is None or scores[threshold] > best_ap:
                best_ap, best_epoch, foreground, improved = (
                    scores[threshold],
                    epoch + 1,
                    threshold,
                    True,
                )
        elif not val_records:
            improved = True  # without validation images the newest epoch is the best we know
            best_epoch = epoch + 1
        entry["seconds"] = time.perf_counter() - epoch_started
        history.append(entry)
        attrs = _checkpoint_attrs(config, props, run, epoch, foreground, best_ap, best_epoch)
        model_tensors = _model_tensors(model)
        store.write_checkpoint(
            run,
            "last",
            {
                **model_tensors,
                **_optimizer_tensors(optimizer),
                "rng.torch": torch.get_rng_state().numpy(),
            },
            {**attrs, "optimizer": _optimizer_groups(optimizer)},
        )
        if improved:
            store.write_checkpoint(run, "best", model_tensors, attrs)
        store.write_run_metrics(run, history)
        logger.info(
            "epoch %d/%d: loss %.4f%s (%.1f s)",
            epoch + 1,
            config.epochs,
            entry["loss"],
            f", val AP0.5 {entry['val_ap50']:.3f}" if "val_ap50" in entry else "",
            entry["seconds"],
        )
    return TrainReport(
        run=run,
        epochs=config.epochs,
        best_epoch=best_epoch,
        best_ap=best_ap,
        foreground_threshold=foreground,
        final_loss=loss_value,
        seconds=time.perf_counter() - started,
        history=history,
    )


def _checkpoint_attrs(
    config: TrainConfig,
    props: DataProperties,
    run: str,
    epoch: int,
    foreground: float,
    best_ap: float | None,
    best_epoch: int | None,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "run": run,
        "epoch": epoch,
        "best_ap": best_ap,
        "best_epoch": best_epoch,
        "model": {
            "architecture": "BranchedERFNet",
            "in_channels": props.channels,
            "ndim": props.ndim,
            "embedding_scale": config.embedding_scale,
            "spacing": list(_spacing(props)),
        },
        "thresholds": {
            "foreground": foreground,
            "seed": 0.9,
            "min_object_size": props.min_object_size,
        },
        "data": props.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
    }


def _optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = optimizer.state_dict()["param_groups"]
    return [
        {k: v for k, v in g.items() if isinstance(v, int | float | bool | list | tuple | None)}
        for g in groups
    ]


def _optimizer_state(tensors: dict[str, NDArray[Any]], attrs: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = torch.from_numpy(value)
    return {"state": state, "param_groups": attrs["optimizer"]}
