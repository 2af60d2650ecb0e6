"""The project store: one Zarr v3 directory that holds everything about a project.

:class:`ProjectStore` opens a store, checks that it is a complete store of the layout
version this embedseg reads (``docs/store.md``), and gives every other module its images,
masks, data properties, crop table and predictions; its checkpoint and run-metrics methods
call :mod:`~embedseg_cli.io.checkpoints`. A new store is made by
:func:`~embedseg_cli.io.store_writer.create_store`.

Writes are all-or-nothing: a prediction is written under a hidden name, marked complete
and renamed into place. A store whose ``complete`` flag is missing is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from pydantic import ValidationError
from zarr.core.common import JSON

from embedseg_cli import __version__
from embedseg_cli.errors import (
    IncompleteStoreError,
    NotAStoreError,
    SchemaVersionError,
    StoreError,
    StoreNotFoundError,
)
from embedseg_cli.io import checkpoints
from embedseg_cli.io.store_layout import GROUPS, SCHEMA_VERSION, embedseg_attrs, replace_group
from embedseg_cli.records import DataProperties, ImageRecord, Split, StoreRecord

__all__ = [
    "SCHEMA_VERSION",
    "CropTable",
    "ProjectStore",
    "is_project_store",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropTable:
    """One object-centred training window per object, as columns.

    Attributes
    ----------
    image : ndarray of shape (n,)
        Index of the object's image in :meth:`ProjectStore.images` order.
    label : ndarray of shape (n,)
        The object's label in its mask.
    size : ndarray of shape (n,)
        The object's size in pixels.
    bbox_start, bbox_stop : ndarray of shape (n, ndim)
        The object's bounding box in its image (``stop`` exclusive).
    centre : ndarray of shape (n, ndim)
        The object's centre in pixel coordinates, computed on the whole object.
    window_start : ndarray of shape (n, ndim)
        Start of the object's crop window (may be negative, or end past the image: such
        windows are padded when read).
    """

    image: NDArray[np.uint32]
    label: NDArray[np.uint32]
    size: NDArray[np.int64]
    bbox_start: NDArray[np.int64]
    bbox_stop: NDArray[np.int64]
    centre: NDArray[np.float64]
    window_start: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def concatenate(cls, tables: Sequence[CropTable], ndim: int) -> CropTable:
        """Join tables row-wise (an empty sequence gives an empty table)."""
        if not tables:
            return cls(
                image=np.empty(0, np.uint32),
                label=np.empty(0, np.uint32),
                size=np.empty(0, np.int64),
                bbox_start=np.empty((0, ndim), np.int64),
                bbox_stop=np.empty((0, ndim), np.int64),
                centre=np.empty((0, ndim), np.float64),
                window_start=np.empty((0, ndim), np.int64),
            )
        columns = {
            f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)
        }
        return cls(**columns)


def is_project_store(path: Path | str) -> bool:
    """Whether ``path`` holds an embedseg project store (complete or not)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        group = zarr.open_group(Path(path), mode="r", zarr_format=3)
    except (ValueError, TypeError, OSError, KeyError):
        return False
    return "schema_version" in embedseg_attrs(group)


def _store_record(path: Path, attrs: dict[str, Any]) -> StoreRecord:
    """The root attributes of the store at ``path``, validated (the one place that reads them)."""
    try:
        return StoreRecord.model_validate(attrs)
    except ValidationError as exc:
        problem = exc.errors()[0]
        loc = [str(part) for part in problem["loc"]]
        what = "data properties" if loc[:1] == ["properties"] else "root attributes"
        where = ".".join(loc[1:] if loc[:1] == ["properties"] else loc)
        msg = (
            f"{path} has invalid {what} ({where}: {problem['msg']}): "
            "prepare the store again with --overwrite"
        )
        raise StoreError(msg) from None


