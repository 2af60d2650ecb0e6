"""The trainer: one run's model, optimiser and epochs, and :func:`train`, which runs it.

Adam with a polynomial learning-rate decay over the configured number of epochs. Each epoch
trains on freshly sampled crops, refuses weights that stopped being finite, validates when
due and writes the run's checkpoints (``best`` where the model is the best so far, then
``last``); Ctrl-C or SIGTERM leaves ``last`` at the end of the last finished epoch.

The network starts from random weights or from a trained model's (``from_model``,
:mod:`~embedseg_cli.train.start`). With ``train_layers`` ``decoders`` the encoder is left
out of the optimiser and kept in eval mode, so that its weights and batch statistics stay
the model's.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.config import TrainConfig
from embedseg_cli.errors import InputError
from embedseg_cli.io.models import checkpoint_record, resolve_device
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.method.loss import embedseg_loss
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.records import CheckpointRecord, ModelOrigin
from embedseg_cli.train.checkpoints import (
    checkpoint_attrs,
    embedding_spacing,
    optimizer_groups,
    restore_state,
    training_state,
)
from embedseg_cli.train.crops import CropSampler, read_batches
from embedseg_cli.train.interrupts import Interrupts
from embedseg_cli.train.report import TrainReport
from embedseg_cli.train.runs import check_resumable, claim_run, new_run_name, resumed_config
from embedseg_cli.train.start import StartingPoint, read_starting_point
from embedseg_cli.train.validation import best_threshold, threshold_candidates, validate

__all__ = ["poly_learning_rate", "train"]

logger = logging.getLogger(__name__)


def poly_learning_rate(initial: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """Learning rate of ``epoch`` (0-based) under polynomial decay to 0 over ``epochs``.

    Examples
    --------
    >>> poly_learning_rate(1.0, 0, 10), round(poly_learning_rate(1.0, 5, 10), 4)
    (1.0, 0.5359)
    """
    return float(initial * (1.0 - epoch / epochs) ** power)


_Initial = tuple[dict[str, NDArray[Any]], tuple[float | None, int | None, float]]
"""A run's state before its first epoch, and its best AP, best epoch and threshold then."""


class _Trainer:
    """One training run: model, optimiser, data and the bookkeeping of checkpoints."""

    def __init__(self, config: TrainConfig, progress: Progress) -> None:
        self.progress = progress
        self.store = ProjectStore.open(config.store)
        self.props = self.store.properties
        self.run = config.run or new_run_name(self.store)
        # Nothing is written before these checks: a refused run leaves the store as it was.
        checkpoint = None
        start: StartingPoint | None = None
        self.replacing = False
        self.started_from: ModelOrigin | None = None
        """Where the run's initial weights came from (None: random weights)."""
        if config.resume:
            tensors, attrs = self.store.read_checkpoint(self.run, "last")
            record = checkpoint_record(attrs, f"checkpoint {self.run}/last in {self.store.path}")
            checkpoint = (tensors, record)
            check_resumable(record, self.props, self.run)
            config = resumed_config(config, record, self.store, self.run)
            self.started_from = record.started_from
        else:
            if config.from_model is not None:
                start = read_starting_point(config, self.props)
                # The offsets the weights predict are in the source's embedding unit.
                config = config.model_copy(update={"embedding_scale": start.embedding_scale})
                self.started_from = start.origin
            self.replacing = claim_run(self.store, self.run, overwrite=config.overwrite)
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
        network = BranchedERFNet(self.props.channels, self.props.ndim)
        if start is not None:
            network.load_state_dict(start.state)
        self.model = network.to(self.device)
        self.frozen: list[torch.nn.Module] = (
            [self.model.encoder] if config.train_layers == "decoders" else []
        )
        for module in self.frozen:
            module.requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        # Mixed precision where it pays: on CUDA.
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = CropSampler(self.store, table, self.props)
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
        restore_state(self.model, self.optimizer, tensors, record)
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
        for module in self.frozen:
            module.eval()  # batch statistics and dropout as in the model it started from
        self.optimizer.zero_grad()
        self.progress.start(self._describe(epoch), total=self.n_batches)
        batches = read_batches(self.sampler, rows, choices, config.batch_size, config.workers)
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
                spacing=embedding_spacing(self.props),
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
        attrs = checkpoint_attrs(
            self.config,
            self.props,
            self.run,
            epoch,
            self.foreground,
            self.best_ap,
            self.best_epoch,
            started_from=self.started_from,
        )
        state = state if state is not None else training_state(self.model, self.optimizer)
        model_tensors = {k: v for k, v in state.items() if k.startswith("model.")}
        groups = optimizer_groups(self.optimizer)
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
        candidates = threshold_candidates(config.tune_thresholds)
        scores = validate(
            self.model,
            self.store,
            self.val_records,
            self.props,
            config.embedding_scale,
            self.device,
            candidates,
        )
        threshold = best_threshold(scores)
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
            initial = (
                training_state(self.model, self.optimizer),
                (self.best_ap, self.best_epoch, self.foreground),
            )
        interrupts = Interrupts()
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
            with Interrupts().held():
                self._save(-1, best=False, state=state)
            logger.warning(
                "interrupted in epoch %d: saved the run's initial state as %s/last; --resume "
                "starts from it",
                epoch + 1,
                self.run,
            )


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
        started_from=trainer.started_from,
    )
