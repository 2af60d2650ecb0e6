"""``train``: train the branched ERF-Net on a prepared project store.

Object-centred crops are read from the stored images on the fly (one window per object from
the crop table, padded where the image is smaller), normalised with the image's percentiles
and augmented with a random element of the rotation and flip group. Adam with a polynomial
learning-rate decay over the configured number of epochs (any number). Every validation runs
the real pipeline on the validation images (network, clustering, AP_dsb at IoU 0.5) and the
best checkpoint is chosen by that. Checkpoints (``best`` and ``last``, with the optimiser
state for resuming) are stored as one array per tensor, never pickled, with everything
prediction needs: the data properties, the embedding scale, the thresholds.

A run's name is its identity in the store: a new run never silently replaces an earlier one
of the same name (``overwrite`` does, at the new run's first checkpoint), and ``resume``
refuses options that would make the run's checkpoints describe different models.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.config import TrainConfig
from embedseg_cli.data.augment import apply_transform, transform_points, transforms
from embedseg_cli.data.metrics import evaluate_image
from embedseg_cli.data.normalise import normalise
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.models import checkpoint_record, resolve_device
from embedseg_cli.io.store import CropTable, ProjectStore
from embedseg_cli.method.inference import ClusterThresholds, predict_raw, segment
from embedseg_cli.method.loss import embedseg_loss
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.records import (
    CheckpointRecord,
    DataProperties,
    ImageRecord,
    ModelSpec,
    Thresholds,
)

__all__ = [
    "TrainReport",
    "poly_learning_rate",
    "train",
]

logger = logging.getLogger(__name__)

_FOREGROUND_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)

_FIXED_OPTIONS = ("embedding_scale", "seed", "tune_thresholds", "weight_decay")
"""Options that define a run's model (its output scale, its initial weights and the data
order, how its thresholds are chosen, its optimiser): ``resume`` refuses other values."""
_MACHINE_OPTIONS = ("device", "workers")
"""Options about the machine, not the run: ``resume`` does not take them from the run."""
_NOT_RUN_OPTIONS = ("version", "store", "run", "resume", "overwrite", *_MACHINE_OPTIONS)
_FIXED_DATA = (
    "ndim",
    "channels",
    "voxel_size",
    "anisotropy",
    "foreground_weight",
    "crop_size",
    "centre",
    "normalisation",
    "downsample",
)
"""Data properties the network and the loss depend on: a store prepared again with other
values cannot continue a run."""


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
    """Mean loss of the last epoch trained by this call (NaN where it trained none)."""
    seconds: float
    history: list[dict[str, Any]]
    start_epoch: int = 0
    """Epochs the run had completed before this call (0 for a new run); where it is at
    least ``epochs``, a resumed run had nothing left to train."""


def poly_learning_rate(initial: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """Learning rate of ``epoch`` (0-based) under polynomial decay to 0 over ``epochs``.

    Examples
    --------
    >>> poly_learning_rate(1.0, 0, 10), round(poly_learning_rate(1.0, 5, 10), 4)
    (1.0, 0.5359)
    """
    return float(initial * (1.0 - epoch / epochs) ** power)


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

    def crop(self, row: int, transform_index: int) -> _Crop:
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
        transform = self.group[transform_index]
        ndim = self.props.ndim
        return _Crop(
            image=np.ascontiguousarray(apply_transform(image, transform, ndim)),
            labels=np.ascontiguousarray(apply_transform(labels, transform, ndim)),
            ids=ids,
            centres=transform_points(centres_crop, tuple(self.size), transform),
        )


def _batches(
    sampler: _CropSampler,
    rows: NDArray[np.int64],
    choices: NDArray[np.int64],
    batch_size: int,
    workers: int,
) -> Iterator[list[_Crop]]:
    """The epoch's batches of crops, read by ``workers`` threads two batches ahead.

    The random choices are drawn beforehand, so the crops do not depend on thread timing.
    """
    jobs = [
        list(
            zip(
                rows[i : i + batch_size].tolist(), choices[i : i + batch_size].tolist(), strict=True
            )
        )
        for i in range(0, len(rows), batch_size)
    ]
    if workers == 0:
        for job in jobs:
            yield [sampler.crop(row, choice) for row, choice in job]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[list[Future[_Crop]]] = deque()
        for number in range(len(jobs)):
            while len(pending) < 2 and number + len(pending) < len(jobs):
                ahead = jobs[number + len(pending)]
                pending.append([pool.submit(sampler.crop, row, choice) for row, choice in ahead])
            yield [future.result() for future in pending.popleft()]


def _model_tensors(model: torch.nn.Module) -> dict[str, NDArray[Any]]:
    return {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, NDArray[Any]]:
    state = optimizer.state_dict()["state"]
    return {
        f"optimizer.{index}.{key}": torch.as_tensor(value).detach().cpu().numpy()
        for index, values in state.items()
        for key, value in values.items()
    }


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


def _check_resumable(record: CheckpointRecord, props: DataProperties, run: str) -> None:
    spec = record.model
    if spec.ndim != props.ndim or spec.in_channels != props.channels:
        msg = (
            f"checkpoint {run}/last is a {spec.ndim}D model of {spec.in_channels} "
            f"channel(s) but the store holds {props.ndim}D images of {props.channels}: "
            "resume it on the store it was trained on, or start a new --run"
        )
        raise InputError(msg)
    trained_on = record.data.model_dump(mode="json")
    now = props.model_dump(mode="json")
    changed = [k for k in _FIXED_DATA if k in trained_on and trained_on[k] != now[k]]
    if changed:
        differences = ", ".join(f"{k} {trained_on[k]} then, {now[k]} now" for k in changed)
        msg = (
            f"the store was prepared again since run {run} started ({differences}): resume "
            "it on the data it was trained on, or start a new --run"
        )
        raise InputError(msg)


def _spell(field: str, value: object) -> str:
    """A config value as the command line writes it (``--embedding-scale 1024``)."""
    option = "--lr" if field == "learning_rate" else "--" + field.replace("_", "-")
    if isinstance(value, bool):
        return option if value else "--no-" + option.removeprefix("--")
    return f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}"


def _resumed_config(
    config: TrainConfig, record: CheckpointRecord, store: ProjectStore, run: str
) -> TrainConfig:
    """``config`` with the run's values for the options it does not set.

    Raises
    ------
    InputError
        Where ``config`` sets an option that defines the model to another value than the run.
    """
    recorded = {**record.config, "embedding_scale": record.model.embedding_scale}
    updates: dict[str, Any] = {}
    for field in TrainConfig.model_fields:
        if field in _NOT_RUN_OPTIONS or field not in recorded:
            continue
        value, before = getattr(config, field), recorded[field]
        if field not in config.model_fields_set:
            updates[field] = before
        elif field in _FIXED_OPTIONS and value != before:
            option = _spell(field, value).split(" ")[0]
            msg = (
                f"run {run} in {store.path} was trained with {_spell(field, before)}, not "
                f"{_spell(field, value)}, and {option} defines the model: leave it out to keep "
                "the run's value, or start a new --run"
            )
            raise InputError(msg)
    return config.model_copy(update=updates)


def _run_exists(store: ProjectStore, run: str) -> bool:
    return bool(store.checkpoint_tags(run) or store.run_metrics(run))


def _new_run_name(store: ProjectStore) -> str:
    """``run-`` and the start time, with a suffix where a run of that name exists."""
    base = time.strftime("run-%Y%m%d-%H%M%S")
    name, number = base, 1
    while _run_exists(store, name):
        number += 1
        name = f"{base}-{number}"
    return name


def _claim_run(store: ProjectStore, run: str, *, overwrite: bool) -> bool:
    """Whether the new run ``run`` replaces an earlier one (allowed only with ``overwrite``)."""
    if not _run_exists(store, run):
        return False
    if not overwrite:
        msg = (
            f"{store.path} already has a training run {run}: pass --resume to continue it, "
            "--run OTHER for a new run, or --overwrite to replace it"
        )
        raise OutputExistsError(msg)
    return True


_Initial = tuple[dict[str, NDArray[Any]], tuple[float | None, int | None, float]]
"""A run's state before its first epoch, and its best AP, best epoch and threshold then."""


