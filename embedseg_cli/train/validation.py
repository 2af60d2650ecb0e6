"""Validation with the real pipeline, and the choice of the foreground threshold.

Every validation runs what prediction runs on the validation images (the network on the
whole image, clustering with the run's embedding scale and spacing) and scores the labels
with AP_dsb at IoU 0.5, once per candidate foreground threshold; the best checkpoint and its
threshold are chosen by that score.
"""

from __future__ import annotations

import numpy as np
import torch

from embedseg_cli.data.metrics import evaluate_image
from embedseg_cli.data.normalise import normalise
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.method.inference import ClusterThresholds, predict_raw, segment
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.records import DataProperties, ImageRecord
from embedseg_cli.train.checkpoints import embedding_spacing

__all__ = ["best_threshold", "threshold_candidates", "validate"]

_FOREGROUND_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)


def threshold_candidates(tune: bool) -> tuple[float, ...]:
    """The foreground thresholds to validate: several where ``tune``, else only 0.5.

    Examples
    --------
    >>> threshold_candidates(True), threshold_candidates(False)
    ((0.3, 0.4, 0.5, 0.6, 0.7), (0.5,))
    """
    return _FOREGROUND_CANDIDATES if tune else (0.5,)


def best_threshold(scores: dict[float, float]) -> float:
    """The threshold of the highest score; of equal scores, the one nearest 0.5.

    Examples
    --------
    >>> best_threshold({0.3: 0.8, 0.4: 0.9, 0.6: 0.9})
    0.4
    """
    return max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))


def validate(
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
                spacing=embedding_spacing(props),
                scale=scale,
                thresholds=ClusterThresholds(
                    foreground=threshold, min_object_size=props.min_object_size
                ),
            )
            scores[threshold].append(evaluate_image(truth, result.labels, [0.5])[0].ap_dsb)
    return {t: float(np.mean(v)) for t, v in scores.items()}
