"""Where a run's network starts: random weights, or the weights of a trained model.

``train --from MODEL`` (fine-tuning) reads ``MODEL`` as ``predict --model`` does
(:func:`~embedseg_cli.io.models.read_model`: a built-in model, a store's checkpoint or an
exported file) and starts the network from its weights. What the weights mean comes with
them: the network configuration (dimensionality, input channels, architecture) must be the
store's, and the embedding scale (the unit of the offsets) is kept. Everything else is the
run's own: the optimiser and its schedule, and the data properties measured by ``prepare``
on the store (normalisation, object sizes, minimum object size, thresholds chosen on its
validation images). The source's data properties are only compared with the store's, to
warn where the objects differ in size: nothing is resampled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from embedseg_cli.config import TrainConfig
from embedseg_cli.errors import InputError
from embedseg_cli.io.models import TrainedModel, read_model, state_dict_of
from embedseg_cli.records import DataProperties, ModelOrigin

__all__ = ["StartingPoint", "check_fits", "read_starting_point", "size_differences"]

logger = logging.getLogger(__name__)

SIZE_TOLERANCE = 1.25
"""Objects whose mean extent differs from the source's by more than this factor (either
way) along some axis get a warning: a network learns objects at the scale it was shown."""


@dataclass(frozen=True)
class StartingPoint:
    """A trained model's weights, and what a run started from them records and keeps."""

    state: dict[str, torch.Tensor]
    """The network's state dict (float32 and integer CPU tensors)."""
    origin: ModelOrigin
    """Where the weights came from, recorded as the run's ``started_from``."""
    embedding_scale: float
    """Pixels per embedding unit of the source: the unit its offsets are in."""


def _channels(count: int) -> str:
    return f"{count} channel{'s' if count != 1 else ''}"


def check_fits(model: TrainedModel, name: str, props: DataProperties, store: Path) -> None:
    """Refuse a model whose network does not take the store's images.

    Raises
    ------
    InputError
        Where the dimensionality or the number of channels differ, naming both.
    """
    if (model.ndim, model.channels) == (props.ndim, props.channels):
        return
    msg = (
        f"{name} is a {model.ndim}D model with {_channels(model.channels)}; {store} holds "
        f"{props.ndim}D images with {_channels(props.channels)}: fine-tune a model made for "
        "such images, or train without --from"
    )
    raise InputError(msg)


def _spell(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def size_differences(
    source: DataProperties, target: DataProperties, name: str, store: str
) -> list[str]:
    """Warnings where the store's voxel size or object size differ from the source model's.

    Parameters
    ----------
    source : DataProperties
        The data the model was trained on.
    target : DataProperties
        The store's data.
    name, store : str
        How to name the model and the store.

    Returns
    -------
    list of str
        One line per difference (voxel size, object size), each naming both sizes and what
        would bring them together; empty where they agree.

    Examples
    --------
    >>> props = dict(ndim=2, channels=1, anisotropy=1.0, n_objects=9, min_object_size=9,
    ...     mean_object_size=300.0, max_object_size=500, std_extent=(3.0, 3.0),
    ...     max_extent=(30, 30), foreground_weight=10.0, crop_size=(64, 64), centre="medoid")
    >>> model = DataProperties(voxel_size=(1.0, 1.0), mean_extent=(20.0, 20.0), **props)
    >>> store = DataProperties(voxel_size=(1.0, 1.0), mean_extent=(41.0, 39.0), **props)
    >>> print(size_differences(model, store, "M", "P.zarr")[0])  # doctest: +ELLIPSIS
    objects in P.zarr are 2x the size of those M was trained on (mean extent 41 x 39 pixels, \
against 20 x 20): ...; prepare it again with --downsample 2 to bring them to the model's size...
    >>> size_differences(model, model, "M", "P.zarr")
    []
    """
    lines = []
    if len(source.voxel_size) == len(target.voxel_size) and not all(
        math.isclose(a, b, rel_tol=0.01)
        for a, b in zip(source.voxel_size, target.voxel_size, strict=True)
    ):
        lines.append(
            f"{name} was trained on images of voxel size {_spell(source.voxel_size)} and "
            f"{store} holds {_spell(target.voxel_size)}: nothing is resampled; where the "
            f"voxel size of {store} is wrong, prepare it again with --voxel-size, and where "
            "its objects span more pixels than the model's, with --downsample"
        )
    ratios = [
        b / a if a > 0 else 1.0 for a, b in zip(source.mean_extent, target.mean_extent, strict=True)
    ]
    if ratios and any(not 1 / SIZE_TOLERANCE <= r <= SIZE_TOLERANCE for r in ratios):
        overall = math.prod(ratios) ** (1 / len(ratios))
        sizes = (
            f"(mean extent {_spell(target.mean_extent)} pixels, against "
            f"{_spell(source.mean_extent)})"
        )
        line = (
            f"objects in {store} are {overall:.2g}x the size of those {name} was trained on "
            f"{sizes}: nothing is resampled; "
        )
        factors = [max(1, round(r)) for r in ratios]
        if max(factors) > 1:
            factor = str(factors[0]) if len(set(factors)) == 1 else "x".join(map(str, factors))
            line += (
                f"prepare it again with --downsample {factor} to bring them to the model's "
                "size, or fine-tune on them as they are"
            )
        else:
            line += "fine-tuning has to teach the network their size"
        lines.append(line)
    return lines


def read_starting_point(config: TrainConfig, props: DataProperties) -> StartingPoint:
    """The weights of ``config.from_model``, checked against the store ``config.store``.

    Logs a warning per size difference (:func:`size_differences`).

    Raises
    ------
    InputError
        Where the model does not exist, is not a model embedseg reads, its weights do not
        fit its network, or its network does not take the store's images.
    StoreError
        Where a store given as the model holds no such checkpoint.
    """
    if config.from_model is None:
        msg = "read_starting_point needs config.from_model"
        raise ValueError(msg)
    name = config.from_model
    model = read_model(name, run=config.from_run, checkpoint=config.from_checkpoint)
    check_fits(model, name, props, config.store)
    state = state_dict_of(model)  # refuses weights that do not fit or are not finite
    for line in size_differences(model.record.data, props, name, str(config.store)):
        logger.warning("%s", line)
    if model.provenance is None:  # read_model always says where it read from
        msg = f"{model.origin}: where it was read from is unknown"
        raise InputError(msg)
    logger.info("starting from the weights of %s", model.provenance.describe())
    return StartingPoint(state, model.provenance, model.record.model.embedding_scale)
