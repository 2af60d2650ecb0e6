"""The project store's layout: its version, attribute key, groups, chunking and group writes.

The parts of ``docs/store.md`` that :mod:`~embedseg_cli.io.store` (reading),
:mod:`~embedseg_cli.io.checkpoints` and :mod:`~embedseg_cli.io.store_writer` (creating) share,
kept in one place so that the three agree on them. No other module imports this one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.core.common import JSON

from embedseg_cli.io.atomic import staged

__all__ = [
    "ATTRS_KEY",
    "CHUNK_KEYS",
    "GROUPS",
    "SCHEMA_VERSION",
    "chunk_shape",
    "embedseg_attrs",
    "replace_group",
]

SCHEMA_VERSION = 1
"""Version of the store layout that embedseg reads and writes."""

ATTRS_KEY = "embedseg"
"""The key under which every group and array of the store keeps its attributes."""

# Chunk files sit directly in their array's folder ("c.0.1"): one folder per chunk row costs
# a disk block each and doubled the size of stores of many small images.
CHUNK_KEYS: dict[str, JSON] = {"name": "default", "configuration": {"separator": "."}}
"""The chunk key encoding of every array of the store."""

GROUPS = ("images", "masks", "crops", "checkpoints", "runs", "predictions")
"""The root's groups, all created with the store."""


def chunk_shape(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """Chunk shape: 512x512 planes in 2D, 32x256x256 blocks in 3D, all channels together.

    Examples
    --------
    >>> chunk_shape((1024, 300, 3), "YXC")
    (512, 300, 3)
    >>> chunk_shape((10, 1000, 1000), "ZYX")
    (10, 256, 256)
    """
    target = {"Z": 32, "Y": 256, "X": 256} if "Z" in axes else {"Y": 512, "X": 512}
    return tuple(
        size if axis == "C" else max(1, min(size, target[axis]))
        for size, axis in zip(shape, axes, strict=True)
    )


def embedseg_attrs(node: zarr.Group | zarr.Array[Any]) -> dict[str, Any]:
    """The embedseg attributes of a group or array (empty where it has none)."""
    value = node.attrs.get(ATTRS_KEY)
    return dict(value) if isinstance(value, Mapping) else {}


def replace_group(
    path: Path,
    parent: str,
    name: str,
    arrays: dict[str, NDArray[Any]],
    axes: str | None,
    attrs: dict[str, JSON],
    *,
    write_empty_chunks: bool = False,
) -> None:
    """Write ``arrays`` as group ``parent/name`` of the store at ``path``, all or nothing.

    The group is written under a hidden name, marked complete and renamed into place,
    so an interrupted write never replaces a complete group with a partial one; a write
    that fails (a full disk) removes what it wrote. Arrays are chunked by
    :func:`chunk_shape` along ``axes``, or as one chunk where ``axes`` is None.
    """
    writable = zarr.open_group(path, mode="r+", zarr_format=3)
    parent_group = writable.require_group(parent)
    # A full disk or a kill: no half-written group is left behind.
    with staged(path / parent / name) as hidden:
        group = parent_group.create_group(hidden.name)
        for key, array in arrays.items():
            group.create_array(
                key,
                data=np.ascontiguousarray(array),
                chunks=chunk_shape(array.shape, axes) if axes else array.shape or (1,),
                chunk_key_encoding=CHUNK_KEYS,
                dimension_names=list(axes.lower()) if axes else None,
                config={"write_empty_chunks": write_empty_chunks},
            )
        group.attrs[ATTRS_KEY] = {"complete": True, "time": time.time(), **attrs}
