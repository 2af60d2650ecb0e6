"""The project store: one Zarr v3 directory that holds everything about a project.

Only this module knows the store's layout (documented, with its version, in
``docs/store.md``). Every other module asks it for images, masks, data properties and the
crop table.

Writes are all-or-nothing. A new store is built in a hidden sibling directory, marked
complete, and renamed into place, so an interrupted ``prepare`` leaves either the old store
or the new one, never a mix. A store whose ``complete`` flag is missing is refused. Only a
project store is ever replaced: any other file or folder at the target is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
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
    CheckpointError,
    IncompleteStoreError,
    NotAStoreError,
    OutputExistsError,
    SchemaVersionError,
    StoreError,
    StoreNotFoundError,
)
from embedseg_cli.io.atomic import Staging, staged, staging
from embedseg_cli.records import DataProperties, ImageRecord, Split, StoreRecord

__all__ = [
    "SCHEMA_VERSION",
    "CropTable",
    "ProjectStore",
    "StoreWriter",
    "create_store",
    "is_project_store",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the store layout that this module reads and writes."""

_ATTRS_KEY = "embedseg"
# Chunk files sit directly in their array's folder ("c.0.1"): one folder per chunk row costs
# a disk block each and doubled the size of stores of many small images.
_CHUNK_KEYS: dict[str, JSON] = {"name": "default", "configuration": {"separator": "."}}
_GROUPS = ("images", "masks", "crops", "checkpoints", "runs", "predictions")


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


