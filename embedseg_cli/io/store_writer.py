"""Creating a project store, all or nothing.

A new store is built in a hidden sibling directory, marked complete, and renamed into
place, so an interrupted ``prepare`` leaves either the old store or the new one, never a
mix; the next run removes staging directories whose process is gone
(:func:`~embedseg_cli.io.atomic.staging`). Only a project store is ever replaced: any other
file or folder at the target is left alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from embedseg_cli import __version__
from embedseg_cli.errors import OutputExistsError, StoreError
from embedseg_cli.io.atomic import Staging, staging
from embedseg_cli.io.store import CropTable, ProjectStore, is_project_store
from embedseg_cli.io.store_layout import ATTRS_KEY, CHUNK_KEYS, GROUPS, SCHEMA_VERSION, chunk_shape
from embedseg_cli.records import DataProperties, ImageRecord, StoreRecord

__all__ = ["StoreWriter", "create_store"]


class StoreWriter:
    """Builds a new store in a hidden directory; :meth:`commit` makes it visible.

    Obtain one with :func:`create_store`.
    """

    def __init__(self, stage: Staging) -> None:
        self.target = stage.target
        self.staging = stage.path
        self._stage = stage
        self._root = zarr.open_group(self.staging, mode="w-", zarr_format=3)
        self._root.attrs[ATTRS_KEY] = {"schema_version": SCHEMA_VERSION, "complete": False}
        for name in GROUPS:
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
            chunks=chunk_shape(image.shape, record.axes),
            chunk_key_encoding=CHUNK_KEYS,
            dimension_names=list(record.axes.lower()),
            attributes={ATTRS_KEY: {"axes": record.axes, "voxel_size": list(record.voxel_size)}},
        )
        self._group("masks").create_array(
            record.name,
            data=mask,
            chunks=chunk_shape(mask.shape, spatial),
            chunk_key_encoding=CHUNK_KEYS,
            dimension_names=list(spatial.lower()),
            attributes={ATTRS_KEY: {"axes": spatial, "voxel_size": list(record.voxel_size)}},
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
        self._root.attrs[ATTRS_KEY] = record.model_dump(mode="json")
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
