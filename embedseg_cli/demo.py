"""``demo``: the whole tool at work on synthetic data, in minutes, on a laptop.

It synthesises a small data set of touching, non-convex cells (:mod:`embedseg_cli.data.synthetic`),
writes it as TIFF pairs in the ``train/ val/ test/`` layout ``prepare`` reads, and runs the
same workflows a user would: ``prepare`` into a project store, ``train`` with a short
schedule, ``predict`` the test images into label TIFFs, ``evaluate`` them against their
masks, and draws a preview of the first test image with its predicted outlines.

The working folder carries a marker file: the demo replaces an earlier demo's results
(with ``overwrite``) but never touches a folder it did not make.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.config import (
    DemoConfig,
    EvaluateConfig,
    PredictConfig,
    PrepareConfig,
    TrainConfig,
)
from embedseg_cli.data.preview import render_preview
from embedseg_cli.data.synthetic import synthesise_image
from embedseg_cli.errors import OutputExistsError
from embedseg_cli.evaluate import EvaluationReport, evaluate
from embedseg_cli.io.png import write_png
from embedseg_cli.io.tiff import read_tiff, write_image_tiff, write_labels_tiff
from embedseg_cli.predict import predict
from embedseg_cli.prepare import PrepareReport, prepare
from embedseg_cli.progress import NullProgress, Progress
from embedseg_cli.train import TrainReport, train

__all__ = [
    "DEMO_MARKER",
    "DemoReport",
    "DemoSchedule",
    "default_schedule",
    "demo",
    "write_demo_data",
]

logger = logging.getLogger(__name__)

DEMO_MARKER = ".embedseg-demo"
"""The file that marks a folder as the demo's own."""
_MADE = ("data", "project.zarr", "labels", "preview.png")
"""What the demo writes into its folder, and all it removes there."""
_STAGES = ("data", "prepare", "train", "predict", "evaluate", "preview")


@dataclass(frozen=True)
class DemoSchedule:
    """The demo's data set and training schedule."""

    images: tuple[int, int, int]
    """Synthetic (train, val, test) images."""
    image_shape: tuple[int, ...]
    """Shape of each image: (Y, X) or (Z, Y, X)."""
    object_size: tuple[float, float]
    """Range of the objects' typical radius, in pixels."""
    coverage: float
    """Fraction of each image the objects cover."""
    crop_size: tuple[int, ...]
    """Training crop size."""
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    embedding_scale: float
    """Pixels per embedding unit. The training default (1024) suits large images; on the demo's
    small ones fewer pixels per unit let the offsets settle in far fewer steps."""


# Measured on a 2-core CPU. 2D: 900 batches of 8 crops, about 300 CPU seconds in all
# (under 3 minutes on two idle cores); AP_dsb(0.5) on the test images 0.88 with seed 0,
# 0.795 with seed 1. With the training default scale of 1024, 900 such batches reached only
# about 0.6. 3D learns more slowly: its schedule is a working example of the same chain
# (AP_dsb(0.5) about 0.4 after about 5 CPU minutes), not a benchmark.
_SCHEDULES = {
    2: DemoSchedule(
        images=(12, 2, 4),
        image_shape=(128, 128),
        object_size=(5.0, 9.0),
        coverage=0.3,
        crop_size=(64, 64),
        epochs=4,
        steps_per_epoch=225,
        batch_size=8,
        learning_rate=2e-3,
        embedding_scale=64.0,
    ),
    3: DemoSchedule(
        images=(6, 1, 2),
        image_shape=(32, 64, 64),
        object_size=(4.0, 7.0),
        coverage=0.3,
        crop_size=(32, 32, 32),
        epochs=4,
        steps_per_epoch=100,
        batch_size=4,
        learning_rate=2e-3,
        embedding_scale=256.0,
    ),
}


