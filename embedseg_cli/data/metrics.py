"""Instance-segmentation matching metrics, as StarDist's ``matching`` and the EmbedSeg paper.

The public entry points: :func:`evaluate_image` scores a predicted label image against its
ground truth at several IoU thresholds, :func:`aggregate` combines the scores of a data set,
and :func:`default_thresholds` gives the thresholds EmbedSeg reports. The work is done by
:mod:`embedseg_cli.data.overlap` (which objects share pixels) and
:mod:`embedseg_cli.data.matching` (which of them match at a threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.data.matching import MatchingStats, check_threshold, match_instances
from embedseg_cli.data.overlap import compute_overlap

__all__ = ["DatasetScores", "MeanScores", "aggregate", "default_thresholds", "evaluate_image"]


def evaluate_image(
    y_true: NDArray[np.integer[Any]],
    y_pred: NDArray[np.integer[Any]],
    thresholds: Sequence[float],
) -> list[MatchingStats]:
    """Match a predicted label image to its ground truth at several IoU thresholds.

    Parameters
    ----------
    y_true, y_pred : ndarray of int
        Ground-truth and predicted label images of the same shape; 0 is background.
    thresholds : sequence of float
        IoU thresholds in (0, 1], e.g. ``default_thresholds(y_true.ndim)``.

    Returns
    -------
    list of MatchingStats
        One entry per threshold, in the given order.

    Raises
    ------
    ValueError
        If the shapes differ, a label is negative or a threshold is not in (0, 1].
    TypeError
        If a label image is not of an integer dtype.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((4, 4), dtype=np.uint16)
    >>> labels[:2, :2] = 1
    >>> labels[2:, 2:] = 7
    >>> [stats] = evaluate_image(labels, labels, [0.5])
    >>> stats.tp, stats.fp, stats.fn, stats.ap_dsb
    (2, 0, 0, 1.0)
    """
    checked = [check_threshold(t) for t in thresholds]
    overlap = compute_overlap(y_true, y_pred)
    return [match_instances(overlap, t) for t in checked]


def default_thresholds(ndim: int) -> tuple[float, ...]:
    """Return the IoU thresholds EmbedSeg reports for 2D images or 3D volumes.

    Parameters
    ----------
    ndim : int
        2 for images, 3 for volumes.

    Returns
    -------
    tuple of float
        ``0.5, 0.55, ..., 0.9`` in 2D and ``0.1, 0.2, ..., 0.9`` in 3D.

    Raises
    ------
    ValueError
        For any other number of dimensions.
    """
    if ndim == 2:
        values = np.arange(50, 91, 5) / 100
    elif ndim == 3:
        values = np.arange(1, 10) / 10
    else:
        raise ValueError(f"default thresholds exist for 2D and 3D only (got ndim={ndim})")
    return tuple(float(v) for v in np.round(values, 2))


@dataclass(frozen=True)
class MeanScores:
    """Metrics at one threshold averaged over images, each image weighing the same.

    These are the numbers the EmbedSeg paper reports.
    """

    threshold: float
    n_images: int
    precision: float
    recall: float
    f1: float
    ap_dsb: float
    mean_matched_iou: float
    panoptic_quality: float

    def to_dict(self) -> dict[str, float | int]:
        """All fields, keyed by name."""
        return {
            "threshold": self.threshold,
            "n_images": self.n_images,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "ap_dsb": self.ap_dsb,
            "mean_matched_iou": self.mean_matched_iou,
            "panoptic_quality": self.panoptic_quality,
        }


@dataclass(frozen=True)
class DatasetScores:
    """Scores of a data set at each threshold, aggregated two ways.

    Attributes
    ----------
    thresholds : tuple of float
        The IoU thresholds.
    n_images : int
        Number of images.
    per_image : tuple of MeanScores
        Per threshold, the mean over images of each image's metrics.
    pooled : tuple of MatchingStats
        Per threshold, the counts and matched IoU summed over images; its ratios are those of
        the whole data set seen as one image.
    """

    thresholds: tuple[float, ...]
    n_images: int
    per_image: tuple[MeanScores, ...]
    pooled: tuple[MatchingStats, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready view: ``thresholds``, ``n_images``, ``per_image``, ``pooled``."""
        return {
            "thresholds": list(self.thresholds),
            "n_images": self.n_images,
            "per_image": [scores.to_dict() for scores in self.per_image],
            "pooled": [stats.to_dict() for stats in self.pooled],
        }


_MEAN_METRICS: tuple[tuple[str, Callable[[MatchingStats], float]], ...] = (
    ("precision", lambda s: s.precision),
    ("recall", lambda s: s.recall),
    ("f1", lambda s: s.f1),
    ("ap_dsb", lambda s: s.ap_dsb),
    ("mean_matched_iou", lambda s: s.mean_matched_iou),
    ("panoptic_quality", lambda s: s.panoptic_quality),
)


def aggregate(per_image_stats: Sequence[Sequence[MatchingStats]]) -> DatasetScores:
    """Aggregate per-image matching results over a data set.

    Parameters
    ----------
    per_image_stats : sequence of sequence of MatchingStats
        For each image, its stats at each threshold (as from :func:`evaluate_image`); every
        image must use the same thresholds in the same order.

    Returns
    -------
    DatasetScores
        ``per_image`` (mean of each image's metrics) and ``pooled`` (metrics of the summed
        counts) at each threshold.

    Raises
    ------
    ValueError
        If there are no images or the images' thresholds differ.
    """
    if not per_image_stats:
        raise ValueError("cannot aggregate an empty data set")
    thresholds = tuple(s.threshold for s in per_image_stats[0])
    for number, image in enumerate(per_image_stats):
        if tuple(s.threshold for s in image) != thresholds:
            raise ValueError(
                f"image {number} has thresholds {[s.threshold for s in image]}, "
                f"image 0 has {list(thresholds)}"
            )
    n_images = len(per_image_stats)
    per_image: list[MeanScores] = []
    pooled: list[MatchingStats] = []
    for position, threshold in enumerate(thresholds):
        column = [image[position] for image in per_image_stats]
        means = {name: math.fsum(get(s) for s in column) / n_images for name, get in _MEAN_METRICS}
        per_image.append(MeanScores(threshold=threshold, n_images=n_images, **means))
        pooled.append(
            MatchingStats(
                threshold=threshold,
                tp=sum(s.tp for s in column),
                fp=sum(s.fp for s in column),
                fn=sum(s.fn for s in column),
                n_true=sum(s.n_true for s in column),
                n_pred=sum(s.n_pred for s in column),
                sum_matched_iou=math.fsum(s.sum_matched_iou for s in column),
            )
        )
    return DatasetScores(
        thresholds=thresholds, n_images=n_images, per_image=tuple(per_image), pooled=tuple(pooled)
    )
