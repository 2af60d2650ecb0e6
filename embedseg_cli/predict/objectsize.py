"""Objects brought to the size the model learned: the scale of an input for its object size.

A network trained on nuclei 20 pixels across finds about half of those 40 pixels across.
``object_size`` gives the input's typical (median) object diameter in pixels, or ``auto``
estimates it for each image; where it lies outside the sizes the model learned (between
the training diameters' quartiles, ``DataProperties.diameter_quartiles``), the input is
resampled (on the path of the voxel-size resampling, one factor per axis for both) so that
it lies at the nearer quartile (:func:`~embedseg_cli.data.diameters.object_size_scale`),
and the labels come back at the input's shape. The same scale multiplies every axis: a
volume keeps its anisotropy.

``auto`` runs the network without test-time augmentation on a few windows spread over the
input (:func:`~embedseg_cli.blockwise.grid.sample_windows`), clusters them as the full
prediction does, and takes the median equivalent diameter of the objects inside the windows
(:func:`~embedseg_cli.data.diameters.interior_diameters`). Where that is far from the
training size, the model has seen the objects at a size it handles badly (it breaks large
ones and misses small ones), so the windows are measured again nearer the training median
(:func:`_estimate`). It costs one to three passes without augmentation over at most
:data:`SAMPLE_WINDOWS` windows, whatever the size of the input. Measured against the true
median diameter of the dsb2018-fluo test masks at 0.5x, 1x and 2x: docs/benchmarks.md.

Scales beyond :data:`~embedseg_cli.data.diameters.SCALE_LIMITS` are bounded, with a
warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.blockwise.grid import sample_windows
from embedseg_cli.config import PredictConfig
from embedseg_cli.data.diameters import (
    SCALE_LIMITS,
    SCALE_TOLERANCE,
    TrainingSize,
    comfortable,
    comfortable_range,
    interior_diameters,
    object_size_scale,
    training_size,
)
from embedseg_cli.data.normalise import intensity_percentiles
from embedseg_cli.errors import OptionValueError
from embedseg_cli.method.inference import ClusterThresholds, segment
from embedseg_cli.predict.jobs import Job
from embedseg_cli.predict.plan import ModelData, Plan
from embedseg_cli.predict.resample import resample
from embedseg_cli.predict.source import Source
from embedseg_cli.predict.stages import network_outputs

__all__ = [
    "SAMPLE_WINDOW",
    "SAMPLE_WINDOWS",
    "ObjectScale",
    "check_object_size",
    "choose_object_scale",
    "estimate_diameter",
    "object_size_columns",
]

logger = logging.getLogger(__name__)

SAMPLE_WINDOW = {2: (512, 512), 3: (64, 160, 160)}
"""Window of the estimate's network pass (bounded by the input), at the model's scale."""
SAMPLE_WINDOWS = 4
"""Windows the estimate samples at most; an input no larger than one window is one."""

Mode = Literal["auto", "given", "off"]


@dataclass(frozen=True)
class ObjectScale:
    """How an input was resampled for the size of its objects."""

    mode: Mode
    """``auto`` (estimated), ``given`` (``object_size`` in pixels) or ``off``."""
    scale: float = 1.0
    """Model pixels per input pixel beyond the voxel size: above 1 enlarges the input, 1
    leaves it as it is."""
    diameter: float | None = None
    """The input's median object diameter, in its pixels along x (estimated or given);
    None where it was not measured or nothing was found."""
    training_diameter: float | None = None
    """The model's training median object diameter, in its pixels along x."""

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` and the per-object table.

        Examples
        --------
        >>> ObjectScale("auto", 0.5, 41.234, 20.56).as_dict()
        {'mode': 'auto', 'scale': 0.5, 'diameter': 41.23, 'training_diameter': 20.56}
        """
        return {
            "mode": self.mode,
            "scale": round(self.scale, 4),
            "diameter": None if self.diameter is None else round(self.diameter, 2),
            "training_diameter": None
            if self.training_diameter is None
            else round(self.training_diameter, 2),
        }


def object_size_columns(scale: ObjectScale, rows: int) -> dict[str, NDArray[Any]]:
    """The per-object table's columns of the image's object size, the same in every row.

    ``object_size_scale`` is the scale the input was resampled by for its object size (1:
    not resampled), ``input_median_diameter`` its median object diameter in pixels,
    estimated or given (empty where not measured).

    Examples
    --------
    >>> columns = object_size_columns(ObjectScale("given", 0.5, 40.0, 20.0), 2)
    >>> {name: column.tolist() for name, column in columns.items()}
    {'object_size_scale': [0.5, 0.5], 'input_median_diameter': [40.0, 40.0]}
    """
    values = scale.as_dict()
    return {
        "object_size_scale": np.full(rows, values["scale"], dtype=np.float64),
        "input_median_diameter": np.full(rows, values["diameter"], dtype=object),
    }


def _mode(config: PredictConfig, model: ModelData) -> Mode:
    if config.object_size is None:
        return "auto" if model.builtin else "off"
    if isinstance(config.object_size, float):
        return "given"
    return config.object_size


def check_object_size(config: PredictConfig, jobs: list[Job]) -> None:
    """Refuse a given object size larger than an input, before any input is predicted.

    Raises
    ------
    OptionValueError
        Naming ``--object-size`` and the input it does not fit.
    """
    if not isinstance(config.object_size, float):
        return
    for job in jobs:
        shape = tuple(int(n) for n in job.pixels.shape[1:])
        if config.object_size > max(shape):
            msg = (
                f"--object-size {config.object_size:g} is larger than {job.source} "
                f"({' x '.join(map(str, shape))} pixels): give the typical diameter of its "
                "objects in pixels, or auto"
            )
            raise OptionValueError(msg)


def choose_object_scale(
    job: Job,
    config: PredictConfig,
    model: ModelData,
    base: Plan,
    voxel: tuple[float, ...] | None,
) -> ObjectScale:
    """The scale that brings the objects of ``job`` to the training data's size.

    ``job.pixels`` are the input as read; ``voxel`` the model voxels per input voxel (None:
    the same voxel size), applied before the object size is measured.
    """
    mode = _mode(config, model)
    if mode == "off":
        return ObjectScale("off")
    trained = training_size(model.properties)
    if trained is None:
        logger.warning(
            "%s records no object size (its training data had no objects): %s is not "
            "resampled for its object size",
            model.name,
            job.source,
        )
        return ObjectScale(mode)
    if trained.derived:
        logger.info(
            "%s records no median object diameter (it was trained before that was measured): "
            "using %.1f px, derived from its mean object extent",
            model.name,
            trained.median,
        )
    along_x = 1.0 if voxel is None else voxel[-1]
    if isinstance(config.object_size, float):
        diameter = config.object_size
    else:
        pixels = job.pixels
        if voxel is not None:
            shape = tuple(int(n) for n in pixels.shape[1:])
            pixels = resample(pixels, _scaled(shape, voxel), order=1)
        found = _estimate(pixels, job.source, base, trained, model.properties.anisotropy)
        if found is None:
            logger.warning(
                "found no objects in %s to measure their size: predicting it at the model's scale",
                job.source,
            )
            return ObjectScale(mode, training_diameter=trained.median)
        diameter = found / along_x
    choice = object_size_scale(diameter * along_x, trained)
    how = "estimated" if mode == "auto" else "given"
    learned = "{:.1f} to {:.1f} px".format(*comfortable_range(trained))
    if choice.clamped:
        logger.warning(
            "%s: its objects (%.1f px across, %s) would need resampling by %.3g to a size "
            "the model learned (%s), beyond the %g to %g allowed: resampling by %g (give "
            "--object-size if the estimate is wrong)",
            job.source,
            diameter,
            how,
            choice.wanted,
            learned,
            *SCALE_LIMITS,
            choice.scale,
        )
    else:
        logger.info(
            "%s: objects %.1f px across (%s), the model learned %s: %s",
            job.source,
            diameter,
            how,
            learned,
            "not resampled" if choice.scale == 1 else f"resampling by {choice.scale:.3g}",
        )
    return ObjectScale(mode, choice.scale, diameter, trained.median)


def _scaled(shape: tuple[int, ...], factors: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(max(1, round(n * f)) for n, f in zip(shape, factors, strict=True))


def _distance(measured: float, trained: TrainingSize) -> float:
    """How far from the training size the network saw objects (log ratio)."""
    return abs(math.log(measured / trained.median))


def _estimate(
    pixels: da.Array, name: str, base: Plan, trained: TrainingSize, anisotropy: float
) -> float | None:
    """The median object diameter of ``pixels`` (model voxels), or None where none is found.

    The network measures objects best at the size it learned, and badly far from it: it
    breaks objects several times larger into pieces (which look like small objects) and
    misses small ones. So the first measure, at the model's scale, is checked and refined:

    1. Where it finds objects so small that the input would be enlarged, they may be
       pieces of large ones: it measures again at half the scale, and keeps whichever pass
       saw objects nearer the training size.
    2. Where the objects are not of a size the model handles as they are
       (:func:`~embedseg_cli.data.diameters.comfortable`), it measures once more at the
       scale that the estimate says brings them to the training median, and keeps that
       estimate if the network saw objects nearer the training median there.
    """
    measures: list[tuple[float, float]] = []  # (scale, diameter seen at that scale)

    def measure(scale: float) -> None:
        seen = estimate_diameter(pixels, name, base, scale, anisotropy)
        logger.debug("%s: objects %s px across at scale %.3g", name, seen, scale)
        if seen is not None:
            measures.append((scale, seen * scale))

    measure(1.0)
    if not measures:
        return None
    if measures[0][1] < comfortable_range(trained)[0]:
        measure(0.5)
    scale, seen = min(measures, key=lambda m: _distance(m[1], trained))
    diameter = seen / scale
    if comfortable(diameter, trained):
        return diameter
    wanted = min(max(trained.median / diameter, SCALE_LIMITS[0]), SCALE_LIMITS[1])
    if abs(math.log(wanted / scale)) <= math.log(1 + SCALE_TOLERANCE):
        return diameter  # measured near that scale already
    before = len(measures)
    measure(wanted)
    if len(measures) > before and _distance(measures[-1][1], trained) <= _distance(seen, trained):
        return measures[-1][1] / wanted
    return diameter


def estimate_diameter(
    pixels: da.Array, name: str, base: Plan, scale: float, anisotropy: float
) -> float | None:
    """The median diameter of the objects the network finds in ``pixels`` resampled by ``scale``.

    In the pixels of ``pixels`` (not the resampled ones), along x; None where it finds
    none. The network runs without test-time augmentation on
    :data:`SAMPLE_WINDOWS` windows of :data:`SAMPLE_WINDOW` spread over the input,
    normalised with the intensities of those windows.
    """
    ndim = base.ndim
    shape = tuple(int(n) for n in pixels.shape[1:])
    if scale != 1:
        shape = _scaled(shape, (scale,) * ndim)
        pixels = resample(pixels, shape, order=1)
    window = tuple(min(w, n) for w, n in zip(SAMPLE_WINDOW[ndim], shape, strict=True))
    origins = sample_windows(shape, window, SAMPLE_WINDOWS)
    source = Source(name, pixels)
    reads = np.stack([source.read(origin, window, "object size") for origin in origins])
    try:
        low_high = intensity_percentiles(reads, channel_axis=1)
    except ValueError:
        return None  # no finite intensity: the prediction itself says so
    plan = dataclasses.replace(
        base,
        shape=shape,
        window=window,
        low=tuple(p[0] for p in low_high),
        high=tuple(p[1] for p in low_high),
        tta=False,
        batch_size=1,
    )
    thresholds = ClusterThresholds(base.foreground, base.seed, base.min_object_size)
    diameters = []
    for origin, raw in zip(origins, network_outputs(reads, plan), strict=True):
        result = segment(
            torch.from_numpy(raw.astype(np.float32)),
            ndim,
            origin=origin,
            spacing=base.spacing,
            scale=base.scale,
            thresholds=thresholds,
        )
        diameters.append(interior_diameters(result.labels, anisotropy))
    found = np.concatenate(diameters)
    if len(found) == 0:
        return None
    median = float(np.median(found)) / scale
    return median if math.isfinite(median) else None
