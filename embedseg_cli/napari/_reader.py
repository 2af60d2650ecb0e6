"""The reader: project stores and embedseg's OME-Zarr labels as napari layers.

It recognises

* a project store (``P.zarr``): its images as Image layers, their masks and predictions
  as Labels layers, each with its voxel size as the layer's scale. A store of many images
  opens the first few (those with predictions first), only the first one shown;
* an image of a store (``P.zarr/images/NAME``, or ``masks/NAME``, ``predictions/NAME``):
  that image with its mask and prediction;
* an OME-Zarr label image (``predict --out labels.zarr``, or ``IMAGE.zarr/labels/embedseg``):
  a Labels layer of all its levels, scaled by the level 0 ``scale``.

Anything else gets None, so that napari asks the next reader (napari-ome-zarr opens
OME-Zarr images with their labels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_warning

from embedseg_cli.errors import EmbedsegError
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.zarr_meta import (
    group_attrs,
    ome_attrs,
    ome_multiscale,
    open_zarr_array,
    scale_of,
)
from embedseg_cli.records import ImageRecord

__all__ = ["MAX_STORE_IMAGES", "get_reader"]

LayerData = tuple[Any, dict[str, Any], str]
"""What a napari reader returns per layer: data, layer keyword arguments, layer type."""

MAX_STORE_IMAGES = 12
"""Images of a store opened at once (three layers each); open others one by one."""

_STORE_GROUPS = ("images", "masks", "predictions")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for ``path`` where it is a store, an image of one or an OME-Zarr label image."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    target = Path(path)
    if is_project_store(target):
        return _read_store
    if _store_image(target) is not None or _is_label_image(target):
        return _read_one
    return None


def _read_store(path: str | list[str]) -> list[LayerData]:
    location = Path(path[0] if isinstance(path, list) else path)
    store = ProjectStore.open(location)
    records = store.images()
    predicted = set(store.prediction_names())
    chosen = sorted(records, key=lambda r: r.name not in predicted)[:MAX_STORE_IMAGES]
    if len(records) > len(chosen):
        show_warning(
            f"{location} holds {len(records)} images: opened {len(chosen)} (those with "
            f"predictions first); open {location}/images/NAME for another"
        )
    layers: list[LayerData] = []
    for index, record in enumerate(chosen):
        layers.extend(_image_layers(store, record, predicted, visible=index == 0))
    return layers


def _read_one(path: str | list[str]) -> list[LayerData]:
    location = Path(path[0] if isinstance(path, list) else path)
    found = _store_image(location)
    if found is not None:
        store, name = found
        record = next(r for r in store.images() if r.name == name)
        return _image_layers(store, record, set(store.prediction_names()), visible=True)
    return [_label_image_layer(location)]


def _image_layers(
    store: ProjectStore, record: ImageRecord, predicted: set[str], *, visible: bool
) -> list[LayerData]:
    """An image of the store, its mask and its prediction, scaled by its voxel size."""
    scale = list(record.voxel_size)
    image: dict[str, Any] = {"name": record.name, "scale": scale, "visible": visible}
    channels = len(record.percentiles)
    if record.axes.endswith("C") and channels in (3, 4):
        image["rgb"] = True
    elif record.axes.endswith("C"):
        image["channel_axis"] = record.axes.index("C")
        image["name"] = [f"{record.name} [{c}]" for c in range(channels)]
        image["contrast_limits"] = [list(p) for p in record.percentiles]
    elif record.percentiles[0][0] < record.percentiles[0][1]:
        # The intensities prepare normalised between: the whole volume is not read for them.
        image["contrast_limits"] = list(record.percentiles[0])
    layers: list[LayerData] = [(store.image(record.name), image, "image")]
    mask = {"name": f"{record.name} mask", "scale": scale, "visible": visible, "opacity": 0.5}
    layers.append((store.mask(record.name), mask, "labels"))
    if record.name in predicted:
        prediction = {"name": f"{record.name} prediction", "scale": scale, "visible": visible}
        layers.append((store.prediction(record.name), prediction, "labels"))
    return layers


def _store_image(path: Path) -> tuple[ProjectStore, str] | None:
    """The store and image name of ``P.zarr/{images,masks,predictions}/NAME``, if it is one."""
    group, name = path.parent.name, path.name
    root = path.parent.parent
    if group not in _STORE_GROUPS or not is_project_store(root):
        return None
    try:
        store = ProjectStore.open(root)
    except EmbedsegError:
        return None
    if name not in {r.name for r in store.images()}:
        return None
    return store, name


def _ome_image_label(path: Path) -> dict[str, Any] | None:
    """The OME metadata of an OME-Zarr label image at ``path``, None for anything else."""
    attrs = group_attrs(path)
    if attrs is None or "image-label" not in ome_attrs(attrs):
        return None
    return ome_multiscale(attrs)


def _is_label_image(path: Path) -> bool:
    return _ome_image_label(path) is not None


def _label_image_layer(path: Path) -> LayerData:
    """All levels of an OME-Zarr label image, with the ``scale`` of level 0."""
    multiscale = _ome_image_label(path)
    if multiscale is None:  # it changed since get_reader looked at it
        msg = f"{path} is no longer an OME-Zarr label image"
        raise EmbedsegError(msg)
    levels = [
        open_zarr_array(path / str(dataset["path"]))
        for dataset in multiscale["datasets"]
        if isinstance(dataset, dict) and "path" in dataset
    ]
    ndim = levels[0].ndim
    scale = scale_of(multiscale["datasets"][0].get("coordinateTransformations"), ndim)
    overall = scale_of(multiscale.get("coordinateTransformations"), ndim)
    full = [a * b for a, b in zip(scale or [1.0] * ndim, overall or [1.0] * ndim, strict=True)]
    name = path.name.removesuffix(".zarr")
    if path.parent.name == "labels":  # IMAGE.zarr/labels/NAME: named after its image too
        name = f"{path.parent.parent.name.removesuffix('.zarr')} {path.name}"
    kwargs: dict[str, Any] = {"name": name, "scale": full}
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return (levels, kwargs, "labels")
    return (levels[0], kwargs, "labels")
