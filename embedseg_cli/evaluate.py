"""``evaluate``: score predicted labels against the ground truth, as the paper measures it.

Predictions and ground truth are paired by name (TIFF files, folders of TIFFs, Zarr or
OME-Zarr label arrays, or a project store's predictions and test masks), checked, and scored
with :mod:`embedseg_cli.data.metrics`: AP_dsb and friends at each IoU threshold, per image and
pooled over the data set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.config import EvaluateConfig
from embedseg_cli.data.labels import as_labels
from embedseg_cli.data.matching import MatchingStats
from embedseg_cli.data.metrics import DatasetScores, aggregate, default_thresholds, evaluate_image
from embedseg_cli.errors import InputError
from embedseg_cli.io.labels import LabelSource, find_label_images
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.tables import write_csv as write_rows
from embedseg_cli.io.zarr_meta import is_zarr
from embedseg_cli.progress import NullProgress, Progress

__all__ = ["PAPER_AP", "EvaluationReport", "ImageScores", "evaluate", "plot_ap", "write_csv"]

logger = logging.getLogger(__name__)

PAPER_AP: dict[str, tuple[float, ...]] = {
    "bbbc010": (0.965, 0.954, 0.934, 0.917, 0.896, 0.854, 0.762, 0.596, 0.326),
    "usiigaci": (0.704, 0.643, 0.535, 0.414, 0.273, 0.140, 0.044, 0.005, 0.000),
    "dsb2018": (0.876, 0.858, 0.834, 0.806, 0.768, 0.715, 0.645, 0.530, 0.399),
}
"""EmbedSeg's AP_dsb (per image) in the paper's Table 1, at IoU 0.5, 0.55, ..., 0.9."""
PAPER_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


@dataclass(frozen=True)
class ImageScores:
    """The scores of one image at each threshold."""

    name: str
    prediction: str
    ground_truth: str
    stats: tuple[MatchingStats, ...]


@dataclass(frozen=True)
class EvaluationReport:
    """What ``evaluate`` measured."""

    ndim: int
    images: tuple[ImageScores, ...]
    scores: DatasetScores
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: the aggregated scores and each image's."""
        return {
            "ndim": self.ndim,
            **self.scores.to_dict(),
            "images": [
                {
                    "name": image.name,
                    "prediction": image.prediction,
                    "ground_truth": image.ground_truth,
                    "stats": [s.to_dict() for s in image.stats],
                }
                for image in self.images
            ],
            "seconds": self.seconds,
        }


Loader = Callable[[], NDArray[Any]]


@dataclass(frozen=True)
class _Pair:
    name: str
    prediction: str
    ground_truth: str
    read_prediction: Loader
    read_ground_truth: Loader


def _pairs_from_store(path: Path) -> list[_Pair]:
    store = ProjectStore.open(path)
    predicted = set(store.prediction_names())
    test = [r.name for r in store.images("test")]
    if not test:
        msg = f"{path} has no test images to evaluate: give PRED and GT explicitly"
        raise InputError(msg)
    missing = [name for name in test if name not in predicted]
    if missing:
        msg = f"{path} has no prediction for test image {missing[0]!r}: run `embedseg predict {path}` first"
        raise InputError(msg)
    return [
        _Pair(
            name,
            f"{path}/predictions/{name}",
            f"{path}/masks/{name}",
            lambda name=name: np.asarray(store.prediction(name)[...]),  # type: ignore[misc]
            lambda name=name: np.asarray(store.mask(name)[...]),  # type: ignore[misc]
        )
        for name in test
    ]


def _pairs_from_paths(prediction: Path, ground_truth: Path) -> list[_Pair]:
    predicted = find_label_images(prediction)
    truth = find_label_images(ground_truth)
    if len(predicted) == 1 and len(truth) == 1:
        (pred_source,), (true_source,) = predicted.values(), truth.values()
        folders = [p for p in (prediction, ground_truth) if p.is_dir() and not is_zarr(p)]
        if not folders or pred_source.name == true_source.name:
            # One image against one: names need not match (labels.zarr against gt.tif).
            return [_pair(pred_source.name, pred_source, true_source)]
        # A folder pairs by name, even when it holds one image.
        msg = (
            f"prediction {pred_source} and ground truth {true_source} have different names, "
            "and folders are paired by name: rename one, or give the two files themselves"
        )
        raise InputError(msg)
    for name, source in predicted.items():
        if name not in truth:
            msg = f"prediction {source} has no ground truth of the same name in {ground_truth}"
            raise InputError(msg)
    for name, source in truth.items():
        if name not in predicted:
            msg = f"ground truth {source} has no prediction of the same name in {prediction}"
            raise InputError(msg)
    return [_pair(name, predicted[name], truth[name]) for name in sorted(predicted)]