class ProjectStore:
    """An open, validated project store (read access).

    Use :meth:`open` to open an existing store and
    :func:`~embedseg_cli.io.store_writer.create_store` to make one.
    """

    def __init__(self, path: Path, root: zarr.Group, record: StoreRecord) -> None:
        self.path = path
        self._root = root
        self._record = record

    @classmethod
    def open(cls, path: Path | str) -> ProjectStore:
        """Open the store at ``path`` and check that it is a complete store of a known version.

        Raises
        ------
        StoreNotFoundError
            Where nothing exists at ``path``.
        NotAStoreError
            Where ``path`` is not an embedseg project store.
        SchemaVersionError
            Where the store's layout version is not the one this embedseg reads.
        IncompleteStoreError
            Where the process that wrote the store was interrupted.
        """
        path = Path(path)
        if not path.exists():
            msg = f"there is no project store at {path}: create one with `embedseg prepare SRC --out {path}`"
            raise StoreNotFoundError(msg)
        if not (path / "zarr.json").is_file():
            msg = f"{path} is not an embedseg project store (no zarr.json): create one with `embedseg prepare`"
            raise NotAStoreError(msg)
        try:
            root = zarr.open_group(path, mode="r", zarr_format=3)
        except (ValueError, TypeError, OSError, KeyError) as exc:
            msg = f"{path} cannot be opened as a Zarr v3 group ({exc}): it is not an embedseg project store"
            raise NotAStoreError(msg) from None
        attrs = embedseg_attrs(root)
        if "schema_version" not in attrs:
            msg = f"{path} is a Zarr store but not an embedseg project store: create one with `embedseg prepare`"
            raise NotAStoreError(msg)
        version = attrs["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool):
            # A version written as "1" is not version 1: the store was made or edited by hand.
            msg = (
                f"{path} has store layout version {version!r}, a {type(version).__name__} where "
                f"embedseg writes a whole number (this embedseg reads version {SCHEMA_VERSION}): "
                "the store was not written by embedseg; prepare it again"
            )
            raise SchemaVersionError(msg)
        if version != SCHEMA_VERSION:
            msg = (
                f"{path} has store layout version {version}, but this embedseg ({__version__}) reads "
                f"version {SCHEMA_VERSION}: use the embedseg version that wrote it, or prepare the store again"
            )
            raise SchemaVersionError(msg)
        if attrs.get("complete") is not True:
            msg = (
                f"{path} was left incomplete by an interrupted run and cannot be trusted: "
                "run `embedseg prepare` again with --overwrite"
            )
            raise IncompleteStoreError(msg)
        if not isinstance(attrs.get("properties"), dict):
            msg = f"{path} lacks its data properties (root attribute properties): prepare the store again with --overwrite"
            raise StoreError(msg)
        missing = [name for name in GROUPS if name not in root]
        if missing:
            msg = f"{path} lacks the group(s) {', '.join(missing)}: prepare the store again with --overwrite"
            raise StoreError(msg)
        return cls(path, root, _store_record(path, attrs))

    @property
    def schema_version(self) -> int:
        """Layout version of the store."""
        return self._record.schema_version

    @property
    def properties(self) -> DataProperties:
        """The data properties measured by ``prepare``."""
        return self._record.properties

    @property
    def history(self) -> list[dict[str, Any]]:
        """The steps that wrote the store, oldest first."""
        return list(self._record.history)

    def images(self, split: Split | None = None) -> list[ImageRecord]:
        """Records of the store's images, in store order, optionally of one split only."""
        records = self._record.images
        return [r for r in records if split is None or r.split == split]

    def image(self, name: str) -> zarr.Array[Any]:
        """The stored image ``name`` as a lazily read Zarr array."""
        return self._array("images", name)

    def mask(self, name: str) -> zarr.Array[Any]:
        """The stored uint32 mask ``name`` as a lazily read Zarr array."""
        return self._array("masks", name)

    def _array(self, group: str, name: str) -> zarr.Array[Any]:
        try:
            node = self._root[f"{group}/{name}"]
        except KeyError:
            msg = f"{self.path} has no image named {name!r} in {group}/"
            raise StoreError(msg) from None
        if not isinstance(node, zarr.Array):
            msg = f"{self.path}/{group}/{name} is not an array: prepare the store again"
            raise StoreError(msg)
        return node

    def prediction_names(self) -> list[str]:
        """Names of the images that have complete predicted labels in the store."""
        group = self._root["predictions"]
        if not isinstance(group, zarr.Group):
            return []
        names = []
        for name, node in group.groups():
            if name.startswith(".") or embedseg_attrs(node).get("complete") is not True:
                continue
            names.append(name)
        return sorted(names)

    def prediction(self, name: str) -> zarr.Array[Any]:
        """The predicted uint32 labels of image ``name``."""
        if name not in self.prediction_names():
            msg = f"{self.path} has no complete prediction for {name!r}: run `embedseg predict {self.path}`"
            raise StoreError(msg)
        return self._array("predictions", f"{name}/labels")

    def write_prediction(
        self, name: str, labels: NDArray[np.uint32], attrs: dict[str, JSON] | None = None
    ) -> None:
        """Store predicted labels for image ``name``, replacing any earlier ones, atomically."""
        if labels.dtype != np.uint32:
            msg = f"predicted labels must be uint32 (got {labels.dtype})"
            raise StoreError(msg)
        axes = "ZYX"[-labels.ndim :]
        replace_group(self.path, "predictions", name, {"labels": labels}, axes, attrs or {})
        self._reopen()

    def checkpoint_runs(self) -> list[str]:
        """Names of the training runs that have at least one complete checkpoint."""
        return checkpoints.checkpoint_runs(self._root)

    def checkpoint_tags(self, run: str) -> list[str]:
        """The complete checkpoints (``best``, ``last``) of a training run."""
        return checkpoints.checkpoint_tags(self._root, run)

    def write_checkpoint(
        self, run: str, tag: str, tensors: dict[str, NDArray[Any]], attrs: dict[str, JSON]
    ) -> None:
        """Store a checkpoint, replacing ``tag``, atomically (:func:`.checkpoints.write_checkpoint`).

        Raises
        ------
        CheckpointError
            Where the checkpoint cannot be written; the one it would have replaced is kept.
        """
        checkpoints.write_checkpoint(self.path, run, tag, tensors, attrs)
        self._reopen()

    def read_checkpoint(
        self, run: str | None = None, tag: str = "best"
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """A checkpoint's verified tensors and attributes (:func:`.checkpoints.read_checkpoint`).

        ``run`` None reads the newest run.

        Raises
        ------
        StoreError
            Where the store has no such complete checkpoint.
        CheckpointError
            Where a tensor of the checkpoint is missing, damaged or not finite.
        """
        return checkpoints.read_checkpoint(self.path, self._root, run, tag)

    def write_run_metrics(self, run: str, epochs: list[dict[str, JSON]]) -> None:
        """Record the per-epoch metrics of a training run (replacing earlier ones).

        Raises
        ------
        StoreError
            Where they cannot be written (disk full, no permission); the earlier ones are kept.
        """
        checkpoints.write_run_metrics(self.path, run, epochs)
        self._reopen()

    def run_metrics(self, run: str) -> list[dict[str, Any]]:
        """The per-epoch metrics of a training run (empty if none were recorded)."""
        return checkpoints.read_run_metrics(self._root, run)

    def read_window(
        self, kind: str, name: str, start: Sequence[int], size: Sequence[int], fill: float = 0
    ) -> NDArray[Any]:
        """Read a window of an image or mask; the parts outside the array are ``fill``.

        Parameters
        ----------
        kind : {"images", "masks"}
            Which array to read from.
        name : str
            The image's name.
        start, size : sequence of int
            The window along the leading (spatial) axes; it may start before 0 or end past
            the array, and any trailing channel axis is read whole.
        fill : float
            Value of the padding.
        """
        array = self._array(kind, name)
        ndim = len(start)
        shape = array.shape[:ndim]
        lo = [max(0, s) for s in start]
        hi = [min(n, s + w) for n, s, w in zip(shape, start, size, strict=True)]
        out = np.full((*size, *array.shape[ndim:]), fill, dtype=array.dtype)
        if all(h > low for low, h in zip(lo, hi, strict=True)):
            source = tuple(slice(low, h) for low, h in zip(lo, hi, strict=True))
            target = tuple(slice(low - s, h - s) for low, h, s in zip(lo, hi, start, strict=True))
            out[target] = array[source]
        return out

    def crop_table(self) -> CropTable:
        """The crop table (one object-centred window per train and val object)."""
        group = self._root["crops"]
        if not isinstance(group, zarr.Group):
            msg = f"{self.path}/crops is not a group: prepare the store again"
            raise StoreError(msg)
        columns = {f.name: np.asarray(self._array("crops", f.name)[...]) for f in fields(CropTable)}
        return CropTable(**columns)

    def _reopen(self) -> None:
        # A written group is renamed into place: open the root again to see it.
        self._root = zarr.open_group(self.path, mode="r", zarr_format=3)