def default_schedule(ndim: int) -> DemoSchedule:
    """The demo's tuned data set and schedule for 2D (``ndim=2``) or 3D data.

    Examples
    --------
    >>> default_schedule(2).image_shape
    (128, 128)
    """
    return _SCHEDULES[ndim]


@dataclass(frozen=True)
class DemoReport:
    """What the demo made, how well it segmented, and how long each stage took."""

    out: Path
    data: Path
    """The synthetic TIFF pairs (``train/ val/ test/``)."""
    store: Path
    labels: Path
    """The predicted labels of the test images (uint32 TIFFs)."""
    preview: Path
    schedule: DemoSchedule
    prepared: PrepareReport
    trained: TrainReport
    evaluation: EvaluationReport
    seconds: dict[str, float]
    """Wall time of each stage, and ``total``."""

    def ap(self, threshold: float = 0.5) -> float:
        """Mean AP_dsb over the test images at an IoU threshold the evaluation used."""
        scores = self.evaluation.scores
        index = [round(t, 6) for t in scores.thresholds].index(round(threshold, 6))
        return scores.per_image[index].ap_dsb

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: paths, timings, the training summary and the evaluation."""
        return {
            "out": str(self.out),
            "data": str(self.data),
            "store": str(self.store),
            "labels": str(self.labels),
            "preview": str(self.preview),
            "ndim": len(self.schedule.image_shape),
            "seconds": self.seconds,
            "train": {
                "run": self.trained.run,
                "epochs": self.trained.epochs,
                "best_epoch": self.trained.best_epoch,
                "best_val_ap50": self.trained.best_ap,
                "final_loss": self.trained.final_loss,
            },
            "evaluation": self.evaluation.to_dict(),
        }


def _claim_folder(out: Path, overwrite: bool) -> None:
    """Make ``out`` the demo's folder, clearing an earlier demo's results if allowed."""
    if out.exists() and not out.is_dir():
        msg = f"{out} is a file: give --out a folder for the demo"
        raise OutputExistsError(msg)
    if out.is_dir() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file():
            msg = (
                f"{out} exists and is not a folder made by `embedseg demo`: "
                "choose another --out (the demo never deletes other files)"
            )
            raise OutputExistsError(msg)
        if not overwrite:
            msg = f"{out} holds an earlier demo: pass --overwrite to run it again"
            raise OutputExistsError(msg)
        for name in _MADE:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(
        "This folder was made by `embedseg demo`; `embedseg demo --overwrite` replaces it.\n"
    )


def write_demo_data(
    data: Path, schedule: DemoSchedule, seed: int, progress: Progress
) -> dict[str, list[str]]:
    """Synthesise the schedule's images and write them as ``train/ val/ test/`` TIFF pairs.

    Returns the image names of each split.
    """
    names: dict[str, list[str]] = {}
    splits = dict(zip(("train", "val", "test"), schedule.images, strict=True))
    progress.start("Synthesising images", total=sum(schedule.images))
    for number, (split, count) in enumerate(splits.items()):
        names[split] = []
        for index in range(count):
            name = f"{split}{index:02d}"
            sample = synthesise_image(
                schedule.image_shape,
                seed=(seed, number, index),
                size=schedule.object_size,
                coverage=schedule.coverage,
            )
            write_image_tiff(data / split / "images" / f"{name}.tif", sample.image)
            write_labels_tiff(data / split / "masks" / f"{name}.tif", sample.labels)
            names[split].append(name)
            progress.advance()
    progress.finish()
    return names


def _enlarged(rgb: NDArray[np.uint8], min_side: int = 512) -> NDArray[np.uint8]:
    """The picture with each pixel repeated, so that the small demo images are easy to see."""
    factor = max(1, min_side // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _schedule(config: DemoConfig) -> DemoSchedule:
    base = default_schedule(config.ndim)
    shape = config.image_shape or base.image_shape
    crop = tuple(min(c, 8 * (s // 8)) for c, s in zip(base.crop_size, shape, strict=True))
    return DemoSchedule(
        images=config.images or base.images,
        image_shape=shape,
        object_size=base.object_size,
        coverage=base.coverage,
        crop_size=crop,
        epochs=config.epochs or base.epochs,
        steps_per_epoch=config.steps_per_epoch or base.steps_per_epoch,
        batch_size=config.batch_size or base.batch_size,
        learning_rate=base.learning_rate,
        embedding_scale=base.embedding_scale,
    )


def demo(
    config: DemoConfig,
    *,
    progress: Progress | None = None,
    train_progress: Progress | None = None,
) -> DemoReport:
    """Synthesise data, then prepare, train, predict and evaluate on it.

    Parameters
    ----------
    config : DemoConfig
        The working folder, 2D or 3D, seed, device, and (for tests) a smaller schedule.
    progress : Progress, optional
        Receives the steps of each stage in turn.
    train_progress : Progress, optional
        Receives the batches of each training epoch; default: ``progress``.

    Returns
    -------
    DemoReport
        The paths written, the training summary, the evaluation and the time per stage.

    Raises
    ------
    OutputExistsError
        Where ``config.out`` is a file or a non-empty folder the demo did not make, or an
        earlier demo's folder and ``config.overwrite`` is false.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    train_progress = train_progress or progress
    schedule = _schedule(config)
    out = config.out
    data, store, labels = out / "data", out / "project.zarr", out / "labels"
    preview = out / "preview.png"
    _claim_folder(out, config.overwrite)
    seconds: dict[str, float] = {}

    def stage(name: str) -> float:
        logger.info("demo %d/%d: %s", _STAGES.index(name) + 1, len(_STAGES), name)
        return time.perf_counter()

    clock = stage("data")
    names = write_demo_data(data, schedule, config.seed, progress)
    seconds["data"] = time.perf_counter() - clock

    clock = stage("prepare")
    prepared = prepare(
        PrepareConfig(
            source=data,
            out=store,
            seed=config.seed,
            voxel_size=(1.0, 1.0, 1.0),
            crop_size=schedule.crop_size,
            overwrite=True,
        ),
        progress=progress,
    )
    seconds["prepare"] = time.perf_counter() - clock

    clock = stage("train")
    trained = train(
        TrainConfig(
            store=store,
            epochs=schedule.epochs,
            batch_size=schedule.batch_size,
            virtual_batch_multiplier=1,
            learning_rate=schedule.learning_rate,
            embedding_scale=schedule.embedding_scale,
            steps_per_epoch=schedule.steps_per_epoch,
            seed=config.seed,
            device=config.device,
            run="demo",
        ),
        progress=train_progress,
    )
    seconds["train"] = time.perf_counter() - clock

    clock = stage("predict")
    predict(
        PredictConfig(
            input=data / "test" / "images",
            model=str(store),
            out=labels,
            device=config.device,
            tta=config.tta,
            overwrite=True,
        ),
        progress=progress,
    )
    seconds["predict"] = time.perf_counter() - clock

    clock = stage("evaluate")
    evaluation = evaluate(
        EvaluateConfig(prediction=labels, ground_truth=data / "test" / "masks"),
        progress=progress,
    )
    seconds["evaluate"] = time.perf_counter() - clock

    clock = stage("preview")
    first = names["test"][0]
    image = read_tiff(data / "test" / "images" / f"{first}.tif").data
    predicted = np.asarray(read_tiff(labels / f"{first}.tif").data, dtype=np.uint32)
    write_png(preview, _enlarged(render_preview(predicted, image)))
    seconds["preview"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started

    report = DemoReport(
        out=out,
        data=data,
        store=store,
        labels=labels,
        preview=preview,
        schedule=schedule,
        prepared=prepared,
        trained=trained,
        evaluation=evaluation,
        seconds=seconds,
    )
    logger.info("demo finished in %.0f s: AP_dsb(0.5) %.3f", seconds["total"], report.ap(0.5))
    return report