def _chunks(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """Chunk shape: 512x512 planes in 2D, 32x256x256 blocks in 3D, all channels together."""
    target = {"Z": 32, "Y": 256, "X": 256} if "Z" in axes else {"Y": 512, "X": 512}
    return tuple(
        size if axis == "C" else max(1, min(size, target[axis]))
        for size, axis in zip(shape, axes, strict=True)
    )


def _sha256(array: NDArray[Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


_CHECKPOINT_FIX = (
    "use the run's other checkpoint (predict --checkpoint best or last) or another run, "
    "or train again (train --run NAME --overwrite)"
)


def _damaged(where: str, name: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{where} cannot be used: its tensor {name} {problem}; {_CHECKPOINT_FIX}"
    )


# What Zarr and its codecs raise on bytes they cannot decode (numcodecs' Zstandard raises
# RuntimeError, a truncated chunk ValueError).
_DECODE_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError, KeyError)


def _read_tensor(
    group: zarr.Group, name: str, recorded: Mapping[str, Any] | None, where: str
) -> NDArray[Any]:
    """Read one array of a checkpoint and verify it against what was recorded when written.

    Raises
    ------
    CheckpointError
        Where the array is missing, differs from its record, cannot be decoded or is not
        finite.
    """
    try:
        node = group[name]
    except KeyError:
        raise _damaged(where, name, "is missing") from None
    except _DECODE_ERRORS as exc:
        raise _damaged(where, name, f"cannot be opened ({exc})") from None
    if not isinstance(node, zarr.Array):
        raise _damaged(where, name, "is not an array")
    if recorded is not None:
        expected = (recorded.get("dtype"), list(recorded.get("shape", [])))
        found = (node.dtype.name, list(node.shape))
        if found != expected:
            problem = f"is {found[0]} of shape {found[1]}, but {expected[0]} of shape {expected[1]} was written"
            raise _damaged(where, name, problem)
        if node.nchunks_initialized < node.nchunks:
            raise _damaged(where, name, "has lost chunk files (they would read as zeros)")
    try:
        value = np.asarray(node[...])
    except _DECODE_ERRORS as exc:
        raise _damaged(where, name, f"cannot be decoded ({exc})") from None
    if recorded is not None and _sha256(value) != recorded.get("sha256"):
        raise _damaged(where, name, "does not match the SHA-256 recorded when it was written")
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        raise _damaged(where, name, "holds NaN or infinite values")
    return value


def _root_attrs(group: zarr.Group) -> dict[str, Any]:
    value = group.attrs.get(_ATTRS_KEY)
    return dict(value) if isinstance(value, Mapping) else {}


def is_project_store(path: Path | str) -> bool:
    """Whether ``path`` holds an embedseg project store (complete or not)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        group = zarr.open_group(Path(path), mode="r", zarr_format=3)
    except (ValueError, TypeError, OSError, KeyError):
        return False
    return "schema_version" in _root_attrs(group)


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

    Use :meth:`open` to open an existing store and :func:`create_store` to make one.
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
        attrs = _root_attrs(root)
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
        missing = [name for name in _GROUPS if name not in root]
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
            if name.startswith(".") or _root_attrs(node).get("complete") is not True:
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
        self._replace_group("predictions", name, {"labels": labels}, axes, attrs or {})

    def checkpoint_runs(self) -> list[str]:
        """Names of the training runs that have at least one complete checkpoint."""
        runs = self._root["checkpoints"]
        if not isinstance(runs, zarr.Group):
            return []
        return sorted(name for name, group in runs.groups() if self._complete_tags(group))

    @staticmethod
    def _complete_tags(run: zarr.Group) -> list[str]:
        return sorted(
            tag
            for tag, group in run.groups()
            if not tag.startswith(".") and _root_attrs(group).get("complete") is True
        )

    def _checkpoint_time(self, run: str) -> float:
        times = [
            float(_root_attrs(group).get("time", 0.0))
            for tag, group in self._root[f"checkpoints/{run}"].groups()  # type: ignore[union-attr]
            if not tag.startswith(".")
        ]
        return max(times, default=0.0)

    def checkpoint_tags(self, run: str) -> list[str]:
        """The complete checkpoints (``best``, ``last``) of a training run."""
        node = self._root.get(f"checkpoints/{run}")
        return self._complete_tags(node) if isinstance(node, zarr.Group) else []

    def write_checkpoint(
        self, run: str, tag: str, tensors: dict[str, NDArray[Any]], attrs: dict[str, JSON]
    ) -> None:
        """Store a checkpoint (tensors and attributes, no pickle), replacing ``tag``, atomically.

        Network tensors (names starting with ``model.``) get one array each, readable by any
        Zarr reader. The rest (optimiser moments, random state) are packed into one flat
        array per data type with a JSON index of names, shapes and offsets, as safetensors
        does: they are many, small, and only ever read back whole by ``--resume``. Each
        stored array's data type, shape and SHA-256 are recorded in the attributes
        (``tensors``) and every chunk is written, even one of zeros, so that
        :meth:`read_checkpoint` can tell a damaged or missing chunk from real values.

        Raises
        ------
        CheckpointError
            Where the checkpoint cannot be written (disk full, no permission); the
            checkpoint it would have replaced is kept.
        """
        arrays: dict[str, NDArray[Any]] = {}
        packed: dict[str, list[NDArray[Any]]] = {}
        index: list[dict[str, JSON]] = []
        for name, tensor in tensors.items():
            if name.startswith("model."):
                arrays[name] = np.ascontiguousarray(tensor)
                continue
            dtype = np.dtype(tensor.dtype).name
            parts = packed.setdefault(dtype, [])
            offset = sum(part.size for part in parts)
            parts.append(np.ascontiguousarray(tensor).reshape(-1))
            index.append(
                {"name": name, "dtype": dtype, "shape": list(tensor.shape), "offset": offset}
            )
        arrays.update({f"packed.{dtype}": np.concatenate(parts) for dtype, parts in packed.items()})
        recorded: dict[str, JSON] = {
            key: {"dtype": array.dtype.name, "shape": list(array.shape), "sha256": _sha256(array)}
            for key, array in arrays.items()
        }
        try:
            self._replace_group(
                f"checkpoints/{run}",
                tag,
                arrays,
                None,
                {**attrs, "packed": index, "tensors": recorded},
                write_empty_chunks=True,
            )
        except OSError as exc:
            msg = (
                f"cannot write checkpoint {run}/{tag} in {self.path} ({exc.strerror or exc}): "
                "the previous checkpoints are kept; free disk space (or fix the permissions) "
                f"and continue with `embedseg train {self.path} --run {run} --resume`"
            )
            raise CheckpointError(msg) from exc

    def read_checkpoint(
        self, run: str | None = None, tag: str = "best"
    ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Read a checkpoint's tensors and attributes (``run`` None: the newest run).

        Every tensor is verified: present, of its recorded data type and shape, every chunk
        on disk, decodable, equal to its recorded SHA-256 and finite. Checkpoints written
        before checksums were recorded are read with the checks their layout allows
        (present, decodable, finite): in them a missing chunk of an array reads as zeros.

        Raises
        ------
        StoreError
            Where the store has no such complete checkpoint.
        CheckpointError
            Where a tensor of the checkpoint is missing, damaged or not finite.
        """
        runs = self.checkpoint_runs()
        if not runs:
            msg = f"{self.path} has no trained checkpoint: run `embedseg train {self.path}` first"
            raise StoreError(msg)
        run = run or max(runs, key=self._checkpoint_time)
        if tag not in self.checkpoint_tags(run):
            msg = f"{self.path} has no complete checkpoint {run}/{tag} (it has: {', '.join(runs)})"
            raise StoreError(msg)
        group = self._root[f"checkpoints/{run}/{tag}"]
        assert isinstance(group, zarr.Group)  # checked by checkpoint_tags
        attrs = _root_attrs(group)
        index = attrs.pop("packed", [])
        recorded = attrs.pop("tensors", None)
        where = f"checkpoint {run}/{tag} in {self.path}"
        if isinstance(recorded, Mapping):
            names = list(recorded)
        else:
            recorded = None
            names = sorted(
                {key for key, _ in group.arrays()} | {f"packed.{e['dtype']}" for e in index}
            )
        stored = {
            name: _read_tensor(group, name, recorded[name] if recorded else None, where)
            for name in names
        }
        tensors = {k: v for k, v in stored.items() if not k.startswith("packed.")}
        for entry in index:
            size = int(np.prod(entry["shape"], dtype=np.int64))
            flat = stored[f"packed.{entry['dtype']}"]
            if entry["offset"] + size > flat.size:
                raise _damaged(
                    where, f"packed.{entry['dtype']}", f"is too short for {entry['name']}"
                )
            tensors[entry["name"]] = flat[entry["offset"] : entry["offset"] + size].reshape(
                entry["shape"]
            )
        return tensors, attrs

    def write_run_metrics(self, run: str, epochs: list[dict[str, JSON]]) -> None:
        """Record the per-epoch metrics of a training run (replacing earlier ones).

        Raises
        ------
        StoreError
            Where they cannot be written (disk full, no permission); the earlier ones are kept.
        """
        try:
            self._replace_group("runs", run, {}, None, {"epochs": epochs})
        except OSError as exc:
            msg = (
                f"cannot write the metrics of run {run} in {self.path} ({exc.strerror or exc}): "
                "free disk space (or fix the permissions) and continue with "
                f"`embedseg train {self.path} --run {run} --resume`"
            )
            raise StoreError(msg) from exc

    def run_metrics(self, run: str) -> list[dict[str, Any]]:
        """The per-epoch metrics of a training run (empty if none were recorded)."""
        node = self._root.get(f"runs/{run}")
        if not isinstance(node, zarr.Group):
            return []
        return list(_root_attrs(node).get("epochs", []))

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

    def _replace_group(
        self,
        parent: str,
        name: str,
        arrays: dict[str, NDArray[Any]],
        axes: str | None,
        attrs: dict[str, JSON],
        *,
        write_empty_chunks: bool = False,
    ) -> None:
        """Write ``arrays`` as group ``parent/name``, all or nothing.

        The group is written under a hidden name, marked complete and renamed into place,
        so an interrupted write never replaces a complete group with a partial one; a write
        that fails (a full disk) removes what it wrote.
        """
        writable = zarr.open_group(self.path, mode="r+", zarr_format=3)
        parent_group = writable.require_group(parent)
        # A full disk or a kill: no half-written group is left behind.
        with staged(self.path / parent / name) as hidden:
            group = parent_group.create_group(hidden.name)
            for key, array in arrays.items():
                group.create_array(
                    key,
                    data=np.ascontiguousarray(array),
                    chunks=_chunks(array.shape, axes) if axes else array.shape or (1,),
                    chunk_key_encoding=_CHUNK_KEYS,
                    dimension_names=list(axes.lower()) if axes else None,
                    config={"write_empty_chunks": write_empty_chunks},
                )
            group.attrs[_ATTRS_KEY] = {"complete": True, "time": time.time(), **attrs}
        self._root = zarr.open_group(self.path, mode="r", zarr_format=3)

    def crop_table(self) -> CropTable:
        """The crop table (one object-centred window per train and val object)."""
        group = self._root["crops"]
        if not isinstance(group, zarr.Group):
            msg = f"{self.path}/crops is not a group: prepare the store again"
            raise StoreError(msg)
        columns = {f.name: np.asarray(self._array("crops", f.name)[...]) for f in fields(CropTable)}
        return CropTable(**columns)


class StoreWriter:
    """Builds a new store in a hidden directory; :meth:`commit` makes it visible.

    Obtain one with :func:`create_store`.
    """

    def __init__(self, stage: Staging) -> None:
        self.target = stage.target
        self.staging = stage.path
        self._stage = stage
        self._root = zarr.open_group(self.staging, mode="w-", zarr_format=3)
        self._root.attrs[_ATTRS_KEY] = {"schema_version": SCHEMA_VERSION, "complete": False}
        for name in _GROUPS:
            self._root.create_group(name)
        self._records: list[ImageRecord] = []

    @property
    def committed(self) -> bool:
        """Whether :meth:`commit` has moved the store into place."""
        return self._stage.committed

    def add_image(self, record: ImageRecord, image: NDArray[Any], mask: NDArray[np.uint32]) -> None:
        """Store an image as given (chunked) and its uint32 mask."""
        spatial = record.axes.replace("C", "")
        self._group("images").create_array(
            record.name,
            data=image,
            chunks=_chunks(image.shape, record.axes),
            chunk_key_encoding=_CHUNK_KEYS,
            dimension_names=list(record.axes.lower()),
            attributes={_ATTRS_KEY: {"axes": record.axes, "voxel_size": list(record.voxel_size)}},
        )
        self._group("masks").create_array(
            record.name,
            data=mask,
            chunks=_chunks(mask.shape, spatial),
            chunk_key_encoding=_CHUNK_KEYS,
            dimension_names=list(spatial.lower()),
            attributes={_ATTRS_KEY: {"axes": spatial, "voxel_size": list(record.voxel_size)}},
        )
        self._records.append(record)

    def _group(self, name: str) -> zarr.Group:
        group = self._root[name]
        if not isinstance(group, zarr.Group):  # pragma: no cover (created in __init__)
            msg = f"{self.staging}/{name} is not a group"
            raise StoreError(msg)
        return group

    def write_crop_table(self, table: CropTable) -> None:
        """Store the crop table as one array per column."""
        group = self._group("crops")
        for field in fields(CropTable):
            column = getattr(table, field.name)
            group.create_array(field.name, data=column, chunks=column.shape or (1,))

    def commit(self, properties: DataProperties, step: dict[str, Any]) -> ProjectStore:
        """Record the properties, mark the store complete and move it into place."""
        entry = {"step": "prepare", "embedseg_version": __version__, "time": time.time(), **step}
        record = StoreRecord(
            schema_version=SCHEMA_VERSION,
            complete=True,
            properties=properties,
            images=tuple(self._records),
            history=(entry,),
        )
        self._root.attrs[_ATTRS_KEY] = record.model_dump(mode="json")
        # What is at the target is checked again: something else may have appeared meanwhile.
        self._stage.commit()
        return ProjectStore.open(self.target)


def _check_replaceable(target: Path, shown: Path | str | None = None) -> None:
    """Refuse to replace anything but an embedseg project store.

    A project store is recognised as :meth:`ProjectStore.open` recognises it: a folder with
    a root ``zarr.json`` whose attributes hold the store's ``schema_version``. Complete or
    not, and of any layout version, it is the output of an earlier ``prepare``.

    Raises
    ------
    OutputExistsError
        Where ``target`` is a file, a link, a folder that is not a project store or a Zarr
        store of something else.
    """
    shown = shown or target
    if target.is_symlink():
        what = "a link"
    elif not target.is_dir():
        what = "a file"
    elif not is_project_store(target):
        what = "a folder that is not an embedseg project store"
    else:
        return
    msg = (
        f"{shown} exists and is {what}: --overwrite replaces only a project store; "
        "choose another --out, or remove it yourself"
    )
    raise OutputExistsError(msg)


@contextlib.contextmanager
def create_store(path: Path | str, *, overwrite: bool = False) -> Iterator[StoreWriter]:
    """Create a project store at ``path``, all or nothing.

    The store is written into a hidden sibling directory and moved into place by
    :meth:`StoreWriter.commit`. If the block raises or never commits, the staging directory
    is removed and whatever was at ``path`` is left untouched.

    Only an embedseg project store is ever replaced: anything else at ``path`` (a file, a
    folder of other files, another Zarr store) is refused before anything is written.

    Raises
    ------
    OutputExistsError
        Where ``path`` exists and ``overwrite`` is false, or ``path`` exists and is not a
        project store.
    """
    target = Path(path).absolute()
    if target.exists() or target.is_symlink():
        _check_replaceable(target, path)
        if not overwrite:
            msg = f"{path} already exists: choose another --out or pass --overwrite to replace it"
            raise OutputExistsError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging(target, check=_check_replaceable) as stage:
        yield StoreWriter(stage)