class _Trainer:
    """One training run: model, optimiser, data and the bookkeeping of checkpoints."""

    def __init__(self, config: TrainConfig, progress: Progress) -> None:
        self.progress = progress
        self.store = ProjectStore.open(config.store)
        self.props = self.store.properties
        self.run = config.run or _new_run_name(self.store)
        # Nothing is written before these checks: a refused run leaves the store as it was.
        checkpoint = None
        self.replacing = False
        if config.resume:
            tensors, attrs = self.store.read_checkpoint(self.run, "last")
            record = checkpoint_record(attrs, f"checkpoint {self.run}/last in {self.store.path}")
            checkpoint = (tensors, record)
            _check_resumable(record, self.props, self.run)
            config = _resumed_config(config, record, self.store, self.run)
        else:
            self.replacing = _claim_run(self.store, self.run, overwrite=config.overwrite)
        self.config = config
        records = self.store.images()
        table = self.store.crop_table()
        self.train_rows = np.flatnonzero([records[i].split == "train" for i in table.image])
        if len(self.train_rows) == 0:
            msg = f"{config.store} has no training objects: prepare it from masks that hold objects"
            raise InputError(msg)
        self.val_records = self.store.images("val")
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.model = BranchedERFNet(self.props.channels, self.props.ndim).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        # Mixed precision where it pays: on CUDA.
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = _CropSampler(self.store, table, self.props)
        self.n_batches = config.steps_per_epoch or math.ceil(
            len(self.train_rows) / config.batch_size
        )
        self.history: list[dict[str, Any]] = []
        self.first_epoch = 0
        self.best_ap: float | None = None
        self.best_epoch: int | None = None
        self.foreground = 0.5
        self.saved_epoch: int | None = None
        """The epoch of the run's ``last`` checkpoint (None: the run has none yet)."""
        if checkpoint is not None:
            self._resume(*checkpoint)

    def _resume(self, tensors: dict[str, NDArray[Any]], record: CheckpointRecord) -> None:
        self.model.load_state_dict(
            {
                k.removeprefix("model."): torch.from_numpy(v)
                for k, v in tensors.items()
                if k.startswith("model.")
            }
        )
        self.optimizer.load_state_dict(_optimizer_state(tensors, record))
        torch.set_rng_state(torch.from_numpy(tensors["rng.torch"]))
        self.first_epoch = record.epoch + 1
        self.saved_epoch = record.epoch
        self.history = self.store.run_metrics(self.run)[: self.first_epoch]
        self.best_ap, self.best_epoch = record.best_ap, record.best_epoch
        self.foreground = record.thresholds.foreground
        logger.info("resuming %s at epoch %d", self.run, self.first_epoch + 1)

    def _describe(self, epoch: int) -> str:
        text = f"Epoch {epoch + 1}/{self.config.epochs}"
        if self.history:
            last = self.history[-1]
            text += f" (loss {last['loss']:.3f}"
            text += f", val AP0.5 {last['val_ap50']:.3f})" if "val_ap50" in last else ")"
        return text

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        config = self.config
        rng = np.random.default_rng([config.seed, epoch])
        size = self.n_batches * config.batch_size
        rows = rng.choice(self.train_rows, size=size, replace=size > len(self.train_rows))
        choices = rng.integers(len(self.sampler.group), size=len(rows))
        totals = {"loss": 0.0, "instance": 0.0, "variance": 0.0, "seed": 0.0}
        self.model.train()
        self.optimizer.zero_grad()
        self.progress.start(self._describe(epoch), total=self.n_batches)
        batches = _batches(self.sampler, rows, choices, config.batch_size, config.workers)
        for number, crops in enumerate(batches, start=1):
            images = torch.from_numpy(np.stack([c.image for c in crops])).to(self.device)
            labels = torch.from_numpy(np.stack([c.labels for c in crops])).to(self.device)
            centres = [
                (
                    torch.from_numpy(c.ids).to(self.device),
                    torch.from_numpy(c.centres).to(self.device),
                )
                for c in crops
            ]
            with torch.autocast(self.device.type, enabled=self.amp):
                raw = self.model(images)
            loss, terms = embedseg_loss(
                raw.float(),
                labels,
                centres,
                foreground_weight=self.props.foreground_weight,
                spacing=_spacing(self.props),
                scale=config.embedding_scale,
            )
            if not torch.isfinite(loss):
                raise self._diverged(epoch, f"the loss became {loss.item()}")
            scaled: torch.Tensor = self.scaler.scale(loss / config.virtual_batch_multiplier)
            scaled.backward()  # type: ignore[no-untyped-call]
            if number % config.virtual_batch_multiplier == 0 or number == self.n_batches:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad()
            totals["loss"] += float(loss.detach())
            for key, value in terms.items():
                totals[key] += float(value.detach())
            self.progress.advance()
        self.progress.finish()
        return {key: value / self.n_batches for key, value in totals.items()}

    def _diverged(self, epoch: int, what: str) -> InputError:
        """The error for a run whose loss or weights stopped being finite in ``epoch``."""
        learning_rate = self.optimizer.param_groups[0]["lr"]
        if self.saved_epoch is None:
            kept = "nothing of the run is saved; train again with a smaller --lr"
        else:
            kept = (
                f"nothing of epoch {epoch + 1} is saved and the run's checkpoints are kept; "
                "continue with --resume and a smaller --lr, or train again"
            )
        msg = f"{what} in epoch {epoch + 1} (learning rate {learning_rate:g}): {kept}"
        return InputError(msg)

    def _check_weights(self, epoch: int) -> None:
        """Refuse to go on (and to save) with weights that are NaN or infinite."""
        for name, value in self.model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self._diverged(epoch, f"the weight {name} became NaN or infinite")

    def _state(self) -> dict[str, NDArray[Any]]:
        """Everything ``last`` holds to resume exactly: weights, optimiser and random state."""
        return {
            **{k: v.copy() for k, v in _model_tensors(self.model).items()},
            **{k: v.copy() for k, v in _optimizer_tensors(self.optimizer).items()},
            "rng.torch": torch.get_rng_state().numpy(),
        }

    def _save(
        self, epoch: int, *, best: bool, state: dict[str, NDArray[Any]] | None = None
    ) -> None:
        """Write the checkpoints after ``epoch`` (``state``: the one to save, default now's).

        ``last`` is written last: it is what --resume continues from, so a save cut short
        (a full disk) leaves a ``last`` of an earlier epoch that the other files agree with,
        and --resume repeats the epochs after it, rewriting the same ``best``.
        """
        # The first checkpoint of a run that replaces an earlier one also replaces that
        # run's best, so that no checkpoint of the earlier run is left behind.
        best = best or self.replacing
        attrs = _checkpoint_attrs(
            self.config, self.props, self.run, epoch, self.foreground, self.best_ap, self.best_epoch
        )
        state = state if state is not None else self._state()
        model_tensors = {k: v for k, v in state.items() if k.startswith("model.")}
        groups = _optimizer_groups(self.optimizer)
        if best:
            self.store.write_checkpoint(self.run, "best", model_tensors, attrs)
        self.store.write_run_metrics(self.run, self.history)
        self.store.write_checkpoint(self.run, "last", state, {**attrs, "optimizer": groups})
        self.replacing = False
        self.saved_epoch = epoch

    def _validate_epoch(self, epoch: int, entry: dict[str, Any]) -> bool:
        """Validate if due; whether this epoch's model is the best so far."""
        config = self.config
        if not self.val_records:
            self.best_epoch = epoch + 1  # without validation images the newest is the best known
            return True
        due = (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs
        if not due:
            return False
        candidates = _FOREGROUND_CANDIDATES if config.tune_thresholds else (0.5,)
        scores = _validate(
            self.model,
            self.store,
            self.val_records,
            self.props,
            config.embedding_scale,
            self.device,
            candidates,
        )
        threshold = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
        entry["val_ap50"] = scores[threshold]
        entry["foreground_threshold"] = threshold
        if self.best_ap is not None and scores[threshold] <= self.best_ap:
            return False
        self.best_ap, self.best_epoch, self.foreground = scores[threshold], epoch + 1, threshold
        return True

    def fit(self) -> float:
        """Train the remaining epochs; returns the last epoch's mean loss."""
        loss = math.nan
        if self.first_epoch >= self.config.epochs:
            logger.info(
                "run %s has already reached epoch %d: nothing to train (pass --epochs larger "
                "than %d to continue it)",
                self.run,
                self.first_epoch,
                self.first_epoch,
            )
        # A run that starts from scratch keeps its initial state: interrupted in its first
        # epoch, it saves that as ``last`` (epoch -1), which --resume starts from.
        initial = None
        if self.first_epoch == 0:
            initial = (self._state(), (self.best_ap, self.best_epoch, self.foreground))
        interrupts = _Interrupts()
        for epoch in range(self.first_epoch, self.config.epochs):
            started = time.perf_counter()
            learning_rate = poly_learning_rate(self.config.learning_rate, epoch, self.config.epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
            try:
                with interrupts.raised():
                    terms = self._train_epoch(epoch)
                    self._check_weights(epoch)
                    entry: dict[str, Any] = {"epoch": epoch + 1, "lr": learning_rate, **terms}
                    best = self._validate_epoch(epoch, entry)
                    entry["seconds"] = time.perf_counter() - started
                # Signals wait until the checkpoints are written: a save is never cut short
                # by Ctrl-C, so what --resume reads is always one epoch's end.
                with interrupts.held():
                    self.history.append(entry)
                    self._save(epoch, best=best)
            except KeyboardInterrupt:
                self.progress.finish()
                self._interrupted(epoch, initial)
                raise
            loss = entry["loss"]
            logger.info(
                "epoch %d/%d: loss %.4f%s (%.1f s)",
                epoch + 1,
                self.config.epochs,
                loss,
                f", val AP0.5 {entry['val_ap50']:.3f}" if "val_ap50" in entry else "",
                entry["seconds"],
            )
        return loss

    def _interrupted(self, epoch: int, initial: _Initial | None) -> None:
        """Leave a ``last`` that --resume continues from exactly as if never interrupted.

        The weights part-way through an epoch are not saved: they are not the state at any
        epoch's end, and resuming from them would give other weights than a run that was
        never stopped. ``last`` stays the checkpoint of the last finished epoch, and
        --resume repeats the interrupted epoch from it.
        """
        if self.saved_epoch is not None:
            kept = self.saved_epoch + 1
            logger.warning(
                "interrupted in epoch %d: %s/last (after epoch %d) is kept; --resume repeats "
                "epoch %d from it",
                epoch + 1,
                self.run,
                kept,
                kept + 1,
            )
        elif initial is not None:
            state, (self.best_ap, self.best_epoch, self.foreground) = initial
            with _Interrupts().held():
                self._save(-1, best=False, state=state)
            logger.warning(
                "interrupted in epoch %d: saved the run's initial state as %s/last; --resume "
                "starts from it",
                epoch + 1,
                self.run,
            )


class _Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, SLURM) as :class:`KeyboardInterrupt`.

    Both are taken only in the main thread; elsewhere Python's own handling stays.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._holding = False
        self._pending = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._handle) for number in self._SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """Either signal raises KeyboardInterrupt at once."""
        with self._installed():
            yield

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Either signal waits until the block is done, then raises KeyboardInterrupt."""
        self._holding, self._pending = True, False
        try:
            with self._installed():
                yield
        finally:
            self._holding = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt


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
        The run's name, best validation AP and per-epoch history. A resumed run that has
        already reached ``config.epochs`` trains nothing and writes nothing: its report has
        ``start_epoch >= epochs``.

    Raises
    ------
    InputError
        Where the store has no training objects, the device is unavailable, the checkpoint
        to resume does not fit the store or ``config`` sets an option that defines the
        model to another value than the run to resume, or the loss or the weights stop
        being finite (nothing of that epoch is saved).
    OutputExistsError
        Where the store has a run of that name and neither ``resume`` nor ``overwrite`` is
        set; nothing is written then.
    StoreError
        Where the store cannot be used, or ``resume`` finds no checkpoint.
    KeyboardInterrupt
        On Ctrl-C or SIGTERM. ``last`` is left at the end of the last finished epoch (the
        run's initial state where none had finished), so that ``resume`` gives the same
        weights as a run that was never stopped.
    CheckpointError
        Where a checkpoint cannot be written (the earlier ones are kept) or the one to
        resume is damaged.
    """
    started = time.perf_counter()
    trainer = _Trainer(config, progress or NullProgress())
    loss = trainer.fit()
    return TrainReport(
        run=trainer.run,
        epochs=trainer.config.epochs,
        best_epoch=trainer.best_epoch,
        best_ap=trainer.best_ap,
        foreground_threshold=trainer.foreground,
        final_loss=loss,
        seconds=time.perf_counter() - started,
        history=trainer.history,
        start_epoch=trainer.first_epoch,
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
    """The attributes of a checkpoint (:class:`CheckpointRecord`) as stored."""
    record = CheckpointRecord(
        run=run,
        epoch=epoch,
        best_ap=best_ap,
        best_epoch=best_epoch,
        model=ModelSpec(
            in_channels=props.channels,
            ndim=2 if props.ndim == 2 else 3,
            embedding_scale=config.embedding_scale,
            spacing=_spacing(props),
        ),
        thresholds=Thresholds(
            foreground=foreground,
            seed=ClusterThresholds.seed,
            min_object_size=props.min_object_size,
        ),
        data=props,
        config=config.model_dump(mode="json"),
    )
    # The store adds ``complete``, ``time``, ``packed`` and ``tensors`` as it writes.
    return record.model_dump(
        mode="json", exclude={"complete", "time", "optimizer", "packed", "tensors", "builtin"}
    )


def _optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups = optimizer.state_dict()["param_groups"]
    return [
        {k: v for k, v in g.items() if isinstance(v, int | float | bool | list | tuple | None)}
        for g in groups
    ]


def _optimizer_state(tensors: dict[str, NDArray[Any]], record: CheckpointRecord) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = torch.from_numpy(value)
    return {"state": state, "param_groups": [dict(group) for group in record.optimizer or ()]}