def _pair(name: str, prediction: LabelSource, truth: LabelSource) -> _Pair:
    return _Pair(name, str(prediction), str(truth), prediction.read, truth.read)


def evaluate(config: EvaluateConfig, *, progress: Progress | None = None) -> EvaluationReport:
    """Score predicted labels against the ground truth at each IoU threshold.

    Parameters
    ----------
    config : EvaluateConfig
        Where the predictions and the ground truth are, and the thresholds.
    progress : Progress, optional
        Receives one step per image.

    Returns
    -------
    EvaluationReport
        Per-image scores and the data set's scores (``per_image`` mean and ``pooled``).

    Raises
    ------
    InputError
        Where an input is missing, unreadable, not integer, unpaired, or of another shape
        than its partner.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    if config.ground_truth is None:
        if not is_project_store(config.prediction):
            msg = f"{config.prediction} is not a project store: give the ground truth as a second argument"
            raise InputError(msg)
        pairs = _pairs_from_store(config.prediction)
    else:
        pairs = _pairs_from_paths(config.prediction, config.ground_truth)
    thresholds: Sequence[float] | None = config.thresholds
    ndim = 0
    results: list[ImageScores] = []
    progress.start("Evaluating", total=len(pairs))
    for pair in pairs:
        predicted = as_labels(pair.read_prediction(), pair.prediction)
        truth = as_labels(pair.read_ground_truth(), pair.ground_truth)
        if predicted.shape != truth.shape:
            msg = (
                f"prediction {pair.prediction} has shape {predicted.shape} but ground truth "
                f"{pair.ground_truth} has shape {truth.shape}: they must cover the same pixels"
            )
            raise InputError(msg)
        if ndim and predicted.ndim != ndim:
            msg = f"{pair.prediction} is {predicted.ndim}D but earlier images are {ndim}D: evaluate 2D and 3D apart"
            raise InputError(msg)
        ndim = predicted.ndim
        thresholds = thresholds or default_thresholds(ndim)
        stats = evaluate_image(truth, predicted, thresholds)
        results.append(ImageScores(pair.name, pair.prediction, pair.ground_truth, tuple(stats)))
        progress.advance()
    progress.finish()
    scores = aggregate([r.stats for r in results])
    seconds = time.perf_counter() - started
    logger.info("evaluated %d image(s) in %.1f s", len(results), seconds)
    return EvaluationReport(ndim, tuple(results), scores, seconds)


_CSV_COLUMNS = (
    *("name", "threshold", "tp", "fp", "fn", "n_true", "n_pred", "precision", "recall"),
    *("f1", "ap_dsb", "mean_matched_iou", "panoptic_quality"),
)
"""The columns of :func:`write_csv`'s table."""


def _csv_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    """One row per image and threshold: the image's name, counts and metrics."""
    return [
        {"name": image.name, **stats.to_dict()} for image in report.images for stats in image.stats
    ]


def write_csv(report: EvaluationReport, path: Path) -> None:
    """Write one row per image and threshold (:func:`_csv_rows`) as a CSV file, all or nothing.

    Raises
    ------
    InputError
        Where the file cannot be written.
    """
    write_rows(path, _csv_rows(report), _CSV_COLUMNS)


def plot_ap(report: EvaluationReport, path: Path, *, paper: str | None = None) -> None:
    """Draw AP_dsb against the IoU threshold, per image and pooled, into a PNG file.

    With ``paper`` (``usiigaci``, ``dsb2018`` or ``bbbc010``) the paper's EmbedSeg row is
    drawn as a dashed reference line.
    """
    try:
        import matplotlib as mpl  # noqa: PLC0415 (optional dependency)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        msg = "--plot needs matplotlib: pip install matplotlib (or embedseg-cli[plot])"
        raise InputError(msg) from None
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    thresholds = report.scores.thresholds
    axes.plot(thresholds, [s.ap_dsb for s in report.scores.per_image], "o-", label="per image")
    axes.plot(thresholds, [s.ap_dsb for s in report.scores.pooled], "s-", label="pooled")
    if paper is not None:
        axes.plot(PAPER_THRESHOLDS, PAPER_AP[paper], "k--", label=f"paper: EmbedSeg on {paper}")
    axes.set_xlabel("IoU threshold")
    axes.set_ylabel("AP$_{dsb}$ = TP / (TP + FP + FN)")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        msg = f"cannot write {path} ({exc.strerror}): check that its folder exists and is writable"
        raise InputError(msg) from None
    finally:
        plt.close(figure)
